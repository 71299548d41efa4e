//! Ring hash against real backends on loopback: SPIFFE mTLS (rustls, an rcgen test CA) and
//! HTTP/2 (hyper), a header hash policy through the router. The endpoint a key hashes to is
//! slow to connect (its server holds the TLS handshake); gRFC A42 queues the key's calls
//! while that endpoint connects, so the first call lands where the following ones do.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::balance::{BalancePolicy, Balancer, ServedBy};
use meshwork_core::config::{
    self, ClusterSpecifier, ForwardAction, PathMatch, Route, RouteAction, RouteMatch, StaticConfig,
    VirtualHost,
};
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{MtlsConfig, StaticSource};
use meshwork_core::route::Router;
use meshwork_core::xds::resource::{ClusterLoadAssignment, HashPolicy, HashPolicyKind};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower::{BoxError, Service, ServiceExt as _};

type Req = http::Request<Empty<Bytes>>;
type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Lb = Balancer<Endpoint, Empty<Bytes>>;
type MeshRouter = Router<HashMap<String, Lb>>;

/// A backend: mTLS then HTTP/2, answering 200. While `slow` is set, each new connection
/// waits for a permit of `gate` before its TLS handshake (the TCP connection is accepted).
struct Backend {
    addr: SocketAddr,
    slow: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
}

async fn backend(acceptor: TlsAcceptor) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slow = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Semaphore::new(0));
    let (s, g) = (slow.clone(), gate.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, slow, gate) = (acceptor.clone(), s.clone(), g.clone());
            tokio::spawn(async move {
                if slow.load(Ordering::SeqCst) {
                    gate.acquire().await.unwrap().forget();
                }
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hi"))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Backend { addr, slow, gate }
}

/// One endpoint as the adapters make it: TCP, the mTLS handshake and the HTTP/2 handshake
/// in `poll_ready`; connected, clones share the connection.
struct Endpoint {
    addr: SocketAddr,
    connector: TlsConnector,
    sender: Option<Sender>,
    // Only touched through `&mut self`; the mutex makes the endpoint `Sync`.
    connecting: Option<std::sync::Mutex<BoxFuture<Result<Sender, BoxError>>>>,
}

impl Clone for Endpoint {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr,
            connector: self.connector.clone(),
            sender: self.sender.clone(),
            connecting: None,
        }
    }
}

async fn connect(addr: SocketAddr, connector: TlsConnector) -> Result<Sender, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await?;
    tokio::spawn(conn);
    Ok(sender)
}

impl Service<Req> for Endpoint {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.sender.is_none() {
            let (addr, connector) = (self.addr, self.connector.clone());
            let connecting = self
                .connecting
                .get_or_insert_with(|| std::sync::Mutex::new(Box::pin(connect(addr, connector))))
                .get_mut()
                .unwrap();
            let sender = std::task::ready!(connecting.as_mut().poll(cx));
            self.connecting = None;
            self.sender = Some(sender?);
        }
        match &mut self.sender {
            Some(s) => s.poll_ready(cx).map_err(Into::into),
            None => Poll::Pending,
        }
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        *req.uri_mut() = format!("http://{}/", self.addr).parse().unwrap();
        let Some(sender) = &mut self.sender else {
            return Box::pin(async { Err("called before ready".into()) });
        };
        let fut = sender.send_request(req);
        Box::pin(async move { Ok(fut.await?) })
    }
}

struct Mesh {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

fn mesh() -> Mesh {
    let ca = TestCa::new("example.org");
    let source = |path: &str| {
        let svid = ca.svid(path);
        MtlsConfig::new(Arc::new(StaticSource::new(Some(svid), ca.bundles())))
            .alpn_protocols(vec![b"h2".to_vec()])
    };
    Mesh {
        acceptor: TlsAcceptor::from(Arc::new(source("/backend").server_config().unwrap())),
        connector: TlsConnector::from(Arc::new(source("/client").client_config().unwrap())),
    }
}

/// A router whose only route sends everything to cluster `c`, hashing the `x-user` header.
fn router(lb: Lb) -> MeshRouter {
    let route = Route {
        name: "r".into(),
        matcher: RouteMatch {
            path: PathMatch::Prefix("/".into()),
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
            runtime_fraction: None,
        },
        action: RouteAction::Forward(ForwardAction {
            clusters: ClusterSpecifier::Cluster("c".into()),
            timeout: None,
            max_stream_duration: None,
            retry_policy: None,
            hash_policies: vec![HashPolicy {
                kind: HashPolicyKind::Header {
                    name: "x-user".into(),
                    regex_rewrite: None,
                },
                terminal: false,
            }],
        }),
        filter_overrides: Default::default(),
    };
    let cfg = StaticConfig::new()
        .virtual_host(VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes: vec![route],
            retry_policy: None,
            filter_overrides: Default::default(),
        })
        .build()
        .unwrap();
    let (tx, rx) = config::channel(cfg);
    // The router follows the channel; the config never changes.
    std::mem::forget(tx);
    Router::new(rx, HashMap::from([("c".to_string(), lb)]))
}

fn ring_hash(addrs: &[SocketAddr], connector: &TlsConnector) -> (MeshRouter, Lb) {
    let cla = Arc::new(ClusterLoadAssignment::from_addresses("c", addrs));
    let (tx, rx) = watch::channel(cla);
    std::mem::forget(tx);
    let connector = connector.clone();
    let lb = Balancer::new(
        BalancePolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 4096,
        },
        rx,
        move |addr| Endpoint {
            addr,
            connector: connector.clone(),
            sender: None,
            connecting: None,
        },
    );
    (router(lb.clone()), lb)
}

fn user(name: &'static str) -> Req {
    http::Request::get("http://backend/")
        .header("x-user", name)
        .body(Empty::new())
        .unwrap()
}

async fn served_by(
    fut: impl Future<Output = Result<http::Response<Incoming>, BoxError>>,
) -> SocketAddr {
    let rsp = fut.await.unwrap();
    let by = rsp.extensions().get::<ServedBy>().unwrap().address();
    rsp.into_body().collect().await.unwrap();
    by
}

/// Waits (bounded) until `done` holds: the connections are real, so real time passes.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_key_waits_for_its_endpoint_to_connect() {
    let mesh = mesh();
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(backend(mesh.acceptor.clone()).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();

    // Where the key goes once everything is connected (the ring depends on the addresses
    // only, so another balancer over them agrees).
    let (mut probe, probe_lb) = ring_hash(&addrs, &mesh.connector);
    eventually("the probe connects", || probe_lb.ready_count() == 4).await;
    let home = served_by(probe.ready().await.unwrap().call(user("alice"))).await;
    drop((probe, probe_lb));

    // A fresh balancer whose connection to `home` is held in the TLS handshake.
    let slow = backends.iter().find(|b| b.addr == home).unwrap();
    slow.slow.store(true, Ordering::SeqCst);
    let (mut router, lb) = ring_hash(&addrs, &mesh.connector);
    eventually("the other endpoints connect", || lb.ready_count() == 3).await;
    // The pick happens in `call`: with the key's endpoint still connecting it must queue.
    let first = router.ready().await.unwrap().call(user("alice"));
    slow.gate.add_permits(1);
    assert_eq!(served_by(first).await, home, "the first call of the key");
    for i in 1..60 {
        let by = served_by(router.ready().await.unwrap().call(user("alice"))).await;
        assert_eq!(by, home, "call {i} of the key");
    }
}
