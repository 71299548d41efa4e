//! Circuit-breaker cost per call: a bare tower service against the same service behind a
//! `CircuitBreaker` (one atomic reservation in `poll_ready`, given back when the response
//! future completes).
//!
//! Run: `cargo bench -p meshwork-benches --bench breaker`.

use std::convert::Infallible;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use meshwork_core::breaker::CircuitBreaker;
use meshwork_core::xds::resource::CircuitBreakers;
use tower::{Service, ServiceExt};

fn service() -> impl Service<(), Response = (), Error = Infallible> {
    tower::service_fn(|()| async { Ok(()) })
}

fn per_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker");
    let mut bare = service();
    group.bench_function("bare", |b| {
        b.iter(|| {
            bare.ready().now_or_never().unwrap().unwrap();
            bare.call(()).now_or_never().unwrap().unwrap()
        })
    });
    let mut breaker = CircuitBreaker::new(service(), CircuitBreakers::default());
    group.bench_function("circuit_breaker", |b| {
        b.iter(|| {
            breaker.ready().now_or_never().unwrap().unwrap();
            breaker.call(()).now_or_never().unwrap().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, per_call);
criterion_main!(benches);
