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

use hyper::body::Incoming;
use meshwork_core::client::{self, Outbound, OutboundBody};
use meshwork_core::config::ConfigReceiver;
use meshwork_core::stack;
use meshwork_core::xds::ErrorChain;
use tower::util::{MapErr, MapResponse};
use tower::{BoxError, Service, ServiceExt as _};

/// The transport-independent mesh layers this adapter is built on.
pub use meshwork_core as core;

mod connect;
mod deadline;
mod server;

pub use meshwork_core::client::{ClientIdentity, ClientOptions, ResolveError};
pub use meshwork_core::inbound::{NotServing, ServeError, ServingState};
// The types a service needs besides this crate's own (`meshwork_core::prelude`), named
// one by one so that the API listing (api/*.txt) shows each.
pub use meshwork_core::prelude::{
    AuthorizationPolicy, Bootstrap, CertificateProviders, ConnectError, FileWatcherSource,
    MtlsConfig, Operation, PeerIdentity, Principal, Rule, ServerLimits, SpiffeId, StaticConfig,
    StaticSource, SvidSource, TargetConfig, Telemetry, TrustDomain, UpstreamPolicy,
    WorkloadApiSource, XdsClient,
};
pub use server::MeshServer;

/// Options of a [`MeshChannel`]: the engine's [`ClientOptions`] (identity, upstream policy,
/// the wait for the first xDS config, telemetry, balancer defaults), the same type
/// meshwork-http's client takes.
pub type MeshChannelOptions = ClientOptions;

type Engine = client::Engine<tonic::body::Body, Incoming>;

type ToTonic = fn(http::Response<OutboundBody<Incoming>>) -> http::Response<tonic::body::Body>;

type Inner =
    MapErr<MapResponse<Outbound<tonic::body::Body, Incoming>, ToTonic>, fn(BoxError) -> BoxError>;

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
        Self::new(engine(options, None).outbound_static(config))
    }

    /// A channel following the configs published on `config`. Must be called within a
    /// tokio runtime.
    pub fn from_config(config: ConfigReceiver, options: MeshChannelOptions) -> Self {
        Self::new(engine(options, None).outbound(config, "static"))
    }

    /// A channel for the xDS target `target` (`xds:///name:port`), configured by `client`.
    ///
    /// Waits for the first complete config, at most
    /// [`ClientOptions::ready_timeout`]; a target the control plane says does not exist
    /// fails at once. Later configs apply as they arrive; if the target later turns into an
    /// error, the last good config keeps serving. Must be called within a tokio runtime.
    ///
    /// Each call makes its own engine (its own connections and certificate watches); a
    /// service that calls several targets makes them from one [`MeshChannels`] instead.
    pub async fn from_xds(
        client: &XdsClient,
        target: &str,
        options: MeshChannelOptions,
    ) -> Result<Self, ResolveError> {
        MeshChannels::new(client, options).channel(target).await
    }

    fn new(outbound: Outbound<tonic::body::Body, Incoming>) -> Self {
        let to_tonic: ToTonic = |rsp| rsp.map(tonic::body::Body::new);
        let to_status: fn(BoxError) -> BoxError = to_status;
        Self {
            inner: outbound.map_response(to_tonic).map_err(to_status),
        }
    }
}

/// The channels of one xDS client, made with one set of options: a target is resolved once
/// and its channels share its stack, and targets that route to the same cluster share that
/// cluster's balancer, connections, breaker and outlier detector, as they would behind one
/// sidecar. The certificate provider instances (from the bootstrap, by default) are made
/// once, so each certificate file is watched once. Cheap to clone.
///
/// Targets are kept up to [`ClientOptions::max_targets`]; one that fails to resolve fails
/// at once for [`ClientOptions::negative_ttl`].
///
/// ```no_run
/// use meshwork_grpc::{Bootstrap, MeshChannels, MeshChannelOptions, XdsClient};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let xds = XdsClient::start(&Bootstrap::from_env()?)?;
/// let channels = MeshChannels::new(&xds, MeshChannelOptions::new());
/// let greeter = channels.channel("xds:///greeter:50051").await?;
/// let billing = channels.channel("xds:///billing:50051").await?;
/// # drop((greeter, billing)); Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MeshChannels {
    engine: Engine,
}

impl MeshChannels {
    /// Channels of `client` with `options`. Must be called within a tokio runtime.
    pub fn new(client: &XdsClient, options: MeshChannelOptions) -> Self {
        Self {
            engine: engine(options, Some(client.clone())),
        }
    }

    /// A channel for the xDS target `target` (`xds:///name:port`): as
    /// [`MeshChannel::from_xds`], except that a target resolved before (and still kept)
    /// answers at once with a channel sharing its stack.
    pub async fn channel(&self, target: &str) -> Result<MeshChannel, ResolveError> {
        Ok(MeshChannel::new(self.engine.resolve(target).await?))
    }

    /// The targets resolved and kept now, sorted.
    pub fn targets(&self) -> Vec<String> {
        self.engine.targets()
    }
}

/// The engine of a channel: its connections are tonic-free HTTP/2 over TCP or SPIFFE mTLS.
fn engine(options: ClientOptions, xds: Option<XdsClient>) -> Engine {
    Engine::new(options, xds, |upstream| {
        move |cluster: &Arc<meshwork_core::xds::resource::Cluster>, address| {
            connect::Endpoint::new(cluster, address, upstream.identity(), upstream.policy())
        }
    })
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
