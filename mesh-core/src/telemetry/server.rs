//! The server span and server metrics, with the caller's trace context extracted.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use super::body::finish_head;
use super::names::SpanPrefix;
use super::record::{Record, Side, Subject, start_span};
use super::{PEER_SPIFFE_ID, Rpc, Telemetry, TelemetryBody, propagation};
use crate::identity::PeerIdentity;
use crate::inbound::ConnectionInfo;

/// The most attributes a server span carries: the `rpc.*` four, the connection's four and
/// the peer's SPIFFE ID at its start; the response status and `rpc.grpc.status_code` at
/// its end.
const SERVER_ATTRIBUTES: usize = 11;

/// Makes [`Server`]s.
#[derive(Debug, Clone, Default)]
pub struct ServerLayer {
    telemetry: Telemetry,
}

impl ServerLayer {
    /// A layer recording through `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = Server<S>;

    fn layer(&self, inner: S) -> Server<S> {
        Server::new(inner, self.telemetry.clone())
    }
}

/// The server side of a request: the caller's `traceparent`/`tracestate` extracted, a
/// `SERVER` span (`Recv.<service>.<method>`) under it, current while the application
/// handles the request; `grpc.server.call.started` and `grpc.server.call.duration` (or
/// `http.server.request.duration`). The caller's SPIFFE ID comes from the
/// [`PeerIdentity`] or [`ConnectionInfo`] in the request's extensions. See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct Server<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S> Server<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, telemetry: Telemetry) -> Self {
        Self { inner, telemetry }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn connection_attributes<B>(req: &http::Request<B>, attrs: &mut Vec<KeyValue>) {
    let info = req.extensions().get::<ConnectionInfo>();
    if let Some(info) = info {
        let local = info.local_addr();
        attrs.push(KeyValue::new("server.address", local.ip().to_string()));
        attrs.push(KeyValue::new("server.port", i64::from(local.port())));
        let remote = info.remote_addr();
        attrs.push(KeyValue::new("client.address", remote.ip().to_string()));
        attrs.push(KeyValue::new("client.port", i64::from(remote.port())));
    }
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .or_else(|| info.and_then(ConnectionInfo::peer));
    if let Some(peer) = peer {
        attrs.push(KeyValue::new(PEER_SPIFFE_ID, peer.spiffe_id().to_string()));
    }
}

impl<S, B, RB> Service<http::Request<B>> for Server<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
{
    type Response = http::Response<TelemetryBody<RB>>;
    type Error = BoxError;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let remote = propagation::extract(req.headers());
        if !self.telemetry.is_enabled() {
            // Nothing recorded; the application's own calls still carry the caller's trace.
            let run = remote.map(|sc| Context::current().with_remote_span_context(sc));
            let inner = {
                let _current = run.clone().map(Context::attach);
                self.inner.call(req)
            };
            return ServerFuture {
                inner,
                cx: run,
                record: None,
            };
        }
        let rpc = Rpc::of_server(&self.telemetry, &req);
        let (span, run) = if self.telemetry.traces() {
            let parent = match remote {
                Some(sc) => Context::current().with_remote_span_context(sc),
                None => Context::current(),
            };
            let started = start_span(
                &self.telemetry,
                parent,
                SpanKind::Server,
                || rpc.span_name(SpanPrefix::Recv),
                SERVER_ATTRIBUTES,
                |attrs| {
                    rpc.span_attributes(attrs);
                    connection_attributes(&req, attrs);
                },
            );
            // The application runs in the server span's context (recorded or not), so its
            // own calls join the trace and follow its sampling decision.
            (started.recorded(), Some(started.cx))
        } else {
            // No spans: only a caller's trace context needs passing on to the application's
            // own calls; without one nothing is attached, and the application's future runs
            // in whatever context is current when it is polled (under hyper, the empty one).
            let run = remote.map(|sc| Context::current().with_remote_span_context(sc));
            (None, run)
        };
        if rpc.is_grpc() && self.telemetry.metrics() {
            self.telemetry
                .instruments()
                .server_call_started
                .add(1, &[rpc.method_kv()]);
        }
        let inner = {
            let _current = run.clone().map(Context::attach);
            self.inner.call(req)
        };
        let record = Record::new(
            Side::Server,
            Subject::Own {
                telemetry: self.telemetry.clone(),
                rpc,
            },
            span,
        );
        ServerFuture {
            inner,
            cx: run,
            record: Some(record),
        }
    }
}

pin_project! {
    /// The future of a [`Server`].
    #[derive(Debug)]
    pub struct ServerFuture<F> {
        #[pin]
        inner: F,
        // The context the application's future runs in, when it differs from the current.
        cx: Option<Context>,
        record: Option<Record>,
    }
}

impl<F, RB, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
    RB: http_body::Body,
{
    type Output = Result<http::Response<TelemetryBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _current = this.cx.clone().map(Context::attach);
            std::task::ready!(this.inner.poll(cx))
        };
        Poll::Ready(finish_head(this.record.take(), result))
    }
}
