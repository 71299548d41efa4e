//! `greeter-server [--port P] [--id ID] [--host HOST] [--mtls] [--cert-provider NAME]
//! [--allow SPIFFE_ID]... [--xds] [--csds-port PORT]` (`--help` explains each flag)
//!
//! gRPC's standard `helloworld.Greeter`, replying `"<ID>: hello <name>"`, so reference
//! clients (grpcio's, grpc-go's) and ours can call it. Plaintext by default; with `--mtls`
//! it serves SPIFFE mTLS with the identity from `SPIFFE_ENDPOINT_SOCKET` (the Workload API)
//! or from the certificate provider in `GRPC_XDS_BOOTSTRAP`, and verifies callers' SVIDs.
//! `--allow` (repeatable) sets an authorization policy: only those SPIFFE IDs may call.
//! With `--xds` the listener, mTLS and authorization come from the control plane of
//! `GRPC_XDS_BOOTSTRAP` (gRFC A36: the Listener its `server_listener_resource_name_template`
//! names for the listening address), each serving-state change printed on stderr; with
//! `MESHWORK_XDS_SNAPSHOT_DIR` set too, a restart while the control plane is unreachable
//! serves the last good Listener from there (meshwork's fail-static snapshot).
//! Prints `listening on ADDR` once it is bound; stops gracefully on Ctrl-C or SIGTERM.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use meshwork_examples::args::{self, Error, MtlsArgs, exit_code};
use meshwork_examples::greeter::Greeter;
use meshwork_examples::identity::svid_source;
use meshwork_grpc::core::identity::{MtlsConfig, SpiffeId};
use meshwork_grpc::core::inbound::{AuthorizationPolicy, Principal, Rule};
use meshwork_grpc::core::xds::ErrorChain;
use meshwork_grpc::core::xds::bootstrap::Bootstrap;
use meshwork_grpc::{MeshServer, ServingState, XdsClient};

/// Serves gRPC's standard helloworld.Greeter, replying "ID: hello NAME" (NAME from the
/// request), so reference clients (grpcio's, grpc-go's) and ours can call it.
///
/// Plaintext unless --mtls. Prints "listening on ADDR" once it accepts calls; stops
/// gracefully on Ctrl-C or SIGTERM.
#[derive(Debug, clap::Parser)]
#[command(
    name = "greeter-server",
    version,
    args_override_self = true,
    after_help = args::MTLS_ENVIRONMENT
)]
struct Cli {
    /// The TCP port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 50051, allow_negative_numbers = true)]
    port: u16,

    /// The ID this greeter puts before each reply [default: greeter-PORT].
    #[arg(long, allow_hyphen_values = true)]
    id: Option<String>,

    /// The address or host name to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    #[command(flatten)]
    mtls: MtlsArgs,

    /// Allow only this caller, by SPIFFE ID (spiffe://TRUST_DOMAIN/PATH), and refuse the
    /// rest with PERMISSION_DENIED; repeat the flag to allow more. Without it, every
    /// caller is allowed.
    #[arg(long, value_name = "SPIFFE_ID")]
    allow: Vec<SpiffeId>,

    /// Take the listener, mTLS and authorization from the xDS control plane of the
    /// bootstrap named by GRPC_XDS_BOOTSTRAP (the Listener its
    /// server_listener_resource_name_template names for HOST:PORT). Serving-state changes
    /// are printed on stderr as "xds: serving" / "xds: not serving: REASON". --allow still
    /// applies on top (both must allow).
    #[arg(long, conflicts_with = "mtls")]
    xds: bool,

    /// With --xds, serve CSDS (gRFC A40: the xDS client's view of every resource) in
    /// plaintext on 127.0.0.1:PORT; 0 picks a free port. The address is printed on stderr as
    /// "csds: serving on ADDRESS".
    #[arg(long, value_name = "PORT", requires = "xds")]
    csds_port: Option<u16>,
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("greeter-server", run(Cli::parse()).await)
}

async fn run(cli: Cli) -> Result<(), Error> {
    let Cli {
        port,
        id,
        host,
        mtls: MtlsArgs {
            mtls,
            cert_provider,
        },
        allow,
        xds,
        csds_port,
    } = cli;
    let id = id.unwrap_or_else(|| format!("greeter-{port}"));

    let greeter = Greeter::new(&id);
    let mut xds_client = None;
    let mut server = if xds {
        let bootstrap = Bootstrap::from_env()?;
        let client = XdsClient::builder(&bootstrap)?.start();
        if let Some(port) = csds_port {
            meshwork_examples::csds::serve(client.clone(), port).await?;
        }
        let client = xds_client.insert(client);
        MeshServer::from_xds(client).on_serving_state(|state| match state {
            ServingState::NotServing(why) => eprintln!("xds: not serving: {}", ErrorChain(why)),
            _ => eprintln!("xds: {state}"),
        })
    } else if mtls {
        let bootstrap = match std::env::var_os("GRPC_XDS_BOOTSTRAP") {
            Some(_) => Some(Bootstrap::from_env()?),
            None => None,
        };
        let source = svid_source(bootstrap.as_ref(), cert_provider.as_deref()).await?;
        MeshServer::new(MtlsConfig::new(source))
    } else {
        MeshServer::plaintext()
    };
    if !allow.is_empty() {
        let mut policy = AuthorizationPolicy::new();
        for who in allow {
            policy = policy.allow(Rule::any().principal(Principal::Id(who)));
        }
        server = server.policy(policy);
    }
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    println!("listening on {}", listener.local_addr()?);
    server
        .add_service(greeter.service())
        .serve_with_shutdown(listener, shutdown())
        .await?;
    if let Some(client) = &xds_client {
        meshwork_examples::save_snapshot(client).await;
    }
    let (calls, failed) = greeter.calls();
    eprintln!("greeter-server {id}: stopped after {calls} calls ({failed} failed on purpose)");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["greeter-server"]).unwrap();
        assert_eq!(cli.port, 50051);
        assert_eq!(cli.id, None);
        assert_eq!(cli.host, "127.0.0.1");
        assert_eq!(cli.mtls, MtlsArgs::default());
        assert!(cli.allow.is_empty());

        // `--flag=value`, the last of a repeated flag, values that start with a dash, and
        // every `--allow` in order, as the hand-written parser took them.
        let cli = Cli::try_parse_from([
            "greeter-server",
            "--port=1",
            "--port",
            "0",
            "--id",
            "-x",
            "--mtls",
            "--cert-provider",
            "p",
            "--allow",
            "spiffe://a.org/b",
            "--allow=spiffe://a.org/c",
        ])
        .unwrap();
        assert_eq!(cli.port, 0);
        assert_eq!(cli.id.as_deref(), Some("-x"));
        assert!(cli.mtls.mtls);
        assert_eq!(cli.mtls.cert_provider.as_deref(), Some("p"));
        let allow: Vec<String> = cli.allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["spiffe://a.org/b", "spiffe://a.org/c"]);
        assert!(!cli.xds);

        let cli = Cli::try_parse_from(["greeter-server", "--xds", "--csds-port", "0"]).unwrap();
        assert!(cli.xds);
        assert_eq!(cli.csds_port, Some(0));
        // xDS brings its own TLS; CSDS needs the xDS client.
        assert!(Cli::try_parse_from(["greeter-server", "--xds", "--mtls"]).is_err());
        assert!(Cli::try_parse_from(["greeter-server", "--csds-port", "0"]).is_err());
    }
}
