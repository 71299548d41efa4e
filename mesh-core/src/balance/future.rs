//! The balancer's response future.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::ServedBy;
use super::error::{EndpointError, NoHealthyEndpoint};
use super::table::Shared;
use crate::outlier::Outcome;
use tower::BoxError;

/// Counts a call in flight until the response (or the error) arrives or the future is dropped.
#[derive(Debug)]
struct InFlight {
    shared: Arc<Shared>,
    address: SocketAddr,
    start: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.load.end();
    }
}

pin_project! {
    /// The future [`Balancer`](super::Balancer) returns: the endpoint's response, with
    /// [`ServedBy`] in its extensions, and the call's latency and outcome recorded.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        in_flight: Option<InFlight>,
        error: Option<NoHealthyEndpoint>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, shared: Arc<Shared>, address: SocketAddr) -> Self {
        shared.load.start();
        Self {
            inner: Some(inner),
            in_flight: Some(InFlight {
                shared,
                address,
                start: Instant::now(),
            }),
            error: None,
        }
    }

    pub(crate) fn failed(error: NoHealthyEndpoint) -> Self {
        Self {
            inner: None,
            in_flight: None,
            error: Some(error),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let err = this.error.take().unwrap_or(NoHealthyEndpoint { known: 0 });
            return Poll::Ready(Err(err.into()));
        };
        let result = ready!(inner.poll(cx));
        let Some(f) = this.in_flight.take() else {
            // Polled after completion: the inner future decides what that means.
            return Poll::Ready(result.map_err(Into::into));
        };
        f.shared.load.observe(f.start.elapsed());
        match result {
            Ok(mut response) => {
                if let Some(o) = &f.shared.outlier {
                    o.record(Outcome::from_response(&response));
                }
                response.extensions_mut().insert(ServedBy(f.address));
                Poll::Ready(Ok(response))
            }
            Err(e) => {
                if let Some(o) = &f.shared.outlier {
                    o.record(Outcome::LocalOriginFailure);
                }
                Poll::Ready(Err(EndpointError {
                    address: f.address,
                    source: e.into(),
                }
                .into()))
            }
        }
    }
}
