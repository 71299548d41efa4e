//! The connection loop every meshwork server runs (feature `server`): hyper-util's `auto`
//! connections over a [`MeshAcceptor`], within its [`ServerLimits`].

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tower::{BoxError, Service};

use super::{ConnectionInfo, MeshAcceptor, ServerLimits};
use crate::identity::IdentityError;

/// Why a meshwork server (meshwork-grpc's `MeshServer`, meshwork-http's `Server`) could not
/// serve. Serving itself does not fail: a failed accept pauses accepting, a failed
/// connection is logged; what can fail is the setup before the first accept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The server's TLS configuration could not be built from its identity.
    #[error("the server's TLS configuration: {0}")]
    Tls(#[from] IdentityError),
    /// An xDS-driven server cannot name its Listener: the bootstrap has no
    /// `server_listener_resource_name_template`, or the name it gives is invalid.
    #[error("the server's xDS Listener name: {0}")]
    XdsListenerName(#[from] meshwork_xds::bootstrap::BootstrapError),
    /// The listening socket's address could not be read.
    #[error("the listening socket: {0}")]
    Listener(#[from] io::Error),
}

/// Which HTTP versions a server speaks on its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpVersions {
    /// HTTP/1.1 and HTTP/2, told apart by the client's first bytes; HTTP/1.1 upgrades are
    /// allowed.
    Any,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only, with prior knowledge (gRPC).
    Http2,
}

/// Serves `service` on every connection `acceptor` yields until `signal` completes, then
/// stops accepting, shuts every connection down gracefully (HTTP/2 GOAWAY; HTTP/1 closes
/// after the current response) and returns once the last one has closed.
///
/// Each request carries its connection's [`ConnectionInfo`] in its extensions. Each
/// connection follows the acceptor's [`ServerLimits`]: hyper's HTTP/1 header-read timeout,
/// HTTP/2 stream, header-list and keepalive settings, and a graceful close (then, after
/// `drain_grace`, a forced one) when the connection has been idle for `idle_timeout`,
/// reaches `max_connection_age`, or outlives the client certificate's `notAfter`.
pub async fn serve<S, B, F>(
    mut acceptor: MeshAcceptor,
    versions: HttpVersions,
    service: S,
    signal: F,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()>,
{
    let limits = acceptor.server_limits().clone();
    let builder = connection_builder(&limits, versions);
    let (shutdown, shutdown_rx) = watch::channel(());
    let mut signal = pin!(signal);
    loop {
        let stream = tokio::select! {
            next = acceptor.next() => match next {
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    tracing::debug!(%error, "accepting a connection failed");
                    continue;
                }
                None => break,
            },
            () = &mut signal => break,
        };
        let now = Instant::now();
        let expiry = stream
            .peer_not_after()
            .filter(|_| limits.close_at_peer_expiry)
            .map(|not_after| {
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                (now + left, CloseReason::PeerExpired)
            });
        let age = limits
            .max_connection_age
            .map(|age| (now + age, CloseReason::MaxAge));
        let close_at = match (expiry, age) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let (active, active_rx) = watch::channel(0);
        let (heard_tx, heard) = oneshot::channel();
        let replaced = stream.replaced();
        let stream = Heard {
            io: stream,
            heard: Some(heard_tx),
        };
        let svc = Tracked {
            inner: service.clone(),
            info: stream.io.info().clone(),
            active: Arc::new(active),
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
            .into_owned();
        spawn_connection(
            conn,
            Plan {
                close_at,
                idle_timeout: limits.idle_timeout,
                grace: limits.drain_grace,
                config_change_grace: limits.config_change_drain_grace,
                silence: (heard, limits.header_read_timeout),
                replaced,
            },
            active_rx,
            shutdown_rx.clone(),
        );
    }
    // Stop listening before waiting for the connections to drain.
    drop(acceptor);
    drop(shutdown_rx);
    let _ = shutdown.send(());
    shutdown.closed().await;
}

fn connection_builder(
    limits: &ServerLimits,
    versions: HttpVersions,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    match versions {
        HttpVersions::Any => builder,
        HttpVersions::Http1 => builder.http1_only(),
        HttpVersions::Http2 => builder.http2_only(),
    }
}

#[derive(Debug, Clone, Copy)]
enum CloseReason {
    PeerExpired,
    MaxAge,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::PeerExpired => "the client's certificate expired",
            CloseReason::MaxAge => "the connection reached its maximum age",
        })
    }
}

/// When one connection is closed.
struct Plan {
    close_at: Option<(Instant, CloseReason)>,
    idle_timeout: Option<Duration>,
    grace: Duration,
    /// The client's first bytes after the handshake, and how long to wait for them.
    silence: (oneshot::Receiver<()>, Duration),
    /// How long requests may finish after `replaced` completed.
    config_change_grace: Duration,
    /// Completes when a Listener update takes the connection's xDS filter chain away.
    replaced: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

// A function of its own, generic over the connection, so that the spawned future's `Send`
// is proven from the bounds rather than from hyper's concrete types (rust-lang/rust#102211).
fn spawn_connection<C>(
    conn: C,
    plan: Plan,
    active: watch::Receiver<usize>,
    mut shutdown: watch::Receiver<()>,
) where
    C: GracefulConnection + Send + 'static,
    C::Error: fmt::Display,
{
    tokio::spawn(async move {
        let mut conn = pin!(conn);
        let mut close = pin!(async {
            match plan.close_at {
                Some((at, reason)) => {
                    tokio::time::sleep_until(at).await;
                    reason
                }
                None => std::future::pending().await,
            }
        });
        let mut idle = pin!(idle(active, plan.idle_timeout));
        let (heard, silence) = plan.silence;
        let mut silent = pin!(async move {
            if tokio::time::timeout(silence, heard).await.is_ok() {
                std::future::pending::<()>().await;
            }
        });
        let replaced = plan.replaced;
        let mut replaced = pin!(async move {
            match replaced {
                Some(replaced) => replaced.await,
                None => std::future::pending().await,
            }
        });
        // Armed when a drain starts; until then far enough away never to fire.
        let mut grace = pin!(tokio::time::sleep(Duration::from_secs(365 * 24 * 60 * 60)));
        let mut draining = false;
        let mut shutting_down = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "inbound connection ended with an error");
                    }
                    break;
                }
                reason = &mut close, if !draining => {
                    tracing::debug!(%reason, "closing an inbound connection gracefully");
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    grace.as_mut().reset(Instant::now() + plan.grace);
                }
                // Nothing to drain: the client never sent a byte (an HTTP/2 client that
                // never sends its preface holds a connection slot until then).
                () = &mut silent, if !draining => {
                    tracing::debug!(?silence, "closing an inbound connection whose client sent nothing after its handshake");
                    break;
                }
                // A36: connections of a filter chain that a Listener update replaced or
                // removed finish their requests and close; new connections take the new chains.
                () = &mut replaced, if !draining => {
                    tracing::debug!("draining an inbound connection whose xDS filter chain changed");
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    grace.as_mut().reset(Instant::now() + plan.config_change_grace);
                }
                () = &mut idle, if !draining => {
                    tracing::debug!("closing an idle inbound connection");
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    grace.as_mut().reset(Instant::now() + plan.grace);
                }
                () = &mut grace, if draining => {
                    tracing::debug!(grace = ?plan.grace, "requests outlived the drain grace; closing the connection");
                    break;
                }
                // The server's own shutdown waits for every request, however long.
                _ = shutdown.changed(), if !shutting_down => {
                    shutting_down = true;
                    if !draining {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
        drop(shutdown);
    });
}

pin_project! {
    /// A connection's stream that reports the client's first bytes: a connection that never
    /// speaks after its handshake is closed after `header_read_timeout`, as grpc-go bounds
    /// the wait for the client's preface by its connection timeout, instead of holding a
    /// connection slot until the idle timeout.
    struct Heard<IO> {
        #[pin]
        io: IO,
        heard: Option<oneshot::Sender<()>>,
    }
}

impl<IO: AsyncRead> AsyncRead for Heard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.io.poll_read(cx, buf);
        if buf.filled().len() > before
            && let Some(heard) = this.heard.take()
        {
            let _ = heard.send(());
        }
        read
    }
}

impl<IO: AsyncWrite> AsyncWrite for Heard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// Completes once no request has been in progress for `timeout`.
async fn idle(mut active: watch::Receiver<usize>, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        if active.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            () = tokio::time::sleep(timeout) => return,
            changed = active.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Counts a connection's requests in progress: from the call until its response body is
/// done or dropped.
struct Active(Arc<watch::Sender<usize>>);

impl Active {
    fn new(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The service on one connection: puts the connection's [`ConnectionInfo`] into each request
/// and counts the requests in progress.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    info: ConnectionInfo,
    active: Arc<watch::Sender<usize>>,
}

impl<S, B> Service<http::Request<Incoming>> for Tracked<S>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>>,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.info.clone());
        TrackedFuture {
            active: Some(Active::new(&self.active)),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        active: Option<Active>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = std::task::ready!(this.inner.poll(cx))?;
        let active = this.active.take();
        Poll::Ready(Ok(rsp.map(|inner| TrackedBody {
            inner,
            _active: active,
        })))
    }
}

pin_project! {
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _active: Option<Active>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
