//! # meshwork-xds
//!
//! The xDS v3 client at the bottom of the meshwork stack: the contract meshwork shares with
//! Envoy sidecars and proxyless gRPC. A control plane (istiod, go-control-plane, any ADS
//! server) configures a meshwork service through this crate exactly as it configures them.
//!
//! ```no_run
//! use std::time::Duration;
//! use meshwork_xds::bootstrap::Bootstrap;
//! use meshwork_xds::client::XdsClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The same bootstrap Istio's agent writes for proxyless gRPC (GRPC_XDS_BOOTSTRAP).
//! let bootstrap = Bootstrap::from_env()?;
//! let client = XdsClient::start(&bootstrap)?;
//! // Listener -> RouteConfiguration -> Clusters -> Endpoints, published only when complete.
//! let mut target = client.watch_target("greeter:50051", "greeter:50051").await;
//! let config = target.ready(Duration::from_secs(10)).await?;
//! println!("{} clusters", config.clusters.len());
//! // Later configs arrive on `target.changed()`; the dump shows every resource's status.
//! println!("{}", serde_json::to_string_pretty(&client.dump().await)?);
//! # Ok(()) }
//! ```
//!
//! The modules, bottom up: [`bootstrap`] (the gRPC bootstrap file), [`resource`] (validated
//! xDS resources), [`protocol`] (the sans-io ADS state machine), [`transport`] (the errors
//! of reaching a server), [`client`] (the task that drives it all), [`watch`] (complete
//! per-target snapshots), [`fail_static`] (the last good configuration on disk, served
//! when a restart reaches no server), with the `csds` feature the client's view served over CSDS
//! ([`csds`], gRFC A40), and, with the `server` feature, an in-process ADS server for
//! tests. [`ErrorChain`] prints any of their errors with its causes.
//!
//! This crate also owns the workspace's choice of TLS crypto provider (see [`crypto`]),
//! because it is the lowest crate that opens TLS connections (to the control plane).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bootstrap;
pub mod client;
pub mod crypto;
#[cfg(feature = "csds")]
#[cfg_attr(docsrs, doc(cfg(feature = "csds")))]
pub mod csds;
mod error_chain;
pub mod fail_static;
pub mod protocol;
pub mod resource;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
pub mod transport;
pub mod watch;

pub use error_chain::ErrorChain;
