//! Large, realistic xDS responses for the apply benchmarks, built with meshwork-xds's
//! `server::build` proto builders.

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use meshwork_xds::resource::ResourceType;
use meshwork_xds::server::build;

/// An EDS response for cluster `bench-cluster` with `endpoints` endpoints spread over
/// `localities` localities (distinct IPv4 addresses in 10.0.0.0/8, port 8080).
pub fn eds_response(endpoints: u32, version: &str, localities: u32) -> DiscoveryResponse {
    let per = endpoints.div_ceil(localities);
    let mut cla = ClusterLoadAssignment {
        cluster_name: "bench-cluster".into(),
        ..Default::default()
    };
    for l in 0..localities {
        let addresses: Vec<std::net::SocketAddr> = (l * per..((l + 1) * per).min(endpoints))
            .map(|i| (std::net::Ipv4Addr::from(0x0a00_0000 + i + 1), 8080).into())
            .collect();
        let locality = Locality {
            region: "region".into(),
            zone: format!("zone-{l}"),
            sub_zone: String::new(),
        };
        cla.endpoints
            .push(build::locality_endpoints(locality, 1, 0, &addresses));
    }
    response(version, vec![build::pack(&cla)])
}

/// A CDS response with `clusters` EDS clusters named `cluster-N`.
pub fn cds_response(clusters: u32, version: &str) -> DiscoveryResponse {
    let resources = (0..clusters)
        .map(|i| build::pack(&build::eds_cluster(&format!("cluster-{i}"))))
        .collect();
    response(version, resources)
}

fn response(version: &str, resources: Vec<Any>) -> DiscoveryResponse {
    let type_url = resources.first().map_or_else(
        || ResourceType::ClusterLoadAssignment.type_url().to_string(),
        |a| a.type_url.clone(),
    );
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url,
        nonce: format!("nonce-{version}"),
        ..Default::default()
    }
}
