//! What every binary runs on: logging, binding, graceful shutdown and the container health probe.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use warp::http::{Method, Request, Uri};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::env::{ConfigError, Env};
use crate::rejection::ApiError;
use crate::request_id;

pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Logs through pretty_env_logger at `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    let filters = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    // A second call (tests start several servers in one process) keeps the first logger.
    let _ = pretty_env_logger::formatted_timed_builder()
        .parse_filters(&filters)
        .try_init();
}

/// The most worker threads `TOKIO_WORKER_THREADS` may ask for.
const MAX_WORKER_THREADS: usize = 1024;

/// `TOKIO_WORKER_THREADS`, or one worker per core this process may use (cgroup quotas
/// included). Read here rather than by tokio, which panics on a value it cannot parse.
pub fn worker_threads<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<usize, ConfigError> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let workers = env.parse_or("TOKIO_WORKER_THREADS", cores)?;
    if (1..=MAX_WORKER_THREADS).contains(&workers) {
        Ok(workers)
    } else {
        Err(ConfigError(format!(
            "TOKIO_WORKER_THREADS must be between 1 and {MAX_WORKER_THREADS}"
        )))
    }
}

/// The async runtime for a binary, with `workers` worker threads on tokio's work-stealing
/// scheduler. With one, it is tokio's single-threaded scheduler instead, which does the same work
/// without the cross-thread queues and wake-ups that a lone worker never needs. Blocking work
/// (password hashing) has its own threads either way.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// Where a binary listens and how long it lets requests in flight finish on shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub shutdown_grace: Duration,
}

impl Listen {
    /// `HOST` (default `0.0.0.0`), `PORT` and `SHUTDOWN_GRACE_SECS` (default 10).
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        default_port: u16,
    ) -> Result<Self, ConfigError> {
        let host: std::net::IpAddr = env.parse_or("HOST", [0, 0, 0, 0].into())?;
        let port = env.parse_or("PORT", default_port)?;
        let grace = env.parse_or("SHUTDOWN_GRACE_SECS", DEFAULT_SHUTDOWN_GRACE.as_secs())?;
        Ok(Self {
            addr: SocketAddr::new(host, port),
            shutdown_grace: Duration::from_secs(grace),
        })
    }

    /// Loopback on a port the OS picks, for tests.
    pub fn ephemeral() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// The client's address, put on every request before any filter runs; read it with [`peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The peer's address, when the request came over TCP.
pub fn peer() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Copy {
    warp::ext::optional::<PeerAddr>().map(|peer: Option<PeerAddr>| peer.map(|PeerAddr(addr)| addr))
}

/// Who the request was made for, when a handler knows: put on the response for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser(pub String);

/// One finished request, as the access log and metrics see it.
#[derive(Debug)]
pub struct Exchange<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub response: &'a Response,
    /// Until the response's head was ready; a streamed body may take longer.
    pub elapsed: Duration,
}

/// Told about every request; the gateway counts them for its metrics.
pub trait Observer: Send + Sync + 'static {
    fn started(&self) {}
    /// The request has an answer.
    fn finished(&self, _exchange: &Exchange<'_>) {}
    /// The request is over, answered or abandoned by a client that went away.
    fn ended(&self) {}
}

/// Calls [`Observer::ended`] however the request's future ends, dropped ones included.
struct InFlight<O: Observer>(Arc<O>);

impl<O: Observer> Drop for InFlight<O> {
    fn drop(&mut self) {
        self.0.ended();
    }
}

/// Observes nothing beyond the access log.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogOnly;

impl Observer for AccessLogOnly {}

/// Binds `listen.addr` and returns the bound address with the server's future. The server stops
/// accepting when `shutdown` completes, then lets requests in flight finish for at most the grace
/// period.
pub async fn bind<F, R>(
    listen: Listen,
    filter: F,
    observer: Arc<impl Observer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)>
where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    let listener = TcpListener::bind(listen.addr).await?;
    let addr = listener.local_addr()?;
    let service = warp::service(filter);
    let run = async move {
        let connections = GracefulShutdown::new();
        // HTTP/1 only: without TLS, HTTP/2 would arrive as cleartext h2c, which browsers never
        // speak and whose requests carry no Host header for the same-origin check.
        let mut http = auto::Builder::new(TokioExecutor::new()).http1_only();
        // Slow clients may not hold a connection open by dribbling their headers.
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, typically: back off instead of spinning.
                        log::error!("accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let observed = observe(service.clone(), Arc::clone(&observer), peer);
            let connection = http
                .serve_connection(TokioIo::new(stream), observed)
                .into_owned();
            let connection = connections.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    log::debug!("connection from {peer} ended: {error}");
                }
            });
        }
        drop(listener);
        tokio::select! {
            () = connections.shutdown() => log::info!("shut down cleanly"),
            () = tokio::time::sleep(listen.shutdown_grace) => {
                log::warn!("shutdown grace period over; dropping requests still in flight");
            }
        }
    };
    Ok((addr, run))
}

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Gives the request its id and its peer, runs the filters, and reports the result.
fn observe<S>(
    service: S,
    observer: Arc<impl Observer>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
where
    S: tower_service::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let handle = move |mut request: Request<Incoming>| {
        let started = Instant::now();
        let id = request_id::accept_or_generate(request.headers());
        request.headers_mut().insert(request_id::HEADER, id.clone());
        request.extensions_mut().insert(PeerAddr(peer));
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        observer.started();
        let in_flight = InFlight(Arc::clone(&observer));
        let mut service = service.clone();
        let observer = Arc::clone(&observer);
        let routed = match refusal_of_target(request.method(), request.uri()) {
            None => Ok(tower_service::Service::call(&mut service, request)),
            Some(refusal) => Err(refusal),
        };
        async move {
            let mut response = match routed {
                Ok(routed) => {
                    let Ok(response) = routed.await;
                    response
                }
                Err(refusal) => refusal.into_response(),
            };
            let elapsed = started.elapsed();
            response
                .headers_mut()
                .insert(request_id::HEADER, id.clone());
            let user = response
                .extensions()
                .get::<AuthenticatedUser>()
                .map_or("-", |user| user.0.as_str());
            // Container health checks probe every few seconds; their lines would drown the rest.
            let level = if path == "/healthz" {
                log::Level::Debug
            } else {
                log::Level::Info
            };
            log::log!(
                target: "access",
                level,
                "{} {method} {path} {} {:.1}ms user={user} peer={}",
                id.to_str().unwrap_or("-"),
                response.status().as_u16(),
                elapsed.as_secs_f64() * 1000.0,
                peer.ip(),
            );
            let _in_flight = in_flight;
            observer.finished(&Exchange {
                method: &method,
                path: &path,
                response: &response,
                elapsed,
            });
            Ok(response)
        }
    };
    hyper::service::service_fn(handle)
}

/// The answer, given before any filter runs, to a request no route can take: `CONNECT`, which
/// asks for a tunnel rather than a resource and is never forwarded, and any other request whose
/// target is not a path (`OPTIONS *`), on which warp's path filters panic.
fn refusal_of_target(method: &Method, uri: &Uri) -> Option<ApiError> {
    if method == Method::CONNECT {
        return Some(ApiError::MethodNotAllowed);
    }
    let is_path = uri
        .path_and_query()
        .is_some_and(|target| target.as_str().starts_with('/'));
    (!is_path).then_some(ApiError::BadRequest("Request target must be a path"))
}

/// A future that completes on SIGTERM or SIGINT. The handlers are installed now, before the
/// server announces itself, so that a signal sent right after start is never fatal.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => log::info!("SIGTERM received, shutting down"),
            _ = interrupt.recv() => log::info!("SIGINT received, shutting down"),
        }
    })
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        log::info!("interrupted, shutting down");
    })
}

/// `--health-check`: asks this container's own server for `/healthz` and exits 0 on a 200.
/// Images need neither curl nor a shell for their HEALTHCHECK.
pub fn health_check(port: u16) -> std::process::ExitCode {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let probe = || -> std::io::Result<bool> {
        let timeout = Duration::from_secs(3);
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut status_line = [0u8; 12];
        stream.read_exact(&mut status_line)?;
        Ok(status_line.starts_with(b"HTTP/1.1 200"))
    };
    match probe() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers_with(value: Option<&'static str>) -> Result<usize, ConfigError> {
        worker_threads(&Env::from_lookup(move |name| {
            assert_eq!(name, "TOKIO_WORKER_THREADS");
            value.map(str::to_owned)
        }))
    }

    #[test]
    fn worker_threads_default_to_the_cores_and_refuse_nonsense_without_panicking() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(workers_with(None), Ok(cores));
        assert_eq!(workers_with(Some("1")), Ok(1));
        assert_eq!(workers_with(Some(" 4 ")), Ok(4));
        for nonsense in ["0", "-1", "many", "1025"] {
            let error = workers_with(Some(nonsense)).unwrap_err().to_string();
            assert!(
                error.contains("TOKIO_WORKER_THREADS"),
                "{nonsense}: {error}"
            );
        }
    }
}
