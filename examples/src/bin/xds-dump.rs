//! `xds-dump`: watch one target through the xDS control plane named by the gRPC bootstrap
//! (`GRPC_XDS_BOOTSTRAP` or `GRPC_XDS_BOOTSTRAP_CONFIG`) and print the client's view of every
//! resource as a JSON array — one object per resource with `type`, `name`, `version`,
//! `status` (REQUESTED, ACKED, NACKED, DOES_NOT_EXIST), `error`, and `unsupported_fields`
//! (fields the control plane set that meshwork does not implement yet); a REQUESTED resource
//! has `transport_error` too while no xDS server can be reached (which server, and why).
//! With `MESHWORK_XDS_SNAPSHOT_DIR` set, the service's fail-static snapshot there (same
//! bootstrap) is served when no xDS server answers at start — its rows say
//! `"from_snapshot": true` until a server replaces them — and never written.
//!
//! ```text
//! xds-dump --target xds:///greeter:50051 [--seconds 10]
//! ```
//!
//! It exits 0 once the target's config is complete (after printing the dump), and 1 if it
//! never became complete within `--seconds` or resolved to an error (it still prints the
//! dump, which says why). Bad arguments or a bad bootstrap exit with 2.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use meshwork_examples::args::{self, parse_seconds};
use meshwork_xds::bootstrap::{Bootstrap, XdsTarget};
use meshwork_xds::client::XdsClient;
use meshwork_xds::fail_static::FailStatic;

/// Watches one target through the xDS control plane the gRPC bootstrap names and prints the
/// client's view of every resource as a JSON array.
///
/// One object per resource, with "type", "name", "version", "status" (REQUESTED, ACKED,
/// NACKED, DOES_NOT_EXIST), "error", and "unsupported_fields" (fields the control plane set
/// that meshwork does not implement yet).
#[derive(Debug, clap::Parser)]
#[command(
    name = "xds-dump",
    version,
    args_override_self = true,
    after_help = format!(
        "{}\n\nExit status: 0 once the target's config is complete, 1 if it never became \
         complete within --seconds or resolved to an error (the dump says why), 2 for bad \
         arguments or a bad bootstrap.",
        args::XDS_ENVIRONMENT
    )
)]
struct Cli {
    /// The target to watch, xds:///NAME (a bare NAME means xds:///NAME).
    #[arg(long, value_name = "TARGET")]
    target: String,

    /// How long to wait for the target's config to become complete, in seconds (a fraction
    /// is allowed); the dump is printed then, complete or not.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "10",
        value_parser = parse_seconds,
        allow_negative_numbers = true
    )]
    seconds: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xds-dump: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<bool, Box<dyn std::error::Error>> {
    let bootstrap = Bootstrap::from_env()?;
    let spec = if cli.target.contains("://") {
        cli.target.clone()
    } else {
        format!("xds:///{}", cli.target)
    };
    let target = XdsTarget::parse(&spec)?;
    let listener = bootstrap.listener_resource_name_for(&target)?;
    let mut builder = XdsClient::builder(&bootstrap)?;
    if let Some(fail_static) = FailStatic::from_env() {
        // A tool run beside a service must not replace its snapshot with one target's.
        builder = builder.fail_static(fail_static.read_only());
    }
    let client = builder.start();
    let mut watch = client
        .watch_target(&listener, target.data_plane_authority())
        .await;
    let outcome = watch.ready(cli.seconds).await;

    let rows: Vec<serde_json::Value> = client
        .dump()
        .await
        .into_iter()
        .map(|r| {
            let mut row = serde_json::json!({
                "type": r.type_url,
                "name": r.name,
                "version": r.version,
                "status": r.status,
                "error": r.error,
                "unsupported_fields": r.unsupported_fields,
            });
            // Only while the control plane is unreachable: other rows stay as they were.
            if let Some(e) = r.transport_error {
                row["transport_error"] = e.into();
            }
            if r.from_snapshot {
                row["from_snapshot"] = true.into();
            }
            row
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&rows)?);
    match outcome {
        Ok(_) => Ok(true),
        Err(e) => {
            eprintln!("xds-dump: target {} is not complete: {e}", cli.target);
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["xds-dump", "--target", "g"]).unwrap();
        assert_eq!(cli.target, "g");
        assert_eq!(cli.seconds, Duration::from_secs(10));
        let cli = Cli::try_parse_from(["xds-dump", "--target=g", "--seconds", "0.5"]).unwrap();
        assert_eq!(cli.seconds, Duration::from_millis(500));
    }
}
