//! # meshwork-core
//!
//! What a service-mesh sidecar does on every request, as tower middleware that runs inside
//! the service: SPIFFE mTLS identity, routing, load balancing, retries, timeouts, circuit
//! breaking, outlier detection, authorization and telemetry. It speaks
//! `tower::Service<http::Request<B>>` only; the tonic and hyper adapters live in
//! `meshwork-grpc` and `meshwork-http`.
#![forbid(unsafe_code)]

pub mod identity;

/// The xDS client this crate builds its configuration from.
pub use meshwork_xds as xds;

/// The workspace's TLS crypto provider (chosen by the `ring`, `aws-lc-rs` or `fips` feature).
pub use meshwork_xds::crypto;

#[cfg(feature = "admin")]
pub mod admin;
pub mod balance;
pub mod breaker;
pub mod client;
pub mod config;
mod errors;
#[cfg(feature = "hyper")]
pub mod executor;
mod extensions;
pub mod inbound;
mod metrics;
pub mod outlier;
pub mod prelude;
pub mod retry;
pub mod route;
pub mod stack;
mod status;
pub mod telemetry;
pub mod timeout;
pub mod upstream;
