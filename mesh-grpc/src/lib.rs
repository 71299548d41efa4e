//! # meshwork-grpc
//!
//! The mesh in a tonic channel and server: a service joins the mesh by changing how it builds
//! its channel and its server, nothing else. tonic stays inside this crate, so a move to its
//! successor touches only this adapter.
//!
//! [`MeshChannel`] is a tonic channel (`tower::Service<http::Request<tonic::body::Body>>`, so
//! any generated client takes it: `GreeterClient::new(channel)`) over meshwork's outbound
//! stack ([`meshwork_core::stack`]): routing, timeouts, retries, circuit breaking, load
//! balancing and outlier detection, configured by hand ([`MeshChannel::from_static`]) or by
//! an xDS control plane ([`MeshChannel::from_xds`]).
//!
//! Each endpoint gets one HTTP/2 connection (hyper) over TCP; when the endpoint's cluster
//! asks for TLS (`Cluster::tls`), with SPIFFE mTLS, the server's SVID checked against the
//! cluster's SAN matchers. Our SVID and the roots come from the certificate provider
//! instances the cluster names in the bootstrap (gRFC A29, as Istio configures proxyless
//! gRPC), or from one identity for every cluster given with [`MeshChannelOptions::mtls`].
//! The balancer's driver task dials it off the calls' path and, when the connection closes
//! or cannot be made, dials again with backoff; calls multiplex on the connection through
//! clones of its sender, and while every endpoint of a cluster fails to connect they fail at
//! once with `UNAVAILABLE` and the last connection error. An HTTP/2 `REFUSED_STREAM` reset
//! is reported as [`meshwork_core::retry::RefusedStream`], so the `refused-stream` retry
//! condition sees it.
//!
//! [`MeshServer`] is the other half: tonic services served over SPIFFE mTLS, with the
//! caller's identity in each request and an authorization policy in front of them.
//!
//! Errors reach tonic as a [`tonic::Status`] whose code comes from
//! [`meshwork_core::stack::error_codes`] and whose source is the stack's error (walk it to
//! find, for example, a [`ConnectError`]; [`connect_error`] does that).
//!
//! ```
//! use meshwork_grpc::{MeshChannel, MeshChannelOptions, StaticConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Every call to the cluster "greeter", whose one endpoint is 127.0.0.1:50051 (plaintext;
//! // `StaticConfig::cluster_with_endpoints` takes a `Cluster` with TLS or another policy).
//! let cfg = StaticConfig::new()
//!     .route_all_to("greeter")
//!     .endpoints("greeter", ["127.0.0.1:50051".parse().unwrap()])
//!     .build()
//!     .unwrap();
//! let channel = MeshChannel::from_static(cfg, MeshChannelOptions::new());
//! // `GreeterClient::new(channel.clone())` for a generated client, or:
//! let _grpc = tonic::client::Grpc::new(channel);
//! # }
//! ```
#![forbid(unsafe_code)]

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use meshwork_core::client::resolve_xds;
use meshwork_core::config::{self, ConfigReceiver};
use meshwork_core::stack;
use meshwork_core::telemetry::CallLayer;
use meshwork_core::upstream::UpstreamIdentity;
use meshwork_core::xds::ErrorChain;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer as _, Service, ServiceExt as _};

/// The transport-independent mesh layers this adapter is built on.
pub use meshwork_core as core;

mod connect;
mod deadline;
mod server;

pub use meshwork_core::client::ResolveError;
pub use meshwork_core::inbound::ServeError;
// The types a service needs besides this crate's own (`meshwork_core::prelude`), named
// one by one so that the API listing (api/*.txt) shows each.
pub use meshwork_core::prelude::{
    AuthorizationPolicy, Bootstrap, CertificateProviders, ConnectError, FileWatcherSource,
    MtlsConfig, Operation, PeerIdentity, Principal, Rule, ServerLimits, SpiffeId, StackOptions,
    StaticConfig, StaticSource, SvidSource, TargetConfig, Telemetry, TrustDomain, UpstreamPolicy,
    WorkloadApiSource, XdsClient,
};
pub use server::MeshServer;

/// Options of a [`MeshChannel`].
#[derive(Debug, Clone)]
pub struct MeshChannelOptions {
    mtls: Option<MtlsConfig>,
    certificate_providers: Option<Arc<CertificateProviders>>,
    upstream_policy: UpstreamPolicy,
    ready_timeout: Duration,
    stack: StackOptions,
    telemetry: Option<Telemetry>,
}

impl Default for MeshChannelOptions {
    fn default() -> Self {
        Self {
            mtls: None,
            certificate_providers: None,
            upstream_policy: UpstreamPolicy::default(),
            ready_timeout: Duration::from_secs(10),
            stack: StackOptions::default(),
            telemetry: None,
        }
    }
}

impl MeshChannelOptions {
    /// Default options: the identity for TLS clusters comes from the bootstrap's
    /// certificate providers with [`MeshChannel::from_xds`] and is absent otherwise (TLS
    /// clusters then fail to connect); a 10 s wait for the first xDS config; the stack's
    /// defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// One identity for every cluster that asks for TLS, in place of the certificate
    /// provider instances the clusters name. Its authorizer is replaced per cluster by the
    /// cluster's SAN matchers, and ALPN is set to `h2`.
    pub fn mtls(mut self, mtls: MtlsConfig) -> Self {
        self.mtls = Some(mtls);
        self
    }

    /// The certificate provider instances that clusters' `UpstreamTlsContext`s name (gRFC
    /// A29): each TLS cluster takes our SVID from its identity instance and its roots from
    /// its root instance. [`MeshChannel::from_xds`] makes them from the client's bootstrap
    /// when neither this nor [`mtls`](Self::mtls) is set; pass one shared set to several
    /// channels so that each file is watched once.
    pub fn certificate_providers(mut self, providers: Arc<CertificateProviders>) -> Self {
        self.certificate_providers = Some(providers);
        self
    }

    /// The application's floor under what the control plane says about upstream security,
    /// and the maximum connection age: refuse clusters without TLS, pin which servers may
    /// answer whatever the SAN matchers say, retire connections after an age (see
    /// [`UpstreamPolicy`]). Default: no floor and no age limit, gRFC A29's behaviour.
    /// Connections are retired when the server's certificate expires in any case.
    pub fn upstream_policy(mut self, policy: UpstreamPolicy) -> Self {
        self.upstream_policy = policy;
        self
    }

    /// How long [`MeshChannel::from_xds`] waits for the first complete config (default 10 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The per-cluster stack's options (default [`StackOptions::default`]).
    pub fn stack(mut self, options: StackOptions) -> Self {
        self.stack = options;
        self
    }

    /// Records the channel's calls (a `Sent.…` span and call metrics per call, an
    /// `Attempt.…` span and attempt metrics per attempt, the traffic layers' counters)
    /// through `telemetry`, with `grpc.target` set to the xDS target (or `static`); it
    /// replaces any telemetry in [`stack`](Self::stack). Default: [`Telemetry::global`],
    /// taken when the channel is built, so install the application's OpenTelemetry providers
    /// first.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }
}

type Inner = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    BoxError,
>;

/// A tonic channel into the mesh; see the [crate docs](crate). Cheap to clone; clones share
/// the clusters, connections and config.
#[derive(Clone)]
pub struct MeshChannel {
    inner: Inner,
}

impl fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshChannel").finish_non_exhaustive()
    }
}

impl MeshChannel {
    /// A channel over a hand-written config. Must be called within a tokio runtime.
    pub fn from_static(config: TargetConfig, options: MeshChannelOptions) -> Self {
        let (_tx, rx) = config::channel(config);
        // With the sender gone the config never changes; the stack keeps the last one.
        Self::from_config(rx, options)
    }

    /// A channel following the configs published on `config`. Must be called within a
    /// tokio runtime.
    pub fn from_config(config: ConfigReceiver, options: MeshChannelOptions) -> Self {
        Self::build(config, options, "static")
    }

    fn build(config: ConfigReceiver, options: MeshChannelOptions, target: &str) -> Self {
        let telemetry = options
            .telemetry
            .unwrap_or_else(Telemetry::global)
            .with_target(target);
        let identity = UpstreamIdentity::choose(
            options.mtls.as_ref(),
            options.certificate_providers.as_ref(),
        );
        let policy = options.upstream_policy;
        let connect = move |cluster: &Arc<meshwork_core::xds::resource::Cluster>, address| {
            connect::Endpoint::new(cluster, address, &identity, &policy)
        };
        let router = stack::outbound(config, connect, options.stack.telemetry(telemetry.clone()));
        let svc = CallLayer::new(telemetry)
            .layer(router)
            .map_response(|rsp: http::Response<_>| rsp.map(tonic::body::Body::new))
            .map_err(to_status);
        Self {
            inner: BoxCloneSyncService::new(svc),
        }
    }

    /// A channel for the xDS target `target` (`xds:///name:port`), configured by `client`.
    ///
    /// Waits for the first complete config, at most
    /// [`MeshChannelOptions::ready_timeout`]; a target the control plane says does not exist
    /// fails at once. Later configs apply as they arrive; if the target later turns into an
    /// error, the last good config keeps serving. Must be called within a tokio runtime.
    pub async fn from_xds(
        client: &XdsClient,
        target: &str,
        mut options: MeshChannelOptions,
    ) -> Result<Self, ResolveError> {
        if options.mtls.is_none() && options.certificate_providers.is_none() {
            options.certificate_providers = Some(Arc::new(CertificateProviders::from_bootstrap(
                client.bootstrap(),
            )));
        }
        let rx = resolve_xds(client, target, options.ready_timeout).await?;
        Ok(Self::build(rx, options, target))
    }
}

/// Turns a stack error into a `tonic::Status` with meshwork's code, keeping the error as its
/// source. The message is the error's chain, so that it names the cause (a TLS alert, a
/// refused certificate) as grpc-go's `connection error: desc = ...` does.
fn to_status(err: BoxError) -> BoxError {
    if err.is::<tonic::Status>() {
        return err;
    }
    let (code, _) = stack::error_codes(err.as_ref());
    let code = tonic::Code::from_i32(i32::from(code.as_u8()));
    let message = ErrorChain(err.as_ref()).to_string();
    let mut status = tonic::Status::new(code, message);
    status.set_source(Arc::from(err));
    Box::new(status)
}

/// The [`ConnectError`] in an error's source chain (e.g. a `tonic::Status` from a
/// [`MeshChannel`] call), if a connection failure caused it.
pub fn connect_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a ConnectError> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

impl Service<http::Request<tonic::body::Body>> for MeshChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = <Inner as Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.inner.call(req)
    }
}
