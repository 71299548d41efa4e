//! The client call span and call metrics, around a whole outbound stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::Context;
use opentelemetry::trace::SpanKind;
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use super::body::finish_head;
use super::names::SpanPrefix;
use super::record::{CallContext, Record, Side, Subject, server_attributes, start_span};
use super::{Rpc, Telemetry, TelemetryBody};

/// The most attributes a call span carries: the `rpc.*` four and `server.*` two at its
/// start; `http.response.status_code` and `rpc.grpc.status_code` at its end.
const CALL_ATTRIBUTES: usize = 8;

/// Makes [`Call`]s.
#[derive(Debug, Clone, Default)]
pub struct CallLayer {
    telemetry: Telemetry,
}

impl CallLayer {
    /// A layer recording through `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = Call<S>;

    fn layer(&self, inner: S) -> Call<S> {
        Call::new(inner, self.telemetry.clone())
    }
}

/// The client side of a call as the application sees it: a `CLIENT` span
/// (`Sent.<service>.<method>`) under the current OpenTelemetry context, parent of the
/// attempt spans below; `grpc.client.call.duration` and `grpc.client.call.retries` when it
/// ends. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Call<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S> Call<S> {
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

impl<S, B, RB> Service<http::Request<B>> for Call<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
{
    type Response = http::Response<TelemetryBody<RB>>;
    type Error = BoxError;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !self.telemetry.is_enabled() {
            // Nothing recorded; the caller's trace context goes on, taken now (attempts may
            // start later, in another context), and the retry layer copies it onto every
            // attempt.
            super::propagation::inject(&Context::current(), req.headers_mut());
            return CallFuture {
                inner: self.inner.call(req),
                record: None,
            };
        }
        let rpc = Rpc::of(&self.telemetry, &req);
        let started = start_span(
            &self.telemetry,
            Context::current(),
            SpanKind::Client,
            || rpc.span_name(SpanPrefix::Sent),
            CALL_ATTRIBUTES,
            |attrs| {
                rpc.span_attributes(attrs);
                server_attributes(&self.telemetry, req.uri(), attrs);
            },
        );
        let span = started.recorded();
        let call = Arc::new(CallContext {
            cx: started.cx,
            attempts: AtomicU32::new(0),
            rpc,
            telemetry: self.telemetry.clone(),
        });
        req.extensions_mut().insert(call.clone());
        let record = Record::new(Side::Call, Subject::Call(call), span);
        CallFuture {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

pin_project! {
    /// The future of a [`Call`].
    #[derive(Debug)]
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, RB, E> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
    RB: http_body::Body,
{
    type Output = Result<http::Response<TelemetryBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(finish_head(this.record.take(), result))
    }
}
