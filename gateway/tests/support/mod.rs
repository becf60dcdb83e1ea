//! Shared by the integration tests: the real services and gateway on `127.0.0.1:0`, an upstream
//! that records what reaches it, and raw HTTP over a `TcpStream`.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use gateway::config::Config;
use gateway::routes::parse_routes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warp::Filter;
use warp::http::{HeaderMap, StatusCode};

pub const SECRET: &[u8] = b"integration-test-secret-0123456789abcdef";

pub struct TestApp {
    pub addr: SocketAddr,
    /// Keeps cookies like a browser, and never follows redirects.
    pub client: reqwest::Client,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/login"))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    /// Logs in as user1 and returns the raw session token.
    pub async fn token(&self) -> String {
        let response = self.login("user1", "password1").await;
        assert_eq!(response.status(), 200);
        session_token(&response).expect("a session cookie")
    }
}

pub fn browser_like_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The token in a response's `Set-Cookie: token=...`.
pub fn session_token(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|cookie| cookie.strip_prefix("token="))
        .map(|rest| rest.split(';').next().unwrap_or("").to_owned())
        .filter(|token| !token.is_empty())
}

pub async fn json(response: reqwest::Response) -> serde_json::Value {
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    let body = response.text().await.expect("body");
    assert_eq!(
        content_type.as_ref().and_then(|value| value.to_str().ok()),
        Some("application/json"),
        "status {status}, body {body:?}"
    );
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}"))
}

pub fn message(text: &str) -> serde_json::Value {
    serde_json::json!({ "message": text })
}

/// service-one, service-two and a gateway routed to them, like compose runs them.
pub async fn spawn_app() -> TestApp {
    let one = spawn_service(service_one::SERVICE).await;
    let two = spawn_service(service_two::SERVICE).await;
    let routes = format!("/service1=http://{one},/service2=http://{two}");
    spawn_gateway(config(&routes)).await
}

pub async fn spawn_service(service: common::microservice::Microservice) -> SocketAddr {
    let (addr, server) = service
        .serve(common::server::Listen::ephemeral(), std::future::pending())
        .await
        .expect("service binds");
    tokio::spawn(server);
    addr
}

pub fn config(routes: &str) -> Config {
    Config::for_routes(SECRET, parse_routes(routes).expect("routes")).expect("config")
}

pub async fn spawn_gateway(config: Config) -> TestApp {
    let (addr, server) = gateway::serve(config, std::future::pending())
        .await
        .expect("gateway starts");
    tokio::spawn(server);
    TestApp {
        addr,
        client: browser_like_client(),
    }
}

/// What the recording upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// The gateway's end of the connection: the same port twice means a reused connection.
    pub peer: Option<SocketAddr>,
}

/// An upstream that records every request and answers according to its path:
/// `/rec/status/N` with status N, `/rec/redirect` with a 302, `/rec/slow` after a long pause,
/// `/rec/cookies` with Set-Cookie headers, `/rec/bytes/N` with N bytes, and anything else with 200.
#[derive(Clone)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            seen: Arc::default(),
            count: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl Recorder {
    /// Completes once the upstream has received `n` requests (their bodies read, not yet answered).
    pub async fn received(&self, n: usize) {
        let mut count = self.count.subscribe();
        count
            .wait_for(|seen| *seen >= n)
            .await
            .expect("recorder alive");
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream saw a request")
    }
}

pub async fn spawn_recorder() -> (SocketAddr, Recorder) {
    let recorder = Recorder::default();
    let seen = Arc::clone(&recorder.seen);
    let count = Arc::clone(&recorder.count);
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(common::server::peer())
        .and(warp::body::stream())
        .then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers,
                  peer,
                  body| {
                let seen = Arc::clone(&seen);
                let count = Arc::clone(&count);
                async move {
                    let body_len = count_bytes(body).await;
                    let path = path.as_str().to_owned();
                    let path_and_query = if query.is_empty() {
                        path.clone()
                    } else {
                        format!("{path}?{query}")
                    };
                    seen.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        path_and_query,
                        headers,
                        body_len,
                        peer,
                    });
                    count.send_modify(|count| *count += 1);
                    answer(&path).await
                }
            },
        )
        .recover(common::recover)
        .unify();
    let (addr, server) = common::server::bind(
        common::server::Listen::ephemeral(),
        route,
        Arc::new(common::server::AccessLogOnly),
        std::future::pending(),
    )
    .await
    .expect("recorder binds");
    tokio::spawn(server);
    (addr, recorder)
}

async fn count_bytes<S, B>(body: S) -> usize
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    let mut body = Box::pin(body);
    let mut total = 0;
    while let Some(Ok(chunk)) = body.next().await {
        total += chunk.remaining();
    }
    total
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// `n` bytes, streamed in 64 KiB chunks without ever being held whole.
pub fn byte_stream(
    n: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    let chunk = CHUNK.len() as u64;
    futures_util::stream::iter((0..n.div_ceil(chunk)).map(move |index| {
        let len = chunk.min(n - index * chunk) as usize;
        Ok(Bytes::from_static(&CHUNK[..len]))
    }))
}

async fn answer(path: &str) -> warp::reply::Response {
    use warp::Reply;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let recorded = || warp::reply::json(&message("recorded")).into_response();
    let mut response = match segments.as_slice() {
        ["rec", "status", code] => {
            let code: u16 = code.parse().unwrap_or(500);
            let mut response = if code == 204 || code == 304 {
                warp::reply().into_response()
            } else {
                recorded()
            };
            *response.status_mut() = status(code);
            response
        }
        ["rec", "redirect"] => {
            let mut response = warp::reply().into_response();
            *response.status_mut() = StatusCode::FOUND;
            response
                .headers_mut()
                .insert("location", "/elsewhere".parse().unwrap());
            response
        }
        ["rec", "slow"] => {
            // Simulates an upstream that takes longer than the gateway's timeout to answer.
            tokio::time::sleep(Duration::from_secs(5)).await;
            recorded()
        }
        ["rec", "sleep", millis] => {
            // Keeps a request in flight for a while, for shutdown tests.
            tokio::time::sleep(Duration::from_millis(millis.parse().unwrap_or(0))).await;
            recorded()
        }
        ["rec", "cookies"] => {
            let mut response = recorded();
            for cookie in ["theme=dark; Path=/", "token=planted; Path=/", "lang=en"] {
                response
                    .headers_mut()
                    .append("set-cookie", cookie.parse().unwrap());
            }
            response
        }
        ["rec", "hop-headers"] => {
            let mut response = recorded();
            let headers = response.headers_mut();
            headers.insert("connection", "x-upstream-hop".parse().unwrap());
            headers.insert("x-upstream-hop", "1".parse().unwrap());
            headers.insert("keep-alive", "timeout=5".parse().unwrap());
            headers.insert("server", "recorder".parse().unwrap());
            headers.insert("date", "Thu, 01 Jan 2026 00:00:00 GMT".parse().unwrap());
            response
        }
        ["rec", "stall"] => {
            // Sends the head and a first chunk, then never another byte.
            let first =
                futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"first"))]);
            warp::reply::stream(first.chain(futures_util::stream::pending())).into_response()
        }
        ["rec", "bytes", n] => {
            warp::reply::stream(byte_stream(n.parse().unwrap_or(0))).into_response()
        }
        _ => recorded(),
    };
    response
        .headers_mut()
        .insert("x-upstream", "recorder".parse().unwrap());
    response
}

/// Writes `request` as is to the gateway and reads the whole response (the request should ask
/// for `Connection: close`).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

pub fn status_of(raw_response: &str) -> u16 {
    raw_response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw_response:?}"))
}

pub fn body_of(raw_response: &str) -> &str {
    raw_response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
}

pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}

/// The gateway binary, started with `vars` on an ephemeral loopback port, and the address it
/// reports in its log.
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// Everything it has logged so far, and later, once `stop` has collected the rest.
    pub log: Arc<Mutex<String>>,
}

impl GatewayProcess {
    pub async fn start(vars: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .envs(vars.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("gateway binary starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut addr = None;
        while let Some(line) = lines.next_line().await.expect("log line") {
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some((_, rest)) = line.split_once("listening on http://") {
                addr = Some(rest.trim().parse().expect("address in the log"));
                break;
            }
        }
        let addr = addr.unwrap_or_else(|| panic!("gateway did not start: {}", log.lock().unwrap()));
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Logs in with `client`, which keeps the cookie if it has a cookie store.
    pub async fn login(
        &self,
        client: &reqwest::Client,
        username: &str,
        password: &str,
    ) -> reqwest::Response {
        client
            .post(self.url("/login"))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_field("VmHWM:")
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    /// The threads it runs now.
    pub fn threads(&self) -> u64 {
        self.status_field("Threads:")
    }

    /// A number from `/proc/PID/status`, without its unit.
    fn status_field(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("still running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect(field)
    }
}

/// Runs the gateway binary to completion with `vars` and returns its exit code and stderr.
pub async fn run_gateway_to_exit(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .envs(vars.iter().copied())
        .output()
        .await
        .expect("gateway binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
