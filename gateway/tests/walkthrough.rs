//! The tutorial's Postman walk-through, over real sockets against the real three programs.

mod support;

use support::{json, message, spawn_app};

#[tokio::test]
async fn the_tutorial_walkthrough() {
    let app = spawn_app().await;

    // 1. Log in and obtain the token cookie.
    let response = app.login("user1", "password1").await;
    assert_eq!(response.status(), 200);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.starts_with("token=ey"), "{set_cookie}");
    assert!(set_cookie.contains("; HttpOnly"));
    assert!(set_cookie.contains("; SameSite=Strict"));
    assert!(set_cookie.contains("; Path=/"));
    assert!(set_cookie.contains("; Max-Age=1800"));
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(json(response).await, message("Logged in successfully"));

    // 2. and 3. Both services, by GET and by POST.
    for (path, text) in [
        ("/service1", "Response from Microservice 1"),
        ("/service2", "Response from Microservice 2"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        assert_eq!(json(response).await, message(text));
        let response = app
            .client
            .post(app.url(path))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "POST {path}");
        assert_eq!(json(response).await, message(text));
    }

    // 4. Access without the token.
    let response = support::plain_client()
        .get(app.url("/service1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(json(response).await, message("Invalid token"));

    // 5. Log out: the cookie is cleared, and the session is over.
    let response = app.client.post(app.url("/logout")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["set-cookie"],
        "token=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; HttpOnly; SameSite=Strict"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(json(response).await, message("Logged out successfully"));
    let response = app.client.get(app.url("/service1")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(json(response).await, message("Invalid token"));
}

#[tokio::test]
async fn bad_credentials_get_the_same_reply_and_no_cookie() {
    let app = spawn_app().await;
    for (username, password) in [("user1", "wrong"), ("nobody", "password1"), ("", "")] {
        let response = app.login(username, password).await;
        assert_eq!(response.status(), 401);
        assert!(response.headers().get("set-cookie").is_none());
        assert_eq!(json(response).await, message("Invalid credentials"));
    }
    for body in [
        r#"{}"#,
        r#"{"username":"user1"}"#,
        r#"{"password":"password1"}"#,
    ] {
        let response = app
            .client
            .post(app.url("/login"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{body}");
        assert_eq!(json(response).await, message("Invalid credentials"));
    }
}

#[tokio::test]
async fn a_login_body_that_is_not_json_or_too_large_is_a_json_400() {
    let app = spawn_app().await;
    for body in [
        "not json".to_owned(),
        "[1,2]".to_owned(),
        "x".repeat(64 * 1024),
    ] {
        let response = app
            .client
            .post(app.url("/login"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{:.20}", body);
        let reply = json(response).await;
        assert!(reply["message"].is_string(), "{reply}");
    }
    // Chunked, with no Content-Length: still read, still limited, never 411.
    let chunked = reqwest::Body::wrap_stream(support::byte_stream(64 * 1024));
    let response = app
        .client
        .post(app.url("/login"))
        .body(chunked)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn logout_works_without_a_session() {
    let app = spawn_app().await;
    let response = app.client.post(app.url("/logout")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("token=; Max-Age=0")
    );
    assert_eq!(json(response).await, message("Logged out successfully"));
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_json_and_ask_for_no_token() {
    let app = spawn_app().await;
    let client = support::plain_client();
    for path in ["/", "/service3", "/service1x", "/nope/service1"] {
        let response = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(json(response).await, message("Not found"));
    }
    for (method, path) in [
        ("GET", "/login"),
        ("PUT", "/logout"),
        ("DELETE", "/login"),
        ("POST", "/healthz"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(json(response).await, message("Method not allowed"));
    }
}

#[tokio::test]
async fn an_expired_token_says_so() {
    let app = spawn_app().await;
    let keys =
        common::TokenKeys::new(support::SECRET, None, common::TokenPolicy::default()).unwrap();
    let (token, _) = keys.issue_at("user1", common::token::now() - 3600).unwrap();
    let response = support::plain_client()
        .get(app.url("/service2"))
        .header("cookie", format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(json(response).await, message("Token expired"));
}

#[tokio::test]
async fn the_gateway_reports_its_health() {
    let app = spawn_app().await;
    let response = support::plain_client()
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await, message("ok"));
}
