//! Request ids: a sane `X-Request-Id` from the client is kept, anything else is replaced by one of
//! ours, so that one id follows a request through every log line, the upstream and the reply.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use warp::http::header::{HeaderMap, HeaderName, HeaderValue};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

/// The client's id when it is 1 to 128 characters of `[A-Za-z0-9._:-]`, else a new one.
pub fn accept_or_generate(headers: &HeaderMap) -> HeaderValue {
    let mut given = headers.get_all(&HEADER).iter();
    match (given.next(), given.next()) {
        (Some(id), None) if is_sane(id.as_bytes()) => id.clone(),
        _ => generate(),
    }
}

fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(byte))
}

/// A random per-process prefix and a counter: unique without a system call per request.
fn generate() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        // Without randomness the ids are still unique within this process's logs.
        let mut bytes = [0u8; 6];
        let _ = getrandom::getrandom(&mut bytes);
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    HeaderValue::try_from(format!("{prefix}-{n}"))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(ids: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for id in ids {
            headers.append(&HEADER, HeaderValue::from_str(id).unwrap());
        }
        headers
    }

    #[test]
    fn a_sane_id_is_kept() {
        assert_eq!(
            accept_or_generate(&with(&["abc-123_x.y:z"])),
            "abc-123_x.y:z"
        );
    }

    #[test]
    fn anything_else_is_replaced_by_a_fresh_id() {
        let long = "a".repeat(129);
        for ids in [
            vec![],
            vec![""],
            vec!["has space"],
            vec!["<script>"],
            vec![long.as_str()],
            vec!["a", "b"],
        ] {
            let id = accept_or_generate(&with(&ids));
            assert!(is_sane(id.as_bytes()), "{id:?}");
            assert!(!ids.contains(&id.to_str().unwrap()), "{ids:?}");
        }
        assert_ne!(
            accept_or_generate(&with(&[])),
            accept_or_generate(&with(&[]))
        );
    }
}
