//! The per-endpoint load signal: requests in flight and a peak-EWMA of latency, in atomics.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The latency assumed for an endpoint that has not answered yet (as tower's and Linkerd's
/// PeakEWMA do, a modest guess so that new endpoints get tried).
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast old latency samples lose their weight (time constant of the decay).
pub(crate) const DECAY: Duration = Duration::from_secs(10);

/// PeakEWMA latency plus in-flight count. Reads and writes are lock-free; two responses that
/// race may lose one sample, which an estimate tolerates.
#[derive(Debug)]
pub(crate) struct EndpointLoad {
    epoch: Instant,
    in_flight: AtomicU32,
    /// The estimate in nanoseconds, as `f64` bits.
    ewma_ns: AtomicU64,
    /// When the estimate was last updated, in nanoseconds since `epoch`.
    stamp_ns: AtomicU64,
}

impl EndpointLoad {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            stamp_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The estimate decayed to now (without writing it back), in nanoseconds.
    fn estimate_ns(&self, now_ns: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let stamp = self.stamp_ns.load(Ordering::Relaxed);
        let elapsed = now_ns.saturating_sub(stamp) as f64;
        ewma * (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    /// Records that a call took at least `rtt` (it was given up on before an answer): it
    /// raises the estimate to `rtt` when that is above it, and otherwise says nothing (the
    /// answer might have come later).
    pub(crate) fn observe_at_least(&self, rtt: Duration) {
        let now = self.now_ns();
        let sample = rtt.as_nanos() as f64;
        if sample > self.estimate_ns(now) {
            self.ewma_ns.store(sample.to_bits(), Ordering::Relaxed);
            self.stamp_ns.store(now, Ordering::Relaxed);
        }
    }

    /// Records one latency sample: a sample above the estimate replaces it (the "peak"), a
    /// lower one is averaged in with a weight that grows with the time since the last one.
    pub(crate) fn observe(&self, rtt: Duration) {
        let now = self.now_ns();
        let sample = rtt.as_nanos() as f64;
        let old = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let new = if sample > old {
            sample
        } else {
            let stamp = self.stamp_ns.load(Ordering::Relaxed);
            let elapsed = now.saturating_sub(stamp) as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            old * w + sample * (1.0 - w)
        };
        self.ewma_ns.store(new.to_bits(), Ordering::Relaxed);
        self.stamp_ns.store(now, Ordering::Relaxed);
    }

    /// The cost P2C compares: latency estimate × (in-flight + 1).
    pub(crate) fn cost(&self) -> f64 {
        let est = self.estimate_ns(self.now_ns());
        est * f64::from(self.in_flight() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_given_up_on_raises_the_estimate_but_never_lowers_it() {
        let l = EndpointLoad::new();
        let base = l.cost();
        l.observe_at_least(Duration::from_millis(1));
        assert_eq!(l.cost(), base, "a short wait says nothing");
        l.observe_at_least(Duration::from_secs(1));
        assert!(l.cost() > base * 30.0, "a long wait is a peak");
    }

    #[tokio::test(start_paused = true)]
    async fn peak_then_decay() {
        let l = EndpointLoad::new();
        let base = l.cost();
        l.observe(Duration::from_millis(300));
        let peak = l.cost();
        assert!(
            peak > base * 9.0,
            "a slow sample becomes the estimate at once"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        l.observe(Duration::from_millis(1));
        assert!(
            l.cost() < peak / 2.0,
            "a fast sample after a while pulls it down"
        );
        l.start();
        l.start();
        let c = l.cost();
        l.end();
        assert!(l.cost() < c, "fewer in flight, lower cost");
        assert_eq!(l.in_flight(), 1);
    }
}
