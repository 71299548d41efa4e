use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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
        Failed { error: Option<RouteError> },
        Calling { #[pin] call: Oneshot<S, Req> },
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    pub(super) fn failed(error: RouteError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(super) fn call(svc: S, req: Req) -> Self {
        Self {
            state: State::Calling {
                call: Oneshot::new(svc, req),
            },
        }
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
                Some(e) => e.into(),
                None => "router response future polled after completion".into(),
            })),
            StateProj::Calling { call } => call.poll(cx).map_err(Into::into),
        }
    }
}

impl<S: Service<Req>, Req> std::fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}
