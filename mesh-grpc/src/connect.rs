//! Endpoint connections: one hyper HTTP/2 client per endpoint, over TCP, with SPIFFE mTLS
//! when the cluster asks for TLS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::identity::{Authorizer, IdentityError, MtlsConfig, VerifyError};
use meshwork_core::retry::{RefusedStream, RetryBody};
use meshwork_core::xds::resource::Cluster;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::BoxError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("connecting to {address}: {source}")]
    Tcp {
        /// The endpoint.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The cluster's `connect_timeout` elapsed (TCP and TLS together).
    #[error("connecting to {address}: no connection within {timeout:?}")]
    Timeout {
        /// The endpoint.
        address: SocketAddr,
        /// The cluster's connect timeout.
        timeout: Duration,
    },
    /// The server's SVID was rejected (untrusted, malformed, or not allowed by the
    /// cluster's SAN matchers).
    #[error("TLS to {address}: server certificate rejected: {source}")]
    PeerRejected {
        /// The endpoint.
        address: SocketAddr,
        /// Why.
        #[source]
        source: VerifyError,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS to {address}: {source}")]
    Tls {
        /// The endpoint.
        address: SocketAddr,
        /// The handshake error.
        #[source]
        source: io::Error,
    },
    /// The cluster asks for TLS and the channel has no identity
    /// ([`MeshChannelOptions::mtls`](crate::MeshChannelOptions::mtls)).
    #[error("cluster {cluster} requires TLS and the channel has no mTLS identity")]
    NoIdentity {
        /// The cluster's name.
        cluster: String,
    },
    /// The channel's mTLS configuration could not be turned into a rustls configuration.
    #[error("cluster {cluster}: TLS configuration: {source}")]
    TlsConfig {
        /// The cluster's name.
        cluster: String,
        /// Why.
        #[source]
        source: Arc<IdentityError>,
    },
}

impl ConnectError {
    /// The SPIFFE verification error, when the server's certificate was rejected.
    pub fn verify_error(&self) -> Option<&VerifyError> {
        match self {
            ConnectError::PeerRejected { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[derive(Clone)]
enum Tls {
    Off,
    On(TlsConnector),
    /// The cluster asks for TLS and we cannot do it: every dial fails with this.
    Broken(Broken),
}

#[derive(Clone)]
enum Broken {
    NoIdentity(String),
    Config(String, Arc<IdentityError>),
}

impl Broken {
    fn error(&self) -> ConnectError {
        match self {
            Broken::NoIdentity(cluster) => ConnectError::NoIdentity {
                cluster: cluster.clone(),
            },
            Broken::Config(cluster, source) => ConnectError::TlsConfig {
                cluster: cluster.clone(),
                source: source.clone(),
            },
        }
    }
}

/// Dials one endpoint, whatever URI hyper asks for.
#[derive(Clone)]
pub(crate) struct Dialer {
    address: SocketAddr,
    timeout: Duration,
    tls: Tls,
}

impl Dialer {
    pub(crate) fn new(cluster: &Cluster, address: SocketAddr, mtls: Option<&MtlsConfig>) -> Self {
        let tls = match (&cluster.tls, mtls) {
            (None, _) => Tls::Off,
            (Some(_), None) => Tls::Broken(Broken::NoIdentity(cluster.name.clone())),
            (Some(upstream), Some(mtls)) => match mtls
                .clone()
                .authorizer(Authorizer::SanMatchers(upstream.san_matchers.clone()))
                .alpn_protocols(vec![b"h2".to_vec()])
                .client_config()
            {
                Ok(config) => Tls::On(TlsConnector::from(Arc::new(config))),
                Err(e) => Tls::Broken(Broken::Config(cluster.name.clone(), Arc::new(e))),
            },
        };
        Self {
            address,
            timeout: cluster.connect_timeout,
            tls,
        }
    }

    async fn dial(self) -> Result<Stream, ConnectError> {
        let address = self.address;
        if let Tls::Broken(b) = &self.tls {
            return Err(b.error());
        }
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|source| ConnectError::Tcp { address, source })?;
        let _ = tcp.set_nodelay(true);
        match self.tls {
            Tls::Off => Ok(Stream::Plain(tcp)),
            Tls::Broken(b) => Err(b.error()),
            Tls::On(connector) => {
                let name = ServerName::IpAddress(address.ip().into());
                match connector.connect(name, tcp).await {
                    Ok(s) => Ok(Stream::Tls(Box::new(s))),
                    Err(source) => Err(match VerifyError::from_io(&source) {
                        Some(v) => ConnectError::PeerRejected {
                            address,
                            source: v.clone(),
                        },
                        None => ConnectError::Tls { address, source },
                    }),
                }
            }
        }
    }
}

impl tower::Service<Uri> for Dialer {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = BoxFuture<Result<TokioIo<Stream>, ConnectError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (address, timeout) = (this.address, this.timeout);
            match tokio::time::timeout(timeout, this.dial()).await {
                Ok(r) => r.map(TokioIo::new),
                Err(_) => Err(ConnectError::Timeout { address, timeout }),
            }
        })
    }
}

/// A TCP or TLS connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One endpoint: an HTTP/2 client whose connections all go to the endpoint's address. A
/// cheap handle: clones share the client's connection pool.
#[derive(Clone)]
pub(crate) struct Endpoint {
    address: SocketAddr,
    client: Client<Dialer, RetryBody<tonic::body::Body>>,
}

impl Endpoint {
    pub(crate) fn new(cluster: &Cluster, address: SocketAddr, mtls: Option<&MtlsConfig>) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(Dialer::new(cluster, address, mtls));
        Self { address, client }
    }
}

impl tower::Service<http::Request<RetryBody<tonic::body::Body>>> for Endpoint {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<RetryBody<tonic::body::Body>>) -> Self::Future {
        // hyper's client wants an absolute URI; the dialer ignores it and always dials this
        // endpoint. The caller's authority, when it set one, is kept for `:authority`.
        let parts = req.uri().clone().into_parts();
        let authority = parts
            .authority
            .map(|a| a.to_string())
            .unwrap_or_else(|| self.address.to_string());
        let path = parts
            .path_and_query
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into());
        match Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
        {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        }
        let fut = self.client.request(req);
        Box::pin(async move { fut.await.map_err(classify) })
    }
}

/// hyper's error, wrapped in [`RefusedStream`] when the server reset the stream with
/// `REFUSED_STREAM` (the reason is on the `h2::Error` in hyper's source chain), so that the
/// retry layer's `refused-stream` condition can see it.
fn classify(err: hyper_util::client::legacy::Error) -> BoxError {
    if refused_stream(&err) {
        Box::new(RefusedStream::new(err))
    } else {
        Box::new(err)
    }
}

fn refused_stream(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    // Source chains are short; the bound guards against a cyclic one.
    for _ in 0..16 {
        let Some(e) = cur else { return false };
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use meshwork_core::config::RetryOn;
    use meshwork_core::retry::error_conditions;
    use meshwork_core::xds::resource::{
        CircuitBreakers, ClusterKind, DEFAULT_CONNECT_TIMEOUT, LbPolicy,
    };
    use tokio::net::TcpListener;
    use tower::ServiceExt as _;

    use super::*;

    /// An HTTP/2 server that resets every stream with `reason`.
    async fn resetting_server(reason: h2::Reason) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut conn) = h2::server::handshake(tcp).await else {
                return;
            };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                respond.send_reset(reason);
            }
        });
        address
    }

    async fn call(address: SocketAddr) -> BoxError {
        let cluster = Cluster {
            name: "c".into(),
            kind: ClusterKind::Eds { service_name: None },
            lb_policy: LbPolicy::RoundRobin,
            circuit_breakers: CircuitBreakers::default(),
            outlier_detection: None,
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            unsupported_fields: Vec::new(),
        };
        let req = http::Request::post("/svc/Method")
            .body(RetryBody::passthrough(tonic::body::Body::empty()))
            .unwrap();
        Endpoint::new(&cluster, address, None)
            .oneshot(req)
            .await
            .expect_err("the stream is reset")
    }

    #[tokio::test]
    async fn a_refused_stream_is_marked_for_the_retry_layer() {
        let e = call(resetting_server(h2::Reason::REFUSED_STREAM).await).await;
        assert!(e.is::<RefusedStream>(), "{e:?}");
        assert!(error_conditions(e.as_ref()).contains(RetryOn::REFUSED_STREAM));
    }

    #[tokio::test]
    async fn another_reset_is_not_a_refused_stream() {
        let e = call(resetting_server(h2::Reason::INTERNAL_ERROR).await).await;
        assert!(!e.is::<RefusedStream>(), "{e:?}");
        assert!(!error_conditions(e.as_ref()).contains(RetryOn::REFUSED_STREAM));
    }
}
