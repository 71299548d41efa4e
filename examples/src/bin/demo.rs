//! The README's main command: `cargo run --release -p meshwork-examples --bin demo`.
//!
//! The full demo (an embedded CA, three greeter backends, a narrating client with
//! retries, ejection and authorization) is being built issue by issue. What it shows today
//! is the part that exists: an embedded control plane (meshwork-xds's test server) serves a
//! greeter target with a 90/10 canary; meshwork's xDS client resolves it through
//! Listener -> RouteConfiguration -> Clusters -> Endpoints, then the control plane shifts
//! the canary to 50/50 and scales a cluster, live, and the client follows.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use meshwork_grpc::core;
use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::client::XdsClient;
use meshwork_xds::resource::{ClusterSpecifier, RouteAction};
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use meshwork_xds::watch::{ClusterChildren, ClusterState, TargetState, XdsConfig};

const TARGET: &str = "greeter.demo:50051";

fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
    ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect()
}

fn routes(stable: u32, canary: u32) -> RouteConfiguration {
    build::route_config(
        "greeter-routes",
        vec![build::virtual_host(
            "greeter",
            [TARGET],
            vec![build::route_weighted(
                "",
                &[("greeter-stable", stable), ("greeter-canary", canary)],
            )],
        )],
    )
}

fn describe(config: &XdsConfig) {
    for route in &config.virtual_host().routes {
        if let RouteAction::Forward(action) = &route.action
            && let ClusterSpecifier::Weighted(clusters) = &action.clusters
        {
            let total: u32 = clusters.iter().map(|c| c.weight).sum();
            let split: Vec<String> = clusters
                .iter()
                .map(|c| format!("{} {}%", c.name, c.weight * 100 / total))
                .collect();
            println!("    route    {}", split.join(" / "));
        }
    }
    for (name, state) in &config.clusters {
        match state {
            ClusterState::Ready(c) => match &c.children {
                ClusterChildren::Endpoints(Ok(cla)) => {
                    let eps: Vec<String> = cla
                        .localities
                        .iter()
                        .flat_map(|l| l.endpoints.iter().map(|e| e.address.to_string()))
                        .collect();
                    println!("    cluster  {name}: {}", eps.join(", "));
                }
                other => println!("    cluster  {name}: {other:?}"),
            },
            ClusterState::Error(e) => println!("    cluster  {name}: unusable: {e}"),
            _ => println!("    cluster  {name}: unknown state"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    println!("meshwork demo (partial: the xDS control loop; the data path, identity and");
    println!("telemetry parts of the demo arrive with their issues)");
    println!(
        "  TLS provider: {} (fips mode: {})",
        core::crypto::provider_name(),
        core::crypto::is_fips()
    );

    let control_plane = XdsTestServer::start().await?;
    control_plane.set_snapshot(
        Snapshot::new()
            .listener(build::api_listener(TARGET, "greeter-routes"))
            .route(routes(90, 10))
            .cluster(build::eds_cluster("greeter-stable"))
            .cluster(build::eds_cluster("greeter-canary"))
            .endpoints(build::endpoints("greeter-stable", &addrs(&[50061, 50062])))
            .endpoints(build::endpoints("greeter-canary", &addrs(&[50071]))),
    );
    println!(
        "\n1. An embedded ADS control plane serves xds:///{TARGET} on {}",
        control_plane.uri()
    );

    let bootstrap = Bootstrap::builder()
        .server(XdsServer::new(control_plane.uri())?)
        .node_id("meshwork-demo")
        .build()?;
    let client = XdsClient::start(&bootstrap)?;
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let config = watch.ready(Duration::from_secs(10)).await?;
    println!(
        "2. meshwork's xDS client resolved a complete config in {:?}:",
        started.elapsed()
    );
    describe(&config);

    let shifted = Instant::now();
    control_plane.update(|s| {
        s.insert_route(routes(50, 50));
    });
    let config = loop {
        if let Some(TargetState::Ready(c)) = watch.changed().await
            && c.route_config != config.route_config
        {
            break c;
        }
    };
    println!(
        "3. The control plane shifted the canary to 50/50; applied in {:?}:",
        shifted.elapsed()
    );
    describe(&config);

    control_plane.update(|s| {
        s.insert_endpoints(build::endpoints("greeter-canary", &addrs(&[50071, 50072])));
    });
    let config = loop {
        if let Some(TargetState::Ready(c)) = watch.changed().await {
            break c;
        }
    };
    println!("4. The canary scaled to two endpoints (an EDS update touching only its cluster):");
    describe(&config);

    println!("\n5. The client's view of every resource (the config dump, as xds-dump prints it):");
    for row in client.dump().await {
        let kind = row.type_url.rsplit('.').next().unwrap_or(row.type_url);
        println!(
            "    {:<22} {:<20} version {:<3} {}",
            kind,
            row.name,
            row.version.as_deref().unwrap_or("-"),
            row.status
        );
    }
    println!("\ndone in {:?}", started.elapsed());
    Ok(())
}
