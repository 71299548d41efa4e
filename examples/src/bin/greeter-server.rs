//! `greeter-server --port P --id ID [--mtls] [--allow SPIFFE_ID]... [--cert-provider NAME]`
//!
//! gRPC's standard `helloworld.Greeter`, replying `"<ID>: hello <name>"`, so reference
//! clients (grpcio's, grpc-go's) and ours can call it. Plaintext by default; with `--mtls`
//! it serves SPIFFE mTLS with the identity from `SPIFFE_ENDPOINT_SOCKET` (the Workload API)
//! or from the certificate provider in `GRPC_XDS_BOOTSTRAP`, and verifies callers' SVIDs.
//! `--allow` (repeatable) sets an authorization policy: only those SPIFFE IDs may call.
//! Prints `listening on ADDR` once it accepts calls; stops gracefully on Ctrl-C or SIGTERM.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use meshwork_examples::args::{Args, Error, exit_code};
use meshwork_examples::greeter::Greeter;
use meshwork_examples::identity::svid_source;
use meshwork_grpc::MeshServer;
use meshwork_grpc::core::identity::{MtlsConfig, SpiffeId};
use meshwork_grpc::core::inbound::{AuthorizationPolicy, Principal, Rule};
use meshwork_grpc::core::xds::bootstrap::Bootstrap;

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("greeter-server", run().await)
}

async fn run() -> Result<(), Error> {
    let mut args = Args::from_env();
    let port: u16 = args.value("--port")?.unwrap_or(50051);
    let id: String = args
        .value("--id")?
        .unwrap_or_else(|| format!("greeter-{port}"));
    let host: String = args.value("--host")?.unwrap_or_else(|| "127.0.0.1".into());
    let mtls = args.switch("--mtls");
    let cert_provider: Option<String> = args.value("--cert-provider")?;
    let allow = args.values("--allow")?;
    args.finish()?;

    let greeter = Greeter::new(&id);
    let mut server = if mtls {
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
        for who in &allow {
            let id: SpiffeId = who.parse().map_err(|e| format!("--allow {who:?}: {e}"))?;
            policy = policy.allow(Rule::any().principal(Principal::Id(id)));
        }
        server = server.policy(policy);
    }
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    println!("listening on {}", listener.local_addr()?);
    server
        .add_service(greeter.service())
        .serve_with_shutdown(listener, shutdown())
        .await?;
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
