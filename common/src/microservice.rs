//! The two demo services behind the gateway differ only in their path and their message, so both
//! are this one definition.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::env::Env;
use crate::reply::json_message;
use crate::server::{self, AccessLogOnly, Listen};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
pub struct Microservice {
    /// The name in logs.
    pub name: &'static str,
    /// The one path segment it answers, like `service1`.
    pub path: &'static str,
    /// What it answers there, like `Response from Microservice 1`.
    pub message: &'static str,
    pub default_port: u16,
}

impl Microservice {
    /// `GET`/`POST /<path>` answers the message, `GET /healthz` answers 200; anything else is a
    /// JSON 404 or 405.
    pub fn routes(
        self,
    ) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
        let message = self.message;
        let answer = warp::path(self.path)
            .and(warp::path::end())
            .and(warp::get().or(warp::post()).unify())
            .map(move || json_message(StatusCode::OK, message));
        let health = warp::path("healthz")
            .and(warp::path::end())
            .and(warp::get())
            .map(|| json_message(StatusCode::OK, "ok"));
        answer.or(health).unify().recover(crate::recover).unify()
    }

    /// Binds and returns the bound address with the server's future.
    pub async fn serve(
        self,
        listen: Listen,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
        server::bind(listen, self.routes(), Arc::new(AccessLogOnly), shutdown).await
    }

    /// The whole binary: `--health-check`, or serve until SIGTERM or SIGINT.
    pub fn main(self) -> ExitCode {
        let env = Env::process();
        let listen = match Listen::from_env(&env, self.default_port) {
            Ok(listen) => listen,
            Err(error) => {
                eprintln!("{}: configuration error: {error}", self.name);
                return ExitCode::from(2);
            }
        };
        if std::env::args().nth(1).as_deref() == Some("--health-check") {
            return server::health_check(listen.addr.port());
        }
        server::init_logging();
        let workers = match server::worker_threads(&env) {
            Ok(workers) => workers,
            Err(error) => {
                eprintln!("{}: configuration error: {error}", self.name);
                return ExitCode::from(2);
            }
        };
        let runtime = match server::runtime(workers) {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("{}: cannot start the async runtime: {error}", self.name);
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(async {
            let shutdown = match server::shutdown_signal() {
                Ok(shutdown) => shutdown,
                Err(error) => {
                    eprintln!("{}: cannot listen for signals: {error}", self.name);
                    return ExitCode::FAILURE;
                }
            };
            match self.serve(listen, shutdown).await {
                Ok((addr, server)) => {
                    log::info!("{} listening on http://{addr}", self.name);
                    server.await;
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{}: cannot listen on {}: {error}", self.name, listen.addr);
                    ExitCode::FAILURE
                }
            }
        })
    }
}
