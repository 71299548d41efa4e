//! [`Server`]: any hyper or axum service behind the inbound stack, over mTLS, with graceful
//! shutdown.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use meshwork_core::identity::MtlsConfig;
use meshwork_core::inbound::{
    AuthorizationPolicy, HttpVersions, InboundLayer, MeshAcceptor, ServeError, ServerLimits,
    ServingCallback, ServingState, XdsInboundLayer, XdsServing,
};
use meshwork_core::telemetry::{ServerLayer, Telemetry};
use meshwork_core::xds::client::XdsClient;
use pin_project_lite::pin_project;
use tokio::net::TcpListener;
use tower::{BoxError, Layer as _, Service, ServiceExt as _};

/// Serves a hyper or axum service (a `tower::Service<http::Request<hyper::body::Incoming>>`)
/// as a mesh workload: SPIFFE mTLS on every connection, the caller's
/// [`PeerIdentity`](meshwork_core::identity::PeerIdentity) in each request's extensions, an
/// optional [`AuthorizationPolicy`], HTTP/1.1 and HTTP/2 on the same port, and graceful
/// shutdown.
///
/// Per connection: [`MeshAcceptor`] (TLS handshake with our SVID; the client's SVID is
/// verified, and a failed handshake never reaches the service), then hyper-util's `auto`
/// connection (HTTP/1.1 or HTTP/2 by the client's preface, upgrades allowed), then per
/// request the connection's [`ConnectionInfo`](meshwork_core::inbound::ConnectionInfo) into the extensions, [`InboundLayer`]
/// (the caller's `PeerIdentity`; a request the policy denies is answered `403 Forbidden`,
/// or `grpc-status: 7` for gRPC, without calling the service), then the service. Outermost,
/// [`ServerLayer`] traces and measures every request, denied ones included: a server span
/// that continues the caller's trace (W3C `traceparent`), current while the service runs,
/// and `http.server.request.duration` (the gRPC names for gRPC requests).
///
/// What a client may hold is bounded by [`ServerLimits`] ([`limits`](Self::limits)): by
/// default 10 s per TLS handshake, 1024 handshakes in progress (the oldest dropped for a
/// newcomer), 10 000 connections, 30 s to send an HTTP/1 request head, 60 KiB of HTTP/2
/// headers, 1024 HTTP/2 streams per connection, gRFC A8's keepalive (ping after 2 h, 20 s to
/// answer), a 1 h idle timeout, and a graceful close (30 s to drain) when the client's
/// certificate expires; a maximum connection age is off unless set. The table in
/// [`ServerLimits`] names the anchor of each.
///
/// ```no_run
/// use meshwork_http::{AuthorizationPolicy, Principal, Rule, Server};
/// # async fn run(mtls: meshwork_http::MtlsConfig) -> Result<(), Box<dyn std::error::Error>> {
/// let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
/// });
/// let policy = AuthorizationPolicy::new().allow(
///     Rule::any().principal(Principal::TrustDomain("example.org".parse()?)),
/// );
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
/// Server::new(mtls).policy(policy).serve(listener, app).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    transport: Transport,
    serving_callback: Option<ServingCallback>,
    policy: Option<AuthorizationPolicy>,
    limits: ServerLimits,
    telemetry: Option<Telemetry>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("transport", &self.transport)
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Where a server's connections get their TLS.
#[derive(Debug, Clone)]
enum Transport {
    Mtls(MtlsConfig),
    Plaintext,
    Xds(XdsClient),
}

/// The protocols a meshwork-http server offers in ALPN.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

impl Server {
    /// A server over SPIFFE mTLS: it presents our SVID from `mtls` and accepts only clients
    /// whose SVID `mtls`' verifier (its `Authorizer`) accepts; the caller's identity is in
    /// each request. ALPN is set to `h2`, `http/1.1`. No authorization policy (every
    /// authenticated caller is allowed) and the default [`ServerLimits`].
    pub fn new(mtls: MtlsConfig) -> Self {
        Self::with(Transport::Mtls(mtls.alpn_protocols(alpn())))
    }

    /// A plaintext server (HTTP/1.1 and h2c): callers have no identity, so a policy that
    /// names principals denies them. For local development and for running behind a
    /// sidecar; a mesh workload serves with [`Server::new`].
    pub fn plaintext() -> Self {
        Self::with(Transport::Plaintext)
    }

    /// A server whose listener, TLS and authorization come from the control plane (gRFC
    /// A36, A29, A41), as meshwork-grpc's `MeshServer::from_xds`: the Listener the bootstrap
    /// names for the listening address decides each connection's filter chain (its TLS from
    /// the bootstrap's certificate providers, or plaintext) and each request's route (only
    /// `non_forwarding_action` routes are served, others get `503`) and RBAC (`403`). Until
    /// the Listener has come, and while it is deleted or rejected, new connections are
    /// closed ([`XdsServing`]). A [`policy`](Self::policy) set in code applies as well: both
    /// must allow a request.
    pub fn from_xds(xds: &XdsClient) -> Self {
        Self::with(Transport::Xds(xds.clone()))
    }

    /// Calls `callback` on each change of an xDS-driven server's [`ServingState`] (also
    /// logged). Ignored by servers not made with [`from_xds`](Self::from_xds).
    pub fn on_serving_state(
        mut self,
        callback: impl Fn(&ServingState) + Send + Sync + 'static,
    ) -> Self {
        self.serving_callback = Some(std::sync::Arc::new(callback));
        self
    }

    fn with(transport: Transport) -> Self {
        Self {
            transport,
            serving_callback: None,
            policy: None,
            limits: ServerLimits::default(),
            telemetry: None,
        }
    }

    /// Enforce `policy` on every request (default: none, every request is allowed).
    pub fn policy(mut self, policy: AuthorizationPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Bounds each TLS handshake (default 10 s); the same as setting
    /// [`ServerLimits::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits = self.limits.handshake_timeout(timeout);
        self
    }

    /// Bounds what clients may hold: handshakes, connections, header sizes and times,
    /// streams, idle time and connection age (default [`ServerLimits::default`]; see the
    /// [type docs](Self) for the values).
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Records every request through `telemetry`. Default: [`Telemetry::global`], taken when
    /// serving starts, so install the application's OpenTelemetry providers first.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Serves `service` on `listener` until the task is dropped.
    pub async fn serve<S, B>(self, listener: TcpListener, service: S) -> Result<(), ServeError>
    where
        S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.serve_with_shutdown(listener, service, std::future::pending())
            .await
    }

    /// Serves `service` on `listener` until `signal` completes, then shuts down gracefully:
    /// the listener is closed, idle connections are closed, HTTP/2 connections get a GOAWAY,
    /// and requests in flight finish; returns when the last connection has closed. To bound
    /// the wait, wrap this future in a timeout.
    ///
    /// # Errors
    /// [`ServeError::Tls`] when the mTLS configuration cannot make a TLS server
    /// configuration; serving itself does not fail (a failed accept pauses accepting for
    /// 1 s, a failed connection is logged at debug level).
    pub async fn serve_with_shutdown<S, B, F>(
        self,
        listener: TcpListener,
        service: S,
        signal: F,
    ) -> Result<(), ServeError>
    where
        S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        let (acceptor, _serving) = match &self.transport {
            Transport::Mtls(mtls) => (MeshAcceptor::new(listener, mtls)?, None),
            Transport::Plaintext => (MeshAcceptor::plaintext(listener), None),
            Transport::Xds(xds) => {
                let (serving, acceptor) =
                    XdsServing::bind(xds, listener, alpn(), self.serving_callback.clone())?;
                (acceptor, Some(serving))
            }
        };
        let acceptor = acceptor.limits(self.limits);
        let xds = matches!(self.transport, Transport::Xds(_));
        // The policy answers denials with a default body: the service's body wrapped so it
        // has one, whatever the service's body type.
        let app = tower::util::option_layer(xds.then(XdsInboundLayer::new)).layer(
            InboundLayer::new(self.policy).layer(
                service
                    .map_response(|rsp: http::Response<B>| rsp.map(ServerBody::inner))
                    .map_err(Into::<BoxError>::into),
            ),
        );
        let telemetry = self.telemetry.unwrap_or_else(Telemetry::global);
        let app = ServerLayer::new(telemetry).layer(app);
        meshwork_core::inbound::serve(acceptor, HttpVersions::Any, app, signal).await;
        Ok(())
    }
}

pin_project! {
    /// The service's response body, or the empty body of a response the inbound layer
    /// made itself (a denial).
    #[project = ServerBodyProj]
    #[derive(Default)]
    enum ServerBody<B> {
        #[default]
        Empty,
        Inner { #[pin] body: B },
    }
}

impl<B> ServerBody<B> {
    fn inner(body: B) -> Self {
        ServerBody::Inner { body }
    }
}

impl<B> HttpBody for ServerBody<B>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        match self.project() {
            ServerBodyProj::Empty => Poll::Ready(None),
            ServerBodyProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ServerBody::Empty => true,
            ServerBody::Inner { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ServerBody::Empty => SizeHint::with_exact(0),
            ServerBody::Inner { body } => body.size_hint(),
        }
    }
}
