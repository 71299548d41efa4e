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
//! The adapters use these pieces: `meshwork-grpc`'s server builder hands the
//! [`MeshAcceptor`] to tonic, `meshwork-http`'s serves any hyper service over it. Both answer
//! a denied request without calling the application: `grpc-status: 7` (PERMISSION_DENIED)
//! for gRPC, `403 Forbidden` otherwise. With a policy, the path a service receives is the
//! normalised path the policy judged ([`normalize_path`]), and a request whose path cannot
//! be normalised is refused (`grpc-status: 13` or `400 Bad Request`).

mod acceptor;
mod layer;
mod policy;

pub use acceptor::{ConnectionInfo, InboundStream, MeshAcceptor};
pub use layer::{AuthorizationDenied, Inbound, InboundFuture, InboundLayer};
pub use policy::{
    AuthorizationPolicy, Decision, DenyReason, InvalidOperation, Operation, PathError, Principal,
    RequestAttributes, Rule, normalize_path,
};

#[cfg(test)]
mod tests;
