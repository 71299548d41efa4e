//! The breaker's layer.

use std::sync::Arc;

use meshwork_xds::resource::CircuitBreakers;
use tower::Layer;

use super::{CircuitBreaker, Limits};
use crate::metrics::ClusterMetrics;

/// Wraps services in a [`CircuitBreaker`]; every service it wraps shares one [`Limits`], so
/// use one layer per cluster.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    limits: Arc<Limits>,
    metrics: ClusterMetrics,
}

impl CircuitBreakerLayer {
    /// A layer for a cluster with these limits.
    pub fn new(config: CircuitBreakers) -> Self {
        Self {
            limits: Limits::new(config),
            metrics: ClusterMetrics::default(),
        }
    }

    /// Counts the calls the breakers shed (see [`CircuitBreaker::metrics`]).
    pub fn metrics(mut self, metrics: ClusterMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The shared limits.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::with_limits(inner, self.limits.clone()).metrics(self.metrics.clone())
    }
}
