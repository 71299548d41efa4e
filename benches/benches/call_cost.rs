//! What one call costs the client, counted rather than timed: one gRPC call through the
//! whole outbound stack (`client::Outbound` from the client engine both adapters use: Call
//! telemetry -> Router -> Timeout -> Retry -> Attempt telemetry -> CircuitBreaker ->
//! Balancer) to an in-memory endpoint that answers at once with a body and `grpc-status`
//! trailers, read to the end so every span ends. Below the balancer there is no transport,
//! so what is counted is the stack alone.
//!
//! - `untraced`: OpenTelemetry's global providers, nothing installed (`Telemetry::global()`
//!   then records nothing, as `disabled`) — the loadtest's `meshwork-untraced`;
//! - `traced`: an SDK tracer provider with the default always-on sampler and no exporter,
//!   and the global (no-op) meter handed to `Telemetry::new` (which records metrics into
//!   whatever meter it is given) — the loadtest's traced `meshwork`;
//! - `sampled`: the same with a 1 % trace-ID-ratio sampler (most calls make spans that are
//!   not recorded);
//! - `disabled`: `Telemetry::disabled()` (no spans, no metrics): the stack without its
//!   telemetry.
//!
//! `call_cost untraced|traced|sampled|disabled N` makes `N` calls of one case. Under valgrind the difference
//! between two `N`, divided by the difference in `N`, is the cost of one call without the
//! start-up: allocations and bytes from valgrind's DHAT (its `Total:` line), instructions
//! from callgrind (its `refs:` line):
//!
//! ```text
//! cargo bench -p meshwork-benches --bench call_cost --no-run   # prints the binary's path
//! for case in untraced traced sampled disabled; do
//!   for n in 1000 3000; do
//!     valgrind --tool=dhat --dhat-out-file=/dev/null BIN $case $n 2>&1 | grep 'Total:'
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN $case $n 2>&1 \
//!       | grep -o 'refs: .*'
//!   done
//! done
//! ```
//!
//! Without those arguments (`cargo bench -p meshwork-benches --bench call_cost`) it times
//! both cases with criterion.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::Criterion;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use meshwork_grpc::core::client::{ClientOptions, Engine, Outbound};
use meshwork_grpc::core::config::Cluster;
use meshwork_grpc::core::retry::RetryBody;
use meshwork_grpc::core::telemetry::Telemetry;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tower::{Service, ServiceExt, service_fn};

#[path = "support/stack.rs"]
mod support;

type Body = BoxBody<Bytes, Infallible>;
type Stack = Outbound<Full<Bytes>, Body>;

/// A unary gRPC request, made as tonic makes one: the channel's scheme and authority
/// (parsed once, shared per call), the method's static path, static header values.
fn request(authority: &http::uri::Authority) -> http::Request<Full<Bytes>> {
    let uri = http::Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(http::uri::PathAndQuery::from_static(
            "/proto.EchoTestService/Echo",
        ))
        .build()
        .expect("a valid URI");
    http::Request::post(uri)
        .header(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        )
        .header(http::header::TE, http::HeaderValue::from_static("trailers"))
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .expect("a valid request")
}

/// The endpoint's answer: a message, then `grpc-status: 0` trailers.
fn response() -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(b"\0\0\0\0\x05world"))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .expect("a valid response")
}

/// The outbound stack over three in-memory endpoints, recording through `telemetry`; built
/// within the current runtime. The route has a timeout and istiod's retry policy.
fn build_stack(telemetry: Telemetry) -> Stack {
    let engine = Engine::new(
        ClientOptions::new().telemetry(telemetry),
        None,
        |_upstream| {
            |_c: &Arc<Cluster>, _a: SocketAddr| {
                service_fn(|_req: http::Request<RetryBody<Full<Bytes>>>| async {
                    Ok::<_, Infallible>(response())
                })
            }
        },
    );
    let config = support::published(&support::endpoint_addrs(3));
    engine.outbound(config, "xds:///echo")
}

/// The telemetry of a case.
fn telemetry(case: &str) -> Telemetry {
    let meter = opentelemetry::global::meter("meshwork");
    match case {
        "traced" => Telemetry::new(
            SdkTracerProvider::builder().build().tracer("meshwork"),
            &meter,
        ),
        "sampled" => Telemetry::new(
            SdkTracerProvider::builder()
                .with_sampler(Sampler::TraceIdRatioBased(0.01))
                .build()
                .tracer("meshwork"),
            &meter,
        ),
        "untraced" => Telemetry::global(),
        "disabled" => Telemetry::disabled(),
        _ => panic!("the cases are untraced, traced, sampled and disabled, not {case}"),
    }
}

/// One call, its response body read to the end.
async fn call(stack: &mut Stack, authority: &http::uri::Authority) {
    let req = request(authority);
    let rsp = stack.ready().await.unwrap().call(req).await.unwrap();
    std::hint::black_box(rsp.into_body().collect().await.unwrap());
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _enter = rt.enter();
    let authority = http::uri::Authority::from_static("echo:7070");
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if let Some(case @ ("untraced" | "traced" | "sampled" | "disabled")) = first.as_deref() {
        let n: usize = args
            .next()
            .and_then(|n| n.parse().ok())
            .expect("usage: call_cost untraced|traced|sampled|disabled N");
        let mut stack = build_stack(telemetry(case));
        for _ in 0..n {
            rt.block_on(call(&mut stack, &authority));
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("call_cost");
    for case in ["untraced", "traced", "sampled", "disabled"] {
        let mut stack = build_stack(telemetry(case));
        group.bench_function(case, |b| {
            b.iter(|| rt.block_on(call(&mut stack, &authority)))
        });
    }
    group.finish();
    c.final_summary();
}
