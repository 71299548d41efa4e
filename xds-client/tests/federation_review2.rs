//! Second review of the hub/group split (gRFC A47 federation): what crosses from the hub
//! to a group must cost what it cost in one task. Real ADS streams on loopback.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use meshwork_test_support::xds::{bootstrap, target_routes};
use meshwork_test_support::{temp_dir, within};
use meshwork_xds::bootstrap::{Authority, Bootstrap, XdsServer};
use meshwork_xds::client::{ResourceWatch, XdsClient, XdsClientBuilder};
use meshwork_xds::fail_static::FailStatic;
use meshwork_xds::resource::{ClusterKind, Resource, ResourceType};
use meshwork_xds::server::{Snapshot, XdsTestServer, build, type_url};
use meshwork_xds::transport::Backoff;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

const TARGET: &str = "wide:80";
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
    let mut snapshot = target_routes(TARGET, vec![build::route_to("", "root")])
        .cluster(build::aggregate_cluster("root", &leaves));
    for leaf in &leaves {
        snapshot = snapshot
            .cluster(build::eds_cluster(leaf))
            .endpoints(build::endpoints(leaf, &[address]));
    }
    server.set_snapshot(snapshot);

    let client = XdsClient::start(&bootstrap("review-fed2", &[server.uri()])).unwrap();
    let mut target = client.watch_target(TARGET, TARGET).await;
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

/// A Cluster of authority `a`.
const A_CLUSTER: &str = "xdstp://a/envoy.config.cluster.v3.Cluster/c";
/// A Cluster of authority `b`.
const B_CLUSTER: &str = "xdstp://b/envoy.config.cluster.v3.Cluster/c";

/// An EDS Cluster `name` whose endpoints are `service` (an `xdstp:` cluster must name them).
fn eds(name: &str, service: &str) -> Cluster {
    let mut cluster = build::eds_cluster(name);
    if let Some(config) = cluster.eds_cluster_config.as_mut() {
        config.service_name = service.into();
    }
    cluster
}

/// The endpoints' name of the Cluster a watch holds.
fn service_of(watch: &ResourceWatch) -> Option<String> {
    match watch.current().resource() {
        Some(Resource::Cluster(c)) => match &c.kind {
            ClusterKind::Eds { service_name } => service_name.clone(),
            _ => None,
        },
        _ => None,
    }
}

/// Top-level servers `[uri]`, and authority `a` with its own list naming the same server
/// with a server feature: two groups, each with its own snapshot file.
fn two_groups(uri: &str) -> Bootstrap {
    let featured = XdsServer::new(uri)
        .unwrap()
        .with_server_feature("ignore_resource_deletion");
    Bootstrap::builder()
        .node_id("review-fed2")
        .server(XdsServer::new(uri).unwrap())
        .authority("a", Authority::new().with_server(featured))
        .build()
        .unwrap()
}

/// A server with Cluster `old` and authority `a`'s, and a [`two_groups`] bootstrap on it.
async fn serve_two_groups() -> (XdsTestServer, Bootstrap) {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .cluster(build::eds_cluster("old"))
            .cluster(eds(A_CLUSTER, "a-endpoints")),
    );
    let bootstrap = two_groups(&server.uri());
    (server, bootstrap)
}

fn fail_static(bootstrap: &Bootstrap, dir: &std::path::Path) -> XdsClientBuilder {
    XdsClient::builder(bootstrap)
        .unwrap()
        .backoff(Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .connect_timeout(Duration::from_secs(2))
        .fail_static(FailStatic::new(dir))
}

/// Watches of Cluster `old` (top-level group) and of authority `a`'s, once both have a
/// value.
async fn both_clusters(client: &XdsClient) -> [ResourceWatch; 2] {
    let mut watches = [
        client.watch(ResourceType::Cluster, "old").await,
        client.watch(ResourceType::Cluster, A_CLUSTER).await,
    ];
    for watch in &mut watches {
        let state = within(10, watch.settled()).await.unwrap();
        assert!(
            matches!(state.resource(), Some(Resource::Cluster(_))),
            "{state:?}"
        );
    }
    watches
}

/// `meshwork.xds.snapshot.resources` counts what the client serves from fail-static
/// snapshots, every group's: restarted with the server down, the top-level group serves
/// one Cluster and authority `a`'s group another, so 2. Each group recorded its own count
/// at the one point the gauge has (its only attribute is the target), so the group that
/// recorded last hid the other's.
#[tokio::test]
async fn the_snapshot_gauge_counts_every_groups_resources() {
    let dir = temp_dir("federation-review2-gauge");
    let (server, bootstrap) = serve_two_groups().await;
    {
        let client = fail_static(&bootstrap, &dir).start();
        let _watches = both_clusters(&client).await;
        within(10, client.save_snapshot())
            .await
            .unwrap()
            .expect("written");
    }
    server.shutdown().await.unwrap();

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let client = fail_static(&bootstrap, &dir)
        .meter(provider.meter("meshwork"))
        .start();
    // A group records its count before it hands the values to the watchers.
    let _watches = both_clusters(&client).await;
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
    let dir = temp_dir("federation-review2-stop");
    let (server, bootstrap) = serve_two_groups().await;
    let client = fail_static(&bootstrap, &dir).start();
    let watches = both_clusters(&client).await;
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

    let client = fail_static(&bootstrap, &dir).start();
    both_clusters(&client).await;
}

/// A wildcard watch of Clusters ("*") on the top-level servers has their group cache every
/// Cluster the top-level server sends, an `xdstp://b/` one too, and hand it over as any
/// other. That name is authority `b`'s, whose own server answers for it: the top-level
/// server's value must not reach `b`'s watchers (it did: the hub handed every group's
/// states to the watchers of their names, wherever the names route).
#[tokio::test]
async fn a_wildcard_watch_on_the_top_level_servers_cannot_answer_for_another_authority() {
    let top = XdsTestServer::start().await.unwrap();
    let b = XdsTestServer::start().await.unwrap();
    top.set_snapshot(Snapshot::new().cluster(eds("old", "old-1")));
    b.set_snapshot(Snapshot::new().cluster(eds(B_CLUSTER, "b-endpoints")));
    let bootstrap = Bootstrap::builder()
        .node_id("review-fed2")
        .server(XdsServer::new(top.uri()).unwrap())
        .authority(
            "b",
            Authority::new().with_server(XdsServer::new(b.uri()).unwrap()),
        )
        .build()
        .unwrap();
    let client = XdsClient::start(&bootstrap).unwrap();
    let mut fed = client.watch(ResourceType::Cluster, B_CLUSTER).await;
    let mut old = client.watch(ResourceType::Cluster, "old").await;
    within(10, fed.settled()).await.unwrap();
    within(10, old.settled()).await.unwrap();
    assert_eq!(service_of(&fed).as_deref(), Some("b-endpoints"));

    let _all = client.watch(ResourceType::Cluster, "*").await;
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
    top.push_raw(DiscoveryResponse {
        version_info: "lie".into(),
        type_url: type_url::CLUSTER.into(),
        resources: vec![
            build::pack(&eds(B_CLUSTER, "lie")),
            build::pack(&eds("old", "old-2")),
        ],
        ..Default::default()
    });
    // The top-level group's batch of that response has been handed over once "old" has.
    within(10, async {
        while service_of(&old).as_deref() != Some("old-2") {
            old.changed().await.unwrap();
        }
    })
    .await;
    assert_eq!(service_of(&fed).as_deref(), Some("b-endpoints"));
}
