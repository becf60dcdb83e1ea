//! The gateway binary as operators run it: start-up policy, signals, logs and memory.

mod support;

use support::{GatewayProcess, run_gateway_to_exit, spawn_recorder};

const GOOD_SECRET: &str = "process-test-secret-0123456789abcdefghij";

#[tokio::test]
async fn a_weak_secret_stops_the_gateway_with_one_helpful_line() {
    for weak in [
        "your_secret_key",
        "too-short",
        "changeme-changeme-changeme-changeme-1234",
    ] {
        let (code, stderr) = run_gateway_to_exit(&[("SECRET_KEY", weak)]).await;
        assert_eq!(code, Some(2), "{weak}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("SECRET_KEY"), "{stderr}");
        assert!(stderr.contains("openssl rand -base64 48"), "{stderr}");
        assert!(!stderr.contains(weak), "the secret was echoed: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn configuration_errors_are_one_line_and_never_a_panic() {
    for (name, value) in [
        ("ROUTES", "/a=ftp://x"),
        ("PORT", "eighty"),
        ("MAX_BODY_BYTES", "-1"),
        ("TRUSTED_PROXIES", "10.0.0.0/99"),
        ("USERS_FILE", "/nonexistent/users"),
        // tokio itself panics on these.
        ("TOKIO_WORKER_THREADS", "0"),
        ("TOKIO_WORKER_THREADS", "many"),
    ] {
        let (code, stderr) =
            run_gateway_to_exit(&[("SECRET_KEY", GOOD_SECRET), (name, value)]).await;
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(name), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn without_a_secret_it_starts_with_a_random_key_and_says_so() {
    let gateway = GatewayProcess::start(&[]).await;
    let log = gateway.log.lock().unwrap().clone();
    assert!(log.contains("SECRET_KEY is not set"), "{log}");
    assert!(log.contains("will not survive a restart"), "{log}");
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
    let (upstream, recorder) = spawn_recorder().await;
    let routes = format!("/rec=http://{upstream}");
    let mut gateway =
        GatewayProcess::start(&[("SECRET_KEY", GOOD_SECRET), ("ROUTES", &routes)]).await;
    let client = support::browser_like_client();
    let login = gateway.login(&client, "user1", "password1").await;
    assert_eq!(login.status(), 200);

    let in_flight = tokio::spawn(client.get(gateway.url("/rec/sleep/1500")).send());
    recorder.received(1).await;
    gateway.signal("-TERM");

    let response = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(support::json(response).await, support::message("recorded"));
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), gateway.child.wait())
        .await
        .expect("the gateway exits within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let log = gateway.log.lock().unwrap().clone();
    assert!(log.contains("SIGTERM received"), "{log}");
}

#[tokio::test]
async fn one_worker_thread_runs_everything_on_one_thread_without_stalling() {
    let (upstream, recorder) = spawn_recorder().await;
    let routes = format!("/rec=http://{upstream}");
    let mut gateway = GatewayProcess::start(&[
        ("SECRET_KEY", GOOD_SECRET),
        ("ROUTES", &routes),
        ("TOKIO_WORKER_THREADS", "1"),
    ])
    .await;
    assert_eq!(
        gateway.threads(),
        1,
        "one thread serves, until a blocking task needs another"
    );

    let client = support::browser_like_client();
    let login = gateway.login(&client, "user1", "password1").await;
    assert_eq!(login.status(), 200);
    let slow = tokio::spawn(client.get(gateway.url("/rec/sleep/1500")).send());
    recorder.received(1).await;
    // The slow exchange in flight holds no thread: a password check and another request finish
    // while it waits.
    assert_eq!(
        gateway.login(&client, "user2", "password2").await.status(),
        200
    );
    let quick = client.get(gateway.url("/rec/quick")).send().await.unwrap();
    assert_eq!(quick.status(), 200);
    assert!(!slow.is_finished());
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);

    gateway.signal("-TERM");
    let status = gateway.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigint_stops_an_idle_gateway_cleanly() {
    let mut gateway = GatewayProcess::start(&[("SECRET_KEY", GOOD_SECRET)]).await;
    gateway.signal("-INT");
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), gateway.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn tokens_cookies_passwords_and_secrets_never_reach_the_logs() {
    let (upstream, _) = spawn_recorder().await;
    let routes = format!("/rec=http://{upstream}");
    let mut gateway = GatewayProcess::start(&[
        ("SECRET_KEY", GOOD_SECRET),
        ("ROUTES", &routes),
        ("RUST_LOG", "trace"),
    ])
    .await;
    let client = support::browser_like_client();
    let login = gateway.login(&client, "user1", "password1").await;
    let token = support::session_token(&login).unwrap();
    let wrong = gateway.login(&client, "user2", "hunter2-wrong").await;
    assert_eq!(wrong.status(), 401);
    let proxied = client
        .get(gateway.url("/rec/x?q=1"))
        .header(
            "cookie",
            format!("token={token}; other=visible-cookie-value"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    client.post(gateway.url("/logout")).send().await.unwrap();
    gateway.signal("-TERM");
    gateway.child.wait().await.unwrap();
    let log = gateway.log.lock().unwrap().clone();
    assert!(log.contains("/rec/x"), "the access log is there: {log}");
    for secret in [
        token.as_str(),
        "password1",
        "hunter2-wrong",
        GOOD_SECRET,
        "visible-cookie-value",
    ] {
        assert!(!log.contains(secret), "{secret:.12} leaked into the log");
    }
}

#[tokio::test]
async fn a_gibibyte_each_way_leaves_memory_flat() {
    const GIB: u64 = 1024 * 1024 * 1024;
    let (upstream, recorder) = spawn_recorder().await;
    let routes = format!("/rec=http://{upstream}");
    let limit = (2 * GIB).to_string();
    let gateway = GatewayProcess::start(&[
        ("SECRET_KEY", GOOD_SECRET),
        ("ROUTES", &routes),
        ("MAX_BODY_BYTES", &limit),
    ])
    .await;
    let client = support::browser_like_client();
    let login = gateway.login(&client, "user1", "password1").await;
    assert_eq!(login.status(), 200);
    let baseline = gateway.peak_rss_kib();

    let upload = client
        .put(gateway.url("/rec/upload"))
        .body(reqwest::Body::wrap_stream(support::byte_stream(GIB)))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    assert_eq!(recorder.last().body_len as u64, GIB);

    let mut download = client
        .get(gateway.url(&format!("/rec/bytes/{GIB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let mut received = 0u64;
    while let Some(chunk) = download.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, GIB);

    let peak = gateway.peak_rss_kib();
    eprintln!("gateway peak RSS: {baseline} KiB after login, {peak} KiB after 2 GiB streamed");
    assert!(
        peak < baseline + 32 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB"
    );
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_id_and_one_access_line() {
    let gateway = GatewayProcess::start(&[("SECRET_KEY", GOOD_SECRET)]).await;
    let response = support::plain_client()
        .post(gateway.url("/login"))
        .header("x-request-id", "req-under-test-7")
        .json(&serde_json::json!({"username": "user1", "password": "not-it"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let success = support::plain_client()
        .post(gateway.url("/login"))
        .header("x-request-id", "req-success-8")
        .json(&serde_json::json!({"username": "user2", "password": "password2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(success.status(), 200);
    gateway.signal("-TERM");
    let mut gateway = gateway;
    gateway.child.wait().await.unwrap();
    let log = gateway.log.lock().unwrap().clone();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("req-under-test-7"))
        .collect();
    assert!(
        lines.iter().any(|line| line.contains("login failed")),
        "{log}"
    );
    let access: Vec<&&str> = lines
        .iter()
        .filter(|line| line.contains("POST /login 401"))
        .collect();
    assert_eq!(access.len(), 1, "{log}");
    assert!(access[0].contains("ms user=-"), "{log}");
    let succeeded: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("req-success-8"))
        .collect();
    assert!(
        succeeded
            .iter()
            .any(|line| line.contains("login succeeded")),
        "{log}"
    );
    assert!(
        succeeded
            .iter()
            .any(|line| line.contains("POST /login 200") && line.contains("user=user2")),
        "{log}"
    );
}

#[tokio::test]
async fn hash_password_reads_stdin_and_its_hash_logs_in_through_users_file() {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery\n")
        .await
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("correct horse"));

    let dir = std::env::temp_dir().join(format!("gateway-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users");
    std::fs::write(&users, format!("# one user\nalice:{hash}\n")).unwrap();
    let gateway = GatewayProcess::start(&[
        ("SECRET_KEY", GOOD_SECRET),
        ("USERS_FILE", users.to_str().unwrap()),
    ])
    .await;
    let client = support::plain_client();
    let alice = gateway
        .login(&client, "alice", "correct horse battery")
        .await;
    assert_eq!(alice.status(), 200);
    let demo = gateway.login(&client, "user1", "password1").await;
    assert_eq!(demo.status(), 401, "the demo users are gone");
}

#[tokio::test]
async fn password_checks_give_their_memory_back() {
    let gateway = GatewayProcess::start(&[("SECRET_KEY", GOOD_SECRET)]).await;
    let client = support::plain_client();
    for password in ["password1", "wrong", "password1"] {
        gateway.login(&client, "user1", password).await;
    }
    let (peak, now) = (gateway.peak_rss_kib(), gateway.rss_kib());
    // Each Argon2 check maps 46 MiB; once done, that memory must leave the process.
    assert!(peak > now + 40 * 1024, "peak {peak} KiB, now {now} KiB");
}
