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
use meshwork_test_support::xds::{
    endpoint_port, fail_static_builder, listen_again_on, one_local_endpoint, snapshot_written,
};
use meshwork_test_support::{temp_dir, within};
use meshwork_xds::client::XdsClientBuilder;
use meshwork_xds::server::XdsTestServer;
use meshwork_xds::watch::TargetState;
use tonic::{Request, Response, Status, Streaming};

const TARGET: &str = "greeter:50051";
const NODE: &str = "meshwork-fail-static-review";

/// Silent servers are found out by the does-not-exist timer: 1 s here.
fn builder(servers: &[String], dir: &Path) -> XdsClientBuilder {
    fail_static_builder(NODE, servers, dir).does_not_exist_timeout(Duration::from_secs(1))
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
fn silent_on(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = listen_again_on(addr);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Silent))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    })
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
    server.set_snapshot(one_local_endpoint(TARGET, 4001));
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
    let (addr, uris) = snapshot_written(NODE, TARGET, one_local_endpoint(TARGET, 5001), &dir).await;
    let _silent = silent_on(addr);

    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(5))).await;
    match served {
        Ok(config) => assert_eq!(endpoint_port(&config, "a"), Some(5001)),
        Err(error) => panic!("the snapshot was not served: {error:?}"),
    }
}

/// Serving from the snapshot (every server down), then the control plane comes back but has
/// nothing to say yet: the seeded values stay, as a client that never restarted keeps its
/// cache.
#[tokio::test]
async fn a_silent_control_plane_coming_back_does_not_end_the_snapshot() {
    let dir = temp_dir("review-silent-later");
    let (addr, uris) = snapshot_written(NODE, TARGET, one_local_endpoint(TARGET, 6001), &dir).await;

    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(endpoint_port(&served, "a"), Some(6001));
    let _silent = silent_on(addr);
    // Three does-not-exist timeouts: a change of the target here can only be the snapshot
    // being dropped (the control plane never says anything).
    let changed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match watch.changed().await {
                Some(TargetState::Ready(config)) if endpoint_port(&config, "a") == Some(6001) => {}
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
