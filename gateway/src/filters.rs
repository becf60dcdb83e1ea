//! The gateway as warp filters: its own endpoints, then one branch per route, each checking the
//! path first and the session second, so that a wrong path never answers "unauthorized".

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{ApiError, Claims};
use futures_util::{StreamExt, TryStreamExt};
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::http::header::CONTENT_LENGTH;
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::auth::Auth;
use crate::proxy::{BodyStream, IncomingRequest, Proxy};
use crate::routes::{Route, Upstream, check_path};
use crate::{Gateway, handlers};

/// The most a login body may be; credentials are far smaller.
const MAX_LOGIN_BODY_BYTES: usize = 16 * 1024;

/// Every route of the gateway, with every rejection turned into a JSON reply.
pub fn gateway(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    health()
        .or(readiness(Arc::clone(&gateway)))
        .unify()
        .or(metrics(Arc::clone(&gateway)))
        .unify()
        .or(login(Arc::clone(&gateway)))
        .unify()
        .or(logout(Arc::clone(&gateway)))
        .unify()
        .or(proxied(gateway))
        .unify()
        .recover(common::recover)
        .unify()
}

fn health() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("healthz")
        .and(warp::path::end())
        .and(warp::get())
        .map(handlers::health)
}

fn readiness(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("readyz")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_gateway(gateway))
        .then(handlers::readiness)
}

fn metrics(gateway: Arc<Gateway>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_gateway(gateway))
        .map(|gateway: Arc<Gateway>| handlers::metrics(&gateway))
}

fn login(gateway: Arc<Gateway>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("login")
        .and(warp::path::end())
        .and(warp::post())
        .and(with_gateway(gateway))
        .and(common::server::peer())
        .and(warp::header::headers_cloned())
        .and(small_body(MAX_LOGIN_BODY_BYTES))
        .then(handlers::login)
}

fn logout(gateway: Arc<Gateway>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("logout")
        .and(warp::path::end())
        .and(warp::post())
        .and(with_gateway(Arc::clone(&gateway)))
        .and(with_optional_session(Arc::clone(&gateway.auth)))
        .then(handlers::logout)
}

/// One branch per route, behind the path check.
fn proxied(gateway: Arc<Gateway>) -> BoxedFilter<(Response,)> {
    let branches = gateway
        .routes
        .iter()
        .map(|route| route_branch(route, &gateway))
        .reduce(|first, second| first.or(second).unify().boxed())
        .unwrap_or_else(|| {
            warp::any()
                .and_then(|| async { Err(warp::reject::not_found()) })
                .boxed()
        });
    acceptable_path().and(branches).boxed()
}

fn route_branch(route: &Route, gateway: &Gateway) -> BoxedFilter<(Response,)> {
    under_prefix(route.clone())
        .and(with_auth(Arc::clone(&gateway.auth)))
        .and(proxy_to(route.upstream.clone(), Arc::clone(&gateway.proxy)))
        .then(|claims: Claims, forward: Forward| forward.send(claims.sub))
        .boxed()
}

fn with_gateway(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (Arc<Gateway>,), Error = Infallible> + Clone {
    warp::any().map(move || Arc::clone(&gateway))
}

/// Refuses, with 400, a path that could reach an upstream as a different path than was authorised.
fn acceptable_path() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and_then(|path: FullPath| async move {
            check_path(path.as_str()).map_err(|why| warp::reject::custom(ApiError::BadRequest(why)))
        })
        .untuple_one()
}

/// Passes requests for the route's prefix or anything below it. Anything else is warp's own
/// not-found, which yields to a more specific rejection from another branch.
fn under_prefix(route: Route) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and_then(move |path: FullPath| {
            let matches = route.matches(path.as_str());
            async move {
                if matches {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        })
        .untuple_one()
}

/// The verified claims of the session cookie; rejects with 401, or 403 for a cross-site request.
pub fn with_auth(auth: Arc<Auth>) -> impl Filter<Extract = (Claims,), Error = Rejection> + Clone {
    warp::method().and(warp::header::headers_cloned()).and_then(
        move |method, headers: HeaderMap| {
            let checked = auth
                .authenticate(&headers)
                .map_err(ApiError::Unauthorized)
                .and_then(|claims| auth.check_same_origin(&method, &headers).map(|()| claims))
                .map_err(warp::reject::custom);
            async move { checked }
        },
    )
}

/// The session's claims if it has a valid one; logout works without.
fn with_optional_session(
    auth: Arc<Auth>,
) -> impl Filter<Extract = (Option<Claims>,), Error = Rejection> + Clone {
    warp::method().and(warp::header::headers_cloned()).and_then(
        move |method, headers: HeaderMap| {
            let checked = auth
                .check_same_origin(&method, &headers)
                .map(|()| auth.authenticate(&headers).ok())
                .map_err(warp::reject::custom);
            async move { checked }
        },
    )
}

/// A request ready to be forwarded to one upstream.
#[derive(Debug)]
pub struct Forward {
    proxy: Arc<Proxy>,
    upstream: Upstream,
    request: IncomingRequest,
}

impl Forward {
    async fn send(self, user: String) -> Response {
        self.proxy.forward(&self.upstream, user, self.request).await
    }
}

/// Everything of the request that goes upstream, to `upstream`, through `proxy`.
pub fn proxy_to(
    upstream: Upstream,
    proxy: Arc<Proxy>,
) -> impl Filter<Extract = (Forward,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(common::server::peer())
        .and(body_stream())
        .map(
            move |method, path: FullPath, query, headers, peer, body| Forward {
                proxy: Arc::clone(&proxy),
                upstream: upstream.clone(),
                request: IncomingRequest {
                    method,
                    path: path.as_str().to_owned(),
                    query,
                    headers,
                    peer,
                    body,
                },
            },
        )
}

/// The request body as a stream of `Bytes`, unbuffered.
fn body_stream() -> impl Filter<Extract = (BodyStream,), Error = Rejection> + Clone {
    warp::body::stream().map(into_bytes_stream)
}

fn into_bytes_stream<S, B>(body: S) -> BodyStream
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    Box::pin(body.map_ok(|mut chunk| chunk.copy_to_bytes(chunk.remaining())))
}

/// The raw query string, if the request has one.
fn raw_query() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The whole body, when it is at most `limit` bytes; a larger one is refused without being read
/// to the end. Unlike `warp::body::content_length_limit`, a body without Content-Length is fine.
fn small_body(limit: usize) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    let too_large = || warp::reject::custom(ApiError::BadRequest("Login body too large"));
    warp::header::optional::<u64>(CONTENT_LENGTH.as_str())
        .and(body_stream())
        .and_then(
            move |declared: Option<u64>, mut body: BodyStream| async move {
                if declared.is_some_and(|length| length > limit as u64) {
                    return Err(too_large());
                }
                let mut collected = BytesMut::new();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|_| {
                        warp::reject::custom(ApiError::BadRequest("Request body could not be read"))
                    })?;
                    if collected.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    collected.put(chunk);
                }
                Ok(collected.freeze())
            },
        )
}
