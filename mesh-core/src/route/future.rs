use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::{BoxError, Service};

use super::RouteError;

pin_project! {
    /// The response future of a [`Router`](super::Router).
    pub struct ResponseFuture<S: Service<Req>, Req> {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req> {
        Failed { error: Option<BoxError> },
        // Called at once: the cluster's service was ready (a cluster's stack always is).
        Called { #[pin] future: S::Future },
        // Not ready when checked: driven to readiness with the call's waker, then called.
        Calling { #[pin] call: Oneshot<S, Req> },
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    pub(super) fn failed(error: RouteError) -> Self {
        Self {
            state: State::Failed {
                error: Some(error.into()),
            },
        }
    }

    /// Calls `svc` now if it is ready (checked with a no-op waker), else once it is.
    pub(super) fn call(mut svc: S, req: Req) -> Self {
        let state = match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => State::Called {
                future: svc.call(req),
            },
            Poll::Ready(Err(e)) => State::Failed {
                error: Some(e.into()),
            },
            Poll::Pending => State::Calling {
                call: Oneshot::new(svc, req),
            },
        };
        Self { state }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Failed { error } => Poll::Ready(Err(match error.take() {
                Some(e) => e,
                None => "router response future polled after completion".into(),
            })),
            StateProj::Called { future } => future.poll(cx).map_err(Into::into),
            StateProj::Calling { call } => call.poll(cx).map_err(Into::into),
        }
    }
}

impl<S: Service<Req>, Req> std::fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}
