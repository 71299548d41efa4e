//! Second review of the hub/group split (gRFC A47 federation): what crosses from the hub
//! to a group must cost what it cost in one task. Real ADS streams on loopback.

use std::time::Duration;

use meshwork_test_support::within;
use meshwork_test_support::xds::{bootstrap, target_routes};
use meshwork_xds::client::XdsClient;
use meshwork_xds::server::{XdsTestServer, build, type_url};

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
