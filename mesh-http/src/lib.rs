//! # meshwork-http
//!
//! The mesh in a hyper client and a server acceptor for any hyper or axum service: HTTP/1.1
//! and HTTP/2 requests routed, balanced and secured by the same xDS configuration as gRPC.
//!
//! ## The client
//!
//! [`MeshClient`] sends `http://host/path` requests through meshwork's outbound stack
//! ([`meshwork_core::stack`]): routing, timeouts, retries, circuit breaking, load balancing
//! and outlier detection. The host is resolved the way `meshwork_grpc::MeshChannel`
//! resolves `xds:///host` ([`MeshClient::from_xds`]; one client serves any number of hosts,
//! each watched on first use), or every host goes through one hand-written config
//! ([`MeshClient::from_static`]).
//!
//! Each endpoint gets its own pooled hyper-util client over TCP (over HTTP/1.1, a connection
//! per request in flight, each reused once idle; a connection idle for 90 s is closed). The
//! balancer sends requests to an endpoint only once its first connection is made (and that
//! connection serves the first request), so a new endpoint costs no request a handshake and
//! an endpoint that cannot be reached takes none; when
//! the endpoint's cluster asks for TLS (`Cluster::tls`), connections use SPIFFE mTLS with the
//! server's SVID checked against the cluster's SAN matchers; our SVID and the roots come from the
//! certificate provider instances the cluster names in the bootstrap (gRFC A29), or from one
//! identity for every cluster ([`MeshClientOptions::mtls`]). Host names whose routes reach
//! the same cluster share that cluster's stack (balancer, connections, breaker, outlier
//! detection), whose attempt telemetry carries the target of the host that built it. The
//! HTTP version is the
//! cluster's (Envoy's `HttpProtocolOptions` in `typed_extension_protocol_options`, or the
//! deprecated `http2_protocol_options`): HTTP/2 clusters get HTTP/2 (with prior knowledge in
//! plaintext), HTTP/1.1 clusters HTTP/1.1; otherwise ALPN picks over TLS and plaintext is
//! HTTP/1.1 ([`MeshClientOptions::http2_prior_knowledge`] makes every cluster HTTP/2).
//!
//! A request that fails in the mesh returns an [`Error`], never a synthesized response;
//! [`Error::status`] is the status a proxy would have answered with (404 no route, 503 no
//! endpoint or breaker open or connection failed, 504 timeout).
//!
//! ```no_run
//! use meshwork_http::{Bootstrap, MeshClient, MeshClientOptions, XdsClient};
//! use http_body_util::BodyExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let bootstrap = Bootstrap::from_env()?; // GRPC_XDS_BOOTSTRAP
//! let client = MeshClient::from_xds(&XdsClient::start(&bootstrap)?, MeshClientOptions::new());
//! let rsp = client.get("http://greeter/hello").await?;
//! let body = rsp.into_body().collect().await?.to_bytes();
//! println!("{}", String::from_utf8_lossy(&body));
//! # Ok(()) }
//! ```
//!
//! ## The server
//!
//! [`Server`] serves any hyper or axum service (a
//! `tower::Service<http::Request<hyper::body::Incoming>>`) behind meshwork's inbound stack
//! ([`meshwork_core::inbound`]): mTLS with the caller's SVID verified, the caller's
//! `PeerIdentity` and the connection's `ConnectionInfo` in each request's extensions, an
//! optional `AuthorizationPolicy` (denied requests get `403 Forbidden`, gRPC ones
//! `grpc-status: 7`), HTTP/1.1 and HTTP/2 on one port, and graceful shutdown.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http_body_util::BodyExt as _;
use tower::BoxError;

/// The transport-independent mesh layers this adapter is built on.
pub use meshwork_core as core;

mod client;
mod connect;
mod error;
mod server;

pub use client::{MeshClient, MeshClientOptions};
pub use error::Error;
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
pub use server::Server;

/// The body of requests sent and responses received through a [`MeshClient`]: any
/// `http_body::Body` of [`Bytes`], boxed.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// An empty [`Body`].
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}
