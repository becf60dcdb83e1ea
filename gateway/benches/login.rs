//! Issue 7: what a login costs. Argon2id verification (`Users::verify`, the crate's default cost:
//! 19 MiB, 2 passes) dominates; the whole `POST /login` through the filters adds the JSON, the
//! throttle, the token and the cookie. Run with `cargo bench -p gateway --bench login`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::Gateway;
use gateway::config::Config;
use gateway::routes::parse_routes;
use gateway::users::Users;
use warp::http::StatusCode;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef-0123456789abcdef";

fn login(c: &mut Criterion) {
    let users = Users::demo().expect("demo users");
    assert!(users.verify("user1", "password1"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The upstream is never contacted: login is answered by the gateway itself.
    let routes = parse_routes("/service1=http://127.0.0.1:9").expect("routes");
    let config = Config::for_routes(SECRET, routes).expect("config");
    let gateway = Arc::new(Gateway::new(&config).expect("gateway"));
    let filter = gateway::filters::gateway(gateway);
    let post_login = || {
        warp::test::request()
            .method("POST")
            .path("/login")
            .header("content-type", "application/json")
            .body(r#"{"username":"user1","password":"password1"}"#)
            .reply(&filter)
    };
    assert_eq!(runtime.block_on(post_login()).status(), StatusCode::OK);

    let mut group = c.benchmark_group("login");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("argon2_verify_user1", |b| {
        b.iter(|| users.verify("user1", "password1"))
    });
    group.bench_function("argon2_verify_unknown_user", |b| {
        b.iter(|| users.verify("nobody", "password1"))
    });
    group.bench_function("post_login_200", |b| {
        b.iter(|| runtime.block_on(post_login()))
    });
    group.finish();
}

criterion_group!(benches, login);
criterion_main!(benches);
