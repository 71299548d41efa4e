//! Connecting to one endpoint of a cluster: TCP, then SPIFFE mTLS when the cluster's
//! `UpstreamTlsContext` asks for it. The adapters' connection code (tonic's, hyper's) is
//! built on [`Dialer`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::identity::{
    Authorizer, CertificateProviders, IdentityError, MtlsConfig, PeerIdentity, VerifyError,
};
use crate::xds::resource::Cluster;

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
    /// The cluster asks for TLS and the client has no identity ([`UpstreamIdentity::None`]).
    #[error("cluster {cluster} requires TLS and no mTLS identity is configured")]
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

/// Where a client's connections get their identity for clusters that ask for TLS.
#[derive(Debug, Clone, Default)]
pub enum UpstreamIdentity {
    /// None: such clusters fail to connect with [`ConnectError::NoIdentity`].
    #[default]
    None,
    /// The same identity for every cluster (its authorizer replaced by each cluster's SAN
    /// matchers).
    Fixed(MtlsConfig),
    /// The certificate provider instances each cluster's `UpstreamTlsContext` names
    /// (gRFC A29).
    Providers(Arc<CertificateProviders>),
}

impl UpstreamIdentity {
    /// A client's identity from its options: one fixed identity, when given, wins over the
    /// certificate provider instances; neither means none.
    pub fn choose(
        fixed: Option<&MtlsConfig>,
        providers: Option<&Arc<CertificateProviders>>,
    ) -> Self {
        match (fixed, providers) {
            (Some(mtls), _) => UpstreamIdentity::Fixed(mtls.clone()),
            (None, Some(providers)) => UpstreamIdentity::Providers(providers.clone()),
            (None, None) => UpstreamIdentity::None,
        }
    }

    /// The identity for `cluster`; `Ok(None)` when the cluster asks for no TLS or there is
    /// no identity.
    fn for_cluster(&self, cluster: &Cluster) -> Result<Option<MtlsConfig>, IdentityError> {
        match (self, &cluster.tls) {
            (UpstreamIdentity::None, _) | (_, None) => Ok(None),
            (UpstreamIdentity::Fixed(mtls), Some(_)) => Ok(Some(mtls.clone())),
            (UpstreamIdentity::Providers(providers), Some(upstream)) => {
                Ok(Some(MtlsConfig::new(providers.for_upstream(upstream)?)))
            }
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

/// Dials one endpoint of a cluster: TCP (no Nagle), then, when the cluster has an
/// `UpstreamTlsContext`, a TLS handshake that presents our SVID and accepts the server only
/// if its SVID verifies against our roots and matches one of the cluster's SAN matchers
/// (gRFC A29). The whole dial is bounded by the cluster's `connect_timeout`.
///
/// The TLS configuration is built once per dialer; its certificate resolver and verifier
/// read the identity source on every handshake, so rotation needs no rebuild. A cluster
/// that asks for TLS with no usable identity gives a dialer whose every dial fails with
/// that reason.
#[derive(Clone)]
pub struct Dialer {
    address: SocketAddr,
    timeout: Duration,
    tls: Tls,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tls = match &self.tls {
            Tls::Off => "off",
            Tls::On(_) => "on",
            Tls::Broken(_) => "broken",
        };
        f.debug_struct("Dialer")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .field("tls", &tls)
            .finish()
    }
}

impl Dialer {
    /// A dialer for `address`, an endpoint of `cluster`, offering the ALPN protocols `alpn`
    /// over TLS (e.g. `h2`).
    pub fn new(
        cluster: &Cluster,
        address: SocketAddr,
        identity: &UpstreamIdentity,
        alpn: Vec<Vec<u8>>,
    ) -> Self {
        let tls = match (&cluster.tls, identity.for_cluster(cluster)) {
            (None, _) => Tls::Off,
            (Some(_), Err(e)) => Tls::Broken(Broken::Config(cluster.name.clone(), Arc::new(e))),
            (Some(_), Ok(None)) => Tls::Broken(Broken::NoIdentity(cluster.name.clone())),
            (Some(upstream), Ok(Some(mtls))) => match mtls
                .authorizer(Authorizer::SanMatchers(upstream.san_matchers.clone()))
                .alpn_protocols(alpn)
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

    /// The endpoint's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connects, within the cluster's connect timeout.
    pub async fn dial(&self) -> Result<UpstreamStream, ConnectError> {
        let (address, timeout) = (self.address, self.timeout);
        match tokio::time::timeout(timeout, self.dial_unbounded()).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout { address, timeout }),
        }
    }

    async fn dial_unbounded(&self) -> Result<UpstreamStream, ConnectError> {
        let address = self.address;
        if let Tls::Broken(b) = &self.tls {
            return Err(b.error());
        }
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|source| ConnectError::Tcp { address, source })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Tls::Off => Ok(UpstreamStream::Plain(tcp)),
            Tls::Broken(b) => Err(b.error()),
            Tls::On(connector) => {
                // The server is identified by its SVID, not by a DNS name.
                let name = ServerName::IpAddress(address.ip().into());
                match connector.connect(name, tcp).await {
                    Ok(s) => Ok(UpstreamStream::Tls(Box::new(s))),
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

/// A connection made by a [`Dialer`]: TCP, or TLS over TCP.
#[derive(Debug)]
pub enum UpstreamStream {
    /// Plaintext.
    Plain(TcpStream),
    /// SPIFFE mTLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// The ALPN protocol the TLS handshake agreed on (`None` on plaintext or without ALPN).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            UpstreamStream::Plain(_) => None,
            UpstreamStream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }

    /// The server's verified SPIFFE identity (`None` on plaintext).
    pub fn peer_identity(&self) -> Option<PeerIdentity> {
        match self {
            UpstreamStream::Plain(_) => None,
            UpstreamStream::Tls(s) => PeerIdentity::from_client_stream(s),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    // Forwarded so h2 can hand a frame's header and payload to one write (one TLS record
    // batch, one syscall); the default would write only the first buffer each time.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
