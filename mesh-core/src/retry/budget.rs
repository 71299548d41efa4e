use std::sync::atomic::{AtomicU32, Ordering};

use super::RetryConfigError;

/// A retry budget: gRPC's retry throttling (gRFC A6), shared by every call of a cluster, so
/// that retries cannot multiply an outage.
///
/// It holds up to `max_tokens` tokens, full at first. A failed attempt (one whose outcome
/// the policy would retry) takes one token; a successful one gives back `token_ratio`.
/// Retries are allowed only while more than half the tokens are left. With the default
/// (`max_tokens` 100, `token_ratio` 1.0) retries continue while failures do not outnumber
/// successes by 50, and stop when they do — a backend failing one call in three is
/// retried forever, a dead one after the first few dozen failures no more.
///
/// Lock-free: the tokens are one atomic (in thousandths of a token).
#[derive(Debug)]
pub struct RetryBudget {
    milli_tokens: AtomicU32,
    max_milli: u32,
    ratio_milli: u32,
}

impl RetryBudget {
    /// A budget of `max_tokens` (1 to 1000) that refills by `token_ratio` (0.001 to 1000,
    /// in thousandths) per success.
    pub fn new(max_tokens: u32, token_ratio: f64) -> Result<Self, RetryConfigError> {
        if !(1..=1000).contains(&max_tokens) {
            return Err(RetryConfigError::BudgetMaxTokens(max_tokens));
        }
        let ratio_milli = (token_ratio * 1000.0).round();
        if !(1.0..=1_000_000.0).contains(&ratio_milli) {
            return Err(RetryConfigError::BudgetTokenRatio(token_ratio));
        }
        let max_milli = max_tokens * 1000;
        Ok(Self {
            milli_tokens: AtomicU32::new(max_milli),
            max_milli,
            // In range by the check above.
            ratio_milli: ratio_milli as u32,
        })
    }

    /// Records an attempt that succeeded (or failed in a way the policy does not retry).
    pub fn deposit(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(self.ratio_milli).min(self.max_milli))
            });
    }

    /// Records an attempt that failed retriably.
    pub fn withdraw(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(1000))
            });
    }

    /// Whether a retry is allowed now.
    pub fn can_retry(&self) -> bool {
        self.milli_tokens.load(Ordering::Relaxed) > self.max_milli / 2
    }

    /// The tokens left, in thousandths.
    pub fn milli_tokens(&self) -> u32 {
        self.milli_tokens.load(Ordering::Relaxed)
    }
}

impl Default for RetryBudget {
    /// 100 tokens, ratio 1.0.
    fn default() -> Self {
        Self {
            milli_tokens: AtomicU32::new(100_000),
            max_milli: 100_000,
            ratio_milli: 1000,
        }
    }
}
