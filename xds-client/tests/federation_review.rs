//! Review of the hub/group split (gRFC A47 federation): what the split must not change for
//! a plain client, and what each group of servers must keep to itself. Real ADS streams on
//! loopback, real snapshot files in a temp dir. (Two reviews: the second's tests are the
//! wide walk, the snapshot gauge, the writes at stop and the wildcard variant.)

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use meshwork_test_support::xds::{routes_to, target_routes};
use meshwork_test_support::{temp_dir, within};
use meshwork_xds::bootstrap::{Authority, Bootstrap, XdsServer};
use meshwork_xds::client::{ResourceWatch, WatchState, XdsClient, XdsClientBuilder};
use meshwork_xds::fail_static::FailStatic;
use meshwork_xds::resource::{ClusterKind, Resource, ResourceType};
use meshwork_xds::server::{Snapshot, XdsTestServer, build, type_url};
use meshwork_xds::transport::Backoff;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

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
fn eds(name: &str, service: &str) -> Cluster {
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
    let bootstrap = saved_two_groups_then_down(&dir).await;

    // Every server down (the port refuses): each group serves its snapshot.
    let client = builder(&bootstrap)
        .fail_static(FailStatic::new(&dir))
        .start();
    both_served(&client).await;
}

/// A server with Cluster `old` and authority `a`'s, and a [`same_uris_bootstrap`] on it.
async fn serve_two_groups() -> (XdsTestServer, Bootstrap) {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .cluster(build::eds_cluster("old"))
            .cluster(eds(A_CLUSTER, "a-endpoints")),
    );
    let bootstrap = same_uris_bootstrap(&server.uri());
    (server, bootstrap)
}

/// [`serve_two_groups`], both groups' values saved to fail-static snapshots in `dir`, then
/// the server shut down; the bootstrap naming it.
async fn saved_two_groups_then_down(dir: &std::path::Path) -> Bootstrap {
    let (server, bootstrap) = serve_two_groups().await;
    {
        let client = builder(&bootstrap)
            .fail_static(FailStatic::new(dir))
            .start();
        let _watches = both_served(&client).await;
        within(10, client.save_snapshot())
            .await
            .unwrap()
            .expect("written");
    }
    server.shutdown().await.unwrap();
    bootstrap
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

/// A bootstrap whose top-level server is `top`, and whose authority `b` has `b` for its own.
fn top_and_b(top: &XdsTestServer, b: &XdsTestServer) -> Bootstrap {
    Bootstrap::builder()
        .node_id(NODE)
        .server(XdsServer::new(top.uri()).unwrap())
        .authority(
            "b",
            Authority::new().with_server(XdsServer::new(b.uri()).unwrap()),
        )
        .build()
        .unwrap()
}

/// A hostile top-level server sends a Cluster of authority `b` (which has its own server)
/// with a value of its own: the client keeps `b`'s server's value, and the lie reaches
/// neither the watch nor `b`'s cache.
#[tokio::test]
async fn a_server_cannot_answer_for_another_authority() {
    let (client, _watches) = top_level_server_lies_about_b(false).await;
    let dump = client.dump().await;
    let rows: Vec<_> = dump.iter().filter(|r| r.name == B_CLUSTER).collect();
    assert_eq!(rows.len(), 1, "one row for b's cluster: {rows:?}");
}

/// The same with a wildcard watch of Clusters ("*") on the top-level servers: their group
/// then caches every Cluster the top-level server sends, an `xdstp://b/` one too, and hands
/// it over as any other; the top-level server's value must still not reach `b`'s watchers
/// (it did: the hub handed every group's states to the watchers of their names, wherever
/// the names route).
///
/// Nor does the dump list it: a name has one row, from its own servers' group, with their
/// value's version (it listed the top-level group's cached copy too, as a second row).
#[tokio::test]
async fn a_wildcard_watch_on_the_top_level_servers_cannot_answer_for_another_authority() {
    let (client, _watches) = top_level_server_lies_about_b(true).await;
    let dump = client.dump().await;
    let rows: Vec<_> = dump.iter().filter(|r| r.name == B_CLUSTER).collect();
    assert_eq!(rows.len(), 1, "one row for b's cluster: {rows:?}");
    eprintln!("DUMP {dump:#?}");
    assert_ne!(rows[0].version.as_deref(), Some("lie"), "{rows:?}");
    assert!(
        dump.iter()
            .any(|r| r.name == "old" && r.version.as_deref() == Some("lie")),
        "the top-level group's own names are still listed: {dump:?}"
    );
}

/// Authority `b` on its own server, the top-level server sending a value of `b`'s Cluster
/// (after a wildcard watch of Clusters, if `wildcard`); checks that `b`'s watch keeps its
/// own server's value, and returns the client with its watches of `old` and `b`'s Cluster.
async fn top_level_server_lies_about_b(wildcard: bool) -> (XdsClient, [ResourceWatch; 2]) {
    let top = XdsTestServer::start().await.unwrap();
    let b = XdsTestServer::start().await.unwrap();
    b.set_snapshot(Snapshot::new().cluster(eds(B_CLUSTER, "b-endpoints")));
    let bootstrap = top_and_b(&top, &b);
    top.set_snapshot(Snapshot::new().cluster(eds("old", "old-1")));
    let client = builder(&bootstrap).start();
    let mut old = client.watch(ResourceType::Cluster, "old").await;
    let mut fed = client.watch(ResourceType::Cluster, B_CLUSTER).await;
    let state = within(10, fed.settled()).await.unwrap();
    assert_eq!(service_of(&state), Some("b-endpoints"), "{state:?}");
    let state = within(10, old.settled()).await.unwrap();
    assert_eq!(service_of(&state), Some("old-1"), "{state:?}");
    let _all = if wildcard {
        let all = client.watch(ResourceType::Cluster, "*").await;
        within(
            10,
            top.wait_for(|requests| {
                requests.iter().any(|r| {
                    r.type_url() == type_url::CLUSTER
                        && r.request.resource_names.iter().any(|n| n == "*")
                })
            }),
        )
        .await;
        Some(all)
    } else {
        None
    };
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
    (client, [old, fed])
}

/// The wide walk's target.
const WIDE: &str = "wide:80";
const LEAVES: usize = 200;

/// A target whose aggregate cluster names 200 leaves: one walk subscribes to 200 Clusters
/// (and then 200 endpoint sets). The hub hands each to the group as its own command; the
/// group must still ask for them in a request or two per type, as one task did (and as
/// grpc-go, which sends the subscriptions of a type queued so far in one request), not a
/// request per name with every name so far: 200 requests of 1..200 names, each answered
/// with every cluster named so far (quadratic in the graph on both sides).
#[tokio::test]
async fn one_walk_subscribing_to_many_resources_sends_one_request_per_type() {
    let server = XdsTestServer::start().await.unwrap();
    let leaves: Vec<String> = (0..LEAVES).map(|i| format!("leaf{i}")).collect();
    let address = "127.0.0.1:9".parse().unwrap();
    let mut snapshot = target_routes(WIDE, vec![build::route_to("", "root")])
        .cluster(build::aggregate_cluster("root", &leaves));
    for leaf in &leaves {
        snapshot = snapshot
            .cluster(build::eds_cluster(leaf))
            .endpoints(build::endpoints(leaf, &[address]));
    }
    server.set_snapshot(snapshot);

    let bootstrap = meshwork_test_support::xds::bootstrap(NODE, &[server.uri()]);
    let client = builder(&bootstrap).start();
    let mut target = client.watch_target(WIDE, WIDE).await;
    let config = within(20, target.ready(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(config.clusters.len(), 1 + LEAVES);

    let requests = server.requests();
    let count = |type_url: &str| requests.iter().filter(|r| r.type_url() == type_url).count();
    let (clusters, endpoints) = (count(type_url::CLUSTER), count(type_url::ENDPOINTS));
    // root; root and the leaves; ACKs of both: a few, whatever the graph's width.
    assert!(clusters <= 8, "{clusters} CDS requests for one walk");
    assert!(endpoints <= 8, "{endpoints} EDS requests for one walk");
}

/// `meshwork.xds.snapshot.resources` counts what the client serves from fail-static
/// snapshots, every group's: restarted with the server down, the top-level group serves
/// one Cluster and authority `a`'s group another, so 2. Each group recorded its own count
/// at the one point the gauge has (its only attribute is the target), so the group that
/// recorded last hid the other's.
#[tokio::test]
async fn the_snapshot_gauge_counts_every_groups_resources() {
    let dir = temp_dir("federation-review-gauge");
    let bootstrap = saved_two_groups_then_down(&dir).await;

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let client = builder(&bootstrap)
        .fail_static(FailStatic::new(&dir))
        .meter(provider.meter("meshwork"))
        .start();
    // A group records its count before it hands the values to the watchers.
    let _watches = both_served(&client).await;
    provider.force_flush().unwrap();
    let metrics = exporter.get_finished_metrics().unwrap();
    let mut points = Vec::new();
    for scope in metrics.last().unwrap().scope_metrics() {
        for metric in scope.metrics() {
            if metric.name() == "meshwork.xds.snapshot.resources"
                && let AggregatedMetrics::U64(MetricData::Gauge(gauge)) = metric.data()
            {
                points.extend(gauge.data_points().map(|p| p.value()));
            }
        }
    }
    assert_eq!(points, [2], "resources served from snapshots");
}

/// The last handle dropped, every group stops and writes what it has not written yet: each
/// group's file is on disk (the client is dropped within the write delay of the values it
/// got, before any periodic write), and a restart with the server down serves both.
#[tokio::test]
async fn every_group_writes_its_snapshot_when_the_client_stops() {
    let dir = temp_dir("federation-review-stop");
    let (server, bootstrap) = serve_two_groups().await;
    let client = builder(&bootstrap)
        .fail_static(FailStatic::new(&dir))
        .start();
    let watches = both_served(&client).await;
    drop((watches, client));
    let snapshots = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("mwxs".as_ref()))
            .count()
    };
    within(10, async {
        while snapshots() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.shutdown().await.unwrap();

    let client = builder(&bootstrap)
        .fail_static(FailStatic::new(&dir))
        .start();
    both_served(&client).await;
}

/// A wildcard watch of Clusters on the top-level servers, whose server also sends a Cluster
/// of authority `b` (which has servers of its own, never asked, as nothing of `b` is
/// watched) and one of an authority the bootstrap does not list: the top-level group caches
/// all three, but the dump lists only its own name (it listed the other two as well, `b`'s
/// with the top-level server's value, though no watcher is ever handed either).
#[tokio::test]
async fn the_dump_lists_no_name_that_its_group_does_not_speak_for() {
    let top = XdsTestServer::start().await.unwrap();
    let b = XdsTestServer::start().await.unwrap();
    let bootstrap = top_and_b(&top, &b);
    top.set_snapshot(
        Snapshot::new()
            .cluster(eds("old", "old-1"))
            .cluster(eds(B_CLUSTER, "lie"))
            .cluster(eds(
                "xdstp://unlisted/envoy.config.cluster.v3.Cluster/c",
                "x",
            )),
    );
    let client = builder(&bootstrap).start();
    let _all = client.watch(ResourceType::Cluster, "*").await;
    let version = top.version(type_url::CLUSTER);
    within(10, top.wait_for_ack(type_url::CLUSTER, &version)).await;
    let names: Vec<String> = client.dump().await.into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["old"]);
    assert_eq!(b.requests().len(), 0, "b's server is never asked");
}
