//! The gateway as a reverse proxy: what reaches the upstream, what comes back, and every failure.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

mod support;

use std::time::Duration;

use futures_util::StreamExt;

use gateway::config::Config;
use support::{Recorder, TestApp, json, message, raw, spawn_gateway, spawn_recorder, status_of};

async fn app_with(tweak: impl FnOnce(&mut Config)) -> (TestApp, Recorder, String) {
    let (upstream, recorder) = spawn_recorder().await;
    let mut config = support::config(&format!("/rec=http://{upstream}"));
    tweak(&mut config);
    let app = spawn_gateway(config).await;
    let token = app.token().await;
    (app, recorder, token)
}

async fn app() -> (TestApp, Recorder, String) {
    app_with(|_| {}).await
}

/// Writes `METHOD path` with the session cookie and `Connection: close`, as raw bytes.
async fn raw_authed(app: &TestApp, method: &str, path: &str, token: &str) -> String {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: gw\r\nCookie: token={token}\r\nConnection: close\r\n\r\n"
    );
    raw(app.addr, request.as_bytes()).await
}

fn authed(app: &TestApp, method: &str, path: &str, token: &str) -> reqwest::RequestBuilder {
    support::plain_client()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            app.url(path),
        )
        .header("cookie", format!("token={token}"))
}

#[tokio::test]
async fn the_path_and_query_go_upstream_unchanged() {
    let (app, recorder, token) = app().await;
    let response = authed(&app, "GET", "/rec/a/b.json?x=1&y=%20z&x=2", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await, message("recorded"));
    assert_eq!(
        recorder.last().path_and_query,
        "/rec/a/b.json?x=1&y=%20z&x=2"
    );
}

#[tokio::test]
async fn every_method_is_forwarded() {
    let (app, recorder, token) = app().await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"] {
        let response = authed(&app, method, "/rec/m", &token).send().await.unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(recorder.last().method, method);
    }
}

#[tokio::test]
async fn statuses_come_back_as_they_are_and_redirects_are_not_followed() {
    let (app, recorder, token) = app().await;
    for code in [201u16, 204, 304, 404, 418, 500, 503] {
        let response = authed(&app, "GET", &format!("/rec/status/{code}"), &token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), code);
    }
    let before = recorder.requests().len();
    let response = authed(&app, "GET", "/rec/redirect", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/elsewhere");
    assert_eq!(
        recorder.requests().len(),
        before + 1,
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn a_head_reply_keeps_its_length_and_has_no_body() {
    let (app, _, token) = app().await;
    let reply = raw_authed(&app, "HEAD", "/rec/h", &token).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("content-length: 22"),
        "{reply}"
    );
    assert_eq!(support::body_of(&reply), "");
}

#[tokio::test]
async fn request_headers_are_cleaned_and_the_identity_is_set() {
    let (app, recorder, token) = app().await;
    let request = format!(
        "GET /rec/h HTTP/1.1\r\nHost: gateway.example:8080\r\n\
         Cookie: theme=dark; token={token}; lang=en\r\n\
         X-Authenticated-User: admin\r\nx-authenticated-user: root\r\nX-AUTHENTICATED-USER: boss\r\n\
         X_Authenticated_User: underscored\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
         Upgrade: websocket\r\nX-Request-Id: kept-id\r\n\
         Connection: close, X-Private-Hop, X-Request-Id\r\nX-Private-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
         Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
         X-Kept: yes\r\n\r\n"
    );
    let reply = raw(app.addr, request.as_bytes()).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = recorder.last().headers;
    let all = |name: &str| {
        seen.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("x-authenticated-user"), ["user1"]);
    assert_eq!(all("cookie"), ["theme=dark; lang=en"]);
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-host"), ["gateway.example:8080"]);
    assert_eq!(all("x-forwarded-proto"), ["http"]);
    assert_eq!(all("x-kept"), ["yes"]);
    assert_eq!(
        all("x-request-id"),
        ["kept-id"],
        "the gateway's own header survives Connection"
    );
    for hop in [
        "x_authenticated_user",
        "forwarded",
        "x-real-ip",
        "x-private-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(seen.get(hop).is_none(), "{hop} reached the upstream");
    }
    assert!(
        all("connection")
            .iter()
            .all(|value| !value.contains("X-Private-Hop"))
    );
}

#[tokio::test]
async fn the_upstream_gets_its_own_host_and_an_origin_form_target() {
    let (upstream, recorder) = spawn_recorder().await;
    let app = spawn_gateway(support::config(&format!("/rec=http://{upstream}"))).await;
    let token = app.token().await;
    let request = format!(
        "GET /rec/h?q=1 HTTP/1.1\r\nHost: gateway.example\r\nCookie: token={token}\r\nConnection: close\r\n\r\n"
    );
    let reply = raw(app.addr, request.as_bytes()).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = recorder.last();
    assert_eq!(seen.path_and_query, "/rec/h?q=1");
    let hosts: Vec<_> = seen.headers.get_all("host").iter().collect();
    assert_eq!(hosts, [upstream.to_string().as_str()]);
}

#[tokio::test]
async fn connect_and_targets_without_a_path_are_refused_in_json() {
    // An absolute URI without a path means `/`, where no route is.
    let (app, recorder, token) = app().await;
    for (method, target, status) in [
        ("CONNECT", "/rec/x", 405),
        ("CONNECT", "example.com:443", 405),
        ("GET", "http://example.com", 404),
        ("OPTIONS", "*", 400),
    ] {
        let reply = raw_authed(&app, method, target, &token).await;
        assert_eq!(status_of(&reply), status, "{method} {target}: {reply}");
        assert!(
            support::body_of(&reply).starts_with(r#"{"message":"#),
            "{reply}"
        );
    }
    assert!(recorder.requests().is_empty());
}

#[tokio::test]
async fn a_trusted_proxy_extends_the_forwarded_chain() {
    let (app, recorder, token) = app_with(|config| {
        config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let response = authed(&app, "GET", "/rec/t", &token)
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = recorder.last().headers;
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn response_headers_are_cleaned_and_not_duplicated() {
    let (app, _, token) = app().await;
    let reply = raw_authed(&app, "GET", "/rec/hop-headers", &token).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let head = reply.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    let count = |name: &str| {
        head.lines()
            .filter(|line| line.starts_with(&format!("{name}:")))
            .count()
    };
    assert_eq!(count("date"), 1, "{head}");
    assert_eq!(count("server"), 1, "{head}");
    assert!(count("connection") <= 1, "{head}");
    assert_eq!(count("x-upstream-hop"), 0, "{head}");
    assert_eq!(count("keep-alive"), 0, "{head}");
    assert_eq!(count("x-upstream"), 1, "{head}");
}

#[tokio::test]
async fn upstream_cookies_pass_but_never_the_session_cookie() {
    let (app, _, token) = app().await;
    let response = authed(&app, "GET", "/rec/cookies", &token)
        .send()
        .await
        .unwrap();
    let cookies: Vec<_> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cookies, ["theme=dark; Path=/", "lang=en"]);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_the_upstream() {
    let (app, recorder, token) = app_with(|config| config.max_body_bytes = 1024).await;
    let response = authed(&app, "POST", "/rec/big", &token)
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(json(response).await, message("Request body too large"));
    assert!(recorder.requests().is_empty());
    let response = authed(&app, "POST", "/rec/ok", &token)
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(recorder.last().body_len, 1024);
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_is_cut_off() {
    let (app, recorder, token) = app_with(|config| config.max_body_bytes = 100 * 1024).await;
    let body = reqwest::Body::wrap_stream(support::byte_stream(1024 * 1024));
    let response = authed(&app, "POST", "/rec/chunked", &token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(json(response).await, message("Request body too large"));
    assert!(
        recorder
            .requests()
            .iter()
            .all(|seen| seen.body_len <= 100 * 1024)
    );
}

#[tokio::test]
async fn a_chunked_body_within_the_limit_streams_through() {
    let (app, recorder, token) = app().await;
    let body = reqwest::Body::wrap_stream(support::byte_stream(3 * 1024 * 1024 + 7));
    let response = authed(&app, "PUT", "/rec/upload", &token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(recorder.last().body_len, 3 * 1024 * 1024 + 7);
}

#[tokio::test]
async fn a_get_without_content_length_is_not_411() {
    let (app, recorder, token) = app().await;
    let reply = raw_authed(&app, "GET", "/rec/plain", &token).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = recorder.last();
    assert_eq!(seen.body_len, 0);
    assert!(seen.headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn large_responses_stream_back() {
    let (app, _, token) = app().await;
    let response = authed(&app, "GET", "/rec/bytes/5000000", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), 5_000_000);
}

#[tokio::test]
async fn paths_that_could_be_rewritten_are_refused_before_anything_else() {
    let (app, recorder, token) = app().await;
    for path in [
        "/rec/../admin",
        "/rec/%2e%2e/admin",
        "/rec/..%2Fadmin",
        "//x",
        "/rec/./x",
        "/rec//x",
        "/rec%2Fx",
    ] {
        for cookie in [String::new(), format!("Cookie: token={token}\r\n")] {
            let reply = raw(
                app.addr,
                format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{cookie}Connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            assert_eq!(status_of(&reply), 400, "{path}: {reply}");
            assert!(
                support::body_of(&reply).starts_with(r#"{"message":"#),
                "{reply}"
            );
        }
    }
    assert!(recorder.requests().is_empty());
}

#[tokio::test]
async fn content_length_with_transfer_encoding_reaches_the_upstream_once_at_most() {
    let (app, recorder, token) = app().await;
    let smuggle = "GET /rec/second HTTP/1.1\r\nHost: gw\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggle}");
    let request = format!(
        "POST /rec/first HTTP/1.1\r\nHost: gw\r\nCookie: token={token}\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = raw(app.addr, request.as_bytes()).await;
    let status = status_of(&reply);
    assert!(status == 400 || status == 200, "{reply}");
    let seen = recorder.requests();
    assert!(seen.len() <= 1, "{seen:?}");
    assert!(
        seen.iter()
            .all(|request| request.path_and_query == "/rec/first")
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_that_names_no_address() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let app = spawn_gateway(support::config(&format!("/dead=http://{dead}"))).await;
    let token = app.token().await;
    let response = authed(&app, "GET", "/dead/x", &token).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert_eq!(body, r#"{"message":"Upstream service unavailable"}"#);
    assert!(!body.contains("127.0.0.1") && !body.contains(&dead.port().to_string()));
}

#[tokio::test]
async fn a_slow_upstream_is_a_504() {
    let (app, _, token) =
        app_with(|config| config.upstream_timeout = Duration::from_millis(300)).await;
    let response = authed(&app, "GET", "/rec/slow", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(json(response).await, message("Upstream service timed out"));
}

/// A listener whose accept queue is full and never drained: the kernel drops further SYNs, so
/// connecting to it hangs, as it does to a host that is down or firewalled.
async fn unconnectable_upstream() -> (std::net::SocketAddr, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        );
        match attempt.await {
            Ok(connected) => queued.push(connected.unwrap()),
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    // The listener must outlive the test's requests: leak it with the queued connections.
    std::mem::forget(listener);
    (addr, queued)
}

#[tokio::test]
async fn an_upstream_that_cannot_be_connected_to_is_a_504_with_or_without_a_body() {
    let (unreachable, _queued) = unconnectable_upstream().await;
    let mut config = support::config(&format!("/hang=http://{unreachable}"));
    config.upstream_timeout = Duration::from_millis(300);
    let app = spawn_gateway(config).await;
    let token = app.token().await;
    let get = authed(&app, "GET", "/hang/x", &token).send().await.unwrap();
    assert_eq!(get.status(), 504);
    assert_eq!(json(get).await, message("Upstream service timed out"));
    let post = authed(&app, "POST", "/hang/x", &token)
        .body("some body")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 504);
    assert_eq!(json(post).await, message("Upstream service timed out"));
}

#[tokio::test]
async fn an_upload_slower_than_the_timeout_is_not_a_timeout() {
    let (app, recorder, token) =
        app_with(|config| config.upstream_timeout = Duration::from_millis(300)).await;
    // The client dribbles its body for longer than the upstream timeout; the upstream is fast.
    let dribble = futures_util::stream::iter(0..6).then(|_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"chunk"))
    });
    let response = authed(&app, "POST", "/rec/upload", &token)
        .body(reqwest::Body::wrap_stream(dribble))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(recorder.last().body_len, 30);
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_a_408() {
    let (app, recorder, token) = app_with(|config| {
        config.client_body_timeout = Duration::from_millis(300);
    })
    .await;
    // Promises 100 bytes, sends 10, then waits: the gateway must not wait forever.
    let request = format!(
        "POST /rec/upload HTTP/1.1\r\nHost: gw\r\nCookie: token={token}\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    let reply = raw(app.addr, request.as_bytes()).await;
    assert_eq!(status_of(&reply), 408, "{reply}");
    assert_eq!(
        support::body_of(&reply),
        r#"{"message":"Request body timed out"}"#
    );
    assert!(recorder.requests().iter().all(|seen| seen.body_len < 100));
}

#[tokio::test]
async fn an_upstream_silent_mid_body_ends_the_response() {
    let (app, _, token) =
        app_with(|config| config.upstream_timeout = Duration::from_millis(300)).await;
    let response = authed(&app, "GET", "/rec/stall", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), response.bytes())
        .await
        .expect("the gateway gives up on the stalled upstream");
    assert!(
        body.is_err(),
        "a truncated body is an error, not a short success"
    );
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let (app, recorder, token) = app().await;
    for _ in 0..3 {
        let response = authed(&app, "GET", "/rec/pool", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let ports: Vec<_> = recorder
        .requests()
        .iter()
        .map(|seen| seen.peer.unwrap().port())
        .collect();
    assert_eq!(ports.len(), 3);
    assert!(ports.windows(2).all(|pair| pair[0] == pair[1]), "{ports:?}");
}
