//! Header hygiene, the same in both directions: what belongs to one connection is never passed on.

use warp::http::header::{
    CONNECTION, HeaderMap, HeaderName, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

/// The hop-by-hop headers of RFC 9110 §7.6.1, plus the legacy `Keep-Alive` and `Proxy-Connection`.
pub const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
];

/// Removes the hop-by-hop headers, and every header that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few headers a request has, rather than a lookup per listed name: most
    // messages carry none of them, and then nothing is allocated or removed.
    let hop_by_hop: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .chain(
            headers
                .keys()
                .filter(|name| HOP_BY_HOP.contains(name))
                .cloned(),
        )
        .collect();
    for name in hop_by_hop {
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
        headers.append(TE, HeaderValue::from_static("y"));
        headers.insert(CONNECTION, HeaderValue::from_static("close, X-Secret-Hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }
}
