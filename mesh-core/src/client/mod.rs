//! The client engine the adapters share (issue #17; `docs/engine.md` has the whole design).
//! What is here now: turning an `xds:` target into a stream of [`TargetConfig`]s
//! ([`resolve_xds`]), with one error type for both adapters ([`ResolveError`]).
//!
//! [`TargetConfig`]: crate::config::TargetConfig

mod resolve;

pub use resolve::{ResolveError, resolve_xds};
