use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::config::{ClusterSpecifier, ForwardAction, RetryOn, RetryPolicy};
use crate::retry::{RetryBody, RetryLayer};
use crate::route::RoutePolicy;

/// An SDK pipeline into memory: the spans and metrics the layers recorded.
pub(crate) struct Sdk {
    pub(crate) spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    pub(crate) telemetry: Telemetry,
}

/// One data point, flattened: its metric's name and unit, its attributes, and its value
/// (a sum's value, a histogram's count and sum).
#[derive(Debug, Clone)]
pub(crate) struct Point {
    pub(crate) name: String,
    pub(crate) unit: String,
    pub(crate) attrs: BTreeMap<String, String>,
    pub(crate) value: f64,
    pub(crate) sum: f64,
}

impl Sdk {
    pub(crate) fn new() -> Self {
        let spans = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let telemetry = Telemetry::new(
            tracer_provider.tracer("meshwork"),
            &meter_provider.meter("meshwork"),
        )
        .with_target("xds:///greeter");
        Self {
            spans,
            metrics,
            tracer_provider,
            meter_provider,
            telemetry,
        }
    }

    pub(crate) fn spans(&self) -> Vec<SpanData> {
        self.tracer_provider.force_flush().unwrap();
        self.spans.get_finished_spans().unwrap()
    }

    pub(crate) fn points(&self) -> Vec<Point> {
        self.meter_provider.force_flush().unwrap();
        let mut out = Vec::new();
        let Some(last) = self.metrics.get_finished_metrics().unwrap().pop() else {
            return out;
        };
        for scope in last.scope_metrics() {
            for m in scope.metrics() {
                let mut push = |attrs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>,
                                value: f64,
                                sum: f64| {
                    out.push(Point {
                        name: m.name().to_owned(),
                        unit: m.unit().to_owned(),
                        attrs: attrs
                            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                            .collect(),
                        value,
                        sum,
                    });
                };
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(s)) => {
                        for p in s.data_points() {
                            push(&mut p.attributes(), p.value() as f64, 0.0);
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            push(&mut p.attributes(), p.count() as f64, p.sum() as f64);
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            push(&mut p.attributes(), p.count() as f64, p.sum());
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                        for p in g.data_points() {
                            push(&mut p.attributes(), p.value() as f64, 0.0);
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// The points of metric `name`.
    pub(crate) fn metric(&self, name: &str) -> Vec<Point> {
        self.points()
            .into_iter()
            .filter(|p| p.name == name)
            .collect()
    }
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: RetryOn::UNAVAILABLE,
        num_retries: 2,
        base_interval: Duration::from_millis(25),
        max_interval: Duration::from_millis(250),
        per_try_timeout: None,
        retriable_status_codes: Vec::new(),
        avoid_previous_hosts: false,
        host_selection_max_attempts: 1,
    }
}

fn grpc_request() -> http::Request<Full<Bytes>> {
    let mut req = http::Request::post("http://greeter:50051/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let rp = RoutePolicy::from_action(ForwardAction {
        clusters: ClusterSpecifier::Cluster("c".into()),
        timeout: None,
        max_stream_duration: None,
        retry_policy: Some(retry_policy()),
        hash_policies: Vec::new(),
    })
    .unwrap();
    req.extensions_mut().insert(rp);
    req
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A gRPC response: trailers-only with `code`, or a body with `grpc-status: 0` trailers.
fn grpc_response(code: Option<u8>) -> http::Response<Body> {
    match code {
        Some(code) => http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", code.to_string())
            .body(Full::new(Bytes::new()).boxed_unsync())
            .unwrap(),
        None => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let body = Full::new(Bytes::from_static(b"world"))
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed_unsync();
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        }
    }
}

/// One unary gRPC call (`grpc_request`) through `svc`, expected to succeed.
async fn send<S, B>(svc: &mut S) -> http::Response<B>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
{
    svc.ready()
        .await
        .unwrap()
        .call(grpc_request())
        .await
        .unwrap()
}

/// W3C's example `traceparent`, sampled.
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// [`PARENT`] as a caller's remote span context.
fn remote_parent() -> opentelemetry::trace::SpanContext {
    let (t, s, f) = propagation::parse_traceparent(PARENT).unwrap();
    opentelemetry::trace::SpanContext::new(t, s, f, true, Default::default())
}

/// An endpoint that answers with the `traceparent` it received, in the response's
/// extensions (see [`sent`]).
fn traceparent_echo() -> impl Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
> + Clone {
    service_fn(|req: http::Request<Full<Bytes>>| async move {
        let sent = req.headers().get("traceparent").cloned();
        let mut rsp = grpc_response(None);
        rsp.extensions_mut().insert(sent);
        Ok::<_, std::convert::Infallible>(rsp)
    })
}

/// The `traceparent` a [`traceparent_echo`] endpoint received.
fn sent<B>(rsp: &http::Response<B>) -> Option<&http::HeaderValue> {
    rsp.extensions()
        .get::<Option<http::HeaderValue>>()
        .expect("a traceparent_echo response")
        .as_ref()
}

/// An application that answers with the span context current while it ran, in the
/// response's extensions.
fn context_echo() -> impl Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
> + Clone {
    service_fn(|_req: http::Request<Full<Bytes>>| async move {
        let current = Context::current().span().span_context().clone();
        let mut rsp = grpc_response(None);
        rsp.extensions_mut().insert(current);
        Ok::<_, std::convert::Infallible>(rsp)
    })
}

/// The `traceparent` each attempt carried.
type SentHeaders = std::sync::Arc<std::sync::Mutex<Vec<Option<http::HeaderValue>>>>;

/// Call -> Retry -> Attempt -> an endpoint that fails the first attempt with UNAVAILABLE and
/// answers the next, logging the `traceparent` of every attempt. The call records through
/// `call`, the attempts through `attempt` (usually clones of one handle).
fn retried_client(
    call: Telemetry,
    attempt: Telemetry,
) -> (
    SentHeaders,
    impl Service<
        http::Request<Full<Bytes>>,
        Response = http::Response<impl http_body::Body<Error = impl std::fmt::Debug>>,
        Error = tower::BoxError,
    >,
) {
    let seen = SentHeaders::default();
    let log = seen.clone();
    let endpoint = service_fn(move |req: http::Request<RetryBody<Full<Bytes>>>| {
        let mut log = log.lock().unwrap();
        log.push(req.headers().get("traceparent").cloned());
        let fail = log.len() == 1;
        async move { Ok::<_, std::convert::Infallible>(grpc_response(fail.then_some(14))) }
    });
    let stack = AttemptLayer::new(attempt).layer(endpoint);
    let stack = RetryLayer::new().seed(1).layer(stack);
    (seen, CallLayer::new(call).layer(stack))
}

#[tokio::test(start_paused = true)]
async fn a_call_and_its_attempts_record_through_their_own_handles() {
    let calls = Sdk::new();
    let mut attempts = Sdk::new();
    attempts.telemetry = attempts.telemetry.clone().with_target("xds:///attempts");
    let (_, mut client) = retried_client(calls.telemetry.clone(), attempts.telemetry.clone());

    let rsp = send(&mut client).await;
    rsp.into_body().collect().await.unwrap();

    let started = attempts.metric("grpc.client.attempt.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].value, 2.0);
    assert_eq!(started[0].attrs["grpc.target"], "xds:///attempts");
    let durations = attempts.metric("grpc.client.attempt.duration");
    assert_eq!(durations.len(), 2, "{durations:?}");
    assert!(
        durations
            .iter()
            .all(|p| p.attrs["grpc.target"] == "xds:///attempts"
                && p.attrs["grpc.method"] == "helloworld.Greeter/SayHello")
    );
    assert!(attempts.metric("grpc.client.call.duration").is_empty());
    assert!(calls.metric("grpc.client.attempt.started").is_empty());
    assert!(calls.metric("grpc.client.attempt.duration").is_empty());
    let call = calls.metric("grpc.client.call.duration");
    assert_eq!(call.len(), 1);
    assert_eq!(call[0].attrs["grpc.target"], "xds:///greeter");
    let retries = calls.metric("grpc.client.call.retries");
    assert_eq!((retries[0].value, retries[0].sum), (1.0, 1.0));

    // Each handle's tracer made its own spans; the attempts are still the call's children.
    let call_span = calls.spans();
    let [call_span] = call_span.as_slice() else {
        panic!("one call span: {call_span:#?}");
    };
    let attempt_spans = attempts.spans();
    assert_eq!(attempt_spans.len(), 2, "{attempt_spans:#?}");
    assert!(
        attempt_spans
            .iter()
            .all(|a| a.name == "Attempt.helloworld.Greeter.SayHello"
                && a.parent_span_id == call_span.span_context.span_id())
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_call_has_a_call_span_with_one_attempt_span_per_attempt() {
    let sdk = Sdk::new();
    let (seen, mut client) = retried_client(sdk.telemetry.clone(), sdk.telemetry.clone());

    let rsp = send(&mut client).await;
    let body = rsp.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");

    let spans = sdk.spans();
    let call = spans
        .iter()
        .find(|s| s.name == "Sent.helloworld.Greeter.SayHello")
        .expect("a call span");
    assert_eq!(call.span_kind, SpanKind::Client);
    assert_eq!(attr(call, "rpc.system"), Some(&Value::from("grpc")));
    assert_eq!(
        attr(call, "rpc.service"),
        Some(&Value::from("helloworld.Greeter"))
    );
    assert_eq!(attr(call, "rpc.method"), Some(&Value::from("SayHello")));
    assert_eq!(attr(call, "rpc.grpc.status_code"), Some(&Value::I64(0)));
    assert_eq!(attr(call, "server.address"), Some(&Value::from("greeter")));
    assert_eq!(attr(call, "server.port"), Some(&Value::I64(50051)));
    let mut attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "Attempt.helloworld.Greeter.SayHello")
        .collect();
    attempts.sort_by_key(|s| match attr(s, "previous-rpc-attempts") {
        Some(Value::I64(n)) => *n,
        _ => -1,
    });
    assert_eq!(attempts.len(), 2, "one span per attempt: {spans:#?}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.parent_span_id, call.span_context.span_id());
        assert_eq!(a.span_context.trace_id(), call.span_context.trace_id());
        assert_eq!(
            attr(a, "previous-rpc-attempts"),
            Some(&Value::I64(i as i64))
        );
        // The attempt's own context went out on the wire.
        let sent = seen.lock().unwrap()[i].clone().expect("traceparent sent");
        let (trace, span, _) = propagation::parse_traceparent(sent.to_str().unwrap()).unwrap();
        assert_eq!(trace, a.span_context.trace_id());
        assert_eq!(span, a.span_context.span_id());
    }
    assert_eq!(
        attr(attempts[0], "rpc.grpc.status_code"),
        Some(&Value::I64(14))
    );
    assert_eq!(
        attr(attempts[1], "rpc.grpc.status_code"),
        Some(&Value::I64(0))
    );

    // Metrics: gRFC A66 names, units and attributes; A96 retries.
    let started = sdk.metric("grpc.client.attempt.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].unit, "{attempt}");
    assert_eq!(started[0].value, 2.0);
    assert_eq!(
        started[0].attrs["grpc.method"],
        "helloworld.Greeter/SayHello"
    );
    assert_eq!(started[0].attrs["grpc.target"], "xds:///greeter");
    let mut durations = sdk.metric("grpc.client.attempt.duration");
    durations.sort_by(|a, b| a.attrs["grpc.status"].cmp(&b.attrs["grpc.status"]));
    assert_eq!(durations.len(), 2);
    assert_eq!(durations[0].attrs["grpc.status"], "OK");
    assert_eq!(durations[1].attrs["grpc.status"], "UNAVAILABLE");
    assert!(durations.iter().all(|p| p.unit == "s" && p.value == 1.0));
    let call_duration = sdk.metric("grpc.client.call.duration");
    assert_eq!(call_duration.len(), 1);
    assert_eq!(call_duration[0].unit, "s");
    assert_eq!(call_duration[0].attrs["grpc.status"], "OK");
    assert_eq!(call_duration[0].attrs["grpc.target"], "xds:///greeter");
    // The backoff (paused clock) is inside the call, outside the attempts.
    assert!(call_duration[0].sum > 0.0);
    let retries = sdk.metric("grpc.client.call.retries");
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].unit, "{retry}");
    assert_eq!((retries[0].value, retries[0].sum), (1.0, 1.0));
    assert!(!retries[0].attrs.contains_key("grpc.status"));
}

#[tokio::test]
async fn the_server_span_continues_the_callers_trace_and_is_current_for_the_handler() {
    let sdk = Sdk::new();
    // The application sees the server span as its current context.
    let mut server = ServerLayer::new(sdk.telemetry.clone()).layer(context_echo());
    let mut req = grpc_request();
    req.headers_mut().insert(
        "traceparent",
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let rsp = server.ready().await.unwrap().call(req).await.unwrap();
    let current = rsp
        .extensions()
        .get::<opentelemetry::trace::SpanContext>()
        .cloned()
        .unwrap();
    rsp.into_body().collect().await.unwrap();

    let spans = sdk.spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, "Recv.helloworld.Greeter.SayHello");
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_eq!(
        format!("{:032x}", span.span_context.trace_id()),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(format!("{:016x}", span.parent_span_id), "00f067aa0ba902b7");
    assert!(span.parent_span_is_remote);
    assert_eq!(current.span_id(), span.span_context.span_id());
    assert_eq!(attr(span, "rpc.grpc.status_code"), Some(&Value::I64(0)));

    // The first call to a method is `other` in the server's metrics: the method is named
    // once it has answered as one the server serves.
    let started = sdk.metric("grpc.server.call.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].unit, "{call}");
    assert_eq!(
        started[0].attrs,
        BTreeMap::from([("grpc.method".into(), "other".into())])
    );
    let rsp = send(&mut server).await;
    rsp.into_body().collect().await.unwrap();
    let mut started = sdk.metric("grpc.server.call.started");
    started.sort_by(|a, b| a.attrs["grpc.method"].cmp(&b.attrs["grpc.method"]));
    assert_eq!(started.len(), 2);
    assert_eq!(
        started[0].attrs,
        BTreeMap::from([("grpc.method".into(), "helloworld.Greeter/SayHello".into())])
    );
    assert_eq!((started[0].value, started[1].value), (1.0, 1.0));
    let duration = sdk.metric("grpc.server.call.duration");
    assert_eq!(duration.len(), 2);
    for d in &duration {
        assert_eq!(d.unit, "s");
        assert_eq!(d.attrs["grpc.status"], "OK");
        assert!(!d.attrs.contains_key("grpc.target"));
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_tracer_provider_metrics_are_recorded_and_the_callers_trace_passes_through() {
    let sdk = Sdk::new();
    // A meter that records and a tracer that makes no spans: the layers record, without a
    // span, and the caller's context travels through the call's context to its attempts.
    let telemetry = Telemetry::new(
        opentelemetry::trace::noop::NoopTracer::new(),
        &sdk.meter_provider.meter("meshwork"),
    );
    assert!(telemetry.is_enabled() && telemetry.metrics() && !telemetry.traces());
    passes_the_callers_trace_on(telemetry).await;
    assert!(sdk.spans().is_empty());
    for name in [
        "grpc.client.call.duration",
        "grpc.client.attempt.started",
        "grpc.client.attempt.duration",
        "grpc.server.call.duration",
    ] {
        assert!(!sdk.metric(name).is_empty(), "{name} recorded");
    }
}

#[tokio::test]
async fn http_requests_follow_the_http_semantic_conventions() {
    let sdk = Sdk::new();
    let endpoint = service_fn(|_req: http::Request<Full<Bytes>>| async move {
        Ok::<_, std::convert::Infallible>(
            http::Response::builder()
                .status(503)
                .body(Full::new(Bytes::from_static(b"busy")))
                .unwrap(),
        )
    });
    let mut client = CallLayer::new(sdk.telemetry.clone())
        .layer(AttemptLayer::new(sdk.telemetry.clone()).layer(endpoint));
    let req = http::Request::get("http://shop/cart")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = client.ready().await.unwrap().call(req).await.unwrap();
    rsp.into_body().collect().await.unwrap();

    let spans = sdk.spans();
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| s.name == "GET"));
    for s in &spans {
        assert_eq!(attr(s, "http.request.method"), Some(&Value::from("GET")));
        assert_eq!(attr(s, "http.response.status_code"), Some(&Value::I64(503)));
        assert!(matches!(
            s.status,
            opentelemetry::trace::Status::Error { .. }
        ));
    }
    let points = sdk.metric("http.client.request.duration");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].unit, "s");
    assert_eq!(points[0].attrs["http.request.method"], "GET");
    assert_eq!(points[0].attrs["http.response.status_code"], "503");
    assert_eq!(points[0].attrs["error.type"], "503");
    assert!(sdk.metric("grpc.client.call.duration").is_empty());
}

#[tokio::test]
async fn a_failed_call_and_a_dropped_body_end_their_spans() {
    let sdk = Sdk::new();
    let failing = service_fn(|_req: http::Request<Full<Bytes>>| async move {
        Err::<http::Response<Body>, BoxErr>(Box::new(crate::breaker::Overloaded::new(
            crate::breaker::Limit::MaxRequests,
            1,
        )))
    });
    let mut client = CallLayer::new(sdk.telemetry.clone()).layer(failing);
    let err = client.ready().await.unwrap().call(grpc_request()).await;
    assert!(err.is_err());

    let ok = service_fn(|_req: http::Request<Full<Bytes>>| async move {
        Ok::<_, std::convert::Infallible>(grpc_response(None))
    });
    let mut client = CallLayer::new(sdk.telemetry.clone()).layer(ok);
    let rsp = send(&mut client).await;
    drop(rsp);

    let mut codes: Vec<String> = sdk
        .metric("grpc.client.call.duration")
        .into_iter()
        .map(|p| p.attrs["grpc.status"].clone())
        .collect();
    codes.sort();
    assert_eq!(codes, ["CANCELLED", "UNAVAILABLE"]);
    assert_eq!(sdk.spans().len(), 2);
}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

#[test]
fn mesh_counters_use_the_grfc_a91_names() {
    let sdk = Sdk::new();
    let mesh = sdk.telemetry.mesh();
    mesh.ejection("backend", Ejection::FailurePercentage, true);
    mesh.ejection("backend", Ejection::SuccessRate, false);
    mesh.ejection_overflow("backend");
    mesh.breaker_overflow("backend", crate::breaker::Limit::MaxRequests);
    mesh.retry("backend");
    mesh.retry_budget_exhausted("backend");
    let points = sdk.points();
    let value = |name: &str| -> f64 {
        points
            .iter()
            .filter(|p| p.name == name)
            .map(|p| {
                assert_eq!(p.attrs["grpc.target"], "xds:///greeter");
                assert_eq!(p.attrs["grpc.lb.backend_service"], "backend");
                p.value
            })
            .sum()
    };
    assert_eq!(
        value("grpc.lb.outlier_detection.ejections_enforced_total"),
        1.0
    );
    assert_eq!(
        value("grpc.lb.outlier_detection.ejections_enforced_failure_percentage"),
        1.0
    );
    assert_eq!(
        value("grpc.lb.outlier_detection.ejections_detected_failure_percentage"),
        1.0
    );
    assert_eq!(
        value("grpc.lb.outlier_detection.ejections_detected_success_rate"),
        1.0
    );
    assert_eq!(
        value("grpc.lb.outlier_detection.ejections_enforced_success_rate"),
        0.0
    );
    assert_eq!(value("grpc.lb.outlier_detection.ejections_overflow"), 1.0);
    assert_eq!(value("meshwork.client.circuit_breaker.overflow"), 1.0);
    assert_eq!(value("meshwork.client.retries"), 1.0);
    assert_eq!(value("meshwork.client.retry_budget.exhausted"), 1.0);
    assert!(
        points
            .iter()
            .all(|p| p.unit == "{ejection}" || p.unit == "{call}" || p.unit == "{retry}")
    );
}

#[tokio::test(start_paused = true)]
async fn the_traffic_layers_count_at_their_sources() {
    use crate::breaker::CircuitBreaker;
    use crate::outlier::{Outcome, OutlierDetector};
    use crate::retry::RetryBudget;
    use crate::xds::resource::{CircuitBreakers, ConsecutiveEjection, OutlierDetection};

    let sdk = Sdk::new();
    let metrics = sdk.telemetry.mesh().cluster("backend");

    // The breaker: no capacity at all, so the call is shed.
    let endpoint = service_fn(|_req: http::Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(grpc_response(None))
    });
    let limits = CircuitBreakers {
        max_requests: 0,
        max_pending_requests: None,
    };
    let mut breaker = CircuitBreaker::new(endpoint, limits).metrics(metrics.clone());
    let shed = breaker.ready().await.unwrap().call(grpc_request()).await;
    assert!(shed.is_err());

    // The retry layer: a retry sent, then a retry the (tiny) budget refuses.
    let fails_once = |n: usize| {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        service_fn(move |_req: http::Request<RetryBody<Full<Bytes>>>| {
            let i = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok::<_, std::convert::Infallible>(grpc_response((i < n).then_some(14))) }
        })
    };
    let mut retried = RetryLayer::new()
        .seed(1)
        .metrics(metrics.clone())
        .layer(fails_once(1));
    let rsp = retried.ready().await.unwrap().call(grpc_request()).await;
    assert_eq!(rsp.unwrap().headers().get("grpc-status"), None);
    let budget = std::sync::Arc::new(RetryBudget::new(1, 0.001).unwrap());
    let mut refused = RetryLayer::new()
        .seed(1)
        .budget(budget)
        .metrics(metrics.clone())
        .layer(fails_once(usize::MAX));
    let rsp = refused.ready().await.unwrap().call(grpc_request()).await;
    assert_eq!(rsp.unwrap().headers()["grpc-status"], "14");

    // Outlier detection: one failure ejects; with half the endpoints out, the next
    // ejection overflows max_ejection_percent.
    let od = OutlierDetection {
        max_ejection_percent: 50,
        success_rate: None,
        failure_percentage: None,
        consecutive_5xx: Some(ConsecutiveEjection {
            consecutive: 1,
            enforcement_percentage: 100,
        }),
        consecutive_gateway_failure: None,
        interval: std::time::Duration::from_secs(10),
        base_ejection_time: std::time::Duration::from_secs(30),
        max_ejection_time: std::time::Duration::from_secs(300),
    };
    let detector = OutlierDetector::with_metrics(od, metrics);
    let a = detector.endpoint("127.0.0.1:1".parse().unwrap());
    let b = detector.endpoint("127.0.0.1:2".parse().unwrap());
    a.record(Outcome::ServerError { gateway: false });
    b.record(Outcome::ServerError { gateway: false });
    assert!(a.is_ejected() && !b.is_ejected());

    let value = |name: &str| -> f64 {
        sdk.metric(name)
            .iter()
            .map(|p| {
                assert_eq!(p.attrs["grpc.lb.backend_service"], "backend");
                p.value
            })
            .sum()
    };
    assert_eq!(value("meshwork.client.circuit_breaker.overflow"), 1.0);
    let overflow = sdk.metric("meshwork.client.circuit_breaker.overflow");
    assert_eq!(
        overflow[0].attrs["meshwork.circuit_breaker.limit"],
        "max_requests"
    );
    assert_eq!(value("meshwork.client.retries"), 1.0);
    assert_eq!(value("meshwork.client.retry_budget.exhausted"), 1.0);
    assert_eq!(
        value("grpc.lb.outlier_detection.ejections_enforced_total"),
        1.0
    );
    assert_eq!(value("grpc.lb.outlier_detection.ejections_overflow"), 1.0);
}

#[test]
fn the_tracer_is_probed_without_exporting_anything() {
    let sdk = Sdk::new();
    assert!(sdk.telemetry.traces(), "an SDK tracer makes spans");
    assert!(sdk.spans().is_empty(), "the probe span is never exported");
    // The global providers are OpenTelemetry's no-op defaults in this test binary: a
    // handle on them records nothing.
    let global = Telemetry::global();
    assert!(!global.traces() && !global.metrics() && !global.is_enabled());
    assert!(!global.with_target("xds:///x").is_enabled());
    let disabled = Telemetry::disabled();
    assert!(!disabled.traces() && !disabled.metrics() && !disabled.is_enabled());
    assert!(!disabled.with_target("xds:///x").is_enabled());
}

#[test]
fn the_no_op_meter_provider_is_told_from_a_recording_one() {
    assert!(!records_metrics(
        &opentelemetry::metrics::NoopMeterProvider::new()
    ));
    let sdk = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    assert!(records_metrics(&sdk));
    assert!(records_metrics(&SdkMeterProvider::builder().build()));
    // A meter handed over explicitly is taken at its word, even a no-op one.
    let noop_meter = opentelemetry::metrics::NoopMeterProvider::new().meter("meshwork");
    let explicit = Telemetry::new(opentelemetry::trace::noop::NoopTracer::new(), &noop_meter);
    assert!(explicit.metrics() && explicit.is_enabled() && !explicit.traces());
}

#[tokio::test(start_paused = true)]
async fn disabled_telemetry_records_nothing_but_passes_the_callers_trace_on() {
    passes_the_callers_trace_on(Telemetry::disabled()).await;
}

#[tokio::test(start_paused = true)]
async fn telemetry_on_no_op_providers_passes_the_callers_trace_on() {
    // Nothing installed: the handle records nothing and behaves as a disabled one.
    let telemetry = Telemetry::global();
    assert!(!telemetry.is_enabled());
    passes_the_callers_trace_on(telemetry).await;
}

async fn passes_the_callers_trace_on(telemetry: Telemetry) {
    // Client side: the current context's traceparent goes out unchanged.
    let endpoint = traceparent_echo();
    let mut client = CallLayer::new(telemetry.clone())
        .layer(AttemptLayer::new(telemetry.clone()).layer(endpoint));
    let rsp = send(&mut client).await;
    assert_eq!(sent(&rsp), None);
    let body = rsp.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");

    let remote = remote_parent();
    {
        let _guard = Context::new()
            .with_remote_span_context(remote.clone())
            .attach();
        let rsp = send(&mut client).await;
        assert_eq!(sent(&rsp).unwrap(), PARENT);
    }

    // Through a retry layer, with the caller's context attached only while the call is
    // made (attempts run later, when the future is polled): every attempt carries it.
    let (seen, mut retried) = retried_client(telemetry.clone(), telemetry.clone());
    retried.ready().await.unwrap();
    let call = {
        let _guard = Context::new()
            .with_remote_span_context(remote.clone())
            .attach();
        retried.call(grpc_request())
    };
    call.await.unwrap().into_body().collect().await.unwrap();
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "the first attempt failed and was retried");
    for v in sent {
        assert_eq!(v.expect("a traceparent on every attempt"), PARENT);
    }

    // Server side: the handler runs in the caller's context, so its own calls join the
    // trace; without a traceparent the context is left as it was.
    let mut server = ServerLayer::new(telemetry).layer(context_echo());
    let mut req = grpc_request();
    req.headers_mut()
        .insert("traceparent", http::HeaderValue::from_static(PARENT));
    let rsp = server.ready().await.unwrap().call(req).await.unwrap();
    let seen = rsp.extensions().get::<opentelemetry::trace::SpanContext>();
    assert_eq!(seen, Some(&remote));
    let rsp = send(&mut server).await;
    let seen = rsp.extensions().get::<opentelemetry::trace::SpanContext>();
    assert!(!seen.unwrap().is_valid());
}

#[tokio::test]
async fn a_server_names_only_methods_it_has_answered_as_served() {
    let sdk = Sdk::new();
    // The application serves one method; everything else is UNIMPLEMENTED (as tonic
    // answers), and calls marked `deny` are refused as an authorization layer would.
    let handler = service_fn(|req: http::Request<Full<Bytes>>| async move {
        let code = if req.headers().contains_key("deny") {
            7
        } else if req.uri().path() == "/helloworld.Greeter/SayHello" {
            0
        } else {
            12
        };
        Ok::<_, std::convert::Infallible>(grpc_response(Some(code)))
    });
    let mut server = ServerLayer::new(sdk.telemetry.clone()).layer(handler);
    let mut call = async |path: String, deny: bool| {
        let mut req = http::Request::post(format!("http://greeter{path}"))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .unwrap();
        if deny {
            req.headers_mut()
                .insert("deny", http::HeaderValue::from_static("1"));
        }
        let rsp = server.ready().await.unwrap().call(req).await.unwrap();
        rsp.into_body().collect().await.unwrap();
    };
    // A peer scanning random paths, more than the table holds: none of them is named.
    for i in 0..=MAX_METHOD_NAMES {
        call(format!("/scan.Service/M{i}"), false).await;
    }
    // A denied call to the served method does not name it either.
    call("/helloworld.Greeter/SayHello".into(), true).await;
    // Two allowed calls: the first teaches the name, the second carries it.
    call("/helloworld.Greeter/SayHello".into(), false).await;
    call("/helloworld.Greeter/SayHello".into(), false).await;

    let started = sdk.metric("grpc.server.call.started");
    let by_method: BTreeMap<&str, f64> = started
        .iter()
        .map(|p| (p.attrs["grpc.method"].as_str(), p.value))
        .collect();
    assert_eq!(
        by_method,
        BTreeMap::from([
            ("helloworld.Greeter/SayHello", 1.0),
            ("other", (MAX_METHOD_NAMES + 1 + 2) as f64),
        ])
    );
    // The spans still name every method.
    let spans = sdk.spans();
    let last = format!("M{MAX_METHOD_NAMES}");
    assert!(
        spans
            .iter()
            .any(|s| attr(s, "rpc.method") == Some(&Value::from(last.clone())))
    );
}

#[tokio::test(start_paused = true)]
async fn an_unsampled_call_still_carries_its_trace_and_decision_downstream() {
    // A tracer that samples nothing (as a ratio sampler does for most calls): no span is
    // recorded, but the call's trace ID and its "not sampled" flag go to every attempt and
    // from there to the server, so a ratio sampler decides once per trace, not per hop.
    let provider = SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff)
        .build();
    let meters = SdkMeterProvider::builder().build();
    let telemetry = Telemetry::new(provider.tracer("meshwork"), &meters.meter("meshwork"));

    let (seen, mut client) = retried_client(telemetry.clone(), telemetry.clone());
    let rsp = send(&mut client).await;
    rsp.into_body().collect().await.unwrap();

    let sent: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_ref()
                .expect("a traceparent on every attempt")
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(sent.len(), 2);
    let parsed: Vec<_> = sent
        .iter()
        .map(|v| propagation::parse_traceparent(v).unwrap())
        .collect();
    assert_eq!(
        parsed[0].0, parsed[1].0,
        "both attempts are in the call's trace"
    );
    assert_ne!(parsed[0].1, parsed[1].1, "each attempt is its own span");
    assert!(
        sent.iter().all(|v| v.ends_with("-00")),
        "not sampled: {sent:?}"
    );

    // The server (default parent-based sampler) follows the caller's decision, and its
    // handler runs in the caller's trace.
    let sdk = Sdk::new();
    let mut server = ServerLayer::new(sdk.telemetry.clone()).layer(context_echo());
    let mut req = grpc_request();
    req.headers_mut().insert(
        "traceparent",
        http::HeaderValue::from_str(&sent[1]).unwrap(),
    );
    let rsp = server.ready().await.unwrap().call(req).await.unwrap();
    let current = rsp
        .extensions()
        .get::<opentelemetry::trace::SpanContext>()
        .cloned()
        .unwrap();
    rsp.into_body().collect().await.unwrap();
    assert_eq!(current.trace_id(), parsed[1].0);
    assert!(!current.is_sampled());
    assert!(sdk.spans().is_empty(), "nothing recorded downstream either");
}

/// A span's name and attributes, as a sampler is asked about them.
type Question = (String, Vec<KeyValue>);

/// A sampler that notes what it was asked about and samples the call spans (`Sent.*`), or
/// nothing with `drop_calls`.
#[derive(Debug, Clone, Default)]
struct Asked {
    questions: std::sync::Arc<std::sync::Mutex<Vec<Question>>>,
    drop_calls: bool,
}

impl opentelemetry_sdk::trace::ShouldSample for Asked {
    fn should_sample(
        &self,
        _parent: Option<&Context>,
        _trace_id: opentelemetry::TraceId,
        name: &str,
        _kind: &SpanKind,
        attributes: &[KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        self.questions
            .lock()
            .unwrap()
            .push((name.to_owned(), attributes.to_vec()));
        let sample = name.starts_with("Sent.") && !self.drop_calls;
        opentelemetry_sdk::trace::SamplingResult {
            decision: if sample {
                opentelemetry_sdk::trace::SamplingDecision::RecordAndSample
            } else {
                opentelemetry_sdk::trace::SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: Default::default(),
        }
    }
}

/// Sends one call, retried once, through a client whose tracer asks `asked`.
async fn call_asking(asked: &Asked) {
    let provider = SdkTracerProvider::builder()
        .with_sampler(asked.clone())
        .build();
    let meters = SdkMeterProvider::builder().build();
    let telemetry = Telemetry::new(provider.tracer("meshwork"), &meters.meter("meshwork"));
    let (_seen, mut client) = retried_client(telemetry.clone(), telemetry);
    send(&mut client).await.into_body().collect().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_sampler_sees_each_spans_name_and_attributes() {
    // OpenTelemetry's samplers decide on what a span has when it starts, so its name and
    // attributes are given then, not set on the span afterwards.
    let asked = Asked::default();
    call_asking(&asked).await;

    let asked = asked.questions.lock().unwrap();
    let names: Vec<&str> = asked.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Sent.helloworld.Greeter.SayHello",
            "Attempt.helloworld.Greeter.SayHello",
            "Attempt.helloworld.Greeter.SayHello",
        ]
    );
    let value = |attrs: &[KeyValue], key: &str| {
        attrs
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    };
    for (_, attrs) in asked.iter() {
        assert_eq!(
            value(attrs, "rpc.service"),
            Some(Value::from("helloworld.Greeter"))
        );
        assert_eq!(value(attrs, "server.address"), Some(Value::from("greeter")));
    }
    assert_eq!(
        value(&asked[2].1, "previous-rpc-attempts"),
        Some(Value::I64(1))
    );
}

#[tokio::test(start_paused = true)]
async fn under_an_unsampled_parent_attributes_are_made_only_for_a_span_that_is_recorded() {
    // The attempts' parent (the call span) is not sampled: their sampler is asked with the
    // name alone, since the usual (parent-based) samplers drop them without looking.
    let asked = Asked {
        drop_calls: true,
        ..Asked::default()
    };
    call_asking(&asked).await;
    let seen: Vec<(String, usize)> = asked
        .questions
        .lock()
        .unwrap()
        .iter()
        .map(|(name, attrs)| (name.clone(), attrs.len()))
        .collect();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].0, "Sent.helloworld.Greeter.SayHello");
    assert!(seen[0].1 > 0, "a root span's sampler sees its attributes");
    for (name, attributes) in &seen[1..] {
        assert_eq!(name, "Attempt.helloworld.Greeter.SayHello");
        assert_eq!(*attributes, 0, "asked with the name alone");
    }

    // A sampler that records whatever the parent decided: the spans it records under an
    // unsampled parent carry every attribute all the same.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_simple_exporter(exporter.clone())
        .build();
    let meters = SdkMeterProvider::builder().build();
    let telemetry = Telemetry::new(provider.tracer("meshwork"), &meters.meter("meshwork"));
    let (_seen, mut client) = retried_client(telemetry.clone(), telemetry);
    let unsampled = opentelemetry::trace::SpanContext::new(
        remote_parent().trace_id(),
        remote_parent().span_id(),
        opentelemetry::trace::TraceFlags::default(),
        true,
        Default::default(),
    );
    let guard = Context::new().with_remote_span_context(unsampled).attach();
    send(&mut client).await.into_body().collect().await.unwrap();
    drop(guard);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 3, "{spans:?}");
    let value = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    };
    for span in &spans {
        assert_eq!(
            value(span, "rpc.service"),
            Some(Value::from("helloworld.Greeter")),
            "{}",
            span.name
        );
        assert_eq!(value(span, "server.address"), Some(Value::from("greeter")));
    }
    let attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("Attempt."))
        .collect();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts
            .iter()
            .any(|s| value(s, "previous-rpc-attempts") == Some(Value::I64(1)))
    );
}
