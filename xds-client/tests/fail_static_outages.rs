//! Fail-static restarts through the outages a clean test misses, on real ADS streams and
//! real files: a control plane that accepts the stream and never answers (go-control-plane
//! without a snapshot for the node), one that comes back silent, and a process that drops
//! its channels before writing its snapshot at shutdown.
#![cfg(feature = "server")]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use meshwork_test_support::xds::routes_to;
use meshwork_test_support::{temp_dir, within};
use meshwork_xds::client::XdsClientBuilder;
use meshwork_xds::fail_static::FailStatic;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use meshwork_xds::watch::{ClusterChildren, ClusterState, TargetState, XdsConfig};
use tonic::{Request, Response, Status, Streaming};

const TARGET: &str = "greeter:50051";
const NODE: &str = "meshwork-fail-static-review";

fn config(port: u16) -> Snapshot {
    routes_to(TARGET, &["a"])
        .cluster(build::eds_cluster("a"))
        .endpoints(build::endpoints(
            "a",
            &[SocketAddr::from(([127, 0, 0, 1], port))],
        ))
}

fn builder(servers: &[String], dir: &Path) -> XdsClientBuilder {
    let (min, max) = (Duration::from_millis(20), Duration::from_millis(100));
    meshwork_test_support::xds::builder(NODE, servers, min, max)
        .connect_timeout(Duration::from_secs(2))
        .does_not_exist_timeout(Duration::from_secs(1))
        .fail_static(FailStatic::new(dir))
}

fn port_of(config: &XdsConfig) -> u16 {
    let ClusterState::Ready(cluster) = &config.clusters["a"] else {
        panic!("{:?}", config.clusters["a"]);
    };
    let ClusterChildren::Endpoints(Ok(cla)) = &cluster.children else {
        panic!("{:?}", cluster.children);
    };
    cla.localities[0].endpoints[0].address.port()
}

/// A control plane that accepts every ADS stream and never answers: what go-control-plane's
/// `SnapshotCache` does for a node it has no snapshot for yet (it parks the watch), e.g.
/// right after the control plane restarted.
struct Silent;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Silent {
    type StreamAggregatedResourcesStream =
        futures_util::stream::Pending<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(futures_util::stream::pending()))
    }

    type DeltaAggregatedResourcesStream =
        futures_util::stream::Pending<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("SotW only"))
    }
}

/// Serve [`Silent`] on `addr` (the address the snapshot's server had).
async fn silent_on(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(16).unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Silent))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    })
}

/// Run a client against a live control plane until the target is ready and save its
/// snapshot; returns the control plane's address and URIs (it is shut down).
async fn snapshot_written(dir: &Path, port: u16) -> (SocketAddr, Vec<String>) {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(config(port));
    let (addr, uris) = (server.addr(), vec![server.uri()]);
    let client = builder(&uris, dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    within(10, client.save_snapshot())
        .await
        .unwrap()
        .expect("written");
    drop((watch, client));
    server.shutdown().await.unwrap();
    (addr, uris)
}

/// A graceful shutdown drops the application's channels and servers, then (as the docs
/// advise, and as `greeter-server` does after `serve_with_shutdown` returns, when its
/// `MeshServer` and with it its Listener watch are gone) calls `save_snapshot`: the
/// resources it stopped watching are still written (kept for 10 minutes), so the next
/// restart with the control plane down serves them.
#[tokio::test]
async fn a_snapshot_saved_after_the_watches_are_dropped_still_holds_their_config() {
    let dir = temp_dir("review-shutdown");
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(config(4001));
    let uris = vec![server.uri()];
    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    // The graceful shutdown: the channel goes, then the snapshot is saved.
    drop(watch);
    let path = within(10, client.save_snapshot())
        .await
        .unwrap()
        .expect("a snapshot is written");
    assert!(path.is_file());
    drop(client);
    server.shutdown().await.unwrap();

    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(5))).await;
    let dump = client.dump().await;
    assert!(
        served.is_ok(),
        "the snapshot saved at shutdown lost the config ({} rows served): {served:?}",
        dump.len()
    );
}

/// Restarted while the control plane accepts the stream but does not answer yet: no server
/// "failed", but when the does-not-exist timers fire with no answer from anyone the
/// snapshot is served.
#[tokio::test]
async fn a_restart_against_a_silent_control_plane_serves_the_snapshot() {
    let dir = temp_dir("review-silent-start");
    let (addr, uris) = snapshot_written(&dir, 5001).await;
    let _silent = silent_on(addr).await;

    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(5))).await;
    match served {
        Ok(config) => assert_eq!(port_of(&config), 5001),
        Err(error) => panic!("the snapshot was not served: {error:?}"),
    }
}

/// Serving from the snapshot (every server down), then the control plane comes back but has
/// nothing to say yet: the seeded values stay, as a client that never restarted keeps its
/// cache.
#[tokio::test]
async fn a_silent_control_plane_coming_back_does_not_end_the_snapshot() {
    let dir = temp_dir("review-silent-later");
    let (addr, uris) = snapshot_written(&dir, 6001).await;

    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(port_of(&served), 6001);
    let _silent = silent_on(addr).await;
    // Three does-not-exist timeouts: a change of the target here can only be the snapshot
    // being dropped (the control plane never says anything).
    let changed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match watch.changed().await {
                Some(TargetState::Ready(config)) if port_of(&config) == 6001 => {}
                other => break other,
            }
        }
    })
    .await;
    assert!(
        changed.is_err(),
        "the snapshot's config was dropped by a server that said nothing: {changed:?}"
    );
}
