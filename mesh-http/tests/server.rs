//! `Server` end to end: a hyper service behind the inbound stack on loopback with mTLS,
//! called through `MeshClient` (HTTP/2 by ALPN) and a bare hyper HTTP/1.1 client.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::TokioIo;
use meshwork_core::config::StaticConfig;
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{Authorizer, PeerIdentity};
use meshwork_core::inbound::{AuthorizationPolicy, ConnectionInfo, Principal, Rule};
use meshwork_http::{MeshClient, MeshClientOptions, Server};
use meshwork_test_support::xds::target_routes;
use meshwork_xds::bootstrap::Bootstrap;
use meshwork_xds::client::XdsClient;
use meshwork_xds::server::{XdsTestServer, build};
use rustls_pki_types::ServerName;
use support::{cert_dir, identity, static_cluster, tls_cluster};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};

const SERVER_ID: &str = "spiffe://example.org/ns/default/sa/greeter";
const GOOD_ID: &str = "spiffe://example.org/ns/default/sa/good";

/// The application: answers with the caller's SPIFFE ID as the inbound stack saw it, after
/// checking that the connection's info reached the request too.
async fn whoami(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let peer = req.extensions().get::<PeerIdentity>().cloned();
    let info = req.extensions().get::<ConnectionInfo>().cloned();
    let info_peer = info.as_ref().and_then(|i| i.peer().cloned());
    assert_eq!(peer, info_peer);
    let body = match peer {
        Some(p) => format!("{}:{:?}", p.spiffe_id(), req.version()),
        None => "anonymous".into(),
    };
    Ok(http::Response::new(Full::new(Bytes::from(body))))
}

/// A MeshClient whose every request goes to `addr` over mTLS as `path`, expecting the
/// server to be `SERVER_ID`.
fn client(ca: &TestCa, path: &str, addr: std::net::SocketAddr) -> MeshClient {
    let cfg = StaticConfig::new()
        .route_all_to("greeter")
        .cluster(
            "greeter",
            static_cluster("greeter", &[addr], Some(SERVER_ID)),
        )
        .build()
        .unwrap();
    MeshClient::from_static(cfg, MeshClientOptions::new().mtls(identity(ca, path)))
}

#[tokio::test]
async fn policy_denies_with_403_and_allowed_callers_see_their_identity() {
    let ca = TestCa::new("example.org");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any().principal(Principal::Id(GOOD_ID.parse().unwrap())));
    let server = Server::new(identity(&ca, "/ns/default/sa/greeter")).policy(policy);
    tokio::spawn(server.serve(listener, tower::service_fn(whoami)));

    // Allowed, over HTTP/2 (ALPN): the handler sees the caller's identity.
    let good = client(&ca, "/ns/default/sa/good", addr);
    let rsp = good.get("http://greeter/hello").await.unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{GOOD_ID}:HTTP/2.0"));

    // Denied: the server's 403 is a response, not a client error.
    let bad = client(&ca, "/ns/default/sa/intruder", addr);
    let rsp = bad.get("http://greeter/hello").await.unwrap();
    assert_eq!(rsp.status(), 403);
    assert!(
        rsp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    // HTTP/1.1 on the same port, with a bare hyper client.
    let tls = identity(&ca, "/ns/default/sa/good")
        .authorizer(Authorizer::Any)
        .alpn_protocols(vec![b"http/1.1".to_vec()])
        .client_config()
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/hello")
        .header(http::header::HOST, "greeter")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{GOOD_ID}:HTTP/1.1"));
}

#[tokio::test]
async fn a_client_without_a_trusted_svid_never_reaches_the_service() {
    let ca = TestCa::new("example.org");
    let other_ca = TestCa::new("example.org");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(identity(&ca, "/ns/default/sa/greeter"));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(http::Response::new(Full::<Bytes>::default())) }
    });
    tokio::spawn(server.serve(listener, service));
    // The client trusts the server (same CA bundle) but presents an SVID from another CA.
    let cfg = StaticConfig::new()
        .route_all_to("greeter")
        .cluster(
            "greeter",
            static_cluster("greeter", &[addr], Some(SERVER_ID)),
        )
        .build()
        .unwrap();
    let mtls = meshwork_core::identity::MtlsConfig::new(Arc::new(
        meshwork_core::identity::StaticSource::new(
            Some(other_ca.svid("/ns/default/sa/good")),
            ca.bundles(),
        ),
    ));
    let client = MeshClient::from_static(cfg, MeshClientOptions::new().mtls(mtls));
    let err = client.get("http://greeter/").await.unwrap_err();
    assert_eq!(err.status(), 503, "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let ca = TestCa::new("example.org");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let (started_tx, gate) = (started_tx.clone(), gate.clone());
        async move {
            let _ = started_tx.send(());
            gate.notified().await;
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("done"))))
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::new(identity(&ca, "/ns/default/sa/greeter")).serve_with_shutdown(
            listener,
            service,
            async {
                let _ = stopped.await;
            },
        ),
    );

    let client = client(&ca, "/ns/default/sa/good", addr);
    let in_flight = tokio::spawn(async move { client.get("http://greeter/slow").await });
    started.recv().await.unwrap();
    stop.send(()).unwrap();

    // The listener closes: new connections are refused (bounded: the server task only has
    // to run once).
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the listener still accepts after shutdown");
    assert!(
        !server.is_finished(),
        "shutdown did not wait for the request"
    );

    release.notify_one();
    let rsp = in_flight.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "done");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once the last connection closes")
        .unwrap()
        .unwrap();
}

/// The whole mesh path with the identity managed as Istio manages it: the client's SVID and
/// roots come from the bootstrap's `file_watcher` certificate provider that the xDS
/// cluster names (gRFC A29), and the server sees that SVID.
#[tokio::test]
async fn xds_managed_mtls_from_certificate_providers_reaches_the_server() {
    let ca = TestCa::new("example.org");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(identity(&ca, "/ns/default/sa/greeter"));
    tokio::spawn(server.serve(listener, tower::service_fn(whoami)));

    let xds = XdsTestServer::start().await.unwrap();
    xds.set_snapshot(
        target_routes("greeter", vec![build::route_to("", "greeter")])
            .cluster(tls_cluster("greeter", SERVER_ID))
            .endpoints(build::endpoints("greeter", &[addr])),
    );
    let (dir, providers) = cert_dir(&ca, "/ns/default/sa/good");
    let bootstrap = Bootstrap::from_json_str(&format!(
        r#"{{
          "xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}]}}],
          "node": {{"id": "meshwork-http-providers-test"}},
          {providers}
        }}"#,
        xds.uri().trim_start_matches("http://")
    ))
    .unwrap();
    let client = MeshClient::from_xds(
        &XdsClient::builder(&bootstrap).unwrap().start(),
        MeshClientOptions::new(),
    );
    let rsp = client.get("http://greeter/").await.unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{GOOD_ID}:HTTP/2.0"));
    let _ = std::fs::remove_dir_all(dir);
}
