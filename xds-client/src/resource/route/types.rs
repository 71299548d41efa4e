//! The validated, owned types of a `RouteConfiguration`, and the lookups on them (virtual
//! host by authority, retry conditions by token).

use std::collections::BTreeMap;
use std::time::Duration;

pub use crate::resource::matcher::{HeaderMatchKind, HeaderMatcher};
use crate::resource::matcher::{SafeRegex, StringMatcher};
use crate::resource::rbac::RbacPerRoute;

/// The type URL of `envoy.config.route.v3.FilterConfig`, the wrapper a
/// `typed_per_filter_config` entry may come in to say it is optional.
pub const FILTER_CONFIG_TYPE_URL: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

/// A validated `envoy.config.route.v3.RouteConfiguration`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfiguration {
    /// The resource name.
    pub name: String,
    /// The virtual hosts, in order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Set-but-unimplemented field paths (see [`Resource::unsupported_fields`](crate::resource::Resource::unsupported_fields)).
    pub unsupported_fields: Vec<String>,
}

impl RouteConfiguration {
    /// The virtual host for `authority`, by gRPC's domain matching: an exact domain wins,
    /// then the longest suffix wildcard (`*.foo.com`), then the longest prefix wildcard
    /// (`foo.*`), then `*`. Comparison is ASCII case-insensitive; on a tie the first virtual
    /// host listed wins. Domains with a `*` anywhere else never match.
    pub fn virtual_host_for(&self, authority: &str) -> Option<&VirtualHost> {
        // (class, length): higher class wins, then longer pattern.
        let mut best: Option<((u8, usize), &VirtualHost)> = None;
        for vh in &self.virtual_hosts {
            for domain in &vh.domains {
                let Some(score) = domain_match(domain, authority) else {
                    continue;
                };
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, vh));
                }
            }
        }
        best.map(|(_, vh)| vh)
    }
}

/// Scores a domain pattern against a host: `None` when it does not match.
fn domain_match(pattern: &str, host: &str) -> Option<(u8, usize)> {
    let p = pattern.as_bytes();
    let h = host.as_bytes();
    if p.is_empty() {
        return None;
    }
    if pattern == "*" {
        return Some((0, 1));
    }
    let stars = p.iter().filter(|&&c| c == b'*').count();
    match stars {
        0 => p.eq_ignore_ascii_case(h).then_some((3, p.len())),
        1 if p[0] == b'*' => {
            let suffix = &p[1..];
            (h.len() >= suffix.len() && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
                .then_some((2, p.len()))
        }
        1 if p[p.len() - 1] == b'*' => {
            let prefix = &p[..p.len() - 1];
            (h.len() >= prefix.len() && h[..prefix.len()].eq_ignore_ascii_case(prefix))
                .then_some((1, p.len()))
        }
        _ => None,
    }
}

/// A virtual host.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// The name (informational).
    pub name: String,
    /// Domain patterns, see [`RouteConfiguration::virtual_host_for`].
    pub domains: Vec<String>,
    /// Routes, matched in order; the first match wins.
    pub routes: Vec<Route>,
    /// The retry policy for routes that have none of their own.
    pub retry_policy: Option<RetryPolicy>,
    /// Per-filter overrides from `typed_per_filter_config`, by the HTTP filter's instance
    /// name; a route's own override of the same filter wins over these.
    pub filter_overrides: BTreeMap<String, FilterOverride>,
}

/// One route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The name (informational, may be empty).
    pub name: String,
    /// What requests it matches.
    pub matcher: RouteMatch,
    /// What it does with them.
    pub action: RouteAction,
    /// Per-filter overrides from `typed_per_filter_config`, by the HTTP filter's instance
    /// name; they win over the virtual host's.
    pub filter_overrides: BTreeMap<String, FilterOverride>,
}

/// A per-route override of one HTTP filter's configuration (a `typed_per_filter_config`
/// entry), of a filter meshwork implements. Overrides of other filters are left out of
/// the route and listed in the resource's `unsupported_fields`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FilterOverride {
    /// `envoy.extensions.filters.http.rbac.v3.RBACPerRoute` (gRFC A41): replaces the RBAC
    /// filter's policy on the route.
    Rbac(RbacPerRoute),
}

/// A route's match conditions; all must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// The path condition.
    pub path: PathMatch,
    /// Whether prefix and path comparisons are case sensitive (default `true`; does not apply
    /// to regexes, as in Envoy).
    pub case_sensitive: bool,
    /// Header conditions.
    pub headers: Vec<HeaderMatcher>,
    /// Query parameter conditions. (grpc-go ignores routes that have any; meshwork matches
    /// them, as Envoy does.)
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// The route matches only this fraction of requests, in parts per million
    /// (`runtime_fraction.default_value`; the runtime key is ignored).
    pub runtime_fraction: Option<u32>,
}

/// The path condition of a route.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path (without query) equals this.
    Path(String),
    /// The path matches this regex fully.
    Regex(SafeRegex),
}

/// A query parameter condition: `string_match` on the value, or `present`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParameterMatcher {
    /// Parameter name.
    pub name: String,
    /// Value condition.
    pub string_match: Option<StringMatcher>,
    /// Presence condition.
    pub present: Option<bool>,
}

/// What a route does.
// Nearly every route forwards, so boxing the large variant would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// Forward to a cluster.
    Forward(ForwardAction),
    /// Server side: hand the request to the application (Istio inbound routes).
    NonForwarding,
    /// An action meshwork does not implement. Following gRPC, the route is kept (dropping it
    /// would let later routes match instead) and requests it matches fail with UNAVAILABLE.
    Unsupported(UnsupportedAction),
}

/// The action of a route whose requests fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsupportedAction {
    /// `redirect`.
    Redirect,
    /// `direct_response`.
    DirectResponse,
    /// `filter_action`.
    FilterAction,
    /// No action set.
    Missing,
}

/// Forwarding to a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardAction {
    /// The cluster(s). A cluster that does not exist is not an error here: that is the
    /// watch layer's concern.
    pub clusters: ClusterSpecifier,
    /// The route `timeout`; `None` when unset or zero. (Envoy's default of 15 s when unset
    /// is not applied: like gRPC, meshwork sets no timeout unless told to.)
    pub timeout: Option<Duration>,
    /// gRFC A31 stream duration limits; `None` when unset.
    pub max_stream_duration: Option<MaxStreamDuration>,
    /// The route's retry policy, or else the virtual host's.
    pub retry_policy: Option<RetryPolicy>,
    /// Hash policies for ring hash (gRFC A42).
    pub hash_policies: Vec<HashPolicy>,
}

/// Where to forward. Cluster specifier plugins are not implemented: a route using one is
/// left out (gRFC A28), but one naming a plugin that `cluster_specifier_plugins` does not
/// declare is a NACK (grpc-go, grpc core), as are two declared plugins with one name (grpc
/// core).
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterSpecifier {
    /// One cluster.
    Cluster(String),
    /// A weighted choice; weights are non-zero and sum to at most `u32::MAX`.
    Weighted(Vec<WeightedCluster>),
    /// The cluster named by this request header.
    ClusterHeader(String),
}

/// One choice of a weighted cluster action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedCluster {
    /// Cluster name.
    pub name: String,
    /// Weight, non-zero.
    pub weight: u32,
}

/// gRFC A31 stream duration limits of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStreamDuration {
    /// `max_stream_duration`; `None` when unset or zero (no limit).
    pub max: Option<Duration>,
    /// `grpc_timeout_header_max` (or the deprecated route `max_grpc_timeout` when this is
    /// unset): when set, the `grpc-timeout` header is honoured, capped at this value; zero
    /// means uncapped. `None` when unset.
    pub grpc_timeout_header_max: Option<Duration>,
    /// `grpc_timeout_header_offset` (or the deprecated `grpc_timeout_offset`), subtracted
    /// from the header's value; `None` when unset or zero.
    pub grpc_timeout_header_offset: Option<Duration>,
}

impl MaxStreamDuration {
    /// The limit gRPC applies (A31): `grpc_timeout_header_max` if set, else `max`; zero
    /// means no limit.
    pub fn effective(&self) -> Option<Duration> {
        match self.grpc_timeout_header_max {
            Some(d) => (!d.is_zero()).then_some(d),
            None => self.max,
        }
    }
}

/// A set of retry conditions (`retry_on`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RetryOn(u16);

impl RetryOn {
    /// gRPC status CANCELLED (`cancelled`).
    pub const CANCELLED: RetryOn = RetryOn(1);
    /// gRPC status DEADLINE_EXCEEDED (`deadline-exceeded`).
    pub const DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 1);
    /// gRPC status INTERNAL (`internal`).
    pub const INTERNAL: RetryOn = RetryOn(1 << 2);
    /// gRPC status RESOURCE_EXHAUSTED (`resource-exhausted`).
    pub const RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 3);
    /// gRPC status UNAVAILABLE (`unavailable`).
    pub const UNAVAILABLE: RetryOn = RetryOn(1 << 4);
    /// HTTP 5xx or no response (`5xx`).
    pub const HTTP_5XX: RetryOn = RetryOn(1 << 5);
    /// HTTP 502, 503, 504 (`gateway-error`).
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 6);
    /// Connection reset or no response (`reset`).
    pub const RESET: RetryOn = RetryOn(1 << 7);
    /// Connect failure (`connect-failure`).
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 8);
    /// The status is in `retriable_status_codes` (`retriable-status-codes`).
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 9);
    /// HTTP/2 REFUSED_STREAM (`refused-stream`).
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 10);

    const TOKENS: [(&'static str, RetryOn); 11] = [
        ("cancelled", Self::CANCELLED),
        ("deadline-exceeded", Self::DEADLINE_EXCEEDED),
        ("internal", Self::INTERNAL),
        ("resource-exhausted", Self::RESOURCE_EXHAUSTED),
        ("unavailable", Self::UNAVAILABLE),
        ("5xx", Self::HTTP_5XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("reset", Self::RESET),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("retriable-status-codes", Self::RETRIABLE_STATUS_CODES),
        ("refused-stream", Self::REFUSED_STREAM),
    ];

    /// The empty set.
    pub const fn empty() -> Self {
        RetryOn(0)
    }

    /// Whether no condition is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every condition in `other` is in `self`.
    pub const fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub const fn union(self, other: RetryOn) -> Self {
        RetryOn(self.0 | other.0)
    }

    /// The condition named by one `retry_on` token (trimmed, case-insensitive).
    pub fn from_token(token: &str) -> Option<Self> {
        let token = token.trim();
        Self::TOKENS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(token))
            .map(|&(_, v)| v)
    }

    /// The `retry_on` tokens of the set, in a fixed order.
    pub fn tokens(self) -> impl Iterator<Item = &'static str> {
        Self::TOKENS
            .into_iter()
            .filter(move |&(_, v)| self.contains(v))
            .map(|(name, _)| name)
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        self.union(rhs)
    }
}

impl std::fmt::Debug for RetryOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.tokens()).finish()
    }
}

/// A retry policy (Envoy semantics, gRFC A44 for gRPC).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The conditions that allow a retry.
    pub retry_on: RetryOn,
    /// Retries after the first attempt (default 1; 0 = no retries). gRFC A44 caps the total
    /// number of attempts at 5; the raw value is kept here and the cap is the retry layer's.
    /// (grpc-go NACKs 0; Envoy accepts it, and so do we.)
    pub num_retries: u32,
    /// Backoff base interval (default 25 ms, must be > 0).
    pub base_interval: Duration,
    /// Backoff cap (default 10 × `base_interval`, must be ≥ `base_interval`).
    pub max_interval: Duration,
    /// Timeout of each attempt; `None` when unset or zero.
    pub per_try_timeout: Option<Duration>,
    /// HTTP statuses retried with [`RetryOn::RETRIABLE_STATUS_CODES`].
    pub retriable_status_codes: Vec<u16>,
    /// The `envoy.retry_host_predicates.previous_hosts` predicate: a retry avoids the hosts
    /// already tried (Istio sets it on every route).
    pub avoid_previous_hosts: bool,
    /// `host_selection_retry_max_attempts` (default 1): how many picks a retry may make to
    /// satisfy the host predicates.
    pub host_selection_max_attempts: u32,
}

/// A hash policy for ring hash (gRFC A42).
#[derive(Debug, Clone, PartialEq)]
pub struct HashPolicy {
    /// What to hash.
    pub kind: HashPolicyKind,
    /// Stop at this policy if it produced a hash.
    pub terminal: bool,
}

/// What a [`HashPolicy`] hashes.
#[derive(Debug, Clone, PartialEq)]
pub enum HashPolicyKind {
    /// A request header's value, optionally rewritten: every match of the regex is replaced
    /// by the substitution (unanchored).
    Header {
        /// Header name, lower-cased.
        name: String,
        /// `(pattern, substitution)`.
        regex_rewrite: Option<(SafeRegex, String)>,
    },
    /// The channel's identity (`filter_state` with key `io.grpc.channel_id`).
    ChannelId,
    /// The client's source IP (`connection_properties.source_ip`); gRPC ignores this one.
    SourceIp,
}

/// The filter-state key gRPC uses for the channel-id hash policy.
pub const CHANNEL_ID_FILTER_STATE_KEY: &str = "io.grpc.channel_id";
