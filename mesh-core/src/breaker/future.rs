//! The breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::{Overloaded, Slot};

pin_project! {
    /// The future [`CircuitBreaker`](super::CircuitBreaker) returns; it holds the call's slot
    /// until it completes or is dropped.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        slot: Option<Slot>,
        refused: Option<Overloaded>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, slot: Slot) -> Self {
        Self {
            inner: Some(inner),
            slot: Some(slot),
            refused: None,
        }
    }

    pub(super) fn refused(e: Overloaded) -> Self {
        Self {
            inner: None,
            slot: None,
            refused: Some(e),
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
        match this.inner.as_pin_mut() {
            Some(f) => {
                let r = ready!(f.poll(cx));
                this.slot.take();
                Poll::Ready(r.map_err(Into::into))
            }
            None => {
                let e = this
                    .refused
                    .take()
                    .unwrap_or_else(|| Overloaded::new(super::Limit::MaxRequests, 0));
                Poll::Ready(Err(e.into()))
            }
        }
    }
}
