//! `MeshServer` end to end: real mTLS handshakes, real HTTP/2, tonic on both sides; the
//! client is a `MeshChannel`, configured through our xDS test server with the identity from
//! the bootstrap's certificate provider (as Istio configures proxyless gRPC).

mod support;

use support::*;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{MtlsConfig, PeerIdentity, StaticSource, VerifyError};
use meshwork_core::inbound::{AuthorizationPolicy, Operation, Principal, Rule};
use meshwork_grpc::{MeshChannel, MeshChannelOptions, MeshServer, connect_error};
use meshwork_test_support::certs;
use meshwork_test_support::xds::target_routes;
use meshwork_xds::bootstrap::Bootstrap;
use meshwork_xds::client::XdsClient;
use meshwork_xds::resource::Cluster;
use meshwork_xds::server::{XdsTestServer, build};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tonic::Status;
use tonic::body::Body;

/// Lets a test hold a call inside its handler.
#[derive(Default)]
struct Gate {
    entered: Option<mpsc::UnboundedSender<()>>,
    release: Notify,
}

/// A hand-written `helloworld.Greeter` server (what tonic's codegen would produce): replies
/// `"<id>: hello <name> from <caller's SPIFFE ID>"`.
#[derive(Clone)]
struct Greeter {
    id: String,
    gate: Option<Arc<Gate>>,
}

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

struct SayHello(Greeter);

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<HelloReply>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let caller = req
            .extensions()
            .get::<PeerIdentity>()
            .map(|p| p.spiffe_id().to_string())
            .unwrap_or_else(|| "nobody".into());
        let message = format!("{}: hello {} from {caller}", self.0.id, req.get_ref().name);
        let gate = self.0.gate.clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                if let Some(entered) = &gate.entered {
                    let _ = entered.send(());
                }
                gate.release.notified().await;
            }
            Ok(tonic::Response::new(HelloReply { message }))
        })
    }
}

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = SayHello(self.clone());
        Box::pin(async move { Ok(dispatch(req, method).await) })
    }
}

fn mtls(ca: &TestCa, path: &str) -> MtlsConfig {
    MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid(path)),
        ca.bundles(),
    )))
}

/// Starts `server` on 127.0.0.1:0; the returned sender stops it gracefully and the handle
/// reports how serving ended.
async fn start(
    server: MeshServer,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), meshwork_grpc::ServeError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_with_shutdown(listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

fn greeter(id: &str) -> Greeter {
    Greeter {
        id: id.into(),
        gate: None,
    }
}

const TARGET: &str = "greeter:50051";
const GREETER_ID: &str = "spiffe://example.org/ns/default/sa/greeter";
const CLIENT_ID: &str = "spiffe://example.org/ns/default/sa/client";

#[tokio::test]
async fn xds_managed_mtls_from_certificate_providers_reaches_a_mesh_server() {
    let ca = TestCa::new("example.org");
    let (addr, _stop, _task) =
        start(MeshServer::new(mtls(&ca, "/ns/default/sa/greeter")).add_service(greeter("A"))).await;

    let xds = XdsTestServer::start().await.unwrap();
    let snapshot = |san: &str| {
        target_routes(TARGET, vec![build::route_to("", "greeter")])
            .cluster(build::with_upstream_tls(
                build::eds_cluster("greeter"),
                "default",
                &[san],
            ))
            .endpoints(build::endpoints("greeter", &[addr]))
    };
    xds.set_snapshot(snapshot(GREETER_ID));

    let dir = certs::istio_dir(&ca, "/ns/default/sa/client");
    let providers = certs::file_watcher_providers(&dir);
    let bootstrap = Bootstrap::from_json_str(&format!(
        r#"{{
          "xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}]}}],
          "node": {{"id": "meshwork-grpc-server-test"}},
          {providers}
        }}"#,
        xds.uri().trim_start_matches("http://")
    ))
    .unwrap();
    let client = XdsClient::builder(&bootstrap).unwrap().start();
    let channel = MeshChannel::from_xds(
        &client,
        &format!("xds:///{TARGET}"),
        MeshChannelOptions::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        say_hello(&channel).await.unwrap(),
        format!("A: hello hi from {CLIENT_ID}"),
        "the server saw the client's SVID from the certificate provider"
    );

    // The control plane now expects another identity for the backend: the changed cluster
    // gets new connections, and the handshake refuses the server's SVID.
    xds.set_snapshot(snapshot("spiffe://example.org/ns/default/sa/someone-else"));
    let mut refused = None;
    for _ in 0..200 {
        match say_hello(&channel).await {
            Ok(_) => tokio::task::yield_now().await,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = refused.expect("the SAN change took effect within 2 s");
    let ce = connect_error(&status).unwrap_or_else(|| panic!("{status:?}"));
    assert!(
        matches!(ce.verify_error(), Some(VerifyError::Unauthorized { spiffe_id, .. }) if spiffe_id.to_string() == GREETER_ID),
        "{ce}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tls_cluster(name: &str, san: &str) -> Arc<Cluster> {
    cluster(name, Some(upstream_tls(&[san])))
}

/// A channel to the greeter at `addr` over mTLS as `client`.
fn mtls_channel(addr: SocketAddr, client: MtlsConfig) -> MeshChannel {
    static_channel(
        tls_cluster("greeter", GREETER_ID),
        &[addr],
        MeshChannelOptions::new().mtls(client),
    )
}

#[tokio::test]
async fn the_policy_denies_with_permission_denied_and_allows_what_it_names() {
    let ca = TestCa::new("example.org");
    let policy = AuthorizationPolicy::new()
        .allow(
            Rule::any()
                .principal(Principal::Id(CLIENT_ID.parse().unwrap()))
                .operation(Operation::grpc_method("helloworld.Greeter", "SayHello")),
        )
        .deny(Rule::any().principal(Principal::Id(
            "spiffe://example.org/ns/default/sa/banned".parse().unwrap(),
        )));
    let (addr, _stop, _task) = start(
        MeshServer::new(mtls(&ca, "/ns/default/sa/greeter"))
            .policy(policy)
            .add_service(greeter("A")),
    )
    .await;

    let allowed = mtls_channel(addr, mtls(&ca, "/ns/default/sa/client"));
    assert_eq!(
        say_hello(&allowed).await.unwrap(),
        format!("A: hello hi from {CLIENT_ID}")
    );
    for denied in ["/ns/default/sa/other", "/ns/default/sa/banned"] {
        let channel = mtls_channel(addr, mtls(&ca, denied));
        let status = say_hello(&channel).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{denied}: {status:?}"
        );
    }
    // A client from another trust domain never gets past the handshake.
    let other = TestCa::new("other.org");
    // (It trusts our CA, so it accepts the server; the server refuses its SVID. With TLS 1.3
    // the client learns that after its side of the handshake: from the server's alert, or
    // as a broken pipe when the server has already closed; either way the call never
    // reaches the service and fails as a transport error, not PERMISSION_DENIED.)
    let stranger = MtlsConfig::new(Arc::new(StaticSource::new(
        Some(other.svid("/ns/default/sa/client")),
        ca.bundles(),
    )));
    let status = say_hello(&mtls_channel(addr, stranger)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn graceful_shutdown_lets_the_call_in_flight_finish() {
    let ca = TestCa::new("example.org");
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        entered: Some(entered_tx),
        release: Notify::new(),
    });
    let (addr, stop, task) = start(
        MeshServer::new(mtls(&ca, "/ns/default/sa/greeter")).add_service(Greeter {
            id: "A".into(),
            gate: Some(gate.clone()),
        }),
    )
    .await;
    let channel = mtls_channel(addr, mtls(&ca, "/ns/default/sa/client"));
    let call = tokio::spawn({
        let channel = channel.clone();
        async move { say_hello(&channel).await }
    });
    entered.recv().await.expect("the call reached the handler");
    stop.send(()).unwrap();
    // The server is draining: it has not returned while the call is held.
    tokio::task::yield_now().await;
    assert!(!task.is_finished());
    gate.release.notify_one();
    assert_eq!(
        call.await.unwrap().unwrap(),
        format!("A: hello hi from {CLIENT_ID}")
    );
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server returns once drained")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn silent_and_quiet_connections_neither_starve_a_call_nor_stay_open() {
    use meshwork_core::identity::Authorizer;
    use meshwork_core::inbound::ServerLimits;
    use meshwork_core::inbound::testing::{closed_within, silent, tls_silent};

    let ca = TestCa::new("example.org");
    let limits = ServerLimits::new()
        .handshake_timeout(Duration::from_secs(2))
        .max_concurrent_handshakes(4)
        .idle_timeout(Some(Duration::from_millis(800)))
        .drain_grace(Duration::from_millis(300));
    let (addr, _stop, _task) = start(
        MeshServer::new(mtls(&ca, "/ns/default/sa/greeter"))
            .limits(limits)
            .add_service(greeter("A")),
    )
    .await;

    // Clients that complete TLS and then never send the HTTP/2 preface...
    let h2 = Arc::new(
        mtls(&ca, "/ns/default/sa/quiet")
            .authorizer(Authorizer::Any)
            .alpn_protocols(vec![b"h2".to_vec()])
            .client_config()
            .unwrap(),
    );
    let mut quiet = Vec::new();
    for _ in 0..3 {
        quiet.push(tls_silent(addr, h2.clone()).await.unwrap());
    }
    // ...and more silent TCP connections than there are handshake slots.
    let flood = silent(addr, 32).await.unwrap();

    let channel = mtls_channel(addr, mtls(&ca, "/ns/default/sa/client"));
    let reply = tokio::time::timeout(Duration::from_secs(2), say_hello(&channel))
        .await
        .expect("the real call was starved");
    assert_eq!(reply.unwrap(), format!("A: hello hi from {CLIENT_ID}"));

    let bound = Duration::from_secs(5);
    let (quiet, flood) = futures_util::future::join(
        futures_util::future::join_all(quiet.into_iter().map(|c| closed_within(c, bound))),
        futures_util::future::join_all(flood.into_iter().map(|c| closed_within(c, bound))),
    )
    .await;
    assert!(
        quiet.iter().all(|c| *c),
        "quiet HTTP/2 still open: {quiet:?}"
    );
    assert!(flood.iter().all(|c| *c), "silent TCP still open: {flood:?}");
}

/// The server's first SETTINGS frame, as (identifier, value) pairs, read off a raw h2c
/// connection.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The client preface, then an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 0x4, "the server speaks first with SETTINGS");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_server_advertises_its_stream_and_header_limits() {
    use meshwork_core::inbound::ServerLimits;

    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    let (addr, _stop, _task) = start(MeshServer::plaintext().add_service(greeter("A"))).await;
    let settings = server_settings(addr).await;
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 1024)),
        "{settings:?}"
    );
    assert!(
        settings.contains(&(MAX_HEADER_LIST_SIZE, 60 * 1024)),
        "{settings:?}"
    );

    let limits = ServerLimits::new()
        .max_concurrent_streams(7)
        .max_header_list_size(8 * 1024);
    let (addr, _stop, _task) = start(
        MeshServer::plaintext()
            .limits(limits)
            .add_service(greeter("A")),
    )
    .await;
    let settings = server_settings(addr).await;
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 7)),
        "{settings:?}"
    );
    assert!(
        settings.contains(&(MAX_HEADER_LIST_SIZE, 8 * 1024)),
        "{settings:?}"
    );
}
