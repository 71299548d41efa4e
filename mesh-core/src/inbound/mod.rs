//! The inbound side: accepting mTLS connections, knowing who called, and deciding whether
//! they may.
//!
//! ```text
//! TcpListener ─> MeshAcceptor (TLS handshake with our SVID, client SVID verified)
//!             ─> InboundStream + ConnectionInfo (remote address, PeerIdentity)
//!             ─> the adapter's HTTP server puts ConnectionInfo into each request
//!             ─> InboundLayer (PeerIdentity for handlers, AuthorizationPolicy)
//!             ─> the application's service
//! ```
//!
//! The adapters use these pieces: `meshwork-grpc`'s server and `meshwork-http`'s both run
//! `serve` (feature `server`: hyper-util connections over a [`MeshAcceptor`]), the first
//! with tonic's routes as the service, HTTP/2 only. [`ServerLimits`] bounds what each client
//! may hold: handshakes, connections, streams, and how long a connection lives. Both answer
//! a denied request without calling the application: `grpc-status: 7` (PERMISSION_DENIED)
//! for gRPC, `403 Forbidden` otherwise. With a policy, the path a service receives is the
//! normalised path the policy judged ([`normalize_path`]), and a request whose path cannot
//! be normalised is refused (`grpc-status: 13` or `400 Bad Request`).

mod acceptor;
mod chain_select;
mod layer;
mod limits;
mod policy;
mod rbac;
#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "testing")]
pub mod testing;

pub use acceptor::{ConnectionInfo, InboundStream, MeshAcceptor};
pub use layer::{AuthorizationDenied, Inbound, InboundFuture, InboundLayer};
pub use limits::ServerLimits;
pub use policy::{
    AuthorizationPolicy, Decision, DenyReason, InvalidOperation, Operation, PathError, Principal,
    RequestAttributes, Rule, normalize_path,
};
pub use rbac::{RbacAttributes, RbacDecision, RbacEngine};
#[cfg(feature = "server")]
pub use serve::{HttpVersions, ServeError, serve};

#[cfg(test)]
mod tests;
