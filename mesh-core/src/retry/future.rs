use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::HeaderValue;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

use super::body::Buffered;
use super::classify::{
    Delivery, Pushback, error_outcome, is_retriable, pushback, response_conditions,
};
use super::{PolicySource, RetryBody, Settings};
use crate::balance::EndpointError;
use crate::errors;
use crate::extensions::{AvoidEndpoints, ServedBy};
use crate::status::GRPC_PREVIOUS_RPC_ATTEMPTS;
use crate::timeout::{TimeoutError, TimeoutKind};

/// What a retriable call keeps between attempts.
pub(crate) struct Retrying<S, B> {
    pub(crate) service: S,
    pub(crate) policy: PolicySource,
    pub(crate) settings: Arc<Settings>,
    pub(crate) max_attempts: u32,
    pub(crate) per_try: Option<Duration>,
    pub(crate) grpc: bool,
    /// Whether the request may run twice (see [`is_idempotent`](super::classify::is_idempotent)).
    pub(crate) idempotent: bool,
    /// The backoff's jitter, seeded from the layer's seeds at the call's first backoff
    /// (most calls never retry, and the seeds are a counter every worker's calls share).
    pub(crate) rng: Option<SmallRng>,
    pub(crate) avoid: AvoidEndpoints,
    pub(crate) attempts: u32,
    pub(crate) request: Pending<B>,
}

/// The request of a retriable call: its head (kept for every attempt) and its body, being
/// buffered, buffered, or given up to a single attempt.
pub(crate) struct Pending<B> {
    head: http::request::Parts,
    source: Option<B>,
    /// The data read so far: kept as it is for replay once the body is complete (a
    /// unary call's one frame costs one small vector, not a queue and then a vector).
    data: Vec<Bytes>,
    len: usize,
    replay: Option<Arc<Buffered>>,
}

impl<B> Pending<B> {
    pub(crate) fn new(req: http::Request<B>) -> Self {
        let (head, body) = req.into_parts();
        Self {
            head,
            source: Some(body),
            data: Vec::new(),
            len: 0,
            replay: None,
        }
    }

    fn head(&self, attempt: u32, avoid: &AvoidEndpoints) -> http::request::Parts {
        let mut req = http::Request::new(());
        *req.method_mut() = self.head.method.clone();
        *req.uri_mut() = self.head.uri.clone();
        *req.version_mut() = self.head.version;
        *req.headers_mut() = self.head.headers.clone();
        // An empty map's copy would still be an allocation.
        if !self.head.extensions.is_empty() {
            *req.extensions_mut() = self.head.extensions.clone();
        }
        if attempt > 0 {
            req.headers_mut().insert(
                GRPC_PREVIOUS_RPC_ATTEMPTS.clone(),
                HeaderValue::from(attempt),
            );
        }
        if !avoid.is_empty() {
            req.extensions_mut().insert(avoid.clone());
        }
        req.into_parts().0
    }
}

enum Buffering<E> {
    /// The whole body is buffered: every attempt replays it.
    Complete,
    /// Too large, or still streaming: one attempt, no retries.
    Once,
    Failed(E),
}

impl<B> Pending<B>
where
    B: Body + Unpin,
{
    /// Reads the body while its frames are ready and it fits in `limit`.
    fn buffer(&mut self, cx: &mut Context<'_>, limit: usize) -> Buffering<B::Error> {
        let Some(body) = self.source.as_mut() else {
            return Buffering::Complete;
        };
        let hint = body.size_hint();
        if hint.lower() > limit as u64 {
            return Buffering::Once;
        }
        let exact = hint.exact().is_some();
        let mut trailers = None;
        loop {
            if body.is_end_stream() {
                break;
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(None) => break,
                Poll::Ready(Some(Err(e))) => return Buffering::Failed(e),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        self.len += data.remaining();
                        self.data.push(data.copy_to_bytes(data.remaining()));
                        if self.len > limit {
                            return Buffering::Once;
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                        break;
                    }
                },
                Poll::Pending => return Buffering::Once,
            }
        }
        self.replay = Some(Arc::new(Buffered {
            data: std::mem::take(&mut self.data),
            trailers,
            len: self.len,
            exact,
        }));
        self.source = None;
        Buffering::Complete
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Buffering,
    Calling,
    Backoff,
    Readying,
}

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, B>
    where
        S: Service<http::Request<RetryBody<B>>>,
    {
        #[pin]
        call: Option<S::Future>,
        // The per-try timeout while calling; the backoff between attempts.
        #[pin]
        sleep: Option<Sleep>,
        // A call made once: when its per-try timer, not made yet, expires.
        once_deadline: Option<Instant>,
        per_try: Option<Duration>,
        phase: Phase,
        retrying: Option<Retrying<S, B>>,
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<http::Request<RetryBody<B>>>,
{
    /// A call made once: its per-try timeout counts from now, its timer made at the first
    /// poll (making one needs the runtime; a call may be made outside it).
    pub(crate) fn once(fut: S::Future, per_try: Option<Duration>) -> Self {
        Self {
            call: Some(fut),
            sleep: None,
            once_deadline: per_try.map(|d| Instant::now() + d),
            per_try,
            phase: Phase::Calling,
            retrying: None,
        }
    }

    pub(crate) fn retrying(r: Retrying<S, B>) -> Self {
        Self {
            call: None,
            sleep: None,
            once_deadline: None,
            per_try: r.per_try,
            phase: Phase::Buffering,
            retrying: Some(r),
        }
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B>
where
    S: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match *this.phase {
                Phase::Buffering => {
                    let Some(r) = this.retrying.as_mut() else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    let limit = r.settings.max_replay_bytes;
                    let body = match r.request.buffer(cx, limit) {
                        Buffering::Complete => {
                            RetryBody::replay(r.request.replay.clone().unwrap_or_default())
                        }
                        Buffering::Once => {
                            let prefix = std::mem::take(&mut r.request.data)
                                .into_iter()
                                .map(Frame::data)
                                .collect();
                            RetryBody::once(prefix, r.request.source.take())
                        }
                        Buffering::Failed(e) => return Poll::Ready(Err(e.into())),
                    };
                    let head = r.request.head(0, &r.avoid);
                    this.call
                        .set(Some(r.service.call(http::Request::from_parts(head, body))));
                    this.sleep.set(this.per_try.map(tokio::time::sleep));
                    *this.phase = Phase::Calling;
                }
                Phase::Calling => {
                    let Some(call) = this.call.as_mut().as_pin_mut() else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    let result: Result<http::Response<RB>, BoxError> = match call.poll(cx) {
                        Poll::Ready(r) => r.map_err(Into::into),
                        Poll::Pending => {
                            if let Some(at) = this.once_deadline.take() {
                                this.sleep.set(Some(tokio::time::sleep_until(at)));
                            }
                            let expired = this
                                .sleep
                                .as_mut()
                                .as_pin_mut()
                                .is_some_and(|s| s.poll(cx).is_ready());
                            if !expired {
                                return Poll::Pending;
                            }
                            let after = this.per_try.unwrap_or_default();
                            Err(TimeoutError::new(TimeoutKind::PerTry, after).into())
                        }
                    };
                    this.call.set(None);
                    this.sleep.set(None);
                    let Some(r) = this.retrying.as_mut() else {
                        return Poll::Ready(result);
                    };
                    let policy = r.policy.get();
                    let (met, push, delivery) = match &result {
                        Ok(rsp) => (
                            response_conditions(rsp, r.grpc, policy),
                            pushback(rsp),
                            None,
                        ),
                        Err(e) => {
                            let (met, delivery) = error_outcome(&**e, r.grpc).unzip();
                            (met.unwrap_or_default(), Pushback::None, delivery)
                        }
                    };
                    let budget = &r.settings.budget;
                    if !is_retriable(met, policy) {
                        budget.deposit();
                        return Poll::Ready(result);
                    }
                    // A failure the policy names still costs a token, sent again or not.
                    budget.withdraw();
                    r.attempts += 1;
                    let may_run_twice = delivery == Some(Delivery::MaybeProcessed);
                    let mut can_retry = r.attempts < r.max_attempts
                        && r.request.replay.is_some()
                        && (r.idempotent || !may_run_twice);
                    if can_retry && !budget.can_retry() {
                        r.settings.metrics.retry_budget_exhausted();
                        can_retry = false;
                    }
                    let delay = match push {
                        _ if !can_retry => return Poll::Ready(result),
                        Pushback::Stop => return Poll::Ready(result),
                        // The server's delay replaces the backoff (gRFC A6) within the
                        // policy's bounds, as Envoy bounds server-set retry delays by its
                        // back-off's max_interval: one header can neither hold the call for
                        // years nor make its retries immediate.
                        Pushback::After(d) => d
                            .min(policy.max_interval)
                            .max(policy.base_interval.min(policy.max_interval)),
                        Pushback::None => {
                            let rng = r.rng.get_or_insert_with(|| {
                                let seed = r.settings.seeds.fetch_add(1, Ordering::Relaxed);
                                SmallRng::seed_from_u64(seed)
                            });
                            super::backoff(policy, r.attempts, rng)
                        }
                    };
                    // The endpoint that failed, for the balancer to avoid on the retry.
                    let served_by = match &result {
                        Ok(rsp) => rsp.extensions().get::<ServedBy>().map(|s| s.address()),
                        Err(e) => endpoint_of(&**e),
                    };
                    if let Some(address) = served_by {
                        r.avoid.push(address);
                    }
                    this.sleep.set(Some(tokio::time::sleep(delay)));
                    *this.phase = Phase::Backoff;
                }
                Phase::Backoff => {
                    if let Some(s) = this.sleep.as_mut().as_pin_mut() {
                        ready!(s.poll(cx));
                    }
                    this.sleep.set(None);
                    *this.phase = Phase::Readying;
                }
                Phase::Readying => {
                    let Some(r) = this.retrying.as_mut() else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    if let Err(e) = ready!(r.service.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    r.settings.metrics.retry();
                    let head = r.request.head(r.attempts, &r.avoid);
                    let body = RetryBody::replay(r.request.replay.clone().unwrap_or_default());
                    this.call
                        .set(Some(r.service.call(http::Request::from_parts(head, body))));
                    this.sleep.set(this.per_try.map(tokio::time::sleep));
                    *this.phase = Phase::Calling;
                }
            }
        }
    }
}

/// The address in an [`EndpointError`] in the source chain of `err`, if any.
fn endpoint_of(err: &(dyn std::error::Error + 'static)) -> Option<std::net::SocketAddr> {
    errors::find::<EndpointError>(err).map(EndpointError::address)
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<http::Request<RetryBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}
