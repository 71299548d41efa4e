//! A loopback HTTP/2 backend for the adapters' upstream tests, serving whatever handler a
//! test gives it: it numbers and records its TCP connections (which connection answered a
//! call, and whether the client opened one at all) and can hold a request until the test
//! lets it go (a call in flight while the client's connection retires). Also the server
//! side's TLS, a TLS server that never speaks HTTP/2, and a jump of tokio's clock.

use std::convert::Infallible;
use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{Authorizer, MtlsConfig, StaticSource};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_rustls::rustls::ServerConfig;

/// An HTTP/2 server on 127.0.0.1:0, over TLS (h2 by ALPN) when given a configuration and by
/// prior knowledge without, whose handler gets each request with its [`Conn`].
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    arrived: mpsc::UnboundedReceiver<()>,
    release: Arc<Notify>,
}

/// The connection a request came on, as its handler sees it.
#[derive(Clone)]
pub struct Conn {
    number: usize,
    arrived: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

impl Conn {
    /// The connection's number: the server's TCP connections count from 1.
    pub fn number(&self) -> usize {
        self.number
    }

    /// Announces the request to [`Backend::held`] and returns once [`Backend::release`] is
    /// called.
    pub async fn hold(&self) {
        // Registered before the announcement, so a release right after it is not missed.
        let released = self.release.notified();
        let _ = self.arrived.send(());
        released.await;
    }
}

impl Backend {
    /// Starts serving `handler`, on TLS with `tls`.
    pub async fn start<H, F, B>(tls: Option<Arc<ServerConfig>>, handler: H) -> Self
    where
        H: Fn(Conn, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn Error + Send + Sync>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (arrived_tx, arrived) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let (seen, rel) = (peers.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let number = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(peer);
                    seen.len()
                };
                let conn = Conn {
                    number,
                    arrived: arrived_tx.clone(),
                    release: rel.clone(),
                };
                let (tls, handler) = (tls.clone(), handler.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let rsp = handler(conn.clone(), req);
                        async move { Ok::<_, Infallible>(rsp.await) }
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
        Self {
            addr,
            peers,
            arrived,
            release,
        }
    }

    /// How many TCP connections it has accepted.
    pub fn connections(&self) -> usize {
        self.peers.lock().unwrap().len()
    }

    /// The peer address of each TCP connection accepted, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// Returns once a request is held by [`Conn::hold`].
    pub async fn held(&mut self) {
        self.arrived
            .recv()
            .await
            .expect("the backend's accept loop is alive");
    }

    /// Lets a held request (or the next one to be held) answer.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

/// A server configuration presenting `source`'s SVID and accepting clients that
/// `authorizer` allows; h2 by ALPN.
pub fn server_tls(source: Arc<StaticSource>, authorizer: Authorizer) -> Arc<ServerConfig> {
    Arc::new(
        MtlsConfig::new(source)
            .authorizer(authorizer)
            .alpn_protocols(vec![b"h2".to_vec()])
            .server_config()
            .unwrap(),
    )
}

/// A fixed identity: the SVID `path` minted by `ca`, and `ca`'s bundles.
pub fn source(ca: &TestCa, path: &str) -> Arc<StaticSource> {
    Arc::new(StaticSource::new(Some(ca.svid(path)), ca.bundles()))
}

/// The client's mTLS as the SVID `/ns/default/sa/client` of `ca`.
pub fn client_mtls(ca: &TestCa) -> MtlsConfig {
    MtlsConfig::new(source(ca, "/ns/default/sa/client"))
}

/// A server on 127.0.0.1:0 that completes TLS with `config`, then reads whatever comes and
/// never says a word: no HTTP/2 SETTINGS, so a client's connect can only time out.
pub async fn silent_tls(config: Arc<ServerConfig>) -> SocketAddr {
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
    addr
}

/// Moves tokio's clock forward by `by` (the runtime's timers fire), then lets it run on.
pub async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}
