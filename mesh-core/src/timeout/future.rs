use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;

use super::{TimeoutBody, TimeoutError, TimeoutKind};

pin_project! {
    /// The response future of [`Timeout`](super::Timeout).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        deadline: Option<(Instant, Duration, TimeoutKind)>,
    }
}

impl<F> ResponseFuture<F> {
    /// The deadline counts from now; its timer is made at the first poll (making one needs
    /// the runtime, and a call may be made outside it, its future polled inside).
    pub(crate) fn new(inner: F, limit: Option<(Duration, TimeoutKind)>) -> Self {
        Self {
            inner,
            sleep: None,
            deadline: limit.map(|(d, k)| (Instant::now() + d, d, k)),
        }
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<TimeoutBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            let deadline = *this.deadline;
            return Poll::Ready(
                out.map(|rsp| rsp.map(|b| TimeoutBody::new(b, deadline)))
                    .map_err(Into::into),
            );
        }
        if this.sleep.is_none()
            && let Some((at, _, _)) = *this.deadline
        {
            this.sleep.set(Some(tokio::time::sleep_until(at)));
        }
        if let Some(sleep) = this.sleep.as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            let (_, after, kind) =
                this.deadline
                    .unwrap_or((Instant::now(), Duration::ZERO, TimeoutKind::Default));
            return Poll::Ready(Err(TimeoutError::new(kind, after).into()));
        }
        Poll::Pending
    }
}
