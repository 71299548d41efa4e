//! Servers driven by the control plane (gRFC A36, A29, A41): the Listener named for the
//! server's address decides, per connection, which filter chain takes it (its TLS from the
//! bootstrap's certificate providers, or plaintext), and per request, which route it
//! matches (only `non_forwarding_action` routes are served) and what its RBAC filters
//! decide.
//!
//! ```text
//! XdsClient ─ ServerWatch (LDS + RDS) ─> XdsServing ─> ListenerState (compiled chains)
//! TcpListener ─> MeshAcceptor::xds: choose the chain (A36 match order), its TLS handshake
//!             ─> serve: the chain in each request's extensions; drained when replaced
//!             ─> XdsInboundLayer: route (non-forwarding), RBAC (+ per-route overrides)
//!             ─> InboundLayer: the code's AuthorizationPolicy (both must allow)
//!             ─> the application's service
//! ```

mod decide;
mod layer;
mod serving;
mod slot;
mod state;

pub use decide::XdsRefusal;
pub use layer::{XdsInbound, XdsInboundLayer};
pub use serving::{NotServing, ServingCallback, ServingState, XdsServing};

#[cfg(all(test, feature = "server"))]
mod tests;
