//! Forwarding one authenticated request upstream and its answer back, streamed both ways.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::server::AuthenticatedUser;
use common::{ApiError, SessionCookie, request_id};
use futures_util::Stream;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error as ClientError, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use warp::Reply;
use warp::http::header::{
    CONTENT_LENGTH, COOKIE, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue, SET_COOKIE,
    TRANSFER_ENCODING,
};
use warp::http::{Method, Request, Uri};
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
    client: Client<TimedConnector, UpstreamBody>,
    max_body_bytes: u64,
    timeout: Duration,
    client_body_timeout: Duration,
    trusted_proxies: Vec<IpNetwork>,
    cookie: SessionCookie,
}

impl Proxy {
    /// A client that follows no redirects and ignores `HTTP_PROXY`: a gateway relays its own
    /// upstreams' answers as they are.
    pub fn new(config: &Config) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // An upstream that vanishes without a FIN or RST is noticed on a pooled connection too.
        connector.set_keepalive(Some(Duration::from_secs(15)));
        connector.set_keepalive_interval(Some(Duration::from_secs(15)));
        connector.set_keepalive_retries(Some(3));
        connector.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let connector = TimedConnector {
            inner: connector,
            timeout: config.upstream_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            max_body_bytes: config.max_body_bytes,
            timeout: config.upstream_timeout,
            client_body_timeout: config.client_body_timeout,
            trusted_proxies: config.trusted_proxies.clone(),
            cookie: config.cookie.clone(),
        }
    }

    /// Sends `request` to `upstream` on behalf of `user`, and its answer back. Every failure is a
    /// JSON reply here and now; none names the upstream.
    pub async fn forward(
        &self,
        upstream: &Upstream,
        user: String,
        request: IncomingRequest,
    ) -> Response {
        let mut response = match self.try_forward(upstream, &user, request).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
        response.extensions_mut().insert(AuthenticatedUser(user));
        response
    }

    /// Whether the upstream answers `GET /healthz` with a success within two seconds.
    pub async fn is_healthy(&self, upstream: &Upstream) -> bool {
        let Some(uri) = upstream.uri_for("/healthz", None) else {
            return false;
        };
        let mut request = Request::new(UpstreamBody::Empty);
        *request.uri_mut() = uri;
        let probe = self.client.request(request);
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
        let uri = upstream
            .uri_for(&path, query.as_deref())
            .ok_or(ApiError::BadRequest(
                "Request path cannot be forwarded unchanged",
            ))?;
        self.prepare_request_headers(&mut headers, user, peer)?;

        let (body, upload) = if has_body {
            let (body, upload) = self.upload(body);
            (body, Some(upload))
        } else {
            (UpstreamBody::Empty, None)
        };
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = method;
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = headers;

        let started = Instant::now();
        let answer = self.client.request(outgoing);
        let sent = match upload {
            None => tokio::time::timeout(self.timeout, answer)
                .await
                .map_err(|_| ApiError::GatewayTimeout)?,
            // Boxed: the upload's wait is the larger future, and it should not size every
            // request's state.
            Some(upload) => Box::pin(self.answer_after_upload(answer, upload)).await?,
        };
        let upstream_response = match sent {
            Ok(response) => response,
            Err(error) if is_connect_timeout(&error) => return Err(ApiError::GatewayTimeout),
            Err(error) => {
                let id = id.as_ref().and_then(|id| id.to_str().ok()).unwrap_or("-");
                log::warn!("{id} upstream {upstream:?} failed: {}", describe(&error));
                return Err(ApiError::BadGateway);
            }
        };
        let mut response = self.relay_response(upstream_response);
        response
            .extensions_mut()
            .insert(UpstreamLatency(started.elapsed()));
        Ok(response)
    }

    /// The client's body as it goes upstream: counted against the limit, watched for stalls, and
    /// telling the wait for the answer when it has all gone.
    fn upload(&self, body: BodyStream) -> (UpstreamBody, Upload) {
        let (body_sent, answer_due) = oneshot::channel();
        let fault = Arc::new(OnceLock::new());
        let outgoing = OutgoingBody {
            inner: body,
            seen: 0,
            limit: self.max_body_bytes,
            fault: Arc::clone(&fault),
            sent: Some(body_sent),
            idle_timeout: self.client_body_timeout,
            idle_deadline: Box::pin(tokio::time::sleep(self.client_body_timeout)),
        };
        (
            UpstreamBody::Streamed(outgoing),
            Upload { answer_due, fault },
        )
    }

    /// The upstream's answer to a request with a body. The wait for it starts once the whole body
    /// has gone upstream: a large upload over a slow link is not a slow upstream.
    async fn answer_after_upload(
        &self,
        answer: ResponseFuture,
        upload: Upload,
    ) -> Result<Result<warp::http::Response<Incoming>, ClientError>, ApiError> {
        let Upload { answer_due, fault } = upload;
        let timeout = self.timeout;
        let answer_deadline = async move {
            let _ = answer_due.await;
            tokio::time::sleep(timeout).await;
        };
        let sent = tokio::select! {
            sent = answer => sent,
            () = answer_deadline => return Err(ApiError::GatewayTimeout),
        };
        match (&sent, fault.get()) {
            (Err(_), Some(BodyFault::TooLarge)) => Err(ApiError::PayloadTooLarge),
            (Err(_), Some(BodyFault::Stalled)) => Err(ApiError::RequestTimeout),
            _ => Ok(sent),
        }
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
        remove_spellings_of(headers, &AUTHENTICATED_USER);
        // Room for the identity and forwarding headers below, so the map grows at most once.
        headers.reserve(4);
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
            let mut chain = String::new();
            for earlier in headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|value| value.to_str().ok())
            {
                chain.push_str(earlier);
                chain.push_str(", ");
            }
            let _ = write!(chain, "{}", peer.ip());
            if let Ok(value) = HeaderValue::try_from(chain) {
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

    fn relay_response(&self, upstream: warp::http::Response<Incoming>) -> Response {
        let (parts, body) = upstream.into_parts();
        let status = parts.status;
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        self.drop_session_overwrites(&mut headers);
        let body = IdleTimeout {
            inner: body,
            timeout: self.timeout,
            deadline: None,
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
fn remove_spellings_of(headers: &mut HeaderMap, name: &HeaderName) {
    headers.remove(name);
    let same_with_underscores = |key: &HeaderName| {
        let (key, name) = (key.as_str().as_bytes(), name.as_str().as_bytes());
        key.len() == name.len()
            && key.contains(&b'_')
            && key
                .iter()
                .zip(name)
                .all(|(k, n)| k == n || (*k == b'_' && *n == b'-'))
    };
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|key| same_with_underscores(key))
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

/// What the wait for an answer needs to know of a body on its way upstream.
struct Upload {
    /// Completes when the body has all gone, or was dropped.
    answer_due: oneshot::Receiver<()>,
    fault: Arc<OnceLock<BodyFault>>,
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

/// What goes upstream as the request body: nothing, or the client's body as it arrives.
enum UpstreamBody {
    Empty,
    Streamed(OutgoingBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Streamed(body) => Pin::new(body)
                .poll_next(cx)
                .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Empty)
    }
}

/// hyper-util's connector under one deadline for the whole connect, the name lookup included:
/// its own connect timeout covers each TCP attempt but not the lookup.
#[derive(Debug, Clone)]
struct TimedConnector {
    inner: HttpConnector,
    timeout: Duration,
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<Uri> for TimedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(BoxError::from)
    }

    fn call(&mut self, upstream: Uri) -> Connecting {
        let connecting = self.inner.call(upstream);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(BoxError::from),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to the upstream timed out",
                )
                .into()),
            }
        })
    }
}

/// Whether the upstream could not be reached within the timeout: the gateway's wait, so a 504.
fn is_connect_timeout(error: &ClientError) -> bool {
    error.is_connect()
        && std::iter::successors(std::error::Error::source(error), |inner| inner.source())
            .filter_map(|inner| inner.downcast_ref::<std::io::Error>())
            .any(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// The innermost cause of a failed upstream exchange, for the log: "connection refused", say.
/// Upstream URIs never carry credentials, and request data is not part of these errors.
fn describe(error: &ClientError) -> String {
    let innermost =
        std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |inner| {
            inner.source()
        })
        .last()
        .map(ToString::to_string)
        .unwrap_or_default();
    format!("{error}: {innermost}")
}

/// The upstream's body on its way back. An upstream that falls silent mid-body for longer than
/// the timeout ends the response, rather than holding two connections open forever.
struct IdleTimeout {
    inner: Incoming,
    timeout: Duration,
    /// Armed the first time the upstream keeps us waiting; a body that is already there needs none.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
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
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    if let Some(deadline) = &mut this.deadline {
                        deadline
                            .as_mut()
                            .reset(tokio::time::Instant::now() + this.timeout);
                    }
                    match frame {
                        None => return Poll::Ready(None),
                        Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => return Poll::Ready(Some(Ok(data))),
                            // Trailers: warp's streamed replies have no way to send them on.
                            Err(_trailers) => continue,
                        },
                    }
                }
                Poll::Pending => {
                    let timeout = this.timeout;
                    let deadline = this
                        .deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    return match deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(UpstreamStalled.into()))),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}
