//! The record of one call, attempt or server request that [`Call`](super::Call),
//! [`Attempt`](super::Attempt) and [`Server`](super::Server) start and their response
//! future or [`TelemetryBody`](super::TelemetryBody) ends: the span, the start time and what
//! ends it, shared by all three so that each records a call's end the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use http_body::Body;
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use tokio::time::Instant;

use super::{Rpc, Telemetry};
use crate::errors::error_codes;
use crate::status::{GRPC_STATUS, GrpcCode, status_name};

/// What a [`Call`](super::Call) hands the [`Attempt`](super::Attempt)s below it, as an
/// `Arc<CallContext>` in the request's extensions (the retry layer copies them onto every
/// attempt).
#[derive(Debug)]
pub(crate) struct CallContext {
    /// The parent of the attempt spans: the call span's context, or the caller's.
    pub(crate) cx: Context,
    /// Attempts started so far.
    pub(crate) attempts: AtomicU32,
    /// What the call is (so attempts need not work it out again).
    pub(crate) rpc: Rpc,
    /// The handle the call records through; its attempts' records share it (and `rpc`)
    /// through this context when they record through the same handle.
    pub(crate) telemetry: Telemetry,
}

/// Which layer a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Call,
    Attempt,
    Server,
}

/// How a call ended.
pub(crate) enum Outcome<'a> {
    /// A gRPC status (trailers, a trailers-only head, or mapped from a non-200 head).
    Grpc(GrpcCode),
    /// The end of a non-gRPC response body, or of a gRPC body without a status.
    End,
    /// A failure before or while the response came.
    Error(&'a (dyn std::error::Error + 'static)),
    /// The body failed mid-stream.
    BodyError,
    /// The caller dropped the call or the body before its end.
    Cancelled,
}

/// A span started by [`start_span`].
pub(crate) struct Started {
    /// The context below this span: the parent with the new span in it, or the parent
    /// alone when the tracer made none. What children are made under and what is
    /// propagated, whether or not the span is recorded: a span that was not sampled still
    /// carries its trace ID and its "not sampled" decision to its children and downstream.
    pub(crate) cx: Context,
    /// Whether the span is recorded (then the [`Record`] ends it).
    pub(crate) recording: bool,
}

impl Started {
    /// The context to end the span in, when it is recorded.
    pub(crate) fn recorded(&self) -> Option<Context> {
        self.recording.then(|| self.cx.clone())
    }
}

/// Starts a span named `name()` under `parent`, with the attributes `attrs` writes, in a
/// vector with room for `room` attributes in all (those the span's end adds too, so that
/// the span keeps this one vector). Nothing at all is built when the tracer makes no
/// spans.
///
/// The name and attributes go into the span builder, as OpenTelemetry asks ("set attributes
/// at span creation"): the sampler sees them, and the SDK takes the vector over as the
/// span's own. Setting them after the start would let the SDK grow a vector of its own one
/// attribute at a time, three allocations for an attempt's thirteen.
///
/// Under a parent that was not sampled (the calls of a request whose trace a ratio sampler
/// left out, most of them at 1 %), the usual samplers (parent-based) drop the span too: the
/// sampler is asked with the name alone, and the attributes are made only if the span is
/// recorded all the same (then set on it once started), so that an unsampled call costs
/// no attribute.
pub(crate) fn start_span(
    telemetry: &Telemetry,
    parent: Context,
    kind: SpanKind,
    name: impl FnOnce() -> std::borrow::Cow<'static, str>,
    room: usize,
    attrs: impl FnOnce(&mut Vec<KeyValue>),
) -> Started {
    if !telemetry.traces() {
        return Started {
            cx: parent,
            recording: false,
        };
    }
    let unsampled_parent = {
        let span = parent.span();
        let sc = span.span_context();
        sc.is_valid() && !sc.is_sampled()
    };
    if unsampled_parent {
        let builder = SpanBuilder::from_name(name()).with_kind(kind);
        let started = telemetry.tracer().start(builder, parent);
        if started.recording {
            let mut list = Vec::with_capacity(room);
            attrs(&mut list);
            started.cx.span().set_attributes(list);
        }
        return started;
    }
    let mut list = Vec::with_capacity(room);
    attrs(&mut list);
    let builder = SpanBuilder::from_name(name())
        .with_kind(kind)
        .with_attributes(list);
    telemetry.tracer().start(builder, parent)
}

/// A tracer that starts spans into a context, whatever its span type: the span goes into
/// the context as it is, boxed once there, where a boxed tracer's span would be boxed twice.
pub(crate) trait StartSpan: Send + Sync {
    /// Starts the span `builder` describes under `parent`.
    fn start(&self, builder: SpanBuilder, parent: Context) -> Started;
}

impl<T> StartSpan for T
where
    T: Tracer + Send + Sync,
    T::Span: Send + Sync + 'static,
{
    fn start(&self, builder: SpanBuilder, parent: Context) -> Started {
        let span = self.build_with_context(builder, &parent);
        let recording = span.is_recording();
        // A span that is not recorded still carries its trace ID and its "not sampled"
        // decision; a tracer that made none leaves the parent's.
        let cx = if recording || span.span_context().is_valid() {
            parent.with_span(span)
        } else {
            parent
        };
        Started { cx, recording }
    }
}

/// What a [`Record`] records through and about.
pub(crate) enum Subject {
    /// A call, or an attempt of a call recording through the call's handle: the call's
    /// context holds both, so the records of a call and its attempts share one per-call
    /// reference count instead of each taking one on the handle and the method name, which
    /// every worker's calls share.
    Call(Arc<CallContext>),
    /// A server request, or an attempt recording on its own.
    Own { telemetry: Telemetry, rpc: Rpc },
}

impl Subject {
    pub(crate) fn telemetry(&self) -> &Telemetry {
        match self {
            Subject::Call(call) => &call.telemetry,
            Subject::Own { telemetry, .. } => telemetry,
        }
    }

    pub(crate) fn rpc(&self) -> &Rpc {
        match self {
            Subject::Call(call) => &call.rpc,
            Subject::Own { rpc, .. } => rpc,
        }
    }
}

/// The state of one call, attempt or server request until it ends; ends it on drop
/// (as cancelled) if nothing ended it before.
pub(crate) struct Record {
    side: Side,
    subject: Subject,
    start: Instant,
    cx: Option<Context>,
    http_status: Option<http::StatusCode>,
    done: bool,
}

impl Record {
    pub(crate) fn new(side: Side, subject: Subject, cx: Option<Context>) -> Self {
        Self {
            side,
            subject,
            start: Instant::now(),
            cx,
            http_status: None,
            done: false,
        }
    }

    /// The handle the record records through.
    pub(crate) fn telemetry(&self) -> &Telemetry {
        self.subject.telemetry()
    }

    /// The span's context, when it is recorded.
    pub(crate) fn span_context(&self) -> Option<&Context> {
        self.cx.as_ref()
    }

    /// Reads the response head; returns the record when the call goes on in the body.
    pub(crate) fn on_head<B: Body>(mut self, rsp: &http::Response<B>) -> Option<Self> {
        let status = rsp.status();
        self.http_status = Some(status);
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
        }
        if self.subject.rpc().is_grpc() {
            if let Some(code) = rsp
                .headers()
                .get(&GRPC_STATUS)
                .and_then(|v| GrpcCode::from_header(v.as_bytes()))
            {
                self.finish(Outcome::Grpc(code));
                return None;
            }
            if status != http::StatusCode::OK {
                self.finish(Outcome::Grpc(GrpcCode::from_http_status(status)));
                return None;
            }
        }
        if rsp.body().is_end_stream() {
            self.finish(Outcome::End);
            return None;
        }
        Some(self)
    }

    pub(crate) fn finish(mut self, outcome: Outcome<'_>) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome<'_>) {
        if self.done {
            return;
        }
        self.done = true;
        let (telemetry, rpc) = (self.subject.telemetry(), self.subject.rpc());
        // Without a meter that records, only the span (if any) is left to end: no
        // duration, no metric attributes, no server method to learn (it names metrics).
        let ins = telemetry.metrics().then(|| telemetry.instruments());
        let span = self.cx.take();
        if ins.is_none() && span.is_none() {
            return;
        }
        let start = self.start;
        let seconds = move || start.elapsed().as_secs_f64();
        match rpc {
            Rpc::Grpc { .. } => {
                let code = match outcome {
                    Outcome::Grpc(code) => code,
                    // A gRPC response must end with a status.
                    Outcome::End | Outcome::BodyError => GrpcCode::Unknown,
                    Outcome::Error(e) => error_codes(e).0,
                    Outcome::Cancelled => GrpcCode::Cancelled,
                };
                if let Some(ins) = ins {
                    if self.side == Side::Server {
                        telemetry.learn_server_method(rpc, code);
                    }
                    let seconds = seconds();
                    let status = KeyValue::new("grpc.status", status_name(code));
                    match self.side {
                        Side::Call => {
                            let attrs = [rpc.method_kv(), telemetry.target_kv(), status];
                            ins.client_call_duration.record(seconds, &attrs);
                            if let Subject::Call(call) = &self.subject {
                                let n = call.attempts.load(Ordering::Relaxed);
                                if n > 0 {
                                    ins.client_call_retries
                                        .record(u64::from(n - 1), &attrs[..2]);
                                }
                            }
                        }
                        Side::Attempt => {
                            let attrs = [rpc.method_kv(), telemetry.target_kv(), status];
                            ins.client_attempt_duration.record(seconds, &attrs);
                        }
                        Side::Server => {
                            let attrs = [rpc.method_kv(), status];
                            ins.server_call_duration.record(seconds, &attrs);
                        }
                    }
                }
                if let Some(cx) = span {
                    let span = cx.span();
                    span.set_attribute(KeyValue::new(
                        "rpc.grpc.status_code",
                        i64::from(code.as_u8()),
                    ));
                    if is_error(self.side, code) {
                        span.set_status(Status::error(status_name(code)));
                    }
                    span.end();
                }
            }
            Rpc::Http { .. } => {
                let error = match outcome {
                    Outcome::Error(e) => Some(status_name(error_codes(e).0)),
                    Outcome::BodyError => Some("body"),
                    Outcome::Cancelled => Some("cancelled"),
                    Outcome::Grpc(_) | Outcome::End => None,
                };
                let code = self.http_status.map(|s| s.as_u16());
                let failed = error.is_some()
                    || code.is_some_and(|c| c >= if self.side == Side::Server { 500 } else { 400 });
                let duration = match (self.side, ins) {
                    (Side::Attempt, Some(ins)) => Some(&ins.http_client_duration),
                    (Side::Server, Some(ins)) => Some(&ins.http_server_duration),
                    _ => None,
                };
                if let Some(duration) = duration {
                    let mut attrs = Vec::with_capacity(3);
                    attrs.push(rpc.method_kv());
                    if let Some(c) = code {
                        attrs.push(KeyValue::new("http.response.status_code", i64::from(c)));
                    }
                    if let Some(e) = error {
                        attrs.push(KeyValue::new("error.type", e));
                    } else if failed {
                        attrs.push(KeyValue::new(
                            "error.type",
                            code.map(|c| c.to_string()).unwrap_or_default(),
                        ));
                    }
                    duration.record(seconds(), &attrs);
                }
                if let Some(cx) = span {
                    let span = cx.span();
                    if failed {
                        if let Some(e) = error {
                            span.set_attribute(KeyValue::new("error.type", e));
                        }
                        span.set_status(Status::error(""));
                    }
                    span.end();
                }
            }
        }
    }
}

/// Whether a gRPC code marks the span as failed: every non-OK code on the client; on the
/// server only the codes that are the server's fault (the RPC semantic conventions).
fn is_error(side: Side, code: GrpcCode) -> bool {
    match side {
        Side::Call | Side::Attempt => code != GrpcCode::Ok,
        Side::Server => matches!(
            code,
            GrpcCode::Unknown
                | GrpcCode::DeadlineExceeded
                | GrpcCode::Unimplemented
                | GrpcCode::Internal
                | GrpcCode::Unavailable
                | GrpcCode::DataLoss
        ),
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.end(Outcome::Cancelled);
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("side", &self.side)
            .field("rpc", self.subject.rpc())
            .finish_non_exhaustive()
    }
}

/// `server.address` and `server.port` from a request URI's authority.
pub(crate) fn server_attributes(telemetry: &Telemetry, uri: &http::Uri, attrs: &mut Vec<KeyValue>) {
    let server = uri.authority().map(|a| telemetry.server(a));
    let mut port = None;
    if let Some(server) = server {
        attrs.push(KeyValue::new("server.address", server.host));
        port = server.port;
    }
    let port = port.or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    if let Some(port) = port {
        attrs.push(KeyValue::new("server.port", i64::from(port)));
    }
}
