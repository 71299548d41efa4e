//! Large, realistic xDS responses for the apply benchmarks, and the assignments the churn
//! benchmarks push, built with meshwork-xds's `server::build` proto builders.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use meshwork_xds::resource::ResourceType;
use meshwork_xds::server::build;

/// An EDS response for cluster `bench-cluster` with `endpoints` endpoints spread over
/// `localities` localities (distinct IPv4 addresses in 10.0.0.0/8, port 8080).
pub fn eds_response(endpoints: u32, version: &str, localities: u32) -> DiscoveryResponse {
    response(
        version,
        vec![build::pack(&cla("bench-cluster", endpoints, localities, 0))],
    )
}

/// The endpoints of `cluster`: `endpoints` distinct IPv4 addresses in 10.0.0.0/8 from
/// `10.0.0.1 + first` on, port 8080, spread over `localities` localities.
pub fn cla(cluster: &str, endpoints: u32, localities: u32, first: u32) -> ClusterLoadAssignment {
    let per = endpoints.div_ceil(localities.max(1));
    let mut cla = ClusterLoadAssignment {
        cluster_name: cluster.into(),
        ..Default::default()
    };
    for l in 0..localities {
        let addresses: Vec<std::net::SocketAddr> = (l * per..((l + 1) * per).min(endpoints))
            .map(|i| (std::net::Ipv4Addr::from(0x0a00_0000 + first + i + 1), 8080).into())
            .collect();
        let locality = Locality {
            region: "region".into(),
            zone: format!("zone-{l}"),
            sub_zone: String::new(),
        };
        cla.endpoints
            .push(build::locality_endpoints(locality, 1, 0, &addresses));
    }
    cla
}

/// One SotW EDS response carrying `clusters` ClusterLoadAssignments named `cluster-N`, each
/// with `endpoints_each` endpoints in one locality (every address distinct).
pub fn eds_response_many(clusters: u32, endpoints_each: u32, version: &str) -> DiscoveryResponse {
    let resources = (0..clusters)
        .map(|i| {
            build::pack(&cla(
                &format!("cluster-{i}"),
                endpoints_each,
                1,
                i * endpoints_each,
            ))
        })
        .collect();
    response(version, resources)
}

/// What a snapshot server sends a client watching `watched` clusters: `cluster-0` with
/// 10,000 endpoints in 8 localities (its first endpoint at a new address when `moved`),
/// then `cluster-1` .. with 10 endpoints each, addresses distinct.
pub fn watched_assignments(watched: u32, moved: bool) -> Vec<Any> {
    let mut big = cla("cluster-0", 10_000, 8, 0);
    if moved {
        big.endpoints[0].lb_endpoints[0] = build::lb_endpoint(([10, 200, 0, 1], 8080).into());
    }
    let mut resources = vec![build::pack(&big)];
    resources.extend(
        (1..watched).map(|i| build::pack(&cla(&format!("cluster-{i}"), 10, 1, 100_000 + i * 10))),
    );
    resources
}

/// A SotW response of `resources` (their type is the first one's; EDS when empty).
pub fn sotw_response(version: &str, resources: Vec<Any>) -> DiscoveryResponse {
    response(version, resources)
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

/// `cluster`'s assignment of two endpoints, each in a locality of its own (zones `a` and
/// `b` of region `bench`) weighing `weights`: the shape a weight churn swaps the weights of.
pub fn two_localities(
    cluster: &str,
    [first, second]: [SocketAddr; 2],
    [first_weight, second_weight]: [u32; 2],
) -> ClusterLoadAssignment {
    let locality = |zone: &str| Locality {
        region: "bench".into(),
        zone: zone.into(),
        ..Default::default()
    };
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![
            build::locality_endpoints(locality("a"), first_weight, 0, &[first]),
            build::locality_endpoints(locality("b"), second_weight, 0, &[second]),
        ],
        ..Default::default()
    }
}
