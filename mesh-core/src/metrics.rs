//! Counters for what the traffic layers decide: breaker overflows, ejections, retries, and
//! the names of those decisions ([`Limit`], [`Ejection`]). The breaker, the outlier detector
//! and the retry layer record into it, and the telemetry hands it out; it depends on nothing
//! else in the crate, so neither side depends on the other.

use std::fmt;
use std::sync::Arc;

use opentelemetry::metrics::{Counter, Meter, MeterProvider as _};
use opentelemetry::{KeyValue, StringValue};

/// The instrumentation scope meshwork's tracer and meter are named with.
pub const SCOPE: &str = "meshwork";

/// Which circuit-breaker limit refused a call.
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

/// Why outlier detection ejected (or would have ejected) an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ejection {
    /// gRFC A50's success-rate algorithm.
    SuccessRate,
    /// gRFC A50's failure-percentage algorithm.
    FailurePercentage,
    /// Envoy's consecutive 5xx.
    Consecutive5xx,
    /// Envoy's consecutive gateway failures.
    ConsecutiveGatewayFailure,
}

/// Counters of the traffic layers, named after gRFC A91 (outlier detection) where gRPC
/// names them, `meshwork.*` otherwise. Every counter carries `grpc.target` and the cluster
/// as `grpc.lb.backend_service` (gRFC A89). Cheap to clone; recording is an atomic add (or
/// nothing, with a no-op meter).
///
/// | name | unit | when |
/// |---|---|---|
/// | `grpc.lb.outlier_detection.ejections_enforced_total` | `{ejection}` | an endpoint is ejected |
/// | `grpc.lb.outlier_detection.ejections_overflow` | `{ejection}` | an ejection is skipped at `max_ejection_percent` |
/// | `grpc.lb.outlier_detection.ejections_enforced_success_rate` / `_failure_percentage` | `{ejection}` | enforced, by algorithm |
/// | `grpc.lb.outlier_detection.ejections_detected_success_rate` / `_failure_percentage` | `{ejection}` | detected, enforced or not |
/// | `meshwork.client.circuit_breaker.overflow` | `{call}` | a call is shed by a breaker limit (`meshwork.circuit_breaker.limit`) |
/// | `meshwork.client.retries` | `{retry}` | a retry is sent |
/// | `meshwork.client.retry_budget.exhausted` | `{call}` | a retry is refused by the budget |
#[derive(Clone)]
pub struct MeshMetrics {
    inner: Arc<Counters>,
    target: StringValue,
}

#[derive(Debug)]
struct Counters {
    ejections_enforced_total: Counter<u64>,
    ejections_overflow: Counter<u64>,
    ejections_enforced_success_rate: Counter<u64>,
    ejections_detected_success_rate: Counter<u64>,
    ejections_enforced_failure_percentage: Counter<u64>,
    ejections_detected_failure_percentage: Counter<u64>,
    breaker_overflow: Counter<u64>,
    retries: Counter<u64>,
    budget_exhausted: Counter<u64>,
}

impl fmt::Debug for MeshMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshMetrics")
            .field("target", &self.target.as_str())
            .finish_non_exhaustive()
    }
}

impl Default for MeshMetrics {
    /// Counters that record nothing.
    fn default() -> Self {
        Self::noop()
    }
}

impl MeshMetrics {
    /// Counters made with `meter`, recording `grpc.target` = `target`.
    pub fn new(meter: &Meter, target: impl Into<StringValue>) -> Self {
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        let ejection = "{ejection}";
        Self {
            inner: Arc::new(Counters {
                ejections_enforced_total: counter(
                    "grpc.lb.outlier_detection.ejections_enforced_total",
                    ejection,
                    "Total enforced ejections due to any outlier type.",
                ),
                ejections_overflow: counter(
                    "grpc.lb.outlier_detection.ejections_overflow",
                    ejection,
                    "Number of ejections aborted due to max ejection percentage.",
                ),
                ejections_enforced_success_rate: counter(
                    "grpc.lb.outlier_detection.ejections_enforced_success_rate",
                    ejection,
                    "Enforced success rate outlier ejections.",
                ),
                ejections_detected_success_rate: counter(
                    "grpc.lb.outlier_detection.ejections_detected_success_rate",
                    ejection,
                    "Detected (even if unenforced) success rate outlier ejections.",
                ),
                ejections_enforced_failure_percentage: counter(
                    "grpc.lb.outlier_detection.ejections_enforced_failure_percentage",
                    ejection,
                    "Enforced failure percentage outlier ejections.",
                ),
                ejections_detected_failure_percentage: counter(
                    "grpc.lb.outlier_detection.ejections_detected_failure_percentage",
                    ejection,
                    "Detected (even if unenforced) failure percentage outlier ejections.",
                ),
                breaker_overflow: counter(
                    "meshwork.client.circuit_breaker.overflow",
                    "{call}",
                    "Calls shed because a circuit breaker limit was reached.",
                ),
                retries: counter(
                    "meshwork.client.retries",
                    "{retry}",
                    "Retry attempts sent (the original attempt is not counted).",
                ),
                budget_exhausted: counter(
                    "meshwork.client.retry_budget.exhausted",
                    "{call}",
                    "Retries not sent because the retry budget was exhausted.",
                ),
            }),
            target: target.into(),
        }
    }

    /// Counters that record nothing.
    pub fn noop() -> Self {
        let meter = opentelemetry::metrics::noop::NoopMeterProvider::new().meter(SCOPE);
        Self::new(&meter, "")
    }

    pub(crate) fn with_target(&self, target: StringValue) -> Self {
        Self {
            inner: self.inner.clone(),
            target,
        }
    }

    /// The counters of `cluster`, with their attributes made once: recording through the
    /// handle allocates nothing. Traffic layers hold one per cluster.
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let t = KeyValue::new("grpc.target", self.target.clone());
        let c = KeyValue::new(
            "grpc.lb.backend_service",
            StringValue::from(Arc::<str>::from(cluster)),
        );
        let limit = |l: Limit| KeyValue::new("meshwork.circuit_breaker.limit", l.to_string());
        ClusterMetrics {
            inner: Some(Arc::new(ClusterInner {
                counters: self.inner.clone(),
                max_requests: [t.clone(), c.clone(), limit(Limit::MaxRequests)],
                max_pending: [t.clone(), c.clone(), limit(Limit::MaxPendingRequests)],
                attrs: [t, c],
            })),
        }
    }

    /// Outlier detection found an outlier in `cluster` by `reason`; `enforced` when it was
    /// ejected (the enforcement percentage and `max_ejection_percent` allowed it).
    pub fn ejection(&self, cluster: &str, reason: Ejection, enforced: bool) {
        self.cluster(cluster).ejection(reason, enforced);
    }

    /// An ejection in `cluster` was skipped because `max_ejection_percent` was reached.
    pub fn ejection_overflow(&self, cluster: &str) {
        self.cluster(cluster).ejection_overflow();
    }

    /// A call to `cluster` was shed by the circuit breaker's `limit`.
    pub fn breaker_overflow(&self, cluster: &str, limit: Limit) {
        self.cluster(cluster).breaker_overflow(limit);
    }

    /// A retry was sent to `cluster`.
    pub fn retry(&self, cluster: &str) {
        self.cluster(cluster).retry();
    }

    /// A retry to `cluster` was refused by the retry budget.
    pub fn retry_budget_exhausted(&self, cluster: &str) {
        self.cluster(cluster).retry_budget_exhausted();
    }
}

/// [`MeshMetrics`] for one cluster (from [`MeshMetrics::cluster`]): the attributes are made
/// once, so recording is an atomic add per counter. Cheap to clone (an `Arc`); the
/// [`Default`] records nothing and costs nothing.
#[derive(Clone, Default)]
pub struct ClusterMetrics {
    inner: Option<Arc<ClusterInner>>,
}

struct ClusterInner {
    counters: Arc<Counters>,
    attrs: [KeyValue; 2],
    max_requests: [KeyValue; 3],
    max_pending: [KeyValue; 3],
}

impl fmt::Debug for ClusterMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ClusterMetrics");
        if let Some(i) = &self.inner {
            d.field("target", &i.attrs[0].value.as_str())
                .field("cluster", &i.attrs[1].value.as_str());
        }
        d.finish_non_exhaustive()
    }
}

impl ClusterMetrics {
    /// Outlier detection found an outlier by `reason`; `enforced` when it was ejected.
    pub fn ejection(&self, reason: Ejection, enforced: bool) {
        let Some(i) = &self.inner else { return };
        let (c, attrs) = (&i.counters, &i.attrs);
        match reason {
            Ejection::SuccessRate => c.ejections_detected_success_rate.add(1, attrs),
            Ejection::FailurePercentage => c.ejections_detected_failure_percentage.add(1, attrs),
            Ejection::Consecutive5xx | Ejection::ConsecutiveGatewayFailure => {}
        }
        if !enforced {
            return;
        }
        c.ejections_enforced_total.add(1, attrs);
        match reason {
            Ejection::SuccessRate => c.ejections_enforced_success_rate.add(1, attrs),
            Ejection::FailurePercentage => c.ejections_enforced_failure_percentage.add(1, attrs),
            Ejection::Consecutive5xx | Ejection::ConsecutiveGatewayFailure => {}
        }
    }

    /// An ejection was skipped because `max_ejection_percent` was reached.
    pub fn ejection_overflow(&self) {
        if let Some(i) = &self.inner {
            i.counters.ejections_overflow.add(1, &i.attrs);
        }
    }

    /// A call was shed by the circuit breaker's `limit`.
    pub fn breaker_overflow(&self, limit: Limit) {
        if let Some(i) = &self.inner {
            let attrs = match limit {
                Limit::MaxRequests => &i.max_requests,
                Limit::MaxPendingRequests => &i.max_pending,
            };
            i.counters.breaker_overflow.add(1, attrs);
        }
    }

    /// A retry was sent.
    pub fn retry(&self) {
        if let Some(i) = &self.inner {
            i.counters.retries.add(1, &i.attrs);
        }
    }

    /// A retry was refused by the retry budget.
    pub fn retry_budget_exhausted(&self) {
        if let Some(i) = &self.inner {
            i.counters.budget_exhausted.add(1, &i.attrs);
        }
    }
}
