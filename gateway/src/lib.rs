//! An API gateway: logs users in with a JWT kept in an HttpOnly cookie, and forwards authenticated
//! requests to the upstream that owns their path prefix.

pub mod auth;
pub mod config;
pub mod filters;
pub mod handlers;
pub mod headers;
pub mod metrics;
pub mod network;
pub mod proxy;
pub mod revocation;
pub mod routes;
pub mod throttle;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use common::TokenKeys;
use common::env::ConfigError;

use crate::auth::Auth;
use crate::config::{Config, SecretKey};
use crate::metrics::Metrics;
use crate::network::IpNetwork;
use crate::proxy::Proxy;
use crate::revocation::InMemoryRevocations;
use crate::routes::Route;
use crate::throttle::LoginThrottle;
use crate::users::Users;

/// Everything the handlers share, built once at start.
#[derive(Debug)]
pub struct Gateway {
    pub auth: Arc<Auth>,
    pub users: Arc<Users>,
    pub throttle: LoginThrottle,
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub routes: Vec<Route>,
    pub trusted_proxies: Vec<IpNetwork>,
}

impl Gateway {
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let keys = TokenKeys::new(
            config.secret.bytes(),
            config.previous_secret.as_ref().map(SecretKey::bytes),
            config.token_policy,
        )
        .map_err(|_| ConfigError("SECRET_KEY cannot be used as an HMAC key".to_owned()))?;
        let users = match &config.users_file {
            Some(contents) => Users::parse(contents)?,
            None => Users::demo()?,
        };
        let proxy = Proxy::new(config);
        Ok(Self {
            auth: Arc::new(Auth {
                keys,
                cookie: config.cookie.clone(),
                revocations: Arc::new(InMemoryRevocations::new(
                    InMemoryRevocations::DEFAULT_CAPACITY,
                )),
                allowed_origins: config.allowed_origins.clone(),
            }),
            users: Arc::new(users),
            throttle: LoginThrottle::new(config.throttle),
            proxy: Arc::new(proxy),
            metrics: Arc::new(Metrics::new(&config.routes)),
            routes: config.routes.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
        })
    }
}

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Bind(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(error) => write!(f, "configuration error: {error}"),
            Self::Bind(error) => write!(f, "cannot listen: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Builds the gateway, binds it, and returns the bound address with the server's future, which
/// ends after `shutdown` completes and the requests in flight finish.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()>), StartError> {
    let gateway = Arc::new(Gateway::new(&config).map_err(StartError::Config)?);
    let observer = Arc::clone(&gateway.metrics);
    common::server::bind(config.listen, filters::gateway(gateway), observer, shutdown)
        .await
        .map_err(StartError::Bind)
}
