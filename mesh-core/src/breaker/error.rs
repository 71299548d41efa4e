//! The breaker's error.

use crate::metrics::Limit;

/// A call refused by the circuit breaker: adapters map it to `UNAVAILABLE` / 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open: {limit} ({max}) reached")]
pub struct Overloaded {
    limit: Limit,
    max: u32,
}

impl Overloaded {
    pub(crate) fn new(limit: Limit, max: u32) -> Self {
        Self { limit, max }
    }

    /// The limit that refused the call.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Its value.
    pub fn max(&self) -> u32 {
        self.max
    }
}
