//! Telemetry: OpenTelemetry traces and metrics for calls in and out, named as gRPC's
//! OpenTelemetry plugin names them.
//!
//! Three layers, each usable on its own:
//!
//! ```text
//! client: CallLayer ─> Router ─> Timeout ─> Retry ─> AttemptLayer ─> CircuitBreaker ─> Balancer
//! server: MeshAcceptor ─> ServerLayer ─> InboundLayer ─> the application
//! ```
//!
//! - [`CallLayer`] wraps a whole outbound stack: one client span per call
//!   (`Sent.<service>.<method>`, kind `CLIENT`), the call's duration
//!   (`grpc.client.call.duration`) and its retry count (`grpc.client.call.retries`, gRFC A96).
//! - [`AttemptLayer`] sits below the retry layer: one child span per attempt
//!   (`Attempt.<service>.<method>`, gRFC A72, with `previous-rpc-attempts`), so retries are
//!   visible in a trace; `grpc.client.attempt.started` and `grpc.client.attempt.duration`;
//!   and the W3C `traceparent`/`tracestate` headers of the attempt span on the request.
//! - [`ServerLayer`] extracts `traceparent`/`tracestate`, opens the server span
//!   (`Recv.<service>.<method>`, kind `SERVER`) as a child of the caller's attempt span,
//!   makes it the current context while the application handles the request (so the
//!   application's own outbound calls join the trace), and records
//!   `grpc.server.call.started` and `grpc.server.call.duration`.
//!
//! A request that is not gRPC (no `application/grpc` content type) follows the HTTP semantic
//! conventions instead: spans named by the HTTP method, `http.client.request.duration` per
//! attempt and `http.server.request.duration`.
//!
//! Spans carry the semantic-convention attributes `rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`, `server.address`, `server.port`,
//! `http.request.method`, `http.response.status_code`, the endpoint that served an attempt
//! (`network.peer.address`, `network.peer.port`) and, on the server, the caller's SPIFFE ID
//! (`meshwork.peer.spiffe_id`, from the mTLS handshake).
//!
//! A call ends when its response body ends: a gRPC status in the trailers (or in a
//! trailers-only response head) is the call's status; a failure before a response maps to
//! a code through [`error_codes`](crate::stack::error_codes); a body dropped before its end
//! is `CANCELLED`.
//!
//! # What it costs
//!
//! The layers read one [`Telemetry`] handle: a tracer, the instruments and the interned
//! gRPC method names, made once. [`Telemetry`] probes its tracer when it is made: with no
//! tracer provider installed (OpenTelemetry's no-op default) no span is ever built.
//! [`Telemetry::global`] also skips the metric work when no meter provider is installed
//! (see [`Telemetry::metrics`]); with neither provider the layers only carry a caller's
//! trace context on, as with [`Telemetry::disabled`] (which records nothing whatever is
//! installed). With a meter that records, a call costs its metric calls, two clock reads
//! per layer and the bookkeeping that ends the call with its response body. A span's name
//! and attributes are given to the tracer when it starts (so a sampler sees them, as
//! OpenTelemetry asks), so a tracer that makes spans but does not sample a root one (a
//! ratio sampler) costs them too; under a parent that was not sampled (a call of a request
//! a ratio sampler left out, or an attempt of such a call), the sampler is asked with the
//! name alone and the attributes are made only for a span it records all the same.
//! `benches/benches/telemetry.rs` measures each case: disabled, no providers installed, a
//! tracer without an exporter, and a tracer with 1% sampling.
//!
//! A call's `grpc.method` is interned per handle and bounded: a client names up to
//! [`MAX_METHOD_NAMES`] methods; a server names a method only once it has answered a call to
//! it as a method it serves and allows (not `UNIMPLEMENTED`, `PERMISSION_DENIED` or
//! `UNAUTHENTICATED`), so its first call and whatever a scan finds are `other` in metrics
//! (spans keep the name), except for the methods of services the adapter registered with
//! [`Telemetry::serve_service`], named from their first call; see `names.rs`. An interned
//! method's span names and `grpc.method` value, and a handle's `grpc.target`, are kept for
//! the process (within a byte budget), so that a call copies them rather than counting
//! references on lines every worker's calls share; a call's attempts record through the
//! call's own context when they use the same handle.
//!
//! The client [`Engine`](crate::client::Engine) puts an [`AttemptLayer`] in every cluster's
//! stack and the [`CallLayer`] around each target's router (for meshwork-grpc's
//! `MeshChannel` and meshwork-http's `MeshClient` alike); the servers (`MeshServer`,
//! meshwork-http's `Server`) put the [`ServerLayer`] outermost (so denied requests are
//! recorded too).
//!
//! # Mesh counters
//!
//! [`MeshMetrics`] (from [`Telemetry::mesh`]) counts what the traffic layers decide:
//! circuit-breaker overflows, outlier ejections (gRFC A91's names), retries and retry
//! budget exhaustion. The stack hands each cluster's breaker, outlier detector and retry
//! layer one [`ClusterMetrics`] ([`MeshMetrics::cluster`]), whose attributes are made once.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::global;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, TraceContextExt as _, TraceFlags, TraceState, Tracer,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, SpanId, StringValue, TraceId};

use crate::status::GrpcCode;

mod attempt;
mod body;
mod call;
mod names;
pub mod propagation;
mod record;
mod server;
mod values;

pub use attempt::{Attempt, AttemptFuture, AttemptLayer};
pub use body::TelemetryBody;
pub use call::{Call, CallFuture, CallLayer};
pub use names::{MAX_METHOD_NAME_LEN, MAX_METHOD_NAMES};
pub use server::{Server, ServerFuture, ServerLayer};

pub use crate::metrics::{ClusterMetrics, Ejection, MeshMetrics, SCOPE};

/// The span attribute that carries the peer's SPIFFE ID (from the mTLS handshake).
pub const PEER_SPIFFE_ID: &str = "meshwork.peer.spiffe_id";

/// gRFC A66's latency buckets, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// gRFC A66's count buckets.
const COUNT_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The tracer and metric instruments the telemetry layers share. Cheap to clone.
///
/// Made once (per channel, server or process), never per call: [`Telemetry::global`] takes
/// the global providers as they are when it is called, so install the application's
/// providers first.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    tracer: Arc<dyn record::StartSpan>,
    /// Whether the tracer makes spans at all (false for OpenTelemetry's no-op tracer).
    tracing: bool,
    /// Whether the meter records (false for OpenTelemetry's no-op meter provider's).
    metrics: bool,
    /// False when nothing is recorded ([`Telemetry::disabled`], or neither spans nor
    /// metrics): calls pass straight through.
    enabled: bool,
    client_methods: Arc<names::MethodNames>,
    server_methods: Arc<names::MethodNames>,
    target: StringValue,
    instruments: Instruments,
    mesh: MeshMetrics,
    /// `server.address` and `server.port`: the authorities calls go to.
    servers: Arc<values::Values<String, values::Server>>,
    /// `network.peer.address` values: the endpoints that served attempts.
    peers: Arc<values::Values<std::net::IpAddr>>,
}

pub(crate) struct Instruments {
    pub(crate) client_attempt_started: Counter<u64>,
    pub(crate) client_attempt_duration: Histogram<f64>,
    pub(crate) client_call_duration: Histogram<f64>,
    pub(crate) client_call_retries: Histogram<u64>,
    pub(crate) server_call_started: Counter<u64>,
    pub(crate) server_call_duration: Histogram<f64>,
    pub(crate) http_client_duration: Histogram<f64>,
    pub(crate) http_server_duration: Histogram<f64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        Self {
            client_attempt_started: meter
                .u64_counter("grpc.client.attempt.started")
                .with_unit("{attempt}")
                .with_description("Number of client call attempts started.")
                .build(),
            client_attempt_duration: seconds(
                "grpc.client.attempt.duration",
                "Time taken to complete a client call attempt.",
            ),
            client_call_duration: seconds(
                "grpc.client.call.duration",
                "Time taken by gRPC to complete an RPC from the application's perspective.",
            ),
            client_call_retries: meter
                .u64_histogram("grpc.client.call.retries")
                .with_unit("{retry}")
                .with_description(
                    "Number of retry attempts made during the client call (the original attempt is not counted).",
                )
                .with_boundaries(COUNT_BUCKETS.to_vec())
                .build(),
            server_call_started: meter
                .u64_counter("grpc.server.call.started")
                .with_unit("{call}")
                .with_description("Number of server calls started.")
                .build(),
            server_call_duration: seconds(
                "grpc.server.call.duration",
                "Time taken to complete a call from the server transport's perspective.",
            ),
            http_client_duration: seconds(
                "http.client.request.duration",
                "Duration of HTTP client requests.",
            ),
            http_server_duration: seconds(
                "http.server.request.duration",
                "Duration of HTTP server requests.",
            ),
        }
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("target", &self.inner.target.as_str())
            .finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::global()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

impl Telemetry {
    /// The tracer and meter of OpenTelemetry's global providers, as they are now (no-op
    /// until the application installs its own; instruments made from the no-op provider
    /// stay no-op, as OpenTelemetry documents).
    ///
    /// With no meter provider installed, the handle records no metrics and skips their
    /// per-call work ([`metrics`](Self::metrics) is false); with no tracer provider either,
    /// it records nothing ([`is_enabled`](Self::is_enabled) is false) and the layers only
    /// pass a caller's trace context on. OpenTelemetry's API cannot say whether a meter
    /// provider records; its no-op provider is recognised as a provider without state (a
    /// zero-sized type), which a recording provider is not in practice (the SDK's holds its
    /// readers and exporters). A handle made with [`Telemetry::new`] always records its
    /// metrics: an application whose own meter provider has no state of its own (it
    /// records through statics) passes `&global::meter_with_scope(..)` there.
    pub fn global() -> Self {
        let tracer = global::tracer_with_scope(scope());
        let provider = global::meter_provider();
        let meter = provider.meter_with_scope(scope());
        Self::build(tracer, &meter, records_metrics(&*provider))
    }

    /// Telemetry that records nothing, neither spans nor metrics, whatever providers are
    /// installed. The layers then cost next to nothing: they pass calls straight through
    /// and only carry a caller's W3C trace context on (so a trace still crosses this
    /// service into the next one).
    pub fn disabled() -> Self {
        let tracer = opentelemetry::trace::noop::NoopTracer::new();
        let meter = opentelemetry::metrics::NoopMeterProvider::new().meter_with_scope(scope());
        // The no-op tracer makes no spans and no metrics are asked for: nothing is enabled.
        Self::build(tracer, &meter, false)
    }

    /// Whether anything is recorded: false for [`Telemetry::disabled`], and for a
    /// [`Telemetry::global`] handle made while the application had installed neither a
    /// tracer provider nor a meter provider. The layers of a handle that records nothing
    /// pass calls straight through, carrying a caller's trace context on.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled
    }

    /// Whether metrics are recorded: false for a [`Telemetry::global`] handle made before
    /// the application installed a meter provider (its instruments are OpenTelemetry's
    /// no-op ones), and for [`Telemetry::disabled`]; true for every [`Telemetry::new`]
    /// handle, whatever its meter. The layers of a handle without metrics skip the per-call
    /// metric work (the attributes, the instrument calls, the durations).
    pub fn metrics(&self) -> bool {
        self.inner.metrics
    }

    /// Whether `other` is a clone of this handle.
    pub(crate) fn same(&self, other: &Telemetry) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Telemetry through `tracer` and `meter` (for instance from an SDK provider's
    /// `tracer_with_scope` / `meter_with_scope`).
    pub fn new<T>(tracer: T, meter: &Meter) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        Self::build(tracer, meter, true)
    }

    /// The tracer is kept as its own type behind [`record::StartSpan`] rather than as a
    /// [`BoxedTracer`](global::BoxedTracer): a boxed tracer boxes every span it makes, and
    /// the context the span goes into boxes it again.
    fn build<T>(tracer: T, meter: &Meter, metrics: bool) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        let tracing = makes_spans(&tracer);
        Self {
            inner: Arc::new(Inner {
                tracing,
                metrics,
                enabled: tracing || metrics,
                tracer: Arc::new(tracer),
                client_methods: Arc::default(),
                server_methods: Arc::default(),
                target: StringValue::from(""),
                instruments: Instruments::new(meter),
                mesh: MeshMetrics::new(meter, StringValue::from("")),
                servers: Arc::default(),
                peers: Arc::default(),
            }),
        }
    }

    /// The `grpc.target` attribute of the client metrics: the target the channel was made
    /// for (e.g. `xds:///greeter`). Empty by default.
    pub fn with_target(self, target: impl Into<String>) -> Self {
        let target = target.into();
        // Shared for the life of the process when there is room, so that the calls'
        // metrics copy the value instead of counting references to it.
        let target = match names::shared_name(&target) {
            Some(shared) => StringValue::from(shared),
            None => StringValue::from(Arc::<str>::from(target)),
        };
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.mesh = inner.mesh.with_target(target.clone());
        inner.target = target;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The `grpc.target` this handle records.
    pub fn target(&self) -> &str {
        self.inner.target.as_str()
    }

    /// The counters of the traffic layers (breaker, outlier detection, retries), with this
    /// handle's meter and target.
    pub fn mesh(&self) -> &MeshMetrics {
        &self.inner.mesh
    }

    pub(crate) fn tracer(&self) -> &dyn record::StartSpan {
        &*self.inner.tracer
    }

    /// Whether spans are made at all; false when the tracer is OpenTelemetry's no-op one,
    /// and then the layers skip span work entirely.
    pub fn traces(&self) -> bool {
        self.inner.tracing
    }

    pub(crate) fn instruments(&self) -> &Instruments {
        &self.inner.instruments
    }

    /// Tells the server side that `service` (`package.Service`, e.g. tonic's
    /// `NamedService::NAME`) is served here: its methods are named in server metrics from
    /// their first call (within [`MAX_METHOD_NAMES`]), rather than once they have answered.
    /// `MeshServer` calls this for every service added to it.
    pub fn serve_service(&self, service: &str) {
        self.inner.server_methods.serve(service);
    }

    /// A server answered a call to `rpc` with `code`: a method it serves and allows is named
    /// in its metrics from now on (see `names.rs`).
    pub(crate) fn learn_server_method(&self, rpc: &Rpc, code: GrpcCode) {
        if let Rpc::Grpc { method } = rpc
            && !method.named
            && !matches!(
                code,
                GrpcCode::Unimplemented | GrpcCode::PermissionDenied | GrpcCode::Unauthenticated
            )
        {
            self.inner.server_methods.learn(&method.info);
        }
    }

    /// The host and explicit port of `authority`, parsed once per authority (see
    /// `values.rs`).
    pub(crate) fn server(&self, authority: &http::uri::Authority) -> values::Server {
        self.inner
            .servers
            .get(authority.as_str(), || values::Server {
                host: StringValue::from(Arc::<str>::from(authority.host())),
                port: authority.port_u16(),
            })
    }

    /// The `network.peer.address` value for `ip`, made once per address.
    pub(crate) fn peer_value(&self, ip: std::net::IpAddr) -> StringValue {
        self.inner.peers.get(&ip, || {
            // Formatted on the stack (an IPv6 address is at most 45 characters), so the
            // value costs one allocation.
            let mut buf = [0u8; 64];
            let mut out = &mut buf[..];
            let _ = std::io::Write::write_fmt(&mut out, format_args!("{ip}"));
            let len = 64 - out.len();
            let text = std::str::from_utf8(&buf[..len]).unwrap_or_default();
            StringValue::from(Arc::<str>::from(text))
        })
    }

    pub(crate) fn target_kv(&self) -> KeyValue {
        KeyValue::new("grpc.target", self.inner.target.clone())
    }
}

/// Whether `provider` records metrics: false for a provider without state, as
/// OpenTelemetry's no-op one is (see [`Telemetry::global`]).
fn records_metrics(provider: &(dyn opentelemetry::metrics::MeterProvider + Send + Sync)) -> bool {
    std::mem::size_of_val(provider) != 0
}

/// Whether `tracer` makes spans of its own. A no-op tracer hands back its parent's span
/// context as the new span's; the SDK's, under the suppressed parent used here, hands back
/// an empty one and runs no span processor (so the probe is never exported). Relies on
/// that SDK behaviour (checked by the `the_tracer_is_probed_without_exporting_anything`
/// test on every upgrade); a third-party tracer that ignores suppression and samples
/// regardless of its unsampled parent would export one `meshwork.probe` span per handle.
fn makes_spans<T: Tracer>(tracer: &T) -> bool {
    let parent = SpanContext::new(
        TraceId::from(0x6d65_7368_776f_726b_u128),
        SpanId::from(0x0070_726f_6265_u64),
        TraceFlags::default(),
        true,
        TraceState::default(),
    );
    let cx = Context::new()
        .with_remote_span_context(parent.clone())
        .with_telemetry_suppressed();
    let mut span = tracer.build_with_context(SpanBuilder::from_name("meshwork.probe"), &cx);
    let own = span.span_context() != &parent;
    span.end();
    own
}

impl Clone for Instruments {
    fn clone(&self) -> Self {
        Self {
            client_attempt_started: self.client_attempt_started.clone(),
            client_attempt_duration: self.client_attempt_duration.clone(),
            client_call_duration: self.client_call_duration.clone(),
            client_call_retries: self.client_call_retries.clone(),
            server_call_started: self.server_call_started.clone(),
            server_call_duration: self.server_call_duration.clone(),
            http_client_duration: self.http_client_duration.clone(),
            http_server_duration: self.http_server_duration.clone(),
        }
    }
}

/// What a request is, for naming its span and metrics.
#[derive(Debug, Clone)]
pub(crate) enum Rpc {
    /// A gRPC call, by its full method name, `package.Service/Method`.
    Grpc { method: names::MethodName },
    /// Any other HTTP request.
    Http { method: http::Method },
}

impl Rpc {
    /// What an outbound `req` is, with its gRPC method name interned in `telemetry`'s
    /// client table.
    pub(crate) fn of<B>(telemetry: &Telemetry, req: &http::Request<B>) -> Self {
        Self::with(req, |full| telemetry.inner.client_methods.get(full))
    }

    /// What an inbound `req` is: its gRPC method is named only if the server has learned it
    /// (see [`Telemetry::learn_server_method`]).
    pub(crate) fn of_server<B>(telemetry: &Telemetry, req: &http::Request<B>) -> Self {
        Self::with(req, |full| telemetry.inner.server_methods.known(full))
    }

    fn with<B>(
        req: &http::Request<B>,
        name: impl FnOnce(&str) -> Option<names::MethodName>,
    ) -> Self {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let full = req.uri().path().strip_prefix('/').filter(|_| grpc);
        match full.and_then(name) {
            Some(method) => Rpc::Grpc { method },
            None => Rpc::Http {
                method: req.method().clone(),
            },
        }
    }

    pub(crate) fn is_grpc(&self) -> bool {
        matches!(self, Rpc::Grpc { .. })
    }

    /// The span name: `<prefix>.<package.Service>.<Method>` (gRFC A72) or the HTTP method.
    pub(crate) fn span_name(&self, prefix: names::SpanPrefix) -> Cow<'static, str> {
        match self {
            Rpc::Grpc { method } => method.info.span_name(prefix),
            // A span keeps an unknown method's own name; its metrics fold it into `_OTHER`.
            Rpc::Http { method } => match standard_method(method) {
                "_OTHER" => Cow::Owned(method.as_str().to_owned()),
                name => Cow::Borrowed(name),
            },
        }
    }

    /// `rpc.*` or `http.request.method` span attributes.
    pub(crate) fn span_attributes(&self, out: &mut Vec<KeyValue>) {
        match self {
            Rpc::Grpc { method } => {
                out.push(KeyValue::new("rpc.system", "grpc"));
                out.push(KeyValue::new("rpc.service", method.info.service.clone()));
                out.push(KeyValue::new("rpc.method", method.info.method.clone()));
                out.push(KeyValue::new("http.request.method", "POST"));
            }
            Rpc::Http { method } => {
                out.push(KeyValue::new("http.request.method", method_value(method)));
            }
        }
    }

    pub(crate) fn method_kv(&self) -> KeyValue {
        match self {
            Rpc::Grpc { method } if method.named => {
                KeyValue::new("grpc.method", method.info.metric_value())
            }
            Rpc::Grpc { .. } => KeyValue::new("grpc.method", "other"),
            Rpc::Http { method } => KeyValue::new("http.request.method", method_value(method)),
        }
    }
}

fn method_value(method: &http::Method) -> StringValue {
    standard_method(method).into()
}

/// The name of a standard HTTP method; `_OTHER` for any other (the semantic conventions
/// fold unknown methods into one value).
fn standard_method(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests;
