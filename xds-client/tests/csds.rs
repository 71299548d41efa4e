//! CSDS (gRFC A40) over loopback: our ADS test server -> XdsClient -> the CSDS service served
//! by tonic on 127.0.0.1:0 -> a tonic CSDS client. And gRPC's own CSDS client (grpcio with
//! xds-protos' stubs, `tests/peers/csds_read.py`) reading the same service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::{ClientStatusRequest, ClientStatusResponse};
use envoy_types::pb::envoy::r#type::matcher::v3::NodeMatcher;
use meshwork_test_support::{peers, within};
use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::client::{ReadyError, TargetWatch, XdsClient};
use meshwork_xds::csds::CsdsService;
use meshwork_xds::server::{Snapshot, XdsTestServer, build, type_url};
use meshwork_xds::watch::TargetError;
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;

const GOOD: &str = "good:80";
const BAD: &str = "bad:80";
const MISSING: &str = "missing:80";

/// A target's full chain; `bad:80`'s cluster has no discovery type, which a gRPC client
/// rejects.
fn snapshot() -> Snapshot {
    let mut snapshot = Snapshot::new();
    for (target, cluster) in [(GOOD, "good"), (BAD, "bad")] {
        let routes = format!("{cluster}-routes");
        snapshot.insert_listener(build::api_listener(target, &routes));
        snapshot.insert_route(build::route_config(
            &routes,
            vec![build::virtual_host(
                "vh",
                [target],
                vec![build::route_to("", cluster)],
            )],
        ));
        let mut c = build::eds_cluster(cluster);
        if cluster == "bad" {
            c.cluster_discovery_type = None;
        }
        snapshot.insert_cluster(c);
        snapshot.insert_endpoints(build::endpoints(
            cluster,
            &["127.0.0.1:9".parse::<SocketAddr>().unwrap()],
        ));
    }
    snapshot
}

/// A client whose unanswered resources are declared missing after 5 s (a listener that a
/// full-state response leaves out waits for that timer, as in grpc-go), not 15.
fn client(server_uri: String) -> XdsClient {
    let bootstrap = Bootstrap::builder()
        .server(XdsServer::new(server_uri).unwrap())
        .node_id("meshwork-csds-test")
        .build()
        .unwrap();
    XdsClient::builder(&bootstrap)
        .unwrap()
        .does_not_exist_timeout(Duration::from_secs(5))
        .start()
}

/// Serves `service` on 127.0.0.1:0 and returns its address.
async fn serve(service: CsdsService) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

async fn csds_client(addr: SocketAddr) -> ClientStatusDiscoveryServiceClient<Channel> {
    ClientStatusDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// One FetchClientStatus with an empty request.
async fn fetch(addr: SocketAddr) -> ClientStatusResponse {
    csds_client(addr)
        .await
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// One row of a response: (type URL, name) -> (status, version, error details).
type Rows = BTreeMap<(String, String), (ClientResourceStatus, String, Option<String>)>;

fn rows(response: &ClientStatusResponse) -> Rows {
    assert_eq!(response.config.len(), 1, "one client, one ClientConfig");
    response.config[0]
        .generic_xds_configs
        .iter()
        .map(|c| {
            (
                (c.type_url.clone(), c.name.clone()),
                (
                    ClientResourceStatus::try_from(c.client_status).unwrap(),
                    c.version_info.clone(),
                    c.error_state.as_ref().map(|e| e.details.clone()),
                ),
            )
        })
        .collect()
}

fn status_in(rows: &Rows, type_url: &str, name: &str) -> ClientResourceStatus {
    rows.get(&(type_url.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {type_url} {name} in {rows:#?}"))
        .0
}

/// The client has an ACKED good chain, a NACKED cluster and a listener that does not
/// exist: watched until each settled, as the ADS server saw it. The watches are returned to
/// be held: dropping one unsubscribes its resources.
async fn settled_client(server: &XdsTestServer) -> (XdsClient, [TargetWatch; 3]) {
    let client = client(server.uri());
    let mut good = client.watch_target(GOOD, GOOD).await;
    within(10, good.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    let bad = client.watch_target(BAD, BAD).await;
    within(10, server.wait_for_nack(type_url::CLUSTER)).await;
    let mut missing = client.watch_target(MISSING, MISSING).await;
    let err = within(20, missing.ready(Duration::from_secs(15)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ReadyError::Target(TargetError::ListenerDoesNotExist(MISSING.into()))
    );
    (client, [good, bad, missing])
}

#[tokio::test]
async fn fetch_client_status_shows_acked_nacked_and_missing_resources() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot());
    let (client, _watches) = settled_client(&server).await;
    let addr = serve(CsdsService::new(client)).await;

    let response = fetch(addr).await;
    let config = &response.config[0];
    let node = config.node.as_ref().unwrap();
    assert_eq!(node.id, "meshwork-csds-test");
    assert_eq!(node.user_agent_name, "meshwork");
    assert_eq!(config.client_scope, "");
    let rows = rows(&response);

    for (t, name) in [
        (type_url::LISTENER, GOOD),
        (type_url::ROUTE, "good-routes"),
        (type_url::CLUSTER, "good"),
        (type_url::ENDPOINTS, "good"),
    ] {
        let (status, version, error) = &rows[&(t.to_owned(), name.to_owned())];
        assert_eq!(*status, ClientResourceStatus::Acked, "{t} {name}");
        assert_eq!(*version, server.version(t), "{t} {name}");
        assert_eq!(*error, None, "{t} {name}");
    }
    let (status, _, error) = &rows[&(type_url::CLUSTER.to_owned(), "bad".to_owned())];
    assert_eq!(*status, ClientResourceStatus::Nacked);
    let error = error
        .as_deref()
        .expect("a NACKED resource has its error_state");
    assert!(error.contains("bad"), "{error}");
    assert_eq!(
        status_in(&rows, type_url::LISTENER, MISSING),
        ClientResourceStatus::DoesNotExist
    );

    // xds_config: the value in use, byte for byte as the server sent it; none without one.
    let snapshot = server.snapshot();
    for c in &config.generic_xds_configs {
        let in_use = match ClientResourceStatus::try_from(c.client_status).unwrap() {
            ClientResourceStatus::Acked => snapshot.get(&c.type_url, &c.name),
            _ => None,
        };
        assert_eq!(c.xds_config.as_ref(), in_use, "{} {}", c.type_url, c.name);
    }

    let every = &config.generic_xds_configs;
    assert!(every.iter().all(|c| !c.is_static_resource));
    assert!(
        every.iter().all(|c| c.last_updated.is_some()),
        "every resource here changed status at least once: {every:#?}"
    );
}

/// A40: a resource asked for and not answered is REQUESTED. The "ADS server" accepts the
/// connection and never says a word.
#[tokio::test]
async fn a_resource_the_server_has_not_answered_is_requested() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = client(format!("http://{}", silent.local_addr().unwrap()));
    let _watch = client.watch_target(GOOD, GOOD).await;
    // Held open, unanswered, while CSDS is read.
    let (_connection, _) = within(10, silent.accept()).await.unwrap();
    let addr = serve(CsdsService::new(client)).await;

    let response = fetch(addr).await;
    let rows = rows(&response);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let (status, version, error) = &rows[&(type_url::LISTENER.to_owned(), GOOD.to_owned())];
    assert_eq!(*status, ClientResourceStatus::Requested);
    assert_eq!(version, "");
    assert_eq!(*error, None);
}

/// StreamClientStatus answers every request with the view as it is then, in order, and ends
/// when the caller half-closes.
#[tokio::test]
async fn stream_client_status_answers_each_request() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot());
    let client = client(server.uri());
    let mut good = client.watch_target(GOOD, GOOD).await;
    within(10, good.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    let addr = serve(CsdsService::new(client.clone())).await;

    let (requests, rx) = tokio::sync::mpsc::channel(1);
    let mut responses = csds_client(addr)
        .await
        .stream_client_status(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    requests.send(ClientStatusRequest::default()).await.unwrap();
    let first = rows(&within(10, responses.message()).await.unwrap().unwrap());
    assert_eq!(
        status_in(&first, type_url::CLUSTER, "good"),
        ClientResourceStatus::Acked
    );
    assert!(!first.contains_key(&(type_url::CLUSTER.to_owned(), "bad".to_owned())));

    // The view changes between requests: the second answer shows it.
    let _bad = client.watch_target(BAD, BAD).await;
    within(10, server.wait_for_nack(type_url::CLUSTER)).await;
    requests.send(ClientStatusRequest::default()).await.unwrap();
    let second = rows(&within(10, responses.message()).await.unwrap().unwrap());
    assert_eq!(
        status_in(&second, type_url::CLUSTER, "bad"),
        ClientResourceStatus::Nacked
    );

    requests.send(ClientStatusRequest::default()).await.unwrap();
    let third = rows(&within(10, responses.message()).await.unwrap().unwrap());
    assert_eq!(third, second, "nothing changed in between");

    drop(requests);
    assert!(
        within(10, responses.message()).await.unwrap().is_none(),
        "the stream ends with the requests"
    );
}

/// Like grpc-go, node_matchers are refused (A40: a process has one node to show).
#[tokio::test]
async fn node_matchers_are_invalid_arguments() {
    let server = XdsTestServer::start().await.unwrap();
    let addr = serve(CsdsService::new(client(server.uri()))).await;
    let request = ClientStatusRequest {
        node_matchers: vec![NodeMatcher::default()],
        ..ClientStatusRequest::default()
    };
    let mut csds = csds_client(addr).await;
    let err = csds.fetch_client_status(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node_matchers"), "{err}");

    let mut responses = csds
        .stream_client_status(tokio_stream::iter([
            ClientStatusRequest::default(),
            request,
        ]))
        .await
        .unwrap()
        .into_inner();
    assert!(within(10, responses.message()).await.unwrap().is_some());
    let err = within(10, responses.message()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// Several clients, each its own ClientConfig with its scope (A71).
#[tokio::test]
async fn each_client_is_a_client_config_with_its_scope() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot());
    let (first, second) = (client(server.uri()), client(server.uri()));
    let mut watch = second.watch_target(GOOD, GOOD).await;
    within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    let addr = serve(CsdsService::new(first).with_client("xds:///good:80", second.clone())).await;
    let response = fetch(addr).await;
    let scopes: Vec<(&str, usize)> = response
        .config
        .iter()
        .map(|c| (c.client_scope.as_str(), c.generic_xds_configs.len()))
        .collect();
    assert_eq!(scopes, [("", 0), ("xds:///good:80", 4)]);
}

/// gRPC's own CSDS client tooling (grpcio + xds-protos' generated stubs, nobody here wrote
/// them) reads our service and sees what ours sees.
#[tokio::test]
#[ignore = "needs the peer venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn grpcio_reads_our_csds() {
    let venv = peers::venv();
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(snapshot());
    let (client, _watches) = settled_client(&server).await;
    let addr = serve(CsdsService::new(client)).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/csds_read.py");
    let out = within(
        60,
        tokio::process::Command::new(venv.join("bin/python"))
            .arg(script)
            .arg(addr.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run csds_read.py");
    assert!(
        out.status.success(),
        "csds_read.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs["node"], "meshwork-csds-test");
    let view: BTreeMap<(String, String), (String, String, String)> = theirs["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["type"].as_str().unwrap().to_owned(),
                    r["name"].as_str().unwrap().to_owned(),
                ),
                (
                    r["status"].as_str().unwrap().to_owned(),
                    r["error"].as_str().unwrap_or("").to_owned(),
                    r["config_type"].as_str().unwrap_or("").to_owned(),
                ),
            )
        })
        .collect();
    let expected = [
        (type_url::LISTENER, GOOD, "ACKED"),
        (type_url::ROUTE, "good-routes", "ACKED"),
        (type_url::CLUSTER, "good", "ACKED"),
        (type_url::ENDPOINTS, "good", "ACKED"),
        (type_url::LISTENER, BAD, "ACKED"),
        (type_url::ROUTE, "bad-routes", "ACKED"),
        (type_url::CLUSTER, "bad", "NACKED"),
        (type_url::LISTENER, MISSING, "DOES_NOT_EXIST"),
    ];
    for (t, name, status) in expected {
        let (theirs, _, config_type) = view
            .get(&(t.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("grpcio does not see {t} {name}: {view:#?}"));
        assert_eq!(theirs, status, "{t} {name}");
        let with_config = if status == "ACKED" { t } else { "" };
        assert_eq!(config_type, with_config, "{t} {name}: xds_config");
    }
    let (_, error, _) = &view[&(type_url::CLUSTER.to_owned(), "bad".to_owned())];
    assert!(
        error.contains("bad"),
        "grpcio reads the NACK's detail: {error}"
    );
    assert_eq!(view.len(), expected.len(), "{view:#?}");
}
