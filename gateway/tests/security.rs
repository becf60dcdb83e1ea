//! One test per attack on the session. None of them may ever get a 500 or a panic.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

mod support;

use common::token::now;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{TestApp, message, spawn_app, spawn_gateway};

async fn status_and_body(app: &TestApp, cookie: &str) -> (u16, Value) {
    let response = support::plain_client()
        .get(app.url("/service1"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), support::json(response).await)
}

async fn assert_refused(app: &TestApp, token: &str, why: &str) {
    let (status, body) = status_and_body(app, &format!("token={token}")).await;
    assert_eq!((status, body), (401, message("Invalid token")), "{why}");
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    bytes
        .chunks(3)
        .flat_map(|group| {
            let n = group
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            (0..=group.len()).map(move |i| ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char)
        })
        .collect()
}

fn sign(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn claims() -> Value {
    json!({"sub": "user1", "iat": now(), "exp": now() + 600, "jti": "attacker"})
}

#[test]
fn the_forging_encoder_is_real_base64url() {
    assert_eq!(
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"
    );
    assert_eq!(b64(b"ab"), "YWI");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let app = spawn_app().await;
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(claims().to_string().as_bytes());
    assert_refused(&app, &format!("{header}.{payload}."), "alg none").await;
}

#[tokio::test]
async fn other_hmac_algorithms_with_the_same_key_are_refused() {
    let app = spawn_app().await;
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        assert_refused(
            &app,
            &sign(alg, &claims(), support::SECRET),
            &format!("{alg:?}"),
        )
        .await;
    }
}

#[tokio::test]
async fn an_rs256_header_is_refused() {
    let app = spawn_app().await;
    let honest = sign(Algorithm::HS256, &claims(), support::SECRET);
    let (_, rest) = honest.split_once('.').unwrap();
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    assert_refused(&app, &format!("{header}.{rest}"), "RS256 header").await;
}

#[tokio::test]
async fn the_wrong_key_is_refused() {
    let app = spawn_app().await;
    let token = sign(
        Algorithm::HS256,
        &claims(),
        b"some-other-key-that-is-also-32-bytes-long",
    );
    assert_refused(&app, &token, "wrong key").await;
}

#[tokio::test]
async fn a_flipped_signature_bit_or_an_edited_payload_is_refused() {
    let app = spawn_app().await;
    let token = app.token().await;
    let (head, signature) = token.rsplit_once('.').unwrap();
    // Another base64url character in the first position: still decodable, a different MAC.
    let replacement = if signature.starts_with('B') { "C" } else { "B" };
    let flipped = format!("{head}.{replacement}{}", &signature[1..]);
    assert_refused(&app, &flipped, "flipped bit").await;

    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut edited = claims();
    edited["sub"] = json!("user2");
    parts[1] = b64(edited.to_string().as_bytes());
    assert_refused(&app, &parts.join("."), "edited payload").await;
}

#[tokio::test]
async fn bad_exp_claims_are_refused() {
    let app = spawn_app().await;
    let base = json!({"sub": "user1", "iat": now(), "jti": "x"});
    for exp in [
        Value::Null,
        json!("9999999999"),
        json!(-1),
        json!(u64::MAX),
        json!(1e300),
    ] {
        let mut claims = base.clone();
        if !exp.is_null() {
            claims["exp"] = exp.clone();
        }
        let token = sign(Algorithm::HS256, &claims, support::SECRET);
        let (status, body) = status_and_body(&app, &format!("token={token}")).await;
        assert_eq!(status, 401, "exp {exp}");
        assert!(
            body == message("Invalid token") || body == message("Token expired"),
            "exp {exp}: {body}"
        );
    }
}

#[tokio::test]
async fn tokens_from_the_future_or_too_long_lived_are_refused() {
    let app = spawn_app().await;
    let later = now() + 600;
    for (why, claims) in [
        (
            "nbf in the future",
            json!({"sub": "user1", "iat": now(), "nbf": later, "exp": now() + 900, "jti": "x"}),
        ),
        (
            "iat in the future",
            json!({"sub": "user1", "iat": later, "exp": later + 60, "jti": "x"}),
        ),
        (
            "lifetime too long",
            json!({"sub": "user1", "iat": now(), "exp": now() + 1801, "jti": "x"}),
        ),
    ] {
        assert_refused(&app, &sign(Algorithm::HS256, &claims, support::SECRET), why).await;
    }
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let app = spawn_app().await;
    let token = app.token().await;
    let mut segments: Vec<&str> = token.split('.').collect();
    let two = segments[..2].join(".");
    segments.push("extra");
    let four = segments.join(".");
    let padded = format!("{token}==");
    for (why, bad) in [
        ("two segments", two),
        ("four segments", four),
        ("padding", padded),
        ("non-ASCII", "é.é.é".to_owned()),
        ("8 KB", "a".repeat(8 * 1024)),
        ("empty", String::new()),
    ] {
        assert_refused(&app, &bad, why).await;
    }
}

#[tokio::test]
async fn two_different_session_cookies_are_refused() {
    let app = spawn_app().await;
    let token = app.token().await;
    let other = app.token().await;
    let (status, body) = status_and_body(&app, &format!("token={token}; token={other}")).await;
    assert_eq!((status, body), (401, message("Invalid token")));
    let (status, _) = status_and_body(&app, &format!("token={token}; token={token}")).await;
    assert_eq!(status, 200, "the same value twice is one session");
}

#[tokio::test]
async fn a_token_replayed_after_logout_is_refused_and_other_sessions_live_on() {
    let app = spawn_app().await;
    let copied = app.token().await;
    let other_session = app.token().await;
    let response = support::plain_client()
        .post(app.url("/logout"))
        .header("cookie", format!("token={copied}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_refused(&app, &copied, "replay after logout").await;
    let (status, _) = status_and_body(&app, &format!("token={other_session}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rotation_accepts_the_previous_key_until_it_is_retired() {
    let old_secret = b"the-old-secret-before-rotation-0123456789".to_vec();
    let new_secret = b"the-new-secret-after-rotation-0123456789a".to_vec();
    let one = support::spawn_service(service_one::SERVICE).await;
    let routes = gateway::routes::parse_routes(&format!("/service1=http://{one}")).unwrap();

    let before = gateway::config::Config::for_routes(&old_secret, routes.clone()).unwrap();
    let old_token = spawn_gateway(before).await.token().await;

    let mut rotating = gateway::config::Config::for_routes(&new_secret, routes.clone()).unwrap();
    rotating.previous_secret = Some(gateway::config::SecretKey::Configured(old_secret.clone()));
    let app = spawn_gateway(rotating).await;
    let (status, _) = status_and_body(&app, &format!("token={old_token}")).await;
    assert_eq!(
        status, 200,
        "old-key token while SECRET_KEY_PREVIOUS is set"
    );
    let new_token = app.token().await;

    let retired = gateway::config::Config::for_routes(&new_secret, routes).unwrap();
    let app = spawn_gateway(retired).await;
    assert_refused(
        &app,
        &old_token,
        "old-key token after the previous key is retired",
    )
    .await;
    let (status, _) = status_and_body(&app, &format!("token={new_token}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn repeated_failures_are_throttled_with_retry_after() {
    let app = spawn_app().await;
    for _ in 0..5 {
        assert_eq!(app.login("user1", "wrong").await.status(), 401);
    }
    let response = app.login("user1", "password1").await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry_after));
    assert!(support::json(response).await["message"].is_string());
    // Another user from the same address is still below the address limit.
    assert_eq!(app.login("user2", "password2").await.status(), 200);
}

#[tokio::test]
async fn a_success_resets_the_failure_count() {
    let app = spawn_app().await;
    for _ in 0..4 {
        assert_eq!(app.login("user2", "wrong").await.status(), 401);
    }
    assert_eq!(app.login("user2", "password2").await.status(), 200);
    for _ in 0..4 {
        assert_eq!(app.login("user2", "wrong").await.status(), 401);
    }
    assert_eq!(app.login("user2", "password2").await.status(), 200);
}

#[tokio::test]
async fn cross_site_unsafe_requests_are_refused() {
    let (upstream, _) = support::spawn_recorder().await;
    let mut config = support::config(&format!("/service1=http://{upstream}"));
    config.allowed_origins = vec!["https://app.example".to_owned()];
    let app = spawn_gateway(config).await;
    let token = app.token().await;
    let host = app.addr.to_string();
    let send = |method: reqwest::Method, headers: Vec<(&'static str, String)>| {
        let mut request = support::plain_client()
            .request(method, app.url("/service1"))
            .header("cookie", format!("token={token}"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap() }
    };
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let refused = send(
            method.clone(),
            vec![("origin", "https://evil.example".to_owned())],
        )
        .await;
        assert_eq!(refused.status(), 403, "{method}");
        assert!(support::json(refused).await["message"].is_string());
        let refused = send(
            method.clone(),
            vec![("sec-fetch-site", "cross-site".to_owned())],
        )
        .await;
        assert_eq!(refused.status(), 403, "{method}");
        let same_origin = send(method.clone(), vec![("origin", format!("http://{host}"))]).await;
        assert_eq!(same_origin.status(), 200, "{method}");
        let allowed = send(
            method.clone(),
            vec![("origin", "https://app.example".to_owned())],
        )
        .await;
        assert_eq!(allowed.status(), 200, "{method}");
        let curl_like = send(method.clone(), vec![]).await;
        assert_eq!(curl_like.status(), 200, "{method}");
    }
    let safe = send(
        reqwest::Method::GET,
        vec![("origin", "https://evil.example".to_owned())],
    )
    .await;
    assert_eq!(safe.status(), 200);
}

#[tokio::test]
async fn secure_cookies_take_the_host_prefix_end_to_end() {
    let one = support::spawn_service(service_one::SERVICE).await;
    let mut config = support::config(&format!("/service1=http://{one}"));
    config.cookie =
        common::SessionCookie::new(common::SessionCookie::DEFAULT_SECURE_NAME, true).unwrap();
    let app = spawn_gateway(config).await;
    let response = app.login("user1", "password1").await;
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.starts_with("__Host-token="), "{set_cookie}");
    assert!(
        set_cookie.ends_with("; Path=/; Max-Age=1800; Secure"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains("Domain"));
    let token = set_cookie
        .trim_start_matches("__Host-token=")
        .split(';')
        .next()
        .unwrap();
    let (status, _) = status_and_body(&app, &format!("__Host-token={token}")).await;
    assert_eq!(status, 200);
    let (status, _) = status_and_body(&app, &format!("token={token}")).await;
    assert_eq!(
        status, 401,
        "the plain name is not the session cookie any more"
    );
}
