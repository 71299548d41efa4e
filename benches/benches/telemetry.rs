//! What telemetry costs per call: a client call through `CallLayer` -> `AttemptLayer` and
//! the server side through `ServerLayer`, around services that answer at once with a gRPC
//! response (body + `grpc-status` trailers, read to the end so every span ends), against
//! the same services bare.
//!
//! - `bare`: no telemetry layers;
//! - `disabled`: the layers with [`Telemetry::disabled`] (they only pass a trace context on);
//! - `off`: the layers with OpenTelemetry's no-op global providers (nothing installed):
//!   `Telemetry::global()` then records nothing and the layers pass calls through as
//!   `disabled`'s do;
//! - `on_no_exporter`: SDK tracer and meter providers that record every span and metric
//!   but export nowhere (no span processor; metrics aggregated for a periodic reader
//!   that exports once a minute into memory);
//! - `on_sampled_1pct`: SDK providers with a 1% trace-ID-ratio sampler and a batch span
//!   processor into a discarding exporter.
//!
//! Run: `cargo bench -p meshwork-benches --bench telemetry`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meshwork_grpc::core::telemetry::{AttemptLayer, CallLayer, ServerLayer, Telemetry};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tower::Layer;

#[path = "support/telemetry.rs"]
mod fixture;
use fixture::{app, roundtrip};

/// A span exporter that drops what it gets.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn telemetry(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _enter = rt.enter();
    let mut group = c.benchmark_group("telemetry_per_call");

    group.bench_function("bare", |b| {
        let (mut client, mut server) = (app(), app());
        b.iter(|| rt.block_on(roundtrip(&mut client, &mut server)))
    });

    let layered = |t: Telemetry| {
        let client = CallLayer::new(t.clone()).layer(AttemptLayer::new(t.clone()).layer(app()));
        let server = ServerLayer::new(t).layer(app());
        (client, server)
    };

    group.bench_function("disabled", |b| {
        let (mut client, mut server) = layered(Telemetry::disabled());
        b.iter(|| rt.block_on(roundtrip(&mut client, &mut server)))
    });

    group.bench_function("off", |b| {
        let (mut client, mut server) = layered(Telemetry::global());
        b.iter(|| rt.block_on(roundtrip(&mut client, &mut server)))
    });

    let tracer_provider = SdkTracerProvider::builder().build();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    group.bench_function("on_no_exporter", |b| {
        let t = Telemetry::new(
            tracer_provider.tracer("meshwork"),
            &meter_provider.meter("meshwork"),
        );
        let (mut client, mut server) = layered(t);
        b.iter(|| rt.block_on(roundtrip(&mut client, &mut server)))
    });

    let sampled = SdkTracerProvider::builder()
        .with_sampler(Sampler::TraceIdRatioBased(0.01))
        .with_batch_exporter(Discard)
        .build();
    group.bench_function("on_sampled_1pct", |b| {
        let t = Telemetry::new(
            sampled.tracer("meshwork"),
            &meter_provider.meter("meshwork"),
        );
        let (mut client, mut server) = layered(t);
        b.iter(|| rt.block_on(roundtrip(&mut client, &mut server)))
    });
    group.finish();
    let _ = sampled.shutdown();
}

criterion_group!(benches, telemetry);
criterion_main!(benches);
