//! One span per attempt, attempt metrics, and the W3C trace headers on the request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use super::body::finish_head;
use super::names::SpanPrefix;
use super::record::{CallContext, Record, Side, Subject, server_attributes, start_span};
use super::{Rpc, Telemetry, TelemetryBody, propagation};
use crate::extensions::ServedBy;
use crate::identity::PeerIdentity;
use crate::status::GRPC_PREVIOUS_RPC_ATTEMPTS;

/// The most attributes an attempt span carries: the `rpc.*` four, `server.*` two,
/// `previous-rpc-attempts` and `transparent-retry` at its start; the response status, the
/// peer's address, port and SPIFFE ID and `rpc.grpc.status_code` at its end.
const ATTEMPT_ATTRIBUTES: usize = 13;

/// Makes [`Attempt`]s.
#[derive(Debug, Clone, Default)]
pub struct AttemptLayer {
    telemetry: Telemetry,
}

impl AttemptLayer {
    /// A layer recording through `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> Layer<S> for AttemptLayer {
    type Service = Attempt<S>;

    fn layer(&self, inner: S) -> Attempt<S> {
        Attempt::new(inner, self.telemetry.clone())
    }
}

/// One attempt of a call, below the retry layer: a span `Attempt.<service>.<method>`
/// (gRFC A72) under the [`Call`](super::Call) span (or the current context without one),
/// with `previous-rpc-attempts`; `grpc.client.attempt.started` and
/// `grpc.client.attempt.duration` (or `http.client.request.duration`); and the attempt
/// span's `traceparent`/`tracestate` written on the request. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Attempt<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S> Attempt<S> {
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

impl<S, B, RB> Service<http::Request<B>> for Attempt<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
{
    type Response = http::Response<TelemetryBody<RB>>;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !self.telemetry.is_enabled() {
            // Nothing recorded; a caller's trace context still goes on: the one a disabled
            // `Call` above wrote, else the current one.
            if !req.headers().contains_key(&propagation::TRACEPARENT_NAME) {
                propagation::inject(&Context::current(), req.headers_mut());
            }
            return AttemptFuture {
                inner: self.inner.call(req),
                record: None,
            };
        }
        // The call's context, when there is one and it records through this handle: then
        // the attempt's record shares it (see `Subject::Call`).
        let call = req.extensions().get::<Arc<CallContext>>();
        let subject = match call {
            Some(c) if c.telemetry.same(&self.telemetry) => Subject::Call(c.clone()),
            Some(c) => Subject::Own {
                telemetry: self.telemetry.clone(),
                rpc: c.rpc.clone(),
            },
            None => Subject::Own {
                telemetry: self.telemetry.clone(),
                rpc: Rpc::of(&self.telemetry, &req),
            },
        };
        let previous = match call {
            Some(c) => i64::from(c.attempts.fetch_add(1, Ordering::Relaxed)),
            None => req
                .headers()
                .get(&GRPC_PREVIOUS_RPC_ATTEMPTS)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0),
        };
        let parent = match call {
            Some(c) => c.cx.clone(),
            None => Context::current(),
        };
        let rpc = subject.rpc();
        let started = start_span(
            &self.telemetry,
            parent,
            SpanKind::Internal,
            || rpc.span_name(SpanPrefix::Attempt),
            ATTEMPT_ATTRIBUTES,
            |attrs| {
                rpc.span_attributes(attrs);
                server_attributes(&self.telemetry, req.uri(), attrs);
                attrs.push(KeyValue::new("previous-rpc-attempts", previous));
                attrs.push(KeyValue::new("transparent-retry", false));
            },
        );
        // The attempt's context goes downstream even when it is not sampled, so the next
        // service keeps the trace ID and the sampling decision.
        if started.cx.span().span_context().is_valid() {
            propagation::inject(&started.cx, req.headers_mut());
        }
        let span = started.recorded();
        if rpc.is_grpc() && self.telemetry.metrics() {
            self.telemetry
                .instruments()
                .client_attempt_started
                .add(1, &[rpc.method_kv(), self.telemetry.target_kv()]);
        }
        let record = Record::new(Side::Attempt, subject, span);
        AttemptFuture {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

pin_project! {
    /// The future of an [`Attempt`].
    #[derive(Debug)]
    pub struct AttemptFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, RB, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
    RB: http_body::Body,
{
    type Output = Result<http::Response<TelemetryBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let record = this.record.take();
        if let Some(record) = &record
            && let Some(span) = record.span_context()
        {
            let telemetry = record.telemetry();
            let served_by = match &result {
                Ok(rsp) => rsp.extensions().get::<ServedBy>().map(|s| s.address()),
                Err(_) => None,
            };
            let span = span.span();
            if let Some(addr) = served_by {
                span.set_attribute(KeyValue::new(
                    "network.peer.address",
                    telemetry.peer_value(addr.ip()),
                ));
                span.set_attribute(KeyValue::new("network.peer.port", i64::from(addr.port())));
            }
            // An endpoint connector may report the server's verified identity.
            if let Some(peer) = result
                .as_ref()
                .ok()
                .and_then(|rsp| rsp.extensions().get::<PeerIdentity>())
            {
                span.set_attribute(KeyValue::new(
                    super::PEER_SPIFFE_ID,
                    peer.spiffe_id().to_string(),
                ));
            }
        }
        Poll::Ready(finish_head(record, result))
    }
}
