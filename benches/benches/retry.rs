//! Retry bookkeeping per call: what the retry layer adds to an attempt besides the call
//! itself — classifying the response, the budget's deposit/withdraw, the backoff draw and
//! the previous-attempts hint.
//!
//! Run: `cargo bench -p meshwork-benches --bench retry`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use meshwork_grpc::core::config::{RetryOn, RetryPolicy};
use meshwork_grpc::core::retry::{
    EndpointId, PreviousAttempts, RetryBudget, backoff, is_retriable, response_conditions,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: RetryOn::UNAVAILABLE | RetryOn::CANCELLED | RetryOn::RESET,
        num_retries: 2,
        base_interval: Duration::from_millis(25),
        max_interval: Duration::from_millis(250),
        per_try_timeout: None,
        retriable_status_codes: Vec::new(),
        avoid_previous_hosts: true,
        host_selection_max_attempts: 5,
    }
}

fn retry(c: &mut Criterion) {
    let policy = policy();
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
    group.bench_function("previous_attempts_hint", |b| {
        b.iter(|| {
            let hint = PreviousAttempts::new();
            hint.record(EndpointId(1));
            black_box(hint.contains(EndpointId(2)))
        })
    });
    group.finish();
}

criterion_group!(benches, retry);
criterion_main!(benches);
