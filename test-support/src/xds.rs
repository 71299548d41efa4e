//! What the xDS integration tests build again and again: a client of some servers, a
//! control plane that accepts TCP and never speaks, the snapshot that routes a target
//! to its clusters (Listener -> RouteConfiguration `routes` -> one virtual host), and the
//! fail-static tests' client and written snapshot.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::client::{XdsClient, XdsClientBuilder};
use meshwork_xds::fail_static::FailStatic;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use meshwork_xds::transport::Backoff;
use meshwork_xds::watch::{ClusterChildren, ClusterState, XdsConfig};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

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
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", silent.local_addr().unwrap());
    hold_connections(silent);
    uri
}

/// A control plane blackholed at `addr` (one that was serving there a moment ago): TCP is
/// accepted and held without a word, so each connection attempt lasts the connect timeout.
pub fn blackhole_on(addr: SocketAddr) -> JoinHandle<()> {
    hold_connections(listen_again_on(addr))
}

/// A listener on `addr`, which a server that just stopped was using (`SO_REUSEADDR`).
pub fn listen_again_on(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(16).unwrap()
}

fn hold_connections(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    })
}

/// A client of `servers` as node `node` that keeps its fail-static snapshot in `dir`,
/// reconnecting within 20-100 ms and giving up a connection attempt after 2 s.
pub fn fail_static_builder<S: AsRef<str>>(
    node: &str,
    servers: &[S],
    dir: &Path,
) -> XdsClientBuilder {
    builder(
        node,
        servers,
        Duration::from_millis(20),
        Duration::from_millis(100),
    )
    .connect_timeout(Duration::from_secs(2))
    .fail_static(FailStatic::new(dir))
}

/// Serve `snapshot` from a new control plane to a [`fail_static_builder`] client of node
/// `node` until `target` is ready, save the client's snapshot in `dir`, and shut the
/// control plane down. Returns its address and URIs (for the restarted client).
pub async fn snapshot_written(
    node: &str,
    target: &str,
    snapshot: Snapshot,
    dir: &Path,
) -> (SocketAddr, Vec<String>) {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot);
    let (addr, uris) = (server.addr(), vec![server.uri()]);
    let client = fail_static_builder(node, &uris, dir).start();
    let mut watch = client.watch_target(target, target).await;
    crate::within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    crate::within(10, client.save_snapshot())
        .await
        .unwrap()
        .expect("written");
    drop((watch, client));
    server.shutdown().await.unwrap();
    (addr, uris)
}

/// [`one_cluster`]`(target, "a", 127.0.0.1:port)`: what the fail-static tests write and serve,
/// told apart by the port.
pub fn one_local_endpoint(target: &str, port: u16) -> Snapshot {
    one_cluster(target, "a", SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The port of the first endpoint of `cluster`, if the cluster is ready with endpoints.
pub fn endpoint_port(config: &XdsConfig, cluster: &str) -> Option<u16> {
    let ClusterState::Ready(cluster) = config.clusters.get(cluster)? else {
        return None;
    };
    let ClusterChildren::Endpoints(Ok(cla)) = &cluster.children else {
        return None;
    };
    Some(cla.localities.first()?.endpoints.first()?.address.port())
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
