//! Large, realistic xDS responses for the apply benchmarks.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, Locality, SocketAddress, address, config_source,
    socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use meshwork_xds::resource::ResourceType;
use prost::Message;

/// An EDS response for cluster `bench-cluster` with `endpoints` endpoints spread over
/// `localities` localities (distinct IPv4 addresses in 10.0.0.0/8, port 8080).
pub fn eds_response(endpoints: u32, version: &str, localities: u32) -> DiscoveryResponse {
    let per = endpoints.div_ceil(localities);
    let mut cla = ClusterLoadAssignment {
        cluster_name: "bench-cluster".into(),
        ..Default::default()
    };
    for l in 0..localities {
        let lb_endpoints = (l * per..((l + 1) * per).min(endpoints))
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i + 1);
                LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(&ip.to_string(), 8080)),
                        ..Default::default()
                    })),
                    health_status: 1,
                    load_balancing_weight: Some(UInt32Value { value: 1 }),
                    ..Default::default()
                }
            })
            .collect();
        cla.endpoints.push(LocalityLbEndpoints {
            locality: Some(Locality {
                region: "region".into(),
                zone: format!("zone-{l}"),
                sub_zone: String::new(),
            }),
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            priority: 0,
            ..Default::default()
        });
    }
    response(
        ResourceType::ClusterLoadAssignment,
        version,
        vec![cla.encode_to_vec()],
    )
}

/// A CDS response with `clusters` EDS clusters named `cluster-N`.
pub fn cds_response(clusters: u32, version: &str) -> DiscoveryResponse {
    let resources = (0..clusters)
        .map(|i| {
            Cluster {
                name: format!("cluster-{i}"),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Eds as i32,
                )),
                eds_cluster_config: Some(cluster::EdsClusterConfig {
                    eds_config: Some(ConfigSource {
                        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                            AggregatedConfigSource {},
                        )),
                        ..Default::default()
                    }),
                    service_name: String::new(),
                }),
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect();
    response(ResourceType::Cluster, version, resources)
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn response(t: ResourceType, version: &str, encoded: Vec<Vec<u8>>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources: encoded
            .into_iter()
            .map(|value| Any {
                type_url: t.type_url().into(),
                value,
            })
            .collect(),
        type_url: t.type_url().into(),
        nonce: format!("nonce-{version}"),
        ..Default::default()
    }
}
