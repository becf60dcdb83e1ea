//! The filters on their own, through `warp::test::request()`, without a socket.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

use std::sync::Arc;

use common::{ApiError, AuthFailure};
use gateway::Gateway;
use gateway::config::Config;
use gateway::filters;
use gateway::routes::parse_routes;

const SECRET: &[u8] = b"filter-test-secret-0123456789abcdefghijkl";

fn gateway() -> Arc<Gateway> {
    // The upstream is never contacted by these tests: every request stops at a filter.
    let config = Config::for_routes(
        SECRET,
        parse_routes("/service1=http://127.0.0.1:9").unwrap(),
    )
    .unwrap();
    Arc::new(Gateway::new(&config).unwrap())
}

fn token(gateway: &Gateway) -> String {
    gateway.auth.keys.issue("user1").unwrap().0
}

#[tokio::test]
async fn with_auth_extracts_the_claims_of_a_valid_cookie() {
    let gateway = gateway();
    let token = token(&gateway);
    let claims = warp::test::request()
        .header("cookie", format!("theme=dark; token={token}"))
        .filter(&filters::with_auth(Arc::clone(&gateway.auth)))
        .await
        .unwrap();
    assert_eq!(claims.sub, "user1");
}

#[tokio::test]
async fn with_auth_rejects_with_the_reason() {
    let gateway = gateway();
    let auth = filters::with_auth(Arc::clone(&gateway.auth));
    for (cookie, reason) in [
        (None, AuthFailure::Missing),
        (Some("token=not.a.jwt"), AuthFailure::Invalid),
        (Some("other=1"), AuthFailure::Missing),
    ] {
        let mut request = warp::test::request();
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let rejection = request.filter(&auth).await.unwrap_err();
        assert_eq!(
            rejection.find::<ApiError>(),
            Some(&ApiError::Unauthorized(reason)),
            "{cookie:?}"
        );
    }
}

#[tokio::test]
async fn with_auth_refuses_a_cross_site_post_even_with_a_valid_cookie() {
    let gateway = gateway();
    let rejection = warp::test::request()
        .method("POST")
        .header("cookie", format!("token={}", token(&gateway)))
        .header("origin", "https://evil.example")
        .header("host", "gateway.example")
        .filter(&filters::with_auth(Arc::clone(&gateway.auth)))
        .await
        .unwrap_err();
    assert_eq!(
        rejection.find::<ApiError>(),
        Some(&ApiError::CrossSiteRequest)
    );
}

#[tokio::test]
async fn the_gateway_filter_answers_its_own_paths_in_json() {
    let routes = filters::gateway(gateway());
    for (method, path, status) in [
        ("GET", "/healthz", 200),
        ("GET", "/login", 405),
        ("POST", "/service1/../admin", 400),
        ("GET", "/service1x", 404),
        ("GET", "/service1", 401),
    ] {
        let response = warp::test::request()
            .method(method)
            .path(path)
            .reply(&routes)
            .await;
        assert_eq!(response.status(), status, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert!(body["message"].is_string(), "{method} {path}: {body}");
    }
}

#[tokio::test]
async fn login_through_the_filter_sets_the_cookie() {
    let routes = filters::gateway(gateway());
    let response = warp::test::request()
        .method("POST")
        .path("/login")
        .body(r#"{"username":"user2","password":"password2"}"#)
        .reply(&routes)
        .await;
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("token=")
            && cookie.ends_with("; HttpOnly; SameSite=Strict; Path=/; Max-Age=1800"),
        "{cookie}"
    );
}
