//! Retries: gRFC A44 semantics for gRPC, plus Envoy's HTTP conditions.
//!
//! [`Retry`] reads the retry policy of the route the request took (the [`RoutePolicy`] the
//! router attached, which it takes out of the request: the attempts do not carry it, so a
//! [`Timeout`](crate::timeout::Timeout) layer belongs above this one; or the layer's
//! default policy for requests without one) and:
//!
//! - retries an attempt whose outcome meets a `retry_on` condition the policy names (see
//!   [What is retried](#what-is-retried));
//! - makes at most `num_retries + 1` attempts, capped by the layer (5 by default, gRFC
//!   A44's cap);
//! - waits between attempts with exponential backoff and full jitter between the policy's
//!   `base_interval` and `max_interval` ([`backoff`]), or as long as the server's
//!   `grpc-retry-pushback-ms` says, kept within `base_interval..=max_interval` (a malformed
//!   or negative pushback stops retries);
//! - bounds each attempt's wait for a response head by the policy's `per_try_timeout`;
//! - asks a shared [`RetryBudget`] first, so retries cannot multiply an outage;
//! - sets `grpc-previous-rpc-attempts` on every retry;
//! - sends a retry elsewhere when it can: the endpoints of earlier attempts (the balancer's
//!   [`ServedBy`] on a response, [`EndpointError::address`] on a failure) are listed in the
//!   retry's [`AvoidEndpoints`] extension, which the balancer honours when another endpoint
//!   can take the call.
//!
//! # What is retried
//!
//! An attempt is retried when its outcome meets a condition of the policy's `retry_on`
//! (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` values) **and** sending the
//! request again cannot run it twice unasked: an outcome that leaves the request possibly
//! half done on the server (a reset after sending, a per-try timeout) is retried only for
//! a request that may run more than once, one with an idempotent method (`GET`, `HEAD`,
//! `OPTIONS`, `TRACE`, `PUT`, `DELETE`) or marked [`Idempotent`] by the caller. RFC 9110
//! §9.2.2 anchors this: a client "SHOULD NOT automatically retry a request with a
//! non-idempotent method unless it has some means to know that the request semantics are
//! actually idempotent \[...\] or some means to detect that the original request was never
//! applied". Envoy retries these for every method; gRPC retries every call whose
//! transport failed before a response head (the call is not committed, and its status is
//! `UNAVAILABLE`). So a `POST` or a gRPC call is not sent twice because a reset or a
//! timeout hid its outcome, unless the caller marked it [`Idempotent`]; a marked gRPC call
//! is, under `unavailable` as in gRPC (gRPC has no per-try timeout: gRFC A44 ignores
//! `per_try_timeout`, so a per-try timeout is never a gRPC status).
//!
//! Attempts that failed without a response ([`error_conditions`]):
//!
//! | what happened | conditions met | sent again for | anchor |
//! |---|---|---|---|
//! | connect failure: refused, unreachable, TLS handshake failed or rejected the server, connect timeout | `connect-failure`, `reset`, `5xx`, `gateway-error`; a gRPC call also `unavailable` | every request | Envoy `wouldRetryFromReset` (a connection failure is a reset); gRPC's status for it; never reached the server |
//! | stream refused: HTTP/2 `REFUSED_STREAM` ([`RefusedStream`]) | `refused-stream`, `reset`, `5xx`, `gateway-error`; a gRPC call also `unavailable` | every request | Envoy; RFC 9113 §8.7 (not processed); gRPC retries it transparently |
//! | reset, aborted or broken connection, early end of stream, after the request was sent | `reset`, `5xx`, `gateway-error`; a gRPC call also `unavailable` | idempotent requests | Envoy ("disconnect/reset/read timeout"); grpc-go (an uncommitted call's `UNAVAILABLE`); RFC 9110 §9.2.2 |
//! | per-try timeout (no response head within `per_try_timeout`) | `reset`, `5xx`, `gateway-error`; never a gRPC status | idempotent requests | Envoy (`5xx`, `gateway-error` and `reset` retry per-try timeouts; its gRPC conditions read response headers only); RFC 9110 §9.2.2 |
//! | any other error (route timeout, no endpoint, breaker open, the client's own TLS configuration, a request body error) | none | never | |
//!
//! Attempts that got a response head ([`response_conditions`]): the server answered, so the
//! policy's conditions apply to every request, as in Envoy and gRPC (the operator asked for
//! the retry by naming the status).
//!
//! | response | conditions met | anchor |
//! |---|---|---|
//! | HTTP 5xx | `5xx`; 502, 503, 504 also `gateway-error` | Envoy |
//! | a status listed in `retriable_status_codes` | `retriable-status-codes` | Envoy |
//! | gRPC call, `grpc-status` in the head (trailers-only) | `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable` by the code | gRFC A6 and A44; Envoy `x-envoy-retry-grpc-on` |
//! | gRPC call, non-200 head without `grpc-status` | the gRPC code of the HTTP status (429, 502, 503, 504: `unavailable`) | gRPC's HTTP-to-status mapping; gRFC A6 (not committed) |
//! | gRPC call, 200 head without `grpc-status` | none: the call is committed, its trailers are the caller's | gRFC A6 |
//!
//! # What can be retried
//!
//! The request body must be sent again on a retry, so it is buffered — up to
//! `max_replay_bytes` (64 KiB by default). A body is replayable when it ends within the
//! limit and every frame of it is available without waiting (in-memory bodies, unary gRPC
//! messages). A larger body, or one still streaming, is sent once, as it comes, and the
//! call is not retried.
//!
//! gRPC commits a call once the response head arrives without `grpc-status` (a body will
//! follow): meshwork follows gRPC, so only trailers-only responses (status in the head),
//! non-200 heads and failures with no response are retried; a `grpc-status` that arrives in
//! trailers after a body is returned to the caller as it is.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use http_body::Body;
use tower::{BoxError, Service};

#[cfg(doc)]
use crate::balance::{EndpointError, ServedBy};
use crate::config::{ConfigError, RetryPolicy};
use crate::extensions::AvoidEndpoints;
use crate::metrics::ClusterMetrics;
use crate::route::RoutePolicy;

mod body;
mod budget;
mod classify;
mod future;
mod layer;

pub use body::RetryBody;
pub use budget::RetryBudget;
pub use classify::{
    Idempotent, Pushback, RefusedStream, backoff, error_conditions, grpc_condition, is_retriable,
    pushback, response_conditions,
};
pub use future::ResponseFuture;
pub use layer::RetryLayer;

/// gRFC A44's cap on the attempts of one call.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// The default bound of the replay buffer.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

/// A retry layer that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryConfigError {
    /// `max_attempts` was zero: a call needs at least one attempt.
    #[error("max_attempts: must be at least 1 (a call needs one attempt)")]
    ZeroAttempts,
    /// The retry budget's `max_tokens` is not in 1..=1000 (gRFC A6's range).
    #[error("retry budget: max_tokens {0} is not in 1..=1000")]
    BudgetMaxTokens(u32),
    /// The retry budget's `token_ratio` is not in 0.001..=1000 (gRFC A6's range, in
    /// thousandths).
    #[error("retry budget: token_ratio {0} is not in 0.001..=1000")]
    BudgetTokenRatio(f64),
    /// The default retry policy is invalid.
    #[error(transparent)]
    Policy(#[from] ConfigError),
}

/// Retries calls by their route's retry policy; see the [module docs](self).
#[derive(Debug)]
pub struct Retry<S> {
    inner: S,
    settings: Arc<Settings>,
}

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) max_attempts: u32,
    pub(crate) max_replay_bytes: usize,
    pub(crate) default_policy: Option<Arc<RetryPolicy>>,
    pub(crate) seeds: AtomicU64,
    pub(crate) metrics: ClusterMetrics,
}

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<S> Retry<S> {
    /// Wraps `inner` with the default settings (see [`RetryLayer::new`]).
    pub fn new(inner: S) -> Self {
        use tower::Layer;
        RetryLayer::new().layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the layer.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The shared retry budget.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.settings.budget
    }
}

/// Where a call's retry policy comes from.
#[derive(Debug, Clone)]
pub(crate) enum PolicySource {
    Route(RoutePolicy),
    Default(Arc<RetryPolicy>),
}

impl PolicySource {
    pub(crate) fn get(&self) -> &RetryPolicy {
        match self {
            // Only built when the route has a policy.
            PolicySource::Route(p) => p.retry_policy().unwrap_or_else(|| unreachable!()),
            PolicySource::Default(p) => p,
        }
    }
}

fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl<S, B, RB> Service<http::Request<B>> for Retry<S>
where
    S: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The route's policy is taken out of the request, not copied: the layers below read
        // none of it, and every attempt's copy of the head would copy it again.
        let source = match req.extensions_mut().remove::<RoutePolicy>() {
            Some(rp) if rp.retry_policy().is_some() => Some(PolicySource::Route(rp)),
            Some(_) => None,
            None => self
                .settings
                .default_policy
                .clone()
                .map(PolicySource::Default),
        };
        let per_try = source.as_ref().and_then(|s| s.get().per_try_timeout);
        let max_attempts = source.as_ref().map_or(1, |s| {
            let p = s.get();
            if p.retry_on.is_empty() {
                1
            } else {
                p.num_retries
                    .saturating_add(1)
                    .min(self.settings.max_attempts)
            }
        });
        match source {
            Some(policy) if max_attempts > 1 => {
                // The ready service makes the first attempt and, once ready again, the
                // retries; the clone takes its place for the next call.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                let grpc = is_grpc(&req);
                let idempotent = classify::is_idempotent(&req);
                ResponseFuture::retrying(future::Retrying {
                    service: ready,
                    policy,
                    settings: self.settings.clone(),
                    max_attempts,
                    per_try,
                    grpc,
                    idempotent,
                    rng: None,
                    avoid: AvoidEndpoints::default(),
                    attempts: 0,
                    request: future::Pending::new(req),
                })
            }
            _ => {
                let fut = self.inner.call(req.map(RetryBody::passthrough));
                ResponseFuture::once(fut, per_try)
            }
        }
    }
}

#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod tests;
