//! Circuit breaking (gRFC A32): at most `max_requests` calls in flight per cluster, and at most
//! `max_pending_requests` waiting for the inner service to become ready.
//!
//! Over a limit the call fails fast with [`Overloaded`], which adapters map to `UNAVAILABLE` /
//! 503; nothing waits for capacity. Shedding happens through readiness without blocking:
//! `poll_ready` takes a slot from the cluster's shared counter (an atomic) or, when none is
//! free, still says ready and remembers the refusal, which `call` returns. The slot is held
//! until the response future completes or is dropped.
//!
//! All the services of one cluster share one [`Limits`] (a [`CircuitBreakerLayer`] does that
//! for every service it wraps); clones of a [`CircuitBreaker`] share it too and start without a
//! reserved slot.
//!
//! ```
//! use meshwork_core::breaker::CircuitBreakerLayer;
//! use meshwork_core::xds::resource::CircuitBreakers;
//!
//! let layer = CircuitBreakerLayer::new(CircuitBreakers { max_requests: 100, max_pending_requests: Some(10) });
//! assert_eq!(layer.limits().in_flight(), 0);
//! ```

mod error;
mod future;
mod layer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use meshwork_xds::resource::CircuitBreakers;
use tower::BoxError;

pub use self::error::Overloaded;
pub use self::future::ResponseFuture;
pub use self::layer::CircuitBreakerLayer;
use crate::metrics::ClusterMetrics;
pub use crate::metrics::Limit;

/// A cluster's limits and its counters, shared by all its services.
#[derive(Debug)]
pub struct Limits {
    max_requests: u32,
    max_pending: Option<u32>,
    in_flight: AtomicU32,
    pending: AtomicU32,
}

impl Limits {
    /// Limits from a cluster's circuit breakers.
    pub fn new(config: CircuitBreakers) -> Arc<Self> {
        Arc::new(Self {
            max_requests: config.max_requests,
            max_pending: config.max_pending_requests,
            in_flight: AtomicU32::new(0),
            pending: AtomicU32::new(0),
        })
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls waiting for the inner service now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    fn acquire(counter: &AtomicU32, max: u32) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
}

/// A slot in one of the counters, given back on drop.
#[derive(Debug)]
struct Slot {
    limits: Arc<Limits>,
    pending: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let c = if self.pending {
            &self.limits.pending
        } else {
            &self.limits.in_flight
        };
        c.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Enforces a cluster's circuit-breaker limits in front of `S` (see the [module docs](self)).
#[derive(Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    limits: Arc<Limits>,
    request: Option<Slot>,
    pending: Option<Slot>,
    refused: Option<Overloaded>,
    metrics: ClusterMetrics,
}

impl<S: Clone> Clone for CircuitBreaker<S> {
    fn clone(&self) -> Self {
        // A reserved slot belongs to the service that reserved it.
        Self::with_limits(self.inner.clone(), self.limits.clone()).metrics(self.metrics.clone())
    }
}

impl<S> CircuitBreaker<S> {
    /// A breaker with its own limits.
    pub fn new(inner: S, config: CircuitBreakers) -> Self {
        Self::with_limits(inner, Limits::new(config))
    }

    /// A breaker sharing `limits` with the cluster's other services.
    pub fn with_limits(inner: S, limits: Arc<Limits>) -> Self {
        Self {
            inner,
            limits,
            request: None,
            pending: None,
            refused: None,
            metrics: ClusterMetrics::default(),
        }
    }

    /// Counts the calls this breaker sheds (`meshwork.client.circuit_breaker.overflow`).
    /// Default: not counted.
    pub fn metrics(mut self, metrics: ClusterMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The shared limits.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> tower::Service<Req> for CircuitBreaker<S>
where
    S: tower::Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A refusal is decided afresh on every poll: capacity may have come back since.
        self.refused = None;
        if self.request.is_none() {
            if !Limits::acquire(&self.limits.in_flight, self.limits.max_requests) {
                self.refused = Some(Overloaded::new(
                    Limit::MaxRequests,
                    self.limits.max_requests,
                ));
                return Poll::Ready(Ok(()));
            }
            self.request = Some(Slot {
                limits: self.limits.clone(),
                pending: false,
            });
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.pending = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                self.pending = None;
                self.request = None;
                Poll::Ready(Err(e.into()))
            }
            Poll::Pending => {
                if self.pending.is_none() {
                    if let Some(max) = self.limits.max_pending {
                        if !Limits::acquire(&self.limits.pending, max) {
                            self.request = None;
                            self.refused = Some(Overloaded::new(Limit::MaxPendingRequests, max));
                            return Poll::Ready(Ok(()));
                        }
                    } else {
                        self.limits.pending.fetch_add(1, Ordering::AcqRel);
                    }
                    self.pending = Some(Slot {
                        limits: self.limits.clone(),
                        pending: true,
                    });
                }
                Poll::Pending
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(e) = self.refused.take() {
            self.metrics.breaker_overflow(e.limit());
            return ResponseFuture::refused(e);
        }
        match self.request.take() {
            Some(slot) => ResponseFuture::new(self.inner.call(req), slot),
            // `call` without a successful `poll_ready` breaks the Service contract; refusing
            // is kinder than going over the limit or panicking.
            None => {
                self.metrics.breaker_overflow(Limit::MaxRequests);
                ResponseFuture::refused(Overloaded::new(
                    Limit::MaxRequests,
                    self.limits.max_requests,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests;
