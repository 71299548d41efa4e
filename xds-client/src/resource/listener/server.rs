//! Server-side listeners (gRFC A36): a `Listener` without an `api_listener`, whose filter
//! chains say how an xDS-enabled server treats each accepted connection.
//!
//! The server Listener is its own type, [`ServerListener`], rather than a variant of
//! [`Listener`](super::Listener): the two share a resource type but nothing a user reads (a
//! client listener is a route source and filters, a server listener an address and filter
//! chains), so one enum would make every client-side reader match on a kind it never sees.
//! Which one a `Listener` proto is follows from `api_listener` being set.
//!
//! What is NACKed and what only makes a chain unusable follows A36 and grpc-go
//! (`xdsresource/unmarshal_lds.go`, `filter_chain.go`): a chain matching on
//! `destination_port`, `server_names`, a `transport_protocol` other than `raw_buffer`, or
//! `application_protocols` can never match a gRPC server's connection, so it is dropped (and
//! listed in `unsupported_fields`); on a destination prefix, a `raw_buffer` chain shadows
//! the chains without a transport protocol; two chains with the same match criteria are a
//! NACK, as is anything malformed, `listener_filters`, `use_original_dst`, and a Listener
//! left with neither a usable chain nor a default one.
//!
//! Where meshwork is stricter than grpc-go: the address must be an IP (grpc-go keeps the
//! string and compares it), ports must fit 16 bits, and a chain using a matcher meshwork
//! does not evaluate (`direct_source_prefix_ranges`, `address_suffix`) is dropped rather
//! than matched as if the matcher were absent. Like the cluster side, the transport socket
//! is judged by its config type (`RawBuffer` is plaintext) and an unusual socket name is
//! only listed, where grpc-go NACKs both.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;

use super::{
    ConnectionManager, HTTP_CONNECTION_MANAGER_TYPE_URL, RouteSource, Side, connection_manager,
    decode_with,
};
use crate::resource::cluster::{CertProviderInstance, CommonTls, common_tls, tls_transport_socket};
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
/// The most match combinations (the Cartesian product of each `FilterChainMatch`'s lists)
/// all the chains of one Listener expand to while checking that no two chains match the
/// same connections (A36); more is a NACK. It bounds the check's memory and time, which the
/// per-list caps alone do not (their product is far too large).
pub const MAX_FILTER_CHAIN_MATCHES: usize = 65_536;

/// The type URL of the TLS context a server's transport socket may hold.
const DOWNSTREAM_TLS_CONTEXT_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// The only network filter a gRPC server runs, for the messages.
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
        decode_with(bytes, validate)
    }
}

pub(super) fn validate(l: &listener_pb::Listener) -> Result<ServerListener> {
    let root = FieldPath::ROOT;
    if l.api_listener.is_some() {
        return Err(ResourceErrorKind::invalid(
            root.field("api_listener"),
            "a server Listener has no api_listener (this is a client-side listener)",
        ));
    }
    let mut uns = Unsupported::default();
    unsupported_fields!(uns, &root, l, {
        listener_filters => reject("listener filters"),
        use_original_dst = l.use_original_dst.as_ref().is_some_and(|b| b.value)
            => reject("use_original_dst"),
        access_log,
        socket_options,
        additional_addresses,
        per_connection_buffer_limit_bytes,
    })?;
    let address = address(&root.field("address"), l.address.as_ref())?;

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

    if l.filter_chains.len() > MAX_FILTER_CHAINS {
        return Err(ResourceErrorKind::invalid(
            root.field("filter_chains"),
            format!(
                "{} filter chains, more than the {MAX_FILTER_CHAINS} allowed",
                l.filter_chains.len()
            ),
        ));
    }
    let mut unique = UniqueMatches::default();
    let mut table = ChainTable::default();
    let mut kept = Vec::with_capacity(l.filter_chains.len());
    for (i, fc) in l.filter_chains.iter().enumerate() {
        let fp = root.at("filter_chains", i);
        if let Some(chain) = usable_chain(&fp, i, fc, &mut unique, &mut table, &mut uns)? {
            kept.push((i, chain));
        }
    }
    let live = table.live_destinations();
    let mut filter_chains = Vec::with_capacity(kept.len());
    for (i, mut chain) in kept {
        let dsts = live.get(&i);
        let is_live = |d: &Dst| dsts.is_some_and(|set| set.contains(d));
        let prefix_ranges = &mut chain.filter_match.prefix_ranges;
        let matches_somewhere = if prefix_ranges.is_empty() {
            is_live(&None)
        } else {
            prefix_ranges.retain(|c| is_live(&Some(dst_key(*c))));
            !prefix_ranges.is_empty()
        };
        if matches_somewhere {
            filter_chains.push(chain);
        } else {
            uns.note(format!(
                "{} (dropped: shadowed by a raw_buffer chain)",
                root.at("filter_chains", i)
            ));
        }
    }

    if filter_chains.is_empty() && default_filter_chain.is_none() {
        return Err(ResourceErrorKind::invalid(
            root.field("filter_chains"),
            "no usable filter chain and no default_filter_chain",
        ));
    }
    Ok(ServerListener {
        name: l.name.clone(),
        address,
        filter_chains,
        default_filter_chain,
        unsupported_fields: uns.into_vec(),
    })
}

/// Decodes chain `i`: `None` when it can never match a gRPC connection. Every chain is
/// validated whole and takes part in the uniqueness check, usable or not (A36: an invalid
/// entry NACKs the Listener, and an always-failing matcher still counts when checking that
/// matching has a unique result; grpc-go skips both for the chains it drops). gRPC has no
/// TLS inspector, so SNI, a transport protocol other than `raw_buffer` and ALPN are unknown
/// when a chain is chosen, and the destination port is the listener's own; the checks that
/// drop a chain run in grpc-go's order, which decides what a `raw_buffer` chain shadows.
fn usable_chain<'a>(
    fp: &FieldPath<'_>,
    i: usize,
    fc: &'a listener_pb::FilterChain,
    unique: &mut UniqueMatches<'a>,
    table: &mut ChainTable,
    uns: &mut Unsupported,
) -> Result<Option<FilterChain>> {
    let default_match = listener_pb::FilterChainMatch::default();
    let m = fc.filter_chain_match.as_ref().unwrap_or(&default_match);
    let mp = fp.field("filter_chain_match");
    let prefix_ranges = cidrs(&mp, "prefix_ranges", &m.prefix_ranges)?;
    let filter_match = filter_chain_match(&mp, m, prefix_ranges)?;
    let direct_sources = cidrs(
        &mp,
        "direct_source_prefix_ranges",
        &m.direct_source_prefix_ranges,
    )?;
    check_len(&mp, "server_names", m.server_names.len())?;
    check_len(&mp, "application_protocols", m.application_protocols.len())?;
    let chain = filter_chain(fp, fc, filter_match, uns)?;
    unique.insert(
        &mp,
        i,
        fc.filter_chain_match.as_ref(),
        &chain.filter_match,
        &direct_sources,
    )?;

    let mut drop = |why: &str| {
        uns.note(format!("{fp} (dropped: matches on {why})"));
        Ok(None)
    };
    if m.destination_port.as_ref().is_some_and(|p| p.value != 0) {
        return drop("destination_port");
    }
    if !m.server_names.is_empty() {
        return drop("server_names");
    }
    let raw_buffer = match m.transport_protocol.as_str() {
        "" => false,
        "raw_buffer" => true,
        _ => return drop("transport_protocol"),
    };
    // A raw_buffer chain claims its destination prefixes even when it is dropped below.
    let dsts = table.transport(&chain.filter_match.prefix_ranges, raw_buffer);
    if !m.application_protocols.is_empty() {
        return drop("application_protocols");
    }
    // Matchers meshwork does not evaluate: the chain is dropped rather than matched more
    // widely than it asks (grpc-go ignores them, which widens it).
    if !m.direct_source_prefix_ranges.is_empty() {
        return drop("direct_source_prefix_ranges");
    }
    if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
        return drop("address_suffix");
    }
    if dsts.is_empty() {
        uns.note(format!("{fp} (dropped: shadowed by a raw_buffer chain)"));
        return Ok(None);
    }
    table.insert(i, &dsts, &chain.filter_match);
    Ok(Some(chain))
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

fn filter_chain_match(
    p: &FieldPath<'_>,
    m: &listener_pb::FilterChainMatch,
    prefix_ranges: Vec<CidrRange>,
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
    let source_prefix_ranges = cidrs(p, "source_prefix_ranges", &m.source_prefix_ranges)?;
    check_len(p, "source_ports", m.source_ports.len())?;
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
        prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
    })
}

fn check_len(p: &FieldPath<'_>, name: &'static str, len: usize) -> Result<()> {
    if len > MAX_MATCH_LIST_LEN {
        return Err(ResourceErrorKind::invalid(
            p.field(name),
            format!("{len} entries, more than the {MAX_MATCH_LIST_LEN} allowed"),
        ));
    }
    Ok(())
}

fn cidrs(
    p: &FieldPath<'_>,
    name: &'static str,
    list: &[core_pb::CidrRange],
) -> Result<Vec<CidrRange>> {
    check_len(p, name, list.len())?;
    list.iter()
        .enumerate()
        .map(|(i, c)| cidr(&p.at(name, i), c))
        .collect()
}

/// An IPv4-mapped IPv6 prefix is taken as the IPv4 one, as grpc-go does, so its length
/// must fit IPv4.
fn cidr(p: &FieldPath<'_>, c: &core_pb::CidrRange) -> Result<CidrRange> {
    let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
        ResourceErrorKind::invalid(
            p.field("address_prefix"),
            format!("{:?} is not an IP address", c.address_prefix),
        )
    })?;
    let addr = addr.to_canonical();
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

/// One point of A36's normalized match space: every `FilterChainMatch` field, each list
/// replaced by one of its entries (`None`: the list is empty).
#[derive(PartialEq, Eq, Hash)]
struct MatchPoint<'a> {
    destination_port: u32,
    prefix: Dst,
    server_name: Option<&'a str>,
    transport_protocol: &'a str,
    application_protocol: Option<&'a str>,
    direct_source: Dst,
    source_type: SourceType,
    source: Dst,
    source_port: Option<u16>,
    address_suffix: (&'a str, Option<u32>),
}

/// A36's uniqueness rule: the chains' matchers, normalized to the Cartesian product of
/// their fields, must differ point by point, else matching has no unique result and the
/// Listener is NACKed.
#[derive(Default)]
struct UniqueMatches<'a> {
    points: HashMap<MatchPoint<'a>, usize>,
}

impl<'a> UniqueMatches<'a> {
    fn insert(
        &mut self,
        p: &FieldPath<'_>,
        chain: usize,
        m: Option<&'a listener_pb::FilterChainMatch>,
        fm: &FilterChainMatch,
        direct_sources: &[CidrRange],
    ) -> Result<()> {
        let strings =
            |f: fn(&'a listener_pb::FilterChainMatch) -> &'a [String]| m.map_or(&[][..], f);
        fn or_none<T: Copy>(list: impl ExactSizeIterator<Item = T>) -> Vec<Option<T>> {
            if list.len() == 0 {
                vec![None]
            } else {
                list.map(Some).collect()
            }
        }
        let cidr = |c: &CidrRange| dst_key(*c);
        let prefixes = or_none(fm.prefix_ranges.iter().map(cidr));
        let sources = or_none(fm.source_prefix_ranges.iter().map(cidr));
        let directs = or_none(direct_sources.iter().map(cidr));
        let ports = or_none(fm.source_ports.iter().copied());
        let names = or_none(strings(|m| &m.server_names).iter().map(String::as_str));
        let alpns = or_none(
            strings(|m| &m.application_protocols)
                .iter()
                .map(String::as_str),
        );
        let combos = [
            prefixes.len(),
            sources.len(),
            directs.len(),
            ports.len(),
            names.len(),
            alpns.len(),
        ]
        .into_iter()
        .fold(1usize, usize::saturating_mul);
        if combos > MAX_FILTER_CHAIN_MATCHES - self.points.len() {
            return Err(ResourceErrorKind::invalid(
                p,
                format!(
                    "the filter chains expand to more than {MAX_FILTER_CHAIN_MATCHES} match combinations"
                ),
            ));
        }
        let base = MatchPoint {
            destination_port: m
                .and_then(|m| m.destination_port.as_ref())
                .map_or(0, |v| v.value),
            prefix: None,
            server_name: None,
            transport_protocol: m.map_or("", |m| &m.transport_protocol),
            application_protocol: None,
            direct_source: None,
            source_type: fm.source_type,
            source: None,
            source_port: None,
            address_suffix: (
                m.map_or("", |m| &m.address_suffix),
                m.and_then(|m| m.suffix_len.as_ref()).map(|v| v.value),
            ),
        };
        for &prefix in &prefixes {
            for &server_name in &names {
                for &application_protocol in &alpns {
                    for &direct_source in &directs {
                        for &source in &sources {
                            for &source_port in &ports {
                                let point = MatchPoint {
                                    prefix,
                                    server_name,
                                    application_protocol,
                                    direct_source,
                                    source,
                                    source_port,
                                    ..base
                                };
                                if let Some(other) = self.points.insert(point, chain) {
                                    // As in grpc-go, a chain repeating one of its own
                                    // points is ambiguous too.
                                    return Err(ResourceErrorKind::invalid(
                                        p,
                                        format!(
                                            "overlapping filter chain match criteria: \
                                             filter_chains[{other}] matches the same connections"
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A destination prefix of the match space; `None` is a chain without `prefix_ranges`.
type Dst = Option<(IpAddr, u8)>;

fn dst_key(c: CidrRange) -> (IpAddr, u8) {
    (c.prefix(), c.prefix_len())
}

/// The rest of a point of the match space: source type, source prefix, source port
/// (`None`: unspecified).
type SourceKey = (SourceType, Option<(IpAddr, u8)>, Option<u16>);

/// The usable chains' match criteria, expanded point by point with the chain holding each,
/// as grpc-go builds its lookup table: on a destination prefix a `raw_buffer` chain shadows
/// the chains without a transport protocol, earlier and later ones.
#[derive(Default)]
struct ChainTable {
    /// The destination prefixes some `raw_buffer` chain has claimed.
    raw_buffer: HashSet<Dst>,
    points: HashMap<Dst, HashMap<SourceKey, usize>>,
}

fn or_unspecified<T: Copy>(list: &[T]) -> Vec<Option<T>> {
    if list.is_empty() {
        vec![None]
    } else {
        list.iter().copied().map(Some).collect()
    }
}

impl ChainTable {
    /// The destination prefixes (`prefix_ranges`, else unspecified) a chain with or
    /// without `raw_buffer` applies to; a `raw_buffer` chain claiming a prefix removes the
    /// chains without one from it.
    fn transport(&mut self, prefix_ranges: &[CidrRange], raw_buffer: bool) -> Vec<Dst> {
        let dsts: Vec<Dst> = if prefix_ranges.is_empty() {
            vec![None]
        } else {
            prefix_ranges.iter().map(|c| Some(dst_key(*c))).collect()
        };
        dsts.into_iter()
            .filter(|d| {
                if raw_buffer {
                    if self.raw_buffer.insert(*d) {
                        self.points.remove(d);
                    }
                    true
                } else {
                    !self.raw_buffer.contains(d)
                }
            })
            .collect()
    }

    /// Records the points of a usable chain; [`UniqueMatches`] has made sure no two chains
    /// share one, so a point is only ever replaced by a `raw_buffer` chain's claim.
    fn insert(&mut self, chain: usize, dsts: &[Dst], m: &FilterChainMatch) {
        for d in dsts {
            let points = self.points.entry(*d).or_default();
            for s in or_unspecified(&m.source_prefix_ranges) {
                for port in or_unspecified(&m.source_ports) {
                    points.insert((m.source_type, s.map(dst_key), port), chain);
                }
            }
        }
    }

    /// Per chain, the destination prefixes it still holds points on.
    fn live_destinations(&self) -> HashMap<usize, HashSet<Dst>> {
        let mut live: HashMap<usize, HashSet<Dst>> = HashMap::new();
        for (d, points) in &self.points {
            for chain in points.values() {
                live.entry(*chain).or_default().insert(*d);
            }
        }
        live
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

/// A36: the network filters have distinct, non-empty names, and are exactly one
/// `HttpConnectionManager`: gRPC supports no other network filter, so any other is a NACK
/// (`envoy.config.listener.v3.Filter` has no `is_optional`).
fn network_filters(
    p: &FieldPath<'_>,
    filters: &[listener_pb::Filter],
    uns: &mut Unsupported,
) -> Result<ConnectionManager> {
    use listener_pb::filter::ConfigType;
    let mut names = HashSet::with_capacity(filters.len());
    let mut first = None;
    for (i, f) in filters.iter().enumerate() {
        let fp = p.at("filters", i);
        if f.name.is_empty() {
            return Err(ResourceErrorKind::invalid(
                fp.field("name"),
                "must not be empty",
            ));
        }
        if !names.insert(f.name.as_str()) {
            return Err(ResourceErrorKind::invalid(
                fp.field("name"),
                format!("duplicate filter name {:?}", f.name),
            ));
        }
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
        if first.is_some() {
            return Err(ResourceErrorKind::invalid(
                fp,
                "a second HttpConnectionManager (a filter chain has exactly one)",
            ));
        }
        let hcm: hcm_pb::HttpConnectionManager =
            decode_any(&tp, any, HTTP_CONNECTION_MANAGER_TYPE_URL)?;
        first = Some(connection_manager(&hcm, &tp, uns, Side::Server)?);
    }
    first.ok_or_else(|| {
        ResourceErrorKind::invalid(
            p.field("filters"),
            format!("no {HTTP_CONNECTION_MANAGER_FILTER} network filter"),
        )
    })
}

/// The transport socket: `DownstreamTlsContext` or `RawBuffer` (plaintext). As on the
/// cluster side, the config type decides and an unusual socket name is only listed.
fn downstream_tls(
    p: &FieldPath<'_>,
    ts: &core_pb::TransportSocket,
    uns: &mut Unsupported,
) -> Result<Option<DownstreamTls>> {
    let tp = p.field("typed_config");
    let Some(ctx) = tls_transport_socket::<tls_pb::DownstreamTlsContext>(
        ts,
        p,
        DOWNSTREAM_TLS_CONTEXT_TYPE_URL,
        uns,
    )?
    else {
        return Ok(None);
    };
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
    let CommonTls {
        identity,
        root,
        san_matchers,
    } = common_tls(ctx.common_tls_context.as_ref(), &cp, uns)?;
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
