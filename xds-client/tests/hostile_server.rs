//! The client against control planes that misbehave on the wire: a response announcing
//! 4 GiB, a server that accepts TCP and never speaks, one slow to start its HTTP/2
//! connection, and one that answers and closes every stream. Each bound is checked on
//! loopback over real HTTP/2.

mod fake_ads;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use fake_ads::{FakeAds, Script, Step};
use meshwork_test_support::within;
use meshwork_test_support::xds::{one_cluster, silent_control_plane};
use meshwork_xds::client::{Connection, WatchState, XdsClientBuilder};
use meshwork_xds::protocol::ResourceStatus;
use meshwork_xds::resource::ResourceType;
use meshwork_xds::server::{XdsTestServer, build, type_url};
use meshwork_xds::transport::Backoff;
use meshwork_xds::watch::TargetState;

const TARGET: &str = "greeter:50051";

fn builder(servers: &[String]) -> XdsClientBuilder {
    let (min, max) = (Duration::from_millis(200), Duration::from_secs(1));
    meshwork_test_support::xds::builder("hostile-server-test", servers, min, max)
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
