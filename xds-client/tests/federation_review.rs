//! Review of the hub/group split (gRFC A47 federation): what the split must not change for
//! a plain client, and what each group of servers must keep to itself. Real ADS streams on
//! loopback, real snapshot files in a temp dir.

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use meshwork_test_support::xds::routes_to;
use meshwork_test_support::{temp_dir, within};
use meshwork_xds::bootstrap::{Authority, Bootstrap, XdsServer};
use meshwork_xds::client::{ResourceWatch, WatchState, XdsClient, XdsClientBuilder};
use meshwork_xds::fail_static::FailStatic;
use meshwork_xds::resource::{ClusterKind, Resource, ResourceType};
use meshwork_xds::server::{Snapshot, XdsTestServer, build, type_url};
use meshwork_xds::transport::Backoff;

const TARGET: &str = "greeter:50051";
const NODE: &str = "meshwork-federation-review";
/// A Cluster of authority `a`.
const A_CLUSTER: &str = "xdstp://a/envoy.config.cluster.v3.Cluster/c";
/// A Cluster of authority `b`.
const B_CLUSTER: &str = "xdstp://b/envoy.config.cluster.v3.Cluster/c";

fn builder(bootstrap: &Bootstrap) -> XdsClientBuilder {
    XdsClient::builder(bootstrap)
        .unwrap()
        .backoff(Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .connect_timeout(Duration::from_secs(2))
}

/// An EDS Cluster `name` whose endpoints are `service` (an `xdstp:` cluster must name them).
fn eds(name: &str, service: &str) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    let mut cluster = build::eds_cluster(name);
    if let Some(config) = cluster.eds_cluster_config.as_mut() {
        config.service_name = service.into();
    }
    cluster
}

/// The endpoints' name of the Cluster a watch holds.
fn service_of(state: &WatchState) -> Option<&str> {
    match state.resource() {
        Some(Resource::Cluster(c)) => match &c.kind {
            ClusterKind::Eds { service_name } => service_name.as_deref(),
            _ => None,
        },
        _ => None,
    }
}

fn cluster_of(state: &WatchState) -> Option<&str> {
    match state.resource() {
        Some(Resource::Cluster(c)) => Some(&c.name),
        _ => None,
    }
}

/// A resource watch of a Cluster a target's walk already subscribed to (so no new request
/// goes out and the server sends nothing new) sees the cached value, as
/// [`XdsClient::watch`] promises: the hub counts the watch as a second holder and must
/// hand it the value itself.
#[tokio::test]
async fn a_watch_of_a_resource_a_target_holds_sees_its_value() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        routes_to(TARGET, &["a"])
            .cluster(build::eds_cluster("a"))
            .endpoints(build::endpoints("a", &["127.0.0.1:1001".parse().unwrap()])),
    );
    let bootstrap = meshwork_test_support::xds::bootstrap(NODE, &[server.uri()]);
    let client = builder(&bootstrap).start();
    let mut target = client.watch_target(TARGET, TARGET).await;
    within(10, target.ready(Duration::from_secs(10)))
        .await
        .unwrap();

    let mut cluster = client.watch(ResourceType::Cluster, "a").await;
    let state = within(5, cluster.settled()).await.expect("client running");
    assert_eq!(cluster_of(&state), Some("a"), "{state:?}");
}

/// The same for a resource of an authority the bootstrap does not list, that a target
/// needs: the watch says why at once rather than waiting forever.
#[tokio::test]
async fn a_watch_of_an_unknown_authority_a_target_needs_is_invalid() {
    let server = XdsTestServer::start().await.unwrap();
    let unknown = "xdstp://nowhere/envoy.config.cluster.v3.Cluster/c";
    server.set_snapshot(routes_to(TARGET, &[unknown]));
    let bootstrap = meshwork_test_support::xds::bootstrap(NODE, &[server.uri()]);
    let client = builder(&bootstrap).start();
    let mut target = client.watch_target(TARGET, TARGET).await;
    // The target settles with the cluster in error (its only cluster), whatever its state.
    within(10, async {
        while !matches!(
            target.current(),
            meshwork_xds::watch::TargetState::Ready(_) | meshwork_xds::watch::TargetState::Error(_)
        ) {
            target.changed().await.unwrap();
        }
    })
    .await;

    let mut cluster = client.watch(ResourceType::Cluster, unknown).await;
    let state = within(5, cluster.settled()).await.expect("client running");
    assert!(
        matches!(state, WatchState::Invalid { .. }),
        "unknown authority: {state:?}"
    );
}

/// Top-level servers `[uri]`, and authority `a` with its own list naming the same URI with
/// another server feature: a distinct server list (its own group, its own stream), bound
/// to the same URIs.
fn same_uris_bootstrap(uri: &str) -> Bootstrap {
    Bootstrap::builder()
        .node_id(NODE)
        .server(XdsServer::new(uri).unwrap())
        .authority(
            "a",
            Authority::new().with_server(
                XdsServer::new(uri)
                    .unwrap()
                    .with_server_feature("ignore_resource_deletion"),
            ),
        )
        .build()
        .unwrap()
}

/// Two groups whose server lists have the same URIs (here: the same server, one with a
/// server feature) each keep their own fail-static snapshot: started again while the
/// server is down, the client serves both an old-style Cluster (top-level group) and an
/// `xdstp://a/` one (authority `a`'s group). A file named by node id and URIs alone is one
/// file for both groups, and the group that writes last erases the other's resources.
#[tokio::test]
async fn groups_with_the_same_server_uris_keep_their_own_snapshots() {
    let dir = temp_dir("federation-review-same-uris");
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .cluster(build::eds_cluster("old"))
            .cluster(eds(A_CLUSTER, "a-endpoints")),
    );
    let bootstrap = same_uris_bootstrap(&server.uri());
    {
        let client = builder(&bootstrap)
            .fail_static(FailStatic::new(&dir))
            .start();
        let _watches = both_served(&client).await;
        within(10, client.save_snapshot())
            .await
            .unwrap()
            .expect("written");
    }
    server.shutdown().await.unwrap();

    // Every server down (the port refuses): each group serves its snapshot.
    let client = builder(&bootstrap)
        .fail_static(FailStatic::new(&dir))
        .start();
    both_served(&client).await;
}

/// Watches of the top-level group's Cluster `old` and of authority `a`'s, once both have
/// their value.
async fn both_served(client: &XdsClient) -> (ResourceWatch, ResourceWatch) {
    let mut old = client.watch(ResourceType::Cluster, "old").await;
    let mut fed = client.watch(ResourceType::Cluster, A_CLUSTER).await;
    let state = within(10, old.settled()).await.unwrap();
    assert_eq!(
        cluster_of(&state),
        Some("old"),
        "top-level group: {state:?}"
    );
    let state = within(10, fed.settled()).await.unwrap();
    assert_eq!(cluster_of(&state), Some(A_CLUSTER), "group of a: {state:?}");
    (old, fed)
}

/// A hostile top-level server sends a Cluster of authority `b` (which has its own server)
/// with a value of its own: the client keeps `b`'s server's value, and the lie reaches
/// neither the watch nor `b`'s cache.
#[tokio::test]
async fn a_server_cannot_answer_for_another_authority() {
    let top = XdsTestServer::start().await.unwrap();
    let b = XdsTestServer::start().await.unwrap();
    b.set_snapshot(Snapshot::new().cluster(eds(B_CLUSTER, "b-endpoints")));
    let bootstrap = Bootstrap::builder()
        .node_id(NODE)
        .server(XdsServer::new(top.uri()).unwrap())
        .authority(
            "b",
            Authority::new().with_server(XdsServer::new(b.uri()).unwrap()),
        )
        .build()
        .unwrap();
    top.set_snapshot(Snapshot::new().cluster(eds("old", "old-1")));
    let client = builder(&bootstrap).start();
    let mut old = client.watch(ResourceType::Cluster, "old").await;
    let mut fed = client.watch(ResourceType::Cluster, B_CLUSTER).await;
    let state = within(10, fed.settled()).await.unwrap();
    assert_eq!(service_of(&state), Some("b-endpoints"), "{state:?}");
    let state = within(10, old.settled()).await.unwrap();
    assert_eq!(service_of(&state), Some("old-1"), "{state:?}");
    top.push_raw(DiscoveryResponse {
        version_info: "lie".into(),
        type_url: type_url::CLUSTER.into(),
        resources: vec![
            build::pack(&eds(B_CLUSTER, "lie")),
            build::pack(&eds("old", "old-2")),
        ],
        ..Default::default()
    });
    // The top-level group's batch of that response (which would carry the lie) has been
    // handed to the watchers once its "old" has.
    within(10, async {
        while service_of(&old.current()) != Some("old-2") {
            old.changed().await.unwrap();
        }
    })
    .await;
    let state = fed.current();
    assert_eq!(service_of(&state), Some("b-endpoints"), "{state:?}");
    let dump = client.dump().await;
    let rows: Vec<_> = dump.iter().filter(|r| r.name == B_CLUSTER).collect();
    assert_eq!(rows.len(), 1, "one row for b's cluster: {rows:?}");
}
