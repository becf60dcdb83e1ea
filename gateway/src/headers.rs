//! Header hygiene, the same in both directions: what belongs to one connection is never passed on.

use warp::http::header::{CONNECTION, HeaderMap, HeaderName};

/// The hop-by-hop headers of RFC 9110 §7.6.1, plus the legacy `Keep-Alive` and `Proxy-Connection`.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Removes the hop-by-hop headers, and every header that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named_by_connection {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    #[test]
    fn every_listed_and_connection_named_header_goes() {
        let mut headers = HeaderMap::new();
        for name in HOP_BY_HOP {
            headers.insert(name, HeaderValue::from_static("x"));
        }
        headers.insert(CONNECTION, HeaderValue::from_static("close, X-Secret-Hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }
}
