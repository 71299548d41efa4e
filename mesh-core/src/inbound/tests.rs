use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer as _, ServiceExt as _};

use super::*;
use crate::identity::testing::{Flaw, TestCa};
use crate::identity::{MtlsConfig, PeerIdentity, StaticSource, Svid};

fn peer(id: &str) -> PeerIdentity {
    PeerIdentity::new(id.parse().unwrap())
}

fn grpc_request(path: &str) -> http::Request<()> {
    http::Request::post(path)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

fn attrs<'a>(req: &'a http::Request<()>, peer: Option<&'a PeerIdentity>) -> RequestAttributes<'a> {
    RequestAttributes::of(req, peer)
}

#[test]
fn deny_rules_win_then_allow_rules_then_default_deny() {
    let policy = AuthorizationPolicy::new()
        .allow(
            Rule::any()
                .principal(Principal::TrustDomain("example.org".parse().unwrap()))
                .operation(Operation::grpc_service("helloworld.Greeter")),
        )
        .deny(Rule::any().principal(Principal::Id(
            "spiffe://example.org/intruder".parse().unwrap(),
        )));
    let greet = grpc_request("/helloworld.Greeter/SayHello");
    let other = grpc_request("/admin.Admin/Shutdown");
    let friend = peer("spiffe://example.org/client");
    let intruder = peer("spiffe://example.org/intruder");
    let stranger = peer("spiffe://elsewhere.org/client");

    assert_eq!(
        policy.decide(&attrs(&greet, Some(&friend))),
        Decision::Allow(0)
    );
    assert_eq!(
        policy.decide(&attrs(&greet, Some(&intruder))),
        Decision::Deny(DenyReason::DenyRule(0))
    );
    assert_eq!(
        policy.decide(&attrs(&greet, Some(&stranger))),
        Decision::Deny(DenyReason::NotAllowed)
    );
    assert_eq!(
        policy.decide(&attrs(&other, Some(&friend))),
        Decision::Deny(DenyReason::NotAllowed)
    );
    assert_eq!(
        policy.decide(&attrs(&greet, None)),
        Decision::Deny(DenyReason::NotAllowed)
    );
}

#[test]
fn an_empty_policy_denies_everything_and_rule_any_allows_everything() {
    let req = grpc_request("/a.B/C");
    let id = peer("spiffe://example.org/x");
    assert_eq!(
        AuthorizationPolicy::new().decide(&attrs(&req, Some(&id))),
        Decision::Deny(DenyReason::NotAllowed)
    );
    let open = AuthorizationPolicy::new().allow(Rule::any());
    assert_eq!(open.decide(&attrs(&req, None)), Decision::Allow(0));
}

#[test]
fn principals_cover_authenticated_and_plaintext_callers() {
    let req = http::Request::get("/health").body(()).unwrap();
    let id = peer("spiffe://example.org/x");
    let authenticated =
        AuthorizationPolicy::new().allow(Rule::any().principal(Principal::Authenticated));
    assert_eq!(
        authenticated.decide(&attrs(&req, Some(&id))),
        Decision::Allow(0)
    );
    assert!(matches!(
        authenticated.decide(&attrs(&req, None)),
        Decision::Deny(_)
    ));
    let plaintext =
        AuthorizationPolicy::new().allow(Rule::any().principal(Principal::Unauthenticated));
    assert_eq!(plaintext.decide(&attrs(&req, None)), Decision::Allow(0));
    assert!(matches!(
        plaintext.decide(&attrs(&req, Some(&id))),
        Decision::Deny(_)
    ));
}

#[test]
fn grpc_methods_are_parsed_only_from_grpc_requests() {
    let method = Operation::grpc_method("helloworld.Greeter", "SayHello");
    let policy = AuthorizationPolicy::new().allow(Rule::any().operation(method));
    let ok = grpc_request("/helloworld.Greeter/SayHello");
    assert_eq!(policy.decide(&attrs(&ok, None)), Decision::Allow(0));
    for path in [
        "/helloworld.Greeter/SayHelloAgain",
        "/helloworld.Greeter/SayHello/extra",
        "/helloworld.Greeter/",
        "//SayHello",
    ] {
        let req = grpc_request(path);
        assert!(
            matches!(policy.decide(&attrs(&req, None)), Decision::Deny(_)),
            "{path}"
        );
    }
    // The same path without a gRPC content type is not a gRPC call.
    let plain = http::Request::post("/helloworld.Greeter/SayHello")
        .body(())
        .unwrap();
    assert!(matches!(
        policy.decide(&attrs(&plain, None)),
        Decision::Deny(_)
    ));
    for (ct, grpc) in [
        ("application/grpc", true),
        ("application/grpc+proto", true),
        ("application/grpc;charset=utf-8", true),
        ("application/grpc-web", false),
        ("application/json", false),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", ct.parse().unwrap());
        assert_eq!(policy::is_grpc(&headers), grpc, "{ct}");
    }
}

#[test]
fn http_operations_match_paths_and_methods() {
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any().operation(Operation::path_prefix("/public/")))
        .allow(
            Rule::any()
                .operation(Operation::Path("/status".into()))
                .operation(Operation::HttpMethod(http::Method::HEAD)),
        );
    let get = |p: &str| http::Request::get(p).body(()).unwrap();
    assert_eq!(
        policy.decide(&attrs(&get("/public/a"), None)),
        Decision::Allow(0)
    );
    assert_eq!(
        policy.decide(&attrs(&get("/status"), None)),
        Decision::Allow(1)
    );
    assert!(matches!(
        policy.decide(&attrs(&get("/status/x"), None)),
        Decision::Deny(_)
    ));
    let head = http::Request::head("/anything").body(()).unwrap();
    assert_eq!(policy.decide(&attrs(&head, None)), Decision::Allow(1));
}

/// A service answering with the caller's SPIFFE ID as seen in the extensions.
fn echo_peer() -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|req: http::Request<()>| async move {
        let who = req
            .extensions()
            .get::<PeerIdentity>()
            .map(|p| p.spiffe_id().to_string())
            .unwrap_or_default();
        Ok::<_, Infallible>(http::Response::new(who))
    })
}

fn with_connection(mut req: http::Request<()>, peer: Option<PeerIdentity>) -> http::Request<()> {
    let addr = "127.0.0.1:1".parse().unwrap();
    req.extensions_mut()
        .insert(ConnectionInfo::new(addr, addr, peer));
    req
}

#[tokio::test]
async fn the_layer_gives_handlers_the_peer_and_answers_denials_itself() {
    let policy = AuthorizationPolicy::new().allow(Rule::any().principal(Principal::Id(
        "spiffe://example.org/friend".parse().unwrap(),
    )));
    let svc = InboundLayer::new(Some(policy)).layer(echo_peer());

    let friend = peer("spiffe://example.org/friend");
    let ok = svc
        .clone()
        .oneshot(with_connection(grpc_request("/a.B/C"), Some(friend)))
        .await
        .unwrap();
    assert_eq!(ok.body(), "spiffe://example.org/friend");
    assert!(ok.extensions().get::<AuthorizationDenied>().is_none());

    let foe = peer("spiffe://example.org/foe");
    let denied = svc
        .clone()
        .oneshot(with_connection(grpc_request("/a.B/C"), Some(foe)))
        .await
        .unwrap();
    assert_eq!(denied.status(), http::StatusCode::OK);
    assert_eq!(denied.headers()["grpc-status"], "7");
    assert_eq!(denied.headers()["content-type"], "application/grpc");
    assert_eq!(denied.body(), "", "the service never ran");
    let why = denied.extensions().get::<AuthorizationDenied>().unwrap();
    assert_eq!(
        why.peer.as_ref().unwrap().to_string(),
        "spiffe://example.org/foe"
    );
    assert_eq!(why.reason, DenyReason::NotAllowed);
    assert_eq!(
        why.to_string(),
        "spiffe://example.org/foe is not allowed to call /a.B/C: no allow rule matched"
    );

    let http_denied = svc
        .clone()
        .oneshot(with_connection(
            http::Request::get("/x").body(()).unwrap(),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(http_denied.status(), http::StatusCode::FORBIDDEN);
    assert!(http_denied.headers().get("grpc-status").is_none());
}

#[tokio::test]
async fn without_a_policy_everything_passes_and_a_bare_peer_identity_is_used() {
    let svc = InboundLayer::new(None).layer(echo_peer());
    let mut req = http::Request::get("/x").body(()).unwrap();
    req.extensions_mut().insert(peer("spiffe://example.org/p"));
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.body(), "spiffe://example.org/p");
    let res = svc.oneshot(with_connection(
        http::Request::get("/x").body(()).unwrap(),
        None,
    ));
    assert_eq!(res.await.unwrap().status(), http::StatusCode::OK);
}

fn mtls(ca: &TestCa, svid: Option<Svid>) -> MtlsConfig {
    MtlsConfig::new(Arc::new(StaticSource::new(svid, ca.bundles())))
        .alpn_protocols(vec![b"h2".to_vec()])
}

async fn tls_client(
    addr: std::net::SocketAddr,
    config: &MtlsConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config.client_config().unwrap()));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

#[tokio::test]
async fn the_acceptor_yields_verified_connections_and_skips_failed_handshakes() {
    let ca = TestCa::new("example.org");
    let server = mtls(&ca, Some(ca.svid("/server")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut acceptor = MeshAcceptor::new(listener, &server).unwrap();
    let addr = acceptor.local_addr().unwrap();

    // A client with no SVID, one with an expired SVID, and one from another trust domain
    // fail their handshakes; none of them ends or blocks the stream.
    let other = TestCa::new("other.org");
    let bad_clients = [
        mtls(&ca, None),
        mtls(
            &ca,
            Some(ca.mint("/expired", Flaw::Expired).svid().unwrap()),
        ),
        mtls(&other, Some(other.svid("/client"))),
    ];
    let good = mtls(&ca, Some(ca.svid("/client")));
    let clients = async {
        for bad in &bad_clients {
            // The client may see the failure at once or on its first read.
            if let Ok(mut s) = tls_client(addr, bad).await {
                let mut buf = [0u8; 1];
                assert!(s.read(&mut buf).await.map(|n| n == 0).unwrap_or(true));
            }
        }
        let mut s = tls_client(addr, &good).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        s
    };
    let (mut accepted, _client) =
        tokio::join!(async { acceptor.next().await.unwrap().unwrap() }, clients);
    assert_eq!(
        accepted.info().peer().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/client"
    );
    assert_eq!(accepted.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(accepted.info().local_addr(), addr);
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_silent_client_neither_blocks_others_nor_stays_forever() {
    let ca = TestCa::new("example.org");
    let server = mtls(&ca, Some(ca.svid("/server")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(listener, &server)
        .unwrap()
        .handshake_timeout(Duration::from_millis(300));
    let addr = acceptor.local_addr().unwrap();
    let mut acceptor = Box::pin(acceptor);

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let good = mtls(&ca, Some(ca.svid("/client")));
    let (accepted, _client) =
        tokio::join!(async { acceptor.next().await.unwrap().unwrap() }, async {
            tls_client(addr, &good).await.unwrap()
        });
    assert!(accepted.info().peer().is_some());

    // Keep polling the acceptor (as a server does) while the silent client waits: the
    // server closes it once its handshake times out.
    let mut buf = [0u8; 1];
    let read = tokio::select! {
        r = silent.read(&mut buf) => r,
        _ = acceptor.next() => panic!("nothing else connects"),
    };
    assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
}

#[tokio::test]
async fn a_plaintext_acceptor_has_no_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut acceptor = MeshAcceptor::plaintext(listener);
    let addr = acceptor.local_addr().unwrap();
    let (accepted, _c) = tokio::join!(async { acceptor.next().await.unwrap().unwrap() }, async {
        TcpStream::connect(addr).await.unwrap()
    });
    assert!(accepted.info().peer().is_none());
    assert!(accepted.alpn_protocol().is_none());
}
