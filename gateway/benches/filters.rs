//! Issue 7: the whole filter chain through `warp::test`, without the HTTP server in front: path
//! check, session cookie, then the proxy to a real service-one on loopback. The upstream round trip
//! alone is measured too, so that the gateway's own share is the difference.
//! Run with `cargo bench -p gateway --bench filters`.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::Gateway;
use gateway::config::Config;
use gateway::routes::parse_routes;
use hyper::body::Body as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use warp::http::{Request, StatusCode, Uri};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef-0123456789abcdef";

fn filters(c: &mut Criterion) {
    // One thread, like TOKIO_WORKER_THREADS=1: the upstream's server task and the client share it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = runtime.block_on(async {
        let (addr, server) = service_one::SERVICE
            .serve(common::server::Listen::ephemeral(), std::future::pending())
            .await
            .expect("service-one binds");
        tokio::spawn(server);
        addr
    });
    let routes = parse_routes(&format!("/service1=http://{upstream}")).expect("routes");
    let config = Config::for_routes(SECRET, routes).expect("config");
    let gateway = Arc::new(Gateway::new(&config).expect("gateway"));
    let (token, _) = gateway.auth.keys.issue("user1").expect("a token");
    let cookie = format!("token={token}");
    let filter = gateway::filters::gateway(Arc::clone(&gateway));

    let proxied = || {
        warp::test::request()
            .method("GET")
            .path("/service1")
            .header("cookie", &cookie)
            .reply(&filter)
    };
    let first = runtime.block_on(proxied());
    assert_eq!(first.status(), StatusCode::OK, "{:?}", first.body());
    assert_eq!(
        first.body().as_ref(),
        br#"{"message":"Response from Microservice 1"}"#
    );
    let unauthorized = || {
        warp::test::request()
            .method("GET")
            .path("/service1")
            .reply(&filter)
    };
    assert_eq!(
        runtime.block_on(unauthorized()).status(),
        StatusCode::UNAUTHORIZED
    );
    // The same client the proxy uses, so that the difference is the gateway's own work.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, String> =
        Client::builder(TokioExecutor::new()).build(connector);
    let direct_uri: Uri = format!("http://{upstream}/service1").parse().expect("uri");
    let direct = || async {
        let request = Request::get(direct_uri.clone())
            .body(String::new())
            .expect("request");
        let response = client.request(request).await.expect("upstream");
        let status = response.status();
        let mut body = response.into_body();
        let mut length = 0;
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            length += frame.expect("body").data_ref().map_or(0, |data| data.len());
        }
        (status, length)
    };
    assert_eq!(runtime.block_on(direct()).0, StatusCode::OK);

    let mut group = c.benchmark_group("filters");
    group.bench_function("get_service1_proxied", |b| {
        b.iter(|| runtime.block_on(proxied()))
    });
    group.bench_function("get_service1_no_cookie_401", |b| {
        b.iter(|| runtime.block_on(unauthorized()))
    });
    group.bench_function("upstream_round_trip_only", |b| {
        b.iter(|| runtime.block_on(direct()))
    });
    group.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);
