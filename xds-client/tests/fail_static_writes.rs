//! What the fail-static snapshot writes, and when not, on real ADS streams and real files:
//! a shutdown during an outage keeps the good file, and a seeded value a server rejected
//! an update of does not stop the writes.
#![cfg(feature = "server")]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use meshwork_test_support::xds::routes_to;
use meshwork_test_support::{temp_dir, within};
use meshwork_xds::client::XdsClientBuilder;
use meshwork_xds::fail_static::FailStatic;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use meshwork_xds::watch::{ClusterChildren, ClusterState, TargetState, XdsConfig};

const TARGET: &str = "greeter:50051";
const NODE: &str = "meshwork-fail-static-review2";

/// Listener -> routes -> cluster `a`, whose one endpoint is on `port`.
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
        .fail_static(FailStatic::new(dir))
}

/// The port of cluster `a`'s endpoint, if the cluster has its endpoints.
fn port_of(config: &XdsConfig) -> Option<u16> {
    let ClusterState::Ready(cluster) = config.clusters.get("a")? else {
        return None;
    };
    let ClusterChildren::Endpoints(Ok(cla)) = &cluster.children else {
        return None;
    };
    Some(cla.localities.first()?.endpoints.first()?.address.port())
}

/// A client of a live control plane writes the snapshot of `config(port)`; the control
/// plane is then shut down. Returns its address and URIs.
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

/// A restart while the control plane is down, served from the snapshot, then a graceful
/// shutdown as `greeter-server` does it (its `MeshServer`, and with it the watches, gone,
/// then `save_snapshot`): nothing is written (no server answered), so the next restart
/// during the same outage (a crash loop, a rolling restart) serves the snapshot again.
#[tokio::test]
async fn a_second_restart_during_the_outage_still_serves_the_snapshot() {
    let dir = temp_dir("review2-second-restart");
    let (_, uris) = snapshot_written(&dir, 4101).await;

    // First restart, control plane down: served from the snapshot.
    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(port_of(&served), Some(4101));
    // Its graceful shutdown: the watches go, then the snapshot is saved.
    drop(watch);
    let saved = within(10, client.save_snapshot()).await;
    drop(client);

    // Second restart, control plane still down.
    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(5))).await;
    let rows = client.dump().await.len();
    assert!(
        served.as_ref().is_ok_and(|c| port_of(c) == Some(4101)),
        "the shutdown's save_snapshot ({saved:?}) replaced the snapshot with one that serves \
         nothing ({rows} rows): {served:?}"
    );
}

/// Served from the snapshot, then the control plane comes back with a new configuration
/// in which cluster `a` is one meshwork rejects. The NACK keeps the seeded cluster in use
/// (its last good value), and the snapshot is still written: with that cluster as it was
/// and the rest (endpoints moved to a new port) as the server sent it.
#[tokio::test]
async fn a_rejected_update_of_a_seeded_value_does_not_stop_every_later_write() {
    let dir = temp_dir("review2-nacked-seed");
    let (addr, uris) = snapshot_written(&dir, 4201).await;

    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(port_of(&served), Some(4201));

    // The control plane is back: cluster `a` rejected, its endpoints on a new port.
    let server = XdsTestServer::start_on(addr).await.unwrap();
    let rejected = ClusterProto {
        name: "a".into(),
        ..Default::default()
    };
    server.set_snapshot(
        routes_to(TARGET, &["a"])
            .cluster(rejected)
            .endpoints(build::endpoints(
                "a",
                &[SocketAddr::from(([127, 0, 0, 1], 4202))],
            )),
    );
    within(10, async {
        loop {
            match watch.changed().await {
                Some(TargetState::Ready(config)) if port_of(&config) == Some(4202) => break,
                Some(_) => {}
                None => panic!("the client stopped"),
            }
        }
    })
    .await;
    let saved = within(10, client.save_snapshot()).await;
    assert!(
        matches!(saved, Ok(Some(_))),
        "a server answered every type, yet nothing is written: {saved:?}"
    );
    drop((watch, client));
    server.shutdown().await.unwrap();
}

/// Accepts TCP on `addr` (the snapshot's control plane's address) and never says a word: a
/// blackholed control plane, each connection attempt lasting the connect timeout.
async fn blackhole_on(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(16).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    })
}

/// A process started while its control plane is blackholed is stopped (SIGTERM) before the
/// first connection attempt has timed out, and saves its snapshot on the way out, as
/// `greeter-server` does: no server has answered, so nothing is written over the file, and
/// the next restart during the outage serves it.
#[tokio::test]
async fn a_save_before_any_answer_keeps_the_snapshot() {
    let dir = temp_dir("review2-save-before-answer");
    let (addr, uris) = snapshot_written(&dir, 4301).await;
    let blackhole = blackhole_on(addr).await;

    let client = builder(&uris, &dir).start();
    let watch = client.watch_target(TARGET, TARGET).await;
    // Stopped within the connect timeout (2 s here, 20 s by default).
    drop(watch);
    let saved = within(10, client.save_snapshot()).await;
    drop(client);
    blackhole.abort();
    let _ = blackhole.await;

    // Restarted, the control plane now refusing connections.
    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(5))).await;
    assert!(
        served.as_ref().is_ok_and(|c| port_of(c) == Some(4301)),
        "a save_snapshot before any server answered ({saved:?}) replaced the snapshot: \
         {served:?}"
    );
}
