//! Outlier detection: gRFC A50 (success rate, failure percentage) plus Envoy's
//! consecutive-5xx and consecutive-gateway-failure modes.
//!
//! An [`OutlierDetector`] belongs to one cluster. Each endpoint gets an [`EndpointStats`] handle
//! ([`OutlierDetector::endpoint`]); whoever sees the outcome of a call feeds it with
//! [`EndpointStats::record`] (the [`balance`](crate::balance) module's balancer does so for
//! every response it returns when it is given a detector). The handle's
//! [`is_ejected`](EndpointStats::is_ejected) is a single atomic load, and every balancer skips
//! ejected endpoints.
//!
//! Every `interval` a sweep ([`OutlierDetector::sweep`], run by
//! [`OutlierDetector::spawn_sweeper`] on tokio's clock, so `tokio::time::pause` drives it in
//! tests) does what A50 says:
//!
//! 1. takes the interval's success and failure counts of every endpoint;
//! 2. success rate: among endpoints with at least `request_volume` calls, if there are at least
//!    `minimum_hosts` of them, ejects those below `mean - stdev * stdev_factor / 1000`;
//! 3. failure percentage: among the same kind of candidates, ejects those above `threshold`;
//! 4. returns ejected endpoints whose ejection time is over; the ejection time is
//!    `base_ejection_time * times_ejected`, capped at `max(base_ejection_time,
//!    max_ejection_time)`, and `times_ejected` decreases by one for every interval an endpoint
//!    spends un-ejected.
//!
//! Consecutive failures eject at once, when the count reaches its threshold, as in Envoy. Every
//! ejection is subject to its `enforcement_percentage` and to `max_ejection_percent` (an
//! ejection happens only while fewer than that percentage of endpoints are ejected).
//!
//! ## Classifying outcomes
//!
//! [`Outcome`] says what a call did. HTTP 5xx is a failure, and 502, 503 and 504 are also
//! gateway failures; a gRPC status is mapped to HTTP the way Envoy maps it (`UNAVAILABLE` is
//! 503, `INTERNAL` 500, `DEADLINE_EXCEEDED` 504, ...). A call that failed before a response
//! (connection refused, reset) is a local-origin failure, counted as a gateway failure (Envoy's
//! default, `split_external_local_origin_errors: false`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use meshwork_xds::resource::OutlierDetection;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::metrics::{ClusterMetrics, Ejection};

/// The outcome of one call to an endpoint, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A success (any status that is not a server error).
    Success,
    /// A server error (HTTP 5xx, or a gRPC status that maps to one).
    ServerError {
        /// Whether it is a gateway failure too (502, 503, 504).
        gateway: bool,
    },
    /// The call failed before a response: connect failure, reset, timeout.
    LocalOriginFailure,
}

impl Outcome {
    /// Classifies an HTTP status code.
    pub fn from_http_status(status: u16) -> Self {
        match status {
            500..=599 => Outcome::ServerError {
                gateway: matches!(status, 502..=504),
            },
            _ => Outcome::Success,
        }
    }

    /// Classifies a gRPC status code through Envoy's gRPC-to-HTTP mapping.
    pub fn from_grpc_code(code: i32) -> Self {
        let http = match code {
            // UNKNOWN, INTERNAL, DATA_LOSS
            2 | 13 | 15 => 500,
            // UNIMPLEMENTED
            12 => 501,
            // UNAVAILABLE
            14 => 503,
            // DEADLINE_EXCEEDED
            4 => 504,
            _ => 200,
        };
        Self::from_http_status(http)
    }

    /// Classifies a response from its head: a `grpc-status` header (a trailers-only gRPC
    /// response) wins over the HTTP status. A gRPC status that only arrives in trailers is not
    /// visible here; feed it with [`EndpointStats::record`] when the body ends.
    pub fn from_response<B>(response: &http::Response<B>) -> Self {
        if let Some(code) = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
        {
            return Self::from_grpc_code(code);
        }
        Self::from_http_status(response.status().as_u16())
    }

    /// Whether this outcome is a failure of any kind.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Success)
    }
}

/// One endpoint's counters and ejection flag, shared between the detector, the balancer and
/// whoever records outcomes. Recording and reading are lock-free.
#[derive(Debug)]
pub struct EndpointStats {
    address: SocketAddr,
    successes: AtomicU64,
    failures: AtomicU64,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejected: AtomicBool,
    detector: Weak<Inner>,
}

impl EndpointStats {
    /// The endpoint's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether outlier detection has ejected the endpoint.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Records the outcome of one call.
    pub fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
            }
            Outcome::ServerError { gateway } => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let c5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                let cg = if gateway {
                    self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    self.consecutive_gateway.store(0, Ordering::Relaxed);
                    0
                };
                self.check_consecutive(c5, cg);
            }
            Outcome::LocalOriginFailure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let c5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                let cg = self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
                self.check_consecutive(c5, cg);
            }
        }
    }

    fn check_consecutive(&self, c5: u32, cg: u32) {
        let Some(inner) = self.detector.upgrade() else {
            return;
        };
        let cfg = &inner.config;
        let hit = |c: u32, e: &Option<meshwork_xds::resource::ConsecutiveEjection>| {
            e.as_ref()
                .map(|e| (c == e.consecutive, e.enforcement_percentage))
        };
        // `==` rather than `>=`: only the call that reaches the threshold tries to eject, so
        // the slow path (a lock) runs once per streak, not on every later failure.
        for (reason, hit) in [
            (Ejection::Consecutive5xx, hit(c5, &cfg.consecutive_5xx)),
            (
                Ejection::ConsecutiveGatewayFailure,
                hit(cg, &cfg.consecutive_gateway_failure),
            ),
        ] {
            if let Some((true, enforcement)) = hit {
                inner.eject_now(self.address, enforcement, reason);
                return;
            }
        }
    }
}

#[derive(Debug)]
struct Tracked {
    stats: Arc<EndpointStats>,
    times_ejected: u32,
    ejected_at: Option<Instant>,
}

#[derive(Debug)]
struct State {
    endpoints: HashMap<SocketAddr, Tracked>,
    rng: SmallRng,
}

#[derive(Debug)]
struct Inner {
    config: OutlierDetection,
    generation: AtomicU64,
    /// Notified on every change of `generation`, for balancers' drivers.
    changes: tokio::sync::Notify,
    state: Mutex<State>,
    metrics: ClusterMetrics,
}

/// Outlier detection for one cluster. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct OutlierDetector {
    inner: Arc<Inner>,
}

impl OutlierDetector {
    /// A detector with this configuration.
    pub fn new(config: OutlierDetection) -> Self {
        Self::with_rng(config, SmallRng::from_os_rng(), ClusterMetrics::default())
    }

    /// A detector that counts its ejections and overflows (gRFC A91) in `metrics`.
    pub fn with_metrics(config: OutlierDetection, metrics: ClusterMetrics) -> Self {
        Self::with_rng(config, SmallRng::from_os_rng(), metrics)
    }

    /// A detector whose enforcement-percentage draws come from a seeded RNG (for tests).
    pub fn with_seed(config: OutlierDetection, seed: u64) -> Self {
        Self::with_rng(
            config,
            SmallRng::seed_from_u64(seed),
            ClusterMetrics::default(),
        )
    }

    fn with_rng(config: OutlierDetection, rng: SmallRng, metrics: ClusterMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                generation: AtomicU64::new(0),
                changes: tokio::sync::Notify::new(),
                state: Mutex::new(State {
                    endpoints: HashMap::new(),
                    rng,
                }),
                metrics,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OutlierDetection {
        &self.inner.config
    }

    /// The stats handle of the endpoint at `address`, created on first use. The detector keeps
    /// tracking it until [`retain`](Self::retain) drops it.
    pub fn endpoint(&self, address: SocketAddr) -> Arc<EndpointStats> {
        let mut st = self.inner.lock();
        st.endpoints
            .entry(address)
            .or_insert_with(|| Tracked {
                stats: Arc::new(EndpointStats {
                    address,
                    successes: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    consecutive_5xx: AtomicU32::new(0),
                    consecutive_gateway: AtomicU32::new(0),
                    ejected: AtomicBool::new(false),
                    detector: Arc::downgrade(&self.inner),
                }),
                times_ejected: 0,
                ejected_at: None,
            })
            .stats
            .clone()
    }

    /// Stops tracking every endpoint not in `addresses` (called when the endpoint set
    /// changes). A53-style: an address that comes back later starts afresh.
    pub fn retain(&self, addresses: &std::collections::HashSet<SocketAddr>) {
        let mut st = self.inner.lock();
        let before = st.endpoints.len();
        st.endpoints.retain(|a, _| addresses.contains(a));
        if st.endpoints.len() != before {
            self.inner.bump();
        }
    }

    /// A counter that changes whenever some endpoint is ejected or returns; balancers compare
    /// it to know when to recompute priority health.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Completes once [`generation`](Self::generation) differs from `seen`.
    pub(crate) fn changed(&self, seen: u64) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            loop {
                let notified = inner.changes.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if inner.generation.load(Ordering::Acquire) != seen {
                    return;
                }
                notified.await;
            }
        }
    }

    /// The addresses ejected now.
    pub fn ejected(&self) -> Vec<SocketAddr> {
        let st = self.inner.lock();
        let mut v: Vec<_> = st
            .endpoints
            .values()
            .filter(|t| t.stats.is_ejected())
            .map(|t| t.stats.address)
            .collect();
        v.sort();
        v
    }

    /// Runs one sweep at `now` (see the module docs). [`spawn_sweeper`](Self::spawn_sweeper)
    /// calls this every `interval`.
    pub fn sweep(&self, now: Instant) {
        self.inner.sweep(now);
    }

    /// Spawns a tokio task that sweeps every `interval` (the first sweep one interval from
    /// now). The task ends when every clone of the detector is dropped, or when the handle is
    /// aborted.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.config.interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let now = ticker.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.sweep(now);
            }
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters inconsistent in a way that
        // matters (they are statistics), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ejection_allowed(&self, st: &State) -> bool {
        let total = st.endpoints.len() as u64;
        if total == 0 {
            return false;
        }
        let ejected = st
            .endpoints
            .values()
            .filter(|t| t.stats.is_ejected())
            .count() as u64;
        ejected * 100 / total < u64::from(self.config.max_ejection_percent)
    }

    fn eject_now(&self, address: SocketAddr, enforcement: u32, reason: Ejection) {
        let mut st = self.lock();
        self.try_eject(&mut st, address, enforcement, reason, Instant::now());
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        self.changes.notify_waiters();
    }

    fn eject(&self, t: &mut Tracked, now: Instant) {
        t.times_ejected = t.times_ejected.saturating_add(1);
        t.ejected_at = Some(now);
        t.stats.ejected.store(true, Ordering::Release);
        self.bump();
        // Bounded by max_ejection_percent and the interval: no flood to guard against.
        tracing::info!(
            address = %t.stats.address,
            times = t.times_ejected,
            "outlier detection ejected an endpoint"
        );
    }

    fn sweep(&self, now: Instant) {
        let cfg = &self.config;
        let mut st = self.lock();
        // 1. This interval's counts.
        let counts: Vec<(SocketAddr, u64, u64)> = st
            .endpoints
            .values()
            .map(|t| {
                let s = t.stats.successes.swap(0, Ordering::Relaxed);
                let f = t.stats.failures.swap(0, Ordering::Relaxed);
                (t.stats.address, s, f)
            })
            .collect();
        let mut ejected_now: Vec<SocketAddr> = Vec::new();

        // 2. Success rate.
        if let Some(sr) = &cfg.success_rate {
            let cands: Vec<(SocketAddr, f64)> = counts
                .iter()
                .filter(|(_, s, f)| s + f >= u64::from(sr.request_volume.max(1)))
                .map(|&(a, s, f)| (a, s as f64 / (s + f) as f64))
                .collect();
            if !cands.is_empty() && cands.len() >= sr.minimum_hosts as usize {
                let n = cands.len() as f64;
                let mean = cands.iter().map(|c| c.1).sum::<f64>() / n;
                let var = cands.iter().map(|c| (c.1 - mean).powi(2)).sum::<f64>() / n;
                let threshold = mean - var.sqrt() * (f64::from(sr.stdev_factor) / 1000.0);
                for (addr, rate) in cands {
                    if rate < threshold {
                        self.try_eject(
                            &mut st,
                            addr,
                            sr.enforcement_percentage,
                            Ejection::SuccessRate,
                            now,
                        )
                        .then(|| ejected_now.push(addr));
                    }
                }
            }
        }

        // 3. Failure percentage.
        if let Some(fp) = &cfg.failure_percentage {
            let cands: Vec<(SocketAddr, u64, u64)> = counts
                .iter()
                .copied()
                .filter(|(_, s, f)| s + f >= u64::from(fp.request_volume.max(1)))
                .collect();
            if !cands.is_empty() && cands.len() >= fp.minimum_hosts as usize {
                for (addr, s, f) in cands {
                    if f * 100 > u64::from(fp.threshold) * (s + f) {
                        self.try_eject(
                            &mut st,
                            addr,
                            fp.enforcement_percentage,
                            Ejection::FailurePercentage,
                            now,
                        )
                        .then(|| ejected_now.push(addr));
                    }
                }
            }
        }

        // 4. Un-eject and cool down.
        let cap = cfg.max_ejection_time.max(cfg.base_ejection_time);
        let mut changed = false;
        for t in st.endpoints.values_mut() {
            match t.ejected_at {
                Some(at) => {
                    let time = cfg
                        .base_ejection_time
                        .saturating_mul(t.times_ejected.max(1))
                        .min(cap);
                    if now >= at + time {
                        t.ejected_at = None;
                        // A returning endpoint starts a fresh streak.
                        t.stats.consecutive_5xx.store(0, Ordering::Relaxed);
                        t.stats.consecutive_gateway.store(0, Ordering::Relaxed);
                        t.stats.ejected.store(false, Ordering::Release);
                        changed = true;
                        tracing::debug!(address = %t.stats.address, "outlier returned");
                    }
                }
                None => {
                    if t.times_ejected > 0 && !ejected_now.contains(&t.stats.address) {
                        t.times_ejected -= 1;
                    }
                }
            }
        }
        if changed {
            self.bump();
        }
    }

    /// Ejects `addr`, an outlier by `reason`, if `max_ejection_percent` and the enforcement
    /// percentage allow it; counts the detection, the ejection or the overflow.
    fn try_eject(
        &self,
        st: &mut State,
        addr: SocketAddr,
        enforcement: u32,
        reason: Ejection,
        now: Instant,
    ) -> bool {
        let allowed = self.ejection_allowed(st);
        let State { endpoints, rng } = st;
        let Some(t) = endpoints.get_mut(&addr) else {
            return false;
        };
        if t.stats.is_ejected() {
            return false;
        }
        if !allowed {
            self.metrics.ejection(reason, false);
            self.metrics.ejection_overflow();
            return false;
        }
        let enforce = enforced(rng, enforcement);
        self.metrics.ejection(reason, enforce);
        if !enforce {
            return false;
        }
        self.eject(t, now);
        true
    }
}

fn enforced(rng: &mut SmallRng, percentage: u32) -> bool {
    percentage >= 100 || rng.random_range(0..100) < percentage
}

#[cfg(test)]
mod tests;
