//! [`MeshServer`]: tonic services behind meshwork's inbound stack.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt as _;
use meshwork_core::identity::{IdentityError, MtlsConfig};
use meshwork_core::inbound::{
    AuthorizationPolicy, ConnectionInfo, InboundLayer, InboundStream, MeshAcceptor,
};
use meshwork_core::telemetry::{ServerLayer, Telemetry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::Connected;

/// Serves tonic services over SPIFFE mTLS with an authorization policy: the server half of
/// joining the mesh.
///
/// Each connection's TLS handshake presents our SVID and requires a client SVID that the
/// [`MtlsConfig`]'s verifier accepts (trust bundles, and its [`Authorizer`] for who may
/// connect at all); handshakes run concurrently and a failed one is logged and dropped. Every
/// request then passes [`InboundLayer`]: handlers find the caller's
/// [`PeerIdentity`](meshwork_core::identity::PeerIdentity) in the request's extensions
/// (`request.extensions().get::<PeerIdentity>()`, and the whole [`ConnectionInfo`] beside
/// it), and with a [`policy`](Self::policy) a request the policy denies is answered with
/// PERMISSION_DENIED without reaching the service.
///
/// Every request is traced and measured first ([`ServerLayer`], outermost, so denied calls
/// are recorded too): a `Recv.<service>.<method>` span that continues the caller's trace
/// (W3C `traceparent`), current while the handler runs, and `grpc.server.call.*` metrics,
/// through [`telemetry`](Self::telemetry).
///
/// [`serve_with_shutdown`](Self::serve_with_shutdown) stops accepting when the signal fires
/// and returns once the calls in flight have finished (tonic's graceful shutdown: HTTP/2
/// GOAWAY, then drain).
///
/// [`Authorizer`]: meshwork_core::identity::Authorizer
///
/// ```no_run
/// # use meshwork_grpc::MeshServer;
/// # use meshwork_grpc::core::identity::MtlsConfig;
/// # use meshwork_grpc::core::inbound::{AuthorizationPolicy, Principal, Rule};
/// # async fn run<S>(greeter: S, mtls: MtlsConfig, shutdown: impl std::future::Future<Output = ()>)
/// #     -> Result<(), Box<dyn std::error::Error>>
/// # where S: tower::Service<http::Request<tonic::body::Body>,
/// #     Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>
/// #     + tonic::server::NamedService + Clone + Send + Sync + 'static, S::Future: Send + 'static,
/// # {
/// // `greeter` would be `GreeterServer::new(MyGreeter)` from tonic's generated code, and
/// // `shutdown` a future that completes on SIGTERM or Ctrl-C (`tokio::signal`).
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:50051").await?;
/// MeshServer::new(mtls)
///     .policy(AuthorizationPolicy::new().allow(
///         Rule::any().principal(Principal::TrustDomain("example.org".parse()?)),
///     ))
///     .add_service(greeter)
///     .serve_with_shutdown(listener, shutdown)
///     .await?;
/// # Ok(()) }
/// ```
pub struct MeshServer {
    mtls: Option<MtlsConfig>,
    policy: Option<AuthorizationPolicy>,
    handshake_timeout: Duration,
    routes: Routes,
    telemetry: Option<Telemetry>,
    /// The names of the services added one by one (for telemetry's method names).
    services: Vec<&'static str>,
}

impl fmt::Debug for MeshServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshServer")
            .field("mtls", &self.mtls)
            .field("policy", &self.policy)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a [`MeshServer`] could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The TLS server configuration could not be built from the identity.
    #[error("the server's TLS configuration: {0}")]
    Identity(#[from] IdentityError),
    /// tonic's server failed.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl MeshServer {
    /// A server over SPIFFE mTLS with `mtls`' identity (its ALPN is set to `h2`).
    pub fn new(mtls: MtlsConfig) -> Self {
        Self::with(Some(mtls.alpn_protocols(vec![b"h2".to_vec()])))
    }

    /// A plaintext (h2c) server: callers have no identity, so a policy that names
    /// principals denies them. For local development and for running behind a sidecar.
    pub fn plaintext() -> Self {
        Self::with(None)
    }

    fn with(mtls: Option<MtlsConfig>) -> Self {
        Self {
            mtls,
            policy: None,
            handshake_timeout: Duration::from_secs(10),
            routes: Routes::default(),
            telemetry: None,
            services: Vec::new(),
        }
    }

    /// Records every request through `telemetry`. Default: [`Telemetry::global`], taken when
    /// serving starts, so install the application's OpenTelemetry providers first.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Enforces `policy` on every request (see
    /// [`AuthorizationPolicy`] for the evaluation order: deny rules, then allow rules, then
    /// deny).
    pub fn policy(mut self, policy: AuthorizationPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Bounds each TLS handshake (10 s by default).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Adds a tonic service (e.g. `GreeterServer::new(greeter)`).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self.services.push(S::NAME);
        self
    }

    /// Adds every service of a tonic [`Routes`].
    pub fn add_routes(mut self, routes: Routes) -> Self {
        let router = std::mem::take(self.routes.axum_router_mut());
        *self.routes.axum_router_mut() = router.merge(routes.into_axum_router());
        self
    }

    /// Serves on `listener` until the process ends or serving fails.
    pub async fn serve(self, listener: TcpListener) -> Result<(), ServerError> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves on `listener` until `signal` completes, then stops accepting, lets the calls
    /// in flight finish, and returns.
    pub async fn serve_with_shutdown<F>(
        self,
        listener: TcpListener,
        signal: F,
    ) -> Result<(), ServerError>
    where
        F: Future<Output = ()>,
    {
        let acceptor = match &self.mtls {
            Some(mtls) => MeshAcceptor::new(listener, mtls)?,
            None => MeshAcceptor::plaintext(listener),
        }
        .handshake_timeout(self.handshake_timeout);
        if let Ok(addr) = acceptor.local_addr() {
            tracing::debug!(%addr, mtls = self.mtls.is_some(), "meshwork gRPC server listening");
        }
        let incoming = acceptor.map(|conn| conn.map(TonicStream));
        let telemetry = self.telemetry.unwrap_or_else(Telemetry::global);
        for service in &self.services {
            telemetry.serve_service(service);
        }
        tonic::transport::Server::builder()
            // The first layer is the outermost.
            .layer(ServerLayer::new(telemetry))
            .layer(InboundLayer::new(self.policy))
            .add_routes(self.routes.prepare())
            .serve_with_incoming_shutdown(incoming, signal)
            .await?;
        Ok(())
    }
}

/// An accepted connection as tonic's server wants it: tonic puts its [`ConnectionInfo`]
/// into every request's extensions, where [`InboundLayer`] finds the caller.
struct TonicStream(InboundStream);

impl Connected for TonicStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.0.info().clone()
    }
}

impl AsyncRead for TonicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TonicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
