//! The gateway's own endpoints. Each turns its errors into a reply at once, so that warp never
//! backtracks into another branch.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use common::server::AuthenticatedUser;
use common::{ApiError, Claims, json_message, request_id};
use warp::Reply;
use warp::http::StatusCode;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue, SET_COOKIE};
use warp::reply::Response;

use crate::Gateway;
use crate::network::client_ip;
use crate::users::{MAX_USERNAME_BYTES, verify_off_the_workers};

pub async fn login(
    gateway: Arc<Gateway>,
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match try_login(&gateway, peer, &headers, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn try_login(
    gateway: &Gateway,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let request: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|_| {
            ApiError::BadRequest("Request body must be a JSON object with username and password")
        })?;
    // Like the tutorial, a missing field, or one that is not a string, is just not a match.
    let field = |name: &str| {
        request
            .get(name)
            .and_then(|value| value.as_str())
            .map(str::to_owned)
    };
    let client = client_ip(peer, headers, &gateway.trusted_proxies)
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let id = headers
        .get(&request_id::HEADER)
        .and_then(|id| id.to_str().ok())
        .unwrap_or("-");
    let (Some(username), Some(password)) = (field("username"), field("password")) else {
        return Err(ApiError::InvalidCredentials);
    };
    if username.is_empty() || password.is_empty() || username.len() > MAX_USERNAME_BYTES {
        return Err(ApiError::InvalidCredentials);
    }
    gateway
        .throttle
        .begin_attempt(&username, client)
        .map_err(|retry_after_secs| ApiError::TooManyRequests { retry_after_secs })?;

    let valid = verify_off_the_workers(&gateway.users, username.clone(), password).await;
    if !valid {
        log::info!("{id} login failed for a user from {client}");
        return Err(ApiError::InvalidCredentials);
    }
    gateway.throttle.record_success(&username, client);

    let keys = &gateway.auth.keys;
    let (token, claims) = keys
        .issue(&username)
        .map_err(|_| ApiError::BadRequest("Cannot issue a session token for this user"))?;
    let max_age = claims.exp.saturating_sub(claims.iat);
    let cookie = gateway
        .auth
        .cookie
        .issue(&token, max_age)
        .map_err(|_| ApiError::BadRequest("Session cookie would exceed 4096 bytes"))?;
    log::info!("{id} login succeeded for {username}");
    let mut response = json_message(StatusCode::OK, "Logged in successfully");
    response
        .extensions_mut()
        .insert(AuthenticatedUser(username));
    Ok(no_store(with_cookie(response, cookie)))
}

/// Logs out with or without a session: a valid token is revoked on the server, and the browser
/// is told to forget the cookie either way.
pub async fn logout(gateway: Arc<Gateway>, session: Option<Claims>) -> Response {
    let mut reply = json_message(StatusCode::OK, "Logged out successfully");
    if let Some(claims) = session {
        gateway.auth.revoke(&claims);
        reply.extensions_mut().insert(AuthenticatedUser(claims.sub));
    }
    no_store(with_cookie(reply, gateway.auth.cookie.clear()))
}

pub fn health() -> Response {
    json_message(StatusCode::OK, "ok")
}

/// 200 when every upstream answers its `/healthz`, else 503 naming the route prefixes that do not.
pub async fn readiness(gateway: Arc<Gateway>) -> Response {
    let probes = gateway.routes.iter().map(|route| {
        let proxy = Arc::clone(&gateway.proxy);
        async move {
            (
                route.prefix.as_str(),
                proxy.is_healthy(&route.upstream).await,
            )
        }
    });
    let down: Vec<&str> = futures_util::future::join_all(probes)
        .await
        .into_iter()
        .filter_map(|(prefix, healthy)| (!healthy).then_some(prefix))
        .collect();
    if down.is_empty() {
        return json_message(StatusCode::OK, "ready");
    }
    let body = serde_json::json!({ "message": ApiError::NotReady.message(), "down": down });
    warp::reply::with_status(warp::reply::json(&body), ApiError::NotReady.status()).into_response()
}

pub fn metrics(gateway: &Gateway) -> Response {
    let mut response = gateway.metrics.render().into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn with_cookie(mut response: Response, cookie: HeaderValue) -> Response {
    response.headers_mut().append(SET_COOKIE, cookie);
    response
}

/// Replies that set or clear a session must never be stored by a cache on the way.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
