//! The ADS test server over real loopback connections, driven by the raw tonic ADS client
//! stub of envoy-types.
use std::future::Future;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshwork_xds::server::{RequestKind, Snapshot, XdsTestServer, resource_name, type_url};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// Bounds every wait, so that a bug fails the test instead of hanging it. Not a sleep: the
/// awaited future completes as soon as its condition holds.
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("timed out")
}

struct AdsStream {
    requests: mpsc::UnboundedSender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl AdsStream {
    async fn open(server: &XdsTestServer) -> Self {
        let client = within(AggregatedDiscoveryServiceClient::connect(server.uri()))
            .await
            .expect("connect");
        Self::open_on(client).await
    }

    async fn open_on(mut client: AggregatedDiscoveryServiceClient<Channel>) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let responses =
            within(client.stream_aggregated_resources(UnboundedReceiverStream::new(rx)))
                .await
                .expect("stream")
                .into_inner();
        Self {
            requests,
            responses,
        }
    }

    fn send(&self, type_url: &str, names: &[&str], version: &str, nonce: &str) {
        self.requests
            .send(DiscoveryRequest {
                type_url: type_url.to_owned(),
                resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
                version_info: version.to_owned(),
                response_nonce: nonce.to_owned(),
                ..Default::default()
            })
            .expect("request stream open");
    }

    fn nack(&self, type_url: &str, names: &[&str], version: &str, nonce: &str, message: &str) {
        self.requests
            .send(DiscoveryRequest {
                type_url: type_url.to_owned(),
                resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
                version_info: version.to_owned(),
                response_nonce: nonce.to_owned(),
                error_detail: Some(RpcStatus {
                    code: Code::InvalidArgument as i32,
                    message: message.to_owned(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .expect("request stream open");
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        within(self.responses.message())
            .await
            .expect("stream ok")
            .expect("a response")
    }

    async fn recv_status(&mut self) -> tonic::Status {
        loop {
            match within(self.responses.message()).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended with OK"),
                Err(status) => return status,
            }
        }
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .filter_map(resource_name)
        .collect()
}

fn listener(name: &str) -> Listener {
    Listener {
        name: name.to_owned(),
        ..Default::default()
    }
}

fn cluster(name: &str, lb: i32) -> Cluster {
    Cluster {
        name: name.to_owned(),
        lb_policy: lb,
        ..Default::default()
    }
}

fn endpoints(name: &str) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        ..Default::default()
    }
}

fn responses_on(server: &XdsTestServer, stream_id: u64) -> usize {
    server
        .responses()
        .iter()
        .filter(|r| r.stream_id == stream_id)
        .count()
}

#[tokio::test]
async fn initial_response_and_ack_that_sends_nothing() {
    let server = XdsTestServer::start().await.unwrap();
    assert!(server.uri().starts_with("http://127.0.0.1:"));
    assert_ne!(server.addr().port(), 0);
    server.set_snapshot(
        Snapshot::new()
            .listener(listener("a"))
            .listener(listener("b")),
    );

    let mut ads = AdsStream::open(&server).await;
    ads.send(type_url::LISTENER, &["a"], "", "");
    let r = ads.recv().await;
    assert_eq!(r.type_url, type_url::LISTENER);
    assert_eq!(r.version_info, "1");
    assert_eq!(names(&r), ["a"]);
    assert!(!r.nonce.is_empty());

    ads.send(type_url::LISTENER, &["a"], "1", &r.nonce);
    let ack = within(server.wait_for_ack(type_url::LISTENER, "1")).await;
    assert_eq!(ack.kind, RequestKind::Ack);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].kind, RequestKind::Initial);
    assert_eq!(requests[0].stream_id, ack.stream_id);
    // Read in place, the same record.
    let kinds = server.with_requests(|r| r.iter().map(|r| r.kind).collect::<Vec<_>>());
    assert_eq!(kinds, [RequestKind::Initial, RequestKind::Ack]);
    // The ACK was handled under the same lock that records responses: none followed it.
    assert_eq!(server.responses().len(), 1);
}

#[tokio::test]
async fn legacy_and_explicit_wildcards() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .listener(listener("l1"))
            .listener(listener("l2"))
            .cluster(cluster("c1", 0))
            .cluster(cluster("c2", 0)),
    );
    let mut ads = AdsStream::open(&server).await;
    ads.send(type_url::LISTENER, &[], "", "");
    let lds = ads.recv().await;
    assert_eq!(names(&lds), ["l1", "l2"]);
    ads.send(type_url::CLUSTER, &["*", "c1"], "", "");
    let cds = ads.recv().await;
    assert_eq!(names(&cds), ["c1", "c2"]);

    let id = server.stream_ids()[0];
    let lds_sub = server.subscription(id, type_url::LISTENER).unwrap();
    assert!(lds_sub.wildcard && lds_sub.legacy_wildcard);
    let cds_sub = server.subscription(id, type_url::CLUSTER).unwrap();
    assert!(cds_sub.wildcard && !cds_sub.legacy_wildcard);
    assert!(cds_sub.names.contains("c1"));

    // Envoy-style ACK with empty names keeps the legacy wildcard.
    ads.send(type_url::LISTENER, &[], "1", &lds.nonce);
    within(server.wait_for_ack(type_url::LISTENER, "1")).await;
    assert!(
        server
            .subscription(id, type_url::LISTENER)
            .unwrap()
            .wildcard
    );
    server.update(|s| {
        s.insert_listener(listener("l3"));
    });
    let lds = ads.recv().await;
    assert_eq!(lds.version_info, "2");
    assert_eq!(names(&lds), ["l1", "l2", "l3"]);
}

#[tokio::test]
async fn unsubscribe_stops_pushes_and_sends_nothing() {
    let server = XdsTestServer::start().await.unwrap();
    let route = |name: &str, validate: bool| RouteConfiguration {
        name: name.to_owned(),
        validate_clusters: validate.then(Default::default),
        ..Default::default()
    };
    server.set_snapshot(
        Snapshot::new()
            .route(route("r1", false))
            .route(route("r2", false)),
    );
    let mut ads = AdsStream::open(&server).await;
    ads.send(type_url::ROUTE, &["r1", "r2"], "", "");
    let r = ads.recv().await;
    assert_eq!(names(&r), ["r1", "r2"]);
    let id = server.stream_ids()[0];

    ads.send(type_url::ROUTE, &["r1"], "1", &r.nonce);
    within(server.wait_for_ack(type_url::ROUTE, "1")).await;
    assert_eq!(responses_on(&server, id), 1);
    // r2 changes: not this stream's business any more (pushes happen inside `update`).
    server.update(|s| {
        s.insert_route(route("r2", true));
    });
    assert_eq!(responses_on(&server, id), 1);
    // r1 changes: pushed, alone.
    server.update(|s| {
        s.insert_route(route("r1", true));
    });
    let r = ads.recv().await;
    assert_eq!(names(&r), ["r1"]);
    assert_eq!(r.version_info, "3");
    // An empty list now unsubscribes from everything.
    ads.send(type_url::ROUTE, &[], "3", &r.nonce);
    within(server.wait_for_ack(type_url::ROUTE, "3")).await;
    let sub = server.subscription(id, type_url::ROUTE).unwrap();
    assert!(!sub.wildcard && sub.names.is_empty());
    server.update(|s| {
        s.remove(type_url::ROUTE, "r1");
    });
    assert_eq!(responses_on(&server, id), 2);
}

#[tokio::test]
async fn nack_is_recorded_and_answered_with_nothing() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(Snapshot::new().cluster(cluster("c1", 0)));
    let mut ads = AdsStream::open(&server).await;
    ads.send(type_url::CLUSTER, &["c1"], "", "");
    let r = ads.recv().await;
    ads.nack(type_url::CLUSTER, &["c1"], "", &r.nonce, "clusters[0]: bad");
    let message = within(server.wait_for_nack(type_url::CLUSTER)).await;
    assert_eq!(message, "clusters[0]: bad");
    assert_eq!(server.requests().last().unwrap().kind, RequestKind::Nack);
    assert_eq!(server.responses().len(), 1);

    // The fix is pushed; a second NACK is a new one for `wait_for_nack`.
    server.update(|s| {
        s.insert_cluster(cluster("c1", 1));
    });
    let r = ads.recv().await;
    assert_eq!(r.version_info, "2");
    ads.nack(type_url::CLUSTER, &["c1"], "", &r.nonce, "still bad");
    assert_eq!(
        within(server.wait_for_nack(type_url::CLUSTER)).await,
        "still bad"
    );
}

#[tokio::test]
async fn stale_nonce_is_ignored() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .cluster(cluster("c1", 0))
            .cluster(cluster("c2", 0)),
    );
    let mut ads = AdsStream::open(&server).await;
    ads.send(type_url::CLUSTER, &["c1"], "", "");
    let first = ads.recv().await;
    server.update(|s| {
        s.insert_cluster(cluster("c1", 1));
    });
    let second = ads.recv().await;

    // Answering the first response after the second one was sent: stale, even with new
    // names and an error.
    ads.nack(type_url::CLUSTER, &["c1", "c2"], "", &first.nonce, "late");
    let requests = within(server.wait_for(|r| r.len() == 2)).await;
    assert_eq!(requests[1].kind, RequestKind::Stale);
    assert_eq!(server.responses().len(), 2);
    let id = requests[1].stream_id;
    assert!(
        !server
            .subscription(id, type_url::CLUSTER)
            .unwrap()
            .names
            .contains("c2")
    );

    ads.send(type_url::CLUSTER, &["c1", "c2"], "2", &second.nonce);
    let r = ads.recv().await;
    assert_eq!(names(&r), ["c1", "c2"]);
    assert_eq!(server.requests()[2].kind, RequestKind::Ack);
}

#[tokio::test]
async fn snapshot_change_reaches_only_interested_streams_with_a_new_version() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .listener(listener("l1"))
            .cluster(cluster("c1", 0)),
    );
    let mut lds = AdsStream::open(&server).await;
    let mut cds = AdsStream::open(&server).await;
    within(server.wait_for_streams(2)).await;
    assert_eq!(server.total_streams(), 2);
    lds.send(type_url::LISTENER, &["l1"], "", "");
    let l = lds.recv().await;
    cds.send(type_url::CLUSTER, &["c1"], "", "");
    let c = cds.recv().await;
    assert_eq!(
        (l.version_info.as_str(), c.version_info.as_str()),
        ("1", "1")
    );
    let [lds_id, cds_id] = [0, 1].map(|i| server.stream_ids()[i]);

    server.update(|s| {
        s.insert_cluster(cluster("c1", 1));
    });
    let c = cds.recv().await;
    assert_eq!(c.version_info, "2");
    assert_eq!(names(&c), ["c1"]);
    assert_eq!(responses_on(&server, lds_id), 1);
    assert_eq!(responses_on(&server, cds_id), 2);
    assert_eq!(server.version(type_url::LISTENER), "1");
    assert_eq!(server.snapshot().version(type_url::CLUSTER), Some("2"));

    // An edit may read the server; an edit that changes nothing pushes nothing.
    server.update(|s| {
        assert_eq!(server.version(type_url::CLUSTER), "2");
        assert!(s.get(type_url::CLUSTER, "c1").is_some());
    });
    assert_eq!(server.responses().len(), 3);
    // Setting identical content pushes nothing and keeps versions.
    server.set_snapshot(server.snapshot());
    assert_eq!(server.responses().len(), 3);
    assert_eq!(server.version(type_url::CLUSTER), "2");
}

#[tokio::test]
async fn rds_and_eds_responses_carry_the_subscribed_resources_that_exist() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .endpoints(endpoints("e1"))
            .endpoints(endpoints("e3")),
    );
    let mut ads = AdsStream::open(&server).await;
    ads.send(type_url::ENDPOINTS, &["e1", "e2"], "", "");
    let r = ads.recv().await;
    assert_eq!(names(&r), ["e1"]);
    ads.send(type_url::ENDPOINTS, &["e1", "e2"], "1", &r.nonce);
    within(server.wait_for_ack(type_url::ENDPOINTS, "1")).await;

    server.update(|s| {
        s.insert_endpoints(endpoints("e2"));
    });
    let r = ads.recv().await;
    assert_eq!(r.version_info, "2");
    assert_eq!(names(&r), ["e1", "e2"]);
}

#[tokio::test]
async fn close_all_streams_ends_them_with_unavailable_and_keeps_listening() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(Snapshot::new().listener(listener("l1")));
    let client = within(AggregatedDiscoveryServiceClient::connect(server.uri()))
        .await
        .unwrap();
    let mut a = AdsStream::open_on(client.clone()).await;
    let mut b = AdsStream::open_on(client.clone()).await;
    within(server.wait_for_streams(2)).await;

    assert_eq!(server.close_all_streams(), 2);
    assert_eq!(server.stream_count(), 0);
    for ads in [&mut a, &mut b] {
        assert_eq!(ads.recv_status().await.code(), Code::Unavailable);
    }

    // A client reconnects (here on the same channel) and starts over.
    let mut c = AdsStream::open_on(client).await;
    within(server.wait_for_streams(1)).await;
    assert_eq!(server.total_streams(), 3);
    c.send(type_url::LISTENER, &["l1"], "1", "");
    let r = c.recv().await;
    assert_eq!(names(&r), ["l1"]);
    assert_eq!(server.requests().last().unwrap().kind, RequestKind::Initial);
}

#[tokio::test]
async fn client_half_close_ends_the_stream() {
    let server = XdsTestServer::start().await.unwrap();
    let mut ads = AdsStream::open(&server).await;
    within(server.wait_for_streams(1)).await;
    drop(ads.requests);
    assert!(within(ads.responses.message()).await.unwrap().is_none());
    within(server.wait_for_streams(0)).await;
}

#[tokio::test]
async fn restart_on_the_same_port() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(Snapshot::new().listener(listener("old")));
    let addr = server.addr();
    let mut ads = AdsStream::open(&server).await;
    ads.send(type_url::LISTENER, &["old", "new"], "", "");
    assert_eq!(names(&ads.recv().await), ["old"]);

    within(server.shutdown()).await.expect("clean shutdown");
    assert_eq!(ads.recv_status().await.code(), Code::Unavailable);

    let server = XdsTestServer::start_on(addr)
        .await
        .expect("port free again");
    assert_eq!(server.addr(), addr);
    server.set_snapshot(Snapshot::new().listener(listener("new")));
    let mut ads = AdsStream::open(&server).await;
    ads.send(type_url::LISTENER, &["old", "new"], "1", "");
    let r = ads.recv().await;
    assert_eq!(names(&r), ["new"]);
    assert_eq!(server.requests()[0].kind, RequestKind::Initial);
}

#[tokio::test]
async fn dropping_the_server_ends_its_streams() {
    let server = XdsTestServer::start().await.unwrap();
    let mut ads = AdsStream::open(&server).await;
    within(server.wait_for_streams(1)).await;
    drop(server);
    assert_eq!(ads.recv_status().await.code(), Code::Unavailable);
}

#[tokio::test]
async fn push_raw_reaches_every_stream_and_its_nack_is_matched() {
    let server = XdsTestServer::start().await.unwrap();
    let mut ads = AdsStream::open(&server).await;
    within(server.wait_for_streams(1)).await;
    let sent = server.push_raw(DiscoveryResponse {
        version_info: "bad-1".into(),
        type_url: type_url::CLUSTER.into(),
        resources: vec![Any {
            type_url: "type.googleapis.com/some.Other".into(),
            value: vec![1, 2, 3],
        }],
        ..Default::default()
    });
    assert_eq!(sent, 1);
    let r = ads.recv().await;
    assert_eq!(r.version_info, "bad-1");
    assert_eq!(r.resources[0].type_url, "type.googleapis.com/some.Other");
    ads.nack(
        type_url::CLUSTER,
        &[],
        "",
        &r.nonce,
        "resources[0]: wrong type URL",
    );
    assert_eq!(
        within(server.wait_for_nack(type_url::CLUSTER)).await,
        "resources[0]: wrong type URL"
    );
}

#[tokio::test]
async fn request_without_type_url_ends_the_stream() {
    let server = XdsTestServer::start().await.unwrap();
    let mut ads = AdsStream::open(&server).await;
    ads.send("", &["x"], "", "");
    let status = ads.recv_status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("type_url"));
    assert_eq!(server.requests()[0].kind, RequestKind::Invalid);
}

/// The resources gRPC's xDS clients need for `xds:///greeter:50051`: LDS -> RDS -> CDS ->
/// EDS, with one endpoint at `endpoint`.
fn greeter_snapshot(endpoint: std::net::SocketAddr) -> Snapshot {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
    };
    use envoy_types::pb::envoy::config::core::v3::{
        Address, AggregatedConfigSource, ConfigSource, SocketAddress, address,
        config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
    };
    use envoy_types::pb::envoy::config::listener::v3::ApiListener;
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, RouteMatch, VirtualHost, route::Action, route_action::ClusterSpecifier,
        route_match::PathSpecifier,
    };
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
        http_filter::ConfigType,
    };
    use prost::{Message, Name};

    fn pack<M: Message + Name>(message: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        }
    }
    let ads = || ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: "greeter-route".into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(ConfigType::TypedConfig(pack(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Snapshot::new()
        .listener(Listener {
            name: "greeter:50051".into(),
            api_listener: Some(ApiListener {
                api_listener: Some(pack(&hcm)),
            }),
            ..Default::default()
        })
        .route(RouteConfiguration {
            name: "greeter-route".into(),
            virtual_hosts: vec![VirtualHost {
                name: "greeter".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix(String::new())),
                        ..Default::default()
                    }),
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster(
                            "greeter-cluster".into(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .cluster(Cluster {
            name: "greeter-cluster".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            ..Default::default()
        })
        .endpoints(ClusterLoadAssignment {
            cluster_name: "greeter-cluster".into(),
            endpoints: vec![LocalityLbEndpoints {
                // grpcio requires a locality, even an empty one.
                locality: Some(Default::default()),
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: endpoint.ip().to_string(),
                                port_specifier: Some(PortSpecifier::PortValue(
                                    endpoint.port().into(),
                                )),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                load_balancing_weight: Some(envoy_types::pb::google::protobuf::UInt32Value {
                    value: 1,
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
}

/// gRPC's reference client (grpcio, C-core) resolves `xds:///greeter:50051` through the
/// server and connects to the endpoint (the server itself, which speaks HTTP/2). Needs the
/// interop venv that `scripts/test` sets up (`MESHWORK_PEERS_VENV`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn grpcio_reference_client_acks_every_resource() {
    let venv = meshwork_test_support::peers::venv();
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(greeter_snapshot(server.addr()));
    let bootstrap = serde_json::json!({
        "xds_servers": [{
            "server_uri": server.addr().to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": "meshwork-server-test", "locality": {}},
    });
    let script = r#"
import sys, grpc
channel = grpc.insecure_channel("xds:///greeter:50051")
try:
    grpc.channel_ready_future(channel).result(timeout=20)
except grpc.FutureTimeoutError:
    sys.exit("channel never became ready")
"#;
    let python = std::path::Path::new(&venv).join("bin/python");
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script])
            .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.to_string())
            .output()
            .expect("run python")
    });
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("python finished")
        .unwrap();
    let nacks: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Nack)
        .map(|r| {
            format!(
                "{}: {}",
                r.type_url(),
                r.error_message().unwrap_or_default()
            )
        })
        .collect();
    assert!(
        output.status.success(),
        "grpcio failed: {}\nNACKs: {nacks:?}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(nacks.is_empty(), "{nacks:?}");
    for url in [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ] {
        within(server.wait_for_ack(url, "1")).await;
    }
    let kinds: Vec<_> = server.requests().iter().map(|r| r.kind).collect();
    assert!(!kinds.contains(&RequestKind::Invalid), "{kinds:?}");
}

/// A client that stops reading while the snapshot keeps changing holds at most a bounded
/// queue on the server: once it has left more than the bound unread (64 MiB here, in 1 MiB
/// responses), its stream ends with `RESOURCE_EXHAUSTED`, which it reads after whatever
/// was already on its way.
#[tokio::test]
async fn a_client_that_stops_reading_is_ended_once_it_leaves_too_much_unread() {
    let server = XdsTestServer::start().await.unwrap();
    let mut s = AdsStream::open(&server).await;
    s.send(type_url::CLUSTER, &[], "", "");
    within(s.responses.message())
        .await
        .unwrap()
        .expect("the first response");
    let padding = "x".repeat(1 << 20);
    let pushes = 80;
    for i in 0..pushes {
        server.set_snapshot(Snapshot::new().cluster(Cluster {
            name: format!("c{i}"),
            alt_stat_name: padding.clone(),
            ..Default::default()
        }));
    }
    let mut read = 0;
    let status = loop {
        match within(s.responses.message()).await {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("the stream ended without a status after {read} responses"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("unread"), "{status:?}");
    assert!(
        read < pushes - 8,
        "the queued responses were dropped: read {read}"
    );
    // The server forgot the stream; the client may reconnect and is sent the current state.
    within(server.wait_for_streams(0)).await;
    let mut again = AdsStream::open(&server).await;
    again.send(type_url::CLUSTER, &[], "", "");
    let current = within(again.responses.message()).await.unwrap().unwrap();
    assert_eq!(current.resources.len(), 1);
    assert_eq!(
        resource_name(&current.resources[0]).as_deref(),
        Some(format!("c{}", pushes - 1).as_str())
    );
}
