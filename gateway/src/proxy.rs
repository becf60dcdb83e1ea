//! Forwarding one authenticated request upstream and its answer back, streamed both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::server::AuthenticatedUser;
use common::{ApiError, SessionCookie, request_id};
use futures_util::{Stream, StreamExt};
use warp::Reply;
use warp::http::Method;
use warp::http::header::{
    CONTENT_LENGTH, COOKIE, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue, SET_COOKIE,
    TRANSFER_ENCODING,
};
use warp::reply::Response;

use crate::config::Config;
use crate::headers::strip_hop_by_hop;
use crate::metrics::UpstreamLatency;
use crate::network::{IpNetwork, is_listed};
use crate::routes::Upstream;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const AUTHENTICATED_USER: HeaderName = HeaderName::from_static(common::AUTHENTICATED_USER_HEADER);

pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// The parts of a client's request that are passed on.
pub struct IncomingRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub peer: Option<SocketAddr>,
    pub body: BodyStream,
}

/// Only the request line: headers and body may carry credentials.
impl std::fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The HTTP client, built once so that upstream connections are pooled and kept alive, and the
/// rules every forwarded request follows.
#[derive(Debug)]
pub struct Proxy {
    client: reqwest::Client,
    max_body_bytes: u64,
    timeout: Duration,
    trusted_proxies: Vec<IpNetwork>,
    cookie: SessionCookie,
}

#[derive(Debug)]
struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body over the limit")
    }
}

impl std::error::Error for BodyTooLarge {}

impl Proxy {
    pub fn new(config: &Config) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A gateway talks to its own upstreams; HTTP_PROXY and friends are for other programs.
            .no_proxy()
            .connect_timeout(config.upstream_timeout)
            .read_timeout(config.upstream_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .http1_only()
            .build()?;
        Ok(Self {
            client,
            max_body_bytes: config.max_body_bytes,
            timeout: config.upstream_timeout,
            trusted_proxies: config.trusted_proxies.clone(),
            cookie: config.cookie.clone(),
        })
    }

    /// Sends `request` to `upstream` on behalf of `user`, and its answer back. Every failure is a
    /// JSON reply here and now; none names the upstream.
    pub async fn forward(
        &self,
        upstream: &Upstream,
        user: &str,
        request: IncomingRequest,
    ) -> Response {
        let mut response = match self.try_forward(upstream, user, request).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
        response
            .extensions_mut()
            .insert(AuthenticatedUser(user.to_owned()));
        response
    }

    /// Whether the upstream answers `GET /healthz` with a success within two seconds.
    pub async fn is_healthy(&self, upstream: &Upstream) -> bool {
        let probe = self
            .client
            .get(format!("{}/healthz", upstream.origin()))
            .send();
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(response)) if response.status().is_success()
        )
    }

    async fn try_forward(
        &self,
        upstream: &Upstream,
        user: &str,
        request: IncomingRequest,
    ) -> Result<Response, ApiError> {
        let IncomingRequest {
            method,
            path,
            query,
            mut headers,
            peer,
            body,
        } = request;
        let declared_length = declared_length(&headers)?;
        if declared_length.is_some_and(|length| length > self.max_body_bytes) {
            return Err(ApiError::PayloadTooLarge);
        }
        let has_body = declared_length.is_some() || headers.contains_key(TRANSFER_ENCODING);
        let id = headers.get(&request_id::HEADER).cloned();
        let url = upstream_url(upstream, &path, query.as_deref())?;
        self.prepare_request_headers(&mut headers, user, peer)?;

        let mut outgoing = reqwest::Request::new(method, url);
        *outgoing.headers_mut() = headers;
        let body_too_large = Arc::new(AtomicBool::new(false));
        if has_body {
            let limited = limit_body(body, self.max_body_bytes, Arc::clone(&body_too_large));
            *outgoing.body_mut() = Some(reqwest::Body::wrap_stream(limited));
        }

        let started = Instant::now();
        let sent = tokio::time::timeout(self.timeout, self.client.execute(outgoing)).await;
        let upstream_response = match sent {
            Err(_elapsed) => return Err(ApiError::GatewayTimeout),
            Ok(Err(_)) if body_too_large.load(Ordering::Relaxed) => {
                return Err(ApiError::PayloadTooLarge);
            }
            Ok(Err(error)) if error.is_timeout() => return Err(ApiError::GatewayTimeout),
            Ok(Err(error)) => {
                let id = id.as_ref().and_then(|id| id.to_str().ok()).unwrap_or("-");
                log::warn!("{id} upstream {upstream:?} failed: {}", error.without_url());
                return Err(ApiError::BadGateway);
            }
            Ok(Ok(response)) => response,
        };
        let mut response = self.relay_response(upstream_response);
        response
            .extensions_mut()
            .insert(UpstreamLatency(started.elapsed()));
        Ok(response)
    }

    fn prepare_request_headers(
        &self,
        headers: &mut HeaderMap,
        user: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(), ApiError> {
        strip_hop_by_hop(headers);
        // The client talks to the gateway; what it expects of the upstream's framing is ours to handle.
        headers.remove(EXPECT);
        let host = headers.remove(HOST);
        headers.remove(&AUTHENTICATED_USER);
        let identity = HeaderValue::from_str(user)
            .map_err(|_| ApiError::BadRequest("User name cannot be sent upstream"))?;
        headers.insert(AUTHENTICATED_USER, identity);

        let other_cookies = self.cookie.strip_from(headers);
        headers.remove(COOKIE);
        if let Some(cookies) = other_cookies {
            headers.insert(COOKIE, cookies);
        }

        let trusted_peer = peer.is_some_and(|peer| is_listed(&self.trusted_proxies, peer.ip()));
        if !trusted_peer {
            headers.remove(&X_FORWARDED_FOR);
            headers.remove(&X_FORWARDED_PROTO);
            headers.remove(&X_FORWARDED_HOST);
        }
        if let Some(peer) = peer {
            // A trusted proxy's chain is extended; anyone else's was dropped above.
            let mut chain: Vec<String> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .map(str::to_owned)
                .collect();
            chain.push(peer.ip().to_string());
            if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
                headers.insert(X_FORWARDED_FOR, value);
            }
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if let Some(host) = host {
            headers.entry(X_FORWARDED_HOST).or_insert(host);
        }
        Ok(())
    }

    fn relay_response(&self, mut upstream: reqwest::Response) -> Response {
        let status = upstream.status();
        let mut headers = std::mem::take(upstream.headers_mut());
        strip_hop_by_hop(&mut headers);
        self.drop_session_overwrites(&mut headers);
        let mut response = warp::reply::stream(upstream.bytes_stream()).into_response();
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// An upstream may set its own cookies, but never the gateway's session cookie.
    fn drop_session_overwrites(&self, headers: &mut HeaderMap) {
        if !headers
            .get_all(SET_COOKIE)
            .iter()
            .any(|value| self.cookie.is_set_by(value))
        {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter(|value| !self.cookie.is_set_by(value))
            .cloned()
            .collect();
        headers.remove(SET_COOKIE);
        for value in kept {
            headers.append(SET_COOKIE, value);
        }
    }
}

/// The request's Content-Length, if it has one that makes sense.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(CONTENT_LENGTH) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map(Some)
            .ok_or(ApiError::BadRequest("Invalid Content-Length")),
    }
}

/// The upstream URL for exactly the path that was authorised. The URL parser resolves dot segments
/// and rewrites some characters; the path was checked to need none of that, and if the parser
/// would still change it the request is refused rather than sent somewhere else.
fn upstream_url(
    upstream: &Upstream,
    path: &str,
    query: Option<&str>,
) -> Result<reqwest::Url, ApiError> {
    let mut target = String::with_capacity(upstream.origin().len() + path.len() + 64);
    target.push_str(upstream.origin());
    target.push_str(path);
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    let unchanged = ApiError::BadRequest("Request path cannot be forwarded unchanged");
    let url = reqwest::Url::parse(&target).map_err(|_| unchanged.clone())?;
    if url.path() != path {
        return Err(unchanged);
    }
    Ok(url)
}

/// Passes the body on while counting it; past `limit` bytes the stream fails, so the upstream
/// never receives more than the limit, and `exceeded` tells why it failed.
fn limit_body(
    body: BodyStream,
    limit: u64,
    exceeded: Arc<AtomicBool>,
) -> impl Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Send {
    let mut seen: u64 = 0;
    body.map(move |chunk| {
        let bytes = chunk?;
        seen += bytes.len() as u64;
        if seen > limit {
            exceeded.store(true, Ordering::Relaxed);
            return Err(BodyTooLarge.into());
        }
        Ok(bytes)
    })
}
