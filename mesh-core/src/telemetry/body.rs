//! The response body that ends a call's record when the call ends.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::BoxError;

use super::record::{Outcome, Record};
use crate::status::GRPC_STATUS;
use crate::status::GrpcCode;

pin_project! {
    /// A response body that ends its call's span and records the call's duration when the
    /// body ends (at the trailers' `grpc-status`, at its end, or when it is dropped).
    #[derive(Debug)]
    pub struct TelemetryBody<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
    }
}

impl<B> TelemetryBody<B> {
    pub(crate) fn new(inner: B, record: Option<Record>) -> Self {
        Self { inner, record }
    }

    /// A body that records nothing.
    pub fn untracked(inner: B) -> Self {
        Self {
            inner,
            record: None,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Body> Body for TelemetryBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if this.record.is_none() {
            return polled;
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get(&GRPC_STATUS)
                        .and_then(|v| GrpcCode::from_header(v.as_bytes()));
                    if let Some(record) = this.record.take() {
                        record.finish(code.map_or(Outcome::End, Outcome::Grpc));
                    }
                } else if this.inner.is_end_stream() {
                    // Callers stop polling a body that says it has ended.
                    if let Some(record) = this.record.take() {
                        record.finish(Outcome::End);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(record) = this.record.take() {
                    record.finish(Outcome::BodyError);
                }
            }
            Poll::Ready(None) => {
                if let Some(record) = this.record.take() {
                    record.finish(Outcome::End);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ends `record` on a failure or a finished head; otherwise moves it into the body.
pub(crate) fn finish_head<RB: http_body::Body, E: Into<BoxError>>(
    record: Option<Record>,
    result: Result<http::Response<RB>, E>,
) -> Result<http::Response<TelemetryBody<RB>>, BoxError> {
    match result {
        Ok(rsp) => {
            let record = record.and_then(|r| r.on_head(&rsp));
            Ok(rsp.map(|body| TelemetryBody::new(body, record)))
        }
        Err(e) => {
            let e: BoxError = e.into();
            if let Some(record) = record {
                record.finish(Outcome::Error(&*e));
            }
            Err(e)
        }
    }
}
