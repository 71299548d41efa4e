//! # meshwork-xds
//!
//! The xDS v3 client at the bottom of the meshwork stack: the contract meshwork shares with
//! Envoy sidecars and proxyless gRPC. A control plane (istiod, go-control-plane, any ADS
//! server) configures a meshwork service through this crate exactly as it configures them.
//!
//! This crate also owns the workspace's choice of TLS crypto provider (see [`crypto`]),
//! because it is the lowest crate that opens TLS connections (to the control plane).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bootstrap;
pub mod client;
pub mod crypto;
pub mod protocol;
pub mod resource;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
pub mod transport;
pub mod watch;
