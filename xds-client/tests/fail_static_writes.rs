//! What the fail-static snapshot writes, and when not, on real ADS streams and real files:
//! a shutdown during an outage keeps the good file, and a seeded value a server rejected
//! an update of does not stop the writes.
#![cfg(feature = "server")]

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use meshwork_test_support::xds::{
    blackhole_on, endpoint_port, fail_static_builder, one_local_endpoint, snapshot_written,
};
use meshwork_test_support::{temp_dir, within};
use meshwork_xds::client::XdsClientBuilder;
use meshwork_xds::server::XdsTestServer;
use meshwork_xds::watch::TargetState;

const TARGET: &str = "greeter:50051";
const NODE: &str = "meshwork-fail-static-review2";

fn builder(servers: &[String], dir: &Path) -> XdsClientBuilder {
    fail_static_builder(NODE, servers, dir)
}

/// A restart while the control plane is down, served from the snapshot, then a graceful
/// shutdown as `greeter-server` does it (its `MeshServer`, and with it the watches, gone,
/// then `save_snapshot`): nothing is written (no server answered), so the next restart
/// during the same outage (a crash loop, a rolling restart) serves the snapshot again.
#[tokio::test]
async fn a_second_restart_during_the_outage_still_serves_the_snapshot() {
    let dir = temp_dir("review2-second-restart");
    let (_, uris) = snapshot_written(NODE, TARGET, one_local_endpoint(TARGET, 4101), &dir).await;

    // First restart, control plane down: served from the snapshot.
    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(endpoint_port(&served, "a"), Some(4101));
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
        served
            .as_ref()
            .is_ok_and(|c| endpoint_port(c, "a") == Some(4101)),
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
    let (addr, uris) = snapshot_written(NODE, TARGET, one_local_endpoint(TARGET, 4201), &dir).await;

    let client = builder(&uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(endpoint_port(&served, "a"), Some(4201));

    // The control plane is back: cluster `a` rejected, its endpoints on a new port.
    let server = XdsTestServer::start_on(addr).await.unwrap();
    let rejected = ClusterProto {
        name: "a".into(),
        ..Default::default()
    };
    let mut snapshot = one_local_endpoint(TARGET, 4202);
    snapshot.insert_cluster(rejected);
    server.set_snapshot(snapshot);
    within(10, async {
        loop {
            match watch.changed().await {
                Some(TargetState::Ready(config)) if endpoint_port(&config, "a") == Some(4202) => {
                    break;
                }
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

/// A process started while its control plane is blackholed is stopped (SIGTERM) before the
/// first connection attempt has timed out, and saves its snapshot on the way out, as
/// `greeter-server` does: no server has answered, so nothing is written over the file, and
/// the next restart during the outage serves it.
#[tokio::test]
async fn a_save_before_any_answer_keeps_the_snapshot() {
    let dir = temp_dir("review2-save-before-answer");
    let (addr, uris) = snapshot_written(NODE, TARGET, one_local_endpoint(TARGET, 4301), &dir).await;
    let blackhole = blackhole_on(addr);

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
        served
            .as_ref()
            .is_ok_and(|c| endpoint_port(c, "a") == Some(4301)),
        "a save_snapshot before any server answered ({saved:?}) replaced the snapshot: \
         {served:?}"
    );
}
