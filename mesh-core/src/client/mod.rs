//! The client engine both adapters are built on (`docs/engine.md` has the design).
//!
//! - [`ClientOptions`]: one options type: identity, upstream policy, the wait for a
//!   target's first config, telemetry, balancer defaults, the target cache's bounds.
//! - [`Engine`]: the options, the adapter's connector, the cluster stacks its targets
//!   share, and a bounded cache of resolved `xds:` targets.
//! - [`Outbound`]: one target's service, from [`Engine::resolve`] (an `xds:` target) or
//!   [`Engine::outbound`] (configs the application publishes).
//! - [`resolve_xds`]: an `xds:` target as a stream of [`TargetConfig`]s, for those who
//!   build their own stack; [`ResolveError`] says why a target has no config.
//!
//! [`TargetConfig`]: crate::config::TargetConfig

mod engine;
mod options;
mod resolve;
mod targets;

pub use engine::{Engine, Outbound, OutboundBody};
pub use options::{ClientIdentity, ClientOptions, Upstream};
pub use resolve::{ResolveError, resolve_xds};
