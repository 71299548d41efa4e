//! Accepting connections: TCP, then a TLS handshake with our SVID that verifies the
//! client's.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::identity::{IdentityError, MtlsConfig, PeerIdentity};

/// What the server knows about one accepted connection; adapters put it into the extensions
/// of every request that arrives on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    remote_addr: SocketAddr,
    local_addr: SocketAddr,
    peer: Option<PeerIdentity>,
}

impl ConnectionInfo {
    /// Information about a connection from `remote_addr` to `local_addr`, with the peer's
    /// verified identity when it presented an SVID.
    pub fn new(
        remote_addr: SocketAddr,
        local_addr: SocketAddr,
        peer: Option<PeerIdentity>,
    ) -> Self {
        Self {
            remote_addr,
            local_addr,
            peer,
        }
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

type Handshake = Pin<Box<dyn Future<Output = Option<InboundStream>> + Send>>;

/// Accepts connections on a listener and yields them once their TLS handshake verified the
/// client's SVID: a `Stream` of [`InboundStream`]s for a server's accept loop (tonic's
/// `serve_with_incoming`, or hyper-util's connection builders).
///
/// Handshakes run concurrently while the stream is polled, each bounded by
/// [`handshake_timeout`](Self::handshake_timeout) (10 s by default), so a slow or silent
/// client cannot hold up the others. A failed handshake (no SVID, an SVID the
/// [`MtlsConfig`]'s verifier rejects, a timeout) is logged at debug level with its reason and
/// skipped; it never ends the stream. An error from `accept` itself (out of file
/// descriptors) is logged, and accepting pauses for 50 ms so the loop does not spin.
///
/// The server configuration is built once, from the [`MtlsConfig`]; its certificate resolver
/// and verifier read the SVID source on every handshake, so rotation needs no rebuild.
pub struct MeshAcceptor {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
    handshakes: FuturesUnordered<Handshake>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl fmt::Debug for MeshAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshAcceptor")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
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
            listener,
            Some(tokio_rustls::TlsAcceptor::from(config)),
        ))
    }

    /// Accepts plaintext connections (no identity; an authorization policy that names
    /// principals denies their requests).
    pub fn plaintext(listener: TcpListener) -> Self {
        Self::with_tls(listener, None)
    }

    fn with_tls(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        Self {
            listener,
            tls,
            handshake_timeout: Duration::from_secs(10),
            handshakes: FuturesUnordered::new(),
            backoff: None,
        }
    }

    /// Bounds each TLS handshake (10 s by default).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn start(&self, tcp: TcpStream, remote_addr: SocketAddr) -> Handshake {
        let local_addr = tcp.local_addr().unwrap_or(remote_addr);
        let _ = tcp.set_nodelay(true);
        let Some(tls) = self.tls.clone() else {
            let info = ConnectionInfo::new(remote_addr, local_addr, None);
            return Box::pin(std::future::ready(Some(InboundStream {
                io: Io::Plain(tcp),
                info,
            })));
        };
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, tls.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let peer = PeerIdentity::from_server_stream(&stream);
                    let info = ConnectionInfo::new(remote_addr, local_addr, peer);
                    Some(InboundStream {
                        io: Io::Tls(Box::new(stream)),
                        info,
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
        })
    }
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
                Poll::Ready(Ok((tcp, remote_addr))) => {
                    let handshake = this.start(tcp, remote_addr);
                    this.handshakes.push(handshake);
                }
                Poll::Ready(Err(error)) => {
                    tracing::warn!(%error, "accepting a connection failed; pausing 50 ms");
                    this.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                }
                Poll::Pending => break,
            }
        }
        // Bounded: each poll of the set completes at most the handshakes that are done.
        while let Poll::Ready(Some(done)) = Pin::new(&mut this.handshakes).poll_next(cx) {
            if let Some(stream) = done {
                return Poll::Ready(Some(Ok(stream)));
            }
        }
        Poll::Pending
    }
}
