//! Shared by the service crates' tests (included with `#[path]`): one service binary, started
//! on an ephemeral port, checked over real sockets, then stopped with SIGTERM.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

/// Runs `binary`, checks it answers `path` with `message` and nothing else, that its health check
/// works, and that SIGTERM makes it exit 0.
pub async fn check(binary: &str, path: &str, message: &str) {
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some((_, rest)) = line.split_once("listening on http://") {
            addr = Some(rest.trim().to_owned());
            break;
        }
    }
    let addr: std::net::SocketAddr = addr.expect("the service logs its address").parse().unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = |p: &str| format!("http://{addr}{p}");
    let client = reqwest::Client::new();
    let expected = serde_json::json!({ "message": message });

    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let response = client
            .request(method.clone(), url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap(),
            expected
        );
    }
    let health = client.get(url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    for (method, target, status) in [
        (reqwest::Method::GET, "/elsewhere", 404),
        (reqwest::Method::GET, &format!("{path}/below") as &str, 404),
        (reqwest::Method::DELETE, path, 405),
    ] {
        let response = client.request(method, url(target)).send().await.unwrap();
        assert_eq!(response.status(), status, "{target}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["message"].is_string(), "{body}");
    }

    let probe = |port: u16| {
        std::process::Command::new(binary)
            .arg("--health-check")
            .env_clear()
            .env("PORT", port.to_string())
            .status()
            .unwrap()
    };
    assert!(
        probe(addr.port()).success(),
        "--health-check against a live server"
    );

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        !probe(addr.port()).success(),
        "--health-check against a stopped server"
    );
}

/// Runs `binary` with each bad setting and checks it exits 2 with one line naming the variable,
/// never a panic.
pub async fn check_configuration_errors(binary: &str) {
    for (name, value) in [
        ("PORT", "eighty"),
        ("TOKIO_WORKER_THREADS", "0"),
        ("TOKIO_WORKER_THREADS", "many"),
    ] {
        let output = tokio::process::Command::new(binary)
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env(name, value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(name), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
