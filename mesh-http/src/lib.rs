//! # meshwork-http
//!
//! The mesh in a hyper client and a server acceptor for any hyper or axum service: HTTP/1.1
//! and HTTP/2 requests routed, balanced and secured by the same xDS configuration as gRPC.
#![forbid(unsafe_code)]

/// The transport-independent mesh layers this adapter is built on.
pub use meshwork_core as core;
