//! The whole outbound stack per call — one target's `client::Outbound` from the client engine
//! both adapters use: Call telemetry -> Router -> Timeout -> Retry -> Attempt telemetry ->
//! CircuitBreaker -> Balancer -> endpoint — against the bare endpoint service, both driven the same way (one
//! `block_on` per call on a current-thread runtime), so the difference is what meshwork adds
//! in-process. The route carries a timeout and istiod's default retry policy; the cluster
//! has 3 or 10,000 endpoints, round robin (what CDS means with no policy).
//!
//! A second group runs 8 concurrent callers (threads, each with its own current-thread
//! runtime and its own clone) through the stack with 3 endpoints and through the bare
//! service: the wall time per call of the whole batch, where shared state (a lock,
//! contended atomics) shows. Its `_clone_per_call` cases clone the service for every call,
//! as tonic's generated clients are used (a client cloned into each task) and as the load
//! harness calls: what the clone and its drop cost shows there.
//!
//! Run: `cargo bench -p meshwork-benches --bench stack`. Issue 5's target: under 2 µs added
//! per call.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use meshwork_grpc::core::client::{ClientOptions, Engine, Outbound};
use meshwork_grpc::core::config::Cluster;
use meshwork_grpc::core::retry::RetryBody;
use tower::{Service, ServiceExt, service_fn};

#[path = "support/stack.rs"]
mod support;

fn request() -> http::Request<String> {
    http::Request::post("http://echo:7070/proto.EchoTestService/Echo")
        .header("content-type", "application/grpc")
        .body(String::new())
        .expect("a valid request")
}

type Stack = Outbound<String, String>;

/// The outbound stack over `n` always-ready endpoints; built within the current runtime.
fn build_stack(n: u32) -> Stack {
    let rx = support::published(&support::endpoint_addrs(n));
    // The application's telemetry (OpenTelemetry's global providers, no-op here), as a
    // `MeshChannel` gets by default.
    let engine = Engine::new(ClientOptions::new(), None, |_upstream| {
        |_c: &Arc<Cluster>, _a: SocketAddr| {
            service_fn(|_req: http::Request<RetryBody<String>>| async {
                Ok::<_, Infallible>(http::Response::new(String::new()))
            })
        }
    });
    engine.outbound(rx, "static")
}

/// `iters` calls split over `CALLERS` threads, each calling its own clone of `svc` (or, with
/// `clone_per_call`, a clone of that for every call) from its own current-thread runtime
/// (one `block_on` per call, as in the single-caller group); the wall time from a common
/// start.
fn concurrent_calls<S>(svc: &S, iters: u64, clone_per_call: bool) -> Duration
where
    S: Service<http::Request<String>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    const CALLERS: u64 = 8;
    let start = std::sync::Barrier::new(CALLERS as usize + 1);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CALLERS)
            .map(|i| {
                let per = iters / CALLERS + u64::from(i < iters % CALLERS);
                let mut svc = svc.clone();
                let start = &start;
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    start.wait();
                    for _ in 0..per {
                        rt.block_on(async {
                            let mut own;
                            let svc = if clone_per_call {
                                own = svc.clone();
                                &mut own
                            } else {
                                &mut svc
                            };
                            svc.ready().await.unwrap().call(request()).await.unwrap()
                        });
                    }
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        for t in threads {
            t.join().expect("caller thread");
        }
        began.elapsed()
    })
}

fn concurrent(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("outbound_stack_8_callers");
    let bare = service_fn(|_req: http::Request<String>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    });
    let stack = rt.block_on(async { build_stack(3) });
    for (clone_per_call, suffix) in [(false, ""), (true, "_clone_per_call")] {
        group.bench_function(format!("bare_service{suffix}"), |b| {
            b.iter_custom(|iters| concurrent_calls(&bare, iters, clone_per_call))
        });
        group.bench_function(format!("meshwork_stack_3_endpoints{suffix}"), |b| {
            b.iter_custom(|iters| concurrent_calls(&stack, iters, clone_per_call))
        });
    }
    group.finish();
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("outbound_stack");

    let mut bare = service_fn(|_req: http::Request<String>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    });
    group.bench_function("bare_service", |b| {
        b.iter(|| rt.block_on(async { bare.ready().await.unwrap().call(request()).await.unwrap() }))
    });

    for n in [3u32, 10_000] {
        let mut stack = rt.block_on(async { build_stack(n) });
        // Warm up (the endpoints connect as the stack is built).
        rt.block_on(async {
            for _ in 0..n.min(1000) {
                stack.ready().await.unwrap().call(request()).await.unwrap();
            }
        });
        group.bench_function(format!("meshwork_stack_{n}_endpoints"), |b| {
            b.iter(|| {
                rt.block_on(async { stack.ready().await.unwrap().call(request()).await.unwrap() })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stack, concurrent);
criterion_main!(benches);
