//! Issuing and verifying the session token: HS256 only, `exp` required, a small explicit leeway.
//!
//! The leeway is the clock skew forgiven on `exp`, `nbf` and `iat`. jsonwebtoken's default of 60 s
//! would keep a 30-minute session alive for an extra minute, so the policy carries its own.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What the gateway puts in every session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, in seconds since the Unix epoch.
    pub exp: u64,
    /// A random id, new at every login, by which a logout revokes this one token.
    pub jti: String,
}

/// Why a token was refused. The two are told apart because the client is told apart:
/// "Token expired" invites a new login, anything else is just "Invalid token".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

/// How long tokens live and how much clock skew is forgiven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    pub ttl: Duration,
    pub leeway: Duration,
}

impl TokenPolicy {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(1800);
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            ttl: Self::DEFAULT_TTL,
            leeway: Self::DEFAULT_LEEWAY,
        }
    }
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl SigningKey {
    fn new(secret: &[u8]) -> Result<Self, TokenError> {
        let encoding = EncodingKey::from_secret(secret);
        // The key id is an HMAC of a fixed label: stable for a key, and it reveals nothing of it.
        let mac = jsonwebtoken::crypto::sign(b"session-key-id", &encoding, Algorithm::HS256)
            .map_err(|_| TokenError::Invalid)?;
        Ok(Self {
            kid: mac.chars().take(12).collect(),
            encoding,
            decoding: DecodingKey::from_secret(secret),
        })
    }
}

/// The keys tokens are signed and verified with. New tokens always use the current key; a token
/// signed with the previous key still verifies, so that a key can be rotated without logging
/// everybody out.
pub struct TokenKeys {
    current: SigningKey,
    previous: Option<SigningKey>,
    policy: TokenPolicy,
    validation: Validation,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.current.kid)
            .field("previous_kid", &self.previous.as_ref().map(|key| &key.kid))
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    pub fn new(
        secret: &[u8],
        previous: Option<&[u8]>,
        policy: TokenPolicy,
    ) -> Result<Self, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = policy.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Ok(Self {
            current: SigningKey::new(secret)?,
            previous: previous.map(SigningKey::new).transpose()?,
            policy,
            validation,
        })
    }

    pub fn policy(&self) -> TokenPolicy {
        self.policy
    }

    /// A new token for `sub`, issued now.
    pub fn issue(&self, sub: &str) -> Result<(String, Claims), TokenError> {
        self.issue_at(sub, now())
    }

    /// A new token for `sub` as if issued at `iat`; tests use it to make expired tokens.
    pub fn issue_at(&self, sub: &str, iat: u64) -> Result<(String, Claims), TokenError> {
        let claims = Claims {
            sub: sub.to_owned(),
            iat,
            exp: iat + self.policy.ttl.as_secs(),
            jti: random_id()?,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.current.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok((token, claims))
    }

    /// The claims of a token that this gateway issued and that is still within its lifetime.
    ///
    /// The token is parsed once per key tried: the current key first, the previous one only when
    /// the current one does not verify it. A `kid`, when present, must name the key that did.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = match self.decode(token, &self.current) {
            Err(TokenError::Invalid) => match &self.previous {
                Some(previous) => self.decode(token, previous)?,
                None => return Err(TokenError::Invalid),
            },
            verified => verified?,
        };
        self.check_lifetime(&claims)?;
        Ok(claims)
    }

    fn decode(&self, token: &str, key: &SigningKey) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            },
        )?;
        // `validation` admits HS256 alone, so the header's `alg` has been checked already.
        match data.header.kid {
            Some(kid) if kid != key.kid => Err(TokenError::Invalid),
            _ => Ok(data.claims),
        }
    }

    /// jsonwebtoken checks `exp` and `nbf`; a token from the future, or one that claims a longer
    /// life than this gateway ever grants, was not minted here.
    fn check_lifetime(&self, claims: &Claims) -> Result<(), TokenError> {
        let leeway = self.policy.leeway.as_secs();
        if claims.iat > now().saturating_add(leeway) {
            return Err(TokenError::Invalid);
        }
        let lifetime = claims
            .exp
            .checked_sub(claims.iat)
            .ok_or(TokenError::Invalid)?;
        if lifetime > self.policy.ttl.as_secs() {
            return Err(TokenError::Invalid);
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

/// 128 random bits as hex: a token id nobody can guess or collide with.
pub fn random_id() -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|_| TokenError::Invalid)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"an-example-secret-that-is-long-enough-for-hs256";

    fn keys() -> TokenKeys {
        TokenKeys::new(SECRET, None, TokenPolicy::default()).unwrap()
    }

    fn sign_raw(header: &Header, claims: &serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[test]
    fn claims_round_trip() {
        let keys = keys();
        let (token, issued) = keys.issue("user1").unwrap();
        let verified = keys.verify(&token).unwrap();
        assert_eq!(verified, issued);
        assert_eq!(verified.sub, "user1");
        assert_eq!(verified.exp - verified.iat, 1800);
        assert_eq!(verified.jti.len(), 32);
    }

    #[test]
    fn every_token_gets_a_new_jti() {
        let keys = keys();
        let (_, first) = keys.issue("user1").unwrap();
        let (_, second) = keys.issue("user1").unwrap();
        assert_ne!(first.jti, second.jti);
    }

    #[test]
    fn expired_beyond_the_leeway_is_expired() {
        let keys = keys();
        let (token, _) = keys.issue_at("user1", now() - 1800 - 6).unwrap();
        assert_eq!(keys.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn expired_within_the_leeway_still_verifies() {
        let keys = keys();
        let (token, _) = keys.issue_at("user1", now() - 1800 - 2).unwrap();
        assert!(keys.verify(&token).is_ok());
    }

    #[test]
    fn wrong_key_is_invalid() {
        let (token, _) = keys().issue("user1").unwrap();
        let other = TokenKeys::new(
            b"another-secret-that-is-also-long-enough!",
            None,
            TokenPolicy::default(),
        )
        .unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn alg_none_is_invalid() {
        let keys = keys();
        let (token, _) = keys.issue("user1").unwrap();
        let payload = token.split('.').nth(1).unwrap();
        // base64url of {"alg":"none","typ":"JWT"}
        let forged = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(keys.verify(&forged), Err(TokenError::Invalid));
    }

    #[test]
    fn other_hmac_algorithms_with_the_same_key_are_invalid() {
        let keys = keys();
        let claims =
            serde_json::json!({"sub": "user1", "iat": now(), "exp": now() + 60, "jti": "x"});
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign_raw(&Header::new(alg), &claims, SECRET);
            assert_eq!(keys.verify(&token), Err(TokenError::Invalid), "{alg:?}");
        }
    }

    #[test]
    fn a_token_without_kid_signed_with_the_key_verifies() {
        let keys = keys();
        let claims =
            serde_json::json!({"sub": "user1", "iat": now(), "exp": now() + 60, "jti": "x"});
        let token = sign_raw(&Header::new(Algorithm::HS256), &claims, SECRET);
        assert_eq!(keys.verify(&token).unwrap().sub, "user1");
    }

    #[test]
    fn a_kid_that_names_another_key_is_invalid() {
        let keys = keys();
        let claims =
            serde_json::json!({"sub": "user1", "iat": now(), "exp": now() + 60, "jti": "x"});
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("not-our-key".to_owned());
        let token = sign_raw(&header, &claims, SECRET);
        assert_eq!(keys.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn an_expired_token_from_the_previous_key_is_expired() {
        let old = keys();
        let (old_token, _) = old.issue_at("user1", now() - 3600).unwrap();
        let rotated = TokenKeys::new(
            b"the-new-secret-after-rotation-long-enough",
            Some(SECRET),
            TokenPolicy::default(),
        )
        .unwrap();
        assert_eq!(rotated.verify(&old_token), Err(TokenError::Expired));
    }

    #[test]
    fn missing_exp_is_invalid() {
        let keys = keys();
        let claims = serde_json::json!({"sub": "user1", "iat": now(), "jti": "x"});
        let token = sign_raw(&Header::new(Algorithm::HS256), &claims, SECRET);
        assert_eq!(keys.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn a_lifetime_longer_than_the_ttl_is_invalid() {
        let keys = keys();
        let claims =
            serde_json::json!({"sub": "user1", "iat": now(), "exp": now() + 1801, "jti": "x"});
        let token = sign_raw(&Header::new(Algorithm::HS256), &claims, SECRET);
        assert_eq!(keys.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn issued_in_the_future_is_invalid() {
        let keys = keys();
        let iat = now() + 600;
        let claims = serde_json::json!({"sub": "user1", "iat": iat, "exp": iat + 60, "jti": "x"});
        let token = sign_raw(&Header::new(Algorithm::HS256), &claims, SECRET);
        assert_eq!(keys.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn the_previous_key_still_verifies_and_new_tokens_use_the_current_one() {
        let old = keys();
        let (old_token, _) = old.issue("user1").unwrap();
        let current = b"the-new-secret-after-rotation-long-enough";
        let rotated = TokenKeys::new(current, Some(SECRET), TokenPolicy::default()).unwrap();
        assert!(rotated.verify(&old_token).is_ok());
        let (new_token, _) = rotated.issue("user1").unwrap();
        assert_eq!(old.verify(&new_token), Err(TokenError::Invalid));
        let retired = TokenKeys::new(current, None, TokenPolicy::default()).unwrap();
        assert_eq!(retired.verify(&old_token), Err(TokenError::Invalid));
    }

    #[test]
    fn decoding_garbage_returns_an_error_instead_of_panicking() {
        // jsonwebtoken >= 10 panics when no crypto backend is selected; verifying a real
        // signature proves the one we picked is wired in.
        let keys = keys();
        for token in [
            "",
            ".",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "é.é.é",
            &"x".repeat(8192),
        ] {
            assert_eq!(keys.verify(token), Err(TokenError::Invalid), "{token:.20}");
        }
        let (token, _) = keys.issue("user1").unwrap();
        let mut flipped = token.into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(keys.verify(&flipped), Err(TokenError::Invalid));
    }
}
