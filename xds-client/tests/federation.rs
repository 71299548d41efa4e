//! Federation (gRFC A47) against two test servers on loopback: each authority's `xdstp://`
//! resources come from that authority's own servers and old-style names from the top-level
//! ones, also within one target's chain; an authority that lists no servers (or the
//! top-level server again) shares the top-level stream; fallback (gRFC A71) runs per
//! authority without disturbing the top-level stream; a name of an unknown authority is
//! invalid at once; and two spellings of one name (context parameters in another order) are
//! one resource.
//!
//! Each server also holds decoys: the other server's names with other values, so a request
//! sent to the wrong server shows in the values a watch gets as well as in what the servers
//! were asked for.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::service::discovery::v3::Resource as Wrapper;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use meshwork_test_support::xds::endpoint_port;
use meshwork_test_support::{refused_addr, within};
use meshwork_xds::bootstrap::Bootstrap;
use meshwork_xds::client::{
    Connection, ReadyError, ResourceWatch, TargetWatch, WatchState, XdsClient,
};
use meshwork_xds::protocol::{ResourceFailure, ResourceStatus};
use meshwork_xds::resource::{Resource, ResourceType};
use meshwork_xds::server::{RequestKind, Snapshot, XdsTestServer, build, type_url};
use meshwork_xds::transport::Backoff;
use meshwork_xds::watch::{ClusterError, ClusterState, TargetError, TargetState, XdsConfig};
use serde_json::{Value, json};

const NODE: &str = "meshwork-federation-test";
const SOTW: &str = "GRPC";
const DELTA: &str = "DELTA_GRPC";

/// The `xdstp://` name of resource `id` of `ty` (the proto's full name) in `authority`.
fn xdstp(authority: &str, ty: &str, id: &str) -> String {
    format!("xdstp://{authority}/envoy.config.{ty}/{id}")
}

/// The names of one Listener -> RouteConfiguration -> Cluster -> endpoints chain.
struct Chain {
    listener: String,
    route: String,
    cluster: String,
    endpoints: String,
}

impl Chain {
    /// The chain of `xds://{authority}/{id}`: every name in `authority`.
    fn xdstp(authority: &str, id: &str) -> Self {
        Self {
            listener: xdstp(authority, "listener.v3.Listener", id),
            route: xdstp(authority, "route.v3.RouteConfiguration", id),
            cluster: xdstp(authority, "cluster.v3.Cluster", id),
            endpoints: xdstp(authority, "endpoint.v3.ClusterLoadAssignment", id),
        }
    }

    /// The chain of `xds:///{id}`: old-style names.
    fn old_style(id: &str) -> Self {
        Self {
            listener: id.to_owned(),
            route: format!("{id}-routes"),
            cluster: format!("{id}-cluster"),
            endpoints: format!("{id}-cluster"),
        }
    }

    /// `snapshot` with the chain's listener and route: every path of the virtual host for
    /// `domain` to the chain's cluster.
    fn front(&self, snapshot: Snapshot, domain: &str) -> Snapshot {
        snapshot
            .listener(build::api_listener(&self.listener, &self.route))
            .route(build::route_config(
                &self.route,
                vec![build::virtual_host(
                    "vh",
                    [domain],
                    vec![build::route_to("", &self.cluster)],
                )],
            ))
    }

    /// `snapshot` with the chain's four resources ([`front`](Self::front)`(domain)`), the
    /// cluster's one endpoint 127.0.0.1:`port` and its connect timeout `timeout_s` seconds
    /// (what tells one server's copy from another's).
    fn add(&self, snapshot: Snapshot, domain: &str, port: u16, timeout_s: i64) -> Snapshot {
        self.front(snapshot, domain)
            .cluster(eds_cluster(&self.cluster, &self.endpoints, timeout_s))
            .endpoints(build::endpoints(&self.endpoints, &[local(port)]))
    }

    fn names(&self) -> [&str; 4] {
        [&self.listener, &self.route, &self.cluster, &self.endpoints]
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An EDS cluster whose assignment is `endpoints`, named explicitly (an `xdstp:` cluster
/// must name it: A47), connecting within `timeout_s` seconds.
fn eds_cluster(name: &str, endpoints: &str, timeout_s: i64) -> Cluster {
    let mut c = build::eds_cluster(name);
    c.eds_cluster_config = Some(cluster::EdsClusterConfig {
        eds_config: Some(build::ads()),
        service_name: endpoints.to_owned(),
    });
    c.connect_timeout = Some(PbDuration {
        seconds: timeout_s,
        nanos: 0,
    });
    c
}

/// A bootstrap server entry for `uri`, spoken to in `api_type`.
fn server(uri: &str, api_type: &str) -> Value {
    json!({"server_uri": uri, "channel_creds": [{"type": "insecure"}], "api_type": api_type})
}

/// A client of the bootstrap with `top` as its top-level servers and `authorities` as its
/// `authorities` map, reconnecting within 20-100 ms. The does-not-exist timer is long, so a
/// watch that settles quickly did not settle by it.
fn client(top: Vec<Value>, authorities: Value) -> XdsClient {
    let bootstrap = Bootstrap::from_json_value(&json!({
        "xds_servers": top,
        "authorities": authorities,
        "node": {"id": NODE},
    }))
    .unwrap();
    XdsClient::builder(&bootstrap)
        .unwrap()
        .backoff(Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .does_not_exist_timeout(Duration::from_secs(60))
        .start()
}

/// Every name `server` was asked for, on SotW and delta streams alike.
fn asked(server: &XdsTestServer) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for r in server.requests() {
        names.extend(r.request.resource_names.iter().cloned());
        if let Some(delta) = &r.delta {
            names.extend(delta.resource_names_subscribe.iter().cloned());
        }
    }
    names
}

/// Waits until `server` has received `count` ACKs of `type_url`.
async fn acks(server: &XdsTestServer, type_url: &str, count: usize) {
    server
        .wait_for(|reqs| {
            let acks = reqs
                .iter()
                .filter(|r| r.kind == RequestKind::Ack && r.type_url() == type_url);
            acks.count() >= count
        })
        .await;
}

async fn ready(watch: &mut TargetWatch) -> std::sync::Arc<XdsConfig> {
    within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `watch` holds a valid cluster; returns its connect timeout.
async fn cluster_timeout(watch: &mut ResourceWatch) -> Duration {
    match within(10, watch.settled()).await {
        Some(WatchState::Ready(Resource::Cluster(c))) => c.connect_timeout,
        other => panic!("{other:?}"),
    }
}

/// Waits until `watch` holds a valid cluster connecting within `timeout`.
async fn cluster_with_timeout(watch: &mut ResourceWatch, timeout: Duration) {
    let wait = async {
        loop {
            if let WatchState::Ready(Resource::Cluster(c)) = watch.current()
                && c.connect_timeout == timeout
            {
                return;
            }
            watch.changed().await.expect("client running");
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!(
            "no cluster of {timeout:?} within 10 s: {:?}",
            watch.current()
        );
    }
}

/// Authority `a` on server A (`a_api`), the top-level servers B (`b_api`): a watch of one
/// `xdstp://a/` cluster, a whole `xds://a/svc` chain, an old-style target, and an old-style
/// listener whose route names the `xdstp://a/` cluster each get every resource from the
/// server its name belongs to; neither server is asked for the other's names; the dump
/// lists both servers' resources.
async fn each_authority_from_its_own_server(a_api: &str, b_api: &str) {
    let a = XdsTestServer::start().await.unwrap();
    let b = XdsTestServer::start().await.unwrap();
    let svc = Chain::xdstp("a", "svc");
    let greeter = Chain::old_style("greeter");
    let mixed = Chain {
        cluster: svc.cluster.clone(),
        endpoints: svc.endpoints.clone(),
        ..Chain::old_style("mixed")
    };
    let snapshot = svc.add(Snapshot::new(), "svc", 2001, 7);
    a.set_snapshot(greeter.add(snapshot, "greeter", 9001, 9));
    let snapshot = greeter.add(Snapshot::new(), "greeter", 1001, 3);
    let snapshot = svc.add(snapshot, "svc", 9002, 9);
    // The listener and route only: the cluster is authority a's.
    b.set_snapshot(mixed.front(snapshot, "mixed"));
    let client = client(
        vec![server(&b.uri(), b_api)],
        json!({"a": {"xds_servers": [server(&a.uri(), a_api)]}}),
    );

    let mut cluster = client.watch(ResourceType::Cluster, &svc.cluster).await;
    assert_eq!(
        cluster_timeout(&mut cluster).await,
        Duration::from_secs(7),
        "the cluster comes from A"
    );

    let listener = client
        .bootstrap()
        .listener_resource_name("xds://a/svc")
        .unwrap();
    assert_eq!(listener, svc.listener);
    let mut svc_watch = client.watch_target(&listener, "svc").await;
    let config = ready(&mut svc_watch).await;
    assert_eq!(config.listener.name, svc.listener);
    assert_eq!(config.route_config.name, svc.route);
    assert_eq!(endpoint_port(&config, &svc.cluster), Some(2001));

    let mut greeter_watch = client.watch_target("greeter", "greeter").await;
    let config = ready(&mut greeter_watch).await;
    assert_eq!(endpoint_port(&config, &greeter.cluster), Some(1001));

    let mut mixed_watch = client.watch_target("mixed", "mixed").await;
    let config = ready(&mut mixed_watch).await;
    assert_eq!(config.route_config.name, mixed.route);
    match &config.clusters[&svc.cluster] {
        ClusterState::Ready(c) => assert_eq!(c.cluster.connect_timeout, Duration::from_secs(7)),
        other => panic!("{other:?}"),
    }
    assert_eq!(endpoint_port(&config, &svc.cluster), Some(2001));

    // Every resource ACKed at each server, in the protocol the bootstrap gave it.
    for (server, api, names) in [
        (&a, a_api, svc.names().to_vec()),
        (
            &b,
            b_api,
            [&greeter.names()[..], &mixed.names()[..2]].concat(),
        ),
    ] {
        let requests = within(
            10,
            server.wait_for(|reqs| {
                [
                    type_url::LISTENER,
                    type_url::ROUTE,
                    type_url::CLUSTER,
                    type_url::ENDPOINTS,
                ]
                .iter()
                .all(|t| {
                    reqs.iter()
                        .any(|r| r.kind == RequestKind::Ack && r.type_url() == *t)
                })
            }),
        )
        .await;
        assert!(
            requests.iter().all(|r| r.delta.is_some() == (api == DELTA)),
            "{api}: {requests:#?}"
        );
        let asked = asked(server);
        for name in names {
            assert!(
                asked.contains(name),
                "{name} not asked of its server: {asked:?}"
            );
        }
    }
    let asked_a = asked(&a);
    assert!(
        asked_a.iter().all(|n| n.starts_with("xdstp://a/")),
        "A was asked for names not in authority a: {asked_a:?}"
    );
    let asked_b = asked(&b);
    assert!(
        asked_b.iter().all(|n| !n.starts_with("xdstp:")),
        "B was asked for xdstp names: {asked_b:?}"
    );

    // One dump holds both servers' resources, each ACKED.
    let dump = client.dump().await;
    let mut dumped: Vec<(&str, &str)> = dump
        .iter()
        .map(|r| {
            assert_eq!(r.status, ResourceStatus::Acked, "{r:?}");
            (r.type_url, r.name.as_str())
        })
        .collect();
    dumped.sort();
    let mut expected = vec![
        (type_url::LISTENER, svc.listener.as_str()),
        (type_url::ROUTE, svc.route.as_str()),
        (type_url::CLUSTER, svc.cluster.as_str()),
        (type_url::ENDPOINTS, svc.endpoints.as_str()),
        (type_url::LISTENER, greeter.listener.as_str()),
        (type_url::ROUTE, greeter.route.as_str()),
        (type_url::CLUSTER, greeter.cluster.as_str()),
        (type_url::ENDPOINTS, greeter.endpoints.as_str()),
        (type_url::LISTENER, mixed.listener.as_str()),
        (type_url::ROUTE, mixed.route.as_str()),
    ];
    expected.sort();
    assert_eq!(dumped, expected);
}

#[tokio::test]
async fn each_authority_gets_its_resources_from_its_own_server_sotw() {
    each_authority_from_its_own_server(SOTW, SOTW).await;
}

#[tokio::test]
async fn each_authority_gets_its_resources_from_its_own_server_a_delta_b_sotw() {
    each_authority_from_its_own_server(DELTA, SOTW).await;
}

#[tokio::test]
async fn each_authority_gets_its_resources_from_its_own_server_a_sotw_b_delta() {
    each_authority_from_its_own_server(SOTW, DELTA).await;
}

/// An authority that lists no servers uses the top-level ones, and one that lists the
/// top-level server again shares its stream (A47: servers are de-duplicated, so both
/// authorities' resources travel on the same ADS stream).
#[tokio::test]
async fn authorities_on_the_top_level_server_share_its_stream() {
    let b = XdsTestServer::start().await.unwrap();
    let bare = Chain::xdstp("bare", "svc");
    let same = Chain::xdstp("same", "svc");
    let old = Chain::old_style("greeter");
    let snapshot = bare.add(Snapshot::new(), "svc", 3001, 1);
    let snapshot = same.add(snapshot, "svc", 3002, 2);
    b.set_snapshot(old.add(snapshot, "greeter", 3003, 3));
    let client = client(
        vec![server(&b.uri(), SOTW)],
        json!({"bare": {}, "same": {"xds_servers": [server(&b.uri(), SOTW)]}}),
    );
    for (target, chain, port) in [
        ("xds://bare/svc", &bare, 3001),
        ("xds://same/svc", &same, 3002),
        ("xds:///greeter", &old, 3003),
    ] {
        let listener = client.bootstrap().listener_resource_name(target).unwrap();
        assert_eq!(listener, chain.listener);
        let authority = if chain.listener == old.listener {
            "greeter"
        } else {
            "svc"
        };
        let mut watch = client.watch_target(&listener, authority).await;
        let config = ready(&mut watch).await;
        assert_eq!(
            endpoint_port(&config, &chain.cluster),
            Some(port),
            "{target}"
        );
    }
    assert_eq!(b.total_streams(), 1, "one ADS stream for all three");
}

/// Authority `a` falls back from A1 (nothing listening) to A2 (gRFC A71 within the
/// authority's list), and back to A1 once it serves, while the top-level server B keeps
/// its one stream and the client's connection (which means the top-level servers) stays
/// on B.
#[tokio::test]
async fn fallback_runs_per_authority_and_leaves_the_top_level_stream_alone() {
    let a2 = XdsTestServer::start().await.unwrap();
    let b = XdsTestServer::start().await.unwrap();
    let svc = Chain::xdstp("a", "svc");
    let greeter = Chain::old_style("greeter");
    a2.set_snapshot(svc.add(Snapshot::new(), "svc", 2002, 7));
    let snapshot = greeter.add(Snapshot::new(), "greeter", 1001, 3);
    b.set_snapshot(svc.add(snapshot, "svc", 9002, 9));
    let a1_addr = refused_addr();
    let a1 = format!("http://{a1_addr}");
    let client = client(
        vec![server(&b.uri(), SOTW)],
        json!({"a": {"xds_servers": [server(&a1, SOTW), server(&a2.uri(), SOTW)]}}),
    );

    let mut greeter_watch = client.watch_target("greeter", "greeter").await;
    let config = ready(&mut greeter_watch).await;
    assert_eq!(endpoint_port(&config, &greeter.cluster), Some(1001));

    let mut svc_watch = client.watch_target(&svc.listener, "svc").await;
    let config = ready(&mut svc_watch).await;
    assert_eq!(endpoint_port(&config, &svc.cluster), Some(2002), "from A2");
    for r in client.dump().await {
        assert_eq!(r.status, ResourceStatus::Acked, "{r:?}");
    }

    assert_eq!(b.total_streams(), 1, "B's stream was not disturbed");
    assert!(b.requests().iter().all(|r| r.stream_id == 1));
    assert!(
        asked(&b).iter().all(|n| !n.starts_with("xdstp:")),
        "{:?}",
        asked(&b)
    );
    assert_eq!(
        *client.connection().borrow(),
        Connection::Connected {
            server: 0,
            uri: b.uri()
        }
    );

    // A1 comes up: authority a moves back to its primary (A71), B's stream still untouched.
    let a1 = XdsTestServer::start_on(a1_addr).await.unwrap();
    a1.set_snapshot(svc.add(Snapshot::new(), "svc", 2001, 7));
    within(10, async {
        loop {
            if let TargetState::Ready(c) = svc_watch.current()
                && endpoint_port(&c, &svc.cluster) == Some(2001)
            {
                return;
            }
            svc_watch.changed().await.expect("client running");
        }
    })
    .await;
    assert_eq!(b.total_streams(), 1, "B's stream was not disturbed");
    assert!(matches!(
        greeter_watch.current(),
        TargetState::Ready(c) if endpoint_port(&c, &greeter.cluster) == Some(1001)
    ));
}

/// A name of an authority the bootstrap does not list is invalid at once (no server is
/// asked, no does-not-exist timer runs), with a typed error; a route to a cluster of that
/// authority makes that cluster an error of the target's config, as any invalid cluster.
#[tokio::test]
async fn an_unknown_authority_is_invalid_at_once() {
    let a = XdsTestServer::start().await.unwrap();
    let b = XdsTestServer::start().await.unwrap();
    let nope = xdstp("nope", "cluster.v3.Cluster", "c");
    let greeter = Chain::old_style("greeter");
    b.set_snapshot(
        greeter
            .add(Snapshot::new(), "greeter", 1001, 3)
            .route(build::route_config(
                &greeter.route,
                vec![build::virtual_host(
                    "vh",
                    ["greeter"],
                    vec![build::route_weighted(
                        "",
                        &[(greeter.cluster.as_str(), 1), (nope.as_str(), 1)],
                    )],
                )],
            )),
    );
    let client = client(
        vec![server(&b.uri(), SOTW)],
        json!({"a": {"xds_servers": [server(&a.uri(), SOTW)]}}),
    );

    let mut watch = client.watch(ResourceType::Cluster, &nope).await;
    // Within 5 s while the does-not-exist timer is 60 s: settled without waiting for it.
    match within(5, watch.settled()).await {
        Some(WatchState::Invalid {
            last_good: None,
            error: ResourceFailure::UnknownAuthority { authority, .. },
        }) => assert_eq!(authority, "nope"),
        other => panic!("{other:?}"),
    }

    // A listener of an unknown authority: the target fails at once, typed.
    let nope_listener = xdstp("nope", "listener.v3.Listener", "svc");
    let mut target = client.watch_target(&nope_listener, "svc").await;
    match within(5, target.ready(Duration::from_secs(5))).await {
        Err(ReadyError::Target(TargetError::ListenerInvalid {
            name,
            error: ResourceFailure::UnknownAuthority { authority, .. },
        })) => {
            assert_eq!(name, nope_listener);
            assert_eq!(authority, "nope");
        }
        other => panic!("{other:?}"),
    }

    let mut target = client.watch_target("greeter", "greeter").await;
    let config = ready(&mut target).await;
    assert_eq!(endpoint_port(&config, &greeter.cluster), Some(1001));
    match &config.clusters[&nope] {
        ClusterState::Error(ClusterError::Invalid {
            name,
            error: ResourceFailure::UnknownAuthority { authority, .. },
        }) => {
            assert_eq!(name, &nope);
            assert_eq!(authority, "nope");
        }
        other => panic!("{other:?}"),
    }
    for s in [&a, &b] {
        assert!(
            asked(s).iter().all(|n| !n.contains("nope")),
            "{:?}",
            asked(s)
        );
    }
}

/// `?b=2&a=1` and `?a=1&b=2` name one resource (A47: context parameters sorted by key): two
/// watches share one subscription, to the canonical name; a server that sends the resource
/// under the other spelling updates both.
async fn two_spellings_are_one_resource(api: &str) {
    let a = XdsTestServer::start().await.unwrap();
    let base = xdstp("a", "cluster.v3.Cluster", "c");
    let canonical = format!("{base}?a=1&b=2");
    let other = format!("{base}?b=2&a=1");
    let endpoints = xdstp("a", "endpoint.v3.ClusterLoadAssignment", "c");
    a.set_snapshot(Snapshot::new().cluster(eds_cluster(&canonical, &endpoints, 7)));
    let client = client(
        vec![server(&format!("http://{}", refused_addr()), SOTW)],
        json!({"a": {"xds_servers": [server(&a.uri(), api)]}}),
    );

    let mut first = client.watch(ResourceType::Cluster, &other).await;
    let mut second = client.watch(ResourceType::Cluster, &canonical).await;
    cluster_with_timeout(&mut first, Duration::from_secs(7)).await;
    cluster_with_timeout(&mut second, Duration::from_secs(7)).await;
    within(10, acks(&a, type_url::CLUSTER, 1)).await;
    let asked = asked(&a);
    assert_eq!(
        asked,
        BTreeSet::from([canonical.clone()]),
        "asked once, canonically"
    );
    let stream = a.stream_ids()[0];
    let sub = a.subscription(stream, type_url::CLUSTER).unwrap();
    assert_eq!(sub.names, BTreeSet::from([canonical.clone()]));

    // The server sends the resource named the other way (under the canonical key, so the
    // test server sends it to the canonical subscription).
    a.update(|s| {
        let named_otherwise = eds_cluster(&other, &endpoints, 9);
        s.insert_raw(
            type_url::CLUSTER,
            canonical.clone(),
            build::pack(&named_otherwise),
        );
    });
    cluster_with_timeout(&mut first, Duration::from_secs(9)).await;
    cluster_with_timeout(&mut second, Duration::from_secs(9)).await;
    within(10, acks(&a, type_url::CLUSTER, 2)).await;
    assert!(
        a.requests().iter().all(|r| r.kind != RequestKind::Nack),
        "{:#?}",
        a.requests()
    );

    let clusters: Vec<_> = client
        .dump()
        .await
        .into_iter()
        .filter(|r| r.type_url == type_url::CLUSTER)
        .collect();
    assert_eq!(clusters.len(), 1, "{clusters:#?}");
    assert_eq!(clusters[0].name, canonical);
    assert_eq!(clusters[0].status, ResourceStatus::Acked);
}

#[tokio::test]
async fn two_spellings_of_a_name_are_one_resource_sotw() {
    two_spellings_are_one_resource(SOTW).await;
}

/// A delta `Resource` named `...?a=1&b=2` may carry a cluster named `...?b=2&a=1` (before
/// the names were compared in canonical form it was NACKed as `NameMismatch`).
#[tokio::test]
async fn two_spellings_of_a_name_are_one_resource_delta() {
    two_spellings_are_one_resource(DELTA).await;
}

/// A SotW response may wrap a resource in a `Resource` whose name spells the resource's own
/// name with its context parameters in another order: one resource, accepted.
/// (Before the names were compared in canonical form it was rejected as
/// `ResourceErrorKind::WrapperNameMismatch`.)
#[tokio::test]
async fn a_resource_wrapper_may_spell_the_name_otherwise() {
    let a = XdsTestServer::start().await.unwrap();
    let base = xdstp("a", "cluster.v3.Cluster", "c");
    let canonical = format!("{base}?a=1&b=2");
    let other = format!("{base}?b=2&a=1");
    let endpoints = xdstp("a", "endpoint.v3.ClusterLoadAssignment", "c");
    let wrapped = build::pack(&Wrapper {
        name: canonical.clone(),
        resource: Some(build::pack(&eds_cluster(&other, &endpoints, 7))),
        version: "1".into(),
        ..Default::default()
    });
    a.set_snapshot(Snapshot::new().raw(type_url::CLUSTER, canonical.clone(), wrapped));
    let client = client(
        vec![server(&format!("http://{}", refused_addr()), SOTW)],
        json!({"a": {"xds_servers": [server(&a.uri(), SOTW)]}}),
    );
    let mut watch = client.watch(ResourceType::Cluster, &canonical).await;
    cluster_with_timeout(&mut watch, Duration::from_secs(7)).await;
    within(10, acks(&a, type_url::CLUSTER, 1)).await;
}

/// An authority's own server is connected while something of it is watched: once nothing
/// is (for the idle timeout), its stream closes, and the next watch opens one again and is
/// answered. The top-level server keeps its stream throughout.
#[tokio::test]
async fn an_authority_server_is_left_when_nothing_of_it_is_watched() {
    let a = XdsTestServer::start().await.unwrap();
    let b = XdsTestServer::start().await.unwrap();
    let name = xdstp("a", "cluster.v3.Cluster", "c");
    a.set_snapshot(Snapshot::new().cluster(eds_cluster(&name, &name, 3)));
    b.set_snapshot(Snapshot::new().cluster(eds_cluster("top", "top", 4)));
    let bootstrap = Bootstrap::from_json_value(&json!({
        "xds_servers": [server(&b.uri(), SOTW)],
        "authorities": {"a": {"xds_servers": [server(&a.uri(), SOTW)]}},
        "node": {"id": NODE},
    }))
    .unwrap();
    let client = XdsClient::builder(&bootstrap)
        .unwrap()
        .idle_timeout(Duration::from_millis(200))
        .start();
    let mut top = client.watch(ResourceType::Cluster, "top").await;
    assert_eq!(cluster_timeout(&mut top).await, Duration::from_secs(4));

    let mut watch = client.watch(ResourceType::Cluster, &name).await;
    assert_eq!(cluster_timeout(&mut watch).await, Duration::from_secs(3));
    assert_eq!(a.stream_count(), 1);
    drop(watch);
    within(10, a.wait_for_streams(0)).await;
    assert_eq!(
        a.total_streams(),
        1,
        "closed, not reopened while nothing is watched"
    );

    // Watched again: a new stream, and the value (changed meanwhile) comes from it.
    a.set_snapshot(Snapshot::new().cluster(eds_cluster(&name, &name, 5)));
    let mut watch = client.watch(ResourceType::Cluster, &name).await;
    cluster_with_timeout(&mut watch, Duration::from_secs(5)).await;
    assert_eq!(a.total_streams(), 2);
    assert_eq!(b.total_streams(), 1, "the top-level stream stayed open");
    assert_eq!(b.stream_count(), 1);
}

/// Within the idle timeout a new watch finds the authority's stream still open: a target
/// that moves from one resource to another does not reconnect.
#[tokio::test]
async fn an_authority_stream_outlives_a_short_gap_between_watches() {
    let a = XdsTestServer::start().await.unwrap();
    let b = XdsTestServer::start().await.unwrap();
    let first = xdstp("a", "cluster.v3.Cluster", "c1");
    let second = xdstp("a", "cluster.v3.Cluster", "c2");
    a.set_snapshot(
        Snapshot::new()
            .cluster(eds_cluster(&first, &first, 3))
            .cluster(eds_cluster(&second, &second, 6)),
    );
    let client = client(
        vec![server(&b.uri(), SOTW)],
        json!({"a": {"xds_servers": [server(&a.uri(), SOTW)]}}),
    );
    let mut watch = client.watch(ResourceType::Cluster, &first).await;
    assert_eq!(cluster_timeout(&mut watch).await, Duration::from_secs(3));
    drop(watch);
    let mut watch = client.watch(ResourceType::Cluster, &second).await;
    assert_eq!(cluster_timeout(&mut watch).await, Duration::from_secs(6));
    assert_eq!(a.total_streams(), 1, "the same stream");
}
