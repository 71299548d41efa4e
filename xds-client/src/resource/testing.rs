//! Builders of envoy protos for the resource tests.

use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};

use super::{Resource, ResourceError, ResourceType, decode};

pub(crate) fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub(crate) fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

pub(crate) fn boolv(value: bool) -> Option<BoolValue> {
    Some(BoolValue { value })
}

pub(crate) fn dur(seconds: i64, nanos: i32) -> Option<Duration> {
    Some(Duration { seconds, nanos })
}

pub(crate) fn ads() -> Option<core_pb::ConfigSource> {
    Some(core_pb::ConfigSource {
        config_source_specifier: Some(core_pb::config_source::ConfigSourceSpecifier::Ads(
            core_pb::AggregatedConfigSource {},
        )),
        ..Default::default()
    })
}

pub(crate) fn decode_ok<M: prost::Message + prost::Name>(ty: ResourceType, m: &M) -> Resource {
    match decode(ty, &any(m)) {
        Ok(r) => r,
        Err(e) => panic!("expected {ty} resource to be valid, got: {e}"),
    }
}

pub(crate) fn decode_err<M: prost::Message + prost::Name>(
    ty: ResourceType,
    m: &M,
) -> ResourceError {
    match decode(ty, &any(m)) {
        Ok(r) => panic!("expected {ty} resource to be rejected, got: {r:?}"),
        Err(e) => e,
    }
}

// ---- listeners ----

pub(crate) fn router_filter() -> hcm_pb::HttpFilter {
    http_filter("envoy.filters.http.router", any(&Router::default()))
}

pub(crate) fn http_filter(name: &str, config: Any) -> hcm_pb::HttpFilter {
    hcm_pb::HttpFilter {
        name: name.into(),
        config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

pub(crate) fn hcm_rds(route_config_name: &str) -> hcm_pb::HttpConnectionManager {
    hcm_pb::HttpConnectionManager {
        http_filters: vec![router_filter()],
        route_specifier: Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(
            hcm_pb::Rds {
                config_source: ads(),
                route_config_name: route_config_name.into(),
            },
        )),
        ..Default::default()
    }
}

pub(crate) fn api_listener(
    name: &str,
    hcm: &hcm_pb::HttpConnectionManager,
) -> listener_pb::Listener {
    listener_pb::Listener {
        name: name.into(),
        api_listener: Some(listener_pb::ApiListener {
            api_listener: Some(any(hcm)),
        }),
        ..Default::default()
    }
}

// ---- routes ----

pub(crate) fn route_config(
    name: &str,
    virtual_hosts: Vec<route_pb::VirtualHost>,
) -> route_pb::RouteConfiguration {
    route_pb::RouteConfiguration {
        name: name.into(),
        virtual_hosts,
        ..Default::default()
    }
}

pub(crate) fn vhost(domains: &[&str], routes: Vec<route_pb::Route>) -> route_pb::VirtualHost {
    route_pb::VirtualHost {
        name: domains.first().copied().unwrap_or("vh").into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

pub(crate) fn prefix_match(prefix: &str) -> Option<route_pb::RouteMatch> {
    Some(route_pb::RouteMatch {
        path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix(prefix.into())),
        ..Default::default()
    })
}

pub(crate) fn cluster_action(cluster: &str) -> route_pb::RouteAction {
    route_pb::RouteAction {
        cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::Cluster(
            cluster.into(),
        )),
        ..Default::default()
    }
}

pub(crate) fn route_to(prefix: &str, action: route_pb::RouteAction) -> route_pb::Route {
    route_pb::Route {
        r#match: prefix_match(prefix),
        action: Some(route_pb::route::Action::Route(action)),
        ..Default::default()
    }
}

/// A route configuration with one virtual host (`*`) and one route.
pub(crate) fn one_route(route: route_pb::Route) -> route_pb::RouteConfiguration {
    route_config("rc", vec![vhost(&["*"], vec![route])])
}

// ---- clusters ----

pub(crate) fn eds_cluster(name: &str) -> cluster_pb::Cluster {
    cluster_pb::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
            cluster_pb::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster_pb::cluster::EdsClusterConfig {
            eds_config: ads(),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

// ---- endpoints ----

pub(crate) fn socket_address(address: &str, port: u32) -> Option<core_pb::Address> {
    Some(core_pb::Address {
        address: Some(core_pb::address::Address::SocketAddress(
            core_pb::SocketAddress {
                address: address.into(),
                port_specifier: Some(core_pb::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            },
        )),
    })
}

pub(crate) fn lb_endpoint(address: &str, port: u32) -> endpoint_pb::LbEndpoint {
    endpoint_pb::LbEndpoint {
        host_identifier: Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(
            endpoint_pb::Endpoint {
                address: socket_address(address, port),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

pub(crate) fn locality(
    zone: &str,
    priority: u32,
    weight: Option<u32>,
    lb_endpoints: Vec<endpoint_pb::LbEndpoint>,
) -> endpoint_pb::LocalityLbEndpoints {
    endpoint_pb::LocalityLbEndpoints {
        locality: Some(core_pb::Locality {
            region: "region".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        }),
        lb_endpoints,
        load_balancing_weight: weight.and_then(u32v),
        priority,
        ..Default::default()
    }
}

pub(crate) fn cla(
    name: &str,
    endpoints: Vec<endpoint_pb::LocalityLbEndpoints>,
) -> endpoint_pb::ClusterLoadAssignment {
    endpoint_pb::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints,
        ..Default::default()
    }
}
