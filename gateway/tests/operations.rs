//! Running it: readiness, metrics and request ids.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

mod support;

use support::{json, message, spawn_app, spawn_gateway, spawn_recorder, spawn_service};

#[tokio::test]
async fn readiness_names_the_routes_whose_upstream_is_down() {
    let app = spawn_app().await;
    let response = support::plain_client()
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await, message("ready"));

    let one = spawn_service(service_one::SERVICE).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let app = spawn_gateway(support::config(&format!(
        "/service1=http://{one},/service2=http://{dead}"
    )))
    .await;
    let response = support::plain_client()
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        json(response).await,
        serde_json::json!({"message": "not ready", "down": ["/service2"]})
    );
}

#[tokio::test]
async fn metrics_count_requests_auth_failures_logins_and_latency_by_route() {
    let app = spawn_app().await;
    let anonymous = support::plain_client();
    assert_eq!(app.login("user1", "wrong").await.status(), 401);
    let token = app.token().await;
    for path in ["/service1", "/service1?y=1", "/service1/a/b", "/service2"] {
        app.client.get(app.url(path)).send().await.unwrap();
    }
    anonymous
        .get(app.url("/service1/secret-path-123"))
        .send()
        .await
        .unwrap();
    anonymous
        .get(app.url("/service2"))
        .header("cookie", "token=garbage")
        .send()
        .await
        .unwrap();
    anonymous
        .get(app.url("/nowhere/random-456"))
        .send()
        .await
        .unwrap();
    anonymous
        .post(app.url("/logout"))
        .header("cookie", format!("token={token}"))
        .send()
        .await
        .unwrap();
    anonymous
        .get(app.url("/service1"))
        .header("cookie", format!("token={token}"))
        .send()
        .await
        .unwrap();

    let response = anonymous.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    for line in [
        r#"gateway_requests_total{route="/service1",status="200"} 2"#,
        r#"gateway_requests_total{route="/service1",status="404"} 1"#,
        r#"gateway_requests_total{route="/service2",status="200"} 1"#,
        r#"gateway_requests_total{route="/service1",status="401"} 2"#,
        r#"gateway_requests_total{route="unmatched",status="404"} 1"#,
        r#"gateway_auth_failures_total{reason="missing"} 1"#,
        r#"gateway_auth_failures_total{reason="invalid"} 1"#,
        r#"gateway_auth_failures_total{reason="revoked"} 1"#,
        r#"gateway_logins_total{outcome="success"} 1"#,
        r#"gateway_logins_total{outcome="invalid_credentials"} 1"#,
        r#"gateway_upstream_latency_seconds_count{route="/service1"} 3"#,
        "# TYPE gateway_in_flight_requests gauge",
        // Only the /metrics request itself is in flight while it renders.
        "gateway_in_flight_requests 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    for raw in ["secret-path-123", "random-456", "user1", "/service1/a/b"] {
        assert!(!text.contains(raw), "{raw} became a label");
    }
}

#[tokio::test]
async fn a_sane_request_id_travels_to_the_upstream_and_back() {
    let (upstream, recorder) = spawn_recorder().await;
    let app = spawn_gateway(support::config(&format!("/rec=http://{upstream}"))).await;
    app.token().await;
    let response = app
        .client
        .get(app.url("/rec/id"))
        .header("x-request-id", "trace-42.a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42.a");
    assert_eq!(recorder.last().headers["x-request-id"], "trace-42.a");
}

#[tokio::test]
async fn a_missing_or_insane_request_id_is_replaced_by_one_that_travels_both_ways() {
    let (upstream, recorder) = spawn_recorder().await;
    let app = spawn_gateway(support::config(&format!("/rec=http://{upstream}"))).await;
    app.token().await;
    for sent in [None, Some("bad id with spaces"), Some("<script>")] {
        let mut request = app.client.get(app.url("/rec/id"));
        if let Some(id) = sent {
            request = request.header("x-request-id", id);
        }
        let response = request.send().await.unwrap();
        let returned = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_ne!(Some(returned.as_str()), sent);
        assert!(!returned.is_empty());
        let forwarded = recorder.last().headers;
        assert_eq!(forwarded.get_all("x-request-id").iter().count(), 1);
        assert_eq!(forwarded["x-request-id"], returned.as_str());
    }
    let errors = support::plain_client()
        .get(app.url("/nowhere"))
        .send()
        .await
        .unwrap();
    assert!(
        errors.headers().contains_key("x-request-id"),
        "error replies carry the id too"
    );
}
