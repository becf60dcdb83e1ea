//! The gateway's settings, all from the environment; see the README's configuration table.

use std::time::Duration;

use common::env::{ConfigError, Env};
use common::server::Listen;
use common::{SessionCookie, TokenPolicy};

use crate::network::IpNetwork;
use crate::routes::{DEFAULT_ROUTES, Route, parse_routes};
use crate::throttle::ThrottleLimits;

const MIN_SECRET_BYTES: usize = 32;
/// A year: longer sessions are a mistake, and the bound keeps `iat + ttl` far from overflow.
const MAX_TTL_SECS: u64 = 365 * 24 * 3600;
/// Clock skew beyond a few minutes is a broken clock, not skew.
const MAX_LEEWAY_SECS: u64 = 300;
const PLACEHOLDER_SECRETS: [&str; 4] = ["your_secret_key", "changeme", "change-me", "secret_key"];
const HOW_TO_MAKE_A_SECRET: &str = "make one with `openssl rand -base64 48`";

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub secret: SecretKey,
    pub previous_secret: Option<SecretKey>,
    pub token_policy: TokenPolicy,
    pub routes: Vec<Route>,
    /// The `USERS_FILE` contents; `None` means the two demo users.
    pub users_file: Option<String>,
    pub cookie: SessionCookie,
    pub max_body_bytes: u64,
    pub upstream_timeout: Duration,
    /// How long a client may pause in the middle of sending a body.
    pub client_body_timeout: Duration,
    pub trusted_proxies: Vec<IpNetwork>,
    /// Origins, besides the gateway's own, whose pages may send unsafe requests with the cookie.
    pub allowed_origins: Vec<String>,
    pub throttle: ThrottleLimits,
}

/// The signing secret, and whether it was made up at start because none was configured.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretKey {
    Configured(Vec<u8>),
    Generated(Vec<u8>),
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Configured(_) => f.write_str("SecretKey::Configured(..)"),
            Self::Generated(_) => f.write_str("SecretKey::Generated(..)"),
        }
    }
}

impl SecretKey {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Configured(bytes) | Self::Generated(bytes) => bytes,
        }
    }
}

impl Config {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let ttl = env.parse_or("TOKEN_TTL_SECS", TokenPolicy::DEFAULT_TTL.as_secs())?;
        let leeway = env.parse_or("TOKEN_LEEWAY_SECS", TokenPolicy::DEFAULT_LEEWAY.as_secs())?;
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(ConfigError(format!(
                "TOKEN_TTL_SECS must be from 1 to {MAX_TTL_SECS}"
            )));
        }
        if leeway > MAX_LEEWAY_SECS {
            return Err(ConfigError(format!(
                "TOKEN_LEEWAY_SECS must be at most {MAX_LEEWAY_SECS}"
            )));
        }
        let upstream_timeout = env.parse_or("UPSTREAM_TIMEOUT_SECS", 30)?;
        if upstream_timeout == 0 {
            return Err(ConfigError(
                "UPSTREAM_TIMEOUT_SECS must be at least 1".to_owned(),
            ));
        }
        let secure = env.parse_or("COOKIE_SECURE", false)?;
        let default_name = if secure {
            SessionCookie::DEFAULT_SECURE_NAME
        } else {
            SessionCookie::DEFAULT_NAME
        };
        let cookie_name = env
            .get("COOKIE_NAME")
            .unwrap_or_else(|| default_name.to_owned());
        let cookie = SessionCookie::new(cookie_name, secure).map_err(|bad| {
            ConfigError(format!(
                "COOKIE_NAME={:?} is not a valid cookie name",
                bad.0
            ))
        })?;
        let secret = match secret_from(env, "SECRET_KEY")? {
            Some(secret) => SecretKey::Configured(secret),
            None => SecretKey::Generated(random_secret()?),
        };
        Ok(Self {
            listen: Listen::from_env(env, 5000)?,
            secret,
            previous_secret: secret_from(env, "SECRET_KEY_PREVIOUS")?.map(SecretKey::Configured),
            token_policy: TokenPolicy {
                ttl: Duration::from_secs(ttl),
                leeway: Duration::from_secs(leeway),
            },
            routes: parse_routes(
                &env.get("ROUTES")
                    .unwrap_or_else(|| DEFAULT_ROUTES.to_owned()),
            )?,
            users_file: match env.get("USERS_FILE") {
                Some(path) => Some(read_file("USERS_FILE", &path)?),
                None => None,
            },
            cookie,
            max_body_bytes: env.parse_or("MAX_BODY_BYTES", 10 * 1024 * 1024)?,
            upstream_timeout: Duration::from_secs(upstream_timeout),
            client_body_timeout: Duration::from_secs(
                env.parse_or("CLIENT_BODY_TIMEOUT_SECS", 60)?.max(1),
            ),
            trusted_proxies: parse_list(env, "TRUSTED_PROXIES", |raw| raw.parse())?,
            allowed_origins: parse_list(env, "ALLOWED_ORIGINS", |raw| {
                Ok::<_, ()>(raw.trim_end_matches('/').to_owned())
            })?,
            throttle: ThrottleLimits::from_env(env)?,
        })
    }

    /// A configuration for tests and examples: loopback on an ephemeral port, the given secret and
    /// routes, every other setting at its default.
    pub fn for_routes(secret: &[u8], routes: Vec<Route>) -> Result<Self, ConfigError> {
        let secret_text = String::from_utf8_lossy(secret).into_owned();
        let env = Env::from_lookup(move |name| match name {
            "SECRET_KEY" => Some(secret_text.clone()),
            "HOST" => Some("127.0.0.1".to_owned()),
            "PORT" => Some("0".to_owned()),
            _ => None,
        });
        let mut config = Self::from_env(&env)?;
        config.routes = routes;
        Ok(config)
    }
}

/// A secret from `NAME`, or from the file `NAME_FILE` names (the Docker and Kubernetes secrets
/// convention), held to the secret policy. Messages never include the secret.
fn secret_from<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    name: &str,
) -> Result<Option<Vec<u8>>, ConfigError> {
    let file_var = format!("{name}_FILE");
    let secret = match (env.get(name), env.get(&file_var)) {
        (Some(_), Some(_)) => {
            return Err(ConfigError(format!("set {name} or {file_var}, not both")));
        }
        (Some(value), None) => value,
        (None, Some(path)) => read_file(&file_var, &path)?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    let lowered = secret.to_ascii_lowercase();
    if PLACEHOLDER_SECRETS
        .iter()
        .any(|placeholder| lowered.contains(placeholder))
    {
        return Err(ConfigError(format!(
            "{name} is a known placeholder, not a secret; {HOW_TO_MAKE_A_SECRET}"
        )));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError(format!(
            "{name} must be at least {MIN_SECRET_BYTES} bytes; {HOW_TO_MAKE_A_SECRET}"
        )));
    }
    Ok(Some(secret.into_bytes()))
}

fn read_file(var: &str, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|error| ConfigError(format!("{var}: cannot read {path}: {error}")))
}

fn random_secret() -> Result<Vec<u8>, ConfigError> {
    let mut secret = vec![0u8; 32];
    getrandom::getrandom(&mut secret)
        .map_err(|error| ConfigError(format!("cannot make a random SECRET_KEY: {error}")))?;
    Ok(secret)
}

fn parse_list<F, T, E>(
    env: &Env<F>,
    name: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, ConfigError>
where
    F: Fn(&str) -> Option<String>,
{
    env.get(name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| parse(item).map_err(|_| ConfigError(format!("{name}: {item:?} is not valid"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_env(&Env::from_lookup(move |name| vars.get(name).cloned()))
    }

    const GOOD: &str = "0123456789abcdef0123456789abcdef-good";

    #[test]
    fn defaults() {
        let config = config(&[("SECRET_KEY", GOOD)]).unwrap();
        assert_eq!(config.listen.addr.port(), 5000);
        assert_eq!(config.token_policy.ttl, Duration::from_secs(1800));
        assert!(config.token_policy.leeway <= Duration::from_secs(5));
        assert_eq!(config.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(config.upstream_timeout, Duration::from_secs(30));
        assert_eq!(config.cookie.name(), "token");
        assert_eq!(config.routes.len(), 2);
        assert_eq!(
            config.secret,
            SecretKey::Configured(GOOD.as_bytes().to_vec())
        );
    }

    #[test]
    fn an_unset_secret_is_generated() {
        let first = config(&[]).unwrap().secret;
        let second = config(&[]).unwrap().secret;
        assert!(matches!(first, SecretKey::Generated(ref bytes) if bytes.len() == 32));
        assert_ne!(first, second);
    }

    #[test]
    fn weak_secrets_are_refused_without_being_echoed() {
        for weak in [
            "your_secret_key",
            "short",
            "your_secret_key-padded-out-to-be-long-enough",
        ] {
            let error = config(&[("SECRET_KEY", weak)]).unwrap_err().to_string();
            assert!(error.contains("SECRET_KEY"), "{error}");
            assert!(error.contains("openssl rand -base64 48"), "{error}");
            assert!(!error.contains(weak), "{error}");
        }
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = std::env::temp_dir().join(format!("gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, format!("{GOOD}\n")).unwrap();
        let path = path.to_str().unwrap();
        let config = config(&[("SECRET_KEY_FILE", path)]).unwrap();
        assert_eq!(config.secret.bytes(), GOOD.as_bytes());
        assert!(super::tests::config(&[("SECRET_KEY_FILE", path), ("SECRET_KEY", GOOD)]).is_err());
        let missing = super::tests::config(&[("SECRET_KEY_FILE", "/nonexistent/secret")]);
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .starts_with("SECRET_KEY_FILE: cannot read")
        );
    }

    #[test]
    fn secure_cookies_take_the_host_prefix_unless_named() {
        let config_secure = config(&[("SECRET_KEY", GOOD), ("COOKIE_SECURE", "true")]).unwrap();
        assert_eq!(config_secure.cookie.name(), "__Host-token");
        let named = config(&[
            ("SECRET_KEY", GOOD),
            ("COOKIE_SECURE", "true"),
            ("COOKIE_NAME", "sid"),
        ]);
        assert_eq!(named.unwrap().cookie.name(), "sid");
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        let error = config(&[("SECRET_KEY", GOOD), ("MAX_BODY_BYTES", "lots")]).unwrap_err();
        assert!(error.to_string().starts_with("MAX_BODY_BYTES="), "{error}");
        let error =
            config(&[("SECRET_KEY", GOOD), ("TRUSTED_PROXIES", "10.0.0.0/33")]).unwrap_err();
        assert!(error.to_string().starts_with("TRUSTED_PROXIES"), "{error}");
    }
}
