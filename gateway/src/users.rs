//! Who may log in: user names with Argon2id password hashes, never plaintext.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use common::env::ConfigError;
use tokio::sync::Semaphore;

/// The tutorial's users, hashed at start when no `USERS_FILE` is given.
const DEMO_USERS: [(&str, &str); 2] = [("user1", "password1"), ("user2", "password2")];

/// Longer names are refused before any work, so they cannot grow the throttle's tables.
pub const MAX_USERNAME_BYTES: usize = 128;

pub struct Users {
    hashes: HashMap<String, String>,
    /// One password check per core at a time: each takes Argon2's 46 MiB and tens of
    /// milliseconds, so a flood of logins waits its turn instead of exhausting memory.
    checking_slots: Arc<Semaphore>,
    /// Checked against when the user is unknown, so that an unknown name costs the same time as a
    /// wrong password and timing reveals no user names.
    decoy_hash: String,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.hashes.len())
            .finish_non_exhaustive()
    }
}

impl Users {
    pub fn demo() -> Result<Self, ConfigError> {
        let hashes = DEMO_USERS
            .iter()
            .map(|(name, password)| Ok(((*name).to_owned(), hash_password(password)?)))
            .collect::<Result<_, ConfigError>>()?;
        Self::with_hashes(hashes)
    }

    /// An htpasswd-style file: `username:$argon2id$...` a line; `#` starts a comment.
    pub fn parse(contents: &str) -> Result<Self, ConfigError> {
        let mut hashes = HashMap::new();
        for (number, line) in contents.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let error = |why: &str| ConfigError(format!("USERS_FILE line {}: {why}", number + 1));
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| error("is not username:hash"))?;
            if name.is_empty() || name.len() > MAX_USERNAME_BYTES {
                return Err(error("has an empty or overlong user name"));
            }
            // The name travels upstream in X-Authenticated-User.
            if !name.bytes().all(|byte| byte.is_ascii_graphic()) {
                return Err(error(
                    "has a user name that is not printable ASCII without spaces",
                ));
            }
            let parsed = PasswordHash::new(hash).map_err(|_| error("has no valid PHC hash"))?;
            if parsed.algorithm != argon2::Algorithm::Argon2id.ident() {
                return Err(error(
                    "must use an $argon2id$ hash (make one with `gateway hash-password`)",
                ));
            }
            if hashes.insert(name.to_owned(), hash.to_owned()).is_some() {
                return Err(error("repeats a user name"));
            }
        }
        if hashes.is_empty() {
            return Err(ConfigError("USERS_FILE has no users".to_owned()));
        }
        Self::with_hashes(hashes)
    }

    fn with_hashes(hashes: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut decoy_password = [0u8; 16];
        getrandom::getrandom(&mut decoy_password)
            .map_err(|error| ConfigError(format!("cannot make a decoy password: {error}")))?;
        let decoy_hash = hash_bytes(&decoy_password)?;
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Ok(Self {
            hashes,
            checking_slots: Arc::new(Semaphore::new(cores)),
            decoy_hash,
        })
    }

    /// Whether `password` is the user's. Slow on purpose (Argon2id), and as slow for an unknown
    /// user; call it off the async workers.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(username) {
            Some(hash) => (hash.as_str(), true),
            None => (self.decoy_hash.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let matches = hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        matches && known
    }
}

/// [`Users::verify`] on the blocking pool, when a checking slot is free.
pub async fn verify_off_the_workers(
    users: &Arc<Users>,
    username: String,
    password: String,
) -> bool {
    let Ok(slot) = Arc::clone(&users.checking_slots).acquire_owned().await else {
        return false;
    };
    let users = Arc::clone(users);
    // The slot goes with the check, not with the request: a client that hangs up does not free
    // it while its hash is still being computed.
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        users.verify(&username, &password)
    })
    .await
    .unwrap_or(false)
}

/// Argon2id with OWASP's first recommended cost: 46 MiB, one pass, one lane. (Verifying uses the
/// cost written in each hash.) The memory size matters twice: it is what makes guessing costly,
/// and being above glibc's 32 MiB ceiling for its dynamic mmap threshold, each check's memory is
/// mapped and returned to the system at once. With the crate's default of 19 MiB, the first free
/// raised that threshold and every later check left its memory in the heap: 40 MB of resident
/// memory kept for good after start.
fn hasher() -> Argon2<'static> {
    let params = Params::new(46 * 1024, 1, 1, None).unwrap_or_default();
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// A `$argon2id$...` PHC string for `password`, with a random salt and [`hasher`]'s cost.
pub fn hash_password(password: &str) -> Result<String, ConfigError> {
    hash_bytes(password.as_bytes())
}

fn hash_bytes(password: &[u8]) -> Result<String, ConfigError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt)
        .map_err(|error| ConfigError(format!("cannot make a salt: {error}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|error| ConfigError(format!("cannot encode a salt: {error}")))?;
    hasher()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| ConfigError(format!("cannot hash a password: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_users_verify_and_are_not_stored_in_plaintext() {
        let users = Users::demo().unwrap();
        assert!(users.verify("user1", "password1"));
        assert!(users.verify("user2", "password2"));
        assert!(!users.verify("user1", "password2"));
        assert!(!users.verify("nobody", "password1"));
        assert!(
            users
                .hashes
                .values()
                .all(|hash| hash.starts_with("$argon2id$"))
        );
        assert!(!format!("{users:?}").contains("password"));
    }

    #[test]
    fn a_users_file_replaces_the_demo_users() {
        let hash = hash_password("s3cret!").unwrap();
        let file = format!("# staff\nalice:{hash}  # the admin\n\n");
        let users = Users::parse(&file).unwrap();
        assert!(users.verify("alice", "s3cret!"));
        assert!(!users.verify("user1", "password1"));
    }

    #[test]
    fn malformed_users_files_name_the_line() {
        for (file, fragment) in [
            ("alice", "line 1: is not username:hash"),
            ("# nobody\n", "no users"),
            ("\nbob:plaintext", "line 2: has no valid PHC hash"),
            (
                ":$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                "empty",
            ),
        ] {
            let error = Users::parse(file).unwrap_err().to_string();
            assert!(error.contains(fragment), "{file:?} gave {error}");
        }
    }
}
