//! Shared pieces of meshwork's benchmarks.
//!
//! The criterion benches live in `benches/benches/`, one file per layer, so a regression
//! points at its layer; the side-by-side load harness is the `loadtest` binary; the long run
//! under injected faults is the `soak` binary.
#![forbid(unsafe_code)]

pub mod args;
pub mod child_server;
pub mod procfs;
pub mod xds_fixtures;
