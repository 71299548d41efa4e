//! `tonic-mtls-traced`'s tracing: the tower layer a tonic user who traces with OpenTelemetry
//! (and without a mesh) would put over their `Channel`. Per call it starts a client span
//! named `{service}/{method}` with the RPC semantic conventions' attributes, writes the W3C
//! `traceparent` (and `tracestate`) on the request with the SDK's `TraceContextPropagator`,
//! and ends the span with `rpc.grpc.status_code` when the call's status arrives: in the
//! response headers for a trailers-only response, else in the trailers at the end of the
//! body (which tonic reads for every unary call). A non-OK status marks the span an error.
//!
//! The layer sits above tonic's `Channel`, which adds the endpoint's scheme and authority to
//! the URI only inside it, so `server.address` and `server.port` come from the origin the
//! layer is given (the one the channel's `Endpoint` was built from).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::{Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use pin_project_lite::pin_project;
use tonic::Code;

/// Traces every call of the service it wraps (see the [module docs](self)).
#[derive(Clone)]
pub(crate) struct TracedLayer {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    host: StringValue,
    port: i64,
}

impl TracedLayer {
    /// Spans from `tracer`, naming the server of `origin` (`http://host:port`; without a
    /// port, the scheme's).
    pub(crate) fn new(tracer: SdkTracer, origin: &http::Uri) -> Self {
        let host = origin.host().unwrap_or_default();
        let port = origin
            .port_u16()
            .unwrap_or(if origin.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        Self {
            tracer,
            propagator: TraceContextPropagator::new(),
            // Shared by every call's span, not copied into each.
            host: StringValue::from(Arc::<str>::from(host)),
            port: i64::from(port),
        }
    }
}

impl<S> tower::Layer<S> for TracedLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TracedLayer`] makes.
#[derive(Clone)]
pub(crate) struct Traced<S> {
    inner: S,
    layer: TracedLayer,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Traced<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let l = &self.layer;
        // `/package.Service/Method`.
        let name = req.uri().path().trim_start_matches('/');
        let (service, method) = name.split_once('/').unwrap_or((name, ""));
        let span = l
            .tracer
            .span_builder(name.to_owned())
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service.to_owned()),
                KeyValue::new("rpc.method", method.to_owned()),
                KeyValue::new("server.address", l.host.clone()),
                KeyValue::new("server.port", l.port),
            ])
            .start(&l.tracer);
        let cx = Context::current_with_span(span);
        l.propagator
            .inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
        TracedFuture {
            inner: self.inner.call(req),
            span: OpenSpan(Some(cx)),
        }
    }
}

/// Writes the propagator's fields as request headers.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// A call's span until its status is known; dropped before that (the caller gave up on
/// the call), it ends as cancelled.
struct OpenSpan(Option<Context>);

impl OpenSpan {
    fn take(&mut self) -> Self {
        Self(self.0.take())
    }

    fn end(&mut self, code: Code) {
        if let Some(cx) = self.0.take() {
            let span = cx.span();
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            if code != Code::Ok {
                span.set_status(Status::error(code.description()));
            }
            span.end();
        }
    }

    /// Ends the span with the `grpc-status` in `headers`, if there is one.
    fn end_at(&mut self, headers: &HeaderMap) -> bool {
        match headers.get("grpc-status") {
            Some(v) => {
                self.end(Code::from_bytes(v.as_bytes()));
                true
            }
            None => false,
        }
    }
}

impl Drop for OpenSpan {
    fn drop(&mut self) {
        self.end(Code::Cancelled);
    }
}

pin_project! {
    /// The response future of [`Traced`].
    pub(crate) struct TracedFuture<F> {
        #[pin]
        inner: F,
        span: OpenSpan,
    }
}

impl<F, B, E> Future for TracedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        let mut span = this.span.take();
        Poll::Ready(match out {
            Ok(rsp) => {
                // A trailers-only response (an error, mostly) has its status in the headers.
                if !span.end_at(rsp.headers()) {
                    if rsp.status() != http::StatusCode::OK {
                        span.end(code_of_http_status(rsp.status()));
                    } else if rsp.body().is_end_stream() {
                        // A gRPC response must end with a status.
                        span.end(Code::Unknown);
                    }
                }
                Ok(rsp.map(|inner| TracedBody { inner, span }))
            }
            Err(e) => {
                // The channel could not send the call (tonic reports it as unavailable).
                span.end(Code::Unavailable);
                Err(e)
            }
        })
    }
}

/// gRPC's mapping of an HTTP status without a `grpc-status` to a code.
fn code_of_http_status(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

pin_project! {
    /// A response body that ends its call's span at the trailers (or the end).
    pub(crate) struct TracedBody<B> {
        #[pin]
        inner: B,
        span: OpenSpan,
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && !this.span.end_at(trailers)
                {
                    this.span.end(Code::Unknown);
                }
            }
            // The stream broke (tonic reports the error it carries; the span says unknown).
            Some(Err(_)) => this.span.end(Code::Unknown),
            None => this.span.end(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::uri::PathAndQuery;
    use opentelemetry::Value;
    use opentelemetry::trace::{SpanId, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tonic::client::Grpc;
    use tonic_prost::ProstCodec;
    use tower::Layer as _;

    use super::*;
    use crate::echo::{self, EchoMessage};

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    /// A tonic client through the layer over the echo server's handler, in memory; the
    /// `traceparent` each request reached the server with.
    #[tokio::test]
    async fn a_call_records_its_span_and_sends_its_traceparent() {
        let spans = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            log.lock()
                .unwrap()
                .push(req.headers().get("traceparent").cloned());
            echo::respond(req)
        });
        let origin: http::Uri = "http://echo.mesh:8443".parse().unwrap();
        let svc = TracedLayer::new(provider.tracer("test"), &origin).layer(server);
        let mut grpc = Grpc::new(svc);

        echo::call(&mut grpc, 7).await.expect("the echo");
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(EchoMessage::default()),
                PathAndQuery::from_static("/meshwork.bench.Echo/Nope"),
                ProstCodec::<EchoMessage, EchoMessage>::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), Code::Unimplemented);

        provider.force_flush().unwrap();
        let spans = spans.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2, "{spans:?}");
        let seen = seen.lock().unwrap().clone();
        for (span, sent) in spans.iter().zip(&seen) {
            assert_eq!(span.span_kind, SpanKind::Client);
            assert_eq!(span.parent_span_id, SpanId::INVALID);
            assert_eq!(attr(span, "rpc.system"), Some(&Value::from("grpc")));
            assert_eq!(
                attr(span, "rpc.service"),
                Some(&Value::from("meshwork.bench.Echo"))
            );
            assert_eq!(
                attr(span, "server.address"),
                Some(&Value::from("echo.mesh"))
            );
            assert_eq!(attr(span, "server.port"), Some(&Value::I64(8443)));
            let sent = sent.as_ref().expect("a traceparent reached the server");
            assert_eq!(
                sent.to_str().unwrap(),
                format!(
                    "00-{}-{}-01",
                    span.span_context.trace_id(),
                    span.span_context.span_id()
                )
            );
        }

        let ok = &spans[0];
        assert_eq!(ok.name, "meshwork.bench.Echo/Echo");
        assert_eq!(attr(ok, "rpc.method"), Some(&Value::from("Echo")));
        assert_eq!(attr(ok, "rpc.grpc.status_code"), Some(&Value::I64(0)));
        assert_eq!(ok.status, Status::Unset);

        // Trailers-only: the status in the response headers.
        let failed = &spans[1];
        assert_eq!(failed.name, "meshwork.bench.Echo/Nope");
        assert_eq!(attr(failed, "rpc.method"), Some(&Value::from("Nope")));
        assert_eq!(
            attr(failed, "rpc.grpc.status_code"),
            Some(&Value::I64(Code::Unimplemented as i64))
        );
        assert!(matches!(failed.status, Status::Error { .. }), "{failed:?}");
    }
}
