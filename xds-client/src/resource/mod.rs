//! Validated, owned Rust types for the four xDS resource types meshwork consumes over ADS:
//! [`Listener`] and [`ServerListener`] (LDS), [`RouteConfiguration`] (RDS), [`Cluster`] (CDS)
//! and [`ClusterLoadAssignment`] (EDS).
//!
//! [`decode`] turns one `google.protobuf.Any` from a `DiscoveryResponse` into a [`Resource`],
//! applying the same accept/reject rules as gRPC's xDS client (grpc-go's `xdsresource`
//! package and the gRFCs it implements). Where gRPC and Envoy differ, the item's docs say which
//! one we follow. Nothing here holds a protobuf type: the validated values are plain Rust,
//! cheap to clone (behind [`Arc`]) and comparable, so the protocol layer can skip updates that
//! change nothing.
//!
//! Every `ConfigSource` must point back at the ADS stream the resource came on, as grpc-go
//! and grpc core require (gRFC A27): an HCM's `rds.config_source` and an EDS cluster's
//! `eds_cluster_config.eds_config` must be set and be `ads` or `self`, a cluster's
//! `lrs_server`, when set, must be `self`. Anything else is a NACK naming the field.
//!
//! Fields that a control plane set but that meshwork does not implement are not dropped
//! silently: each resource lists their field paths in
//! [`unsupported_fields`](Resource::unsupported_fields), for the config dump.
//!
//! ```
//! use meshwork_xds::resource::{decode, ResourceErrorKind, ResourceType};
//! use envoy_types::pb::google::protobuf::Any;
//!
//! let any = Any { type_url: "type.googleapis.com/wrong.Type".into(), value: vec![] };
//! let err = decode(ResourceType::Cluster, &any).unwrap_err();
//! assert!(matches!(err.kind(), ResourceErrorKind::WrongTypeUrl { .. }));
//! assert_eq!(err.name(), None);
//! ```

use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::google::protobuf::Any;
use unsupported::{Unsupported, unsupported_fields};

mod cluster;
mod endpoint;
mod listener;
mod matcher;
mod name;
mod rbac;
mod route;
#[cfg(test)]
mod testing;
mod unsupported;
#[cfg(test)]
mod unsupported_tests;

pub use cluster::{
    CertProviderInstance, CircuitBreakers, Cluster, ClusterKind, ConsecutiveEjection,
    DEFAULT_CONNECT_TIMEOUT, FailurePercentageEjection, HTTP_PROTOCOL_OPTIONS, LbPolicy,
    OutlierDetection, PEAK_EWMA_POLICY_NAME, PEAK_EWMA_POLICY_TYPE_URL, SuccessRateEjection,
    UpstreamProtocol, UpstreamTls,
};
pub use endpoint::{
    ClusterLoadAssignment, DropOverload, Endpoint, HealthStatus, Locality, LocalityEndpoints,
};
pub use listener::{
    DownstreamTls, FilterChain, FilterChainMatch, HTTP_CONNECTION_MANAGER_TYPE_URL, HttpFilter,
    HttpFilterKind, Listener, MAX_FILTER_CHAIN_MATCHES, MAX_FILTER_CHAINS, MAX_MATCH_LIST_LEN,
    ROUTER_FILTER_TYPE_URL, RouteSource, ServerHttpFilter, ServerHttpFilterConfig, ServerListener,
    SourceType,
};
pub use matcher::{REGEX_SIZE_LIMIT, SafeRegex, StringMatchKind, StringMatcher};
pub use name::canonical_name;
pub use rbac::{
    CidrRange, MAX_RBAC_DEPTH, MAX_RBAC_MATCHERS, Permission, Policy, Principal,
    RBAC_FILTER_TYPE_URL, RBAC_PER_ROUTE_TYPE_URL, RbacAction, RbacConfig, RbacPerRoute, RbacRules,
};
pub use route::{
    CHANNEL_ID_FILTER_STATE_KEY, ClusterSpecifier, FILTER_CONFIG_TYPE_URL, FilterOverride,
    ForwardAction, HashPolicy, HashPolicyKind, HeaderMatchKind, HeaderMatcher, MaxStreamDuration,
    PathMatch, QueryParameterMatcher, RetryOn, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, UnsupportedAction, ValidationError, VirtualHost, WeightedCluster,
};

/// The type URL of the `envoy.service.discovery.v3.Resource` wrapper a server may put around
/// each resource in a `DiscoveryResponse`.
pub const RESOURCE_WRAPPER_TYPE_URL: &str =
    "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// The four resource types we consume over ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    RouteConfiguration,
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    ClusterLoadAssignment,
}

impl ResourceType {
    /// All four types, in dependency order (LDS, RDS, CDS, EDS).
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
    ];

    /// The v3 type URL, e.g. `type.googleapis.com/envoy.config.listener.v3.Listener`.
    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
        }
    }

    /// The type whose v3 type URL is exactly `url`, if any (v2 URLs are not accepted).
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The conventional short name: `"LDS"`, `"RDS"`, `"CDS"` or `"EDS"`.
    pub const fn short_name(self) -> &'static str {
        match self {
            ResourceType::Listener => "LDS",
            ResourceType::RouteConfiguration => "RDS",
            ResourceType::Cluster => "CDS",
            ResourceType::ClusterLoadAssignment => "EDS",
        }
    }

    /// SotW: LDS and CDS responses carry the full state (absence = deletion); RDS/EDS do not.
    pub const fn is_full_state(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// A validated resource; cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A client-side (API) listener: a `Listener` with an `api_listener`.
    Listener(Arc<Listener>),
    /// A server-side listener (gRFC A36): a `Listener` without an `api_listener`. It comes
    /// on the same LDS watch as a client one.
    ServerListener(Arc<ServerListener>),
    /// A route configuration.
    RouteConfiguration(Arc<RouteConfiguration>),
    /// A cluster.
    Cluster(Arc<Cluster>),
    /// The endpoints of a cluster.
    ClusterLoadAssignment(Arc<ClusterLoadAssignment>),
}

impl Resource {
    /// The resource name (for EDS, the `cluster_name`).
    pub fn name(&self) -> &str {
        match self {
            Resource::Listener(r) => &r.name,
            Resource::ServerListener(r) => &r.name,
            Resource::RouteConfiguration(r) => &r.name,
            Resource::Cluster(r) => &r.name,
            Resource::ClusterLoadAssignment(r) => &r.cluster_name,
        }
    }

    /// The type of this resource.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Resource::Listener(_) | Resource::ServerListener(_) => ResourceType::Listener,
            Resource::RouteConfiguration(_) => ResourceType::RouteConfiguration,
            Resource::Cluster(_) => ResourceType::Cluster,
            Resource::ClusterLoadAssignment(_) => ResourceType::ClusterLoadAssignment,
        }
    }

    /// Field paths that were set in the proto but that meshwork does not implement yet
    /// (e.g. `virtual_hosts[0].request_headers_to_add`). Shown in the config dump.
    pub fn unsupported_fields(&self) -> &[String] {
        match self {
            Resource::Listener(r) => &r.unsupported_fields,
            Resource::ServerListener(r) => &r.unsupported_fields,
            Resource::RouteConfiguration(r) => &r.unsupported_fields,
            Resource::Cluster(r) => &r.unsupported_fields,
            Resource::ClusterLoadAssignment(r) => &r.unsupported_fields,
        }
    }
}

/// Decode and validate one `Any` from a DiscoveryResponse of type `expected`.
/// Handles the `type.googleapis.com/envoy.service.discovery.v3.Resource` wrapper (use its
/// inner `resource`; its `name` must match if both are set).
pub fn decode(expected: ResourceType, any: &Any) -> Result<Resource, ResourceError> {
    let (inner, wrapper_name) = if any.type_url == RESOURCE_WRAPPER_TYPE_URL {
        use envoy_types::pb::envoy::service::discovery::v3::Resource as Wrapper;
        let wrapper = <Wrapper as prost::Message>::decode(any.value.as_slice())
            .map_err(|e| ResourceError::new(None, ResourceErrorKind::decode("", e)))?;
        let name = (!wrapper.name.is_empty()).then_some(wrapper.name);
        let Some(inner) = wrapper.resource else {
            return Err(ResourceError::new(
                name,
                ResourceErrorKind::invalid("resource", "the Resource wrapper holds no resource"),
            ));
        };
        (std::borrow::Cow::Owned(inner), name)
    } else {
        (std::borrow::Cow::Borrowed(any), None)
    };

    if inner.type_url != expected.type_url() {
        return Err(ResourceError::new(
            wrapper_name,
            ResourceErrorKind::WrongTypeUrl {
                expected,
                actual: inner.type_url.clone(),
            },
        ));
    }

    let bytes = inner.value.as_slice();
    let result = match expected {
        ResourceType::Listener => listener::decode(bytes),
        ResourceType::RouteConfiguration => {
            route::decode(bytes).map(|r| Resource::RouteConfiguration(Arc::new(r)))
        }
        ResourceType::Cluster => cluster::decode(bytes).map(|r| Resource::Cluster(Arc::new(r))),
        ResourceType::ClusterLoadAssignment => {
            endpoint::decode(bytes).map(|r| Resource::ClusterLoadAssignment(Arc::new(r)))
        }
    };

    match (result, wrapper_name) {
        // Two spellings of one xdstp: name are one name (gRFC A47).
        (Ok(resource), Some(wrapper))
            if resource.name() != wrapper
                && canonical_name(resource.name()) != canonical_name(&wrapper) =>
        {
            Err(ResourceError::new(
                Some(resource.name().to_owned()),
                ResourceErrorKind::WrapperNameMismatch {
                    wrapper,
                    inner: resource.name().to_owned(),
                },
            ))
        }
        (Ok(resource), _) => Ok(resource),
        (Err(mut err), wrapper) => {
            if err.name.is_none() {
                err.name = wrapper;
            }
            Err(err)
        }
    }
}

/// Why a resource was rejected. `name` is known when the proto decoded far enough to read
/// it (then the protocol layer NACKs that named resource and keeps its last good version).
///
/// `Display` gives the whole reason, field path included, ready for a NACK's `error_detail`;
/// `source()` is the underlying protobuf or regex error, when there is one.
#[derive(Debug, Clone)]
pub struct ResourceError {
    name: Option<String>,
    kind: ResourceErrorKind,
}

impl ResourceError {
    pub(crate) fn new(name: Option<String>, kind: ResourceErrorKind) -> Self {
        Self { name, kind }
    }

    /// The name of the rejected resource, when it could be read.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// What was wrong.
    pub fn kind(&self) -> &ResourceErrorKind {
        &self.kind
    }
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "resource {name:?}: {}", self.kind),
            None => fmt::Display::fmt(&self.kind, f),
        }
    }
}

impl std::error::Error for ResourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// The reasons a resource is rejected. Every variant that concerns a field names its path
/// from the resource root, e.g. `virtual_hosts[0].routes[2].match.safe_regex`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceErrorKind {
    /// The `Any` (or the wrapper's inner `Any`) has another type than the one requested.
    #[error("wrong type URL {actual:?}, expected {}", expected.type_url())]
    WrongTypeUrl {
        /// The type the response was for.
        expected: ResourceType,
        /// The type URL found.
        actual: String,
    },
    /// The protobuf bytes did not decode (`path` is empty for the resource itself, else the
    /// path of the embedded `Any`).
    #[error("{}protobuf decode error: {source}", path_prefix(path))]
    Decode {
        /// Field path of the embedded message, empty for the resource itself.
        path: String,
        /// The decoder's error.
        #[source]
        source: Arc<prost::DecodeError>,
    },
    /// A field holds a value that is invalid (for gRPC as well as for Envoy).
    #[error("{}{reason}", path_prefix(path))]
    InvalidField {
        /// Field path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A regular expression (RE2 syntax) did not compile.
    #[error("{}invalid regex: {source}", path_prefix(path))]
    InvalidRegex {
        /// Field path of the regex.
        path: String,
        /// The regex compiler's error.
        #[source]
        source: Arc<regex::Error>,
    },
    /// The resource requires a feature meshwork does not implement (so using the resource
    /// without it would be wrong, unlike the harmless fields listed in
    /// [`Resource::unsupported_fields`]).
    #[error("{}unsupported: {what}", path_prefix(path))]
    Unsupported {
        /// Field path.
        path: String,
        /// The feature.
        what: String,
    },
    /// The `envoy.service.discovery.v3.Resource` wrapper's name differs from the name inside.
    #[error("the Resource wrapper is named {wrapper:?} but the resource inside is {inner:?}")]
    WrapperNameMismatch {
        /// The wrapper's `name`.
        wrapper: String,
        /// The inner resource's name.
        inner: String,
    },
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl ResourceErrorKind {
    /// The field path this error concerns, if it concerns one.
    pub fn path(&self) -> Option<&str> {
        match self {
            ResourceErrorKind::Decode { path, .. }
            | ResourceErrorKind::InvalidField { path, .. }
            | ResourceErrorKind::InvalidRegex { path, .. }
            | ResourceErrorKind::Unsupported { path, .. } => Some(path),
            _ => None,
        }
    }

    pub(crate) fn invalid(path: impl fmt::Display, reason: impl Into<String>) -> Self {
        ResourceErrorKind::InvalidField {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(path: impl fmt::Display, what: impl Into<String>) -> Self {
        ResourceErrorKind::Unsupported {
            path: path.to_string(),
            what: what.into(),
        }
    }

    pub(crate) fn decode(path: impl fmt::Display, source: prost::DecodeError) -> Self {
        ResourceErrorKind::Decode {
            path: path.to_string(),
            source: Arc::new(source),
        }
    }
}

/// A broken rule of the route types is an invalid field of the resource, with the same
/// path and words.
impl From<ValidationError> for ResourceErrorKind {
    fn from(e: ValidationError) -> Self {
        ResourceErrorKind::invalid(e.path(), e.reason())
    }
}

pub(crate) type Result<T, E = ResourceErrorKind> = std::result::Result<T, E>;

/// A field path built on the stack while validating; rendered only when needed.
#[derive(Clone, Copy)]
pub(crate) struct FieldPath<'a> {
    parent: Option<&'a FieldPath<'a>>,
    name: &'static str,
    index: Option<usize>,
    /// The key of a map entry, rendered quoted (`name["key"]`).
    key: Option<&'a str>,
}

impl FieldPath<'static> {
    pub(crate) const ROOT: FieldPath<'static> = FieldPath {
        parent: None,
        name: "",
        index: None,
        key: None,
    };
}

impl<'a> FieldPath<'a> {
    /// A sub-field; `name` may hold dots (`"retry_back_off.base_interval"`).
    pub(crate) fn field(&'a self, name: &'static str) -> FieldPath<'a> {
        FieldPath {
            parent: Some(self),
            name,
            index: None,
            key: None,
        }
    }

    /// An element of a repeated sub-field: `name[index]`.
    pub(crate) fn at(&'a self, name: &'static str, index: usize) -> FieldPath<'a> {
        FieldPath {
            parent: Some(self),
            name,
            index: Some(index),
            key: None,
        }
    }

    /// An entry of a map sub-field: `name["key"]` (the key escaped, as control planes
    /// choose it).
    pub(crate) fn key(&'a self, name: &'static str, key: &'a str) -> FieldPath<'a> {
        FieldPath {
            parent: Some(self),
            name,
            index: None,
            key: Some(key),
        }
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> std::result::Result<bool, fmt::Error> {
        let mut wrote = match self.parent {
            Some(parent) => parent.write(f)?,
            None => false,
        };
        if !self.name.is_empty() {
            if wrote {
                f.write_str(".")?;
            }
            f.write_str(self.name)?;
            wrote = true;
        }
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
            wrote = true;
        }
        if let Some(key) = self.key {
            write!(f, "[{key:?}]")?;
            wrote = true;
        }
        Ok(wrote)
    }
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f).map(|_| ())
    }
}

/// Converts a proto `Duration`, rejecting values outside the proto's documented range and
/// negative values.
pub(crate) fn duration(
    path: &FieldPath<'_>,
    d: &envoy_types::pb::google::protobuf::Duration,
) -> Result<std::time::Duration> {
    const MAX_SECONDS: i64 = 315_576_000_000;
    if !(-MAX_SECONDS..=MAX_SECONDS).contains(&d.seconds)
        || !(-999_999_999..=999_999_999).contains(&d.nanos)
        || (d.seconds > 0 && d.nanos < 0)
        || (d.seconds < 0 && d.nanos > 0)
    {
        return Err(ResourceErrorKind::invalid(
            path,
            format!(
                "invalid duration (seconds {}, nanos {})",
                d.seconds, d.nanos
            ),
        ));
    }
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ResourceErrorKind::invalid(
            path,
            format!(
                "negative duration (seconds {}, nanos {})",
                d.seconds, d.nanos
            ),
        ));
    }
    // Both are non-negative and in range here.
    Ok(std::time::Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Like [`duration`], with zero meaning "not set".
pub(crate) fn nonzero_duration(
    path: &FieldPath<'_>,
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
) -> Result<Option<std::time::Duration>> {
    match d {
        None => Ok(None),
        Some(d) => duration(path, d).map(|d| (!d.is_zero()).then_some(d)),
    }
}

/// A `ConfigSource` that gRPC accepts for RDS and EDS (gRFC A27): `ads` or `self`, both
/// meaning the ADS stream the resource came on. It is required: grpc-go and grpc core NACK
/// a missing one as well as any other kind.
pub(crate) fn check_ads_or_self(
    path: &FieldPath<'_>,
    source: Option<&core_pb::ConfigSource>,
) -> Result<()> {
    use core_pb::config_source::ConfigSourceSpecifier;
    match source.map(|s| s.config_source_specifier.as_ref()) {
        None => Err(ResourceErrorKind::invalid(
            path,
            "must be set (a config source: `ads` or `self`)",
        )),
        Some(Some(ConfigSourceSpecifier::Ads(_)) | Some(ConfigSourceSpecifier::Self_(_))) => Ok(()),
        Some(_) => Err(ResourceErrorKind::unsupported(
            path,
            "config source other than `ads` or `self`",
        )),
    }
}

/// Converts a `FractionalPercent` to parts per million, capped at one million.
pub(crate) fn per_million(
    path: &FieldPath<'_>,
    p: &envoy_types::pb::envoy::r#type::v3::FractionalPercent,
) -> Result<u32> {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
    let factor: u64 = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => {
            return Err(ResourceErrorKind::invalid(
                path.field("denominator"),
                format!("unknown denominator {}", p.denominator),
            ));
        }
    };
    Ok((u64::from(p.numerator) * factor).min(1_000_000) as u32)
}

/// Decodes an embedded `Any` of an expected type.
pub(crate) fn decode_any<M: prost::Message + Default>(
    path: &FieldPath<'_>,
    any: &Any,
    expected_type_url: &str,
) -> Result<M> {
    if any.type_url != expected_type_url {
        return Err(ResourceErrorKind::invalid(
            path,
            format!(
                "unexpected type URL {:?}, expected {expected_type_url:?}",
                any.type_url
            ),
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| ResourceErrorKind::decode(path, e))
}

#[cfg(test)]
mod tests;
