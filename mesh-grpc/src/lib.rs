//! # meshwork-grpc
//!
//! The mesh in a tonic channel and server: a service joins the mesh by changing how it builds
//! its channel and its server, nothing else. tonic stays inside this crate, so a move to its
//! successor touches only this adapter.
#![forbid(unsafe_code)]

/// The transport-independent mesh layers this adapter is built on.
pub use meshwork_core as core;
