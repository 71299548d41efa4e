//! The client against control planes that misbehave on the wire: a response announcing
//! 4 GiB, a server that accepts TCP and never speaks, one slow to start its HTTP/2
//! connection, and one that answers and closes every stream. Each bound is checked on
//! loopback over real HTTP/2.

mod fake_ads;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use fake_ads::{FakeAds, Script, Step};
use meshwork_test_support::within;
use meshwork_test_support::xds::{one_cluster, silent_control_plane};
use meshwork_xds::bootstrap::{ApiType, Bootstrap, XdsServer};
use meshwork_xds::client::{Connection, ResourceWatch, WatchState, XdsClient, XdsClientBuilder};
use meshwork_xds::protocol::ResourceStatus;
use meshwork_xds::resource::ResourceType;
use meshwork_xds::server::{XdsTestServer, build, type_url};
use meshwork_xds::transport::Backoff;
use meshwork_xds::watch::TargetState;
use tokio::sync::Notify;

const TARGET: &str = "greeter:50051";

fn builder(servers: &[String]) -> XdsClientBuilder {
    let (min, max) = (Duration::from_millis(200), Duration::from_secs(1));
    meshwork_test_support::xds::builder("hostile-server-test", servers, min, max)
}

/// A client builder of the delta server at `uri` (`api_type: DELTA_GRPC`), with the
/// backoff of [`builder`].
fn delta_builder(uri: &str) -> XdsClientBuilder {
    let server = XdsServer::new(uri)
        .unwrap()
        .with_api_type(ApiType::DeltaGrpc);
    let bootstrap = Bootstrap::builder()
        .node_id("hostile-server-test")
        .server(server)
        .build()
        .unwrap();
    XdsClient::builder(&bootstrap).unwrap().backoff(Backoff {
        min: Duration::from_millis(200),
        max: Duration::from_secs(1),
    })
}

/// A CDS response carrying cluster `a`.
fn cluster_a() -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: "1".into(),
        type_url: type_url::CLUSTER.into(),
        nonce: "n1".into(),
        resources: vec![build::pack(&build::eds_cluster("a"))],
        ..Default::default()
    }
}

const FOUR_GIB: u32 = u32::MAX - 15;

/// A response whose length prefix announces ~4 GiB is refused from its header: the stream
/// fails with a typed error, the client reconnects with backoff, and the cluster it had
/// keeps serving (watch and dump).
#[tokio::test]
async fn an_oversized_response_fails_the_stream_and_the_cache_keeps_serving() {
    let fake = FakeAds::start(Script::new(|n| match n {
        0 => vec![
            Step::Message(cluster_a()),
            Step::Wait(Duration::from_millis(100)),
            Step::Announce(FOUR_GIB),
        ],
        _ => vec![Step::Announce(FOUR_GIB)],
    }))
    .await;
    let client = builder(&[fake.uri()]).start();
    let mut watch = client.watch(ResourceType::Cluster, "a").await;
    assert!(matches!(
        within(10, watch.settled()).await,
        Some(WatchState::Ready(_))
    ));

    // The client gives up on the stream and comes back, more than once.
    let starts = within(10, fake.wait_for(|s| s.streams.len() >= 3)).await;
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(150),
            "reconnects wait out the backoff: {starts:?}"
        );
    }
    let error = client.last_error().expect("the failure is reported");
    assert!(error.is_message_too_large(), "{error}");
    assert_eq!(error.uri(), fake.uri());
    assert!(error.to_string().contains("4194304"), "{error}");
    let status = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<tonic::Status>())
        .expect("the status is the source");
    assert_eq!(status.code(), tonic::Code::OutOfRange);

    assert!(matches!(watch.current(), WatchState::Ready(_)));
    let dump = client.dump().await;
    let a = dump.iter().find(|r| r.name == "a").unwrap();
    assert_eq!(a.status, ResourceStatus::Acked);
}

/// A server that answers something small and then announces 4 GiB on every stream is not
/// healthy: the oversized response will come again, so the backoff keeps growing instead of
/// starting over at its first step on every stream.
#[tokio::test]
async fn an_oversized_response_after_an_answer_does_not_reset_the_backoff() {
    let fake = FakeAds::start(Script::new(|_| {
        vec![Step::Message(cluster_a()), Step::Announce(FOUR_GIB)]
    }))
    .await;
    let client = builder(&[fake.uri()])
        .backoff(Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(10),
        })
        .start();
    let _watch = client.watch(ResourceType::Cluster, "a").await;
    let starts = within(20, fake.wait_for(|s| s.streams.len() >= 6)).await;
    let gaps: Vec<Duration> = starts.windows(2).map(|p| p[1] - p[0]).collect();
    // Delays are drawn from [d, 2d) with d growing 1.6x a step: the 5th is at least
    // 100 ms x 1.6^4 = 655 ms, the 1st at most 200 ms (plus a connect).
    assert!(gaps[4] > 2 * gaps[0], "the backoff did not grow: {gaps:?}");
    assert!(client.last_error().unwrap().is_message_too_large());
}

/// The limit is configurable: a response the default takes (the test above) is refused
/// under a lowered limit.
#[tokio::test]
async fn the_message_limit_is_configurable() {
    let fake = FakeAds::start(Script::new(|_| vec![Step::Message(cluster_a())])).await;
    let client = builder(&[fake.uri()]).max_message_size(16).start();
    let _watch = client.watch(ResourceType::Cluster, "a").await;
    within(10, fake.wait_for(|s| s.streams.len() >= 2)).await;
    let error = client.last_error().expect("the failure is reported");
    assert!(error.is_message_too_large(), "{error}");
}

/// A primary that accepts TCP and never says a word counts as unreachable after the
/// connect deadline, and the client falls back to the next server (gRFC A71).
#[tokio::test]
async fn a_silent_primary_times_out_and_the_client_falls_back() {
    let silent_uri = silent_control_plane().await;
    let fallback = XdsTestServer::start().await.unwrap();
    fallback.set_snapshot(one_cluster(TARGET, "c", "127.0.0.1:1".parse().unwrap()));
    let client = builder(&[silent_uri.clone(), fallback.uri()])
        .connect_timeout(Duration::from_secs(1))
        .start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let config = watch.ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(config.clusters.len(), 1);
    assert!(matches!(
        *client.connection().borrow(),
        Connection::Connected { server: 1, .. }
    ));
    let error = client.last_error().expect("the timeout is reported");
    assert!(error.is_timeout() && error.is_connect(), "{error}");
    assert_eq!(error.uri(), silent_uri);
    assert!(matches!(watch.current(), TargetState::Ready(_)));
}

/// gRFC A57: the does-not-exist timer starts when the request is on a connected stream.
/// The server takes 2 s to start its HTTP/2 connection and answers 200 ms after that;
/// with a 1 s timer counted from when the request was queued, the resource would be
/// declared missing before the answer.
#[tokio::test]
async fn the_does_not_exist_timer_waits_for_the_connection() {
    let mut script = Script::new(|_| {
        vec![
            Step::Wait(Duration::from_millis(200)),
            Step::Message(cluster_a()),
        ]
    });
    script.accept_delay = Duration::from_secs(2);
    let fake = FakeAds::start(script).await;
    let client = builder(&[fake.uri()])
        .does_not_exist_timeout(Duration::from_secs(1))
        .start();
    let mut watch = client.watch(ResourceType::Cluster, "a").await;
    let settled = within(10, watch.settled()).await;
    assert!(
        matches!(settled, Some(WatchState::Ready(_))),
        "declared missing before the connection was up: {settled:?}"
    );
}

/// A server that is up at HTTP/2 but never answers the stream (not even its response
/// headers, as a grpc-go server with nothing to send) is left to the does-not-exist timer,
/// as in gRPC: the resource is declared missing on time, not waited for forever.
#[tokio::test]
async fn a_server_that_never_answers_the_stream_leaves_it_to_the_timer() {
    let mut script = Script::new(|_| Vec::new());
    script.headers_delay = Duration::from_secs(3600);
    let fake = FakeAds::start(script).await;
    let client = builder(&[fake.uri()])
        .does_not_exist_timeout(Duration::from_millis(300))
        .start();
    let mut watch = client.watch(ResourceType::Cluster, "a").await;
    let settled = within(10, watch.settled()).await;
    assert!(
        matches!(settled, Some(WatchState::DoesNotExist)),
        "{settled:?}"
    );
    assert_eq!(fake.streams(), 1, "the stream is kept, not churned");
}

/// A server that answers and then closes every stream sees one stream per backoff step:
/// an answered stream resets the backoff but the reconnect still waits its first step.
#[tokio::test]
async fn a_flapping_server_sees_a_bounded_connection_rate() {
    let fake = FakeAds::start(Script::new(|_| {
        vec![Step::Message(cluster_a()), Step::Close]
    }))
    .await;
    let client = builder(&[fake.uri()]).start();
    let _watch = client.watch(ResourceType::Cluster, "a").await;
    let starts = within(10, fake.wait_for(|s| s.streams.len() >= 4)).await;
    for pair in starts.windows(2) {
        // The backoff's first step is 200 ms plus jitter; allow for timer slack.
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(150),
            "streams came back to back: {:?}",
            starts.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
        );
    }
    let error = client.last_error().expect("the closes are reported");
    assert!(!error.is_connect(), "{error}");
}

/// A server that keeps sending responses but stops reading its stream: the client's
/// requests wait in its protocol core, one answer per type built when the transport takes
/// it, not one request (naming every subscribed cluster) per response. When the server
/// reads again, the client's last ACK is of the latest response.
#[tokio::test]
async fn a_server_that_stops_reading_holds_a_bounded_number_of_requests() {
    const RESPONSES: usize = 3000;
    // Long names: each request names all of them (~20 kB), so HTTP/2 flow control holds
    // the client back after a few dozen.
    let names: Vec<String> = std::iter::once("a".to_owned())
        .chain((1..100).map(|i| format!("{i:03}-{}", "x".repeat(200))))
        .collect();
    let fake = FakeAds::start(Script::new(move |n| match n {
        0 => [Step::UntilNames(100), Step::StopReading]
            .into_iter()
            .chain((1..=RESPONSES).map(|i| {
                Step::Message(DiscoveryResponse {
                    version_info: i.to_string(),
                    nonce: format!("n{i}"),
                    ..cluster_a()
                })
            }))
            .chain([Step::ResumeReading])
            .collect(),
        _ => vec![],
    }))
    .await;
    let client = builder(&[fake.uri()]).start();
    let mut watches = Vec::new();
    for name in &names {
        watches.push(client.watch(ResourceType::Cluster, name).await);
    }
    let last = format!("n{RESPONSES}");
    within(
        60,
        fake.wait_for(|s| s.requests.iter().any(|r| r.response_nonce == last)),
    )
    .await;
    let requests = fake.requests();
    assert!(
        requests.len() < RESPONSES / 10,
        "{} requests for {RESPONSES} responses the client read while its stream was not read",
        requests.len()
    );
    let ack = requests.last().unwrap();
    assert_eq!(
        ack.response_nonce, last,
        "the latest response is the one ACKed last"
    );
    assert_eq!(ack.version_info, RESPONSES.to_string());
    assert!(ack.error_detail.is_none());
    assert_eq!(ack.resource_names.len(), 100);
    assert_eq!(fake.streams(), 1, "the stream was never given up");
    assert!(matches!(watches[0].current(), WatchState::Ready(_)));
}

/// Cluster `a` then 99 long names (~200 bytes each): a SotW request names all of them
/// (~20 kB), so HTTP/2 flow control holds the client back after a few dozen.
fn many_names() -> Vec<String> {
    std::iter::once("a".to_owned())
        .chain((1..100).map(|i| format!("{i:03}-{}", "x".repeat(200))))
        .collect()
}

/// A CDS response of version `i` (nonce `n{i}`) carrying `clusters`.
fn clusters_at(i: usize, clusters: &[&str]) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: i.to_string(),
        type_url: type_url::CLUSTER.into(),
        nonce: format!("n{i}"),
        resources: clusters
            .iter()
            .map(|c| build::pack(&build::eds_cluster(c)))
            .collect(),
        ..Default::default()
    }
}

/// Stream 0 of a server that reads the client's requests until they name every one of
/// `names`, then stops reading and sends responses `1..=count` of cluster `a` and, last,
/// response `count + 1` of `a` and `names[1]` (so a watcher of `names[1]` sees that the
/// client has read them all), then waits for `go` and does `then`.
fn stop_reading_then(names: &[String], count: usize, go: &Arc<Notify>, then: Step) -> Vec<Step> {
    [Step::UntilNames(names.len()), Step::StopReading]
        .into_iter()
        .chain((1..=count).map(|i| Step::Message(clusters_at(i, &["a"]))))
        .chain([
            Step::Message(clusters_at(count + 1, &["a", &names[1]])),
            Step::Until(go.clone()),
            then,
        ])
        .collect()
}

/// Watch every one of `names`, and wait until the client has read the last response of
/// [`stop_reading_then`] (its value of `names[1]`).
async fn watch_until_read(client: &XdsClient, names: &[String]) -> Vec<ResourceWatch> {
    let mut watches = Vec::new();
    for name in names {
        watches.push(client.watch(ResourceType::Cluster, name).await);
    }
    let read = within(60, watches[1].settled()).await;
    assert!(matches!(read, Some(WatchState::Ready(_))), "{read:?}");
    watches
}

/// A subscription made while the server does not read its stream (the client's channel
/// full, its ACK waiting in the protocol core) reaches the server once it reads again,
/// with no other event to wake the client: it waits for room in the channel, not for the
/// next response or timer. The request that carries it is the ACK of the latest response.
#[tokio::test]
async fn a_subscription_made_while_the_server_does_not_read_reaches_it_when_it_reads_again() {
    const RESPONSES: usize = 1000;
    let names = many_names();
    let go = Arc::new(Notify::new());
    let fake = FakeAds::start(Script::new({
        let (names, go) = (names.clone(), go.clone());
        move |n| match n {
            0 => stop_reading_then(&names, RESPONSES, &go, Step::ResumeReading),
            _ => vec![],
        }
    }))
    .await;
    // No does-not-exist timer fires during the test to wake the client.
    let client = builder(&[fake.uri()])
        .does_not_exist_timeout(Duration::from_secs(3600))
        .start();
    let _watches = watch_until_read(&client, &names).await;
    let _late = client.watch(ResourceType::Cluster, "late").await;
    go.notify_one();
    let names_late = |r: &DiscoveryRequest| r.resource_names.iter().any(|n| n == "late");
    within(30, fake.wait_for(|s| s.requests.iter().any(names_late))).await;
    let requests = fake.requests();
    let late = requests.iter().find(|r| names_late(r)).unwrap();
    let last = RESPONSES + 1;
    assert_eq!(late.response_nonce, format!("n{last}"));
    assert_eq!(late.version_info, last.to_string());
    assert_eq!(late.resource_names.len(), names.len() + 1);
    assert!(
        requests.len() < RESPONSES / 2,
        "{} requests for {RESPONSES} responses: the client was not held back",
        requests.len()
    );
    assert_eq!(fake.streams(), 1);
}

/// A stream that ends while the client is held back (its ACKs, and NACKs of responses of
/// unknown types, waiting in the protocol core) leaves nothing of it to the next stream:
/// the next stream gets every subscription, the one made while held back too, with the
/// latest version accepted, and no answer to the old stream's responses.
#[tokio::test]
async fn a_stream_that_ends_while_the_client_is_held_back_leaves_the_next_one_every_request() {
    const RESPONSES: usize = 1000;
    let names = many_names();
    let go = Arc::new(Notify::new());
    let fake = FakeAds::start(Script::new({
        let (names, go) = (names.clone(), go.clone());
        move |n| match n {
            0 => {
                let mut steps = stop_reading_then(&names, RESPONSES, &go, Step::Close);
                // NACKs of unknown types wait too, before the last response.
                let unknown = (0..8).map(|i| {
                    Step::Message(DiscoveryResponse {
                        type_url: format!("example.com/Unknown{i}"),
                        nonce: format!("u{i}"),
                        ..Default::default()
                    })
                });
                let at = steps.len() - 3;
                steps.splice(at..at, unknown);
                steps
            }
            _ => vec![],
        }
    }))
    .await;
    let client = builder(&[fake.uri()])
        .does_not_exist_timeout(Duration::from_secs(3600))
        .start();
    let _watches = watch_until_read(&client, &names).await;
    let _late = client.watch(ResourceType::Cluster, "late").await;
    go.notify_one();
    let every_name = |r: &DiscoveryRequest| r.resource_names.len() == names.len() + 1;
    within(
        30,
        fake.wait_for(|s| s.requests_on(1).iter().any(every_name)),
    )
    .await;
    let requests = fake.requests_on(1);
    assert!(requests[0].node.is_some(), "the node on the stream's first");
    let sub = requests.iter().find(|r| every_name(r)).unwrap();
    assert!(sub.resource_names.iter().any(|n| n == "late"));
    assert_eq!(sub.version_info, (RESPONSES + 1).to_string());
    for r in &requests {
        assert_eq!(r.type_url, type_url::CLUSTER, "{r:?}");
        assert!(r.response_nonce.is_empty(), "an old stream's answer: {r:?}");
    }
    assert_eq!(fake.streams(), 2);
}

/// The same hostile server over delta: ACKs are small there, so the nonces are long (each
/// ACK ~2 kB) for HTTP/2 flow control to hold the client back. The client keeps, per type,
/// the latest NACK and the latest ACK: once the server reads again, the last requests are
/// the NACK of the last rejected response, the ACK of the latest, and the subscription
/// made meanwhile, in a request of its own with no nonce.
#[tokio::test]
async fn a_delta_server_that_stops_reading_holds_a_bounded_number_of_requests() {
    const RESPONSES: usize = 3000;
    let pad = "x".repeat(2000);
    let nonce = move |i: usize| format!("n{i}-{pad}");
    let good = || build::pack(&build::eds_cluster("a"));
    // STATIC is not supported: rejected.
    let bad = || {
        build::pack(&Cluster {
            name: "a".into(),
            ..Default::default()
        })
    };
    let response = {
        let nonce = nonce.clone();
        move |i: usize, body: Any, more: Option<&str>| DeltaDiscoveryResponse {
            system_version_info: i.to_string(),
            type_url: type_url::CLUSTER.into(),
            nonce: nonce(i),
            resources: std::iter::once(("a", body))
                .chain(more.map(|m| (m, build::pack(&build::eds_cluster(m)))))
                .map(|(name, body)| Resource {
                    name: name.into(),
                    version: i.to_string(),
                    resource: Some(body),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    };
    let go = Arc::new(Notify::new());
    let fake = FakeAds::start(Script::new({
        let go = go.clone();
        move |n| match n {
            0 => [Step::UntilNames(2), Step::StopReading]
                .into_iter()
                .chain((1..RESPONSES - 1).map(|i| Step::Delta(response(i, good(), None))))
                .chain([
                    Step::Delta(response(RESPONSES - 1, bad(), None)),
                    Step::Delta(response(RESPONSES, good(), Some("b"))),
                    Step::Until(go.clone()),
                    Step::ResumeReading,
                ])
                .collect(),
            _ => vec![],
        }
    }))
    .await;
    let client = delta_builder(&fake.uri())
        .does_not_exist_timeout(Duration::from_secs(3600))
        .start();
    let a = client.watch(ResourceType::Cluster, "a").await;
    let mut b = client.watch(ResourceType::Cluster, "b").await;
    let read = within(60, b.settled()).await;
    assert!(matches!(read, Some(WatchState::Ready(_))), "{read:?}");
    let _late = client.watch(ResourceType::Cluster, "late").await;
    go.notify_one();
    let last = nonce(RESPONSES);
    within(
        60,
        fake.wait_for(|s| {
            s.delta_requests
                .iter()
                .any(|r| r.resource_names_subscribe.iter().any(|n| n == "late"))
        }),
    )
    .await;
    let requests = fake.delta_requests();
    assert!(
        requests.len() < RESPONSES / 2,
        "{} requests for {RESPONSES} responses the client read while its stream was not read",
        requests.len()
    );
    let [nack, ack, change] = &requests[requests.len() - 3..] else {
        unreachable!()
    };
    assert_eq!(nack.response_nonce, nonce(RESPONSES - 1));
    assert!(nack.error_detail.is_some());
    assert!(nack.resource_names_subscribe.is_empty());
    assert_eq!(ack.response_nonce, last);
    assert!(ack.error_detail.is_none());
    assert!(ack.resource_names_subscribe.is_empty());
    assert!(
        change.response_nonce.is_empty(),
        "a change goes with no nonce"
    );
    assert_eq!(change.resource_names_subscribe, ["late"]);
    let subscribed: Vec<&str> = requests
        .iter()
        .flat_map(|r| &r.resource_names_subscribe)
        .map(String::as_str)
        .collect();
    assert_eq!(subscribed, ["a", "b", "late"], "each name subscribed once");
    assert_eq!(fake.streams(), 1, "the stream was never given up");
    assert!(matches!(a.current(), WatchState::Ready(_)));
}

/// Subscriptions made while the stream is still being opened, when nothing takes the
/// client's requests (its HTTP/2 connection is not up): once the channel is full they wait
/// in the protocol core, and they reach the server once the stream takes requests, even
/// while it is still waiting for the server's response headers (which never come here).
#[tokio::test]
async fn subscriptions_made_before_the_stream_is_open_reach_the_server() {
    let mut script = Script::new(|_| Vec::new());
    script.accept_delay = Duration::from_secs(3);
    script.headers_delay = Duration::from_secs(3600);
    let fake = FakeAds::start(script).await;
    let client = builder(&[fake.uri()])
        .does_not_exist_timeout(Duration::from_secs(3600))
        .start();
    // One request per type fills the channel; the group has handed them over once the
    // dump that follows comes back.
    let mut watches = Vec::new();
    for t in [
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
    ] {
        watches.push(client.watch(t, "a").await);
    }
    client.dump().await;
    for name in ["b", "c"] {
        watches.push(client.watch(ResourceType::Cluster, name).await);
        client.dump().await;
    }
    assert_eq!(
        fake.streams(),
        0,
        "the subscriptions came before the stream"
    );
    let all = |r: &DiscoveryRequest| {
        r.type_url == type_url::CLUSTER && r.resource_names == ["a", "b", "c"]
    };
    within(30, fake.wait_for(|s| s.requests.iter().any(all))).await;
    let requests = fake.requests();
    let types: BTreeSet<&str> = requests.iter().map(|r| r.type_url.as_str()).collect();
    let every = [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ];
    assert_eq!(types, BTreeSet::from(every), "each type asked for");
    assert!(matches!(
        *client.connection().borrow(),
        Connection::Disconnected
    ));
}
