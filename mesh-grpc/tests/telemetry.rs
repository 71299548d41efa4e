//! Telemetry wired end to end on loopback: a `MeshChannel` call to a `MeshServer`, both
//! recording into in-memory exporters, makes one trace `Sent -> Attempt -> Recv`, a retried
//! call shows an attempt span per attempt, and the retry layer's counter is recorded.

mod support;

use support::*;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use meshwork_core::config::{
    ClusterSpecifier, ForwardAction, PathMatch, RetryOn, RetryPolicy, Route, RouteAction,
    RouteMatch, StaticConfig, VirtualHost,
};
use meshwork_core::telemetry::Telemetry;
use meshwork_grpc::{MeshChannel, MeshChannelOptions, MeshServer};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::net::TcpListener;
use tonic::Status;
use tonic::body::Body;

/// `helloworld.Greeter` whose first `fail_first` calls answer UNAVAILABLE.
#[derive(Clone)]
struct Greeter {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
}

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

struct SayHello(Greeter);

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<HelloReply>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        let fail = n < self.0.fail_first;
        let message = format!("hello {}", req.get_ref().name);
        Box::pin(async move {
            if fail {
                return Err(Status::unavailable("warming up"));
            }
            Ok(tonic::Response::new(HelloReply { message }))
        })
    }
}

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = SayHello(self.clone());
        Box::pin(async move { Ok(dispatch(req, method).await) })
    }
}

/// In-memory span and metric exporters behind one [`Telemetry`].
struct Sdk {
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl Sdk {
    fn new() -> Self {
        let spans = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        Self {
            spans,
            metrics,
            tracer_provider,
            meter_provider,
        }
    }

    fn telemetry(&self) -> Telemetry {
        Telemetry::new(
            self.tracer_provider.tracer("meshwork"),
            &self.meter_provider.meter("meshwork"),
        )
    }

    fn spans(&self) -> Vec<SpanData> {
        self.tracer_provider.force_flush().unwrap();
        self.spans.get_finished_spans().unwrap()
    }

    /// The sum of the counter `name`'s points whose attributes include `attr`.
    fn counter(&self, name: &str, attr: (&str, &str)) -> u64 {
        self.meter_provider.force_flush().unwrap();
        let Some(last) = self.metrics.get_finished_metrics().unwrap().pop() else {
            return 0;
        };
        let mut total = 0;
        for scope in last.scope_metrics() {
            for m in scope.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::U64(MetricData::Sum(s)) = m.data() {
                    for p in s.data_points() {
                        if p.attributes()
                            .any(|kv| kv.key.as_str() == attr.0 && kv.value.as_str() == attr.1)
                        {
                            total += p.value();
                        }
                    }
                }
            }
        }
        total
    }
}

async fn server(greeter: Greeter, telemetry: Telemetry) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        MeshServer::plaintext()
            .telemetry(telemetry)
            .add_service(greeter)
            .serve(listener),
    );
    addr
}

fn channel(addr: SocketAddr, telemetry: Telemetry) -> MeshChannel {
    let route = Route {
        name: "all".into(),
        matcher: RouteMatch {
            path: PathMatch::Prefix(String::new()),
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
            runtime_fraction: None,
        },
        action: RouteAction::Forward(ForwardAction {
            clusters: ClusterSpecifier::Cluster("greeter".into()),
            timeout: None,
            max_stream_duration: None,
            retry_policy: Some(RetryPolicy {
                retry_on: RetryOn::UNAVAILABLE,
                num_retries: 2,
                base_interval: Duration::from_millis(1),
                max_interval: Duration::from_millis(5),
                per_try_timeout: None,
                retriable_status_codes: Vec::new(),
                avoid_previous_hosts: false,
                host_selection_max_attempts: 1,
            }),
            hash_policies: Vec::new(),
        }),
        filter_overrides: Default::default(),
    };
    let cfg = StaticConfig::new()
        .virtual_host(VirtualHost {
            name: "greeter".into(),
            domains: vec!["*".into()],
            routes: vec![route],
            retry_policy: None,
            filter_overrides: Default::default(),
        })
        .cluster("greeter", ready(cluster("greeter", None), &[addr]))
        .build()
        .unwrap();
    MeshChannel::from_static(cfg, MeshChannelOptions::new().telemetry(telemetry))
}

fn children<'a>(spans: &'a [SpanData], parent: &SpanData) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_context.span_id())
        .collect()
}

#[tokio::test]
async fn a_retried_call_is_one_trace_sent_attempt_recv() {
    let client = Sdk::new();
    let backend = Sdk::new();
    let greeter = Greeter {
        calls: Arc::new(AtomicUsize::new(0)),
        fail_first: 1,
    };
    let addr = server(greeter.clone(), backend.telemetry()).await;
    let channel = channel(addr, client.telemetry());

    assert_eq!(say_hello(&channel).await.unwrap(), "hello hi");
    assert_eq!(greeter.calls.load(Ordering::SeqCst), 2);

    let sent_spans = client.spans();
    let sent: Vec<&SpanData> = sent_spans
        .iter()
        .filter(|s| s.name == "Sent.helloworld.Greeter.SayHello")
        .collect();
    assert_eq!(sent.len(), 1, "one call span: {sent_spans:#?}");
    let sent = sent[0];
    assert_eq!(sent.span_kind, SpanKind::Client);
    assert_eq!(sent.parent_span_id, SpanId::INVALID);
    let trace = sent.span_context.trace_id();

    let attempts = children(&sent_spans, sent);
    assert_eq!(attempts.len(), 2, "an attempt span per attempt");
    assert!(
        attempts
            .iter()
            .all(|a| a.name == "Attempt.helloworld.Greeter.SayHello"
                && a.span_context.trace_id() == trace)
    );

    // The server's spans (its own exporter) continue the client's trace, each under the
    // attempt that carried it.
    let recv = backend.spans();
    assert_eq!(recv.len(), 2, "a server span per attempt: {recv:#?}");
    for r in &recv {
        assert_eq!(r.name, "Recv.helloworld.Greeter.SayHello");
        assert_eq!(r.span_kind, SpanKind::Server);
        assert_eq!(r.span_context.trace_id(), trace);
        assert!(
            attempts
                .iter()
                .any(|a| a.span_context.span_id() == r.parent_span_id),
            "a Recv span under an Attempt span"
        );
    }

    // The retry layer counted the retry it sent, for the cluster and the target.
    assert_eq!(
        client.counter(
            "meshwork.client.retries",
            ("grpc.lb.backend_service", "greeter")
        ),
        1
    );
    assert_eq!(
        client.counter("grpc.client.attempt.started", ("grpc.target", "static")),
        2
    );
    // MeshServer registers its services' names, so the server names the method from its
    // first call (a generic server layer would say `other` until the method had answered).
    assert_eq!(
        backend.counter(
            "grpc.server.call.started",
            ("grpc.method", "helloworld.Greeter/SayHello")
        ),
        2
    );
}
