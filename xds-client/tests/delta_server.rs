//! The test server's delta (incremental) ADS on real loopback streams: a raw tonic client
//! subscribing, ACKing and reconnecting with `initial_resource_versions`, and Envoy as a
//! delta client routing HTTP with the server's resources and following a moved endpoint.
#![cfg(feature = "server")]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use meshwork_xds::server::{RequestKind, Snapshot, XdsTestServer, type_url};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;

/// Bounds every wait, so that a bug fails the test instead of hanging it. Not a sleep: the
/// awaited future completes as soon as its condition holds.
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("timed out")
}

struct DeltaStream {
    requests: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaStream {
    async fn open(server: &XdsTestServer) -> Self {
        let mut client = within(AggregatedDiscoveryServiceClient::connect(server.uri()))
            .await
            .expect("connect");
        let (requests, rx) = mpsc::unbounded_channel();
        let responses = within(client.delta_aggregated_resources(UnboundedReceiverStream::new(rx)))
            .await
            .expect("stream")
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    fn send(&self, request: DeltaDiscoveryRequest) {
        self.requests.send(request).expect("request stream open");
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        within(self.responses.message())
            .await
            .expect("stream ok")
            .expect("a response")
    }
}

fn cluster(name: &str, stat: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        alt_stat_name: stat.to_owned(),
        ..Default::default()
    }
}

fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn a_delta_client_reconnects_with_what_it_holds_and_sees_only_the_difference() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .cluster(cluster("a", "a"))
            .cluster(cluster("b", "b"))
            .cluster(cluster("c", "c")),
    );
    let mut stream = DeltaStream::open(&server).await;
    stream.send(DeltaDiscoveryRequest {
        type_url: type_url::CLUSTER.to_owned(),
        ..Default::default() // the legacy wildcard
    });
    let first = stream.recv().await;
    assert_eq!(names(&first), ["a", "b", "c"]);
    assert_eq!(first.system_version_info, "1");
    stream.send(DeltaDiscoveryRequest {
        type_url: type_url::CLUSTER.to_owned(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    });
    let ack = within(server.wait_for_ack(type_url::CLUSTER, "1")).await;
    assert!(ack.delta.is_some(), "recorded as a delta request");

    // a changes, b goes: a is sent, b removed, c not resent.
    server.update(|s| {
        s.insert_cluster(cluster("a", "a2"));
        s.remove(type_url::CLUSTER, "b");
    });
    let change = stream.recv().await;
    assert_eq!(names(&change), ["a"]);
    assert_eq!(change.removed_resources, ["b"]);
    let mut held: HashMap<String, String> = HashMap::new();
    for r in first.resources.iter().chain(&change.resources) {
        held.insert(r.name.clone(), r.version.clone());
    }
    for gone in &change.removed_resources {
        held.remove(gone);
    }

    // The client goes away; meanwhile c is deleted and d added.
    drop(stream);
    within(server.wait_for_streams(0)).await;
    server.update(|s| {
        s.remove(type_url::CLUSTER, "c");
        s.insert_cluster(cluster("d", "d"));
    });
    let mut stream = DeltaStream::open(&server).await;
    stream.send(DeltaDiscoveryRequest {
        type_url: type_url::CLUSTER.to_owned(),
        initial_resource_versions: held,
        ..Default::default()
    });
    let resumed = stream.recv().await;
    assert_eq!(names(&resumed), ["d"], "a is current, d is new");
    assert_eq!(resumed.removed_resources, ["c"]);
    assert_eq!(resumed.system_version_info, "3");
    let kinds: Vec<RequestKind> = server.requests().iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [RequestKind::Initial, RequestKind::Ack, RequestKind::Initial]
    );
}

#[tokio::test]
async fn a_delta_request_without_type_url_ends_the_stream() {
    let server = XdsTestServer::start().await.unwrap();
    let mut stream = DeltaStream::open(&server).await;
    stream.send(DeltaDiscoveryRequest {
        resource_names_subscribe: vec!["x".to_owned()],
        ..Default::default()
    });
    let status = within(stream.responses.message())
        .await
        .expect_err("the stream ends");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("type_url"));
    assert_eq!(server.requests()[0].kind, RequestKind::Invalid);
}

/// A loopback HTTP/1.1 server answering every request with `body`; returns its port.
async fn http_backend(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

/// One HTTP/1.1 GET through Envoy's listener on `port`; the whole response.
async fn get(port: u16) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within(conn.read_to_string(&mut response)).await.unwrap();
    response
}

/// A listener `ingress` on a free port whose routes come from RDS `routes`, which sends
/// everything to the EDS cluster `backend`, whose one endpoint is `127.0.0.1:backend_port`.
fn ingress_snapshot(backend_port: u16) -> Snapshot {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    use meshwork_xds::server::build;

    let hcm = HttpConnectionManager {
        stat_prefix: "ingress".to_owned(),
        ..build::server_hcm_rds("routes", Vec::new())
    };
    Snapshot::new()
        .listener(build::server_listener(
            "ingress",
            SocketAddr::from(([127, 0, 0, 1], 0)),
            vec![build::plaintext_chain("ingress", hcm)],
            None,
        ))
        .route(build::route_config(
            "routes",
            vec![build::virtual_host(
                "all",
                ["*"],
                vec![build::route_to("/", "backend")],
            )],
        ))
        .cluster(Cluster {
            connect_timeout: Some(PbDuration {
                seconds: 5,
                nanos: 0,
            }),
            ..build::eds_cluster("backend")
        })
        .endpoints(endpoints(backend_port))
}

fn endpoints(port: u16) -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    meshwork_xds::server::build::endpoints("backend", &[SocketAddr::from(([127, 0, 0, 1], port))])
}

/// Envoy's bootstrap: ADS over delta gRPC to `xds`, LDS and CDS from it.
fn delta_bootstrap(xds: SocketAddr) -> serde_json::Value {
    let ads = serde_json::json!({"ads": {}, "resource_api_version": "V3"});
    serde_json::json!({
        "node": {"id": "envoy-delta", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "DELTA_GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {"clusters": [{
            "name": "xds",
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": xds.ip().to_string(), "port_value": xds.port()}}}}]}]},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
        }]},
    })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs envoy: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn envoy_over_delta_routes_a_request_and_follows_a_moved_endpoint() {
    let envoy_bin = meshwork_test_support::peers::envoy();
    let dir = tempfile::tempdir().unwrap();
    let one = http_backend("backend one").await;
    let two = http_backend("backend two").await;
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(ingress_snapshot(one));

    // Live only once the initial LDS and CDS (and the RDS and EDS they name) arrived.
    let envoy = meshwork_test_support::envoy::Envoy::start(
        &envoy_bin,
        dir.path(),
        &delta_bootstrap(server.addr()),
    )
    .await;
    let every_request_was_delta = server.requests().iter().all(|r| r.delta.is_some());
    assert!(every_request_was_delta, "envoy spoke SotW");
    for url in [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ] {
        within(server.wait_for_ack(url, "1")).await;
    }
    let ingress = envoy.listener_port("ingress").await;
    let response = get(ingress).await;
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("backend one"),
        "{response}\n{}",
        envoy.log_text()
    );

    // The endpoint moves: only the EDS resource is sent, and Envoy follows it.
    let sent_before = server.responses().len();
    server.update(|s| {
        s.insert_endpoints(endpoints(two));
    });
    within(server.wait_for_ack(type_url::ENDPOINTS, "2")).await;
    let pushed: Vec<_> = server.responses()[sent_before..]
        .iter()
        .map(|r| (r.response.type_url.clone(), r.resource_names()))
        .collect();
    assert_eq!(
        pushed,
        [(type_url::ENDPOINTS.to_owned(), vec!["backend".to_owned()])]
    );
    let response = get(ingress).await;
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("backend two"),
        "{response}\n{}",
        envoy.log_text()
    );
    let nacks = server
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::Nack)
        .count();
    assert_eq!(nacks, 0, "{:?}", server.requests());
}
