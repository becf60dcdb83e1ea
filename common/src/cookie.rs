//! The session cookie: how it is set, cleared, and found again in a request.

use warp::http::header::{COOKIE, HeaderMap, HeaderValue};

/// Browsers drop cookies larger than this, so a longer one is an error rather than a silent logout.
pub const MAX_COOKIE_BYTES: usize = 4096;

/// The session cookie's name and whether it is only sent over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCookie {
    name: String,
    secure: bool,
    clearing: HeaderValue,
}

/// The cookie would be larger than browsers keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieTooLarge;

/// A cookie name must be an RFC 6265 token: visible ASCII without separators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCookieName(pub String);

impl SessionCookie {
    pub const DEFAULT_NAME: &str = "token";
    /// The `__Host-` prefix makes browsers refuse the cookie unless it is Secure, has `Path=/` and
    /// no Domain, so no subdomain can plant or shadow it.
    pub const DEFAULT_SECURE_NAME: &str = "__Host-token";

    pub fn new(name: impl Into<String>, secure: bool) -> Result<Self, InvalidCookieName> {
        let name = name.into();
        let is_token_char = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
        if name.is_empty() || !name.chars().all(is_token_char) {
            return Err(InvalidCookieName(name));
        }
        let clearing = format!(
            "{name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; HttpOnly; SameSite=Strict{}",
            secure_attribute(secure)
        );
        let clearing =
            HeaderValue::from_str(&clearing).map_err(|_| InvalidCookieName(name.clone()))?;
        Ok(Self {
            name,
            secure,
            clearing,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Set-Cookie` for a fresh session that the browser keeps for `max_age_secs`.
    pub fn issue(&self, token: &str, max_age_secs: u64) -> Result<HeaderValue, CookieTooLarge> {
        let value = format!(
            "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{}",
            self.name,
            secure_attribute(self.secure)
        );
        if value.len() > MAX_COOKIE_BYTES {
            return Err(CookieTooLarge);
        }
        HeaderValue::from_str(&value).map_err(|_| CookieTooLarge)
    }

    /// `Set-Cookie` that makes the browser forget the session at once.
    pub fn clear(&self) -> HeaderValue {
        self.clearing.clone()
    }

    /// Every value the request carries for this cookie, across all `Cookie` headers.
    pub fn values<'a>(&'a self, headers: &'a HeaderMap) -> impl Iterator<Item = &'a str> + 'a {
        cookie_pairs(headers).filter_map(move |(name, value)| (name == self.name).then_some(value))
    }

    /// The request's `Cookie` header without this cookie, so that an upstream never sees the
    /// session token; `None` when nothing else is left.
    pub fn strip_from(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let others: Vec<String> = cookie_pairs(headers)
            .filter(|(name, _)| *name != self.name)
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if others.is_empty() {
            return None;
        }
        HeaderValue::from_str(&others.join("; ")).ok()
    }

    /// Whether a `Set-Cookie` value from an upstream would overwrite this cookie.
    pub fn is_set_by(&self, set_cookie: &HeaderValue) -> bool {
        let bytes = set_cookie.as_bytes();
        let name = bytes.split(|byte| *byte == b'=').next().unwrap_or(bytes);
        name.trim_ascii() == self.name.as_bytes()
    }
}

fn secure_attribute(secure: bool) -> &'static str {
    if secure { "; Secure" } else { "" }
}

/// `(name, value)` of every cookie in every `Cookie` header; pairs that are not `name=value` are
/// skipped, as browsers do.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim(), value.trim()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for cookie in cookies {
            map.append(COOKIE, HeaderValue::from_str(cookie).unwrap());
        }
        map
    }

    #[test]
    fn the_session_cookie_string_is_exact() {
        let cookie = SessionCookie::new("token", false).unwrap();
        assert_eq!(
            cookie.issue("abc.def.ghi", 1800).unwrap(),
            "token=abc.def.ghi; HttpOnly; SameSite=Strict; Path=/; Max-Age=1800"
        );
    }

    #[test]
    fn the_clearing_cookie_string_is_exact() {
        assert_eq!(
            SessionCookie::new("token", false).unwrap().clear(),
            "token=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn secure_cookies_say_so() {
        let cookie = SessionCookie::new(SessionCookie::DEFAULT_SECURE_NAME, true).unwrap();
        assert_eq!(
            cookie.issue("t", 60).unwrap(),
            "__Host-token=t; HttpOnly; SameSite=Strict; Path=/; Max-Age=60; Secure"
        );
        assert!(cookie.clear().to_str().unwrap().ends_with("; Secure"));
    }

    #[test]
    fn an_oversized_cookie_is_refused() {
        let cookie = SessionCookie::new("token", false).unwrap();
        assert_eq!(
            cookie.issue(&"x".repeat(MAX_COOKIE_BYTES), 60),
            Err(CookieTooLarge)
        );
    }

    #[test]
    fn names_must_be_tokens() {
        for bad in ["", "a b", "a;b", "a=b", "é"] {
            assert!(SessionCookie::new(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_are_found_across_headers() {
        let cookie = SessionCookie::new("token", false).unwrap();
        let map = headers(&["a=1; token=first", "token=second;b=2"]);
        assert_eq!(cookie.values(&map).collect::<Vec<_>>(), ["first", "second"]);
        assert_eq!(cookie.values(&headers(&["tokens=1"])).count(), 0);
    }

    #[test]
    fn stripping_keeps_the_other_cookies() {
        let cookie = SessionCookie::new("token", false).unwrap();
        let map = headers(&["a=1; token=secret", "b=2"]);
        assert_eq!(cookie.strip_from(&map).unwrap(), "a=1; b=2");
        assert_eq!(cookie.strip_from(&headers(&["token=secret"])), None);
    }

    #[test]
    fn recognises_an_upstream_overwriting_the_session() {
        let cookie = SessionCookie::new("token", false).unwrap();
        assert!(cookie.is_set_by(&HeaderValue::from_static("token=evil; Path=/")));
        assert!(!cookie.is_set_by(&HeaderValue::from_static("theme=dark; Path=/")));
        let not_utf8 = HeaderValue::from_bytes(b"token=\xff\xfe; Path=/").unwrap();
        assert!(cookie.is_set_by(&not_utf8));
    }
}
