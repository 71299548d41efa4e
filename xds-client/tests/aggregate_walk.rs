//! A wide, deep DAG of aggregate clusters against the client on loopback: a real ADS stream
//! from our test server, the client's own task walking the graph on every update. The walk
//! must stay linear in the graph (gRFC A37 aggregates, A74 dependency walk), or the client's
//! task never comes back to serve its watchers.

use std::net::SocketAddr;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use meshwork_test_support::within;
use meshwork_test_support::xds::{bootstrap, target_routes};
use meshwork_xds::client::XdsClient;
use meshwork_xds::server::{XdsTestServer, build, type_url};
use meshwork_xds::watch::{ClusterChildren, ClusterState, TargetState};

const TARGET: &str = "dag:80";

/// `root` over `depth` layers of `width` aggregates, each over every cluster of the next
/// layer, the last over `width` leaves: `width ^ (depth + 1)` paths from the root to a leaf.
fn dag(width: usize, depth: usize) -> (Vec<Cluster>, Vec<String>) {
    let layer = |d: usize| -> Vec<String> {
        (0..width)
            .map(|i| {
                if d == depth {
                    format!("leaf{i}")
                } else {
                    format!("agg{d}-{i}")
                }
            })
            .collect()
    };
    let mut clusters = vec![build::aggregate_cluster("root", &layer(0))];
    for d in 0..depth {
        let next = layer(d + 1);
        clusters.extend(
            layer(d)
                .iter()
                .map(|name| build::aggregate_cluster(name, &next)),
        );
    }
    (clusters, layer(depth))
}

/// Leaves missing, then present. Returns how long the client took from the leaves' arrival
/// on the server to a complete config.
async fn leaves_missing_then_present() -> Duration {
    let (aggregates, leaves) = dag(3, 14);
    let server = XdsTestServer::start().await.unwrap();
    let mut snapshot = target_routes(TARGET, vec![build::route_to("", "root")]);
    for c in aggregates {
        snapshot = snapshot.cluster(c);
    }
    server.set_snapshot(snapshot);

    let bootstrap = bootstrap("aggregate-walk", &[server.uri()]);
    // The leaves must stay pending, not be declared missing, while the graph is walked.
    let client = XdsClient::builder(&bootstrap)
        .unwrap()
        .does_not_exist_timeout(Duration::from_secs(600))
        .start();
    let mut target = client.watch_target(TARGET, TARGET).await;

    // The walk reached the bottom of the graph: the client asks for the leaves.
    within(
        20,
        server.wait_for(|requests| {
            requests.iter().any(|r| {
                r.type_url() == type_url::CLUSTER
                    && r.request.resource_names.iter().any(|n| n == "leaf0")
            })
        }),
    )
    .await;
    // ...and its task is free to serve other commands.
    let dump = within(5, client.dump()).await;
    assert!(dump.iter().any(|r| r.name == "agg13-2"));
    assert!(matches!(target.current(), TargetState::Pending));

    let address: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let started = Instant::now();
    server.update(|s| {
        for leaf in &leaves {
            s.insert_cluster(build::eds_cluster(leaf));
            s.insert_endpoints(build::endpoints(leaf, &[address]));
        }
    });
    let config = target.ready(Duration::from_secs(20)).await.unwrap();
    let elapsed = started.elapsed();
    match &config.clusters["root"] {
        ClusterState::Ready(c) => {
            assert_eq!(c.children, ClusterChildren::Aggregate(leaves.clone()));
        }
        other => panic!("root: {other:?}"),
    }
    assert_eq!(config.clusters.len(), 1 + 3 * 14 + 3);
    elapsed
}

#[test]
fn a_wide_deep_aggregate_dag_with_missing_leaves_does_not_stall_the_client() {
    // The client on a runtime of its own, on a thread of its own: a walk stuck on a worker
    // would hang the runtime's shutdown, so the test waits on a channel instead and fails.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let elapsed = runtime.block_on(leaves_missing_then_present());
        let _ = tx.send(elapsed);
    });
    let elapsed = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(elapsed) => elapsed,
        Err(RecvTimeoutError::Timeout) => {
            panic!("the client did not resolve the aggregate graph within 60 s")
        }
        Err(RecvTimeoutError::Disconnected) => panic!("the test's thread panicked (above)"),
    };
    println!("3 wide, 14 deep, leaves arriving: complete config after {elapsed:?}");
}
