//! The validated, owned types of a `Cluster` (CDS), as decoding makes them and as
//! hand-written configs build them.

use std::time::Duration;

use crate::resource::matcher::StringMatcher;

/// A validated `envoy.config.cluster.v3.Cluster`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// The resource name.
    pub name: String,
    /// How its endpoints are found.
    pub kind: ClusterKind,
    /// The load-balancing policy.
    pub lb_policy: LbPolicy,
    /// Circuit breaker limits.
    pub circuit_breakers: CircuitBreakers,
    /// Outlier detection (gRFC A50, plus Envoy's consecutive-failure modes); `None` when the
    /// cluster has none.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream mTLS (gRFC A29); `None` for plaintext.
    pub tls: Option<UpstreamTls>,
    /// `connect_timeout`, default 5 s (Envoy's default; gRPC ignores the field). Zero also
    /// means the default, since gRPC accepts it.
    pub connect_timeout: Duration,
    /// The HTTP version the cluster's connections speak, as the resource says. gRPC
    /// clients speak HTTP/2 whatever it says (gRPC ignores these fields); an HTTP client
    /// follows it.
    pub protocol: UpstreamProtocol,
    /// Set-but-unimplemented field paths (see [`Resource::unsupported_fields`](crate::resource::Resource::unsupported_fields)).
    pub unsupported_fields: Vec<String>,
}

/// The default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `type_url` inside a `TypedStruct` that names meshwork's P2C peak-EWMA balancer as a
/// gRFC A52 custom load-balancing policy ([`LbPolicy::PeakEwma`]). As A52 says, the policy
/// is named by what follows the last `/` ([`PEAK_EWMA_POLICY_NAME`]), whatever the prefix.
pub const PEAK_EWMA_POLICY_TYPE_URL: &str = "type.googleapis.com/meshwork.lb.PeakEwma";

/// The name of meshwork's P2C peak-EWMA custom policy (gRFC A52's registry name).
pub const PEAK_EWMA_POLICY_NAME: &str = "meshwork.lb.PeakEwma";

impl Cluster {
    /// An EDS cluster named `name` (its EDS resource has the same name) with what a
    /// resource that sets nothing else decodes to: no load-balancing policy (round robin), the default circuit
    /// breakers, no outlier detection, plaintext, [`DEFAULT_CONNECT_TIMEOUT`], no HTTP
    /// version. For hand-written configs and tests; set other fields with struct update
    /// syntax (`Cluster { tls, ..Cluster::eds("greeter") }`).
    pub fn eds(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: ClusterKind::Eds { service_name: None },
            lb_policy: LbPolicy::Unspecified,
            circuit_breakers: CircuitBreakers::default(),
            outlier_detection: None,
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            protocol: UpstreamProtocol::Unspecified,
            unsupported_fields: Vec::new(),
        }
    }
}

/// The key (and type) of Envoy's HTTP protocol options in a cluster's
/// `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The HTTP version of a cluster's upstream connections: Envoy's
/// `typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]`
/// (`upstream_protocol_options`), or the deprecated `http2_protocol_options` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UpstreamProtocol {
    /// Nothing said: Envoy speaks HTTP/1.1 to such a cluster.
    #[default]
    Unspecified,
    /// `explicit_http_config.http_protocol_options`: HTTP/1.1.
    Http1,
    /// `explicit_http_config.http2_protocol_options` (or the deprecated
    /// `http2_protocol_options` field): HTTP/2, with prior knowledge in plaintext.
    Http2,
    /// `auto_config`: chosen by ALPN (HTTP/2 preferred); only valid on a TLS cluster.
    Auto,
    /// `use_downstream_protocol_config`: the version the caller used.
    Downstream,
}

/// How a cluster's endpoints are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterKind {
    /// Endpoints come over EDS, named `service_name` or else the cluster's name. The
    /// resource must have an `eds_cluster_config` whose `eds_config` is `ads` or `self`, and
    /// a cluster with an `xdstp:` name must set `service_name` (grpc-go, grpc core).
    Eds {
        /// `eds_cluster_config.service_name`, when set.
        service_name: Option<String>,
    },
    /// One DNS name, re-resolved as needed.
    LogicalDns {
        /// The host name (or IP literal).
        host: String,
        /// The port.
        port: u16,
    },
    /// An aggregate: these clusters, in priority order.
    Aggregate {
        /// Child cluster names, non-empty.
        clusters: Vec<String>,
    },
}

impl ClusterKind {
    /// The EDS resource name for an EDS cluster named `cluster_name`.
    pub fn eds_service_name<'a>(&'a self, cluster_name: &'a str) -> Option<&'a str> {
        match self {
            ClusterKind::Eds { service_name } => {
                Some(service_name.as_deref().unwrap_or(cluster_name))
            }
            _ => None,
        }
    }
}

/// A load-balancing policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LbPolicy {
    /// The cluster names no policy: the legacy `lb_policy` is at its proto3 default
    /// (`ROUND_ROBIN`) and there is no `load_balancing_policy`. Balanced with round robin, as
    /// gRPC and Envoy do, unless the client names another default balancer (meshwork-core's
    /// `ClientOptions::default_balancer`). Proto3 cannot tell an explicit `ROUND_ROBIN` in the
    /// legacy field from an absent one; a control plane that wants round robin whatever the
    /// client's default names it in `load_balancing_policy`.
    Unspecified,
    /// Round robin (named in `load_balancing_policy`; gRPC wraps it in `WrrLocality`, which
    /// the balancer does in any case across localities).
    RoundRobin,
    /// Power of two choices over the endpoints' peak-EWMA latency times their outstanding
    /// requests (Linkerd's balancer): meshwork's gRFC A52 custom policy, named by an
    /// `xds.type.v3.TypedStruct` (or `udpa.type.v1.TypedStruct`) whose `type_url` is
    /// [`PEAK_EWMA_POLICY_TYPE_URL`]. Its config has no fields (any given are ignored).
    /// Clients that do not know it skip to the next policy of the list (A52), so a control
    /// plane can list it first and round robin after it for grpc-go and Envoy.
    PeakEwma,
    /// Least request over `choice_count` random picks (default 2, at least 2; gRFC A48 caps
    /// it at 10 when applied).
    LeastRequest {
        /// Endpoints sampled per pick.
        choice_count: u32,
    },
    /// Ring hash (gRFC A42) with xxHash.
    RingHash {
        /// Minimum ring size (default 1024).
        min_ring_size: u64,
        /// Maximum ring size (default and cap 8M).
        max_ring_size: u64,
    },
    /// Weighted round robin across localities, `child` within each.
    WrrLocality {
        /// The endpoint-picking policy.
        child: Box<LbPolicy>,
    },
    /// Pick first (gRFC A62).
    PickFirst {
        /// Shuffle the addresses first.
        shuffle_address_list: bool,
    },
}

/// Circuit breaker limits (the `DEFAULT` priority thresholds only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// `max_requests` (default 1024): concurrent requests to the cluster.
    pub max_requests: u32,
    /// `max_pending_requests`, when set.
    pub max_pending_requests: Option<u32>,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_requests: 1024,
            max_pending_requests: None,
        }
    }
}

/// Outlier detection, with gRFC A50's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Time between ejection sweeps (default 10 s).
    pub interval: Duration,
    /// Base ejection time, multiplied by the number of ejections (default 30 s).
    pub base_ejection_time: Duration,
    /// Maximum ejection time (default the larger of 300 s and `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// Maximum percentage of endpoints ejected at once (default 10).
    pub max_ejection_percent: u32,
    /// Success-rate ejection; enabled unless `enforcing_success_rate` is 0.
    pub success_rate: Option<SuccessRateEjection>,
    /// Failure-percentage ejection; enabled only if `enforcing_failure_percentage` > 0.
    pub failure_percentage: Option<FailurePercentageEjection>,
    /// Envoy's consecutive-5xx ejection (gRPC ignores it; meshwork implements it): default 5
    /// failures, enforced 100 % of the time, so enabled unless `enforcing_consecutive_5xx`
    /// is 0.
    pub consecutive_5xx: Option<ConsecutiveEjection>,
    /// Envoy's consecutive gateway-failure ejection: default 5 failures, enforced 0 % of the
    /// time, so enabled only if `enforcing_consecutive_gateway_failure` > 0.
    pub consecutive_gateway_failure: Option<ConsecutiveEjection>,
}

/// Success-rate ejection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuccessRateEjection {
    /// Ejection threshold: mean − stdev × (`stdev_factor` / 1000) (default 1900).
    pub stdev_factor: u32,
    /// Percentage of detected outliers actually ejected (default 100).
    pub enforcement_percentage: u32,
    /// Endpoints with enough volume needed to run the check (default 5).
    pub minimum_hosts: u32,
    /// Requests per interval needed for an endpoint to count (default 100).
    pub request_volume: u32,
}

/// Failure-percentage ejection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePercentageEjection {
    /// Failure percentage above which an endpoint is an outlier (default 85).
    pub threshold: u32,
    /// Percentage of detected outliers actually ejected (> 0 here).
    pub enforcement_percentage: u32,
    /// Endpoints with enough volume needed to run the check (default 5).
    pub minimum_hosts: u32,
    /// Requests per interval needed for an endpoint to count (default 50).
    pub request_volume: u32,
}

/// Consecutive-failure ejection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsecutiveEjection {
    /// Consecutive failures that make an endpoint an outlier.
    pub consecutive: u32,
    /// Percentage of detected outliers actually ejected (> 0 here).
    pub enforcement_percentage: u32,
}

/// Upstream TLS from an `UpstreamTlsContext` (gRFC A29): certificates come from certificate
/// provider instances named in the bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Our identity (client certificate), when mTLS.
    pub identity: Option<CertProviderInstance>,
    /// The roots that verify the server.
    pub root: CertProviderInstance,
    /// The server's certificate must have a SAN matching one of these (any SAN type; empty
    /// means any certificate the roots accept).
    pub san_matchers: Vec<StringMatcher>,
}

/// A certificate provider instance (from the bootstrap's `certificate_providers`) and the
/// certificate name passed to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertProviderInstance {
    /// The instance name in the bootstrap.
    pub instance_name: String,
    /// The certificate name, opaque to us (Istio: `default`, `ROOTCA`).
    pub certificate_name: String,
}
