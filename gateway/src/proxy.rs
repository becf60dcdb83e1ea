//! Forwarding one authenticated request upstream and its answer back, streamed both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use bytes::Bytes;
use common::server::AuthenticatedUser;
use common::{ApiError, SessionCookie, request_id};
use futures_util::Stream;
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
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

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
    client_body_timeout: Duration,
    trusted_proxies: Vec<IpNetwork>,
    cookie: SessionCookie,
}

impl Proxy {
    pub fn new(config: &Config) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A gateway talks to its own upstreams; HTTP_PROXY and friends are for other programs.
            .no_proxy()
            .connect_timeout(config.upstream_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .http1_only()
            .build()?;
        Ok(Self {
            client,
            max_body_bytes: config.max_body_bytes,
            timeout: config.upstream_timeout,
            client_body_timeout: config.client_body_timeout,
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
        let url = upstream
            .url_for(&path, query.as_deref())
            .ok_or(ApiError::BadRequest(
                "Request path cannot be forwarded unchanged",
            ))?;
        self.prepare_request_headers(&mut headers, user, peer)?;

        let mut outgoing = reqwest::Request::new(method, url);
        *outgoing.headers_mut() = headers;
        // The wait for the answer starts once the whole body has gone upstream: a large upload
        // over a slow link is not a slow upstream.
        let (body_sent, answer_due) = oneshot::channel();
        let body_fault = Arc::new(OnceLock::new());
        if has_body {
            let outgoing_body = OutgoingBody {
                inner: body,
                seen: 0,
                limit: self.max_body_bytes,
                fault: Arc::clone(&body_fault),
                sent: Some(body_sent),
                idle_timeout: self.client_body_timeout,
                idle_deadline: Box::pin(tokio::time::sleep(self.client_body_timeout)),
            };
            *outgoing.body_mut() = Some(reqwest::Body::wrap_stream(outgoing_body));
        } else {
            drop(body_sent);
        }
        let timeout = self.timeout;
        let answer_deadline = async move {
            let _ = answer_due.await;
            tokio::time::sleep(timeout).await;
        };

        let started = Instant::now();
        let sent = tokio::select! {
            sent = self.client.execute(outgoing) => sent,
            () = answer_deadline => return Err(ApiError::GatewayTimeout),
        };
        let upstream_response = match sent {
            Err(_) if body_fault.get() == Some(&BodyFault::TooLarge) => {
                return Err(ApiError::PayloadTooLarge);
            }
            Err(_) if body_fault.get() == Some(&BodyFault::Stalled) => {
                return Err(ApiError::RequestTimeout);
            }
            Err(error) if error.is_timeout() => return Err(ApiError::GatewayTimeout),
            Err(error) => {
                let id = id.as_ref().and_then(|id| id.to_str().ok()).unwrap_or("-");
                log::warn!("{id} upstream {upstream:?} failed: {}", error.without_url());
                return Err(ApiError::BadGateway);
            }
            Ok(response) => response,
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
        // The request id is the gateway's, even if the client named it in `Connection`.
        let request_id = headers.remove(&request_id::HEADER);
        strip_hop_by_hop(headers);
        if let Some(id) = request_id {
            headers.insert(request_id::HEADER, id);
        }
        // The client talks to the gateway; what it expects of the upstream's framing is ours to handle.
        headers.remove(EXPECT);
        let host = headers.remove(HOST);
        remove_spellings_of(headers, common::AUTHENTICATED_USER_HEADER);
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
            for name in [
                &X_FORWARDED_FOR,
                &X_FORWARDED_PROTO,
                &X_FORWARDED_HOST,
                &FORWARDED,
                &X_REAL_IP,
            ] {
                headers.remove(name);
            }
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
        let body = IdleTimeout {
            inner: Box::pin(upstream.bytes_stream()),
            timeout: self.timeout,
            deadline: Box::pin(tokio::time::sleep(self.timeout)),
        };
        let mut response = warp::reply::stream(body).into_response();
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

/// Removes `name` and every header that CGI-style upstreams would read as the same variable:
/// `X_Authenticated_User` becomes `HTTP_X_AUTHENTICATED_USER` just as `X-Authenticated-User` does.
fn remove_spellings_of(headers: &mut HeaderMap, name: &str) {
    headers.remove(name);
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|key| key.as_str().contains('_') && key.as_str().replace('_', "-") == name)
        .cloned()
        .collect();
    for lookalike in lookalikes {
        headers.remove(lookalike);
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body on its way upstream: counted, so that past the limit it fails and the
/// upstream never receives more than the limit (`exceeded` then tells why), and telling `sent`
/// when it has all gone (or was dropped), to start the wait for the answer.
struct OutgoingBody {
    inner: BodyStream,
    seen: u64,
    limit: u64,
    fault: Arc<OnceLock<BodyFault>>,
    sent: Option<oneshot::Sender<()>>,
    idle_timeout: Duration,
    idle_deadline: Pin<Box<tokio::time::Sleep>>,
}

/// Why the client's body stopped on its way upstream, when the client is to blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFault {
    TooLarge,
    Stalled,
}

impl Stream for OutgoingBody {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Poll::Ready(item) = this.inner.as_mut().poll_next(cx) else {
            // A client that stops sending mid-body would hold the upstream connection forever.
            if this.idle_deadline.as_mut().poll(cx).is_ready() {
                let _ = this.fault.set(BodyFault::Stalled);
                return Poll::Ready(Some(Err(BodyFault::Stalled.into())));
            }
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::now() + this.idle_timeout;
        this.idle_deadline.as_mut().reset(deadline);
        match item {
            None => {
                if let Some(sent) = this.sent.take() {
                    let _ = sent.send(());
                }
                Poll::Ready(None)
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            Some(Ok(bytes)) => {
                this.seen += bytes.len() as u64;
                if this.seen > this.limit {
                    let _ = this.fault.set(BodyFault::TooLarge);
                    return Poll::Ready(Some(Err(BodyFault::TooLarge.into())));
                }
                Poll::Ready(Some(Ok(bytes)))
            }
        }
    }
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "request body over the limit",
            Self::Stalled => "request body stalled",
        })
    }
}

impl std::error::Error for BodyFault {}

/// The upstream's body on its way back. An upstream that falls silent mid-body for longer than
/// the timeout ends the response, rather than holding two connections open forever.
struct IdleTimeout {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send + Sync>>,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

#[derive(Debug)]
struct UpstreamStalled;

impl std::fmt::Display for UpstreamStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream body stalled")
    }
}

impl std::error::Error for UpstreamStalled {}

impl Stream for IdleTimeout {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(item) => {
                this.deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + this.timeout);
                Poll::Ready(item.map(|chunk| chunk.map_err(BoxError::from)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(UpstreamStalled.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
