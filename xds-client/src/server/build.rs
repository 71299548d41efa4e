//! Builders for the Envoy protos a gRPC-style mesh serves, so tests, demos and users can
//! write a control plane's config in a few lines.
//!
//! Each function returns the envoy-types message with only what a proxyless client needs
//! set (ADS config sources, an `api_listener` with the router filter, EDS clusters,
//! endpoints in a weighted locality), ready for [`Snapshot`](super::Snapshot) or to be
//! changed further.
//!
//! The server side (gRFC A36, A29, A41) is shaped as istiod sends it to a proxyless gRPC
//! server: a [`server_listener`] named by the bootstrap's
//! `server_listener_resource_name_template` (Istio: `xds.istio.io/grpc/lds/inbound/%s`),
//! [`plaintext_chain`] and [`mtls_chain`] filter chains whose connection manager
//! ([`server_hcm_inline`], [`server_hcm_rds`]) runs RBAC filters ([`rbac_filter`], named
//! `envoy.filters.http.rbac.DENY` and `...ALLOW`) before the router, over routes with a
//! [`non_forwarding_route`]:
//!
//! ```
//! use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
//! use meshwork_xds::resource::ServerListener;
//! use meshwork_xds::server::build;
//! use prost::Message as _;
//!
//! let allow = build::rbac_policy(
//!     vec![build::permission_any()],
//!     vec![build::principal_name(build::exact("spiffe://example.org/ns/default/sa/client"))],
//! );
//! let hcm = build::server_hcm_inline(
//!     build::route_config(
//!         "inbound|50051||",
//!         vec![build::virtual_host("inbound|http|50051", ["*"], vec![build::non_forwarding_route("/")])],
//!     ),
//!     vec![build::rbac_filter(Action::Allow, [("ns[default]-policy[client]-rule[0]", allow)])],
//! );
//! let listener = build::server_listener(
//!     "xds.istio.io/grpc/lds/inbound/127.0.0.1:50051",
//!     "127.0.0.1:50051".parse().unwrap(),
//!     vec![build::mtls_chain("inbound-mtls", hcm, "default", true)],
//!     None,
//! );
//! let decoded = ServerListener::decode(&listener.encode_to_vec()).unwrap();
//! assert!(decoded.filter_chains[0].tls.as_ref().unwrap().require_client_certificate);
//! ```
//!
//! ```
//! use meshwork_xds::server::{Snapshot, build};
//!
//! let snapshot = Snapshot::new()
//!     .listener(build::api_listener("greeter:50051", "greeter-routes"))
//!     .route(build::route_config(
//!         "greeter-routes",
//!         vec![build::virtual_host("greeter", ["greeter:50051"], vec![build::route_to("", "greeter")])],
//!     ))
//!     .cluster(build::eds_cluster("greeter"))
//!     .endpoints(build::endpoints("greeter", &["127.0.0.1:50051".parse().unwrap()]));
//! assert_eq!(snapshot.len(), 4);
//! ```

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, Locality, SocketAddress, TransportSocket,
    address, config_source, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, Listener, filter,
};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::config::rbac::v3::{self as rbac_pb, Permission, Policy, Principal};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, NonForwardingAction, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, WeightedCluster, header_matcher, route, route_action, route_match,
    weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter_pb;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as http_pb;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use prost::{Message, Name};

use crate::resource::{HTTP_PROTOCOL_OPTIONS, UpstreamProtocol};

/// Pack a message into an `Any` with its canonical type URL.
pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// The `{ads: {}}` config source istiod and gRPC use.
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// A client-side listener: an `api_listener` holding an HttpConnectionManager whose routes
/// come from RDS resource `route_config`, with the router filter.
pub fn api_listener(name: &str, route_config: &str) -> Listener {
    listener_with(
        name,
        http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.into(),
        }),
    )
}

/// A client-side listener with its route configuration inline.
pub fn api_listener_inline(name: &str, routes: RouteConfiguration) -> Listener {
    listener_with(
        name,
        http_connection_manager::RouteSpecifier::RouteConfig(routes),
    )
}

fn listener_with(name: &str, routes: http_connection_manager::RouteSpecifier) -> Listener {
    let hcm = HttpConnectionManager {
        route_specifier: Some(routes),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    Listener {
        name: name.into(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&hcm)),
        }),
        ..Default::default()
    }
}

fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            &Router::default(),
        ))),
        ..Default::default()
    }
}

/// A route configuration.
pub fn route_config(name: &str, virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts,
        ..Default::default()
    }
}

/// A virtual host serving `domains`.
pub fn virtual_host<'a>(
    name: &str,
    domains: impl IntoIterator<Item = &'a str>,
    routes: Vec<Route>,
) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains.into_iter().map(str::to_string).collect(),
        routes,
        ..Default::default()
    }
}

/// A route sending paths with `prefix` to `cluster`.
pub fn route_to(prefix: &str, cluster: &str) -> Route {
    route_with(
        prefix_match(prefix),
        route_action::ClusterSpecifier::Cluster(cluster.into()),
    )
}

/// A route splitting paths with `prefix` across `clusters` by weight.
pub fn route_weighted(prefix: &str, clusters: &[(&str, u32)]) -> Route {
    route_with(
        prefix_match(prefix),
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(name, weight)| weighted_cluster::ClusterWeight {
                    name: (*name).into(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    )
}

/// A route sending requests whose header `name` equals `value` to `cluster`.
pub fn route_on_header(name: &str, value: &str, cluster: &str) -> Route {
    let mut matcher = prefix_match("");
    matcher.headers.push(header_exact(name, value));
    route_with(
        matcher,
        route_action::ClusterSpecifier::Cluster(cluster.into()),
    )
}

/// A server-side route (gRFC A36) for paths with `prefix`, whose action is
/// `non_forwarding_action`: the only action under which an xDS-enabled server serves the
/// call (any other action fails it).
pub fn non_forwarding_route(prefix: &str) -> Route {
    Route {
        r#match: Some(prefix_match(prefix)),
        action: Some(route::Action::NonForwardingAction(NonForwardingAction {})),
        ..Default::default()
    }
}

fn header_exact(name: &str, value: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(
            value,
        ))),
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
        ..Default::default()
    }
}

fn route_with(matcher: RouteMatch, clusters: route_action::ClusterSpecifier) -> Route {
    Route {
        r#match: Some(matcher),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(clusters),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An EDS cluster (endpoints named after the cluster, over ADS), round robin.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// An aggregate cluster (`envoy.clusters.aggregate`) over `children`, in priority order.
pub fn aggregate_cluster<S: AsRef<str>>(name: &str, children: &[S]) -> Cluster {
    let config = envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig {
        clusters: children.iter().map(|c| c.as_ref().to_owned()).collect(),
    };
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(
            cluster::CustomClusterType {
                name: "envoy.clusters.aggregate".into(),
                typed_config: Some(pack(&config)),
            },
        )),
        ..Default::default()
    }
}

/// `cluster` with SPIFFE mTLS to its endpoints as Istio configures proxyless gRPC: our SVID
/// and the roots from the bootstrap's certificate provider instance `instance`
/// (certificate names `default` and `ROOTCA`), and the server's SVID matched exactly
/// against one of `san_exact` (none: any SVID the roots accept), in
/// `match_subject_alt_names`: deprecated in Envoy, but the field Istio sends and gRPC reads.
pub fn with_upstream_tls(mut cluster: Cluster, instance: &str, san_exact: &[&str]) -> Cluster {
    let context = tls::UpstreamTlsContext {
        common_tls_context: Some(istio_tls(
            instance,
            san_exact.iter().map(|san| exact(san)).collect(),
        )),
        ..Default::default()
    };
    cluster.transport_socket = Some(tls_socket(&context));
    cluster
}

/// The TLS context istiod sends either side: our SVID (certificate name `default`) and the
/// roots (`ROOTCA`) from the bootstrap's provider instance `instance`, the peer's SVID
/// matched against `sans` (none: any SVID the roots accept).
#[allow(deprecated)]
fn istio_tls(instance: &str, sans: Vec<StringMatcher>) -> tls::CommonTlsContext {
    let provider = |certificate_name: &str| {
        Some(tls::CertificateProviderPluginInstance {
            instance_name: instance.into(),
            certificate_name: certificate_name.into(),
        })
    };
    tls::CommonTlsContext {
        tls_certificate_provider_instance: provider("default"),
        validation_context_type: Some(
            tls::common_tls_context::ValidationContextType::ValidationContext(
                tls::CertificateValidationContext {
                    ca_certificate_provider_instance: provider("ROOTCA"),
                    match_subject_alt_names: sans,
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

fn tls_socket<M: Message + Name>(context: &M) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(context))),
    }
}

/// `cluster` with Envoy's `HttpProtocolOptions` under
/// `typed_extension_protocol_options`, asking for `protocol` (explicit HTTP/1.1 or HTTP/2,
/// auto, or downstream); [`UpstreamProtocol::Unspecified`] removes the options.
pub fn with_http_protocol(mut cluster: Cluster, protocol: UpstreamProtocol) -> Cluster {
    use http_pb::http_protocol_options::{
        AutoHttpConfig, ExplicitHttpConfig, UpstreamProtocolOptions as Upo,
        UseDownstreamHttpConfig, explicit_http_config::ProtocolConfig,
    };
    let explicit = |config| {
        Some(Upo::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(config),
        }))
    };
    let options = match protocol {
        UpstreamProtocol::Http1 => {
            explicit(ProtocolConfig::HttpProtocolOptions(Default::default()))
        }
        UpstreamProtocol::Http2 => {
            explicit(ProtocolConfig::Http2ProtocolOptions(Default::default()))
        }
        UpstreamProtocol::Auto => Some(Upo::AutoConfig(AutoHttpConfig::default())),
        UpstreamProtocol::Downstream => Some(Upo::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig::default(),
        )),
        _ => {
            cluster
                .typed_extension_protocol_options
                .remove(HTTP_PROTOCOL_OPTIONS);
            return cluster;
        }
    };
    let message = http_pb::HttpProtocolOptions {
        upstream_protocol_options: options,
        ..Default::default()
    };
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.into(), pack(&message));
    cluster
}

/// Endpoints for `cluster`: every address healthy, weight 1, in one locality of weight 1
/// at priority 0.
pub fn endpoints(cluster: &str, addresses: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![locality_endpoints(Locality::default(), 1, 0, addresses)],
        ..Default::default()
    }
}

/// One locality's endpoints (all healthy, weight 1) with a locality weight and a priority.
pub fn locality_endpoints(
    locality: Locality,
    weight: u32,
    priority: u32,
    addresses: &[SocketAddr],
) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: Some(locality),
        lb_endpoints: addresses.iter().map(|a| lb_endpoint(*a)).collect(),
        load_balancing_weight: Some(UInt32Value { value: weight }),
        priority,
        ..Default::default()
    }
}

/// One healthy endpoint.
pub fn lb_endpoint(address: SocketAddr) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(address)),
            ..Default::default()
        })),
        health_status: 1, // HEALTHY
        ..Default::default()
    }
}

/// An Envoy `Address` for a socket address.
pub fn socket_address(address: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(
                address.port().into(),
            )),
            ..Default::default()
        })),
    }
}

/// A server-side Listener (gRFC A36): no `api_listener`, the address the server listens on,
/// and the filter chains that decide, per accepted connection, its TLS and HTTP handling.
/// `name` is the bootstrap's `server_listener_resource_name_template` expanded with
/// `address` (see `Bootstrap::server_listener_resource_name`); a connection no chain
/// matches takes `default_chain`, or is closed when there is none.
pub fn server_listener(
    name: &str,
    address: SocketAddr,
    filter_chains: Vec<FilterChain>,
    default_chain: Option<FilterChain>,
) -> Listener {
    Listener {
        name: name.into(),
        address: Some(socket_address(address)),
        filter_chains,
        default_filter_chain: default_chain,
        ..Default::default()
    }
}

/// A filter chain named `name` (Istio: `inbound-plaintext`) matching every connection,
/// without TLS, whose only network filter is the connection manager `hcm`.
pub fn plaintext_chain(name: &str, hcm: HttpConnectionManager) -> FilterChain {
    FilterChain {
        name: name.into(),
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))),
        }],
        ..Default::default()
    }
}

/// [`plaintext_chain`] with TLS, as istiod's `inbound-mtls` chain: a `DownstreamTlsContext`
/// whose identity (certificate name `default`) and roots for client certificates
/// (certificate name `ROOTCA`) come from the bootstrap's certificate provider instance
/// `instance` (gRFC A29), asking for a client certificate when
/// `require_client_certificate` (Istio's STRICT mode).
pub fn mtls_chain(
    name: &str,
    hcm: HttpConnectionManager,
    instance: &str,
    require_client_certificate: bool,
) -> FilterChain {
    let context = tls::DownstreamTlsContext {
        common_tls_context: Some(istio_tls(instance, Vec::new())),
        require_client_certificate: Some(BoolValue {
            value: require_client_certificate,
        }),
        ..Default::default()
    };
    FilterChain {
        transport_socket: Some(tls_socket(&context)),
        ..plaintext_chain(name, hcm)
    }
}

/// A server's connection manager with its route configuration inline (what istiod sends):
/// `http_filters` in order, then the router, which a server's chain must end with.
pub fn server_hcm_inline(
    routes: RouteConfiguration,
    http_filters: Vec<HttpFilter>,
) -> HttpConnectionManager {
    server_hcm(
        http_connection_manager::RouteSpecifier::RouteConfig(routes),
        http_filters,
    )
}

/// [`server_hcm_inline`] with the routes from RDS resource `route_config` over ADS.
pub fn server_hcm_rds(route_config: &str, http_filters: Vec<HttpFilter>) -> HttpConnectionManager {
    server_hcm(
        http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.into(),
        }),
        http_filters,
    )
}

fn server_hcm(
    routes: http_connection_manager::RouteSpecifier,
    mut http_filters: Vec<HttpFilter>,
) -> HttpConnectionManager {
    http_filters.push(router_filter());
    HttpConnectionManager {
        route_specifier: Some(routes),
        http_filters,
        ..Default::default()
    }
}

/// An RBAC HTTP filter (gRFC A41) enforcing `policies` (by name) with `action`, named as
/// istiod names them: `envoy.filters.http.rbac.ALLOW`, `...DENY` or `...LOG`. Istio sends
/// the DENY filter before the ALLOW one.
pub fn rbac_filter<'a>(
    action: Action,
    policies: impl IntoIterator<Item = (&'a str, Policy)>,
) -> HttpFilter {
    let config = rbac_filter_pb::Rbac {
        rules: Some(rbac_pb::Rbac {
            action: action as i32,
            policies: policies
                .into_iter()
                .map(|(name, policy)| (name.to_owned(), policy))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    HttpFilter {
        name: format!("envoy.filters.http.rbac.{}", action.as_str_name()),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&config))),
        ..Default::default()
    }
}

/// An RBAC policy: it matches a request when one of `permissions` (what it does) and one
/// of `principals` (who sends it) match.
pub fn rbac_policy(permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
    Policy {
        permissions,
        principals,
        ..Default::default()
    }
}

/// The permission every request has.
pub fn permission_any() -> Permission {
    Permission {
        rule: Some(rbac_pb::permission::Rule::Any(true)),
    }
}

/// The permission of requests whose header `name` equals `value`.
pub fn permission_header(name: &str, value: &str) -> Permission {
    Permission {
        rule: Some(rbac_pb::permission::Rule::Header(header_exact(name, value))),
    }
}

/// The permission of requests whose path (for gRPC `/package.Service/Method`) `path`
/// matches.
pub fn permission_url_path(path: StringMatcher) -> Permission {
    Permission {
        rule: Some(rbac_pb::permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(path)),
        })),
    }
}

/// Every caller.
pub fn principal_any() -> Principal {
    Principal {
        identifier: Some(rbac_pb::principal::Identifier::Any(true)),
    }
}

/// Callers over TLS whose certificate's identity (its SPIFFE URI SAN first, gRFC A41)
/// `name` matches: `authenticated.principal_name`, as Istio writes a `principals` rule.
pub fn principal_name(name: StringMatcher) -> Principal {
    Principal {
        identifier: Some(rbac_pb::principal::Identifier::Authenticated(
            rbac_pb::principal::Authenticated {
                principal_name: Some(name),
            },
        )),
    }
}

/// Callers whose requests carry header `name` equal to `value`.
pub fn principal_header(name: &str, value: &str) -> Principal {
    Principal {
        identifier: Some(rbac_pb::principal::Identifier::Header(header_exact(
            name, value,
        ))),
    }
}

/// A case-sensitive exact string matcher.
pub fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(value.into())),
        ignore_case: false,
    }
}

/// A string matcher on the RE2 regex `regex`, matched against the whole string (Istio
/// writes `spiffe://cluster.local/ns/default/sa/.*` for a namespace).
pub fn safe_regex(regex: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: regex.into(),
            engine_type: None,
        })),
        ignore_case: false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use prost::Message as _;

    use super::*;
    use crate::resource::{
        self, CertProviderInstance, HeaderMatchKind, Permission, Principal, RbacAction,
        RouteSource, ServerHttpFilterConfig, ServerListener,
    };

    const NAME: &str = "xds.istio.io/grpc/lds/inbound/127.0.0.1:7070";

    fn addr() -> SocketAddr {
        "127.0.0.1:7070".parse().unwrap()
    }

    fn decode(listener: &Listener) -> ServerListener {
        ServerListener::decode(&listener.encode_to_vec())
            .unwrap_or_else(|e| panic!("the builders' Listener must decode: {e}"))
    }

    fn inbound_routes() -> RouteConfiguration {
        route_config(
            "inbound|7070||",
            vec![virtual_host(
                "inbound|http|7070",
                ["*"],
                vec![non_forwarding_route("/")],
            )],
        )
    }

    /// Istio's STRICT shape: DENY then ALLOW, principals exact and by regex, permissions on
    /// a header, a path and anything; an mTLS chain and a plaintext default chain.
    fn istio_filters() -> Vec<HttpFilter> {
        vec![
            rbac_filter(
                Action::Deny,
                [(
                    "ns[default]-policy[deny]-rule[0]",
                    rbac_policy(
                        vec![permission_header("x-user", "mallory")],
                        vec![principal_any()],
                    ),
                )],
            ),
            rbac_filter(
                Action::Allow,
                [
                    (
                        "ns[default]-policy[exact]-rule[0]",
                        rbac_policy(
                            vec![permission_url_path(exact("/helloworld.Greeter/SayHello"))],
                            vec![principal_name(exact(
                                "spiffe://example.org/ns/default/sa/client",
                            ))],
                        ),
                    ),
                    (
                        "ns[default]-policy[regex]-rule[0]",
                        rbac_policy(
                            vec![permission_any()],
                            vec![
                                principal_name(safe_regex("spiffe://example.org/ns/team/.*")),
                                principal_header("x-team", "ops"),
                            ],
                        ),
                    ),
                ],
            ),
        ]
    }

    #[test]
    fn an_istio_shaped_server_listener_decodes() {
        let listener = server_listener(
            NAME,
            addr(),
            vec![mtls_chain(
                "inbound-mtls",
                server_hcm_inline(inbound_routes(), istio_filters()),
                "default",
                true,
            )],
            Some(plaintext_chain(
                "inbound-plaintext",
                server_hcm_inline(inbound_routes(), vec![]),
            )),
        );
        let l = decode(&listener);
        assert_eq!(l.name, NAME);
        assert_eq!(l.address, addr());
        assert!(
            l.unsupported_fields.is_empty(),
            "{:?}",
            l.unsupported_fields
        );

        let [mtls] = &l.filter_chains[..] else {
            panic!("one chain: {:?}", l.filter_chains)
        };
        assert_eq!(mtls.name, "inbound-mtls");
        let tls = mtls.tls.as_ref().expect("the mTLS chain has TLS");
        let instance = |certificate_name: &str| CertProviderInstance {
            instance_name: "default".into(),
            certificate_name: certificate_name.into(),
        };
        assert_eq!(tls.identity, instance("default"));
        assert_eq!(tls.root, Some(instance("ROOTCA")));
        assert!(tls.require_client_certificate);

        let names: Vec<_> = mtls.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.rbac.DENY",
                "envoy.filters.http.rbac.ALLOW",
                "envoy.filters.http.router"
            ]
        );
        let rules = |i: usize| match &mtls.http_filters[i].config {
            ServerHttpFilterConfig::Rbac(rbac) => rbac.rules.clone().expect("rules"),
            other => panic!("filter {i} is RBAC, got {other:?}"),
        };
        let deny = rules(0);
        assert_eq!(deny.action, RbacAction::Deny);
        let deny = &deny.policies["ns[default]-policy[deny]-rule[0]"];
        assert_eq!(deny.principals, [Principal::Any]);
        let [Permission::Header(header)] = &deny.permissions[..] else {
            panic!("{:?}", deny.permissions)
        };
        assert_eq!(header.name, "x-user");
        assert!(
            matches!(&header.kind, HeaderMatchKind::StringMatch(m) if m.matches("mallory") && !m.matches("alice"))
        );

        let allow = rules(1);
        assert_eq!(allow.action, RbacAction::Allow);
        let by_exact = &allow.policies["ns[default]-policy[exact]-rule[0]"];
        let [Permission::UrlPath(path)] = &by_exact.permissions[..] else {
            panic!("{:?}", by_exact.permissions)
        };
        assert!(path.matches("/helloworld.Greeter/SayHello"));
        assert!(!path.matches("/helloworld.Greeter/SayHelloAgain"));
        let principal = |p: &Principal| match p {
            Principal::Authenticated {
                principal_name: Some(name),
            } => name.clone(),
            other => panic!("an authenticated principal, got {other:?}"),
        };
        let exact_name = principal(&by_exact.principals[0]);
        assert!(exact_name.matches("spiffe://example.org/ns/default/sa/client"));
        assert!(!exact_name.matches("spiffe://example.org/ns/default/sa/client2"));
        let by_regex = &allow.policies["ns[default]-policy[regex]-rule[0]"];
        assert_eq!(by_regex.permissions, [Permission::Any]);
        let regex = principal(&by_regex.principals[0]);
        assert!(regex.matches("spiffe://example.org/ns/team/sa/anyone"));
        assert!(!regex.matches("spiffe://example.org/ns/default/sa/client"));
        assert!(matches!(&by_regex.principals[1], Principal::Header(h) if h.name == "x-team"));

        let RouteSource::Inline(routes) = &mtls.route else {
            panic!("inline routes: {:?}", mtls.route)
        };
        assert_eq!(
            routes.virtual_hosts[0].routes[0].action,
            resource::RouteAction::NonForwarding
        );

        let default = l.default_filter_chain.expect("the default chain");
        assert_eq!(default.name, "inbound-plaintext");
        assert_eq!(default.tls, None);
        let names: Vec<_> = default.http_filters.iter().map(|f| &f.name).collect();
        assert_eq!(names, ["envoy.filters.http.router"]);
    }

    #[test]
    fn a_permissive_chain_with_rds_decodes() {
        let listener = server_listener(
            NAME,
            addr(),
            vec![mtls_chain(
                "inbound-tls",
                server_hcm_rds("inbound-routes", vec![]),
                "identity",
                false,
            )],
            None,
        );
        let l = decode(&listener);
        let chain = &l.filter_chains[0];
        let tls = chain.tls.as_ref().unwrap();
        assert_eq!(tls.identity.instance_name, "identity");
        assert!(!tls.require_client_certificate);
        assert_eq!(
            chain.route,
            RouteSource::Rds {
                route_config_name: "inbound-routes".into()
            }
        );
        // The same route configuration is what RDS would send.
        let decoded = match resource::decode(
            resource::ResourceType::RouteConfiguration,
            &pack(&inbound_routes()),
        ) {
            Ok(resource::Resource::RouteConfiguration(rc)) => rc,
            other => panic!("a route configuration, got {other:?}"),
        };
        assert_eq!(
            decoded.virtual_hosts[0].routes[0].action,
            resource::RouteAction::NonForwarding
        );
    }

    #[test]
    fn a_listener_without_chains_is_not_one_a_server_takes() {
        // Guards the builders against passing a NACKed shape off as valid.
        let listener = server_listener(NAME, addr(), vec![], None);
        assert!(ServerListener::decode(&listener.encode_to_vec()).is_err());
    }
}
