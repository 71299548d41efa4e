//! `xds-dump`: watch one target through the xDS control plane named by the gRPC bootstrap
//! (`GRPC_XDS_BOOTSTRAP` or `GRPC_XDS_BOOTSTRAP_CONFIG`) and print the client's view of every
//! resource as a JSON array — one object per resource with `type`, `name`, `version`,
//! `status` (REQUESTED, ACKED, NACKED, DOES_NOT_EXIST), `error`, and `unsupported_fields`
//! (fields the control plane set that meshwork does not implement yet); a REQUESTED resource
//! has `transport_error` too while no xDS server can be reached (which server, and why).
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

use meshwork_xds::bootstrap::{Bootstrap, XdsTarget};
use meshwork_xds::client::XdsClient;

struct Args {
    target: String,
    seconds: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut target = None;
    let mut seconds = 10.0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--target" => target = Some(args.next().ok_or("--target needs a value")?),
            "--seconds" => {
                let v = args.next().ok_or("--seconds needs a value")?;
                seconds = v
                    .parse()
                    .map_err(|_| format!("--seconds: not a number: {v}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let target = target.ok_or("--target is required")?;
    Ok(Args { target, seconds })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("xds-dump: {e}");
            }
            eprintln!("usage: xds-dump --target xds:///NAME [--seconds S]");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xds-dump: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let bootstrap = Bootstrap::from_env()?;
    let spec = if args.target.contains("://") {
        args.target.clone()
    } else {
        format!("xds:///{}", args.target)
    };
    let target = XdsTarget::parse(&spec)?;
    let listener = bootstrap.listener_resource_name_for(&target)?;
    let client = XdsClient::start(&bootstrap)?;
    let mut watch = client
        .watch_target(&listener, target.data_plane_authority())
        .await;
    let outcome = watch.ready(Duration::from_secs_f64(args.seconds)).await;

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
            row
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&rows)?);
    match outcome {
        Ok(_) => Ok(true),
        Err(e) => {
            eprintln!("xds-dump: target {} is not complete: {e}", args.target);
            Ok(false)
        }
    }
}
