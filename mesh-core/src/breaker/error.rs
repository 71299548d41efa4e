//! The breaker's error.

use std::fmt;

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// `circuit_breakers.thresholds.max_requests`.
    MaxRequests,
    /// `circuit_breakers.thresholds.max_pending_requests`.
    MaxPendingRequests,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::MaxRequests => "max_requests",
            Limit::MaxPendingRequests => "max_pending_requests",
        })
    }
}

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
