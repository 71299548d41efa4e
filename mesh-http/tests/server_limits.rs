//! `Server` under hostile clients, on loopback with real TLS: floods of silent and slow
//! connections neither starve a real client nor stay open, a connection closes when the
//! client's certificate expires, and a maximum connection age drains gracefully.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::config::StaticConfig;
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{Authorizer, MtlsConfig, StaticSource, Svid, TrustBundles};
use meshwork_core::inbound::ServerLimits;
use meshwork_core::inbound::testing::{closed_within, silent, slowloris, tls_silent};
use meshwork_http::{MeshClient, MeshClientOptions, Server};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use support::{identity, static_cluster};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

const SERVER_ID: &str = "spiffe://example.org/ns/default/sa/greeter";

async fn hello(
    _req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from("hello"))))
}

/// A MeshClient whose every request goes to `addr` over mTLS as `path`.
fn client(ca: &TestCa, path: &str, addr: SocketAddr) -> MeshClient {
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

fn tls_client(mtls: MtlsConfig, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    Arc::new(
        mtls.authorizer(Authorizer::Any)
            .alpn_protocols(vec![alpn.to_vec()])
            .client_config()
            .unwrap(),
    )
}

#[tokio::test]
async fn silent_and_slow_connections_neither_starve_a_real_client_nor_stay_open() {
    let ca = TestCa::new("example.org");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServerLimits::new()
        .handshake_timeout(Duration::from_secs(2))
        .max_concurrent_handshakes(4)
        .header_read_timeout(Duration::from_millis(800))
        .idle_timeout(Some(Duration::from_millis(800)))
        .drain_grace(Duration::from_millis(300));
    let server = Server::new(identity(&ca, "/ns/default/sa/greeter")).limits(limits);
    tokio::spawn(server.serve(listener, tower::service_fn(hello)));

    // Slow clients that got through TLS: HTTP/1 heads trickled a byte at a time, and HTTP/2
    // connections that never send their preface.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let tls = tls_silent(
            addr,
            tls_client(identity(&ca, "/ns/default/sa/slow"), b"http/1.1"),
        )
        .await
        .unwrap();
        slow.push(slowloris(tls, Duration::from_millis(50)));
    }
    let mut quiet_h2 = Vec::new();
    for _ in 0..3 {
        quiet_h2.push(
            tls_silent(
                addr,
                tls_client(identity(&ca, "/ns/default/sa/quiet"), b"h2"),
            )
            .await
            .unwrap(),
        );
    }
    // Then more silent TCP connections than there are handshake slots.
    let flood = silent(addr, 32).await.unwrap();

    // A real client is served promptly meanwhile.
    let started = Instant::now();
    let rsp = tokio::time::timeout(
        Duration::from_secs(2),
        client(&ca, "/ns/default/sa/good", addr).get("http://greeter/"),
    )
    .await
    .expect("the real client was starved")
    .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "hello");
    eprintln!("real request served in {:?}", started.elapsed());

    // And every hostile connection is closed by the server within its limit.
    let bound = Duration::from_secs(5);
    let closed = futures_util::future::join3(
        futures_util::future::join_all(slow.into_iter().map(|c| closed_within(c, bound))),
        futures_util::future::join_all(quiet_h2.into_iter().map(|c| closed_within(c, bound))),
        futures_util::future::join_all(flood.into_iter().map(|c| closed_within(c, bound))),
    )
    .await;
    assert!(
        closed.0.iter().all(|c| *c),
        "slowloris still open: {:?}",
        closed.0
    );
    assert!(
        closed.1.iter().all(|c| *c),
        "quiet HTTP/2 still open: {:?}",
        closed.1
    );
    assert!(
        closed.2.iter().all(|c| *c),
        "silent TCP still open: {:?}",
        closed.2
    );
}

/// A CA (rcgen) that mints SVIDs with a chosen lifetime.
struct ShortCa {
    issuer: Issuer<'static, KeyPair>,
    bundles: TrustBundles,
}

impl ShortCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(1);
        let root = params.self_signed(&key).unwrap();
        let bundles = TrustBundles::new()
            .with_domain("example.org".parse().unwrap(), vec![root.der().clone()])
            .unwrap();
        Self {
            issuer: Issuer::new(params, key),
            bundles,
        }
    }

    /// An SVID for `spiffe://example.org{path}` valid until `not_after`.
    fn svid(&self, path: &str, not_after: time::OffsetDateTime) -> Svid {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://example.org{path}").try_into().unwrap(),
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Svid::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
    }

    fn mtls(&self, svid: Svid) -> MtlsConfig {
        MtlsConfig::new(Arc::new(StaticSource::new(
            Some(svid),
            self.bundles.clone(),
        )))
    }
}

/// An HTTP/2 request over `send` that must answer 200 with `body`.
/// With the default idle timeout (1 h), a client that completes TLS and then says nothing (an
/// HTTP/2 client that never sends its preface) is closed after the header-read timeout, not
/// kept for the hour: otherwise `max_connections` such clients lock everyone out for that
/// long. A client that has spoken is not.
#[tokio::test]
async fn a_client_silent_after_its_handshake_is_closed_at_the_header_read_timeout() {
    let ca = TestCa::new("example.org");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServerLimits::new().header_read_timeout(Duration::from_millis(500));
    let server = Server::new(identity(&ca, "/ns/default/sa/greeter")).limits(limits);
    tokio::spawn(server.serve(listener, tower::service_fn(hello)));

    let quiet = tls_silent(
        addr,
        tls_client(identity(&ca, "/ns/default/sa/quiet"), b"h2"),
    )
    .await
    .unwrap();
    // A client that spoke and then idles (an HTTP/2 connection kept for later calls) stays.
    let tls = tls_silent(
        addr,
        tls_client(identity(&ca, "/ns/default/sa/idle"), b"h2"),
    )
    .await
    .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let mut conn = tokio::spawn(conn);
    get_ok(&mut send, "hello").await;

    assert!(
        closed_within(quiet, Duration::from_secs(5)).await,
        "a client silent after its handshake was kept open"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut conn)
            .await
            .is_err(),
        "a client that spoke was closed"
    );
    get_ok(&mut send, "hello").await;
}

async fn get_ok(send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>, body: &str) {
    let req = http::Request::get("http://greeter/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), body);
}

#[tokio::test]
async fn a_connection_closes_when_the_client_certificate_expires() {
    let ca = ShortCa::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let far = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let server = Server::new(ca.mtls(ca.svid("/ns/default/sa/greeter", far)));
    tokio::spawn(server.serve(listener, tower::service_fn(hello)));

    // X.509 times are whole seconds: the client's SVID expires 3 to 4 s from now.
    let not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let client = ca.mtls(ca.svid("/ns/default/sa/short-lived", not_after));
    let tls = tls_silent(addr, tls_client(client, b"h2")).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let mut conn = tokio::spawn(conn);
    get_ok(&mut send, "hello").await;

    // Still open shortly before expiry...
    let before_expiry = Duration::from_secs(2);
    assert!(
        tokio::time::timeout(before_expiry, &mut conn)
            .await
            .is_err(),
        "closed before the certificate expired"
    );
    // ...and closed by the server (GOAWAY; it was idle, so at once) soon after.
    let closed = tokio::time::timeout(Duration::from_secs(5), &mut conn).await;
    assert!(
        closed.is_ok(),
        "the connection outlived the client's certificate"
    );
}

/// A service whose requests wait for `release` (after saying so on `entered`).
fn gated(
    entered: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let (entered, release) = (entered.clone(), release.clone());
        async move {
            let _ = entered.send(());
            release.notified().await;
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("done"))))
        }
    })
}

/// An h2c connection to `addr`: its sender and its connection task.
async fn h2c(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

#[tokio::test]
async fn max_connection_age_lets_the_request_in_flight_finish_then_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let age = Duration::from_millis(500);
    let limits = ServerLimits::new()
        .max_connection_age(Some(age))
        .drain_grace(Duration::from_secs(30));
    tokio::spawn(
        Server::plaintext()
            .limits(limits)
            .serve(listener, gated(entered_tx, release.clone())),
    );

    let (send, mut conn) = h2c(addr).await;
    let mut held = send.clone();
    let call = tokio::spawn(async move { get_ok(&mut held, "done").await });
    entered.recv().await.unwrap();
    // Past its age the connection stays up while the request is in flight...
    assert!(
        tokio::time::timeout(age * 3, &mut conn).await.is_err(),
        "the connection was cut under a request in flight"
    );
    // ...which then finishes, and the connection closes.
    release.notify_one();
    call.await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut conn)
        .await
        .expect("the connection outlived its maximum age")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_drain_grace_bounds_a_request_that_never_finishes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let limits = ServerLimits::new()
        .max_connection_age(Some(Duration::from_millis(300)))
        .drain_grace(Duration::from_millis(300));
    tokio::spawn(
        Server::plaintext()
            .limits(limits)
            .serve(listener, gated(entered_tx, Arc::new(Notify::new()))),
    );

    let (mut send, mut conn) = h2c(addr).await;
    let req = http::Request::get("http://greeter/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let call = tokio::spawn(async move { send.send_request(req).await });
    entered.recv().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut conn)
        .await
        .expect("a request that never finishes kept the connection past age + grace")
        .unwrap()
        .ok();
    assert!(call.await.unwrap().is_err(), "the cut request must fail");
}
