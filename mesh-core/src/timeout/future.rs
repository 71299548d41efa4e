use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::BoxError;

use super::{TimeoutError, TimeoutKind};

pin_project! {
    /// The response future of [`Timeout`](super::Timeout).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        limit: Option<(Duration, TimeoutKind)>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, limit: Option<(Duration, TimeoutKind)>) -> Self {
        Self {
            inner,
            sleep: limit.map(|(d, _)| tokio::time::sleep(d)),
            limit,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out.map_err(Into::into));
        }
        if let Some(sleep) = this.sleep.as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            let (after, kind) = this.limit.unwrap_or((Duration::ZERO, TimeoutKind::Default));
            return Poll::Ready(Err(TimeoutError::new(kind, after).into()));
        }
        Poll::Pending
    }
}
