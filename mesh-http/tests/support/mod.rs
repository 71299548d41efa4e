//! Loopback backends, SVIDs and xDS snapshots shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterPb;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::config::ClusterState;
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{MtlsConfig, StaticSource};
use meshwork_http::{Error, MeshClient};
use meshwork_test_support::{certs, cluster};
use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::client::XdsClient;
use meshwork_xds::resource::Cluster;
use meshwork_xds::server::{XdsTestServer, build};
use tokio::net::TcpListener;

pub const TRUST_DOMAIN: &str = "example.org";

/// An mTLS identity `spiffe://example.org{path}` minted by `ca`.
pub fn identity(ca: &TestCa, path: &str) -> MtlsConfig {
    MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid(path)),
        ca.bundles(),
    )))
}

/// The HTTP versions a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 only (ALPN `http/1.1` over TLS).
    H1,
    /// HTTP/2 only (ALPN `h2` over TLS; prior knowledge in plaintext).
    H2,
    /// Over TLS, either, by ALPN (`h2` preferred); HTTP/1.1 in plaintext.
    Both,
}

/// A backend's behaviour.
#[derive(Clone)]
pub struct Backend {
    pub id: &'static str,
    pub proto: Proto,
    pub tls: Option<MtlsConfig>,
    /// Fail every other request with 503 (the first one fails).
    pub flaky: bool,
    /// Never answer.
    pub hang: bool,
}

impl Backend {
    pub fn new(id: &'static str, proto: Proto) -> Self {
        Self {
            id,
            proto,
            tls: None,
            flaky: false,
            hang: false,
        }
    }

    pub fn tls(mut self, mtls: MtlsConfig) -> Self {
        self.tls = Some(mtls);
        self
    }

    pub fn flaky(mut self) -> Self {
        self.flaky = true;
        self
    }

    pub fn hang(mut self) -> Self {
        self.hang = true;
        self
    }

    /// Serves on 127.0.0.1:0; answers `{id}:{version}` (`A:HTTP/1.1`) and counts requests.
    pub async fn start(self) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let tls = self.tls.clone().map(|m| {
            let alpn = match self.proto {
                Proto::H1 => vec![b"http/1.1".to_vec()],
                Proto::H2 => vec![b"h2".to_vec()],
                Proto::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            };
            tokio_rustls::TlsAcceptor::from(Arc::new(
                m.alpn_protocols(alpn).server_config().unwrap(),
            ))
        });
        let counter = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (id, proto, flaky, hang, tls, seen) = (
                    self.id,
                    self.proto,
                    self.flaky,
                    self.hang,
                    tls.clone(),
                    counter.clone(),
                );
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        let n = seen.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = if flaky && n % 2 == 0 {
                            (503, format!("{id}:flake"))
                        } else {
                            (200, format!("{id}:{:?}", req.version()))
                        };
                        let mut rsp = http::Response::new(Full::new(Bytes::from(body)));
                        *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        async move {
                            if hang {
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, Infallible>(rsp)
                        }
                    });
                    match tls {
                        None => serve(proto, TokioIo::new(tcp), svc).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                let proto = match s.get_ref().1.alpn_protocol() {
                                    Some(b"h2") => Proto::H2,
                                    _ => Proto::H1,
                                };
                                serve(proto, TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        (addr, seen)
    }
}

async fn serve<I, S>(proto: Proto, io: I, svc: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = match proto {
        Proto::H1 | Proto::Both => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
        }
        Proto::H2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await
        }
    };
}

/// The body of a successful response, or the error's status.
pub async fn body(client: &MeshClient, uri: &str) -> Result<String, Error> {
    let rsp = client.get(uri).await?;
    let status = rsp.status();
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert_eq!(status, 200, "{uri}: {text}");
    Ok(text)
}

/// An xDS client of `server` whose does-not-exist timer is short.
pub fn xds_client(server: &XdsTestServer, template: Option<&str>) -> XdsClient {
    let mut bootstrap = Bootstrap::builder()
        .node_id("meshwork-http-test")
        .server(XdsServer::new(server.uri()).unwrap());
    if let Some(t) = template {
        bootstrap = bootstrap.client_default_listener_resource_name_template(t);
    }
    XdsClient::builder(&bootstrap.build().unwrap())
        .unwrap()
        .does_not_exist_timeout(Duration::from_millis(500))
        .start()
}

/// An EDS cluster whose endpoints require mTLS, accepting only the server SVID `san`; the
/// identity comes from the bootstrap's certificate provider instance `default`, or the
/// client's fixed identity.
pub fn tls_cluster(name: &str, san: &str) -> ClusterPb {
    build::with_upstream_tls(build::eds_cluster(name), "default", &[san])
}

/// A directory with the SVID `path`'s certificate, key and the CA's root, as Istio's agent
/// writes them, and the bootstrap JSON fragment of a `default` file_watcher over it.
pub fn cert_dir(ca: &TestCa, path: &str) -> (std::path::PathBuf, String) {
    let dir = certs::istio_dir(ca, path);
    let providers = certs::file_watcher_providers(&dir);
    (dir, providers)
}

/// A plaintext EDS cluster that asks for HTTP/2 by the deprecated `http2_protocol_options`
/// (control planes still send it; `build::with_http_protocol` writes the current form).
#[allow(deprecated)]
pub fn h2c_cluster(name: &str) -> ClusterPb {
    let mut c = build::eds_cluster(name);
    c.http2_protocol_options = Some(Default::default());
    c
}

/// A hand-written EDS cluster with `addrs`, round robin; with `san`, its endpoints require
/// mTLS and must present that SPIFFE ID.
pub fn static_cluster(name: &str, addrs: &[SocketAddr], san: Option<&str>) -> ClusterState {
    let cluster = Cluster {
        tls: san.map(|san| cluster::upstream_tls(&[san])),
        ..Cluster::eds(name)
    };
    cluster::ready(Arc::new(cluster), addrs)
}
