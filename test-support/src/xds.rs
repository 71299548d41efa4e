//! What the xDS integration tests build again and again: a client of some servers, a
//! control plane that accepts TCP and never speaks, and the snapshot that routes a target
//! to its clusters (Listener -> RouteConfiguration `routes` -> one virtual host).

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::client::{XdsClient, XdsClientBuilder};
use meshwork_xds::server::{Snapshot, build};
use meshwork_xds::transport::Backoff;

/// The bootstrap of node `node_id` naming the xDS servers `uris` in order (the first is
/// the primary, the others fallbacks: gRFC A71), each plaintext.
pub fn bootstrap<S: AsRef<str>>(node_id: &str, uris: &[S]) -> Bootstrap {
    let mut b = Bootstrap::builder().node_id(node_id);
    for uri in uris {
        b = b.server(XdsServer::new(uri.as_ref()).unwrap());
    }
    b.build().unwrap()
}

/// A client builder over [`bootstrap`]`(node_id, uris)` whose reconnect backoff starts at
/// `min` and grows to `max`.
pub fn builder<S: AsRef<str>>(
    node_id: &str,
    uris: &[S],
    min: Duration,
    max: Duration,
) -> XdsClientBuilder {
    XdsClient::builder(&bootstrap(node_id, uris))
        .unwrap()
        .backoff(Backoff { min, max })
}

/// The URI of a control plane on 127.0.0.1:0 that accepts every TCP connection, holds it
/// and never says a word (no TLS, no HTTP/2 preface).
pub async fn silent_control_plane() -> String {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    uri
}

/// Listener `target` -> [`route_config_for`]`(target, routes)`.
pub fn target_routes(target: &str, routes: Vec<Route>) -> Snapshot {
    Snapshot::new()
        .listener(build::api_listener(target, "routes"))
        .route(route_config_for(target, routes))
}

/// RouteConfiguration `routes`: one virtual host, `vh`, for the domain `target`, with
/// `routes` alone. Also what replaces the routes of a [`target_routes`] snapshot.
pub fn route_config_for(target: &str, routes: Vec<Route>) -> RouteConfiguration {
    build::route_config("routes", vec![build::virtual_host("vh", [target], routes)])
}

/// [`target_routes`] with one route (every path) to `clusters`, weighted equally; the
/// clusters themselves are the caller's.
pub fn routes_to(target: &str, clusters: &[&str]) -> Snapshot {
    let weights: Vec<(&str, u32)> = clusters.iter().map(|c| (*c, 1)).collect();
    target_routes(target, vec![build::route_weighted("", &weights)])
}

/// Cluster `name` with no discovery type, so STATIC: not something a gRPC-style client
/// accepts, so a NACK on demand.
pub fn static_cluster(name: &str) -> Cluster {
    Cluster {
        cluster_discovery_type: None,
        ..build::eds_cluster(name)
    }
}

/// A complete config for `target`: every path to the EDS cluster `cluster`, whose one
/// endpoint is `endpoint`.
pub fn one_cluster(target: &str, cluster: &str, endpoint: SocketAddr) -> Snapshot {
    target_routes(target, vec![build::route_to("", cluster)])
        .cluster(build::eds_cluster(cluster))
        .endpoints(build::endpoints(cluster, &[endpoint]))
}
