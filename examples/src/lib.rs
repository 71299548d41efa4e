//! What the example binaries share: the `helloworld.Greeter` proto of gRPC's examples, a
//! greeter whose behaviour can be changed live, the identity a process takes from its
//! environment, the per-backend tally the clients print, the CSDS port they can open, and the
//! demo's per-service OpenTelemetry pipelines and inbound Listener.
#![forbid(unsafe_code)]

pub mod args;
pub mod csds;
pub mod greeter;
pub mod identity;
pub mod inbound;
pub mod otel;
pub mod tally;

/// tonic-prost-build's output for `proto/helloworld.proto` (gRPC's standard Greeter), checked
/// in so that no `protoc` is needed; `tests/helloworld_codegen.rs` keeps it current.
#[allow(missing_docs, unreachable_pub)]
#[rustfmt::skip]
pub mod helloworld;
