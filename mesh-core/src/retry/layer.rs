use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tower::Layer;

use super::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_REPLAY_BYTES, Retry, RetryBudget, RetryConfigError, Settings,
};
use crate::config::RetryPolicy;
use crate::metrics::ClusterMetrics;

/// Applies [`Retry`] to a service. Services made by one layer (and their clones) share its
/// [`RetryBudget`]: make one layer per cluster.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    budget: Arc<RetryBudget>,
    max_attempts: u32,
    max_replay_bytes: usize,
    default_policy: Option<Arc<RetryPolicy>>,
    seed: u64,
    metrics: ClusterMetrics,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// The defaults: [`RetryBudget::default`], at most [`DEFAULT_MAX_ATTEMPTS`] attempts,
    /// [`DEFAULT_MAX_REPLAY_BYTES`] of replay buffer, no default policy (requests without a
    /// route policy are not retried), jitter seeded from the OS.
    pub fn new() -> Self {
        Self {
            budget: Arc::new(RetryBudget::default()),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            default_policy: None,
            seed: {
                use rand::{RngCore, SeedableRng};
                rand::rngs::SmallRng::from_os_rng().next_u64()
            },
            metrics: ClusterMetrics::default(),
        }
    }

    /// Counts the retries sent and the retries the budget refused
    /// (`meshwork.client.retries`, `meshwork.client.retry_budget.exhausted`). Default: not
    /// counted.
    pub fn metrics(mut self, metrics: ClusterMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Shares `budget` (e.g. among the layers of one cluster).
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// Caps the attempts of a call (first attempt included), whatever the policy asks.
    /// Zero is an error: a call needs one attempt.
    pub fn max_attempts(mut self, n: u32) -> Result<Self, RetryConfigError> {
        if n == 0 {
            return Err(RetryConfigError::ZeroAttempts);
        }
        self.max_attempts = n;
        Ok(self)
    }

    /// Bounds the buffer that keeps a request body for replay; bodies larger than this are
    /// sent once and not retried.
    pub fn max_replay_bytes(mut self, n: usize) -> Self {
        self.max_replay_bytes = n;
        self
    }

    /// The policy for requests that carry no route policy (checked like a hand-built
    /// route's: `retry_policy.retry_back_off.base_interval` must be positive, …).
    pub fn default_policy(mut self, policy: RetryPolicy) -> Result<Self, RetryConfigError> {
        crate::config::check_retry_policy(&policy)?;
        self.default_policy = Some(Arc::new(policy));
        Ok(self)
    }

    /// Seeds the backoff jitter (for reproducible tests): the calls whose backoff is
    /// jittered (not set by the server's pushback) take `seed`, `seed + 1`, … in the order
    /// of their first jittered backoff.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            settings: Arc::new(Settings {
                budget: self.budget.clone(),
                max_attempts: self.max_attempts,
                max_replay_bytes: self.max_replay_bytes,
                default_policy: self.default_policy.clone(),
                seeds: AtomicU64::new(self.seed),
                metrics: self.metrics.clone(),
            }),
        }
    }
}
