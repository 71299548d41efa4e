//! One trace across two meshwork services, exported over OTLP/gRPC to a real receiver
//! (oteltest's `GrpcSink`, from the interop venv).
//!
//! ```text
//! client ──h2──> frontend (ServerLayer) ──h2──> backend (ServerLayer)
//!  Call+Attempt           Call -> Retry -> Attempt      first attempt: UNAVAILABLE
//! ```
//!
//! Every process-side piece is meshwork's: the W3C context crosses both hops, the retry
//! shows as a second attempt span, and each service exports under its own `service.name`.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use meshwork_core::config::{RetryOn, RetryPolicy};
use meshwork_core::retry::RetryLayer;
use meshwork_core::telemetry::{AttemptLayer, CallLayer, ServerLayer, Telemetry};
use meshwork_test_support::otlp::{OtlpSink, Span};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::net::TcpListener;
use tower::{BoxError, Layer, ServiceExt, service_fn};

type Body = UnsyncBoxBody<Bytes, BoxError>;

/// One service's SDK pipeline, exporting over OTLP/gRPC to the sink.
struct Pipeline {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
    telemetry: Telemetry,
}

impl Pipeline {
    fn new(service: &str, port: u16) -> Self {
        let endpoint = format!("http://127.0.0.1:{port}");
        let resource = Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&endpoint)
            .build()
            .unwrap();
        let traces = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(spans)
            .build();
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(&endpoint)
            .build()
            .unwrap();
        let metrics = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(PeriodicReader::builder(metric_exporter).build())
            .build();
        let telemetry = Telemetry::new(traces.tracer("meshwork"), &metrics.meter("meshwork"))
            .with_target(format!("{service}-target"));
        Self {
            traces,
            metrics,
            telemetry,
        }
    }

    /// Flushes and stops the pipeline (the SDK's flush blocks: off the runtime's threads).
    async fn shutdown(self) {
        tokio::task::spawn_blocking(move || {
            self.traces.shutdown().unwrap();
            self.metrics.shutdown().unwrap();
        })
        .await
        .unwrap();
    }
}

/// Serves `svc` over plaintext HTTP/2 on a loopback port.
async fn serve<S>(svc: S) -> SocketAddr
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn grpc_response(status: u8, message: &'static [u8]) -> http::Response<Body> {
    if status != 0 {
        return http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", status.to_string())
            .body(Full::new(Bytes::new()).map_err(Into::into).boxed_unsync())
            .unwrap();
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(message))
        .map_err(Into::into)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed_unsync();
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

fn grpc_request(addr: SocketAddr) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn one_trace_crosses_two_meshwork_services_and_reaches_a_real_otlp_receiver() {
    let venv = meshwork_test_support::peers::venv();
    let sink = OtlpSink::start(&venv);
    let client_side = Pipeline::new("client", sink.port());
    let frontend_side = Pipeline::new("frontend", sink.port());
    let backend_side = Pipeline::new("backend", sink.port());

    // backend: UNAVAILABLE once, then OK.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let backend = service_fn(move |_req: http::Request<Incoming>| {
        let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            Ok::<_, Infallible>(if first {
                grpc_response(14, b"")
            } else {
                grpc_response(0, b"world")
            })
        }
    });
    let backend = ServerLayer::new(backend_side.telemetry.clone())
        .layer(backend)
        .map_response(|rsp| rsp.map(|b| b.boxed_unsync()));
    let backend_addr = serve(backend).await;

    // frontend: calls the backend through Call -> Retry -> Attempt.
    let h2 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<meshwork_core::retry::RetryBody<Full<Bytes>>>();
    let retry = RetryLayer::new()
        .seed(7)
        .default_policy(RetryPolicy {
            retry_on: RetryOn::UNAVAILABLE,
            num_retries: 3,
            base_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
            per_try_timeout: None,
            retriable_status_codes: Vec::new(),
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
        })
        .unwrap();
    let to_backend = CallLayer::new(frontend_side.telemetry.clone())
        .layer(retry.layer(AttemptLayer::new(frontend_side.telemetry.clone()).layer(h2)));
    let frontend = service_fn(move |req: http::Request<Incoming>| {
        let to_backend = to_backend.clone();
        async move {
            let _ = req.into_body().collect().await?;
            let rsp = to_backend.oneshot(grpc_request(backend_addr)).await?;
            Ok::<_, BoxError>(rsp.map(|b| b.map_err(Into::into).boxed_unsync()))
        }
    });
    let frontend = ServerLayer::new(frontend_side.telemetry.clone())
        .layer(frontend)
        .map_response(|rsp| rsp.map(|b| b.boxed_unsync()));
    let frontend_addr = serve(frontend).await;

    // client: one call to the frontend.
    let h2 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let client = CallLayer::new(client_side.telemetry.clone())
        .layer(AttemptLayer::new(client_side.telemetry.clone()).layer(h2));
    let rsp = client.oneshot(grpc_request(frontend_addr)).await.unwrap();
    let body = rsp.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the backend saw a retry");

    for p in [client_side, frontend_side, backend_side] {
        p.shutdown().await;
    }
    // The sink writes each export as it is answered, so after the shutdowns everything is
    // on file; read it a bounded number of times in case the file lags the answer.
    let mut spans = Vec::new();
    for _ in 0..50 {
        spans = sink.spans();
        if spans.len() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by = |service: &str, prefix: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| s.service == service && s.name.starts_with(prefix))
            .cloned()
            .collect()
    };
    let one = |service: &str, prefix: &str| -> Span {
        let found = by(service, prefix);
        assert_eq!(found.len(), 1, "{service} {prefix}: {spans:#?}");
        found.into_iter().next().unwrap()
    };
    let name = "helloworld.Greeter.SayHello";
    let client_call = one("client", "Sent.");
    let client_attempt = one("client", "Attempt.");
    let frontend_server = one("frontend", "Recv.");
    let frontend_call = one("frontend", "Sent.");
    let mut frontend_attempts = by("frontend", "Attempt.");
    let backend_servers = by("backend", "Recv.");
    assert_eq!(
        frontend_attempts.len(),
        2,
        "an attempt span per attempt: {spans:#?}"
    );
    assert_eq!(backend_servers.len(), 2, "{spans:#?}");
    assert_eq!(spans.len(), 8, "{spans:#?}");

    // One trace, client to backend.
    assert!(
        spans.iter().all(|s| s.trace == client_call.trace),
        "{spans:#?}"
    );
    // Parent/child links across both hops.
    assert_eq!(client_call.parent, "", "the client call is the root");
    assert_eq!(client_attempt.parent, client_call.id);
    assert_eq!(frontend_server.parent, client_attempt.id);
    assert_eq!(frontend_call.parent, frontend_server.id);
    frontend_attempts
        .sort_by(|a, b| a.attrs["previous-rpc-attempts"].cmp(&b.attrs["previous-rpc-attempts"]));
    for (i, attempt) in frontend_attempts.iter().enumerate() {
        assert_eq!(attempt.parent, frontend_call.id);
        assert_eq!(attempt.attrs["previous-rpc-attempts"], i.to_string());
        let server = backend_servers
            .iter()
            .find(|s| s.parent == attempt.id)
            .unwrap_or_else(|| panic!("a backend span under attempt {i}: {spans:#?}"));
        assert_eq!(server.kind, "SPAN_KIND_SERVER");
    }
    assert_eq!(frontend_attempts[0].attrs["rpc.grpc.status_code"], "14");
    assert_eq!(frontend_attempts[1].attrs["rpc.grpc.status_code"], "0");

    // Names, kinds and semantic-convention attributes.
    assert_eq!(client_call.name, format!("Sent.{name}"));
    assert_eq!(client_call.kind, "SPAN_KIND_CLIENT");
    assert_eq!(frontend_server.name, format!("Recv.{name}"));
    assert_eq!(frontend_attempts[0].name, format!("Attempt.{name}"));
    for s in [&client_call, &frontend_server, &frontend_call] {
        assert_eq!(s.attrs["rpc.system"], "grpc");
        assert_eq!(s.attrs["rpc.service"], "helloworld.Greeter");
        assert_eq!(s.attrs["rpc.method"], "SayHello");
        assert_eq!(s.attrs["rpc.grpc.status_code"], "0");
        assert_eq!(s.attrs["http.request.method"], "POST");
    }
    assert_eq!(client_call.attrs["server.address"], "127.0.0.1");
    assert_eq!(
        client_call.attrs["server.port"],
        frontend_addr.port().to_string()
    );
    assert_eq!(
        frontend_attempts[1].attrs["server.port"],
        backend_addr.port().to_string()
    );
    assert_eq!(
        frontend_attempts[1].attrs["http.response.status_code"],
        "200"
    );

    // The metrics went out over OTLP too, under gRFC A66's names.
    let names: Vec<String> = sink.metrics().into_iter().map(|m| m.name).collect();
    for metric in [
        "grpc.client.attempt.started",
        "grpc.client.attempt.duration",
        "grpc.client.call.duration",
        "grpc.client.call.retries",
        "grpc.server.call.started",
        "grpc.server.call.duration",
    ] {
        assert!(
            names.iter().any(|n| n == metric),
            "{metric} not exported: {names:?}"
        );
    }
    let _ = std::io::stderr().flush();
}
