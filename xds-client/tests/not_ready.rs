//! A target that is not ready says why: the xDS server it cannot reach (and the transport
//! error), or each resource it still misses with its state (not answered, NACKed with the
//! detail, does not exist). On loopback: a real refused port, a real ADS stream.

use std::error::Error as _;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use meshwork_test_support::xds::{builder, routes_to, silent_control_plane, static_cluster};
use meshwork_test_support::{refused_addr, within};
use meshwork_xds::client::{ReadyError, XdsClient};
use meshwork_xds::protocol::{ResourceFailure, ResourceStatus};
use meshwork_xds::resource::ResourceType;
use meshwork_xds::server::{Snapshot, XdsTestServer, build, type_url};
use meshwork_xds::transport::TransportError;
use meshwork_xds::watch::TargetError;

const TARGET: &str = "greeter:50051";

/// A client of `uri` whose does-not-exist timer never fires within these tests.
fn client(uri: &str) -> XdsClient {
    let (min, max) = (Duration::from_millis(100), Duration::from_millis(200));
    builder("not-ready-test", &[uri], min, max)
        .does_not_exist_timeout(Duration::from_secs(600))
        .start()
}

/// The control plane is down: the timeout names the server and the connection error, the
/// source chain reaches the typed transport error, and the dump shows the error beside the
/// listener that was requested and never answered.
#[tokio::test(start_paused = true)]
async fn a_control_plane_that_refuses_connections_is_named_with_the_error() {
    let uri = format!("http://127.0.0.1:{}", refused_addr().port());
    let client = client(&uri);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    // Paused time could pass a deadline before the refusal is read from the socket: the
    // cause then says the client is still connecting (or names the connect deadline). The
    // next deadline finds the refusal.
    let mut rounds = 0;
    let err = loop {
        let err = watch.ready(Duration::from_secs(3)).await.unwrap_err();
        let ReadyError::Timeout { cause, .. } = &err else {
            panic!("{err}")
        };
        assert!(cause.is_unreachable(), "{err}");
        if err.to_string().to_lowercase().contains("refused") {
            break err;
        }
        rounds += 1;
        assert!(rounds < 20, "no connect attempt was refused: {err}");
    };

    let message = err.to_string();
    let prefix = format!("no complete xDS config for {TARGET} within 3s: xDS server {uri}: ");
    assert!(message.starts_with(&prefix), "{message}");
    // Once: tonic's transport error and the connect error inside it say the same.
    assert_eq!(
        message.to_lowercase().matches("connection refused").count(),
        1,
        "{message}"
    );
    let ReadyError::Timeout { cause, .. } = &err else {
        unreachable!()
    };
    assert_eq!(cause.unreachable().len(), 1);
    assert_eq!(cause.unreachable()[0].uri(), uri);
    assert!(cause.unreachable()[0].is_connect());
    // The listener waits for the server: it is the one resource named.
    assert_eq!(cause.missing().len(), 1);
    assert_eq!(cause.missing()[0].resource_type(), ResourceType::Listener);
    assert_eq!(cause.missing()[0].name(), TARGET);
    assert_eq!(cause.missing()[0].status(), ResourceStatus::Requested);

    // The source chain: ReadyError -> NotReady -> TransportError -> ... -> the io error.
    let mut chain = err.source();
    let mut transport = None;
    let mut refused = false;
    while let Some(e) = chain {
        if let Some(t) = e.downcast_ref::<TransportError>() {
            transport = Some(t);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        chain = e.source();
    }
    assert_eq!(transport.expect("a TransportError in the chain").uri(), uri);
    assert!(
        refused,
        "an io::Error ConnectionRefused in the chain: {err:?}"
    );

    let dump = client.dump().await;
    assert_eq!(dump.len(), 1, "{dump:#?}");
    assert_eq!(dump[0].status, ResourceStatus::Requested);
    assert!(dump[0].error.is_none());
    let transport_error = dump[0].transport_error.as_deref().expect("transport_error");
    assert!(transport_error.starts_with(&format!("xDS server {uri}: ")));
    assert!(
        transport_error
            .to_lowercase()
            .contains("connection refused"),
        "{transport_error}"
    );
    let json = serde_json::to_value(&dump).unwrap();
    assert_eq!(json[0]["transport_error"], transport_error);
}

/// A control plane that accepts TCP and never speaks: before the connect deadline the cause
/// says the client is still connecting to it, after it the deadline is named.
#[tokio::test(start_paused = true)]
async fn a_silent_control_plane_is_named_while_connecting_and_after_the_deadline() {
    let uri = silent_control_plane().await;
    let client = client(&uri);
    let mut watch = client.watch_target(TARGET, TARGET).await;

    let err = watch.ready(Duration::from_secs(3)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no complete xDS config for {TARGET} within 3s: xDS server {uri}: still connecting"
        )
    );
    let ReadyError::Timeout { cause, .. } = &err else {
        panic!("{err}")
    };
    assert!(cause.is_unreachable() && cause.unreachable().is_empty());

    // Past the 20 s connect deadline (and into the next attempt).
    let err = watch.ready(Duration::from_secs(30)).await.unwrap_err();
    let ReadyError::Timeout { cause, .. } = &err else {
        panic!("{err}")
    };
    assert!(cause.unreachable()[0].is_timeout(), "{err}");
    assert!(
        err.to_string().ends_with(&format!(
            "within 30s: xDS server {uri}: no HTTP/2 connection within the 20s connect deadline"
        )),
        "{err}"
    );
}

/// The server answers, but the target still misses resources: the timeout names each one
/// with its state, what the target waits for first: endpoints never answered, a cluster
/// NACKed (with the NACK's detail), a cluster that no longer exists. While connected, the
/// dump has no `transport_error` at all.
#[tokio::test]
async fn missing_resources_are_named_with_their_state() {
    let server = XdsTestServer::start().await.unwrap();
    // A STATIC cluster is not something a gRPC-style client accepts.
    let bad = static_cluster("bad");
    server.set_snapshot(
        routes_to(TARGET, &["a", "bad", "ghost"])
            // No endpoints for `a`: its EDS resource is requested and never answered.
            .cluster(build::eds_cluster("a"))
            .cluster(bad)
            .cluster(build::eds_cluster("ghost"))
            .endpoints(build::endpoints("ghost", &["127.0.0.1:1".parse().unwrap()])),
    );
    let client = client(&server.uri());
    let mut watch = client.watch_target(TARGET, TARGET).await;
    within(10, server.wait_for_nack(type_url::CLUSTER)).await;
    // Gone from the next state of the world: it does not exist.
    server.update(|s| {
        s.remove(type_url::CLUSTER, "ghost");
    });
    within(10, server.wait_for_nack(type_url::CLUSTER)).await;

    tokio::time::pause();
    let err = watch.ready(Duration::from_secs(3)).await.unwrap_err();
    let dump = client.dump().await;
    let bad_error = dump
        .iter()
        .find(|r| r.name == "bad")
        .and_then(|r| r.error.clone())
        .expect("bad is NACKed");
    assert_eq!(
        err.to_string(),
        format!(
            "no complete xDS config for {TARGET} within 3s: ClusterLoadAssignment a requested, \
             not answered yet, Cluster bad NACKed: {bad_error}, Cluster ghost does not exist"
        )
    );
    let ReadyError::Timeout { cause, .. } = &err else {
        panic!("{err}")
    };
    assert!(!cause.is_unreachable());
    assert!(
        cause.source().is_none(),
        "no transport error while connected"
    );
    let states: Vec<_> = cause
        .missing()
        .iter()
        .map(|m| (m.resource_type(), m.name(), m.status(), m.error().is_some()))
        .collect();
    assert_eq!(
        states,
        [
            (
                ResourceType::ClusterLoadAssignment,
                "a",
                ResourceStatus::Requested,
                false
            ),
            (ResourceType::Cluster, "bad", ResourceStatus::Nacked, true),
            (
                ResourceType::Cluster,
                "ghost",
                ResourceStatus::DoesNotExist,
                false
            ),
        ]
    );
    assert_eq!(cause.more_missing(), 0);
    assert!(dump.iter().all(|r| r.transport_error.is_none()));
    let json = serde_json::to_value(&dump).unwrap();
    for row in json.as_array().unwrap() {
        assert!(row.get("transport_error").is_none(), "{row}");
    }
}

/// A target routing to many clusters that never get endpoints names the first eight and
/// counts the rest: the error stays small whatever the config.
#[tokio::test]
async fn the_list_of_missing_resources_is_capped() {
    let names: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut snapshot = routes_to(TARGET, &refs);
    for name in &names {
        snapshot = snapshot.cluster(build::eds_cluster(name));
    }
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot);
    let client = client(&server.uri());
    let mut watch = client.watch_target(TARGET, TARGET).await;
    within(10, server.wait_for_ack(type_url::CLUSTER, "1")).await;

    tokio::time::pause();
    let err = watch.ready(Duration::from_secs(3)).await.unwrap_err();
    let ReadyError::Timeout { cause, .. } = &err else {
        panic!("{err}")
    };
    let shown: Vec<&str> = cause.missing().iter().map(|m| m.name()).collect();
    assert_eq!(shown, &refs[..8]);
    assert_eq!(cause.more_missing(), 12);
    assert!(
        err.to_string()
            .ends_with("ClusterLoadAssignment c07 requested, not answered yet, and 12 more")
    );
}

/// A NACKed listener with no earlier value fails the target at once, naming the listener
/// and the NACK's detail.
#[tokio::test]
async fn a_nacked_listener_is_named_with_the_detail() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(Snapshot::new().listener(Listener {
        // No api_listener: decoded as a server-side listener, which lacks its address.
        name: TARGET.into(),
        ..Default::default()
    }));
    let client = client(&server.uri());
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let err = watch.ready(Duration::from_secs(10)).await.unwrap_err();
    let dump = client.dump().await;
    let detail = dump[0].error.clone().expect("the listener is NACKed");
    assert!(detail.contains("address"), "{detail}");
    match &err {
        ReadyError::Target(target @ TargetError::ListenerInvalid { name, error }) => {
            assert_eq!(name, TARGET);
            assert_eq!(error.to_string(), detail);
            // The NACK's reason is our typed validation error, and the error's source.
            assert!(matches!(error, ResourceFailure::Validation(_)), "{error:?}");
            assert_eq!(
                target.source().map(ToString::to_string),
                Some(detail.clone())
            );
        }
        other => panic!("expected ListenerInvalid, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("listener {TARGET} is invalid: {detail}")
    );
}

/// The longest prefix of `entry` that is at most 2 KiB and ends on a char boundary, and the
/// marker of the cut.
fn cut_at_2_kib(entry: &str) -> String {
    let end = (0..=2048)
        .rev()
        .find(|&i| entry.is_char_boundary(i))
        .unwrap();
    format!("{}…", &entry[..end])
}

/// A missing resource's entry over 2 KiB (a NACK detail of ~10 KiB, a name of ~10 KiB) is
/// cut to 2 KiB plus a marker, on a char boundary (a 3-byte char straddles the 2 KiB mark),
/// so a hostile control plane cannot make the error megabytes long.
#[tokio::test]
async fn an_entry_over_2_kib_is_cut_on_a_char_boundary() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster;

    // 3,500 three-byte chars, 10.5 KB.
    let long = "€".repeat(3500);
    let mut nacked = build::eds_cluster("nacked");
    // An unsupported custom cluster type: its name (quoted) is the NACK detail.
    nacked.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::ClusterType(
        cluster::CustomClusterType {
            name: long.clone(),
            typed_config: None,
        },
    ));
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        routes_to(TARGET, &["nacked", &long])
            .cluster(nacked)
            // No endpoints for it: its EDS resource, named by 10 KiB, is never answered.
            .cluster(build::eds_cluster(&long)),
    );
    let client = client(&server.uri());
    let mut watch = client.watch_target(TARGET, TARGET).await;
    within(10, server.wait_for_nack(type_url::CLUSTER)).await;

    tokio::time::pause();
    let err = watch.ready(Duration::from_secs(3)).await.unwrap_err();
    let ReadyError::Timeout { cause, .. } = &err else {
        panic!("{err}")
    };
    let entries: Vec<String> = cause.missing().iter().map(ToString::to_string).collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let nack = cause
        .missing()
        .iter()
        .find(|m| m.name() == "nacked")
        .expect("the NACKed cluster is named");
    assert_eq!(nack.status(), ResourceStatus::Nacked);
    let detail = nack.error().expect("the NACK detail").to_string();
    assert!(detail.len() > 10_000, "{}", detail.len());
    let unanswered = format!("ClusterLoadAssignment {long} requested, not answered yet");
    assert!(entries.contains(&unanswered));
    // The 2 KiB mark falls inside a char of the unanswered entry.
    assert!(!unanswered.is_char_boundary(2048));

    let message = err.to_string();
    let cut: Vec<String> = entries.iter().map(|e| cut_at_2_kib(e)).collect();
    assert_eq!(
        message,
        format!(
            "no complete xDS config for {TARGET} within 3s: {}",
            cut.join(", ")
        )
    );
    for c in &cut {
        assert!(c.len() <= 2048 + '…'.len_utf8(), "{}", c.len());
        assert!(c.len() > 2048 - 4, "{}", c.len());
    }
    // "ClusterLoadAssignment " is 22 bytes, then 675 whole chars: 2,047 bytes.
    assert_eq!(cut_at_2_kib(&unanswered).len(), 2047 + '…'.len_utf8());
}
