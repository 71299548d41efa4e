//! The xDS client speaking delta ADS (`api_type: DELTA_GRPC`) to the test server on
//! loopback: the whole Listener -> Route -> Cluster -> Endpoints chain, the same dump as a
//! SotW client's, a removal, a NACK of one resource, and a reconnect to a restarted server
//! that names what the client holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use meshwork_test_support::xds::{routes_to, static_cluster};
use meshwork_test_support::{refused_addr, within};
use meshwork_xds::bootstrap::{ApiType, Bootstrap};
use meshwork_xds::client::{Connection, ResourceDump, XdsClient};
use meshwork_xds::protocol::ResourceStatus;
use meshwork_xds::server::{RequestKind, Snapshot, XdsTestServer, build, type_url};
use meshwork_xds::transport::Backoff;
use meshwork_xds::watch::{ClusterState, TargetState};

const TARGET: &str = "greeter:50051";
const NODE: &str = "meshwork-delta-test";
const TYPES: [&str; 4] = [
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::CLUSTER,
    type_url::ENDPOINTS,
];

fn snapshot(clusters: &[&str]) -> Snapshot {
    let addrs = [SocketAddr::from(([127, 0, 0, 1], 1001))];
    let mut snapshot = routes_to(TARGET, clusters);
    for cluster in clusters {
        snapshot = snapshot
            .cluster(build::eds_cluster(cluster))
            .endpoints(build::endpoints(cluster, &addrs));
    }
    snapshot
}

/// A client of `uri` configured from bootstrap JSON, with `api_type` if given.
fn client(uri: &str, api_type: Option<&str>) -> XdsClient {
    client_of(&[(uri, api_type)])
}

/// A client of `servers` (in fallback order), each with its `api_type` if given.
fn client_of(servers: &[(&str, Option<&str>)]) -> XdsClient {
    let servers: Vec<serde_json::Value> = servers
        .iter()
        .map(|(uri, api_type)| {
            let mut server = serde_json::json!({
                "server_uri": uri,
                "channel_creds": [{"type": "insecure"}],
            });
            if let Some(api_type) = api_type {
                server["api_type"] = (*api_type).into();
            }
            server
        })
        .collect();
    let bootstrap = Bootstrap::from_json_value(&serde_json::json!({
        "xds_servers": servers,
        "node": {"id": NODE},
    }))
    .unwrap();
    for (server, json) in bootstrap.xds_servers().iter().zip(&servers) {
        let delta = server.api_type() == ApiType::DeltaGrpc;
        assert_eq!(delta, json["api_type"] == "DELTA_GRPC");
    }
    XdsClient::builder(&bootstrap)
        .unwrap()
        .backoff(Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .does_not_exist_timeout(Duration::from_secs(5))
        .start()
}

fn find<'a>(dump: &'a [ResourceDump], type_url: &str, name: &str) -> &'a ResourceDump {
    dump.iter()
        .find(|r| r.type_url == type_url && r.name == name)
        .unwrap_or_else(|| panic!("{type_url} {name} in {dump:#?}"))
}

/// What a dump says per resource, version aside: type, name, status, the bytes in use.
fn summary(dump: &[ResourceDump]) -> Vec<(String, String, ResourceStatus, Option<Vec<u8>>)> {
    dump.iter()
        .map(|r| {
            (
                r.type_url.to_owned(),
                r.name.clone(),
                r.status,
                r.resource.as_ref().map(|a| a.value.clone()),
            )
        })
        .collect()
}

/// Per (type URL, name), the version the server last sent on a delta stream.
fn delta_versions(server: &XdsTestServer) -> BTreeMap<(String, String), String> {
    let mut versions = BTreeMap::new();
    for sent in server.responses() {
        if let Some(delta) = &sent.delta {
            for r in &delta.resources {
                versions.insert((delta.type_url.clone(), r.name.clone()), r.version.clone());
            }
        }
    }
    versions
}

async fn wait_for_cluster(
    watch: &mut meshwork_xds::client::TargetWatch,
    ready: impl Fn(Option<&ClusterState>) -> bool,
) {
    within(10, async {
        loop {
            if let TargetState::Ready(config) = watch.current()
                && ready(config.clusters.get("b"))
            {
                return;
            }
            watch.changed().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_delta_client_gets_the_chain_and_dumps_what_a_sotw_client_dumps() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a", "b"]));
    let sotw = client(&server.uri(), Some("GRPC"));
    let delta = client(&server.uri(), Some("DELTA_GRPC"));
    let mut sotw_watch = sotw.watch_target(TARGET, TARGET).await;
    let mut delta_watch = delta.watch_target(TARGET, TARGET).await;
    let from_sotw = sotw_watch.ready(Duration::from_secs(10)).await.unwrap();
    let from_delta = delta_watch.ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(from_sotw, from_delta);

    // Every type ACKed on a delta stream.
    let requests = within(
        10,
        server.wait_for(|reqs| {
            TYPES.iter().all(|t| {
                reqs.iter()
                    .any(|r| r.delta.is_some() && r.kind == RequestKind::Ack && r.type_url() == *t)
            })
        }),
    )
    .await;
    let first = requests.iter().find(|r| r.delta.is_some()).unwrap();
    assert_eq!(first.request.node.as_ref().unwrap().id, NODE);
    let first = first.delta.as_ref().unwrap();
    assert_eq!(first.type_url, type_url::LISTENER);
    assert_eq!(first.resource_names_subscribe, [TARGET]);
    assert!(first.initial_resource_versions.is_empty());

    let sotw_dump = sotw.dump().await;
    let delta_dump = delta.dump().await;
    assert_eq!(summary(&sotw_dump), summary(&delta_dump));
    assert_eq!(delta_dump.len(), 6, "{delta_dump:#?}");
    // Each delta resource shows its own version, as a SotW one shows its response's.
    let versions = delta_versions(&server);
    for r in &delta_dump {
        assert_eq!(r.status, ResourceStatus::Acked);
        let sent = &versions[&(r.type_url.to_owned(), r.name.clone())];
        assert_eq!(r.version.as_deref(), Some(sent.as_str()), "{}", r.name);
    }
    assert!(sotw_dump.iter().all(|r| r.version.as_deref() == Some("1")));
}

#[tokio::test]
async fn a_removal_is_seen_and_one_invalid_resource_is_nacked_alone() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a", "b"]));
    let client = client(&server.uri(), Some("DELTA_GRPC"));
    let mut watch = client.watch_target(TARGET, TARGET).await;
    watch.ready(Duration::from_secs(10)).await.unwrap();
    within(10, server.wait_for_ack(type_url::ENDPOINTS, "1")).await;
    let dump = client.dump().await;
    let a_version = find(&dump, type_url::CLUSTER, "a").version.clone();

    // Cluster a turns invalid while b changes: a is NACKed by name, b applies.
    server.update(|s| {
        s.insert_cluster(static_cluster("a"));
        let mut b = build::eds_cluster("b");
        b.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 7,
            nanos: 0,
        });
        s.insert_cluster(b);
    });
    let reason = within(10, server.wait_for_nack(type_url::CLUSTER)).await;
    assert!(
        reason.contains("\"a\""),
        "the NACK names the resource: {reason}"
    );
    wait_for_cluster(&mut watch, |b| {
        matches!(b, Some(ClusterState::Ready(c)) if c.cluster.connect_timeout == Duration::from_secs(7))
    })
    .await;
    let dump = client.dump().await;
    let a = find(&dump, type_url::CLUSTER, "a");
    assert_eq!(a.status, ResourceStatus::Nacked);
    assert_eq!(
        a.version, a_version,
        "still the last accepted value's version"
    );
    assert!(a.resource.is_some(), "the last good value stays in use");
    assert_eq!(
        find(&dump, type_url::CLUSTER, "b").status,
        ResourceStatus::Acked
    );

    // b's endpoints are removed on the server: the delta server names them removed.
    server.update(|s| {
        s.remove(type_url::ENDPOINTS, "b");
    });
    wait_for_cluster(&mut watch, |b| {
        matches!(b, Some(ClusterState::Ready(c)) if !matches!(c.children, meshwork_xds::watch::ClusterChildren::Endpoints(Ok(_))))
    })
    .await;
    assert!(server.responses().iter().any(|r| {
        r.delta
            .as_ref()
            .is_some_and(|d| d.removed_resources == ["b"])
    }));
    let dump = client.dump().await;
    let b = find(&dump, type_url::ENDPOINTS, "b");
    assert_eq!(b.status, ResourceStatus::DoesNotExist);
    assert!(b.resource.is_none());
}

#[tokio::test]
async fn a_reconnect_names_what_the_client_holds_and_keeps_it() {
    let server = XdsTestServer::start().await.unwrap();
    let addr = server.addr();
    server.set_snapshot(snapshot(&["a"]));
    let client = client(&server.uri(), Some("DELTA_GRPC"));
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let before = watch.ready(Duration::from_secs(10)).await.unwrap();
    within(10, server.wait_for_ack(type_url::ENDPOINTS, "1")).await;
    let held = delta_versions(&server);
    server.shutdown().await.unwrap();

    // The same resources on a new server at the same address.
    let server = XdsTestServer::start_on(addr).await.unwrap();
    server.set_snapshot(snapshot(&["a"]));
    let requests = within(
        10,
        server.wait_for(|reqs| {
            TYPES.iter().all(|t| {
                reqs.iter()
                    .any(|r| r.kind == RequestKind::Ack && r.type_url() == *t)
            })
        }),
    )
    .await;
    for t in TYPES {
        let initial = requests
            .iter()
            .find(|r| r.kind == RequestKind::Initial && r.type_url() == t)
            .and_then(|r| r.delta.as_ref())
            .unwrap_or_else(|| panic!("the first delta request of {t}"));
        let want: BTreeMap<String, String> = held
            .iter()
            .filter(|((ty, _), _)| ty == t)
            .map(|((_, name), version)| (name.clone(), version.clone()))
            .collect();
        assert!(!want.is_empty());
        let got: BTreeMap<String, String> = initial
            .initial_resource_versions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, want, "{t}");
    }
    // The server had nothing new to say: no resource was sent again.
    assert!(
        server
            .responses()
            .iter()
            .all(|r| r.delta.as_ref().is_some_and(|d| d.resources.is_empty()))
    );
    match watch.current() {
        TargetState::Ready(config) => assert_eq!(config, before),
        other => panic!("{other:?}"),
    }
    let dump = client.dump().await;
    assert!(
        dump.iter().all(|r| r.status == ResourceStatus::Acked),
        "{dump:#?}"
    );
}

/// gRFC A71 across kinds: a delta primary that is down, a SotW fallback that serves, then
/// the primary up again, spoken to in delta.
#[tokio::test]
async fn a_delta_primary_and_a_sotw_fallback() {
    let primary_addr = refused_addr();
    let fallback = XdsTestServer::start().await.unwrap();
    fallback.set_snapshot(snapshot(&["a"]));
    let primary_uri = format!("http://{primary_addr}");
    let client = client_of(&[
        (primary_uri.as_str(), Some("DELTA_GRPC")),
        (fallback.uri().as_str(), None),
    ]);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    watch.ready(Duration::from_secs(10)).await.unwrap();
    assert!(fallback.requests().iter().all(|r| r.delta.is_none()));

    let primary = XdsTestServer::start_on(primary_addr).await.unwrap();
    primary.set_snapshot(snapshot(&["a", "b"]));
    let mut connection = client.connection();
    within(
        10,
        connection.wait_for(|c| matches!(c, Connection::Connected { server: 0, .. })),
    )
    .await
    .unwrap();
    wait_for_cluster(&mut watch, |b| matches!(b, Some(ClusterState::Ready(_)))).await;
    let requests = primary.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.delta.is_some()), "{requests:?}");
}
