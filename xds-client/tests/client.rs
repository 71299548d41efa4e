//! The xDS client against our ADS test server on loopback: a real tonic ADS stream, real
//! HTTP/2, the full Listener -> RouteConfiguration -> Cluster -> Endpoints chain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshwork_test_support::xds::{bootstrap, routes_to, static_cluster};
use meshwork_test_support::{refused_addr, within};
use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::client::{Connection, ReadyError, XdsClient};
use meshwork_xds::protocol::ResourceStatus;
use meshwork_xds::resource::{ClusterLoadAssignment, ResourceType};
use meshwork_xds::server::{Snapshot, XdsTestServer, build, type_url};
use meshwork_xds::watch::{ClusterChildren, ClusterState, TargetError, TargetState, XdsConfig};

const TARGET: &str = "greeter:50051";

fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
    ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect()
}

/// Listener -> routes -> `clusters` (weighted equally), each with endpoints on `ports`.
fn snapshot(clusters: &[&str], ports: &[u16]) -> Snapshot {
    let mut snapshot = routes_to(TARGET, clusters);
    for cluster in clusters {
        snapshot = snapshot
            .cluster(build::eds_cluster(cluster))
            .endpoints(build::endpoints(cluster, &addrs(ports)));
    }
    snapshot
}

const NODE: &str = "meshwork-client-test";

fn client(servers: &[String]) -> XdsClient {
    let (min, max) = (Duration::from_millis(20), Duration::from_millis(100));
    meshwork_test_support::xds::builder(NODE, servers, min, max)
        .does_not_exist_timeout(Duration::from_millis(500))
        .start()
}

fn endpoints_of(config: &XdsConfig, cluster: &str) -> Arc<ClusterLoadAssignment> {
    match &config.clusters[cluster] {
        ClusterState::Ready(c) => match &c.children {
            ClusterChildren::Endpoints(Ok(cla)) => cla.clone(),
            other => panic!("{cluster}: {other:?}"),
        },
        other => panic!("{cluster}: {other:?}"),
    }
}

fn endpoint_count(config: &XdsConfig, cluster: &str) -> usize {
    endpoints_of(config, cluster)
        .localities
        .iter()
        .map(|l| l.endpoints.len())
        .sum()
}

async fn next_ready(watch: &mut meshwork_xds::client::TargetWatch) -> Arc<XdsConfig> {
    loop {
        match within(10, watch.changed()).await.expect("client running") {
            TargetState::Ready(config) => return config,
            TargetState::Pending => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn complete_config_arrives_through_the_whole_chain() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a", "b"], &[1001, 1002]));
    let client = client(&[server.uri()]);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let config = watch.ready(Duration::from_secs(10)).await.unwrap();

    assert_eq!(config.listener.name, TARGET);
    assert_eq!(config.route_config.name, "routes");
    assert_eq!(config.virtual_host().domains, [TARGET]);
    assert_eq!(config.clusters.len(), 2);
    assert_eq!(endpoint_count(&config, "a"), 2);
    assert_eq!(endpoint_count(&config, "b"), 2);

    // Every resource ACKed, on the client's and on the server's side.
    for t in [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ] {
        within(5, server.wait_for_ack(t, "1")).await;
    }
    let dump = client.dump().await;
    assert_eq!(dump.len(), 6, "{dump:#?}");
    assert!(
        dump.iter()
            .all(|r| r.status == ResourceStatus::Acked && r.version.as_deref() == Some("1"))
    );
    let json = serde_json::to_value(&dump).unwrap();
    assert_eq!(json[0]["status"], "ACKED");
    assert!(
        json[0]["type"]
            .as_str()
            .unwrap()
            .starts_with("type.googleapis.com/envoy.config.")
    );
    assert!(matches!(
        *client.connection().borrow(),
        Connection::Connected { server: 0, .. }
    ));
}

#[tokio::test]
async fn an_eds_update_touches_only_its_cluster() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a", "b"], &[1001, 1002]));
    let client = client(&[server.uri()]);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let first = watch.ready(Duration::from_secs(10)).await.unwrap();

    server.update(|s| {
        s.insert_endpoints(build::endpoints("a", &addrs(&[1001, 1002, 1003])));
    });
    let second = next_ready(&mut watch).await;
    assert_eq!(endpoint_count(&second, "a"), 3);
    assert!(
        Arc::ptr_eq(&endpoints_of(&first, "b"), &endpoints_of(&second, "b")),
        "b untouched"
    );
    assert!(Arc::ptr_eq(&first.route_config, &second.route_config));
}

#[tokio::test]
async fn a_cluster_that_never_arrives_is_an_error_for_that_cluster_only() {
    let server = XdsTestServer::start().await.unwrap();
    // The route also sends traffic to "ghost", which the control plane never defines.
    let snap = routes_to(TARGET, &["a", "ghost"])
        .cluster(build::eds_cluster("a"))
        .endpoints(build::endpoints("a", &addrs(&[1001])));
    server.set_snapshot(snap);
    let client = client(&[server.uri()]);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let config = watch.ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(endpoint_count(&config, "a"), 1);
    match &config.clusters["ghost"] {
        ClusterState::Error(e) => assert_eq!(e.to_string(), "cluster ghost does not exist"),
        other => panic!("{other:?}"),
    }
    let dump = client.dump().await;
    let ghost = dump.iter().find(|r| r.name == "ghost").unwrap();
    assert_eq!(ghost.status, ResourceStatus::DoesNotExist);
}

#[tokio::test]
async fn a_listener_that_does_not_exist_fails_with_a_clear_error() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a"], &[1001]));
    let client = client(&[server.uri()]);
    let mut watch = client.watch_target("nope:1", "nope:1").await;
    let err = watch.ready(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(
        err,
        ReadyError::Target(TargetError::ListenerDoesNotExist("nope:1".into()))
    );
    assert_eq!(err.to_string(), "listener nope:1 does not exist");
}

#[tokio::test]
async fn no_virtual_host_for_the_authority_is_an_error() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a"], &[1001]));
    let client = client(&[server.uri()]);
    let mut watch = client.watch_target(TARGET, "other:80").await;
    let err = watch.ready(Duration::from_secs(10)).await.unwrap_err();
    assert!(
        matches!(err, ReadyError::Target(TargetError::NoVirtualHost { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn an_invalid_update_is_nacked_and_the_last_good_config_keeps_serving() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a"], &[1001, 1002]));
    let client = client(&[server.uri()]);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    watch.ready(Duration::from_secs(10)).await.unwrap();

    // A STATIC cluster is not something a gRPC-style client accepts.
    server.update(|s| {
        s.insert_cluster(static_cluster("a"));
    });
    let reason = within(5, server.wait_for_nack(type_url::CLUSTER)).await;
    assert!(
        reason.contains("\"a\""),
        "the NACK names the resource: {reason}"
    );

    let dump = client.dump().await;
    let a = dump
        .iter()
        .find(|r| r.name == "a" && r.type_url == type_url::CLUSTER)
        .unwrap();
    assert_eq!(a.status, ResourceStatus::Nacked);
    assert_eq!(
        a.version.as_deref(),
        Some("1"),
        "still the last accepted version"
    );
    assert!(a.error.as_deref().unwrap().contains("a"));
    match watch.current() {
        TargetState::Ready(config) => assert_eq!(endpoint_count(&config, "a"), 2),
        other => panic!("the last good config keeps serving: {other:?}"),
    }
}

/// With the server feature `fail_on_data_errors` (gRFC A88, from the bootstrap), a rejected
/// update drops the cached cluster: the target turns that cluster into an error at once
/// (its calls fail) instead of serving the last good value; a valid update restores it.
#[tokio::test]
async fn fail_on_data_errors_from_the_bootstrap_drops_a_rejected_cluster() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a"], &[1001, 1002]));
    let bootstrap = Bootstrap::builder()
        .node_id(NODE)
        .server(
            XdsServer::new(server.uri())
                .unwrap()
                .with_server_feature("fail_on_data_errors"),
        )
        .build()
        .unwrap();
    let client = XdsClient::builder(&bootstrap).unwrap().start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let config = watch.ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(endpoint_count(&config, "a"), 2);

    server.update(|s| {
        s.insert_cluster(static_cluster("a"));
    });
    within(5, server.wait_for_nack(type_url::CLUSTER)).await;
    let failed = within(5, async {
        loop {
            if let TargetState::Ready(config) = watch.current()
                && let Some(ClusterState::Error(e)) = config.clusters.get("a")
            {
                return e.to_string();
            }
            watch.changed().await;
        }
    })
    .await;
    assert!(failed.contains("cluster a"), "{failed}");
    let dump = client.dump().await;
    let a = dump
        .iter()
        .find(|r| r.name == "a" && r.type_url == type_url::CLUSTER)
        .unwrap();
    assert_eq!(a.status, ResourceStatus::Nacked);

    // Fixed upstream: served again.
    server.set_snapshot(snapshot(&["a"], &[1001, 1002]));
    let config = within(5, async {
        loop {
            if let TargetState::Ready(config) = watch.current()
                && matches!(config.clusters.get("a"), Some(ClusterState::Ready(_)))
            {
                return config;
            }
            watch.changed().await;
        }
    })
    .await;
    assert_eq!(endpoint_count(&config, "a"), 2);
}

#[tokio::test]
async fn reconnect_resubscribes_with_the_last_acked_versions() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a"], &[1001]));
    let client = client(&[server.uri()]);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let before = watch.ready(Duration::from_secs(10)).await.unwrap();
    within(5, server.wait_for_ack(type_url::ENDPOINTS, "1")).await;

    assert!(server.close_all_streams() >= 1);
    within(10, server.wait_for_streams(1)).await;
    let resubscribed = within(
        10,
        server.wait_for(|reqs| {
            reqs.iter()
                .filter(|r| {
                    r.request.type_url == type_url::ENDPOINTS && r.request.response_nonce.is_empty()
                })
                .count()
                >= 2
        }),
    )
    .await;
    let again = resubscribed
        .iter()
        .filter(|r| {
            r.request.type_url == type_url::ENDPOINTS && r.request.response_nonce.is_empty()
        })
        .nth(1)
        .unwrap();
    assert_eq!(
        again.request.version_info, "1",
        "re-subscribes with the last ACKed version"
    );
    assert_eq!(again.request.resource_names, ["a"]);
    match watch.current() {
        TargetState::Ready(config) => assert_eq!(config, before),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_cache_keeps_serving_while_the_control_plane_is_away() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a"], &[1001]));
    let client = client(&[server.uri()]);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let before = watch.ready(Duration::from_secs(10)).await.unwrap();
    let mut connection = client.connection();
    server.shutdown().await.unwrap();
    within(10, connection.wait_for(|c| *c == Connection::Disconnected))
        .await
        .unwrap();

    // A new watcher of the same target gets the cached config with no server at all.
    let mut second = client.watch_target(TARGET, TARGET).await;
    assert_eq!(second.ready(Duration::from_secs(1)).await.unwrap(), before);
    assert!(matches!(watch.current(), TargetState::Ready(_)));
}

#[tokio::test]
async fn falls_back_while_resources_are_missing_and_returns_to_the_primary() {
    let primary_addr = refused_addr();
    let secondary = XdsTestServer::start().await.unwrap();
    secondary.set_snapshot(snapshot(&["a"], &[2001]));
    let client = client(&[format!("http://{primary_addr}"), secondary.uri()]);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let config = watch.ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        endpoints_of(&config, "a").localities[0].endpoints[0]
            .address
            .port(),
        2001
    );
    assert!(matches!(
        *client.connection().borrow(),
        Connection::Connected { server: 1, .. }
    ));

    // The primary comes up with its own view; the client moves back to it.
    let primary = XdsTestServer::start_on(primary_addr).await.unwrap();
    primary.set_snapshot(snapshot(&["a"], &[1001, 1002]));
    let mut connection = client.connection();
    within(
        10,
        connection.wait_for(|c| matches!(c, Connection::Connected { server: 0, .. })),
    )
    .await
    .unwrap();
    let config = next_ready(&mut watch).await;
    assert_eq!(endpoint_count(&config, "a"), 2);
    assert_eq!(
        endpoints_of(&config, "a").localities[0].endpoints[0]
            .address
            .port(),
        1001
    );
}

#[tokio::test]
async fn does_not_fall_back_when_everything_is_cached() {
    let primary = XdsTestServer::start().await.unwrap();
    primary.set_snapshot(snapshot(&["a"], &[1001]));
    let secondary = XdsTestServer::start().await.unwrap();
    secondary.set_snapshot(snapshot(&["a"], &[2001]));
    let client = client(&[primary.uri(), secondary.uri()]);
    let mut watch = client.watch_target(TARGET, TARGET).await;
    watch.ready(Duration::from_secs(10)).await.unwrap();
    let mut connection = client.connection();
    primary.shutdown().await.unwrap();
    within(10, connection.wait_for(|c| *c == Connection::Disconnected))
        .await
        .unwrap();
    // Several reconnect rounds go by; the secondary never sees a stream (gRFC A71).
    within(10, async {
        for _ in 0..3 {
            connection.changed().await.unwrap();
        }
    })
    .await;
    assert_eq!(secondary.total_streams(), 0);
    assert!(matches!(watch.current(), TargetState::Ready(_)));
}

#[tokio::test]
async fn dropping_the_last_watch_unsubscribes() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a"], &[1001]));
    let client = client(&[server.uri()]);
    let cluster = client.watch(ResourceType::Cluster, "a").await;
    let mut endpoints = client.watch(ResourceType::ClusterLoadAssignment, "a").await;
    within(10, endpoints.settled()).await.unwrap();
    drop(endpoints);
    let unsubscribed = within(
        10,
        server.wait_for(|reqs| {
            reqs.iter().any(|r| {
                r.request.type_url == type_url::ENDPOINTS && r.request.resource_names.is_empty()
            })
        }),
    )
    .await;
    assert!(!unsubscribed.is_empty());
    assert!(
        cluster.current().resource().is_some(),
        "the other watch is untouched"
    );
}

/// The client's metrics through an in-memory exporter: gRFC A78's names, units and
/// attributes for a connected client that accepted a config and then NACKed a cluster.
#[tokio::test]
async fn metrics_follow_grfc_a78() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot(&["a"], &[1001]));
    let client = XdsClient::builder(&bootstrap(NODE, &[server.uri()]))
        .unwrap()
        .meter(provider.meter("meshwork"))
        .metrics_target("xds:///greeter")
        .start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    watch.ready(Duration::from_secs(10)).await.unwrap();
    server.update(|s| {
        s.insert_cluster(static_cluster("a"));
    });
    within(5, server.wait_for_nack(type_url::CLUSTER)).await;
    // The worker handled the response before it answered this.
    client.dump().await;

    provider.force_flush().unwrap();
    let metrics = exporter.get_finished_metrics().unwrap();
    let last = metrics.last().unwrap();
    // (name, unit, attributes, value) of every u64 point.
    let mut points = Vec::new();
    for scope in last.scope_metrics() {
        for m in scope.metrics() {
            let mut push = |attrs: Vec<(String, String)>, v: u64| {
                points.push((m.name().to_owned(), m.unit().to_owned(), attrs, v));
            };
            let kv = |it: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                let mut v: Vec<(String, String)> = it
                    .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect();
                v.sort();
                v
            };
            match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    for p in s.data_points() {
                        push(kv(&mut p.attributes()), p.value());
                    }
                }
                AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        push(kv(&mut p.attributes()), p.value());
                    }
                }
                _ => {}
            }
        }
    }
    let find = |name: &str, want: &[(&str, &str)]| -> (String, u64) {
        let hits: Vec<_> = points
            .iter()
            .filter(|(n, _, attrs, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| attrs.iter().any(|(ak, av)| ak == k && av == v))
            })
            .collect();
        assert_eq!(hits.len(), 1, "{name} {want:?} in {points:#?}");
        (hits[0].1.clone(), hits[0].3)
    };
    let uri = server.uri();
    let target = ("grpc.target", "xds:///greeter");
    let on = ("grpc.xds.server", uri.as_str());
    let cluster = ("grpc.xds.resource_type", type_url::CLUSTER);
    let listener = ("grpc.xds.resource_type", type_url::LISTENER);
    assert_eq!(
        find("grpc.xds_client.connected", &[target, on]),
        ("{bool}".into(), 1)
    );
    assert_eq!(
        find(
            "grpc.xds_client.resource_updates_valid",
            &[target, on, cluster]
        ),
        ("{resource}".into(), 1)
    );
    assert_eq!(
        find(
            "grpc.xds_client.resource_updates_valid",
            &[target, on, listener]
        ),
        ("{resource}".into(), 1)
    );
    assert_eq!(
        find(
            "grpc.xds_client.resource_updates_invalid",
            &[target, on, cluster]
        ),
        ("{resource}".into(), 1)
    );
    let cached = |state: &'static str, ty| {
        find(
            "grpc.xds_client.resources",
            &[
                target,
                ("grpc.xds.authority", "#old"),
                ("grpc.xds.cache_state", state),
                ty,
            ],
        )
    };
    assert_eq!(
        cached("nacked_but_cached", cluster),
        ("{resource}".into(), 1)
    );
    assert_eq!(cached("acked", listener), ("{resource}".into(), 1));
}

/// A caller that stops waiting for `watch` or `watch_target` (its future dropped, e.g. by a
/// timeout) leaves no subscription behind.
#[tokio::test]
async fn a_watch_given_up_while_waiting_leaves_no_subscription() {
    let server = XdsTestServer::start().await.unwrap();
    let client = XdsClient::start(&bootstrap("n", &[server.uri()])).unwrap();
    {
        let watch = client.watch(ResourceType::Cluster, "given-up");
        let target = client.watch_target("given-up-target", "given-up-target");
        tokio::pin!(watch, target);
        // One poll sends the subscription; then the caller gives up.
        assert!(futures_util::poll!(watch.as_mut()).is_pending());
        assert!(futures_util::poll!(target.as_mut()).is_pending());
    }
    // Commands are handled in order: the dump comes after the subscriptions and their
    // release.
    let dump = within(10, client.dump()).await;
    assert!(
        dump.iter().all(|r| !r.name.starts_with("given-up")),
        "a given-up watch is still subscribed: {dump:?}"
    );
}
