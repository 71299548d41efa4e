//! Deadlines: the route timeout, gRFC A31's `max_stream_duration`, and the caller's
//! `grpc-timeout`.
//!
//! [`Timeout`] reads the [`RoutePolicy`] the router attached to the request and fails the
//! call with a [`TimeoutError`] (DEADLINE_EXCEEDED / 504) when the earliest of these elapses:
//!
//! - the route `timeout`;
//! - the route's stream duration limit, [`MaxStreamDuration::effective`]: A31's
//!   `grpc_timeout_header_max` when set (zero = no limit), else `max_stream_duration`;
//! - the request's `grpc-timeout` header — the caller's own deadline, always honoured —
//!   less the route's `grpc_timeout_header_offset` (a deadline that the offset brings to
//!   zero or below expires at once, as in Envoy);
//! - without a route policy, the layer's default timeout, if any.
//!
//! The deadline covers the whole call: the wait for the response head, and then the
//! response body (wrapped in a [`TimeoutBody`], which fails with the same error if the
//! stream has not ended by the deadline). It belongs above the retry layer, where it
//! bounds all attempts together (the retry layer's per-try timeout bounds each attempt's
//! wait for a response head): the retry layer takes the [`RoutePolicy`] out of the request,
//! so a timeout layer below it finds none and applies only the caller's `grpc-timeout` and
//! its own default. The layer does not rewrite the outgoing `grpc-timeout` header.
//!
//! Time is tokio's, so tests run with `tokio::time::pause`.

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Service};

use crate::config::MaxStreamDuration;
use crate::route::RoutePolicy;
use crate::status::GRPC_TIMEOUT;

mod body;
mod error;
mod future;
mod layer;

pub use body::TimeoutBody;
pub use error::{TimeoutError, TimeoutKind};
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;

/// Applies the route's deadlines to each call; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    default: Option<Duration>,
}

impl<S> Timeout<S> {
    /// Wraps `inner`; requests without a route policy get no timeout unless the caller set
    /// `grpc-timeout` (see [`Timeout::with_default`]).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            default: None,
        }
    }

    /// Wraps `inner`, with `default` for requests that carry no route policy.
    pub fn with_default(inner: S, default: Duration) -> Self {
        Self {
            inner,
            default: Some(default),
        }
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
}

/// The deadline for a request, and which rule set it: the earliest of the rules in the
/// [module docs](self). `None` when no rule applies.
pub fn deadline<B>(
    req: &http::Request<B>,
    default: Option<Duration>,
) -> Option<(Duration, TimeoutKind)> {
    let policy = req.extensions().get::<RoutePolicy>();
    let msd: Option<&MaxStreamDuration> = policy.and_then(RoutePolicy::max_stream_duration);
    let mut best: Option<(Duration, TimeoutKind)> = None;
    let mut consider = |d: Option<Duration>, kind| {
        if let Some(d) = d
            && best.is_none_or(|(b, _)| d < b)
        {
            best = Some((d, kind));
        }
    };
    match policy {
        Some(p) => {
            consider(p.timeout(), TimeoutKind::Route);
            consider(
                msd.and_then(MaxStreamDuration::effective),
                TimeoutKind::MaxStreamDuration,
            );
        }
        None => consider(default, TimeoutKind::Default),
    }
    let header = req
        .headers()
        .get(&GRPC_TIMEOUT)
        .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        .map(|d| match msd.and_then(|m| m.grpc_timeout_header_offset) {
            Some(offset) => d.saturating_sub(offset),
            None => d,
        });
    consider(header, TimeoutKind::GrpcTimeout);
    best
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`). `None` for anything else (the header is then ignored).
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, B, RB> Service<http::Request<B>> for Timeout<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<TimeoutBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = deadline(&req, self.default);
        ResponseFuture::new(self.inner.call(req), limit)
    }
}

#[cfg(test)]
mod tests;
