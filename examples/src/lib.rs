//! What the example binaries share: the `helloworld.Greeter` proto of gRPC's examples, a
//! greeter whose behaviour can be changed live, the identity a process takes from its
//! environment, the per-backend tally the clients print, the CSDS port they can open, and the
//! demo's per-service OpenTelemetry pipelines and inbound Listener, and `xds-serve`'s resource
//! file reader.
#![forbid(unsafe_code)]

pub mod args;
pub mod csds;
pub mod greeter;
pub mod identity;
pub mod inbound;
pub mod otel;
pub mod tally;
pub mod xds_serve;

use meshwork_grpc::core::xds::ErrorChain;
use meshwork_grpc::core::xds::client::XdsClient;

/// Before a short-lived example exits: write the xDS client's fail-static snapshot now (when
/// `MESHWORK_XDS_SNAPSHOT_DIR` configures one), saying on stderr why if it could not be.
pub async fn save_snapshot(client: &XdsClient) {
    if let Err(error) = client.save_snapshot().await {
        eprintln!(
            "xDS fail-static snapshot not written: {}",
            ErrorChain(&error)
        );
    }
}

/// tonic-prost-build's output for `proto/helloworld.proto` (gRPC's standard Greeter), checked
/// in so that no `protoc` is needed; `tests/helloworld_codegen.rs` keeps it current.
#[allow(missing_docs, unreachable_pub)]
#[rustfmt::skip]
pub mod helloworld;
