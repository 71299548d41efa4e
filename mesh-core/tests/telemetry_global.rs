//! `Telemetry::global` against OpenTelemetry's global providers as an application installs
//! them, in a process of its own (the providers are process-wide): a handle made before any
//! provider records nothing; one made after a tracer provider makes spans but skips the
//! no-op meter's work; one made after a meter provider records the call metrics too.

use std::collections::BTreeSet;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use meshwork_core::telemetry::{AttemptLayer, CallLayer, Telemetry};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tower::{BoxError, Layer, ServiceExt, service_fn};

type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An endpoint answering every call with `grpc-status: 0` trailers, and the `traceparent`
/// it was sent in an `x-seen-traceparent` header.
fn endpoint() -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|req: http::Request<Full<Bytes>>| async move {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = Full::new(Bytes::from_static(b"ok"))
            .with_trailers(async move { Some(Ok(trailers)) })
            .map_err(|e: std::convert::Infallible| -> BoxError { match e {} })
            .boxed_unsync();
        let mut rsp = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();
        if let Some(tp) = req.headers().get("traceparent") {
            rsp.headers_mut().insert("x-seen-traceparent", tp.clone());
        }
        Ok(rsp)
    })
}

/// One gRPC call through the call and attempt layers of `telemetry`, read to its end;
/// the `traceparent` the endpoint saw.
async fn call(telemetry: &Telemetry) -> Option<String> {
    let client = CallLayer::new(telemetry.clone())
        .layer(AttemptLayer::new(telemetry.clone()).layer(endpoint()));
    let req = http::Request::post("http://greeter:50051/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let rsp = client.oneshot(req).await.unwrap();
    let seen = rsp
        .headers()
        .get("x-seen-traceparent")
        .map(|v| v.to_str().unwrap().to_owned());
    rsp.into_body().collect().await.unwrap();
    seen
}

fn metric_names(exporter: &InMemoryMetricExporter) -> BTreeSet<String> {
    exporter
        .get_finished_metrics()
        .unwrap()
        .iter()
        .flat_map(|rm| rm.scope_metrics())
        .flat_map(|sm| sm.metrics())
        .map(|m| m.name().to_owned())
        .collect()
}

#[tokio::test]
async fn a_global_handle_records_what_the_installed_providers_record() {
    // Nothing installed: nothing recorded, the caller's trace still goes on.
    let before = Telemetry::global();
    assert!(!before.is_enabled() && !before.metrics() && !before.traces());
    let parent = opentelemetry::trace::SpanContext::new(
        opentelemetry::TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
        opentelemetry::SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
        opentelemetry::trace::TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    let seen = {
        let _guard = opentelemetry::Context::new()
            .with_remote_span_context(parent)
            .attach();
        call(&before).await
    };
    assert_eq!(
        seen.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );

    // A tracer provider: spans, and still no metric work.
    let spans = InMemorySpanExporter::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    let traced = Telemetry::global();
    assert!(traced.is_enabled() && traced.traces() && !traced.metrics());
    let seen = call(&traced).await;
    let names: BTreeSet<String> = spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .map(|s| s.name.into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "Sent.helloworld.Greeter.SayHello".to_owned(),
            "Attempt.helloworld.Greeter.SayHello".to_owned(),
        ])
    );
    assert!(seen.is_some(), "the attempt's context goes downstream");

    // A meter provider: the handles made from now on record the call metrics; the one
    // made before keeps its no-op meter (as OpenTelemetry's instruments do).
    let exporter = InMemoryMetricExporter::default();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    assert!(!traced.metrics());
    let metered = Telemetry::global();
    assert!(metered.is_enabled() && metered.traces() && metered.metrics());
    call(&metered).await;
    meter_provider.force_flush().unwrap();
    let names = metric_names(&exporter);
    for name in [
        "grpc.client.attempt.started",
        "grpc.client.attempt.duration",
        "grpc.client.call.duration",
    ] {
        assert!(names.contains(name), "{name} recorded: {names:?}");
    }
    tracer_provider.shutdown().unwrap();
    meter_provider.shutdown().unwrap();
}
