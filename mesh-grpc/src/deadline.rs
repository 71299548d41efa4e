//! The server side of a gRPC deadline: a call whose `grpc-timeout` passes before its handler
//! has answered is answered `DEADLINE_EXCEEDED`, and the handler's future is dropped.
//!
//! gRPC servers do this (grpc-go cancels the handler's context, tonic's own server wraps
//! every service in its `GrpcTimeout`); `MeshServer` serves tonic's routes through
//! meshwork-core's connection loop instead of tonic's server, so it applies the deadline
//! here. As in tonic, the deadline bounds the wait for the response head (the whole of a
//! unary call); a streaming response already under way is the caller's to cancel. A
//! missing or malformed `grpc-timeout` means no deadline, as in tonic.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use meshwork_core::timeout::parse_grpc_timeout;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tonic::body::Body;
use tower::Service;

/// Applies each request's `grpc-timeout` to the inner service's answer.
#[derive(Clone, Debug)]
pub(crate) struct Deadline<S> {
    inner: S,
}

impl<S> Deadline<S> {
    pub(crate) fn new(inner: S) -> Self {
        Deadline { inner }
    }
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let sleep = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
            // A deadline beyond what the clock can hold is no deadline.
            .and_then(|d| tokio::time::Instant::now().checked_add(d))
            .map(tokio::time::sleep_until);
        DeadlineFuture {
            inner: self.inner.call(req),
            sleep,
        }
    }
}

pin_project! {
    /// The answer of [`Deadline`].
    #[derive(Debug)]
    pub(crate) struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<F, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(tonic::Status::deadline_exceeded(
                "deadline exceeded before the server answered",
            )
            .into_http())),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::ServiceExt as _;

    fn slow_handler(
        delay: Duration,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<http::Response<Body>, Infallible>>,
    > + Clone {
        tower::service_fn(move |_req: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(http::Response::new(Body::default()))
        })
    }

    fn request(timeout: Option<&str>) -> http::Request<()> {
        let mut req = http::Request::new(());
        if let Some(t) = timeout {
            req.headers_mut()
                .insert("grpc-timeout", t.parse().expect("header value"));
        }
        req
    }

    fn grpc_status(rsp: &http::Response<Body>) -> Option<&str> {
        rsp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
        let started = tokio::time::Instant::now();
        let rsp = Deadline::new(slow_handler(Duration::from_secs(10)))
            .oneshot(request(Some("100m")))
            .await
            .unwrap();
        assert_eq!(grpc_status(&rsp), Some("4"), "DEADLINE_EXCEEDED");
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_within_its_deadline_gets_the_handlers_answer() {
        let rsp = Deadline::new(slow_handler(Duration::from_millis(50)))
            .oneshot(request(Some("1S")))
            .await
            .unwrap();
        assert_eq!(grpc_status(&rsp), None, "the handler's own answer");
    }

    #[tokio::test(start_paused = true)]
    async fn no_or_a_malformed_or_a_huge_timeout_is_no_deadline() {
        for t in [None, Some("soon"), Some("99999999H")] {
            let started = tokio::time::Instant::now();
            let rsp = Deadline::new(slow_handler(Duration::from_secs(3)))
                .oneshot(request(t))
                .await
                .unwrap();
            assert_eq!(grpc_status(&rsp), None, "{t:?}");
            assert_eq!(started.elapsed(), Duration::from_secs(3), "{t:?}");
        }
    }
}
