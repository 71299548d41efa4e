//! `ClusterLoadAssignment` (EDS).

// Control planes still send deprecated fields (Istio fills both the current and the deprecated
// ones), so reading them is deliberate.
#![allow(deprecated)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use prost::Message as _;

use super::{
    FieldPath, ResourceError, ResourceErrorKind, Result, Unsupported, per_million,
    unsupported_fields,
};

/// A validated `envoy.config.endpoint.v3.ClusterLoadAssignment`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterLoadAssignment {
    /// The resource name (the cluster's EDS service name).
    pub cluster_name: String,
    /// Localities with a non-zero weight, in the order received. Priorities are contiguous
    /// from 0, and a locality appears at most once per priority.
    pub localities: Vec<LocalityEndpoints>,
    /// Drop categories (`policy.drop_overloads`).
    pub drop_overloads: Vec<DropOverload>,
    /// Set-but-unimplemented field paths (see [`super::Resource::unsupported_fields`]).
    pub unsupported_fields: Vec<String>,
}

impl ClusterLoadAssignment {
    /// `addresses` as the endpoints of `cluster_name`: healthy, weight 1, in one locality
    /// (the empty one) of weight 1 at priority 0. For hand-written configs and tests; the
    /// counterpart of the `server::build::endpoints` proto builder.
    pub fn from_addresses(cluster_name: impl Into<String>, addresses: &[SocketAddr]) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            localities: vec![LocalityEndpoints {
                locality: Locality::default(),
                weight: 1,
                priority: 0,
                endpoints: addresses
                    .iter()
                    .map(|&address| Endpoint {
                        address,
                        additional_addresses: Vec::new(),
                        health: HealthStatus::Healthy,
                        weight: 1,
                        hostname: None,
                        hash_key: None,
                    })
                    .collect(),
            }],
            drop_overloads: Vec::new(),
            unsupported_fields: Vec::new(),
        }
    }

    /// The number of priorities (highest priority is 0).
    pub fn priority_count(&self) -> u32 {
        self.localities
            .iter()
            .map(|l| l.priority + 1)
            .max()
            .unwrap_or(0)
    }
}

/// A locality's endpoints at one priority.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityEndpoints {
    /// The locality.
    pub locality: Locality,
    /// `load_balancing_weight`, non-zero.
    pub weight: u32,
    /// Priority, 0 is the highest.
    pub priority: u32,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A locality identity. A missing `locality` is the empty one (Envoy accepts that; grpc-go
/// rejects it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address (an IP literal and a port).
    pub address: SocketAddr,
    /// More addresses of the same endpoint (gRFC A61, dual stack).
    pub additional_addresses: Vec<SocketAddr>,
    /// Health reported by the control plane.
    pub health: HealthStatus,
    /// `load_balancing_weight`, default 1, never 0. The weights of a locality's endpoints
    /// sum to at most `u32::MAX` (grpc-go NACKs more; so do we).
    pub weight: u32,
    /// `hostname`, when set.
    pub hostname: Option<String>,
    /// The ring-hash key from the endpoint's `envoy.lb` metadata `hash_key` (gRFC A76): ring
    /// hash places the endpoint by this string instead of its address, so an endpoint keeps
    /// its keys when its address changes.
    pub hash_key: Option<String>,
}

/// Endpoint health as reported by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HealthStatus {
    /// Not known (usable).
    #[default]
    Unknown,
    /// Healthy.
    Healthy,
    /// Unhealthy (also any value this version does not know).
    Unhealthy,
    /// Draining.
    Draining,
    /// Health check timed out.
    Timeout,
    /// Degraded.
    Degraded,
}

impl HealthStatus {
    fn from_proto(v: i32) -> Self {
        match core_pb::HealthStatus::try_from(v) {
            Ok(core_pb::HealthStatus::Unknown) => HealthStatus::Unknown,
            Ok(core_pb::HealthStatus::Healthy) => HealthStatus::Healthy,
            Ok(core_pb::HealthStatus::Draining) => HealthStatus::Draining,
            Ok(core_pb::HealthStatus::Timeout) => HealthStatus::Timeout,
            Ok(core_pb::HealthStatus::Degraded) => HealthStatus::Degraded,
            Ok(core_pb::HealthStatus::Unhealthy) | Err(_) => HealthStatus::Unhealthy,
        }
    }

    /// Whether traffic may go to the endpoint: `Unknown` and `Healthy`, as in gRPC (Envoy
    /// also uses `Degraded` endpoints when too few healthy ones remain; gRPC does not, and
    /// neither do we).
    pub fn is_usable(self) -> bool {
        matches!(self, HealthStatus::Unknown | HealthStatus::Healthy)
    }
}

/// A drop category: drop `per_million` of the requests. The category must be named and
/// `drop_percentage` set (grpc core NACKs either missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropOverload {
    /// The category, for load reports.
    pub category: String,
    /// Parts per million dropped, at most 1 000 000.
    pub per_million: u32,
}

pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<ClusterLoadAssignment, ResourceError> {
    let cla = endpoint_pb::ClusterLoadAssignment::decode(bytes)
        .map_err(|e| ResourceError::new(None, ResourceErrorKind::decode("", e)))?;
    if cla.cluster_name.is_empty() {
        return Err(ResourceError::new(
            None,
            ResourceErrorKind::invalid("cluster_name", "must not be empty"),
        ));
    }
    validate(&cla).map_err(|kind| ResourceError::new(Some(cla.cluster_name.clone()), kind))
}

fn validate(cla: &endpoint_pb::ClusterLoadAssignment) -> Result<ClusterLoadAssignment> {
    let root = FieldPath::ROOT;
    let mut uns = Unsupported::default();
    unsupported_fields!(uns, &root, cla, { named_endpoints })?;

    let mut drop_overloads = Vec::new();
    if let Some(policy) = &cla.policy {
        let pp = root.field("policy");
        for (i, d) in policy.drop_overloads.iter().enumerate() {
            let dp = pp.at("drop_overloads", i);
            // grpc core NACKs both; a nameless category could not be reported.
            if d.category.is_empty() {
                return Err(ResourceErrorKind::invalid(
                    dp.field("category"),
                    "must not be empty",
                ));
            }
            let per_million = match &d.drop_percentage {
                Some(f) => per_million(&dp.field("drop_percentage"), f)?,
                None => {
                    return Err(ResourceErrorKind::invalid(
                        dp.field("drop_percentage"),
                        "must be set",
                    ));
                }
            };
            drop_overloads.push(DropOverload {
                category: d.category.clone(),
                per_million,
            });
        }
        unsupported_fields!(uns, &pp, policy, {
            overprovisioning_factor,
            endpoint_stale_after,
            weighted_priority_health,
        })?;
    }

    let total_endpoints: usize = cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
    let mut seen_addresses: HashSet<SocketAddr> = HashSet::with_capacity(total_endpoints);
    // Per priority: the sum of locality weights and the localities seen.
    let mut priorities: HashMap<u32, (u32, HashSet<&core_pb::Locality>)> = HashMap::new();
    let empty_locality = core_pb::Locality::default();
    let mut localities = Vec::with_capacity(cla.endpoints.len());

    for (i, l) in cla.endpoints.iter().enumerate() {
        let lp = root.at("endpoints", i);
        let weight = l.load_balancing_weight.as_ref().map_or(0, |w| w.value);
        if weight == 0 {
            uns.note(format!(
                "{lp} (locality without load_balancing_weight: ignored)"
            ));
            continue;
        }
        let id = l.locality.as_ref().unwrap_or(&empty_locality);
        let (sum, seen) = priorities.entry(l.priority).or_default();
        *sum = sum.checked_add(weight).ok_or_else(|| {
            ResourceErrorKind::invalid(
                lp.field("load_balancing_weight"),
                format!(
                    "the locality weights of priority {} overflow a u32",
                    l.priority
                ),
            )
        })?;
        if !seen.insert(id) {
            return Err(ResourceErrorKind::invalid(
                lp.field("locality"),
                format!(
                    "duplicate locality {{region: {:?}, zone: {:?}, sub_zone: {:?}}} in priority {}",
                    id.region, id.zone, id.sub_zone, l.priority
                ),
            ));
        }
        if l.metadata.is_some() {
            uns.note("endpoints[].metadata".to_owned());
        }
        if l.proximity.is_some() {
            uns.note("endpoints[].proximity".to_owned());
        }
        if l.lb_config.is_some() {
            uns.note("endpoints[].lb_config".to_owned());
        }

        let mut endpoints = Vec::with_capacity(l.lb_endpoints.len());
        // grpc-go NACKs a locality whose endpoint weights overflow a u32: balancers divide by
        // the sum.
        let mut endpoint_weights: u32 = 0;
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            let ep = lp.at("lb_endpoints", j);
            let endpoint = endpoint(e, &ep, &mut seen_addresses, &mut uns)?;
            endpoint_weights = endpoint_weights
                .checked_add(endpoint.weight)
                .ok_or_else(|| {
                    ResourceErrorKind::invalid(
                        ep.field("load_balancing_weight"),
                        "the endpoint weights of the locality overflow a u32",
                    )
                })?;
            endpoints.push(endpoint);
        }
        localities.push(LocalityEndpoints {
            locality: Locality {
                region: id.region.clone(),
                zone: id.zone.clone(),
                sub_zone: id.sub_zone.clone(),
            },
            weight,
            priority: l.priority,
            endpoints,
        });
    }

    let count = priorities.len() as u64;
    if let Some(missing) = (0..count).find(|p| !priorities.contains_key(&(*p as u32))) {
        let mut present: Vec<u32> = priorities.keys().copied().collect();
        present.sort_unstable();
        return Err(ResourceErrorKind::invalid(
            root.field("endpoints"),
            format!("priority {missing} is missing (priorities present: {present:?})"),
        ));
    }

    Ok(ClusterLoadAssignment {
        cluster_name: cla.cluster_name.clone(),
        localities,
        drop_overloads,
        unsupported_fields: uns.into_vec(),
    })
}

fn endpoint(
    e: &endpoint_pb::LbEndpoint,
    p: &FieldPath<'_>,
    seen: &mut HashSet<SocketAddr>,
    uns: &mut Unsupported,
) -> Result<Endpoint> {
    use endpoint_pb::lb_endpoint::HostIdentifier;
    let weight = match &e.load_balancing_weight {
        Some(w) if w.value == 0 => {
            return Err(ResourceErrorKind::invalid(
                p.field("load_balancing_weight"),
                "must be at least 1",
            ));
        }
        Some(w) => w.value,
        None => 1,
    };
    let ep = p.field("endpoint");
    let endpoint = match &e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => ep,
        Some(HostIdentifier::EndpointName(_)) => {
            return Err(ResourceErrorKind::unsupported(
                p.field("endpoint_name"),
                "named endpoints",
            ));
        }
        None => return Err(ResourceErrorKind::invalid(ep, "must be set")),
    };
    let address = socket_addr(endpoint.address.as_ref(), &ep.field("address"))?;
    if !seen.insert(address) {
        return Err(ResourceErrorKind::invalid(
            ep.field("address"),
            format!("duplicate endpoint address {address}"),
        ));
    }
    let mut additional_addresses = Vec::new();
    for (k, a) in endpoint.additional_addresses.iter().enumerate() {
        let ap = ep.at("additional_addresses", k);
        let addr = socket_addr(a.address.as_ref(), &ap.field("address"))?;
        if !seen.insert(addr) {
            return Err(ResourceErrorKind::invalid(
                ap.field("address"),
                format!("duplicate endpoint address {addr}"),
            ));
        }
        additional_addresses.push(addr);
    }
    // Istio puts `tlsMode` metadata on every endpoint: list it once, not per endpoint.
    if e.metadata.is_some() {
        uns.note("endpoints[].lb_endpoints[].metadata".to_owned());
    }
    if endpoint.health_check_config.is_some() {
        uns.note("endpoints[].lb_endpoints[].endpoint.health_check_config".to_owned());
    }
    Ok(Endpoint {
        address,
        additional_addresses,
        health: HealthStatus::from_proto(e.health_status),
        weight,
        hostname: (!endpoint.hostname.is_empty()).then(|| endpoint.hostname.clone()),
        hash_key: hash_key(e),
    })
}

/// The `hash_key` string in the endpoint's `envoy.lb` filter metadata (gRFC A76); a
/// non-string or empty value is ignored, as gRPC does.
fn hash_key(e: &endpoint_pb::LbEndpoint) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let fields = &e.metadata.as_ref()?.filter_metadata.get("envoy.lb")?.fields;
    match fields.get("hash_key")?.kind.as_ref()? {
        Kind::StringValue(key) if !key.is_empty() => Some(key.clone()),
        _ => None,
    }
}

/// An EDS address: a socket address with an IP literal and a numeric port (no DNS names).
fn socket_addr(a: Option<&core_pb::Address>, p: &FieldPath<'_>) -> Result<SocketAddr> {
    let sp = p.field("socket_address");
    let sa = match a.and_then(|a| a.address.as_ref()) {
        Some(core_pb::address::Address::SocketAddress(sa)) => sa,
        Some(_) => {
            return Err(ResourceErrorKind::unsupported(
                p,
                "endpoint addresses other than socket addresses",
            ));
        }
        None => return Err(ResourceErrorKind::invalid(sp, "must be set")),
    };
    if !sa.resolver_name.is_empty() {
        return Err(ResourceErrorKind::unsupported(
            sp.field("resolver_name"),
            "custom resolvers",
        ));
    }
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        ResourceErrorKind::invalid(
            sp.field("address"),
            format!("{:?} is not an IP address", sa.address),
        )
    })?;
    let port = match sa.port_specifier {
        Some(core_pb::socket_address::PortSpecifier::PortValue(v)) => {
            u16::try_from(v).ok().filter(|&v| v != 0)
        }
        Some(core_pb::socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(ResourceErrorKind::unsupported(
                sp.field("named_port"),
                "named ports",
            ));
        }
        None => None,
    };
    let Some(port) = port else {
        return Err(ResourceErrorKind::invalid(
            sp.field("port_value"),
            "must be a port number from 1 to 65535",
        ));
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests;
