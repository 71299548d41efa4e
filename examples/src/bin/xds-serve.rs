//! `xds-serve`: serves the xDS resources of one JSON file over ADS, for developing a meshwork
//! service locally without istiod and for interop tests. It is not a production control
//! plane: no authentication, no TLS, one file, every client gets the same resources.
//!
//! ```text
//! xds-serve --port 18000 --resources resources.json
//! ```
//!
//! The file is Envoy's proto-JSON, the format of Envoy's own config files:
//! `{"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", ...}]}`
//! (see `meshwork_examples::xds_serve`). It is checked every 500 ms and served anew when its
//! content changes; a file that does not parse is reported on stderr and the previous
//! resources stay served. Streams are State of the World (`StreamAggregatedResources`) or
//! delta (`DeltaAggregatedResources`), as each client chooses.
//!
//! It prints `listening on ADDR` once bound and `loaded N resources (version V)` on every
//! (re)load; it exits 1 if the file is bad at start, 2 for bad arguments.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use meshwork_examples::args::{Error, exit_code};
use meshwork_examples::xds_serve::{self, FileWatch, Resources};
use meshwork_xds::ErrorChain;
use meshwork_xds::server::XdsTestServer;

/// How often the file is checked for changes.
const POLL: Duration = Duration::from_millis(500);

/// Serves the xDS resources of a JSON file over ADS (State of the World and delta), reloading
/// it when it changes. For local development and interop tests; not a production control plane.
#[derive(Debug, clap::Parser)]
#[command(
    name = "xds-serve",
    version,
    args_override_self = true,
    after_help = "\
The file is Envoy's proto-JSON, as in Envoy's own config files:
  {\"version_info\": \"optional label\",
   \"resources\": [{\"@type\": \"type.googleapis.com/envoy.config.listener.v3.Listener\",
                  \"name\": \"greeter:50051\", ...}, ...]}
Any message of Envoy's API can be served; fields inside Any values (typed_config) are checked
against their @type too. A field that does not exist, an unknown @type, a resource without a
name or two resources of one type with one name make the file bad.

The file is checked every 500 ms. Each good version is served at once to every stream and
printed as `loaded N resources (version V)`, V being the file's version_info (if any) and a
hash of its content; a type whose resources did not change keeps its version. A bad file
is reported on stderr and the previous resources stay served.

Protocol: State of the World ADS (StreamAggregatedResources) and delta ADS
(DeltaAggregatedResources) over plaintext HTTP/2.

This is a development tool, not a production control plane: no authentication, no TLS, and
every client gets the same resources.

Exit status: 1 if the file is bad at start or the server fails, 2 for bad arguments."
)]
struct Cli {
    /// The TCP port to listen on (0 picks a free one; the line `listening on ADDR` says which).
    #[arg(long, value_name = "PORT")]
    port: u16,

    /// The address to listen on; 0.0.0.0 or :: to be reachable from containers.
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    address: IpAddr,

    /// The JSON file of resources to serve.
    #[arg(long, value_name = "FILE")]
    resources: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    exit_code("xds-serve", run(Cli::parse()).await)
}

async fn run(cli: Cli) -> Result<(), Error> {
    let bytes = xds_serve::read_file(&cli.resources)?;
    let first = xds_serve::parse(&bytes).map_err(|e| {
        format!(
            "{}: {} (nothing served)",
            cli.resources.display(),
            ErrorChain(&e)
        )
    })?;
    let server = XdsTestServer::start_on(SocketAddr::new(cli.address, cli.port)).await?;
    println!("listening on {}", server.addr());
    serve(&server, first);

    let mut watch = FileWatch::new(cli.resources.clone(), &bytes);
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            signal = tokio::signal::ctrl_c() => {
                signal?;
                break;
            }
        }
        // Reading and hashing a large file must not stall the ADS streams on this worker.
        let polled = tokio::task::block_in_place(|| watch.poll());
        match polled {
            None => {}
            Some(Ok(resources)) => serve(&server, resources),
            Some(Err(e)) => eprintln!(
                "xds-serve: {}: {} (still serving the previous resources)",
                cli.resources.display(),
                ErrorChain(&e)
            ),
        }
    }
    server.shutdown().await?;
    Ok(())
}

fn serve(server: &XdsTestServer, resources: Resources) {
    server.set_snapshot(resources.snapshot);
    println!(
        "loaded {} resources (version {})",
        resources.count, resources.version
    );
}
