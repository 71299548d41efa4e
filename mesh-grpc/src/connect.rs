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
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::identity::{
    Authorizer, CertificateProviders, IdentityError, MtlsConfig, VerifyError,
};
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

/// Where a channel's endpoints get the identity for clusters that ask for TLS.
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

/// Dials one endpoint (the URI it is called with is ignored).
#[derive(Clone)]
pub(crate) struct Dialer {
    address: SocketAddr,
    timeout: Duration,
    tls: Tls,
}

impl Dialer {
    pub(crate) fn new(cluster: &Cluster, address: SocketAddr, identity: &ClusterIdentity) -> Self {
        let mtls = match (&cluster.tls, identity) {
            (None, _) => None,
            (Some(_), ClusterIdentity::Fixed(mtls)) => Some(mtls.clone()),
            (Some(upstream), ClusterIdentity::Providers(providers)) => {
                match providers.for_upstream(upstream) {
                    Ok(source) => Some(MtlsConfig::new(source)),
                    Err(e) => {
                        return Self {
                            address,
                            timeout: cluster.connect_timeout,
                            tls: Tls::Broken(Broken::Config(cluster.name.clone(), Arc::new(e))),
                        };
                    }
                }
            }
            (Some(_), ClusterIdentity::None) => None,
        };
        let tls = match (&cluster.tls, mtls) {
            (None, _) => Tls::Off,
            (Some(_), None) => Tls::Broken(Broken::NoIdentity(cluster.name.clone())),
            (Some(upstream), Some(mtls)) => match mtls
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

    // Forwarded so h2 can hand a frame's header and payload to one write (one TLS record
    // batch, one syscall); the default would write only the first buffer each time.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
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

type Sender = hyper::client::conn::http2::SendRequest<RetryBody<tonic::body::Body>>;

/// One endpoint: one HTTP/2 connection (TCP, or TLS with SPIFFE mTLS when the cluster asks
/// for it), dialled in `poll_ready`. Connected, it is a cheap handle: clones share the
/// connection and multiplex their calls on it. Its `poll_ready` fails once the connection
/// is gone, which tells the balancer to make a new endpoint (with backoff) and to send calls
/// elsewhere meanwhile.
pub(crate) struct Endpoint {
    address: SocketAddr,
    dialer: Dialer,
    sender: Option<Sender>,
    // Only ever touched through `&mut self` (`get_mut`, no locking): the mutex is there to
    // make the endpoint `Sync`, which the dial future is not.
    connecting: Option<std::sync::Mutex<BoxFuture<Result<Sender, BoxError>>>>,
}

impl Clone for Endpoint {
    /// A clone of a connected endpoint shares its connection; a clone of one not connected
    /// yet dials its own.
    fn clone(&self) -> Self {
        Self {
            address: self.address,
            dialer: self.dialer.clone(),
            sender: self.sender.clone(),
            connecting: None,
        }
    }
}

impl Endpoint {
    pub(crate) fn new(cluster: &Cluster, address: SocketAddr, identity: &ClusterIdentity) -> Self {
        Self {
            address,
            dialer: Dialer::new(cluster, address, identity),
            sender: None,
            connecting: None,
        }
    }
}

/// Dials (within the cluster's connect timeout) and runs the HTTP/2 handshake; the
/// connection is driven by a task of its own until it closes.
async fn connect(mut dialer: Dialer) -> Result<Sender, BoxError> {
    let address = dialer.address;
    let io = tower::Service::call(&mut dialer, Uri::from_static("/")).await?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(endpoint = %address, %error, "HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

impl tower::Service<http::Request<RetryBody<tonic::body::Body>>> for Endpoint {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.sender.is_none() {
            let dialer = self.dialer.clone();
            let connecting = self
                .connecting
                .get_or_insert_with(|| std::sync::Mutex::new(Box::pin(connect(dialer))))
                .get_mut()
                .unwrap_or_else(|e| e.into_inner());
            let result = std::task::ready!(connecting.as_mut().poll(cx));
            self.connecting = None;
            self.sender = Some(result?);
        }
        match &mut self.sender {
            Some(sender) => sender.poll_ready(cx).map_err(Into::into),
            None => Poll::Pending,
        }
    }

    fn call(&mut self, mut req: http::Request<RetryBody<tonic::body::Body>>) -> Self::Future {
        // An absolute URI gives the HTTP/2 request its `:scheme` and `:authority`: the
        // caller's authority when it set one, else the endpoint's address.
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
        let Some(sender) = &mut self.sender else {
            return Box::pin(async { Err("endpoint called before it was ready".into()) });
        };
        let fut = sender.send_request(req);
        Box::pin(async move { fut.await.map_err(classify) })
    }
}

/// hyper's error, wrapped in [`RefusedStream`] when the server reset the stream with
/// `REFUSED_STREAM` (the reason is on the `h2::Error` in hyper's source chain), so that the
/// retry layer's `refused-stream` condition can see it.
fn classify(err: hyper::Error) -> BoxError {
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
    use tower::{Service as _, ServiceExt as _};

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

    fn cluster() -> Cluster {
        Cluster {
            name: "c".into(),
            kind: ClusterKind::Eds { service_name: None },
            lb_policy: LbPolicy::RoundRobin,
            circuit_breakers: CircuitBreakers::default(),
            outlier_detection: None,
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            unsupported_fields: Vec::new(),
        }
    }

    async fn call(address: SocketAddr) -> BoxError {
        let cluster = cluster();
        let req = http::Request::post("/svc/Method")
            .body(RetryBody::passthrough(tonic::body::Body::empty()))
            .unwrap();
        Endpoint::new(&cluster, address, &ClusterIdentity::None)
            .oneshot(req)
            .await
            .expect_err("the stream is reset")
    }

    #[tokio::test]
    async fn a_closed_connection_fails_readiness_and_a_clone_shares_the_connection() {
        // A server that answers one stream per connection, then closes it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    if let Some(Ok((_req, mut respond))) = conn.accept().await {
                        let rsp = http::Response::new(());
                        respond.send_response(rsp, true).unwrap();
                    }
                    conn.graceful_shutdown();
                    let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                });
            }
        });
        let req = || {
            http::Request::post("/svc/Method")
                .body(RetryBody::passthrough(tonic::body::Body::empty()))
                .unwrap()
        };
        let mut endpoint = Endpoint::new(&cluster(), address, &ClusterIdentity::None);
        endpoint.ready().await.unwrap();
        let mut clone = endpoint.clone();
        let rsp = clone.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one connection"
        );
        // The server closes the connection: readiness fails from then on (the balancer then
        // makes a new endpoint, which dials again).
        let closed = async {
            loop {
                if endpoint.ready().await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        // A guard against a hang, not a synchronisation.
        tokio::time::timeout(std::time::Duration::from_secs(10), closed)
            .await
            .expect("readiness fails once the connection is closed");
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
