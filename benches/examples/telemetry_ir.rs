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

use meshwork_grpc::core::telemetry::{AttemptLayer, CallLayer, ServerLayer, Telemetry};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use tower::Layer;

#[path = "../benches/support/telemetry.rs"]
mod fixture;
use fixture::{app, roundtrip};

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
