//! Accepting connections: TCP, then a TLS handshake with our SVID that verifies the
//! client's.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use futures_util::future::{AbortHandle, abortable};
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

use super::limits::ServerLimits;
use crate::identity::{IdentityError, MtlsConfig, PeerIdentity};

/// How long accepting pauses after `accept` fails (out of file descriptors, mostly): the
/// failure repeats until a connection closes, so retrying at once only burns a core. One
/// second, as hyper 0.14's `AddrIncoming` and axum's `serve` pause.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// An xDS filter chain as the acceptor sees it: the TLS a connection takes. Implemented by
/// `inbound::xds`, which depends on this module rather than the other way round.
pub(crate) trait AcceptedChain: fmt::Debug + Send + Sync + 'static {
    /// The chain's TLS; `None` is plaintext.
    fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor>;
    /// For the xDS request layer to reach its own type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The served xDS Listener as the acceptor sees it.
pub(crate) trait ChainSource: fmt::Debug + Send + Sync + 'static {
    /// The chain that takes a connection from `remote` to `local`, or why none does.
    fn choose(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Arc<dyn AcceptedChain>, &'static str>;

    /// Completes when a connection that `chain` took must drain: once a new one from the
    /// same addresses would be given another chain, or none.
    #[cfg(feature = "server")]
    fn replaced(
        self: Arc<Self>,
        chain: Arc<dyn AcceptedChain>,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// What the server knows about one accepted connection; adapters put it into the extensions
/// of every request that arrives on it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    remote_addr: SocketAddr,
    local_addr: SocketAddr,
    peer: Option<PeerIdentity>,
    tls: bool,
    /// The xDS filter chain that accepted the connection (xDS-driven servers only): its
    /// requests are judged by the chain's routes and RBAC.
    chain: Option<Arc<dyn AcceptedChain>>,
}

impl PartialEq for ConnectionInfo {
    fn eq(&self, other: &Self) -> bool {
        self.remote_addr == other.remote_addr
            && self.local_addr == other.local_addr
            && self.peer == other.peer
            && self.tls == other.tls
            && match (&self.chain, &other.chain) {
                (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for ConnectionInfo {}

impl ConnectionInfo {
    /// Information about a connection from `remote_addr` to `local_addr`, with the peer's
    /// verified identity when it presented an SVID. A connection with a peer identity is a
    /// TLS one; see [`tls`](Self::tls) for TLS without a client certificate.
    pub fn new(
        remote_addr: SocketAddr,
        local_addr: SocketAddr,
        peer: Option<PeerIdentity>,
    ) -> Self {
        let tls = peer.is_some();
        Self {
            remote_addr,
            local_addr,
            peer,
            tls,
            chain: None,
        }
    }

    fn with_chain(mut self, chain: Option<Arc<dyn AcceptedChain>>) -> Self {
        self.chain = chain;
        self
    }

    /// The xDS filter chain that accepted the connection.
    pub(crate) fn chain(&self) -> Option<&Arc<dyn AcceptedChain>> {
        self.chain.as_ref()
    }

    /// Marks the connection as TLS (or not), e.g. TLS whose client sent no certificate.
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls || self.peer.is_some();
        self
    }

    /// Whether the connection is TLS, with or without a client certificate.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// Our address the client connected to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The client's verified SPIFFE identity; `None` on a plaintext connection.
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }
}

/// One accepted connection, TLS or plaintext, with its [`ConnectionInfo`].
pub struct InboundStream {
    io: Io,
    info: ConnectionInfo,
    peer_not_after: Option<SystemTime>,
    /// The connection's slot under [`ServerLimits::max_connections`], freed on drop.
    _slot: Option<OwnedSemaphorePermit>,
    /// The served xDS Listener (xDS-driven servers only), which may replace its chain.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    xds: Option<Arc<dyn ChainSource>>,
}

enum Io {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl InboundStream {
    /// What is known about this connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// When the client's certificate chain stops being valid: the earliest `notAfter` of
    /// the certificates it presented (`None` on plaintext).
    pub fn peer_not_after(&self) -> Option<SystemTime> {
        self.peer_not_after
    }

    /// Completes when the connection must drain because a Listener update gives its
    /// address pair another filter chain or none (xDS-driven servers only).
    #[cfg(feature = "server")]
    pub(crate) fn replaced(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        let state = self.xds.clone()?;
        let chain = self.info.chain.clone()?;
        Some(state.replaced(chain, self.info.local_addr, self.info.remote_addr))
    }

    /// The ALPN protocol the TLS handshake agreed on (`None` on plaintext or without ALPN).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.io {
            Io::Tls(tls) => tls.get_ref().1.alpn_protocol(),
            Io::Plain(_) => None,
        }
    }
}

impl fmt::Debug for InboundStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundStream")
            .field("tls", &matches!(self.io, Io::Tls(_)))
            .field("info", &self.info)
            .finish()
    }
}

impl AsyncRead for InboundStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for InboundStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tls(s) => s.is_write_vectored(),
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

type Handshake = Pin<Box<dyn Future<Output = (u64, Option<InboundStream>)> + Send>>;

/// Where connections come from: a TCP listener, or in tests a scripted source of accept
/// results.
enum Listener {
    Tcp(TcpListener),
    #[cfg(test)]
    Failing(Arc<std::sync::atomic::AtomicUsize>),
}

impl Listener {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        match self {
            Listener::Tcp(listener) => listener.poll_accept(cx),
            #[cfg(test)]
            Listener::Failing(attempts) => {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // EMFILE: what accept says when the process is out of file descriptors.
                Poll::Ready(Err(io::Error::from_raw_os_error(24)))
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr(),
            #[cfg(test)]
            Listener::Failing(_) => Ok(SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    }
}

/// Accepts connections on a listener and yields them once their TLS handshake verified the
/// client's SVID: a `Stream` of [`InboundStream`]s for a server's accept loop (hyper-util's
/// connection builders; `inbound::serve`, feature `server`, is the loop meshwork's servers
/// use).
///
/// Handshakes run concurrently while the stream is polled, within the acceptor's
/// [`ServerLimits`]: each bounded by its `handshake_timeout` (10 s by default), at most
/// `max_concurrent_handshakes` at once (when full, the oldest is dropped for the newcomer),
/// and at most `max_connections` connections alive, established ones included (more are
/// closed as they arrive). A slow or silent client therefore cannot hold up the others. A
/// failed handshake (no SVID, an SVID the [`MtlsConfig`]'s verifier rejects, a timeout) is
/// logged at debug level with its reason and skipped; it never ends the stream. An error
/// from `accept` itself (out of file descriptors) is logged, and accepting pauses for 1 s
/// (hyper 0.14's and axum's pause) so the loop does not spin.
///
/// The server configuration is built once, from the [`MtlsConfig`]; its certificate resolver
/// and verifier read the SVID source on every handshake, so rotation needs no rebuild.
pub struct MeshAcceptor {
    listener: Listener,
    tls: Tls,
    limits: ServerLimits,
    handshakes: FuturesUnordered<Handshake>,
    /// The handshakes in progress by age (ids grow), to drop the oldest when full.
    in_progress: BTreeMap<u64, AbortHandle>,
    next_id: u64,
    connections: Option<Arc<Semaphore>>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl fmt::Debug for MeshAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshAcceptor")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("tls", &self.tls)
            .field("limits", &self.limits)
            .field("handshakes_in_progress", &self.handshakes.len())
            .finish()
    }
}

impl MeshAcceptor {
    /// Accepts mTLS connections on `listener`: presents our SVID from `mtls`' source and
    /// requires a client SVID its verifier accepts. Set the ALPN protocols the server speaks
    /// on `mtls` (`h2` for gRPC).
    pub fn new(listener: TcpListener, mtls: &MtlsConfig) -> Result<Self, IdentityError> {
        let config = Arc::new(mtls.server_config()?);
        Ok(Self::with_tls(
            Listener::Tcp(listener),
            Tls::Fixed(Some(tokio_rustls::TlsAcceptor::from(config))),
        ))
    }

    /// Accepts connections as the served xDS Listener's filter chains say: each connection
    /// takes the TLS of the chain that matches it, and is closed when none does or while the
    /// server is not serving.
    pub(crate) fn xds(listener: TcpListener, state: Arc<dyn ChainSource>) -> Self {
        Self::with_tls(Listener::Tcp(listener), Tls::Xds(state))
    }

    /// Accepts plaintext connections (no identity; an authorization policy that names
    /// principals denies their requests).
    pub fn plaintext(listener: TcpListener) -> Self {
        Self::with_tls(Listener::Tcp(listener), Tls::Fixed(None))
    }

    fn with_tls(listener: Listener, tls: Tls) -> Self {
        Self {
            listener,
            tls,
            limits: ServerLimits::default(),
            handshakes: FuturesUnordered::new(),
            in_progress: BTreeMap::new(),
            next_id: 0,
            connections: None,
            backoff: None,
        }
        .limits(ServerLimits::default())
    }

    /// Accepts within `limits` (default: [`ServerLimits::default`]). Call it before the
    /// first connection is accepted: connections already accepted keep the old count.
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.connections = limits
            .max_connections
            .map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))));
        self.limits = limits;
        self
    }

    /// The limits this acceptor applies, and that a server serving its connections applies
    /// to them.
    pub fn server_limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Bounds each TLS handshake (10 s by default); the same as setting
    /// [`ServerLimits::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits.handshake_timeout = timeout;
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn start(&mut self, tcp: TcpStream, remote_addr: SocketAddr) {
        let local_addr = match tcp.local_addr() {
            Ok(addr) => addr,
            Err(error) => {
                tracing::debug!(%remote_addr, %error, "closing a new connection whose local address is unknown");
                return;
            }
        };
        // Chosen first: a connection no chain takes must not cost a handshake slot.
        let (tls, chain, xds) = match &self.tls {
            Tls::Fixed(tls) => (tls.clone(), None, None),
            Tls::Xds(state) => match state.choose(local_addr, remote_addr) {
                Ok(chain) => (chain.tls().cloned(), Some(chain), Some(state.clone())),
                Err(why) => {
                    tracing::debug!(%remote_addr, %why, "closing a new connection");
                    return;
                }
            },
        };
        let slot = match &self.connections {
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    tracing::debug!(%remote_addr, "connection limit reached; closing a new connection");
                    return;
                }
            },
            None => None,
        };
        if self.in_progress.len() >= self.limits.max_concurrent_handshakes
            && let Some((_, oldest)) = self.in_progress.pop_first()
        {
            tracing::debug!("too many TLS handshakes in progress; dropping the oldest");
            oldest.abort();
        }
        let _ = tcp.set_nodelay(true);
        let id = self.next_id;
        self.next_id += 1;
        let Some(tls) = tls else {
            let info = ConnectionInfo::new(remote_addr, local_addr, None).with_chain(chain);
            self.handshakes.push(Box::pin(std::future::ready((
                id,
                Some(InboundStream {
                    io: Io::Plain(tcp),
                    info,
                    peer_not_after: None,
                    _slot: slot,
                    xds,
                }),
            ))));
            return;
        };
        let timeout = self.limits.handshake_timeout;
        let (handshake, abort) = abortable(async move {
            match tokio::time::timeout(timeout, tls.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let peer = PeerIdentity::from_server_stream(&stream);
                    let peer_not_after = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(earliest_not_after);
                    let info = ConnectionInfo::new(remote_addr, local_addr, peer)
                        .tls(true)
                        .with_chain(chain);
                    Some(InboundStream {
                        io: Io::Tls(Box::new(stream)),
                        info,
                        peer_not_after,
                        _slot: slot,
                        xds,
                    })
                }
                Ok(Err(error)) => {
                    tracing::debug!(%remote_addr, %error, "inbound TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%remote_addr, ?timeout, "inbound TLS handshake timed out");
                    None
                }
            }
        });
        self.in_progress.insert(id, abort);
        self.handshakes.push(Box::pin(
            async move { (id, handshake.await.ok().flatten()) },
        ));
    }
}

/// Where a connection's TLS comes from.
enum Tls {
    /// One configuration for every connection (`None`: plaintext).
    Fixed(Option<tokio_rustls::TlsAcceptor>),
    /// The filter chain of the served xDS Listener that matches the connection.
    Xds(Arc<dyn ChainSource>),
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tls::Fixed(Some(_)) => "mtls",
            Tls::Fixed(None) => "plaintext",
            Tls::Xds(_) => "xds",
        })
    }
}

/// The earliest `notAfter` in a certificate chain; `None` if none parses (the verifier
/// accepted the chain, so that does not happen for a verified peer).
fn earliest_not_after(chain: &[rustls_pki_types::CertificateDer<'_>]) -> Option<SystemTime> {
    chain
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .min()
        .map(|secs| match u64::try_from(secs) {
            Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            Err(_) => SystemTime::UNIX_EPOCH,
        })
}

impl Stream for MeshAcceptor {
    type Item = io::Result<InboundStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = &mut this.backoff {
                if sleep.as_mut().poll(cx).is_pending() {
                    break;
                }
                this.backoff = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, remote_addr))) => this.start(tcp, remote_addr),
                Poll::Ready(Err(error)) => {
                    tracing::warn!(%error, "accepting a connection failed; pausing 1 s");
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                }
                Poll::Pending => break,
            }
        }
        // Bounded: each poll of the set completes at most the handshakes that are done.
        while let Poll::Ready(Some((id, done))) = Pin::new(&mut this.handshakes).poll_next(cx) {
            this.in_progress.remove(&id);
            if let Some(stream) = done {
                return Poll::Ready(Some(Ok(stream)));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt as _;
    use tokio::io::AsyncReadExt as _;

    use super::*;

    async fn listen() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// Whether the acceptor side closes `conn` within `bound`.
    async fn closed_within(mut conn: TcpStream, bound: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(bound, conn.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_on_arrival_until_a_slot_frees() {
        let (listener, addr) = listen().await;
        let mut acceptor =
            MeshAcceptor::plaintext(listener).limits(ServerLimits::new().max_connections(Some(2)));
        let _a = TcpStream::connect(addr).await.unwrap();
        let first = acceptor.next().await.unwrap().unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _second = acceptor.next().await.unwrap().unwrap();

        let third = TcpStream::connect(addr).await.unwrap();
        let closed = tokio::select! {
            _ = acceptor.next() => panic!("a connection beyond the limit was yielded"),
            closed = closed_within(third, Duration::from_secs(5)) => closed,
        };
        assert!(closed, "a connection beyond the limit stayed open");

        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), acceptor.next())
            .await
            .expect("a freed slot admits the next connection")
            .unwrap()
            .unwrap();
    }

    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn a_full_handshake_table_drops_its_oldest_handshake_for_a_newcomer() {
        use crate::identity::StaticSource;
        use crate::identity::testing::TestCa;

        let ca = TestCa::new("example.org");
        let mtls = MtlsConfig::new(Arc::new(StaticSource::new(
            Some(ca.svid("/ns/default/sa/server")),
            ca.bundles(),
        )));
        let (listener, addr) = listen().await;
        let limits = ServerLimits::new()
            .max_concurrent_handshakes(2)
            .handshake_timeout(Duration::from_secs(60));
        let mut acceptor = MeshAcceptor::new(listener, &mtls).unwrap().limits(limits);
        tokio::spawn(async move { while acceptor.next().await.is_some() {} });

        let oldest = TcpStream::connect(addr).await.unwrap();
        let second = TcpStream::connect(addr).await.unwrap();
        let _newcomer = TcpStream::connect(addr).await.unwrap();
        // Dropped long before its 60 s handshake timeout...
        assert!(closed_within(oldest, Duration::from_secs(5)).await);
        // ...while the younger one keeps its slot.
        assert!(!closed_within(second, Duration::from_millis(300)).await);
    }

    /// An accept loop that keeps failing (EMFILE) tries once per pause, not in a spin.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_pause_the_loop() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let mut acceptor =
            MeshAcceptor::with_tls(Listener::Failing(attempts.clone()), Tls::Fixed(None));
        let polled = tokio::time::timeout(Duration::from_secs(10), acceptor.next()).await;
        assert!(polled.is_err(), "a failing listener yields nothing");
        let attempts = attempts.load(Ordering::Relaxed);
        // One attempt at 0 s and one after each 1 s pause: 11 in 10 s.
        assert!(
            (10..=11).contains(&attempts),
            "{attempts} accept attempts in 10 s of errors"
        );
    }
}
