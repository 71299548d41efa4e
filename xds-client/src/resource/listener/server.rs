//! Server-side listeners (gRFC A36): a `Listener` without an `api_listener`, whose filter
//! chains say how an xDS-enabled server treats each accepted connection.
//!
//! The server Listener is its own type, [`ServerListener`], rather than a variant of
//! [`Listener`](super::Listener): the two share a resource type but nothing a user reads (a
//! client listener is a route source and filters, a server listener an address and filter
//! chains), so one enum would make every client-side reader match on a kind it never sees.
//! Which one a `Listener` proto is follows from `api_listener` being set.
//!
//! What is NACKed and what only makes a chain unusable follows grpc-go
//! (`xdsresource/filter_chain.go`): a chain matching on `destination_port`, `server_names`,
//! a `transport_protocol` other than `raw_buffer`, or `application_protocols` can never
//! match a gRPC server's connection, so it is dropped (and listed in `unsupported_fields`);
//! two usable chains with the same match criteria are a NACK, as is anything malformed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use prost::Message as _;

use super::{
    ConnectionManager, HTTP_CONNECTION_MANAGER_TYPE_URL, RouteSource, Side, connection_manager,
};
use crate::resource::cluster::{
    CertProviderInstance, CommonTls, RAW_BUFFER_TYPE_URL, TLS_TRANSPORT_SOCKET, common_tls,
};
use crate::resource::rbac::{CidrRange, RbacConfig};
use crate::resource::{
    FieldPath, ResourceError, ResourceErrorKind, Result, Unsupported, decode_any,
    unsupported_fields,
};

/// The most filter chains a server Listener may hold; more is a NACK. Istio sends two per
/// inbound port (mTLS and plaintext); the cap only bounds hostile input.
pub const MAX_FILTER_CHAINS: usize = 1024;
/// The most entries in each of a `FilterChainMatch`'s lists (`prefix_ranges`,
/// `source_prefix_ranges`, `source_ports`); more is a NACK.
pub const MAX_MATCH_LIST_LEN: usize = 1024;
/// The most match combinations (destination prefix x source type x source prefix x source
/// port) all the chains of one Listener expand to while checking that no two chains match
/// the same connections; more is a NACK. It bounds the check's memory and time, which the
/// per-list caps alone do not (their product is unbounded in practice).
pub const MAX_FILTER_CHAIN_MATCHES: usize = 65_536;

/// The type URL of the TLS context a server's transport socket may hold.
const DOWNSTREAM_TLS_CONTEXT_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// The only network filter a gRPC server runs.
const HTTP_CONNECTION_MANAGER_FILTER: &str = "envoy.filters.network.http_connection_manager";

/// A validated server-side `envoy.config.listener.v3.Listener` (gRFC A36).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerListener {
    /// The resource name (Istio: `xds.istio.io/grpc/lds/inbound/0.0.0.0:7070`).
    pub name: String,
    /// `address.socket_address`: where the server listens. The server checks it against its
    /// own listening address (A36); decoding only checks it is an IP and port.
    pub address: SocketAddr,
    /// The usable filter chains, in order. Chains that can never match a gRPC connection are
    /// left out (and listed in `unsupported_fields`).
    pub filter_chains: Vec<FilterChain>,
    /// The chain for connections no other chain matches; without one such connections are
    /// closed.
    pub default_filter_chain: Option<FilterChain>,
    /// Set-but-unimplemented field paths and dropped chains (see
    /// [`Resource::unsupported_fields`](crate::resource::Resource::unsupported_fields)).
    pub unsupported_fields: Vec<String>,
}

/// One filter chain: which connections it takes, their TLS, and their HTTP handling.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterChain {
    /// The chain's name (Istio: `inbound-mtls`, `inbound-plaintext`); may be empty.
    pub name: String,
    /// The connections it matches (all of them for the default chain).
    pub filter_match: FilterChainMatch,
    /// TLS from the `DownstreamTlsContext`; `None` is plaintext.
    pub tls: Option<DownstreamTls>,
    /// Where the routes come from.
    pub route: RouteSource,
    /// The HTTP filters in order, ending with the router.
    pub http_filters: Vec<ServerHttpFilter>,
    /// `common_http_protocol_options.max_stream_duration`; `None` when unset or zero.
    pub max_stream_duration: Option<Duration>,
}

/// The criteria of a `FilterChainMatch` a gRPC server evaluates. An empty list matches
/// anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterChainMatch {
    /// `prefix_ranges`: the connection's local (destination) address.
    pub prefix_ranges: Vec<CidrRange>,
    /// `source_type`.
    pub source_type: SourceType,
    /// `source_prefix_ranges`: the peer's address.
    pub source_prefix_ranges: Vec<CidrRange>,
    /// `source_ports`: the peer's port.
    pub source_ports: Vec<u16>,
}

/// `FilterChainMatch.ConnectionSourceType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SourceType {
    /// Any peer.
    #[default]
    Any,
    /// A peer on the same host: its address is the local address or a loopback one.
    SameIpOrLoopback,
    /// Any other peer.
    External,
}

/// A server's TLS from a `DownstreamTlsContext` (gRFC A29).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamTls {
    /// The server's certificate.
    pub identity: CertProviderInstance,
    /// The roots that verify client certificates; `None` when clients are not verified.
    pub root: Option<CertProviderInstance>,
    /// `require_client_certificate`: mTLS; always comes with a `root`.
    pub require_client_certificate: bool,
}

/// One HTTP filter of a server's connection manager.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerHttpFilter {
    /// The filter's instance name (Istio: `envoy.filters.http.rbac.DENY`).
    pub name: String,
    /// What it does.
    pub config: ServerHttpFilterConfig,
}

/// The HTTP filters an xDS-enabled server runs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerHttpFilterConfig {
    /// RBAC (gRFC A41).
    Rbac(RbacConfig),
    /// The router (terminal); on a server it only checks the route is `non_forwarding`.
    Router,
}

impl ServerListener {
    /// Decodes and validates a server Listener's protobuf bytes; a Listener with an
    /// `api_listener` is a client one and is rejected.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, ResourceError> {
        let l = listener_pb::Listener::decode(bytes)
            .map_err(|e| ResourceError::new(None, ResourceErrorKind::decode("", e)))?;
        if l.name.is_empty() {
            return Err(ResourceError::new(
                None,
                ResourceErrorKind::invalid("name", "must not be empty"),
            ));
        }
        validate(&l).map_err(|kind| ResourceError::new(Some(l.name.clone()), kind))
    }
}

fn validate(l: &listener_pb::Listener) -> Result<ServerListener> {
    let root = FieldPath::ROOT;
    if l.api_listener.is_some() {
        return Err(ResourceErrorKind::invalid(
            root.field("api_listener"),
            "a server Listener has no api_listener (this is a client-side listener)",
        ));
    }
    let mut uns = Unsupported::default();
    unsupported_fields!(uns, &root, l, {
        listener_filters,
        access_log,
        socket_options,
        additional_addresses,
        per_connection_buffer_limit_bytes,
    })?;
    let address = address(&root.field("address"), l.address.as_ref())?;

    if l.filter_chains.len() > MAX_FILTER_CHAINS {
        return Err(ResourceErrorKind::invalid(
            root.field("filter_chains"),
            format!(
                "{} filter chains, more than the {MAX_FILTER_CHAINS} allowed",
                l.filter_chains.len()
            ),
        ));
    }
    let mut filter_chains = Vec::with_capacity(l.filter_chains.len());
    let mut seen = MatchSet::default();
    for (i, fc) in l.filter_chains.iter().enumerate() {
        let fp = root.at("filter_chains", i);
        let fcm = fc.filter_chain_match.clone().unwrap_or_default();
        let mp = fp.field("filter_chain_match");
        if let Some(reason) = unusable(&fcm) {
            uns.note(format!("{fp} (dropped: matches on {reason})"));
            continue;
        }
        let filter_match = filter_chain_match(&mp, &fcm)?;
        seen.insert(&fp, i, &filter_match)?;
        filter_chains.push(filter_chain(&fp, fc, filter_match, &mut uns)?);
    }
    let default_filter_chain = match &l.default_filter_chain {
        Some(fc) => {
            let fp = root.field("default_filter_chain");
            // Its match is never evaluated (Envoy and gRPC alike).
            unsupported_fields!(uns, &fp, fc, { filter_chain_match })?;
            Some(filter_chain(
                &fp,
                fc,
                FilterChainMatch::default(),
                &mut uns,
            )?)
        }
        None => None,
    };
    if filter_chains.is_empty() && default_filter_chain.is_none() {
        // Not a NACK in grpc-go either: the server then closes every connection.
        uns.note("filter_chains (no usable filter chain and no default)".to_owned());
    }
    Ok(ServerListener {
        name: l.name.clone(),
        address,
        filter_chains,
        default_filter_chain,
        unsupported_fields: uns.into_vec(),
    })
}

/// `address` must be a TCP socket address with an IP and a port number (A36).
fn address(p: &FieldPath<'_>, a: Option<&core_pb::Address>) -> Result<SocketAddr> {
    use core_pb::address::Address;
    use core_pb::socket_address::{PortSpecifier, Protocol};
    let Some(Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(ResourceErrorKind::invalid(
            p.field("socket_address"),
            "must be set (a server Listener listens on a socket address)",
        ));
    };
    let sp = p.field("socket_address");
    if sa.protocol != Protocol::Tcp as i32 {
        return Err(ResourceErrorKind::unsupported(
            sp.field("protocol"),
            "a protocol other than TCP",
        ));
    }
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
    let port = match &sa.port_specifier {
        Some(PortSpecifier::PortValue(port)) => u16::try_from(*port).map_err(|_| {
            ResourceErrorKind::invalid(
                sp.field("port_value"),
                format!("{port} is not a port number"),
            )
        })?,
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(ResourceErrorKind::unsupported(
                sp.field("named_port"),
                "named ports",
            ));
        }
        None => {
            return Err(ResourceErrorKind::invalid(
                sp.field("port_value"),
                "must be set",
            ));
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Why a chain can never match a gRPC server's connection, if it cannot. gRPC has no TLS
/// inspector, so SNI, transport protocol and ALPN are unknown when a chain is chosen; the
/// destination port is the listener's own. The address-suffix and direct-source matchers
/// are ones meshwork does not evaluate: a chain using them is dropped rather than matched
/// more widely than it asks (grpc-go ignores them, which widens it).
fn unusable(m: &listener_pb::FilterChainMatch) -> Option<&'static str> {
    if m.destination_port.as_ref().is_some_and(|p| p.value != 0) {
        Some("destination_port")
    } else if !m.server_names.is_empty() {
        Some("server_names")
    } else if !m.transport_protocol.is_empty() && m.transport_protocol != "raw_buffer" {
        Some("transport_protocol")
    } else if !m.application_protocols.is_empty() {
        Some("application_protocols")
    } else if !m.direct_source_prefix_ranges.is_empty() {
        Some("direct_source_prefix_ranges")
    } else if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
        Some("address_suffix")
    } else {
        None
    }
}

fn filter_chain_match(
    p: &FieldPath<'_>,
    m: &listener_pb::FilterChainMatch,
) -> Result<FilterChainMatch> {
    use listener_pb::filter_chain_match::ConnectionSourceType;
    let source_type = match ConnectionSourceType::try_from(m.source_type) {
        Ok(ConnectionSourceType::Any) => SourceType::Any,
        Ok(ConnectionSourceType::SameIpOrLoopback) => SourceType::SameIpOrLoopback,
        Ok(ConnectionSourceType::External) => SourceType::External,
        Err(_) => {
            return Err(ResourceErrorKind::invalid(
                p.field("source_type"),
                format!("unknown source type {}", m.source_type),
            ));
        }
    };
    for (name, len) in [
        ("prefix_ranges", m.prefix_ranges.len()),
        ("source_prefix_ranges", m.source_prefix_ranges.len()),
        ("source_ports", m.source_ports.len()),
    ] {
        if len > MAX_MATCH_LIST_LEN {
            return Err(ResourceErrorKind::invalid(
                p.field(name),
                format!("{len} entries, more than the {MAX_MATCH_LIST_LEN} allowed"),
            ));
        }
    }
    let ranges = |name: &'static str, list: &[core_pb::CidrRange]| {
        list.iter()
            .enumerate()
            .map(|(i, c)| cidr(&p.at(name, i), c))
            .collect::<Result<Vec<_>>>()
    };
    let source_ports = m
        .source_ports
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            u16::try_from(port).map_err(|_| {
                ResourceErrorKind::invalid(
                    p.at("source_ports", i),
                    format!("{port} is not a port number"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(FilterChainMatch {
        prefix_ranges: ranges("prefix_ranges", &m.prefix_ranges)?,
        source_type,
        source_prefix_ranges: ranges("source_prefix_ranges", &m.source_prefix_ranges)?,
        source_ports,
    })
}

fn cidr(p: &FieldPath<'_>, c: &core_pb::CidrRange) -> Result<CidrRange> {
    let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
        ResourceErrorKind::invalid(
            p.field("address_prefix"),
            format!("{:?} is not an IP address", c.address_prefix),
        )
    })?;
    let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
    u8::try_from(len)
        .ok()
        .and_then(|len| CidrRange::new(addr, len))
        .ok_or_else(|| {
            ResourceErrorKind::invalid(
                p.field("prefix_len"),
                format!("prefix length {len} is too long for {addr}"),
            )
        })
}

/// One point of the match space: destination prefix, source type, source prefix, source
/// port (`None`: unspecified).
type MatchKey = (
    Option<(IpAddr, u8)>,
    SourceType,
    Option<(IpAddr, u8)>,
    Option<u16>,
);

/// The match criteria of the chains so far, expanded, with the chain holding each (A36: two
/// chains with the same criteria are a NACK, as in grpc-go and Envoy).
#[derive(Default)]
struct MatchSet(HashMap<MatchKey, usize>);

impl MatchSet {
    fn insert(&mut self, p: &FieldPath<'_>, chain: usize, m: &FilterChainMatch) -> Result<()> {
        fn or_unspecified<T: Copy>(list: &[T]) -> Vec<Option<T>> {
            if list.is_empty() {
                vec![None]
            } else {
                list.iter().copied().map(Some).collect()
            }
        }
        let key = |c: CidrRange| (c.prefix(), c.prefix_len());
        let dst = or_unspecified(&m.prefix_ranges);
        let src = or_unspecified(&m.source_prefix_ranges);
        let ports = or_unspecified(&m.source_ports);
        let combos = dst.len() * src.len() * ports.len();
        if self.0.len() + combos > MAX_FILTER_CHAIN_MATCHES {
            return Err(ResourceErrorKind::invalid(
                p.field("filter_chain_match"),
                format!(
                    "the filter chains expand to more than {MAX_FILTER_CHAIN_MATCHES} match combinations"
                ),
            ));
        }
        for d in &dst {
            for s in &src {
                for port in &ports {
                    let k = (d.map(key), m.source_type, s.map(key), *port);
                    match self.0.insert(k, chain) {
                        Some(other) if other != chain => {
                            return Err(ResourceErrorKind::invalid(
                                p.field("filter_chain_match"),
                                format!(
                                    "matches the same connections as filter_chains[{other}] \
                                     (overlapping filter chain match criteria)"
                                ),
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

fn filter_chain(
    p: &FieldPath<'_>,
    fc: &listener_pb::FilterChain,
    filter_match: FilterChainMatch,
    uns: &mut Unsupported,
) -> Result<FilterChain> {
    unsupported_fields!(uns, p, fc, {
        use_proxy_proto,
        metadata,
        transport_socket_connect_timeout,
    })?;
    let tls = match &fc.transport_socket {
        Some(ts) => downstream_tls(&p.field("transport_socket"), ts, uns)?,
        None => None,
    };
    let ConnectionManager {
        route,
        http_filters,
        max_stream_duration,
    } = network_filters(p, &fc.filters, uns)?;
    let http_filters = http_filters
        .into_iter()
        .map(|f| ServerHttpFilter {
            config: match f.rbac {
                Some(rbac) => ServerHttpFilterConfig::Rbac(rbac),
                None => ServerHttpFilterConfig::Router,
            },
            name: f.filter.name,
        })
        .collect();
    Ok(FilterChain {
        name: fc.name.clone(),
        filter_match,
        tls,
        route,
        http_filters,
        max_stream_duration,
    })
}

/// A36: the network filters are exactly one `HttpConnectionManager`; any other network
/// filter is a NACK (gRPC runs no other; `envoy.config.listener.v3.Filter` has no
/// `is_optional`).
fn network_filters(
    p: &FieldPath<'_>,
    filters: &[listener_pb::Filter],
    uns: &mut Unsupported,
) -> Result<ConnectionManager> {
    use listener_pb::filter::ConfigType;
    let [f] = filters else {
        return Err(ResourceErrorKind::invalid(
            p.field("filters"),
            format!(
                "{} network filters; a gRPC server needs exactly one, the {HTTP_CONNECTION_MANAGER_FILTER}",
                filters.len()
            ),
        ));
    };
    let fp = p.at("filters", 0);
    let tp = fp.field("typed_config");
    let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(ResourceErrorKind::invalid(tp, "must be set"));
    };
    if any.type_url != HTTP_CONNECTION_MANAGER_TYPE_URL {
        return Err(ResourceErrorKind::unsupported(
            tp,
            format!(
                "network filter {:?} with config type {:?}",
                f.name, any.type_url
            ),
        ));
    }
    let hcm: hcm_pb::HttpConnectionManager =
        decode_any(&tp, any, HTTP_CONNECTION_MANAGER_TYPE_URL)?;
    connection_manager(&hcm, &tp, uns, Side::Server)
}

/// The transport socket: `DownstreamTlsContext` or `RawBuffer` (plaintext). As on the
/// cluster side, the config type decides and an unusual socket name is only listed.
fn downstream_tls(
    p: &FieldPath<'_>,
    ts: &core_pb::TransportSocket,
    uns: &mut Unsupported,
) -> Result<Option<DownstreamTls>> {
    use core_pb::transport_socket::ConfigType;
    let tp = p.field("typed_config");
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(ResourceErrorKind::invalid(tp, "must be set"));
    };
    if any.type_url == RAW_BUFFER_TYPE_URL {
        return Ok(None);
    }
    if any.type_url != DOWNSTREAM_TLS_CONTEXT_TYPE_URL {
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
    let ctx: tls_pb::DownstreamTlsContext = decode_any(&tp, any, DOWNSTREAM_TLS_CONTEXT_TYPE_URL)?;
    use tls_pb::downstream_tls_context::OcspStaplePolicy;
    unsupported_fields!(uns, &tp, ctx, {
        // A29: gRPC has no SNI on the server side.
        require_sni = ctx.require_sni.as_ref().is_some_and(|b| b.value)
            => reject("requiring SNI"),
        ocsp_staple_policy = ctx.ocsp_staple_policy != OcspStaplePolicy::LenientStapling as i32
            => reject("OCSP stapling policies other than LENIENT_STAPLING"),
        session_ticket_keys_type,
        session_timeout,
        disable_stateful_session_resumption,
        full_scan_certs_on_sni_mismatch,
        prefer_client_ciphers,
    })?;
    let cp = tp.field("common_tls_context");
    let Some(common) = &ctx.common_tls_context else {
        return Err(ResourceErrorKind::invalid(cp, "must be set"));
    };
    let CommonTls {
        identity,
        root,
        san_matchers,
    } = common_tls(common, &cp, uns)?;
    // A29: a server checks no SAN of its clients (authorization is RBAC's).
    if !san_matchers.is_empty() {
        return Err(ResourceErrorKind::unsupported(
            cp.field("validation_context"),
            "subject alt name matchers on a server",
        ));
    }
    let Some(identity) = identity else {
        return Err(ResourceErrorKind::invalid(
            cp.field("tls_certificate_provider_instance"),
            "a server-side TLS context needs an identity certificate (must be set)",
        ));
    };
    let require_client_certificate = ctx
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    if require_client_certificate && root.is_none() {
        return Err(ResourceErrorKind::invalid(
            tp.field("require_client_certificate"),
            "requires a validation context with root certificates (ca_certificate_provider_instance)",
        ));
    }
    Ok(Some(DownstreamTls {
        identity,
        root,
        require_client_certificate,
    }))
}

#[cfg(test)]
mod tests;
