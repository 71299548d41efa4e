use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;

use super::{TimeoutError, TimeoutKind};

pin_project! {
    /// A response body bounded by the call's deadline: a stream that has not ended when the
    /// deadline passes fails with a [`TimeoutError`] (the deadline covers the whole call,
    /// as gRFC A31's `max_stream_duration` and gRPC deadlines do).
    #[derive(Debug)]
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Option<Sleep>,
        limit: Option<(Duration, TimeoutKind)>,
    }
}

impl<B> TimeoutBody<B> {
    pub(crate) fn new(inner: B, deadline: Option<(Instant, Duration, TimeoutKind)>) -> Self {
        Self {
            inner,
            sleep: deadline.map(|(at, _, _)| tokio::time::sleep_until(at)),
            limit: deadline.map(|(_, d, k)| (d, k)),
        }
    }

    /// A body with no deadline.
    pub fn unbounded(inner: B) -> Self {
        Self::new(inner, None)
    }

    /// The inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if let Some(sleep) = this.sleep.as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            let (after, kind) = this.limit.unwrap_or((Duration::ZERO, TimeoutKind::Default));
            return Poll::Ready(Some(Err(TimeoutError::new(kind, after).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
