//! Builders for the Envoy protos a gRPC-style mesh serves, so tests, demos and users can
//! write a control plane's config in a few lines.
//!
//! Each function returns the envoy-types message with only what a proxyless client needs
//! set (ADS config sources, an `api_listener` with the router filter, EDS clusters,
//! endpoints in a weighted locality), ready for [`Snapshot`](super::Snapshot) or to be
//! changed further.
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
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster, header_matcher, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as http_pb;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
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
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                &Router::default(),
            ))),
            ..Default::default()
        }],
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
    matcher.headers.push(HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(value.into())),
                ignore_case: false,
            },
        )),
        ..Default::default()
    });
    route_with(
        matcher,
        route_action::ClusterSpecifier::Cluster(cluster.into()),
    )
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

/// `cluster` with SPIFFE mTLS to its endpoints as Istio configures proxyless gRPC: our SVID
/// and the roots from the bootstrap's certificate provider instance `instance`
/// (certificate names `default` and `ROOTCA`), and the server's SVID matched exactly
/// against one of `san_exact` (none: any SVID the roots accept), in
/// `match_subject_alt_names`: deprecated in Envoy, but the field Istio sends and gRPC reads.
#[allow(deprecated)]
pub fn with_upstream_tls(mut cluster: Cluster, instance: &str, san_exact: &[&str]) -> Cluster {
    let provider = |certificate_name: &str| {
        Some(tls::CertificateProviderPluginInstance {
            instance_name: instance.into(),
            certificate_name: certificate_name.into(),
        })
    };
    let context = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_provider_instance: provider("default"),
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext {
                        ca_certificate_provider_instance: provider("ROOTCA"),
                        match_subject_alt_names: san_exact
                            .iter()
                            .map(|san| StringMatcher {
                                match_pattern: Some(string_matcher::MatchPattern::Exact(
                                    (*san).into(),
                                )),
                                ignore_case: false,
                            })
                            .collect(),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    cluster.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    });
    cluster
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
