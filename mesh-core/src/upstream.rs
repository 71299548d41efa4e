//! Connecting to one endpoint of a cluster: TCP, then SPIFFE mTLS when the cluster's
//! `UpstreamTlsContext` asks for it, under the application's [`UpstreamPolicy`]. The
//! adapters' connection code (tonic's, hyper's) is built on [`Dialer`]; an HTTP/2
//! connection counts as made only once [`ServerPreface`] saw the server's first bytes.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::identity::{
    Authorizer, CertificateProviders, IdentityError, MtlsConfig, PeerIdentity, VerifyError,
};
use crate::xds::resource::Cluster;

/// A connection reached the time to retire it ([`Dialer::retire_at`]): its maximum age or
/// the expiry of the server's certificate. A handle that reports it is replaced by a new
/// connection; calls in flight on the old one finish.
#[derive(Debug, Clone, thiserror::Error)]
#[error("connection to {address} retired (maximum age or server certificate expiry)")]
pub struct ConnectionRetired {
    address: SocketAddr,
}

impl ConnectionRetired {
    /// The connection to `address` is retired.
    pub fn new(address: SocketAddr) -> Self {
        Self { address }
    }

    /// The endpoint.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

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
    /// The cluster's `connect_timeout` elapsed (TCP, TLS and, for HTTP/2, the server's
    /// preface together).
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
    /// The cluster asks for no TLS and the client's [`UpstreamPolicy`] requires mTLS: no
    /// connection is opened.
    #[error("cluster {cluster} has no UpstreamTlsContext and this client requires mTLS")]
    PlaintextRefused {
        /// The cluster's name.
        cluster: String,
    },
    /// The connection failed or closed before the server's first bytes (its HTTP/2
    /// preface) arrived. Over TLS 1.3 this is where a server that refuses our certificate
    /// says so: its alert arrives after our side of the handshake finished, and the
    /// source is the TLS error naming it (e.g. `received fatal alert: CertificateUnknown`).
    #[error("connecting to {address}: error reading the server's preface: {source}")]
    Preface {
        /// The endpoint.
        address: SocketAddr,
        /// The read error, or `UnexpectedEof` when the server closed the connection.
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

/// The application's floor under the upstream security the control plane configures.
///
/// xDS decides per cluster whether connections use TLS (an `UpstreamTlsContext`) and which
/// server SANs they accept (its SAN matchers, where an empty list accepts any peer our
/// roots trust, gRFC A29). A compromised or mistaken control plane can thus send a cluster
/// in plaintext or widen who may answer. This policy is set in code and xDS cannot loosen
/// it:
///
/// - [`require_mtls`](Self::require_mtls): a cluster without an `UpstreamTlsContext` is
///   refused with [`ConnectError::PlaintextRefused`] before any socket is opened;
/// - [`pin`](Self::pin): every upstream server must also satisfy this authorizer, in
///   addition to the cluster's SAN matchers (both must allow the peer).
///
/// The default is neither, which is gRFC A29's behaviour (the control plane alone
/// decides), as in grpc-go.
///
/// ```
/// use meshwork_core::identity::Authorizer;
/// use meshwork_core::upstream::UpstreamPolicy;
///
/// let policy = UpstreamPolicy::new()
///     .require_mtls(true)
///     .pin(Authorizer::MemberOf("example.org".parse().unwrap()));
/// assert!(policy.requires_mtls());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamPolicy {
    require_mtls: bool,
    pinned: Option<Authorizer>,
    max_connection_age: Option<Duration>,
}

impl UpstreamPolicy {
    /// No floor: the control plane decides (gRFC A29).
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses clusters that the control plane sends without TLS (default false).
    pub fn require_mtls(mut self, required: bool) -> Self {
        self.require_mtls = required;
        self
    }

    /// Every upstream server must satisfy `authorizer` as well as the cluster's SAN
    /// matchers (default: none, the SAN matchers alone decide).
    pub fn pin(mut self, authorizer: Authorizer) -> Self {
        self.pinned = Some(authorizer);
        self
    }

    /// Retires each upstream connection this long after it was made (default: never):
    /// new calls go to a new connection, calls in flight finish on the old one. Envoy's
    /// `max_connection_duration` in a cluster's `common_http_protocol_options` is the
    /// anchor. Whatever this says, a TLS connection is also retired when the server's
    /// certificate expires. A connection that served under a second before it retired
    /// counts as a failed one for the balancer's reconnect backoff, so ages under a second
    /// slow reconnection down.
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.max_connection_age = Some(age);
        self
    }

    /// The maximum connection age, if any.
    pub fn connection_age_limit(&self) -> Option<Duration> {
        self.max_connection_age
    }

    /// Whether clusters without TLS are refused.
    pub fn requires_mtls(&self) -> bool {
        self.require_mtls
    }

    /// The pinned authorizer, if any.
    pub fn pinned(&self) -> Option<&Authorizer> {
        self.pinned.as_ref()
    }

    /// The authorizer for a cluster whose SAN matchers are `sans`: the pinned authorizer
    /// (checked first, so a rejection names it) and the SAN matchers.
    fn authorizer(&self, sans: Authorizer) -> Authorizer {
        match &self.pinned {
            Some(pinned) => Authorizer::AllOf(vec![pinned.clone(), sans]),
            None => sans,
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
    Plaintext(String),
    NoIdentity(String),
    Config(String, Arc<IdentityError>),
}

impl Broken {
    fn error(&self) -> ConnectError {
        match self {
            Broken::Plaintext(cluster) => ConnectError::PlaintextRefused {
                cluster: cluster.clone(),
            },
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
    max_age: Option<Duration>,
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
            .field("max_age", &self.max_age)
            .field("tls", &tls)
            .finish()
    }
}

impl Dialer {
    /// A dialer for `address`, an endpoint of `cluster`, offering the ALPN protocols `alpn`
    /// over TLS (e.g. `h2`), with no [`UpstreamPolicy`] floor.
    pub fn new(
        cluster: &Cluster,
        address: SocketAddr,
        identity: &UpstreamIdentity,
        alpn: Vec<Vec<u8>>,
    ) -> Self {
        Self::with_policy(cluster, address, identity, &UpstreamPolicy::default(), alpn)
    }

    /// [`Dialer::new`] under the application's `policy`: a plaintext cluster gives a dialer
    /// whose every dial fails with [`ConnectError::PlaintextRefused`] when the policy
    /// requires mTLS, and the server must satisfy the policy's pinned authorizer as well as
    /// the cluster's SAN matchers.
    pub fn with_policy(
        cluster: &Cluster,
        address: SocketAddr,
        identity: &UpstreamIdentity,
        policy: &UpstreamPolicy,
        alpn: Vec<Vec<u8>>,
    ) -> Self {
        let tls = match (&cluster.tls, identity.for_cluster(cluster)) {
            (None, _) if policy.require_mtls => {
                Tls::Broken(Broken::Plaintext(cluster.name.clone()))
            }
            (None, _) => Tls::Off,
            (Some(_), Err(e)) => Tls::Broken(Broken::Config(cluster.name.clone(), Arc::new(e))),
            (Some(_), Ok(None)) => Tls::Broken(Broken::NoIdentity(cluster.name.clone())),
            (Some(upstream), Ok(Some(mtls))) => match mtls
                .authorizer(
                    policy.authorizer(Authorizer::SanMatchers(upstream.san_matchers.clone())),
                )
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
            max_age: policy.max_connection_age,
            tls,
        }
    }

    /// The endpoint's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The cluster's connect timeout, which bounds [`dial`](Self::dial) and should bound
    /// the wait for the server's preface too.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When `stream`, just dialled, should be retired: the earlier of the policy's maximum
    /// connection age from now and the expiry of the server's certificate (`None`: never).
    pub fn retire_at(&self, stream: &UpstreamStream) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let by_age = self.max_age.map(|age| now + age);
        let by_cert = stream.peer_not_after().map(|not_after| {
            // Already expired (clock skew): retire at once.
            now + not_after
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        match (by_age, by_cert) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
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

    /// When the server's certificate (the leaf it presented) expires: past then the
    /// connection rests on an expired identity and should be retired (`None` on plaintext).
    pub fn peer_not_after(&self) -> Option<SystemTime> {
        match self {
            UpstreamStream::Plain(_) => None,
            UpstreamStream::Tls(s) => {
                let leaf = s.get_ref().1.peer_certificates()?.first()?;
                crate::identity::leaf_not_after(leaf)
            }
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

/// Waits for the server's first bytes on a new connection: gRPC counts a connection as
/// ready only once the server's HTTP/2 SETTINGS arrive (grpc-go reads the server preface
/// before the transport is handed out), and so do we.
///
/// Over TLS 1.3 the client's side of the handshake ends before the server has checked our
/// certificate; a server that refuses it answers with an alert, which only a read sees.
/// Without this wait the connection looks made, calls are put on it and fail, and every
/// reconnect waits out the backoff; with it the dial fails ([`ConnectError::Preface`]) and
/// calls fail at once with the TLS error.
///
/// [`ServerPreface::watch`] wraps the stream handed to the HTTP/2 client, which writes its
/// own preface first (a server may wait for it); the first read's outcome is reported to
/// [`ServerPreface::wait`]. Bound the wait by the connect timeout. HTTP/1.1 has no server
/// preface (the server speaks only to answer), so its connections need no such wait.
#[derive(Debug)]
pub struct ServerPreface {
    address: SocketAddr,
    first: oneshot::Receiver<io::Result<()>>,
}

impl ServerPreface {
    /// Wraps `io`, a connection to `address`.
    pub fn watch<IO>(address: SocketAddr, io: IO) -> (PrefaceWatch<IO>, ServerPreface) {
        let (tx, first) = oneshot::channel();
        (
            PrefaceWatch {
                io,
                first: Some(tx),
            },
            ServerPreface { address, first },
        )
    }

    /// Resolves once the server's first bytes were read; fails when the read failed or
    /// found the connection closed (or the connection was dropped unread).
    pub async fn wait(self) -> Result<(), ConnectError> {
        let address = self.address;
        match self.first.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ConnectError::Preface { address, source }),
            Err(_) => Err(ConnectError::Preface {
                address,
                source: closed_before_preface(),
            }),
        }
    }
}

fn closed_before_preface() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed before the server's preface",
    )
}

/// A connection whose first read is reported to a [`ServerPreface`]; otherwise `IO` itself.
#[derive(Debug)]
pub struct PrefaceWatch<IO> {
    io: IO,
    first: Option<oneshot::Sender<io::Result<()>>>,
}

impl<IO> PrefaceWatch<IO> {
    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PrefaceWatch<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf));
        let Some(first) = this.first.take() else {
            return Poll::Ready(result);
        };
        Poll::Ready(match result {
            Ok(()) if buf.filled().len() > before => {
                let _ = first.send(Ok(()));
                Ok(())
            }
            Ok(()) => {
                let _ = first.send(Err(closed_before_preface()));
                Ok(())
            }
            Err(e) => {
                // The waiter gets the error itself (its source chain names the TLS alert);
                // the HTTP/2 client, which only logs it, a copy.
                let copy = io::Error::new(e.kind(), e.to_string());
                let _ = first.send(Err(e));
                Err(copy)
            }
        })
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PrefaceWatch<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
