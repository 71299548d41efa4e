//! The telemetry bench's cases (`benches/benches/telemetry.rs`), counted in instructions
//! instead of time: a shared machine makes the wall-clock figures drift by a quarter from
//! run to run, while valgrind's instruction count of the same loop does not move.
//!
//! Each run does `N` client calls (`CallLayer` + `AttemptLayer`) plus server requests
//! (`ServerLayer`) of one case; the difference between two runs of different `N`, divided
//! by the difference in `N`, is the cost of one pair without the start-up:
//!
//! ```text
//! cargo build --release -p meshwork-benches --example telemetry_ir
//! for case in bare disabled off on sampled; do
//!   for n in 1000 3000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!       target/release/examples/telemetry_ir $case $n 2>&1 | grep -o 'refs: .*'
//!   done
//! done
//! ```

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use meshwork_grpc::core::telemetry::{AttemptLayer, CallLayer, ServerLayer, Telemetry};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use tower::{Layer, Service, ServiceExt, service_fn};

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn response() -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(b"world"))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed_unsync();
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .expect("a valid response")
}

fn request() -> http::Request<Full<Bytes>> {
    http::Request::post("http://greeter:50051/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("a valid request")
}

fn app()
-> impl Service<http::Request<Full<Bytes>>, Response = http::Response<Body>, Error = Infallible> + Clone
{
    service_fn(|_req: http::Request<Full<Bytes>>| async { Ok::<_, Infallible>(response()) })
}

async fn roundtrip<C, S, CB, SB>(client: &mut C, server: &mut S)
where
    C: Service<http::Request<Full<Bytes>>, Response = http::Response<CB>>,
    C::Error: std::fmt::Debug,
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<SB>>,
    S::Error: std::fmt::Debug,
    CB: http_body::Body,
    CB::Error: std::fmt::Debug,
    SB: http_body::Body,
    SB::Error: std::fmt::Debug,
{
    let rsp = client.ready().await.unwrap().call(request()).await.unwrap();
    black_box(rsp.into_body().collect().await.unwrap());
    let rsp = server.ready().await.unwrap().call(request()).await.unwrap();
    black_box(rsp.into_body().collect().await.unwrap());
}

fn main() {
    let usage = "usage: telemetry_ir bare|disabled|off|on|sampled N";
    let mut args = std::env::args().skip(1);
    let case = args.next().expect(usage);
    let n: usize = args.next().and_then(|n| n.parse().ok()).expect(usage);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _enter = rt.enter();
    // As in the bench: `on` records every span and exports nowhere (no span processor);
    // `sampled` samples 1 % into an exporter (here memory, cleared as it fills, rather than
    // the bench's batch exporter, whose thread would be counted too). Metrics are
    // aggregated for a reader that is never collected in this short run.
    let spans = InMemorySpanExporter::default();
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    let meter = meters.meter("meshwork");
    let telemetry = match case.as_str() {
        "bare" => None,
        "disabled" => Some(Telemetry::disabled()),
        "off" => Some(Telemetry::global()),
        "on" => Some(Telemetry::new(
            SdkTracerProvider::builder().build().tracer("meshwork"),
            &meter,
        )),
        "sampled" => Some(Telemetry::new(
            SdkTracerProvider::builder()
                .with_sampler(Sampler::TraceIdRatioBased(0.01))
                .with_simple_exporter(spans.clone())
                .build()
                .tracer("meshwork"),
            &meter,
        )),
        _ => panic!("{usage}"),
    };
    match telemetry {
        None => {
            let (mut client, mut server) = (app(), app());
            for _ in 0..n {
                rt.block_on(roundtrip(&mut client, &mut server));
            }
        }
        Some(t) => {
            let mut client =
                CallLayer::new(t.clone()).layer(AttemptLayer::new(t.clone()).layer(app()));
            let mut server = ServerLayer::new(t).layer(app());
            let sampled = case == "sampled";
            for _ in 0..n {
                rt.block_on(roundtrip(&mut client, &mut server));
                if sampled {
                    spans.reset();
                }
            }
        }
    }
}
