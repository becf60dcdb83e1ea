//! The protocol shared by the gateway and the services behind it: the session token, the one JSON
//! reply shape, the mapping of every rejection to a status, the session cookie, and the plumbing
//! every binary runs on (environment, logging, graceful shutdown, health probe).

pub mod cookie;
pub mod env;
pub mod microservice;
pub mod rejection;
pub mod reply;
pub mod request_id;
pub mod server;
pub mod token;

pub use cookie::SessionCookie;
pub use rejection::{ApiError, AuthFailure, recover};
pub use reply::json_message;
pub use token::{Claims, TokenError, TokenKeys, TokenPolicy};

/// The header through which the gateway tells an upstream who the caller is. The gateway removes
/// every copy a client sends, so a service may trust it as long as only the gateway can reach it.
pub const AUTHENTICATED_USER_HEADER: &str = "x-authenticated-user";
