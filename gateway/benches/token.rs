//! Issue 7: the cost of the session token alone, `TokenKeys::verify` on the hot path of every
//! proxied request, and `issue` on login. Run with `cargo bench -p gateway --bench token`.

use std::hint::black_box;

use common::{TokenKeys, TokenPolicy};
use criterion::{Criterion, criterion_group, criterion_main};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef-0123456789abcdef";

fn token(c: &mut Criterion) {
    let keys = TokenKeys::new(SECRET, None, TokenPolicy::default()).expect("keys");
    let (valid, _) = keys.issue("user1").expect("a token");
    let other = TokenKeys::new(
        b"another-bench-secret-0123456789abcdef",
        None,
        TokenPolicy::default(),
    )
    .expect("keys");
    let (foreign, _) = other.issue("user1").expect("a token");
    assert!(keys.verify(&valid).is_ok());
    assert!(keys.verify(&foreign).is_err());

    let mut group = c.benchmark_group("token");
    group.bench_function("verify", |b| b.iter(|| keys.verify(black_box(&valid))));
    group.bench_function("verify_wrong_key", |b| {
        b.iter(|| keys.verify(black_box(&foreign)))
    });
    group.bench_function("issue", |b| b.iter(|| keys.issue(black_box("user1"))));
    group.finish();
}

criterion_group!(benches, token);
criterion_main!(benches);
