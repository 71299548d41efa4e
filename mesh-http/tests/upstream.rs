//! Upstream connections of a `MeshClient` under hostile or aging servers, over real TLS on
//! loopback: the application's floor under xDS security ([`UpstreamPolicy`]), HTTP/2
//! readiness only after the server's preface, and retiring connections at their maximum
//! age.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::config::{ClusterChildren, ClusterConfig, ClusterState, StaticConfig};
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{Authorizer, MtlsConfig, StaticSource, VerifyError};
use meshwork_http::{ConnectError, MeshClient, MeshClientOptions, UpstreamPolicy};
use meshwork_xds::resource::{
    CertProviderInstance, Cluster, ClusterLoadAssignment, StringMatchKind, StringMatcher,
    UpstreamProtocol, UpstreamTls,
};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

const GREETER: &str = "spiffe://example.org/ns/default/sa/greeter";

/// An HTTP/2 server on 127.0.0.1:0 (h2 by ALPN over TLS, prior knowledge without) answering
/// `conn-<n>`, `n` counting its TCP connections from 1, whose peers it records; a request
/// for `/wait` is announced on `arrived` and answered once `release` is notified.
struct Backend {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    arrived: mpsc::UnboundedReceiver<()>,
    release: Arc<Notify>,
}

async fn backend(tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let (seen, rel) = (peers.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let conn = {
                let mut seen = seen.lock().unwrap();
                seen.push(peer);
                seen.len()
            };
            let (tls, arrived, release) = (tls.clone(), arrived_tx.clone(), rel.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let (arrived, release) = (arrived.clone(), release.clone());
                    async move {
                        if req.uri().path() == "/wait" {
                            let released = release.notified();
                            let _ = arrived.send(());
                            released.await;
                        }
                        let body = Full::new(Bytes::from(format!("conn-{conn}")));
                        Ok::<_, Infallible>(http::Response::new(body))
                    }
                });
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = h2.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                            let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    Backend {
        addr,
        peers,
        arrived,
        release,
    }
}

impl Backend {
    fn connections(&self) -> usize {
        self.peers.lock().unwrap().len()
    }
}

fn server_tls(
    source: Arc<StaticSource>,
    authorizer: Authorizer,
) -> Arc<tokio_rustls::rustls::ServerConfig> {
    Arc::new(
        MtlsConfig::new(source)
            .authorizer(authorizer)
            .alpn_protocols(vec![b"h2".to_vec()])
            .server_config()
            .unwrap(),
    )
}

fn server_source(ca: &TestCa, path: &str) -> Arc<StaticSource> {
    Arc::new(StaticSource::new(Some(ca.svid(path)), ca.bundles()))
}

fn client_mtls(ca: &TestCa) -> MtlsConfig {
    MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid("/ns/default/sa/client")),
        ca.bundles(),
    )))
}

/// A client sending every request to `cluster` (HTTP/2), whose endpoint is `addr`; TLS
/// with SAN matchers `sans` (exact) when `sans` is given.
fn client(addr: SocketAddr, sans: Option<&[&str]>, options: MeshClientOptions) -> MeshClient {
    client_with(addr, sans, Duration::from_secs(5), options)
}

fn client_with(
    addr: SocketAddr,
    sans: Option<&[&str]>,
    connect_timeout: Duration,
    options: MeshClientOptions,
) -> MeshClient {
    let instance = CertProviderInstance {
        instance_name: "default".into(),
        certificate_name: "default".into(),
    };
    let tls = sans.map(|sans| UpstreamTls {
        identity: Some(instance.clone()),
        root: instance,
        san_matchers: sans
            .iter()
            .map(|s| StringMatcher {
                kind: StringMatchKind::Exact((*s).into()),
                ignore_case: false,
            })
            .collect(),
    });
    let cluster = Arc::new(Cluster {
        tls,
        connect_timeout,
        protocol: UpstreamProtocol::Http2,
        ..Cluster::eds("greeter")
    });
    let state = ClusterState::Ready(ClusterConfig {
        cluster,
        children: ClusterChildren::Endpoints(Ok(Arc::new(ClusterLoadAssignment::from_addresses(
            "greeter",
            &[addr],
        )))),
    });
    let cfg = StaticConfig::new()
        .route_all_to("greeter")
        .cluster("greeter", state)
        .build()
        .unwrap();
    MeshClient::from_static(cfg, options)
}

async fn get(client: &MeshClient, path: &str) -> Result<String, meshwork_http::Error> {
    let rsp = client.get(format!("http://greeter{path}")).await?;
    assert_eq!(rsp.status(), 200);
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn a_server_refusing_our_certificate_fails_the_connect_with_the_tls_alert() {
    let ca = TestCa::new("example.org");
    let refusing = Authorizer::Exact(
        "spiffe://example.org/ns/default/sa/not-you"
            .parse()
            .unwrap(),
    );
    let server = backend(Some(server_tls(
        server_source(&ca, "/ns/default/sa/greeter"),
        refusing,
    )))
    .await;
    let client = client(
        server.addr,
        Some(&[]),
        MeshClientOptions::new().mtls(client_mtls(&ca)),
    );
    for _ in 0..3 {
        let err = get(&client, "/").await.unwrap_err();
        assert_eq!(err.status(), 503, "{err:?}");
        let Some(ConnectError::Preface { source, .. }) = err.connect_error() else {
            panic!("{err:?}");
        };
        let tls = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<tokio_rustls::rustls::Error>());
        assert!(
            matches!(tls, Some(tokio_rustls::rustls::Error::AlertReceived(_))),
            "{source:?}"
        );
    }
}

#[tokio::test]
async fn an_http2_server_that_never_sends_settings_fails_the_connect_at_the_connect_timeout() {
    let ca = TestCa::new("example.org");
    let config = server_tls(
        server_source(&ca, "/ns/default/sa/greeter"),
        Authorizer::Any,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut sink = vec![0; 4096];
                    while let Ok(n) = tls.read(&mut sink).await {
                        if n == 0 {
                            return;
                        }
                    }
                }
            });
        }
    });
    let client = client_with(
        addr,
        Some(&[]),
        Duration::from_millis(500),
        MeshClientOptions::new().mtls(client_mtls(&ca)),
    );
    // A guard against a hang, not a synchronisation: the connect timeout is 0.5 s.
    let err = tokio::time::timeout(Duration::from_secs(10), get(&client, "/"))
        .await
        .expect("the request does not hang")
        .unwrap_err();
    assert!(
        matches!(err.connect_error(), Some(ConnectError::Timeout { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn require_mtls_refuses_a_plaintext_cluster_without_opening_a_connection() {
    let server = backend(None).await;
    let options =
        MeshClientOptions::new().upstream_policy(UpstreamPolicy::new().require_mtls(true));
    let refusing = client(server.addr, None, options);
    let err = get(&refusing, "/").await.unwrap_err();
    assert!(
        matches!(
            err.connect_error(),
            Some(ConnectError::PlaintextRefused { .. })
        ),
        "{err:?}"
    );
    let probe = TcpStream::connect(server.addr).await.unwrap();
    let probe_addr = probe.local_addr().unwrap();
    while server.connections() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        server.peers.lock().unwrap()[0],
        probe_addr,
        "a plaintext connection was opened"
    );

    let plain = client(server.addr, None, MeshClientOptions::new());
    assert_eq!(get(&plain, "/").await.unwrap(), "conn-2");
}

#[tokio::test]
async fn a_pinned_authorizer_refuses_servers_the_san_matchers_allow() {
    let ca = TestCa::new("example.org");
    let server = backend(Some(server_tls(
        server_source(&ca, "/ns/default/sa/intruder"),
        Authorizer::Any,
    )))
    .await;
    let pinned = MeshClientOptions::new()
        .mtls(client_mtls(&ca))
        .upstream_policy(UpstreamPolicy::new().pin(Authorizer::Exact(GREETER.parse().unwrap())));
    let err = get(&client(server.addr, Some(&[]), pinned), "/")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.connect_error().and_then(ConnectError::verify_error),
            Some(VerifyError::Unauthorized { .. })
        ),
        "{err:?}"
    );
    let open = MeshClientOptions::new().mtls(client_mtls(&ca));
    assert_eq!(
        get(&client(server.addr, Some(&[]), open), "/")
            .await
            .unwrap(),
        "conn-2"
    );
}

/// Moves tokio's clock forward by `by` (the runtime's timers fire), then lets it run on.
async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn a_maximum_age_moves_new_requests_to_a_new_connection_and_in_flight_ones_finish() {
    let ca = TestCa::new("example.org");
    let mut server = backend(Some(server_tls(
        server_source(&ca, "/ns/default/sa/greeter"),
        Authorizer::Any,
    )))
    .await;
    let options = MeshClientOptions::new()
        .mtls(client_mtls(&ca))
        .upstream_policy(UpstreamPolicy::new().max_connection_age(Duration::from_secs(30)));
    let client = client(server.addr, Some(&[GREETER]), options);
    assert_eq!(get(&client, "/").await.unwrap(), "conn-1");
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { get(&client, "/wait").await }
    });
    server.arrived.recv().await.unwrap();
    skip(Duration::from_secs(31)).await;
    // The retirement timer fired during the skip; let its task run (poisoning the pooled
    // connection) before the next request looks for one.
    tokio::task::yield_now().await;
    assert_eq!(get(&client, "/").await.unwrap(), "conn-2");
    assert_eq!(server.connections(), 2);
    server.release.notify_one();
    assert_eq!(in_flight.await.unwrap().unwrap(), "conn-1");
}
