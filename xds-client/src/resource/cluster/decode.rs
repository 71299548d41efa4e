//! Decoding and validating an `envoy.config.cluster.v3.Cluster` into a [`Cluster`].

// Control planes still send deprecated fields (Istio fills both the current and the deprecated
// ones), so reading them is deliberate.
#![allow(deprecated)]

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3 as aggregate_pb;
use envoy_types::pb::envoy::extensions::load_balancing_policies as lb_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as http_pb;
use envoy_types::pb::google::protobuf::UInt32Value;
use prost::Message as _;

use super::types::*;
use crate::resource::matcher::StringMatcher;
use crate::resource::{
    FieldPath, ResourceError, ResourceErrorKind, Result, Unsupported, check_ads_or_self,
    decode_any, duration, unsupported_fields,
};

const HTTP_PROTOCOL_OPTIONS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

const RING_SIZE_CAP: u64 = 8 * 1024 * 1024;
const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// gRFC A52's recursion limit for nested LB policy configs.
const MAX_LB_POLICY_DEPTH: usize = 16;

const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM_TLS_CONTEXT_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub(crate) const RAW_BUFFER_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
const AGGREGATE_CLUSTER_TYPE: &str = "envoy.clusters.aggregate";
const AGGREGATE_CONFIG_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig";
const LB_TYPE_PREFIX: &str = "type.googleapis.com/envoy.extensions.load_balancing_policies.";
pub(super) const XDS_TYPED_STRUCT: &str = "type.googleapis.com/xds.type.v3.TypedStruct";
pub(super) const UDPA_TYPED_STRUCT: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";

/// `xds.type.v3.TypedStruct` (the same wire shape as `udpa.type.v1.TypedStruct`), which
/// envoy-types does not generate: a type URL and a JSON-like config.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TypedStruct {
    #[prost(string, tag = "1")]
    pub(super) type_url: String,
    #[prost(message, optional, tag = "2")]
    pub(super) value: Option<envoy_types::pb::google::protobuf::Struct>,
}

pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Cluster, ResourceError> {
    let c = cluster_pb::Cluster::decode(bytes)
        .map_err(|e| ResourceError::new(None, ResourceErrorKind::decode("", e)))?;
    if c.name.is_empty() {
        return Err(ResourceError::new(
            None,
            ResourceErrorKind::invalid("name", "must not be empty"),
        ));
    }
    validate(&c).map_err(|kind| ResourceError::new(Some(c.name.clone()), kind))
}

fn validate(c: &cluster_pb::Cluster) -> Result<Cluster> {
    let root = FieldPath::ROOT;
    let mut uns = Unsupported::default();
    let kind = cluster_kind(c, &root)?;
    let lb_policy = lb_policy(c, &root)?;
    let circuit_breakers = circuit_breakers(c.circuit_breakers.as_ref());
    let outlier_detection = match &c.outlier_detection {
        Some(od) => Some(outlier_detection(
            od,
            &root.field("outlier_detection"),
            &mut uns,
        )?),
        None => None,
    };
    // gRPC NACKs transport_socket_matches; Istio only uses them for sidecars, so we list
    // and ignore them.
    unsupported_fields!(uns, &root, c, { transport_socket_matches })?;
    let tls = match &c.transport_socket {
        Some(ts) => upstream_tls(ts, &root.field("transport_socket"), &mut uns)?,
        None => None,
    };
    let connect_timeout = match &c.connect_timeout {
        Some(d) => {
            let d = duration(&root.field("connect_timeout"), d)?;
            if d.is_zero() {
                DEFAULT_CONNECT_TIMEOUT
            } else {
                d
            }
        }
        None => DEFAULT_CONNECT_TIMEOUT,
    };

    unsupported_fields!(uns, &root, c, { alt_stat_name, metadata })?;
    if let Some(lrs) = &c.lrs_server {
        // Load reports go to the server that sent the cluster; grpc-go and grpc core NACK
        // any other config source. Reporting itself is not implemented: listed.
        use core_pb::config_source::ConfigSourceSpecifier;
        if !matches!(
            lrs.config_source_specifier,
            Some(ConfigSourceSpecifier::Self_(_))
        ) {
            return Err(ResourceErrorKind::unsupported(
                root.field("lrs_server"),
                "an LRS server other than `self`",
            ));
        }
        uns.field(&root, "lrs_server");
    }
    if let Some(upstream) = &c.upstream_config {
        // grpc core NACKs anything but a decodable HttpProtocolOptions here; the one field
        // it reads (the connection idle timeout) is not implemented: listed.
        let p = root.field("upstream_config.typed_config");
        let Some(any) = &upstream.typed_config else {
            return Err(ResourceErrorKind::invalid(p, "must be set"));
        };
        let _: http_pb::HttpProtocolOptions = decode_any(&p, any, HTTP_PROTOCOL_OPTIONS_TYPE_URL)?;
        uns.field(&root, "upstream_config");
    }
    unsupported_fields!(uns, &root, c, {
        dns_lookup_family,
        health_checks,
        max_requests_per_connection,
        upstream_http_protocol_options,
        common_http_protocol_options,
    })?;
    let protocol = upstream_protocol(c, &root, &mut uns)?;
    unsupported_fields!(uns, &root, c, {
        lb_subset_config,
        filters,
        upstream_connection_options,
        preconnect_policy,
        dns_refresh_rate,
    })?;
    if let Some(cl) = &c.common_lb_config {
        unsupported_fields!(uns, &root.field("common_lb_config"), cl, {
            override_host_status,
            healthy_panic_threshold,
            locality_config_specifier,
            consistent_hashing_lb_config,
        })?;
    }
    if let Some(cb) = &c.circuit_breakers {
        unsupported_fields!(uns, &root.field("circuit_breakers"), cb, {
            per_host_thresholds
        })?;
    }

    Ok(Cluster {
        name: c.name.clone(),
        kind,
        lb_policy,
        circuit_breakers,
        outlier_detection,
        tls,
        connect_timeout,
        protocol,
        unsupported_fields: uns.into_vec(),
    })
}

/// The cluster's HTTP version, as Envoy reads it: the typed `HttpProtocolOptions` (under its
/// own key in `typed_extension_protocol_options`) if present, and then the deprecated
/// cluster fields do not count; else the deprecated `http2_protocol_options`. An
/// `HttpProtocolOptions` that does not decode, or that names no version (the oneof is
/// required), or `auto_config` on a cluster without TLS (no ALPN to choose with) is an
/// error, as Envoy rejects them; other extensions' options and the parts of
/// `HttpProtocolOptions` that are not the version are listed as unsupported.
fn upstream_protocol(
    c: &cluster_pb::Cluster,
    root: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<UpstreamProtocol> {
    use http_pb::http_protocol_options::{
        UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    unsupported_fields!(uns, root, c, { http_protocol_options, protocol_selection })?;
    let mut keys: Vec<&String> = c.typed_extension_protocol_options.keys().collect();
    keys.sort();
    for key in keys.iter().filter(|k| k.as_str() != HTTP_PROTOCOL_OPTIONS) {
        uns.note(format!("typed_extension_protocol_options[{key}]"));
    }
    let Some(any) = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    else {
        return Ok(if c.http2_protocol_options.is_some() {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Unspecified
        });
    };
    unsupported_fields!(uns, root, c, {
        "http2_protocol_options (overridden by HttpProtocolOptions)" =
            c.http2_protocol_options.is_some(),
    })?;
    let path = root.field("typed_extension_protocol_options[HttpProtocolOptions]");
    let opts: http_pb::HttpProtocolOptions =
        decode_any(&path, any, HTTP_PROTOCOL_OPTIONS_TYPE_URL)?;
    let protocol = match &opts.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(ProtocolConfig::HttpProtocolOptions(_)) => UpstreamProtocol::Http1,
            Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
            Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                // QUIC is not spoken here: the cluster keeps the default.
                uns.field(&path, "explicit_http_config.http3_protocol_options");
                UpstreamProtocol::Unspecified
            }
            None => {
                return Err(ResourceErrorKind::invalid(
                    path.field("explicit_http_config"),
                    "no protocol_config",
                ));
            }
        },
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
            UpstreamProtocol::Downstream
        }
        Some(UpstreamProtocolOptions::AutoConfig(_)) => {
            if c.transport_socket.is_none() && c.transport_socket_matches.is_empty() {
                return Err(ResourceErrorKind::invalid(
                    path.field("auto_config"),
                    "needs a TLS transport socket (the version is chosen by ALPN)",
                ));
            }
            UpstreamProtocol::Auto
        }
        None => {
            return Err(ResourceErrorKind::invalid(
                path.field("upstream_protocol_options"),
                "is required",
            ));
        }
    };
    unsupported_fields!(uns, &path, opts, {
        common_http_protocol_options,
        upstream_http_protocol_options,
        http_filters,
        header_validation_config,
        outlier_detection,
        request_mirror_policies,
        hash_policy,
        retry_policy,
    })?;
    Ok(protocol)
}

fn cluster_kind(c: &cluster_pb::Cluster, root: &FieldPath<'_>) -> Result<ClusterKind> {
    use cluster_pb::cluster::{ClusterDiscoveryType, DiscoveryType};
    match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            let p = root.field("cluster_type");
            if custom.name != AGGREGATE_CLUSTER_TYPE {
                return Err(ResourceErrorKind::unsupported(
                    p.field("name"),
                    format!("custom cluster type {:?}", custom.name),
                ));
            }
            let tp = p.field("typed_config");
            let Some(any) = &custom.typed_config else {
                return Err(ResourceErrorKind::invalid(tp, "must be set"));
            };
            let cfg: aggregate_pb::ClusterConfig = decode_any(&tp, any, AGGREGATE_CONFIG_TYPE_URL)?;
            if cfg.clusters.is_empty() {
                return Err(ResourceErrorKind::invalid(
                    tp.field("clusters"),
                    "an aggregate cluster needs at least one cluster",
                ));
            }
            if let Some(i) = cfg.clusters.iter().position(String::is_empty) {
                return Err(ResourceErrorKind::invalid(
                    tp.at("clusters", i),
                    "must not be empty",
                ));
            }
            Ok(ClusterKind::Aggregate {
                clusters: cfg.clusters,
            })
        }
        Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
            Ok(DiscoveryType::Eds) => {
                let p = root.field("eds_cluster_config");
                let Some(eds) = &c.eds_cluster_config else {
                    return Err(ResourceErrorKind::invalid(
                        p,
                        "must be set for an EDS cluster",
                    ));
                };
                check_ads_or_self(&p.field("eds_config"), eds.eds_config.as_ref())?;
                if eds.service_name.is_empty() && c.name.starts_with("xdstp:") {
                    // An xdstp name holds the authority: the EDS name must say its own.
                    return Err(ResourceErrorKind::invalid(
                        p.field("service_name"),
                        "must be set when the cluster has an xdstp: name",
                    ));
                }
                let service_name = (!eds.service_name.is_empty()).then(|| eds.service_name.clone());
                Ok(ClusterKind::Eds { service_name })
            }
            Ok(DiscoveryType::LogicalDns) => logical_dns(c, root),
            Ok(other) => Err(ResourceErrorKind::unsupported(
                root.field("type"),
                format!("cluster type {}", other.as_str_name()),
            )),
            Err(_) => Err(ResourceErrorKind::invalid(
                root.field("type"),
                format!("unknown cluster type {t}"),
            )),
        },
        None => Err(ResourceErrorKind::unsupported(
            root.field("type"),
            "cluster type STATIC",
        )),
    }
}

fn logical_dns(c: &cluster_pb::Cluster, root: &FieldPath<'_>) -> Result<ClusterKind> {
    let p = root.field("load_assignment");
    let Some(la) = &c.load_assignment else {
        return Err(ResourceErrorKind::invalid(
            p,
            "a LOGICAL_DNS cluster needs a load_assignment",
        ));
    };
    if la.endpoints.len() != 1 {
        return Err(ResourceErrorKind::invalid(
            p.field("endpoints"),
            format!(
                "a LOGICAL_DNS cluster needs exactly one locality, found {}",
                la.endpoints.len()
            ),
        ));
    }
    let lp = p.at("endpoints", 0);
    let lbs = &la.endpoints[0].lb_endpoints;
    if lbs.len() != 1 {
        return Err(ResourceErrorKind::invalid(
            lp.field("lb_endpoints"),
            format!(
                "a LOGICAL_DNS cluster needs exactly one endpoint, found {}",
                lbs.len()
            ),
        ));
    }
    let ep = lp.at("lb_endpoints", 0);
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let sp = ep.field("endpoint.address.socket_address");
    let sa = match &lbs[0].host_identifier {
        Some(HostIdentifier::Endpoint(e)) => {
            match e.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(core_pb::address::Address::SocketAddress(sa)) => sa,
                _ => return Err(ResourceErrorKind::invalid(sp, "must be set")),
            }
        }
        _ => {
            return Err(ResourceErrorKind::invalid(
                ep.field("endpoint"),
                "must be set",
            ));
        }
    };
    if !sa.resolver_name.is_empty() {
        return Err(ResourceErrorKind::unsupported(
            sp.field("resolver_name"),
            "custom resolvers",
        ));
    }
    if sa.address.is_empty() {
        return Err(ResourceErrorKind::invalid(
            sp.field("address"),
            "must not be empty",
        ));
    }
    let port = match sa.port_specifier {
        Some(core_pb::socket_address::PortSpecifier::PortValue(p)) => {
            u16::try_from(p).ok().filter(|&p| p != 0)
        }
        _ => None,
    };
    let Some(port) = port else {
        return Err(ResourceErrorKind::invalid(
            sp.field("port_value"),
            "must be a port number from 1 to 65535",
        ));
    };
    Ok(ClusterKind::LogicalDns {
        host: sa.address.clone(),
        port,
    })
}

fn lb_policy(c: &cluster_pb::Cluster, root: &FieldPath<'_>) -> Result<LbPolicy> {
    use cluster_pb::cluster::{LbConfig, LbPolicy as Legacy};
    if let Some(lbp) = &c.load_balancing_policy {
        return lb_policy_list(lbp, &root.field("load_balancing_policy"), 0);
    }
    let p = root.field("lb_policy");
    match Legacy::try_from(c.lb_policy) {
        // ROUND_ROBIN is the field's proto3 default: no policy named.
        Ok(Legacy::RoundRobin) => Ok(LbPolicy::Unspecified),
        Ok(Legacy::LeastRequest) => {
            let choice_count = match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(cfg)) => cfg.choice_count.as_ref(),
                _ => None,
            };
            least_request(
                choice_count,
                &root.field("least_request_lb_config.choice_count"),
            )
        }
        Ok(Legacy::RingHash) => {
            let cfg = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(cfg)) => Some(cfg),
                _ => None,
            };
            let rp = root.field("ring_hash_lb_config");
            if let Some(cfg) = cfg
                && cfg.hash_function
                    != cluster_pb::cluster::ring_hash_lb_config::HashFunction::XxHash as i32
            {
                return Err(ResourceErrorKind::unsupported(
                    rp.field("hash_function"),
                    "ring hash functions other than XX_HASH",
                ));
            }
            ring_hash(
                cfg.and_then(|c| c.minimum_ring_size.as_ref())
                    .map(|v| v.value),
                cfg.and_then(|c| c.maximum_ring_size.as_ref())
                    .map(|v| v.value),
                &rp,
            )
        }
        Ok(other) => Err(ResourceErrorKind::unsupported(
            p,
            format!("lb_policy {}", other.as_str_name()),
        )),
        Err(_) => Err(ResourceErrorKind::invalid(
            p,
            format!("unknown lb_policy {}", c.lb_policy),
        )),
    }
}

fn least_request(choice_count: Option<&UInt32Value>, p: &FieldPath<'_>) -> Result<LbPolicy> {
    let choice_count = choice_count.map_or(2, |v| v.value);
    if choice_count < 2 {
        return Err(ResourceErrorKind::invalid(
            p,
            format!("{choice_count} is less than 2"),
        ));
    }
    Ok(LbPolicy::LeastRequest { choice_count })
}

fn ring_hash(min: Option<u64>, max: Option<u64>, p: &FieldPath<'_>) -> Result<LbPolicy> {
    let min_ring_size = min.unwrap_or(DEFAULT_MIN_RING_SIZE);
    let max_ring_size = max.unwrap_or(RING_SIZE_CAP);
    if min_ring_size == 0 || min_ring_size > RING_SIZE_CAP {
        return Err(ResourceErrorKind::invalid(
            p.field("minimum_ring_size"),
            format!("{min_ring_size} is not in 1..={RING_SIZE_CAP}"),
        ));
    }
    if max_ring_size > RING_SIZE_CAP {
        return Err(ResourceErrorKind::invalid(
            p.field("maximum_ring_size"),
            format!("{max_ring_size} is greater than {RING_SIZE_CAP}"),
        ));
    }
    if min_ring_size > max_ring_size {
        return Err(ResourceErrorKind::invalid(
            p,
            format!(
                "minimum_ring_size {min_ring_size} is greater than maximum_ring_size {max_ring_size}"
            ),
        ));
    }
    Ok(LbPolicy::RingHash {
        min_ring_size,
        max_ring_size,
    })
}

/// gRFC A52: the first policy in the list that we support wins; unknown ones are skipped.
fn lb_policy_list(
    list: &cluster_pb::LoadBalancingPolicy,
    p: &FieldPath<'_>,
    depth: usize,
) -> Result<LbPolicy> {
    if depth >= MAX_LB_POLICY_DEPTH {
        return Err(ResourceErrorKind::invalid(
            p,
            "load balancing policies nested too deeply",
        ));
    }
    for (i, policy) in list.policies.iter().enumerate() {
        let pp = p.at("policies", i);
        let tp = pp.field("typed_extension_config.typed_config");
        let Some(any) = policy
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            continue;
        };
        if any.type_url == XDS_TYPED_STRUCT || any.type_url == UDPA_TYPED_STRUCT {
            // A custom policy (gRFC A52): the struct's own type URL names it.
            let ts: TypedStruct = decode_any(&tp, any, &any.type_url)?;
            // A52: the registry name is what follows the type URL's last '/'.
            let name = ts.type_url.rsplit('/').next().unwrap_or_default();
            if name == PEAK_EWMA_POLICY_NAME {
                return Ok(LbPolicy::PeakEwma);
            }
            continue;
        }
        let Some(kind) = any.type_url.strip_prefix(LB_TYPE_PREFIX) else {
            continue;
        };
        let policy = match kind {
            "round_robin.v3.RoundRobin" => LbPolicy::RoundRobin,
            "least_request.v3.LeastRequest" => {
                let cfg: lb_pb::least_request::v3::LeastRequest =
                    decode_any(&tp, any, &any.type_url)?;
                least_request(cfg.choice_count.as_ref(), &tp.field("choice_count"))?
            }
            "ring_hash.v3.RingHash" => {
                let cfg: lb_pb::ring_hash::v3::RingHash = decode_any(&tp, any, &any.type_url)?;
                use lb_pb::ring_hash::v3::ring_hash::HashFunction;
                if cfg.hash_function != HashFunction::DefaultHash as i32
                    && cfg.hash_function != HashFunction::XxHash as i32
                {
                    return Err(ResourceErrorKind::unsupported(
                        tp.field("hash_function"),
                        "ring hash functions other than XX_HASH",
                    ));
                }
                ring_hash(
                    cfg.minimum_ring_size.map(|v| v.value),
                    cfg.maximum_ring_size.map(|v| v.value),
                    &tp,
                )?
            }
            "wrr_locality.v3.WrrLocality" => {
                let cfg: lb_pb::wrr_locality::v3::WrrLocality =
                    decode_any(&tp, any, &any.type_url)?;
                let cp = tp.field("endpoint_picking_policy");
                let Some(child) = &cfg.endpoint_picking_policy else {
                    return Err(ResourceErrorKind::invalid(cp, "must be set"));
                };
                LbPolicy::WrrLocality {
                    child: Box::new(lb_policy_list(child, &cp, depth + 1)?),
                }
            }
            "pick_first.v3.PickFirst" => {
                let cfg: lb_pb::pick_first::v3::PickFirst = decode_any(&tp, any, &any.type_url)?;
                LbPolicy::PickFirst {
                    shuffle_address_list: cfg.shuffle_address_list,
                }
            }
            _ => continue,
        };
        return Ok(policy);
    }
    Err(ResourceErrorKind::unsupported(
        p,
        "none of the load balancing policies is supported",
    ))
}

fn circuit_breakers(cb: Option<&cluster_pb::CircuitBreakers>) -> CircuitBreakers {
    let mut out = CircuitBreakers::default();
    let default = cb.and_then(|cb| {
        cb.thresholds
            .iter()
            .find(|t| t.priority == core_pb::RoutingPriority::Default as i32)
    });
    if let Some(t) = default {
        if let Some(m) = &t.max_requests {
            out.max_requests = m.value;
        }
        out.max_pending_requests = t.max_pending_requests.as_ref().map(|v| v.value);
    }
    out
}

fn outlier_detection(
    od: &cluster_pb::OutlierDetection,
    p: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<OutlierDetection> {
    let dur = |v: &Option<envoy_types::pb::google::protobuf::Duration>,
               name: &'static str,
               default: Duration| match v {
        Some(d) => duration(&p.field(name), d),
        None => Ok(default),
    };
    let pct = |v: &Option<UInt32Value>, name: &'static str, default: u32| -> Result<u32> {
        let v = v.as_ref().map_or(default, |v| v.value);
        if v > 100 {
            return Err(ResourceErrorKind::invalid(
                p.field(name),
                format!("{v} is greater than 100"),
            ));
        }
        Ok(v)
    };
    let num = |v: &Option<UInt32Value>, default: u32| v.as_ref().map_or(default, |v| v.value);

    let interval = dur(&od.interval, "interval", Duration::from_secs(10))?;
    let base_ejection_time = dur(
        &od.base_ejection_time,
        "base_ejection_time",
        Duration::from_secs(30),
    )?;
    let max_ejection_time = dur(
        &od.max_ejection_time,
        "max_ejection_time",
        base_ejection_time.max(Duration::from_secs(300)),
    )?;
    let max_ejection_percent = pct(&od.max_ejection_percent, "max_ejection_percent", 10)?;

    let enforcing_success_rate = pct(&od.enforcing_success_rate, "enforcing_success_rate", 100)?;
    let success_rate = (enforcing_success_rate > 0).then(|| SuccessRateEjection {
        stdev_factor: num(&od.success_rate_stdev_factor, 1900),
        enforcement_percentage: enforcing_success_rate,
        minimum_hosts: num(&od.success_rate_minimum_hosts, 5),
        request_volume: num(&od.success_rate_request_volume, 100),
    });
    let threshold = pct(
        &od.failure_percentage_threshold,
        "failure_percentage_threshold",
        85,
    )?;
    let enforcing_failure_percentage = pct(
        &od.enforcing_failure_percentage,
        "enforcing_failure_percentage",
        0,
    )?;
    let failure_percentage =
        (enforcing_failure_percentage > 0).then(|| FailurePercentageEjection {
            threshold,
            enforcement_percentage: enforcing_failure_percentage,
            minimum_hosts: num(&od.failure_percentage_minimum_hosts, 5),
            request_volume: num(&od.failure_percentage_request_volume, 50),
        });
    let enforcing_5xx = pct(
        &od.enforcing_consecutive_5xx,
        "enforcing_consecutive_5xx",
        100,
    )?;
    let consecutive_5xx = (enforcing_5xx > 0).then(|| ConsecutiveEjection {
        consecutive: num(&od.consecutive_5xx, 5),
        enforcement_percentage: enforcing_5xx,
    });
    let enforcing_gw = pct(
        &od.enforcing_consecutive_gateway_failure,
        "enforcing_consecutive_gateway_failure",
        0,
    )?;
    let consecutive_gateway_failure = (enforcing_gw > 0).then(|| ConsecutiveEjection {
        consecutive: num(&od.consecutive_gateway_failure, 5),
        enforcement_percentage: enforcing_gw,
    });

    unsupported_fields!(uns, p, od, {
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        enforcing_failure_percentage_local_origin,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    })?;

    Ok(OutlierDetection {
        interval,
        base_ejection_time,
        max_ejection_time,
        max_ejection_percent,
        success_rate,
        failure_percentage,
        consecutive_5xx,
        consecutive_gateway_failure,
    })
}

/// The transport socket: `UpstreamTlsContext` (any socket name; gRPC insists on
/// `envoy.transport_sockets.tls`, Envoy goes by the config type, and so do we) or
/// `RawBuffer` (plaintext).
fn upstream_tls(
    ts: &core_pb::TransportSocket,
    p: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<Option<UpstreamTls>> {
    let tp = p.field("typed_config");
    let Some(ctx) = tls_transport_socket::<tls_pb::UpstreamTlsContext>(
        ts,
        p,
        UPSTREAM_TLS_CONTEXT_TYPE_URL,
        uns,
    )?
    else {
        return Ok(None);
    };
    unsupported_fields!(uns, &tp, ctx, {
        sni,
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        max_session_keys,
    })?;

    let cp = tp.field("common_tls_context");
    let CommonTls {
        identity,
        root,
        san_matchers,
    } = common_tls(ctx.common_tls_context.as_ref(), &cp, uns)?;
    let root = root.ok_or_else(|| {
        ResourceErrorKind::invalid(
            cp.field("validation_context"),
            "a client-side TLS context needs root certificates (ca_certificate_provider_instance)",
        )
    })?;
    Ok(Some(UpstreamTls {
        identity,
        root,
        san_matchers,
    }))
}

/// A transport socket holding either the TLS context of type `tls_type_url`, decoded, or
/// `RawBuffer` (plaintext, `None`). The config type decides, as in Envoy; a socket name
/// other than `envoy.transport_sockets.tls`, which gRPC insists on, is only listed.
pub(crate) fn tls_transport_socket<M: prost::Message + Default>(
    ts: &core_pb::TransportSocket,
    p: &FieldPath<'_>,
    tls_type_url: &str,
    uns: &mut Unsupported,
) -> Result<Option<M>> {
    use core_pb::transport_socket::ConfigType;
    let tp = p.field("typed_config");
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(ResourceErrorKind::invalid(tp, "must be set"));
    };
    if any.type_url == RAW_BUFFER_TYPE_URL {
        return Ok(None);
    }
    if any.type_url != tls_type_url {
        return Err(ResourceErrorKind::unsupported(
            tp,
            format!(
                "transport socket {:?} with config type {:?}",
                ts.name, any.type_url
            ),
        ));
    }
    if ts.name != TLS_TRANSPORT_SOCKET {
        uns.note(format!("{} ({:?})", p.field("name"), ts.name));
    }
    decode_any(&tp, any, tls_type_url).map(Some)
}

/// What a `CommonTlsContext` names (gRFC A29), shared by the client (`UpstreamTlsContext`)
/// and the server (`DownstreamTlsContext`) side.
pub(crate) struct CommonTls {
    /// `tls_certificate_provider_instance` (or its deprecated twin).
    pub(crate) identity: Option<CertProviderInstance>,
    /// The root provider; `None` only when no validation context is set at all.
    pub(crate) root: Option<CertProviderInstance>,
    /// The SAN matchers of the validation context.
    pub(crate) san_matchers: Vec<StringMatcher>,
}

/// Reads the (required) `CommonTlsContext` at `cp`, rejecting what gRPC rejects (A29).
pub(crate) fn common_tls(
    common: Option<&tls_pb::CommonTlsContext>,
    cp: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<CommonTls> {
    let Some(common) = common else {
        return Err(ResourceErrorKind::invalid(cp, "must be set"));
    };
    unsupported_fields!(uns, cp, common, {
        tls_params => reject("TLS parameters"),
        custom_handshaker => reject("custom handshakers"),
        tls_certificates => reject("inline certificates (use a certificate provider instance)"),
        tls_certificate_sds_secret_configs => reject("SDS (use a certificate provider instance)"),
        tls_certificate_certificate_provider =>
            reject("certificate provider plugins (use a certificate provider instance)"),
        custom_tls_certificate_selector,
        alpn_protocols,
        key_log,
    })?;

    // The current field wins; Istio also fills the deprecated one, identically.
    let identity = match (
        &common.tls_certificate_provider_instance,
        &common.tls_certificate_certificate_provider_instance,
    ) {
        (Some(i), _) => Some(instance(
            &i.instance_name,
            &i.certificate_name,
            &cp.field("tls_certificate_provider_instance"),
        )?),
        (None, Some(i)) => Some(instance(
            &i.instance_name,
            &i.certificate_name,
            &cp.field("tls_certificate_certificate_provider_instance"),
        )?),
        (None, None) => None,
    };

    use tls_pb::common_tls_context::ValidationContextType as V;
    let mut san_matchers = Vec::new();
    let root = match &common.validation_context_type {
        Some(V::ValidationContext(vc)) => {
            let vp = cp.field("validation_context");
            let root = validation_context(vc, &vp, &mut san_matchers, uns)?;
            root.ok_or_else(|| {
                ResourceErrorKind::invalid(
                    vp.field("ca_certificate_provider_instance"),
                    "must be set",
                )
            })?
        }
        Some(V::CombinedValidationContext(combined)) => {
            let vp = cp.field("combined_validation_context");
            if combined.validation_context_sds_secret_config.is_some() {
                return Err(ResourceErrorKind::unsupported(
                    vp.field("validation_context_sds_secret_config"),
                    "SDS (use a certificate provider instance)",
                ));
            }
            if combined.validation_context_certificate_provider.is_some() {
                return Err(ResourceErrorKind::unsupported(
                    vp.field("validation_context_certificate_provider"),
                    "certificate provider plugins (use a certificate provider instance)",
                ));
            }
            let from_default = match &combined.default_validation_context {
                Some(vc) => validation_context(
                    vc,
                    &vp.field("default_validation_context"),
                    &mut san_matchers,
                    uns,
                )?,
                None => None,
            };
            match (
                from_default,
                &combined.validation_context_certificate_provider_instance,
            ) {
                (Some(root), _) => root,
                (None, Some(i)) => instance(
                    &i.instance_name,
                    &i.certificate_name,
                    &vp.field("validation_context_certificate_provider_instance"),
                )?,
                (None, None) => {
                    return Err(ResourceErrorKind::invalid(
                        vp.field("default_validation_context.ca_certificate_provider_instance"),
                        "must be set",
                    ));
                }
            }
        }
        Some(V::ValidationContextCertificateProviderInstance(i)) => instance(
            &i.instance_name,
            &i.certificate_name,
            &cp.field("validation_context_certificate_provider_instance"),
        )?,
        Some(V::ValidationContextSdsSecretConfig(_)) => {
            return Err(ResourceErrorKind::unsupported(
                cp.field("validation_context_sds_secret_config"),
                "SDS (use a certificate provider instance)",
            ));
        }
        Some(V::ValidationContextCertificateProvider(_)) => {
            return Err(ResourceErrorKind::unsupported(
                cp.field("validation_context_certificate_provider"),
                "certificate provider plugins (use a certificate provider instance)",
            ));
        }
        None => {
            return Ok(CommonTls {
                identity,
                root: None,
                san_matchers,
            });
        }
    };
    Ok(CommonTls {
        identity,
        root: Some(root),
        san_matchers,
    })
}

fn instance(
    instance_name: &str,
    certificate_name: &str,
    p: &FieldPath<'_>,
) -> Result<CertProviderInstance> {
    if instance_name.is_empty() {
        return Err(ResourceErrorKind::invalid(
            p.field("instance_name"),
            "must not be empty",
        ));
    }
    Ok(CertProviderInstance {
        instance_name: instance_name.to_owned(),
        certificate_name: certificate_name.to_owned(),
    })
}

/// Reads a `CertificateValidationContext`: returns its root provider and appends its SAN
/// matchers (both `match_subject_alt_names` and `match_typed_subject_alt_names`, whose SAN
/// type is not kept: a matcher accepts any SAN type).
fn validation_context(
    vc: &tls_pb::CertificateValidationContext,
    p: &FieldPath<'_>,
    san_matchers: &mut Vec<StringMatcher>,
    uns: &mut Unsupported,
) -> Result<Option<CertProviderInstance>> {
    unsupported_fields!(uns, p, vc, {
        verify_certificate_spki => reject("SPKI pinning"),
        verify_certificate_hash => reject("certificate hash pinning"),
        // An explicit `false` asks for nothing.
        require_signed_certificate_timestamp = vc
            .require_signed_certificate_timestamp
            .as_ref()
            .is_some_and(|b| b.value) => reject("signed certificate timestamps"),
        crl => reject("certificate revocation lists"),
        custom_validator_config => reject("custom certificate validators"),
        trusted_ca,
        watched_directory,
        system_root_certs,
        allow_expired_certificate,
        max_verify_depth,
    })?;

    for (i, m) in vc.match_subject_alt_names.iter().enumerate() {
        let m = StringMatcher::from_proto(&p.at("match_subject_alt_names", i), m)?;
        if !san_matchers.contains(&m) {
            san_matchers.push(m);
        }
    }
    for (i, typed) in vc.match_typed_subject_alt_names.iter().enumerate() {
        let tp = p.at("match_typed_subject_alt_names", i);
        let mp = tp.field("matcher");
        let Some(m) = &typed.matcher else {
            return Err(ResourceErrorKind::invalid(mp, "must be set"));
        };
        let m = StringMatcher::from_proto(&mp, m)?;
        if !san_matchers.contains(&m) {
            san_matchers.push(m);
        }
    }
    match &vc.ca_certificate_provider_instance {
        Some(i) => Ok(Some(instance(
            &i.instance_name,
            &i.certificate_name,
            &p.field("ca_certificate_provider_instance"),
        )?)),
        None => Ok(None),
    }
}
