//! Retry bookkeeping per call: what the retry layer adds to an attempt besides the call
//! itself — classifying the response, the budget's deposit/withdraw and the backoff draw —
//! and the per-call cost of router -> timeout -> retry in front
//! of a service that answers at once, against that bare service (the target: under 2 µs
//! added per call).
//!
//! Run: `cargo bench -p meshwork-benches --bench retry`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meshwork_grpc::core::retry::{RetryBudget, backoff, is_retriable, response_conditions};
use rand::SeedableRng;
use rand::rngs::SmallRng;

#[path = "support/stack.rs"]
mod support;

fn retry(c: &mut Criterion) {
    let policy = support::retry_policy();
    let ok = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .expect("a valid response");
    let unavailable = http::Response::builder()
        .header("grpc-status", "14")
        .body(())
        .expect("a valid response");
    let budget = RetryBudget::default();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut group = c.benchmark_group("retry_bookkeeping");
    group.bench_function("success", |b| {
        b.iter(|| {
            let met = response_conditions(black_box(&ok), true, &policy);
            if !is_retriable(met, &policy) {
                budget.deposit();
            }
        })
    });
    group.bench_function("retriable_failure", |b| {
        b.iter(|| {
            let met = response_conditions(black_box(&unavailable), true, &policy);
            if is_retriable(met, &policy) {
                budget.withdraw();
                budget.deposit();
                black_box(budget.can_retry());
                black_box(backoff(&policy, 1, &mut rng));
            }
        })
    });
    group.finish();
}

fn outbound_call(c: &mut Criterion) {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use futures_util::FutureExt;
    use meshwork_grpc::core::config::{self, StaticConfig};
    use meshwork_grpc::core::retry::RetryLayer;
    use meshwork_grpc::core::route::Router;
    use meshwork_grpc::core::timeout::TimeoutLayer;
    use tower::{Layer, Service, service_fn};

    // Timers need a runtime context; the services below never wait, so futures complete on
    // their first poll and no executor is needed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();

    let backend = service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(()))
    });
    let request = || {
        http::Request::post("http://echo:7070/proto.EchoTestService/Echo")
            .header("content-type", "application/grpc")
            .body(())
            .expect("a valid request")
    };
    let mut group = c.benchmark_group("outbound_call");
    let mut bare = backend;
    group.bench_function("bare_service", |b| {
        b.iter(|| {
            bare.call(request())
                .now_or_never()
                .expect("ready")
                .expect("ok")
        })
    });

    let cfg = StaticConfig::new()
        .virtual_host(support::virtual_host())
        .build()
        .expect("valid");
    let (_tx, rx) = config::channel(cfg);
    let retry_bodies = service_fn(
        |_req: http::Request<meshwork_grpc::core::retry::RetryBody<String>>| async {
            Ok::<_, Infallible>(http::Response::new(()))
        },
    );
    let stack = TimeoutLayer::new().layer(RetryLayer::new().layer(retry_bodies));
    let mut router = Router::new(rx, HashMap::from([("echo".to_string(), stack)]));
    // `String` is an `http_body::Body`; an empty one does not allocate.
    let request_with_body = || request().map(|()| String::new());
    group.bench_function("router_timeout_retry", |b| {
        b.iter(|| {
            router
                .call(request_with_body())
                .now_or_never()
                .expect("ready")
                .expect("ok")
        })
    });
    group.finish();
}

criterion_group!(benches, retry, outbound_call);
criterion_main!(benches);
