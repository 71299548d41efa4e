//! Endpoint connections: one pooled hyper client per endpoint, over TCP, with SPIFFE mTLS
//! when the cluster asks for TLS, speaking HTTP/2 or HTTP/1.1 (see [`Protocol`]).
//!
//! Everything the outbound stack needs from this module is [`Endpoint::new`], called by the
//! stack's `Connect` seam; the rest is private to keep the seam easy to adapt.

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
use meshwork_core::identity::{
    Authorizer, CertificateProviders, IdentityError, MtlsConfig, VerifyError,
};
use meshwork_core::retry::RetryBody;
use meshwork_core::xds::resource::Cluster;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::BoxError;

use crate::Body;

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
    /// The cluster asks for TLS and the client has no identity
    /// ([`MeshClientOptions::mtls`](crate::MeshClientOptions::mtls),
    /// [`MeshClientOptions::certificate_providers`](crate::MeshClientOptions::certificate_providers)).
    #[error("cluster {cluster} requires TLS and the client has no mTLS identity")]
    NoIdentity {
        /// The cluster's name.
        cluster: String,
    },
    /// The cluster's TLS identity could not be set up: a certificate provider instance the
    /// cluster names is unknown, unsupported or unreadable, or rustls refused the
    /// configuration.
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

/// The HTTP version spoken to a cluster's endpoints.
///
/// Over TLS the server chooses by ALPN among what we offer: `h2` and `http/1.1`, or only
/// `h2` when the cluster asks for HTTP/2. In plaintext there is no negotiation: HTTP/1.1,
/// unless the cluster asks for HTTP/2 (then HTTP/2 with prior knowledge, "h2c").
///
/// A cluster asks for HTTP/2 when its CDS resource sets `http2_protocol_options`, or when
/// the client is told to ([`MeshClientOptions::http2_prior_knowledge`](crate::MeshClientOptions::http2_prior_knowledge)).
/// `typed_extension_protocol_options` (Envoy's newer `HttpProtocolOptions`) is not decoded
/// by meshwork-xds yet, so it does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 in plaintext; ALPN `h2`, `http/1.1` over TLS.
    Negotiate,
    /// HTTP/2 only.
    Http2,
}

impl Protocol {
    pub(crate) fn for_cluster(cluster: &Cluster, http2_prior_knowledge: bool) -> Self {
        // meshwork-xds lists `http2_protocol_options` among the cluster's set-but-unused
        // fields; for an HTTP client it is the cluster saying "speak HTTP/2".
        let cluster_says_h2 = cluster
            .unsupported_fields
            .iter()
            .any(|f| f == "http2_protocol_options");
        if cluster_says_h2 || http2_prior_knowledge {
            Protocol::Http2
        } else {
            Protocol::Negotiate
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Negotiate => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocol::Http2 => vec![b"h2".to_vec()],
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

/// Where endpoints get the identity for clusters that ask for TLS.
#[derive(Debug, Clone)]
pub(crate) enum ClusterIdentity {
    /// None: such clusters fail to connect with [`ConnectError::NoIdentity`].
    None,
    /// The same identity for every cluster (its authorizer replaced by the cluster's SAN
    /// matchers).
    Fixed(MtlsConfig),
    /// The certificate provider instances each cluster's `UpstreamTlsContext` names (A29).
    Providers(Arc<CertificateProviders>),
}

impl ClusterIdentity {
    /// The identity for `cluster`, which asks for TLS; `Ok(None)` when there is none.
    fn for_cluster(&self, cluster: &Cluster) -> Result<Option<MtlsConfig>, IdentityError> {
        match (self, &cluster.tls) {
            (ClusterIdentity::None, _) | (_, None) => Ok(None),
            (ClusterIdentity::Fixed(mtls), Some(_)) => Ok(Some(mtls.clone())),
            (ClusterIdentity::Providers(providers), Some(upstream)) => {
                Ok(Some(MtlsConfig::new(providers.for_upstream(upstream)?)))
            }
        }
    }
}

/// Dials one endpoint, whatever URI hyper asks for.
#[derive(Clone)]
struct Dialer {
    address: SocketAddr,
    timeout: Duration,
    tls: Tls,
}

impl Dialer {
    fn new(
        cluster: &Cluster,
        address: SocketAddr,
        identity: &ClusterIdentity,
        protocol: Protocol,
    ) -> Self {
        let tls = match (&cluster.tls, identity.for_cluster(cluster)) {
            (None, _) => Tls::Off,
            (Some(_), Err(e)) => Tls::Broken(Broken::Config(cluster.name.clone(), Arc::new(e))),
            (Some(_), Ok(None)) => Tls::Broken(Broken::NoIdentity(cluster.name.clone())),
            (Some(upstream), Ok(Some(mtls))) => match mtls
                .authorizer(Authorizer::SanMatchers(upstream.san_matchers.clone()))
                .alpn_protocols(protocol.alpn())
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
                // The server is identified by its SVID, not by a DNS name.
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
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        }
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

/// One endpoint: a pooled hyper client whose connections all go to the endpoint's address.
/// Clones share the pool, so the endpoint can be a cloneable handle if the stack wants one.
#[derive(Clone)]
pub(crate) struct Endpoint {
    client: Client<Dialer, RetryBody<Body>>,
}

impl Endpoint {
    pub(crate) fn new(
        cluster: &Cluster,
        address: SocketAddr,
        identity: &ClusterIdentity,
        http2_prior_knowledge: bool,
    ) -> Self {
        let protocol = Protocol::for_cluster(cluster, http2_prior_knowledge);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(protocol == Protocol::Http2)
            .build(Dialer::new(cluster, address, identity, protocol));
        Self { client }
    }
}

impl tower::Service<http::Request<RetryBody<Body>>> for Endpoint {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<RetryBody<Body>>) -> Self::Future {
        // The URI is absolute (`MeshClient` makes it so): hyper pools by its authority, sends
        // it as `Host` / `:authority`, and the dialer ignores it.
        let fut = self.client.request(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
