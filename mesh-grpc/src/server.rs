//! [`MeshServer`]: tonic services behind meshwork's inbound stack.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use meshwork_core::identity::MtlsConfig;
use meshwork_core::inbound::{
    AuthorizationPolicy, HttpVersions, InboundLayer, MeshAcceptor, ServeError, ServerLimits,
    ServingCallback, ServingState, XdsInboundLayer, XdsServing,
};
use meshwork_core::xds::client::XdsClient;

use meshwork_core::telemetry::{ServerLayer, Telemetry};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tower::Layer as _;

use crate::deadline::Deadline;

/// Serves tonic services over SPIFFE mTLS with an authorization policy: the server half of
/// joining the mesh.
///
/// Each connection's TLS handshake presents our SVID and requires a client SVID that the
/// [`MtlsConfig`]'s verifier accepts (trust bundles, and its [`Authorizer`] for who may
/// connect at all); handshakes run concurrently and a failed one is logged and dropped. Every
/// request then passes [`InboundLayer`]: handlers find the caller's
/// [`PeerIdentity`](meshwork_core::identity::PeerIdentity) in the request's extensions
/// (`request.extensions().get::<PeerIdentity>()`, and the whole
/// [`ConnectionInfo`](meshwork_core::inbound::ConnectionInfo) beside
/// it), and with a [`policy`](Self::policy) a request the policy denies is answered with
/// PERMISSION_DENIED without reaching the service.
///
/// Every request is traced and measured first ([`ServerLayer`], outermost, so denied calls
/// are recorded too): a `Recv.<service>.<method>` span that continues the caller's trace
/// (W3C `traceparent`), current while the handler runs, and `grpc.server.call.*` metrics,
/// through [`telemetry`](Self::telemetry).
///
/// [`serve_with_shutdown`](Self::serve_with_shutdown) stops accepting when the signal fires
/// and returns once the calls in flight have finished (HTTP/2 GOAWAY, then drain).
///
/// Connections are served by meshwork-core's [`serve`](meshwork_core::inbound::serve)
/// (hyper's HTTP/2 server, as in tonic's own), within [`ServerLimits`]
/// ([`limits`](Self::limits)): by default 10 s per TLS handshake, 1024 handshakes in
/// progress (the oldest dropped for a newcomer), 10 000 connections, 60 KiB of headers, 1024
/// concurrent streams per connection (tonic's default is unlimited), gRFC A8's keepalive
/// (ping after 2 h, 20 s to answer), a 1 h idle timeout (gRFC A9's `max_connection_idle`,
/// off in gRPC, on in Envoy), and a graceful close (GOAWAY, 30 s to drain) when the
/// client's certificate expires; gRFC A9's `max_connection_age` is off unless set. The
/// table in [`ServerLimits`] names the anchor of each. The caller's `grpc-timeout` is
/// enforced as gRPC servers do: a handler that has not answered by then is dropped and the
/// call answered `DEADLINE_EXCEEDED`.
///
/// [`Authorizer`]: meshwork_core::identity::Authorizer
///
/// ```no_run
/// # use meshwork_grpc::{AuthorizationPolicy, MeshServer, MtlsConfig, Principal, Rule};
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
    transport: Transport,
    serving_callback: Option<ServingCallback>,
    policy: Option<AuthorizationPolicy>,
    limits: ServerLimits,
    routes: Routes,
    telemetry: Option<Telemetry>,
    /// The names of the services added one by one (for telemetry's method names).
    services: Vec<&'static str>,
}

impl fmt::Debug for MeshServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshServer")
            .field("transport", &self.transport)
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Where a server's connections get their TLS.
#[derive(Debug)]
enum Transport {
    Mtls(MtlsConfig),
    Plaintext,
    Xds(XdsClient),
}

impl MeshServer {
    /// A server over SPIFFE mTLS with `mtls`' identity (its ALPN is set to `h2`).
    pub fn new(mtls: MtlsConfig) -> Self {
        Self::with(Transport::Mtls(mtls.alpn_protocols(vec![b"h2".to_vec()])))
    }

    /// A plaintext (h2c) server: callers have no identity, so a policy that names
    /// principals denies them. For local development and for running behind a sidecar.
    pub fn plaintext() -> Self {
        Self::with(Transport::Plaintext)
    }

    /// A server whose listener, mTLS and authorization come from the control plane, as
    /// gRPC's xDS-enabled servers (gRFC A36, A29, A41): it serves with the Listener that
    /// `xds`'s bootstrap names for its listening address
    /// (`server_listener_resource_name_template`), each connection taking the TLS of the
    /// filter chain that matches it (certificates from the bootstrap's certificate
    /// providers; plaintext and mTLS chains side by side), each request the chain's routes
    /// (`non_forwarding_action` only, else `UNAVAILABLE`) and RBAC filters (else
    /// `PERMISSION_DENIED`). It does not serve (connections are closed) until the Listener
    /// has come, or while it is deleted or rejected; see
    /// [`XdsServing`] for updates and draining, and
    /// [`on_serving_state`](Self::on_serving_state) to follow the state.
    ///
    /// A [`policy`](Self::policy) set in code applies as well: a request must pass the
    /// xDS RBAC filters *and* the policy.
    pub fn from_xds(xds: &XdsClient) -> Self {
        Self::with(Transport::Xds(xds.clone()))
    }

    /// Calls `callback` on each change of an xDS-driven server's [`ServingState`] (the
    /// change is also logged). Ignored by servers not made with
    /// [`from_xds`](Self::from_xds).
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

    /// Bounds each TLS handshake (10 s by default); the same as setting
    /// [`ServerLimits::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits = self.limits.handshake_timeout(timeout);
        self
    }

    /// Bounds what clients may hold: handshakes, connections, header sizes, streams,
    /// keepalive, idle time and connection age (default [`ServerLimits::default`]; see the
    /// [type docs](Self) for the values).
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
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
    pub async fn serve(self, listener: TcpListener) -> Result<(), ServeError> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves on `listener` until `signal` completes, then stops accepting, lets the calls
    /// in flight finish, and returns.
    pub async fn serve_with_shutdown<F>(
        self,
        listener: TcpListener,
        signal: F,
    ) -> Result<(), ServeError>
    where
        F: Future<Output = ()>,
    {
        let (acceptor, _serving) = match &self.transport {
            Transport::Mtls(mtls) => (MeshAcceptor::new(listener, mtls)?, None),
            Transport::Plaintext => (MeshAcceptor::plaintext(listener), None),
            Transport::Xds(xds) => {
                let (serving, acceptor) = XdsServing::bind(
                    xds,
                    listener,
                    vec![b"h2".to_vec()],
                    self.serving_callback.clone(),
                )?;
                (acceptor, Some(serving))
            }
        };
        let acceptor = acceptor.limits(self.limits);
        let xds = matches!(self.transport, Transport::Xds(_));
        if let Ok(addr) = acceptor.local_addr() {
            tracing::debug!(%addr, transport = ?self.transport, "meshwork gRPC server listening");
        }
        let telemetry = self.telemetry.unwrap_or_else(Telemetry::global);
        for service in &self.services {
            telemetry.serve_service(service);
        }
        // The first layer is the outermost.
        let app = ServerLayer::new(telemetry).layer(
            tower::util::option_layer(xds.then(XdsInboundLayer::new))
                .layer(InboundLayer::new(self.policy).layer(Deadline::new(self.routes.prepare()))),
        );
        meshwork_core::inbound::serve(acceptor, HttpVersions::Http2, app, signal).await;
        Ok(())
    }
}
