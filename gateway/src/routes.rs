//! The route table: which path prefix goes to which upstream, and which paths are acceptable at all.

use std::fmt;

use common::env::ConfigError;
use warp::http::uri::{Authority, PathAndQuery, Scheme, Uri};

/// Paths the gateway answers itself; no route may shadow them, and metrics label them as such.
pub const RESERVED: [&str; 5] = ["/login", "/logout", "/healthz", "/readyz", "/metrics"];

pub const DEFAULT_ROUTES: &str =
    "/service1=http://service-one:5001,/service2=http://service-two:5002";

/// An upstream's origin, `http://host:port`, to which the request's own path is appended as is.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    authority: Authority,
}

impl Upstream {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let error = |why: &str| ConfigError(format!("ROUTES: upstream {raw:?} {why}"));
        let uri: Uri = raw.parse().map_err(|_| error("is not a URL"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(error("is not a URL"));
        };
        if scheme != "http" {
            return Err(error(
                "must be an http:// URL (TLS to upstreams is not built in)",
            ));
        }
        if authority.as_str().contains('@') {
            return Err(error("must not carry credentials"));
        }
        let path_and_query = uri.path_and_query().map(PathAndQuery::as_str);
        if authority.host().is_empty() || !matches!(path_and_query, None | Some("/")) {
            return Err(error(
                "must be just scheme, host and port, like http://service-one:5001",
            ));
        }
        if authority.port_u16().is_none() && authority.as_str() != authority.host() {
            return Err(error("has an invalid port"));
        }
        Ok(Self {
            authority: authority.clone(),
        })
    }

    /// The upstream URI for exactly `path` and `query`, byte for byte: unlike a WHATWG URL, a URI
    /// resolves no dot segments and re-encodes nothing, so the path the route authorised is the
    /// path the upstream gets. None for a path that [`check_path`] refuses (checked here again, so
    /// that no caller can skip it) or that is not valid in a URI.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        check_path(path).ok()?;
        let path_and_query = match query {
            Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
            None => PathAndQuery::try_from(path),
        }
        .ok()?;
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Like `/service1`: it matches itself and anything below it at a segment boundary.
    pub prefix: String,
    pub upstream: Upstream,
}

impl Route {
    pub fn matches(&self, path: &str) -> bool {
        is_at_or_below(path, &self.prefix)
    }
}

/// Whether `path` is `prefix` or below it at a segment boundary.
pub fn is_at_or_below(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Parses `ROUTES`: comma-separated `prefix=url` pairs. Longer prefixes are tried first, so
/// `/api/v2` wins over `/api`.
pub fn parse_routes(raw: &str) -> Result<Vec<Route>, ConfigError> {
    let mut routes = Vec::new();
    for pair in raw
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (prefix, url) = pair
            .split_once('=')
            .ok_or_else(|| ConfigError(format!("ROUTES: {pair:?} is not prefix=url")))?;
        let prefix = prefix.trim();
        check_prefix(prefix)?;
        if routes.iter().any(|route: &Route| route.prefix == prefix) {
            return Err(ConfigError(format!("ROUTES: {prefix} is routed twice")));
        }
        routes.push(Route {
            prefix: prefix.to_owned(),
            upstream: Upstream::parse(url.trim())?,
        });
    }
    if routes.is_empty() {
        return Err(ConfigError("ROUTES: no route given".to_owned()));
    }
    routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
    Ok(routes)
}

fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    let error = |why: &str| ConfigError(format!("ROUTES: prefix {prefix:?} {why}"));
    if prefix.len() < 2 || !prefix.starts_with('/') || prefix.ends_with('/') {
        return Err(error(
            "must start with / and name at least one segment, without a trailing /",
        ));
    }
    if check_path(prefix).is_err() || prefix.contains('%') {
        return Err(error("must be plain path segments"));
    }
    if RESERVED
        .iter()
        .any(|reserved| is_at_or_below(prefix, reserved))
    {
        return Err(error("is one of the gateway's own paths"));
    }
    Ok(())
}

/// The request path the gateway accepts, checked before any route is matched.
///
/// The gateway authorises a path by its prefix and then sends that same path upstream, byte for
/// byte. Anything that an upstream, or the HTTP client on the way, could resolve to a path other
/// than the one that was authorised is refused rather than normalised: dot segments, plain or
/// percent-encoded (`/service1/../admin`, `/service1/%2e%2e/admin`), encoded separators (`%2F`,
/// `%5C`), backslashes, which WHATWG URL parsers treat as `/`, and empty segments (`//x`), which
/// some servers merge. A trailing slash is fine.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("Request path must start with /");
    };
    if path.contains('\\') {
        return Err("Request path must not contain a backslash");
    }
    let lowercase_has = |needle: &str| {
        path.as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
    };
    if lowercase_has("%2f") || lowercase_has("%5c") || lowercase_has("%00") {
        return Err("Request path must not contain encoded separators");
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        if segment.is_empty() && !is_last {
            return Err("Request path must not contain empty segments");
        }
        if is_dot_segment(segment) {
            return Err("Request path must not contain dot segments");
        }
    }
    Ok(())
}

/// `.` or `..`, with any dot written as `%2e`, and with or without `;parameters`, which servlet
/// containers strip before resolving dot segments (`/service1/..;/admin`).
fn is_dot_segment(segment: &str) -> bool {
    let without_parameters = segment.split(';').next().unwrap_or(segment);
    let mut rest = without_parameters;
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            rest = after;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_routes_parse() {
        let routes = parse_routes(DEFAULT_ROUTES).unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(
            format!("{:?}", routes[0].upstream),
            "http://service-one:5001"
        );
    }

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        let route = &parse_routes("/service1=http://a:1").unwrap()[0];
        assert!(route.matches("/service1"));
        assert!(route.matches("/service1/"));
        assert!(route.matches("/service1/x/y"));
        assert!(!route.matches("/service1x"));
        assert!(!route.matches("/service"));
        assert!(!route.matches("/"));
    }

    #[test]
    fn longer_prefixes_are_tried_first() {
        let routes = parse_routes("/api=http://a:1,/api/v2=http://b:2").unwrap();
        assert_eq!(routes[0].prefix, "/api/v2");
    }

    #[test]
    fn bad_routes_are_one_line_errors() {
        for (raw, fragment) in [
            ("", "no route"),
            ("/a", "not prefix=url"),
            ("a=http://x:1", "must start with /"),
            ("/a/=http://x:1", "trailing"),
            ("/a/../b=http://x:1", "plain path segments"),
            ("/login=http://x:1", "gateway's own"),
            ("/metrics/x=http://x:1", "gateway's own"),
            ("/a=ftp://x", "http://"),
            ("/a=https://x", "http://"),
            ("/a=http://x:1/base", "just scheme"),
            ("/a=http://x:1?q", "just scheme"),
            ("/a=http://u:p@x:1", "credentials"),
            ("/a=http://x:70000", "port"),
            ("/a=http://x:", "port"),
            ("/a=x:1", "not a URL"),
            ("/a=not a url", "not a URL"),
            ("/a=http://x:1,/a=http://y:2", "twice"),
        ] {
            let error = parse_routes(raw).unwrap_err().to_string();
            assert!(error.contains(fragment), "{raw:?} gave {error:?}");
            assert!(!error.contains('\n'));
        }
    }

    #[test]
    fn upstream_uris_keep_the_path_and_query_exactly() {
        let upstream = Upstream::parse("http://svc:8080").unwrap();
        let uri = upstream.uri_for("/a/b%20c", Some("x=1&y=%2F")).unwrap();
        assert_eq!(uri.to_string(), "http://svc:8080/a/b%20c?x=1&y=%2F");
        assert_eq!(upstream.uri_for("/a/../b", None), None);
        assert_eq!(upstream.uri_for("/a/%2e%2e/b", None), None);
        assert_eq!(upstream.uri_for("/a b", None), None);
        assert_eq!(upstream.uri_for("/a", Some("b c")), None);
    }

    #[test]
    fn paths_that_could_be_rewritten_are_refused() {
        for path in [
            "/service1/../admin",
            "/service1/./x",
            "/service1/..",
            "/service1/%2e%2e/admin",
            "/service1/%2E./admin",
            "/service1/..%2Fadmin",
            "/service1%2fadmin",
            "/service1/%5c..",
            "/service1\\..\\admin",
            "//x",
            "/service1//x",
            "/service1/%00",
            "/service1/..;/admin",
            "/service1/.;x/admin",
        ] {
            assert!(check_path(path).is_err(), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_are_accepted() {
        for path in [
            "/",
            "/service1",
            "/service1/",
            "/service1/a.b/..c/...",
            "/service1/%20x",
        ] {
            assert!(check_path(path).is_ok(), "{path}");
        }
    }
}
