//! The README's main command: `cargo run --release -p meshwork-examples --bin demo`.
//!
//! The full demo (an embedded control plane, an embedded CA, three greeter backends and a
//! narrating client) is being built issue by issue; until it lands this prints what meshwork
//! has built so far, and says so.
#![forbid(unsafe_code)]

use meshwork_grpc::core;

fn main() {
    println!("meshwork demo: the full mesh demo is not built yet; this is what exists so far.");
    println!();
    println!("  workspace      meshwork-xds <- meshwork-core <- meshwork-grpc / meshwork-http");
    println!(
        "  TLS provider   {} (fips mode: {})",
        core::crypto::provider_name(),
        core::crypto::is_fips()
    );
    println!();
    println!("Coming next, in this order: the xDS client, SPIFFE identity and mTLS, the traffic");
    println!("layers, the tonic and hyper adapters with this demo, observability, benchmarks.");
}
