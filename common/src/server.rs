//! What every binary runs on: logging, binding, graceful shutdown and the container health probe.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use warp::{Filter, Reply};

use crate::env::{ConfigError, Env};

pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Logs through pretty_env_logger at `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    let filters = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    // A second call (tests start several servers in one process) keeps the first logger.
    let _ = pretty_env_logger::formatted_timed_builder()
        .parse_filters(&filters)
        .try_init();
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

/// Binds `listen.addr` and returns the bound address with the server's future. The server stops
/// accepting when `shutdown` completes, then lets requests in flight finish for at most the grace
/// period.
pub async fn bind<F, R>(
    listen: Listen,
    filter: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)>
where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    let listener = TcpListener::bind(listen.addr).await?;
    let addr = listener.local_addr()?;
    let (shutdown_started, grace_starts) = oneshot::channel();
    let server = warp::serve(filter)
        .incoming(listener)
        .graceful(async move {
            shutdown.await;
            let _ = shutdown_started.send(());
        })
        .run();
    let grace_over = async move {
        match grace_starts.await {
            Ok(()) => tokio::time::sleep(listen.shutdown_grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    let run = async move {
        tokio::select! {
            () = server => log::info!("shut down cleanly"),
            () = grace_over => log::warn!("shutdown grace period over; dropping requests still in flight"),
        }
    };
    Ok((addr, run))
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                log::error!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => log::info!("SIGINT received, shutting down"),
        () = terminate => log::info!("SIGTERM received, shutting down"),
    }
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
