//! Upstream connections under hostile or aging servers, over real TLS on loopback: the
//! application's floor under xDS security ([`UpstreamPolicy`]), readiness only after the
//! server's preface, and retiring connections at their maximum age or the server
//! certificate's expiry.

mod support;

use support::*;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{Authorizer, MtlsConfig, StaticSource, VerifyError};
use meshwork_grpc::{ConnectError, MeshChannel, MeshChannelOptions, UpstreamPolicy, connect_error};
use meshwork_xds::resource::Cluster;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tonic::Status;
use tonic_prost::ProstCodec;

const GREETER: &str = "spiffe://example.org/ns/default/sa/greeter";

/// Answers `<name> from conn-<n>`, `n` counting the server's connections from 1; a request
/// named `wait` is announced on `arrived` and answered once `release` is notified.
struct SayHello {
    conn: usize,
    arrived: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<HelloReply>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let name = req.into_inner().name;
        let message = format!("{name} from conn-{}", self.conn);
        let (arrived, release) = (self.arrived.clone(), self.release.clone());
        Box::pin(async move {
            if name == "wait" {
                let released = release.notified();
                let _ = arrived.send(());
                released.await;
            }
            Ok(tonic::Response::new(HelloReply { message }))
        })
    }
}

/// A Greeter on 127.0.0.1:0, over h2c or, with `tls`, over TLS; it records the peer address
/// of every TCP connection it accepts.
struct Backend {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    arrived: mpsc::UnboundedReceiver<()>,
    release: Arc<Notify>,
}

async fn backend(tls: Option<Arc<rustls::ServerConfig>>) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let (seen, rel) = (peers.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let conn = {
                let mut seen = seen.lock().unwrap();
                seen.push(peer);
                seen.len()
            };
            let (tls, arrived, release) = (tls.clone(), arrived_tx.clone(), rel.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let method = SayHello {
                            conn,
                            arrived: arrived.clone(),
                            release: release.clone(),
                        };
                        async move {
                            let rsp = dispatch(req.map(tonic::body::Body::new), method);
                            Ok::<_, Infallible>(rsp.await)
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

/// One `SayHello(name)` through `channel`.
async fn hello(channel: &MeshChannel, name: &str) -> Result<String, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(Status::from_error)?;
    let rsp = grpc
        .unary(
            tonic::Request::new(HelloRequest { name: name.into() }),
            PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await?;
    Ok(rsp.into_inner().message)
}

/// A server configuration presenting `source`'s SVID and accepting clients that
/// `authorizer` allows; h2 by ALPN.
fn server_tls(source: Arc<StaticSource>, authorizer: Authorizer) -> Arc<rustls::ServerConfig> {
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

fn tls_cluster(sans: &[&str]) -> Arc<Cluster> {
    cluster("greeter", Some(upstream_tls(sans)))
}

// Hole 13: a server that refuses our certificate.

#[tokio::test]
async fn a_server_refusing_our_certificate_fails_every_call_fast_with_unavailable() {
    let ca = TestCa::new("example.org");
    // TLS 1.3 (rustls' default): our handshake ends before the server checks our SVID, so
    // its refusal is an alert we only see when reading.
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
    let options = MeshChannelOptions::new().mtls(client_mtls(&ca));
    let channel = static_channel(tls_cluster(&[]), &[server.addr], options);
    let calls = async {
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(hello(&channel, "hi").await.unwrap_err());
        }
        statuses
    };
    // gRPC fails these at once; waiting out a reconnect backoff per call takes far longer.
    let statuses = tokio::time::timeout(Duration::from_secs(5), calls)
        .await
        .expect("20 calls fail within 5 s");
    for status in &statuses {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let ce = connect_error(status).unwrap_or_else(|| panic!("no ConnectError: {status:?}"));
        let ConnectError::Preface { source, .. } = ce else {
            panic!("{ce}");
        };
        let tls = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a TLS error: {source:?}"));
        assert!(matches!(tls, rustls::Error::AlertReceived(_)), "{tls:?}");
        assert!(status.message().contains("alert"), "{}", status.message());
    }
}

#[tokio::test]
async fn a_server_that_never_sends_settings_fails_the_connect_at_the_connect_timeout() {
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
                // Completes TLS, then reads whatever comes and never says a word.
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
    let c = Arc::new(Cluster {
        connect_timeout: Duration::from_millis(500),
        ..Cluster::clone(&tls_cluster(&[]))
    });
    let channel = static_channel(c, &[addr], MeshChannelOptions::new().mtls(client_mtls(&ca)));
    // A guard against a hang, not a synchronisation: the connect timeout is 0.5 s.
    let status = tokio::time::timeout(Duration::from_secs(10), hello(&channel, "hi"))
        .await
        .expect("the call does not hang")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let ce = connect_error(&status).unwrap_or_else(|| panic!("{status:?}"));
    assert!(matches!(ce, ConnectError::Timeout { .. }), "{ce}");
}

// Hole 11: the application's floor under xDS security.

#[tokio::test]
async fn require_mtls_refuses_a_plaintext_cluster_without_opening_a_connection() {
    let server = backend(None).await;
    let options =
        MeshChannelOptions::new().upstream_policy(UpstreamPolicy::new().require_mtls(true));
    let channel = static_channel(cluster("greeter", None), &[server.addr], options);
    for _ in 0..3 {
        let status = hello(&channel, "hi").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let ce = connect_error(&status).unwrap_or_else(|| panic!("{status:?}"));
        assert!(
            matches!(ce, ConnectError::PlaintextRefused { cluster } if cluster == "greeter"),
            "{ce}"
        );
    }
    // Had the channel connected, its connection would be ahead of this probe in the
    // listener's queue.
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

    // Without the floor the same cluster is dialled in plaintext (gRFC A29).
    let channel = static_channel(
        cluster("greeter", None),
        &[server.addr],
        MeshChannelOptions::new(),
    );
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-2");
}

#[tokio::test]
async fn a_pinned_authorizer_refuses_servers_the_san_matchers_allow() {
    let ca = TestCa::new("example.org");
    let intruder_id = "spiffe://example.org/ns/default/sa/intruder";
    let intruder = backend(Some(server_tls(
        server_source(&ca, "/ns/default/sa/intruder"),
        Authorizer::Any,
    )))
    .await;
    let greeter = backend(Some(server_tls(
        server_source(&ca, "/ns/default/sa/greeter"),
        Authorizer::Any,
    )))
    .await;
    let pinned = MeshChannelOptions::new()
        .mtls(client_mtls(&ca))
        .upstream_policy(UpstreamPolicy::new().pin(Authorizer::Exact(GREETER.parse().unwrap())));

    // An empty SAN list (any trusted peer) and one naming the intruder: both still refused.
    for sans in [&[][..], &[intruder_id][..]] {
        let channel = static_channel(tls_cluster(sans), &[intruder.addr], pinned.clone());
        let status = hello(&channel, "hi").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let ce = connect_error(&status).unwrap_or_else(|| panic!("{status:?}"));
        match ce.verify_error() {
            Some(VerifyError::Unauthorized { spiffe_id, policy }) => {
                assert_eq!(spiffe_id.to_string(), intruder_id);
                assert!(policy.contains(GREETER), "{policy}");
            }
            other => panic!("{sans:?}: {other:?} ({ce})"),
        }
    }
    // The pinned server passes, and the SAN matchers still apply on top of the pin.
    let channel = static_channel(tls_cluster(&[]), &[greeter.addr], pinned.clone());
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");
    let channel = static_channel(tls_cluster(&[intruder_id]), &[greeter.addr], pinned);
    let status = hello(&channel, "hi").await.unwrap_err();
    assert!(
        matches!(
            connect_error(&status).and_then(ConnectError::verify_error),
            Some(VerifyError::Unauthorized { .. })
        ),
        "{status:?}"
    );

    // Without the pin, the control plane's empty SAN list lets the intruder answer (A29).
    let options = MeshChannelOptions::new().mtls(client_mtls(&ca));
    let channel = static_channel(tls_cluster(&[]), &[intruder.addr], options);
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-3");
}

// Hole 12: long-lived connections.

/// Moves tokio's clock forward by `by` (the runtime's timers fire), then lets it run on.
async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn a_connection_is_retired_when_the_server_certificate_expires() {
    let ca = TestCa::new("example.org");
    let source = Arc::new(StaticSource::new(
        Some(ca.svid_valid_for("/ns/default/sa/greeter", Duration::from_secs(60))),
        ca.bundles(),
    ));
    let server = backend(Some(server_tls(source.clone(), Authorizer::Any))).await;
    let options = MeshChannelOptions::new().mtls(client_mtls(&ca));
    let channel = static_channel(tls_cluster(&[GREETER]), &[server.addr], options);
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");

    // The server rotates; the connection made under the old SVID lives on until that SVID
    // expires (tokio's clock stands for the wall clock the deadline was taken from).
    source.set(Some(ca.svid("/ns/default/sa/greeter")), ca.bundles());
    skip(Duration::from_secs(59)).await;
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");
    skip(Duration::from_secs(2)).await;
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-2");
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-2");
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_maximum_age_moves_new_calls_to_a_new_connection_and_in_flight_calls_finish() {
    let ca = TestCa::new("example.org");
    let mut server = backend(Some(server_tls(
        server_source(&ca, "/ns/default/sa/greeter"),
        Authorizer::Any,
    )))
    .await;
    let options = MeshChannelOptions::new()
        .mtls(client_mtls(&ca))
        .upstream_policy(UpstreamPolicy::new().max_connection_age(Duration::from_secs(30)));
    let channel = static_channel(tls_cluster(&[GREETER]), &[server.addr], options);
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-1");

    let in_flight = tokio::spawn({
        let channel = channel.clone();
        async move { hello(&channel, "wait").await }
    });
    server.arrived.recv().await.unwrap();
    skip(Duration::from_secs(31)).await;
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-2");
    assert_eq!(server.connections(), 2);
    // The old connection still carries the call that was on it when it retired.
    server.release.notify_one();
    assert_eq!(in_flight.await.unwrap().unwrap(), "wait from conn-1");

    // Without a maximum age the connection stays.
    let options = MeshChannelOptions::new().mtls(client_mtls(&ca));
    let channel = static_channel(tls_cluster(&[GREETER]), &[server.addr], options);
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-3");
    skip(Duration::from_secs(3600)).await;
    assert_eq!(hello(&channel, "hi").await.unwrap(), "hi from conn-3");
}
