//! Upstream connections of a `MeshClient` under hostile or aging servers, over real TLS on
//! loopback: the application's floor under xDS security ([`UpstreamPolicy`]), HTTP/2
//! readiness only after the server's preface, retiring connections at their maximum age,
//! and the HTTP/1.1 pool (a connection per request in flight, idle ones closed).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshwork_core::config::StaticConfig;
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{Authorizer, MtlsConfig, VerifyError};
use meshwork_http::{ConnectError, MeshClient, MeshClientOptions, UpstreamPolicy};
use meshwork_test_support::backend::{Backend, client_mtls, server_tls, silent_tls, skip, source};
use meshwork_test_support::cluster::upstream_tls;
use meshwork_xds::resource::{Cluster, UpstreamProtocol};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, mpsc};

const GREETER: &str = "spiffe://example.org/ns/default/sa/greeter";

/// An HTTP/2 server on 127.0.0.1:0 (h2 by ALPN over TLS, prior knowledge without) answering
/// `conn-<n>`, `n` the number of its connection; a request for `/wait` is held until the
/// test releases it.
async fn backend(tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>) -> Backend {
    Backend::start(tls, |conn, req: http::Request<_>| async move {
        if req.uri().path() == "/wait" {
            conn.hold().await;
        }
        http::Response::new(Full::new(Bytes::from(format!("conn-{}", conn.number()))))
    })
    .await
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
    let cluster = Cluster {
        tls: sans.map(upstream_tls),
        connect_timeout,
        protocol: UpstreamProtocol::Http2,
        ..Cluster::eds("greeter")
    };
    client_of(cluster, addr, options)
}

/// A client sending every request to `cluster`, whose endpoint is `addr`.
fn client_of(cluster: Cluster, addr: SocketAddr, options: MeshClientOptions) -> MeshClient {
    let cfg = StaticConfig::new()
        .route_all_to(&cluster.name)
        .cluster_with_endpoints(cluster, [addr])
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
        source(&ca, "/ns/default/sa/greeter"),
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
    let config = server_tls(source(&ca, "/ns/default/sa/greeter"), Authorizer::Any);
    let addr = silent_tls(config).await;
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
        server.peers()[0],
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
        source(&ca, "/ns/default/sa/intruder"),
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

#[tokio::test]
async fn a_maximum_age_moves_new_requests_to_a_new_connection_and_in_flight_ones_finish() {
    let ca = TestCa::new("example.org");
    let mut server = backend(Some(server_tls(
        source(&ca, "/ns/default/sa/greeter"),
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
    server.held().await;
    skip(Duration::from_secs(31)).await;
    // The retirement timer fired during the skip; let its task run (poisoning the pooled
    // connection) before the next request looks for one.
    tokio::task::yield_now().await;
    assert_eq!(get(&client, "/").await.unwrap(), "conn-2");
    assert_eq!(server.connections(), 2);
    server.release();
    assert_eq!(in_flight.await.unwrap().unwrap(), "conn-1");
    // A connection made for a request (not while the endpoint became ready) is armed by a
    // later request: it retires in turn.
    assert_eq!(get(&client, "/").await.unwrap(), "conn-2");
    skip(Duration::from_secs(31)).await;
    tokio::task::yield_now().await;
    assert_eq!(get(&client, "/").await.unwrap(), "conn-3");
}

/// An HTTP/1.1 server over mTLS (ALPN `http/1.1`, the server SVID `GREETER`).
struct Http1Backend {
    addr: SocketAddr,
    /// TCP connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// TLS handshakes completed so far.
    handshakes: Arc<AtomicUsize>,
    /// A message each time a connection ends.
    closed: mpsc::UnboundedReceiver<()>,
}

/// Starts an [`Http1Backend`] answering `HTTP/1.1`; with `barrier`, every request waits
/// there before it is answered.
async fn http1_backend(ca: &TestCa, barrier: Option<Arc<Barrier>>) -> Http1Backend {
    http1_backend_closing(ca, barrier, false).await
}

/// An [`Http1Backend`] that, with `close_first`, closes its first connection as soon as the
/// TLS handshake is done, without reading from it (an idle timeout cut short).
async fn http1_backend_closing(
    ca: &TestCa,
    barrier: Option<Arc<Barrier>>,
    close_first: bool,
) -> Http1Backend {
    let tls = MtlsConfig::new(source(ca, "/ns/default/sa/greeter"))
        .alpn_protocols(vec![b"http/1.1".to_vec()])
        .server_config()
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (count, done) = (accepted.clone(), handshakes.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let number = count.fetch_add(1, Ordering::SeqCst) + 1;
            let (acceptor, barrier, closed, done) = (
                acceptor.clone(),
                barrier.clone(),
                closed_tx.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let accepted = acceptor.accept(tcp).await;
                if accepted.is_ok() {
                    done.fetch_add(1, Ordering::SeqCst);
                }
                if close_first && number == 1 {
                    drop(accepted);
                } else if let Ok(tls) = accepted {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let barrier = barrier.clone();
                        async move {
                            if let Some(barrier) = barrier {
                                barrier.wait().await;
                            }
                            let body = Bytes::from(format!("{:?}", req.version()));
                            Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                }
                let _ = closed.send(());
            });
        }
    });
    Http1Backend {
        addr,
        accepted,
        handshakes,
        closed,
    }
}

/// A client of one HTTP/1.1 cluster over mTLS whose endpoint is `addr`.
fn http1_client(ca: &TestCa, addr: SocketAddr) -> MeshClient {
    let cluster = Cluster {
        tls: Some(upstream_tls(&[GREETER])),
        protocol: UpstreamProtocol::Http1,
        ..Cluster::eds("greeter")
    };
    client_of(
        cluster,
        addr,
        MeshClientOptions::new().mtls(client_mtls(ca)),
    )
}

#[tokio::test]
async fn concurrent_http1_requests_to_one_endpoint_each_get_a_connection_of_the_pool() {
    // An HTTP/1.1 connection carries one request at a time, so N requests in flight to one
    // endpoint need N connections (Envoy's pool and hyper's open one per concurrent
    // request). The server answers none until all N arrived: a client that queues requests
    // behind a busy connection never gets there.
    const N: usize = 8;
    let ca = TestCa::new("example.org");
    let server = http1_backend(&ca, Some(Arc::new(Barrier::new(N)))).await;
    let client = http1_client(&ca, server.addr);
    for round in 0..2 {
        let calls: Vec<_> = (0..N)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { get(&client, "/").await })
            })
            .collect();
        let answers = tokio::time::timeout(Duration::from_secs(20), join_all(calls))
            .await
            .unwrap_or_else(|_| panic!("round {round}: {N} concurrent HTTP/1.1 calls stalled"));
        for answer in answers {
            assert_eq!(answer.unwrap().unwrap(), "HTTP/1.1");
        }
        if round == 0 {
            // One connection per request in flight, no more.
            assert_eq!(server.accepted.load(Ordering::SeqCst), N);
        }
    }
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_the_pool_idle_timeout() {
    let ca = TestCa::new("example.org");
    let mut server = http1_backend(&ca, None).await;
    let client = http1_client(&ca, server.addr);
    assert_eq!(get(&client, "/").await.unwrap(), "HTTP/1.1");
    // The connection goes back to the pool in a task of its own once the response is read;
    // a jump of the clock before that task ran finds nothing idle, so jump again until the
    // close arrives (a bounded number of times).
    for _ in 0..20 {
        skip(Duration::from_secs(91)).await;
        if tokio::time::timeout(Duration::from_millis(500), server.closed.recv())
            .await
            .is_ok()
        {
            assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
            // The client still works: the next request opens a new connection.
            assert_eq!(get(&client, "/").await.unwrap(), "HTTP/1.1");
            assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
            return;
        }
    }
    panic!("the idle connection was never closed");
}

/// Waits (bounded) until `server` has completed `n` TLS handshakes. The tests run on one
/// thread, so the client's side of a handshake is done too, and whatever the client does in
/// the same step (keeping the connection).
async fn handshaken(server: &Http1Backend, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.handshakes.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server never completed {n} handshake(s)"));
}

/// Waits (bounded) until one of `server`'s connections ends; `what` says why it should.
async fn closed(server: &mut Http1Backend, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), server.closed.recv())
        .await
        .expect(what)
        .expect("the server runs");
}

#[tokio::test]
async fn an_endpoint_connects_before_its_first_request_which_then_uses_that_connection() {
    // The balancer publishes an endpoint once it is connected, as for gRPC: the first
    // request does not wait for a handshake, and takes the connection made for it.
    let ca = TestCa::new("example.org");
    let server = http1_backend(&ca, None).await;
    let client = http1_client(&ca, server.addr);
    handshaken(&server, 1).await;
    assert_eq!(get(&client, "/").await.unwrap(), "HTTP/1.1");
    assert_eq!(get(&client, "/").await.unwrap(), "HTTP/1.1");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_first_connection_the_server_closed_before_any_request_is_not_used() {
    // An HTTP/1.1 request written on a connection the server already closed fails; the
    // client sees the close and dials again instead.
    let ca = TestCa::new("example.org");
    let mut server = http1_backend_closing(&ca, None, true).await;
    let client = http1_client(&ca, server.addr);
    closed(
        &mut server,
        "the first connection is made without a request",
    )
    .await;
    assert_eq!(get(&client, "/").await.unwrap(), "HTTP/1.1");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_endpoint_that_cannot_connect_takes_no_requests() {
    // One endpoint refuses connections (nothing listens there any more), the other serves.
    // Without retries, a request sent to the first would fail: the balancer keeps it out
    // of the picks, since it never becomes ready, as gRPC keeps a subchannel in
    // TRANSIENT_FAILURE out.
    let ca = TestCa::new("example.org");
    let server = http1_backend(&ca, None).await;
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let cluster = Cluster {
        tls: Some(upstream_tls(&[GREETER])),
        protocol: UpstreamProtocol::Http1,
        ..Cluster::eds("greeter")
    };
    let cfg = StaticConfig::new()
        .route_all_to(&cluster.name)
        .cluster_with_endpoints(cluster, [dead, server.addr])
        .build()
        .unwrap();
    let client = MeshClient::from_static(cfg, MeshClientOptions::new().mtls(client_mtls(&ca)));
    for i in 0..20 {
        let answer = get(&client, "/").await;
        assert_eq!(
            answer.unwrap_or_else(|e| panic!("request {i}: {e:?}")),
            "HTTP/1.1"
        );
    }
}

#[tokio::test]
async fn a_first_connection_no_request_takes_is_closed_after_the_pool_idle_timeout() {
    let ca = TestCa::new("example.org");
    let mut server = http1_backend(&ca, None).await;
    let client = http1_client(&ca, server.addr);
    handshaken(&server, 1).await;
    skip(Duration::from_secs(89)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), server.closed.recv())
            .await
            .is_err(),
        "closed before the idle timeout"
    );
    skip(Duration::from_secs(2)).await;
    closed(
        &mut server,
        "the unused first connection is closed after the idle timeout",
    )
    .await;
    // The endpoint stays ready: the next request dials a new connection.
    assert_eq!(get(&client, "/").await.unwrap(), "HTTP/1.1");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}
