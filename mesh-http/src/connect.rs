//! Endpoint connections: one pooled hyper client per endpoint, dialled by
//! [`meshwork_core::upstream::Dialer`] (TCP, with SPIFFE mTLS when the cluster asks for TLS),
//! speaking HTTP/2 or HTTP/1.1 (see [`Protocol`]).
//!
//! An HTTP/2 connection counts as made only once the server's first bytes (its preface, a
//! SETTINGS frame) arrived, within the cluster's connect timeout, as gRPC does: over TLS 1.3
//! a server that refuses our certificate says so only then, and a server that never speaks
//! fails the connect instead of hanging the request. HTTP/1.1 has no server preface (the
//! server speaks only to answer), so an HTTP/1.1 connection is made when TLS is; a refusal
//! arriving later fails the request that found it, at once.
//!
//! HTTP/1.1 carries one request at a time per connection, so an HTTP/1.1 endpoint's pool
//! holds as many connections as it has had requests in flight at once: a request takes an
//! idle keep-alive connection when there is one, and otherwise starts a new one at once and
//! takes whichever is ready first, that one or one freed meanwhile (which then stays pooled);
//! it never queues behind a busy connection. The cluster's circuit breaker (`max_requests`)
//! bounds the requests in flight and so the busy connections; the pool keeps at most that
//! many idle ones and closes a connection idle for [`POOL_IDLE_TIMEOUT`]. HTTP/2 multiplexes
//! every request over one connection.
//!
//! An endpoint is ready once its first connection is made: its `poll_ready` dials (TCP, TLS,
//! and for HTTP/2 the server's preface) and fails with the [`ConnectError`] when that
//! fails, so the balancer's driver publishes a new endpoint only once it can take a request
//! without waiting for a handshake, and keeps an unreachable one out of the picks (backing
//! off and trying again), as it does for gRPC endpoints. The first request takes that
//! connection when it is still open (an HTTP/1.1 server that spoke unasked or closed it is
//! not used); the pool makes every later connection on demand, and the endpoint stays ready
//! whatever they do (their failures fail their requests). A first connection no request
//! took is closed after [`POOL_IDLE_TIMEOUT`], like an idle pooled one.
//!
//! A connection is retired at the earlier of the policy's maximum age and the expiry of the
//! server's certificate: the pool stops handing it out (new requests get a new connection)
//! and requests already on it finish.
//!
//! Everything the outbound stack needs from this module is [`Endpoint::new`], called by the
//! stack's `Connect` seam; the rest is private to keep the seam easy to adapt.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshwork_core::retry::RetryBody;
use meshwork_core::upstream::{
    ConnectError, Dialer, UpstreamIdentity, UpstreamPolicy, UpstreamStream,
};
use meshwork_core::xds::resource::{Cluster, UpstreamProtocol};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::BoxError;

use crate::Body;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How long a pooled connection may stay idle before the pool closes it: hyper-util's
/// default, enforced by a timer (without one, hyper-util only skips an expired connection
/// when it next looks for one, and the connection stays open meanwhile).
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP version spoken to a cluster's endpoints, from the cluster's
/// [`UpstreamProtocol`] (Envoy's `HttpProtocolOptions`, or the deprecated
/// `http2_protocol_options`):
///
/// | the cluster says | over TLS (ALPN offered) | in plaintext |
/// |---|---|---|
/// | HTTP/2 | `h2` | HTTP/2 with prior knowledge ("h2c") |
/// | HTTP/1.1 | `http/1.1` | HTTP/1.1 |
/// | auto, downstream or nothing | `h2`, `http/1.1`: the server chooses | HTTP/1.1 |
///
/// [`MeshClientOptions::http2_prior_knowledge`](crate::MeshClientOptions::http2_prior_knowledge)
/// makes every cluster HTTP/2. "Downstream" (use the caller's version) is taken as auto: an
/// in-process client has no downstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 in plaintext; ALPN `h2`, `http/1.1` over TLS.
    Negotiate,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

impl Protocol {
    pub(crate) fn for_cluster(cluster: &Cluster, http2_prior_knowledge: bool) -> Self {
        if http2_prior_knowledge {
            return Protocol::Http2;
        }
        match cluster.protocol {
            UpstreamProtocol::Http2 => Protocol::Http2,
            UpstreamProtocol::Http1 => Protocol::Http1,
            _ => Protocol::Negotiate,
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Negotiate => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::Http2 => vec![b"h2".to_vec()],
        }
    }
}

/// The client connection preface (RFC 9113 §3.4), which hyper writes first on an HTTP/2
/// connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper-util's connector for one endpoint: dials it, whatever URI hyper asks for, or hands
/// over the endpoint's first connection.
#[derive(Clone)]
struct Connector {
    dialer: Dialer,
    /// HTTP/2 without ALPN (prior knowledge in plaintext).
    http2_only: bool,
    first: Arc<FirstConnection>,
    /// The endpoint's connections whose retirement is not armed yet (see [`RetireAt`]).
    unarmed: Arc<AtomicUsize>,
}

/// The endpoint's first connection, made by `poll_ready`, shared by the endpoint's clones
/// and its connector.
#[derive(Default)]
struct FirstConnection {
    /// Set once it was made: the endpoint is ready from then on.
    made: AtomicBool,
    /// The connection itself, until a request takes it or it has been idle too long.
    conn: Mutex<Option<Conn>>,
    /// Told when the connection is taken or the endpoint goes, so that the task waiting to
    /// close it ends then (endpoints that come and go leave no sleeping tasks behind).
    gone: Arc<Notify>,
}

impl Drop for FirstConnection {
    fn drop(&mut self) {
        self.gone.notify_one();
    }
}

impl FirstConnection {
    /// Keeps `conn` for the first request (a second one, from a clone that dialled at the
    /// same time, is closed), and closes it after [`POOL_IDLE_TIMEOUT`] if no request took
    /// it by then (or when the endpoint goes, whichever comes first).
    fn keep(self: &Arc<Self>, conn: Conn) {
        {
            let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if self.made.swap(true, Ordering::AcqRel) {
                return;
            }
            *slot = Some(conn);
        }
        let (first, gone) = (Arc::downgrade(self), self.gone.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(POOL_IDLE_TIMEOUT) => {
                    if let Some(first) = first.upgrade() {
                        drop(first.take());
                    }
                }
                () = gone.notified() => {}
            }
        });
    }

    fn take(&self) -> Option<Conn> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        if conn.is_some() {
            self.gone.notify_one();
        }
        conn
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = BoxFuture<Result<TokioIo<Conn>, ConnectError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        if let Some(mut conn) = self.first.take() {
            if conn.is_open() {
                return Box::pin(std::future::ready(Ok(TokioIo::new(conn))));
            }
            tracing::debug!(
                endpoint = %self.dialer.address(),
                "the first connection closed before a request took it; dialling again"
            );
        }
        let dial = connect(self.dialer.clone(), self.http2_only, self.unarmed.clone());
        Box::pin(async move { dial.await.map(TokioIo::new) })
    }
}

/// Dials; for HTTP/2, also writes the client preface and reads the server's first bytes,
/// all within the cluster's connect timeout. hyper-util runs the HTTP/2 handshake itself
/// once the connector returns, so the preface written here is taken out of hyper's writes
/// and the bytes read are replayed to it.
async fn connect(
    dialer: Dialer,
    http2_only: bool,
    unarmed: Arc<AtomicUsize>,
) -> Result<Conn, ConnectError> {
    let (address, timeout) = (dialer.address(), dialer.timeout());
    let deadline = Instant::now() + timeout;
    let mut stream = dialer.dial().await?;
    // Counted as unarmed only once the connection is made: a connect that fails from here
    // on makes no `Conn` whose drop would take it off the count again.
    let retire_at = dialer.retire_at(&stream);
    let retire_at = move || retire_at.map(|at| RetireAt::new(at, unarmed));
    let h2 = http2_only || stream.alpn_protocol() == Some(b"h2");
    if !h2 {
        return Ok(Conn::new(stream, false, retire_at()));
    }
    let preface = async {
        stream.write_all(PREFACE).await?;
        stream.flush().await?;
        let mut first = vec![0; 4096];
        let n = stream.read(&mut first).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the server's preface",
            ));
        }
        first.truncate(n);
        Ok(first)
    };
    match tokio::time::timeout_at(deadline, preface).await {
        Err(_) => Err(ConnectError::Timeout { address, timeout }),
        Ok(Err(source)) => Err(ConnectError::Preface { address, source }),
        Ok(Ok(first)) => {
            let mut conn = Conn::new(stream, true, retire_at());
            conn.replay = Bytes::from(first);
            conn.preface_sent = PREFACE.len();
            Ok(conn)
        }
    }
}

/// When a connection retires, carried in its [`Connected`] extras into every response on
/// it. Retiring needs the connection's pool entry, which only a request that captured its
/// connection (`capture_connection`) reaches: requests capture theirs only while some
/// connection of the endpoint is not armed, so a request costs nothing for it once every
/// connection is.
#[derive(Clone)]
struct RetireAt {
    at: Instant,
    armed: Arc<Armed>,
}

/// Whether a task waits to retire the connection; counted in the endpoint's unarmed
/// connections until then, or until the connection closes.
struct Armed {
    done: AtomicBool,
    unarmed: Arc<AtomicUsize>,
    /// Told when the connection closes, so that the task waiting to retire it ends then.
    closed: Notify,
}

impl RetireAt {
    fn new(at: Instant, unarmed: Arc<AtomicUsize>) -> Self {
        unarmed.fetch_add(1, Ordering::AcqRel);
        Self {
            at,
            armed: Arc::new(Armed {
                done: AtomicBool::new(false),
                unarmed,
                closed: Notify::new(),
            }),
        }
    }
}

impl Armed {
    /// Marks the connection armed (or closed); true the first time.
    fn arm(&self) -> bool {
        let first = !self.done.swap(true, Ordering::AcqRel);
        if first {
            self.unarmed.fetch_sub(1, Ordering::AcqRel);
        }
        first
    }
}

/// A connection to an endpoint, telling hyper-util whether ALPN chose HTTP/2.
struct Conn {
    stream: UpstreamStream,
    /// HTTP/2 (by ALPN or prior knowledge): the server speaks first.
    h2: bool,
    retire_at: Option<RetireAt>,
    /// The server's first bytes, read while connecting, for hyper to read first.
    replay: Bytes,
    /// How much of hyper's client preface was already sent while connecting.
    preface_sent: usize,
}

impl Conn {
    fn new(stream: UpstreamStream, h2: bool, retire_at: Option<RetireAt>) -> Self {
        Self {
            stream,
            h2,
            retire_at,
            replay: Bytes::new(),
            preface_sent: 0,
        }
    }

    /// Whether a connection made a while ago is still usable, without waiting: nothing
    /// arrived but what HTTP/2 servers send unasked (kept for hyper to read), no end of
    /// stream, no error. An HTTP/1.1 server speaks only to answer, so anything from it
    /// (a `408`, an alert) means it is closing the connection.
    fn is_open(&mut self) -> bool {
        /// At most this much is read ahead, then the connection is taken as it is.
        const READ_AHEAD: usize = 64 * 1024;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut buf = [0u8; 4096];
        loop {
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut self.stream).poll_read(&mut cx, &mut read) {
                Poll::Pending => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Ready(Ok(())) if read.filled().is_empty() || !self.h2 => return false,
                Poll::Ready(Ok(())) => {
                    let mut replay = Vec::with_capacity(self.replay.len() + read.filled().len());
                    replay.extend_from_slice(&self.replay);
                    replay.extend_from_slice(read.filled());
                    self.replay = Bytes::from(replay);
                    if self.replay.len() >= READ_AHEAD {
                        return true;
                    }
                }
            }
        }
    }

    /// Takes the start of `buf`, hyper's write, as far as it repeats the part of the
    /// preface already sent; `None` once all of it was taken.
    fn skip_preface(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        if self.preface_sent == 0 || buf.is_empty() {
            return None;
        }
        let sent = PREFACE.len() - self.preface_sent;
        let n = self.preface_sent.min(buf.len());
        if buf[..n] != PREFACE[sent..sent + n] {
            return Some(Err(io::Error::other(
                "the HTTP/2 client did not start with the connection preface",
            )));
        }
        self.preface_sent -= n;
        Some(Ok(n))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(r) = &self.retire_at {
            // Closed before it was armed: no longer waiting for a request to arm it.
            r.armed.arm();
            r.armed.closed.notify_one();
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let mut connected = Connected::new();
        if let Some(r) = &self.retire_at {
            connected = connected.extra(r.clone());
        }
        if self.stream.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(r) = this.skip_preface(buf) {
            return Poll::Ready(r);
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.preface_sent > 0 {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            if let Some(r) = this.skip_preface(first) {
                return Poll::Ready(r);
            }
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// One endpoint: a pooled hyper client whose connections all go to the endpoint's address,
/// ready once its first connection is made (see the module docs). Clones share the pool and
/// the first connection; a clone of an endpoint not ready yet dials its own.
pub(crate) struct Endpoint {
    client: Client<Connector, RetryBody<Body>>,
    connector: Connector,
    // Only ever touched through `&mut self` (`get_mut`, no locking): the mutex is there to
    // make the endpoint `Sync`, which the dial future is not.
    connecting: Option<Mutex<BoxFuture<Result<Conn, ConnectError>>>>,
}

impl Clone for Endpoint {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            connector: self.connector.clone(),
            connecting: None,
        }
    }
}

impl Endpoint {
    pub(crate) fn new(
        cluster: &Cluster,
        address: SocketAddr,
        identity: &UpstreamIdentity,
        policy: &UpstreamPolicy,
        http2_prior_knowledge: bool,
    ) -> Self {
        let protocol = Protocol::for_cluster(cluster, http2_prior_knowledge);
        let http2_only = protocol == Protocol::Http2;
        // More idle connections than requests allowed in flight could never all be used; at
        // least one, since hyper-util turns pooling off at zero.
        let max_idle = usize::try_from(cluster.circuit_breakers.max_requests)
            .unwrap_or(usize::MAX)
            .max(1);
        let connector = Connector {
            dialer: Dialer::with_policy(cluster, address, identity, policy, protocol.alpn()),
            http2_only,
            first: Arc::default(),
            unarmed: Arc::default(),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2_only)
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle)
            .build(connector.clone());
        Self {
            client,
            connector,
            connecting: None,
        }
    }
}

impl tower::Service<http::Request<RetryBody<Body>>> for Endpoint {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let first = &self.connector.first;
        if first.made.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let c = &self.connector;
        let connecting = self
            .connecting
            .get_or_insert_with(|| {
                let dial = connect(c.dialer.clone(), c.http2_only, c.unarmed.clone());
                Mutex::new(Box::pin(dial))
            })
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        let result = std::task::ready!(connecting.as_mut().poll(cx));
        self.connecting = None;
        first.keep(result?);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<RetryBody<Body>>) -> Self::Future {
        // The URI is absolute (`MeshClient` makes it so): hyper pools by its authority, sends
        // it as `Host` / `:authority`, and the dialer ignores it.
        let capture = (self.connector.unarmed.load(Ordering::Acquire) > 0)
            .then(|| capture_connection(&mut req));
        let fut = self.client.request(req);
        Box::pin(async move {
            let rsp = fut.await?;
            if let Some(capture) = capture
                && let Some(retire) = rsp.extensions().get::<RetireAt>()
                && retire.armed.arm()
            {
                // The first captured response on a connection that has a deadline arms its
                // retirement: from then on the pool hands it out no more (requests on it
                // finish) and new requests get a new connection.
                let (at, armed) = (retire.at, retire.armed.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {
                            if let Some(connected) = &*capture.connection_metadata() {
                                connected.poison();
                            }
                        }
                        () = armed.closed.notified() => {}
                    }
                });
            }
            Ok::<_, BoxError>(rsp)
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A plaintext connection as the connector makes it, and the server's end.
    async fn pair(h2: bool) -> (Conn, TcpStream) {
        pair_retiring(h2, None).await
    }

    async fn pair_retiring(h2: bool, retire_at: Option<RetireAt>) -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let conn = Conn::new(UpstreamStream::Plain(client.unwrap()), h2, retire_at);
        (conn, accepted.unwrap().0)
    }

    /// Asks `conn` until `done` holds, letting the runtime's I/O driver see what arrived
    /// between asks (a bounded number of times); whether it came to hold.
    async fn settles(conn: &mut Conn, done: impl Fn(&mut Conn, bool) -> bool) -> bool {
        for _ in 0..1000 {
            let open = conn.is_open();
            if done(conn, open) {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    /// Waits (a bounded number of turns) until the runtime runs `n` tasks.
    async fn alive_tasks(n: usize) -> bool {
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..1000 {
            if metrics.num_alive_tasks() == n {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    #[tokio::test]
    async fn the_task_closing_an_unused_first_connection_ends_when_it_is_taken_or_the_endpoint_goes()
     {
        // Taken by a request.
        let first = Arc::new(FirstConnection::default());
        first.keep(pair(false).await.0);
        assert!(alive_tasks(1).await);
        assert!(first.take().is_some());
        assert!(
            alive_tasks(0).await,
            "the task ends once the connection is taken"
        );
        // The endpoint removed before any request.
        let first = Arc::new(FirstConnection::default());
        first.keep(pair(false).await.0);
        assert!(alive_tasks(1).await);
        drop(first);
        assert!(alive_tasks(0).await, "the task ends with the endpoint");
    }

    #[tokio::test]
    async fn an_idle_connection_is_open_and_one_the_server_closed_is_not() {
        for h2 in [false, true] {
            let (mut conn, server) = pair(h2).await;
            assert!(conn.is_open());
            drop(server);
            assert!(settles(&mut conn, |_, open| !open).await, "h2: {h2}");
        }
    }

    #[tokio::test]
    async fn an_http1_server_speaking_unasked_is_closing_the_connection() {
        let (mut conn, mut server) = pair(false).await;
        server
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        assert!(settles(&mut conn, |_, open| !open).await);
    }

    #[tokio::test]
    async fn what_an_http2_server_sends_unasked_is_kept_for_hyper_to_read() {
        let (mut conn, mut server) = pair(true).await;
        conn.replay = Bytes::from_static(b"settings;");
        server.write_all(b"ping;").await.unwrap();
        let kept = settles(&mut conn, |conn, open| {
            assert!(open);
            conn.replay.len() > 9
        })
        .await;
        assert!(kept);
        assert_eq!(&conn.replay[..], b"settings;ping;");
        let mut read = vec![0; 64];
        let n = conn.read(&mut read).await.unwrap();
        assert_eq!(&read[..n], b"settings;ping;");
    }

    #[tokio::test]
    async fn a_connection_with_a_deadline_counts_as_unarmed_until_armed_or_closed() {
        let unarmed = Arc::new(AtomicUsize::new(0));
        let at = Instant::now() + Duration::from_secs(60);
        let (a, _a) = pair_retiring(false, Some(RetireAt::new(at, unarmed.clone()))).await;
        let (b, _b) = pair_retiring(true, Some(RetireAt::new(at, unarmed.clone()))).await;
        assert_eq!(unarmed.load(Ordering::Acquire), 2);
        // Armed by a response (a clone of its extras), once.
        let extra = a.retire_at.clone().unwrap();
        assert!(extra.armed.arm());
        assert!(!extra.armed.arm());
        assert_eq!(unarmed.load(Ordering::Acquire), 1);
        // Closed after it was armed: the task waiting to retire it is told, the count stays.
        let waiting = tokio::spawn(async move { extra.armed.closed.notified().await });
        drop(a);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the retiring task ends when its connection closes")
            .unwrap();
        assert_eq!(unarmed.load(Ordering::Acquire), 1);
        // Closed before it was armed: no longer counted.
        drop(b);
        assert_eq!(unarmed.load(Ordering::Acquire), 0);
    }
}

/// Found in review: the endpoint's count of unarmed connections must not drift.
#[cfg(test)]
mod unarmed_tests {
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/2 dial whose server closes before its preface fails, and leaves nothing
    /// counted as an unarmed connection: no connection was made, so none waits to be armed
    /// (a count stuck above zero would make every later request capture its connection).
    #[tokio::test]
    async fn a_failed_http2_connect_counts_no_unarmed_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // Accepts, then closes without a preface.
            drop(listener.accept().await.unwrap());
        });
        let policy = UpstreamPolicy::new().max_connection_age(Duration::from_secs(60));
        let dialer = Dialer::with_policy(
            &Cluster::eds("greeter"),
            address,
            &UpstreamIdentity::None,
            &policy,
            Protocol::Http2.alpn(),
        );
        let unarmed = Arc::new(AtomicUsize::new(0));
        let result = connect(dialer, true, unarmed.clone()).await;
        server.await.unwrap();
        assert!(
            matches!(result, Err(ConnectError::Preface { .. })),
            "the connect fails on the preface"
        );
        assert_eq!(unarmed.load(Ordering::Acquire), 0);
    }
}

/// Found in review: what a TLS 1.3 server sends after the handshake unasked (session
/// tickets, a key update) is no data, so an idle HTTP/1.1 connection that got it is open.
#[cfg(test)]
mod tls_tests {
    use std::sync::atomic::AtomicUsize;

    use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, NamedGroup, RootCertStore, ServerConfig};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// Counts the TLS 1.3 session tickets the client got.
    #[derive(Debug)]
    struct Tickets {
        inner: ClientSessionMemoryCache,
        got: AtomicUsize,
    }

    impl ClientSessionStore for Tickets {
        fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
            self.inner.set_kx_hint(name, group);
        }
        fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
            self.inner.kx_hint(name)
        }
        fn set_tls12_session(
            &self,
            name: ServerName<'static>,
            value: rustls::client::Tls12ClientSessionValue,
        ) {
            self.inner.set_tls12_session(name, value);
        }
        fn tls12_session(
            &self,
            name: &ServerName<'_>,
        ) -> Option<rustls::client::Tls12ClientSessionValue> {
            self.inner.tls12_session(name)
        }
        fn remove_tls12_session(&self, name: &ServerName<'static>) {
            self.inner.remove_tls12_session(name);
        }
        fn insert_tls13_ticket(
            &self,
            name: ServerName<'static>,
            value: rustls::client::Tls13ClientSessionValue,
        ) {
            self.got.fetch_add(1, Ordering::AcqRel);
            self.inner.insert_tls13_ticket(name, value);
        }
        fn take_tls13_ticket(
            &self,
            name: &ServerName<'static>,
        ) -> Option<rustls::client::Tls13ClientSessionValue> {
            self.inner.take_tls13_ticket(name)
        }
    }

    /// An HTTP/1.1 connection to a rustls server with a default configuration (which sends
    /// two session tickets once the handshake is done), the server's end, and the count of
    /// tickets the client got.
    async fn tls_pair() -> (
        Conn,
        tokio_rustls::server::TlsStream<TcpStream>,
        Arc<Tickets>,
    ) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let provider = meshwork_core::crypto::provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .unwrap();
        assert!(
            server.send_tls13_tickets > 0,
            "rustls's default sends tickets"
        );
        let mut roots = RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tickets = Arc::new(Tickets {
            inner: ClientSessionMemoryCache::new(8),
            got: AtomicUsize::new(0),
        });
        client.resumption = rustls::client::Resumption::store(tickets.clone());
        client.alpn_protocols = vec![b"http/1.1".to_vec()];

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = async {
            let tcp = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            TlsConnector::from(Arc::new(client))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsAcceptor::from(Arc::new(server))
                .accept(tcp)
                .await
                .unwrap()
        };
        let (client, server) = tokio::join!(connect, accept);
        let conn = Conn::new(UpstreamStream::Tls(Box::new(client)), false, None);
        (conn, server, tickets)
    }

    /// Asks `conn` whether it is open until `done` holds (a bounded number of times, letting
    /// the runtime's I/O driver run between asks); every answer must be "open".
    async fn open_until(conn: &mut Conn, done: impl Fn(&Conn) -> bool) -> bool {
        for _ in 0..10_000 {
            assert!(conn.is_open(), "an idle connection taken as closed");
            if done(conn) {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    fn tcp(conn: &Conn) -> &TcpStream {
        let UpstreamStream::Tls(tls) = &conn.stream else {
            unreachable!("a TLS connection")
        };
        tls.get_ref().0
    }

    /// Whether the client's socket is known to hold nothing unread: a read since it was
    /// last readable found it empty, so what arrived was read into TLS.
    fn socket_drained(conn: &Conn) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut buf = [0u8; 1];
        tcp(conn)
            .poll_peek(&mut cx, &mut ReadBuf::new(&mut buf))
            .is_pending()
    }

    #[tokio::test]
    async fn session_tickets_and_a_key_update_leave_an_http1_connection_open() {
        let (mut conn, mut server, tickets) = tls_pair().await;
        let got = open_until(&mut conn, |_| tickets.got.load(Ordering::Acquire) >= 2).await;
        assert!(got, "the client got the server's session tickets");

        // A key update: read by `is_open` once it arrived, and the connection is open.
        server.get_mut().1.refresh_traffic_keys().unwrap();
        server.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), tcp(&conn).readable())
            .await
            .expect("the key update arrives")
            .unwrap();
        assert!(
            open_until(&mut conn, socket_drained).await,
            "the client read the key update"
        );

        // Still usable: a request goes through on it and its answer comes back.
        conn.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        conn.flush().await.unwrap();
        let mut request = vec![0; 64];
        let n = server.read(&mut request).await.unwrap();
        assert!(request[..n].starts_with(b"GET / HTTP/1.1"));
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        server.flush().await.unwrap();
        let mut response = vec![0; 64];
        let n = conn.read(&mut response).await.unwrap();
        assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    }
}
