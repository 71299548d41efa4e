//! `greeter-client --target xds:///greeter [--calls N] [--header k:v]... [--wait-secs S]
//! [--name NAME] [--json] [--csds-port PORT]` (`--help` explains each flag)
//!
//! Makes N unary `helloworld.Greeter/SayHello` calls through a `MeshChannel` and prints how
//! many each backend answered (the ID before the colon in each reply) and how many failed;
//! with `--json`, one line: `{"counts": {"A": 50, "B": 50}, "errors": 0}`. Works against any
//! helloworld server, ours or gRPC's. The xDS bootstrap comes from `GRPC_XDS_BOOTSTRAP` (or
//! `GRPC_XDS_BOOTSTRAP_CONFIG`); TLS clusters take their identity from its certificate
//! providers, as gRPC's own xDS client does. With `MESHWORK_XDS_SNAPSHOT_DIR` set, the last
//! good xDS config is kept there (written before exiting) and served when the control
//! plane is unreachable at start (meshwork's fail-static snapshot).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use meshwork_examples::args::{self, CallArgs, Error, Header, exit_code};
use meshwork_examples::helloworld::HelloRequest;
use meshwork_examples::helloworld::greeter_client::GreeterClient;
use meshwork_examples::tally::Tally;
use meshwork_grpc::core::xds::bootstrap::Bootstrap;
use meshwork_grpc::core::xds::client::XdsClient;
use meshwork_grpc::{MeshChannel, MeshChannelOptions};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};

/// Makes N unary helloworld.Greeter/SayHello calls through a meshwork MeshChannel and prints
/// how many each backend answered (the ID before the colon in each reply) and how many
/// failed.
///
/// Works against any helloworld server, ours or gRPC's. The target resolves through the xDS
/// control plane the gRPC bootstrap names; TLS clusters take their identity from its
/// certificate providers, as gRPC's own xDS client does.
#[derive(Debug, clap::Parser)]
#[command(
    name = "greeter-client",
    version,
    args_override_self = true,
    after_help = args::XDS_ENVIRONMENT
)]
struct Cli {
    /// The xDS target to call, xds:///NAME (NAME is the Listener's name).
    #[arg(long, value_name = "TARGET")]
    target: String,

    #[command(flatten)]
    call: CallArgs,

    /// The name to send in each HelloRequest.
    #[arg(long, default_value = "meshwork", allow_hyphen_values = true)]
    name: String,

    /// Serve CSDS (gRFC A40: the xDS client's view of every resource, with its status) in
    /// plaintext on 127.0.0.1:PORT while the client runs; 0 picks a free port. The address is
    /// printed on stderr as "csds: serving on ADDRESS".
    #[arg(long, value_name = "PORT")]
    csds_port: Option<u16>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut metadata = Vec::new();
    for header in &cli.call.headers {
        match grpc_metadata(header) {
            Ok(m) => metadata.push(m),
            Err(e) => Cli::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!(
                        "invalid value '{}' for '--header <KEY:VALUE>': {e}",
                        header.name
                    ),
                )
                .exit(),
        }
    }
    exit_code("greeter-client", run(cli, metadata).await)
}

/// A header as gRPC ASCII metadata, which refuses the binary metadata keys (`-bin`).
fn grpc_metadata(header: &Header) -> Result<(MetadataKey<Ascii>, MetadataValue<Ascii>), Error> {
    let key = MetadataKey::from_bytes(header.name.as_str().as_bytes())?;
    // A value parsed from a string is UTF-8.
    let value = std::str::from_utf8(header.value.as_bytes())?.parse()?;
    Ok((key, value))
}

async fn run(
    cli: Cli,
    metadata: Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>,
) -> Result<(), Error> {
    let Cli {
        target,
        call: CallArgs {
            calls, wait, json, ..
        },
        name,
        csds_port,
    } = cli;

    let bootstrap = Bootstrap::from_env()?;
    let client = XdsClient::builder(&bootstrap)?.start();
    if let Some(port) = csds_port {
        meshwork_examples::csds::serve(client.clone(), port).await?;
    }
    let options = MeshChannelOptions::new().ready_timeout(wait);
    let channel = MeshChannel::from_xds(&client, &target, options).await?;
    let mut greeter = GreeterClient::new(channel);

    let mut tally = Tally::default();
    for _ in 0..calls {
        let mut request = tonic::Request::new(HelloRequest { name: name.clone() });
        for (k, v) in &metadata {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        match greeter.say_hello(request).await {
            Ok(reply) => tally.reply(&reply.into_inner().message),
            Err(status) => tally.error(format!("{:?}: {}", status.code(), status.message())),
        }
    }
    if json {
        println!("{}", tally.to_json());
    } else {
        print!("{}", tally.to_text());
    }
    meshwork_examples::save_snapshot(&client).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["greeter-client", "--target", "xds:///g"]).unwrap();
        assert_eq!(cli.target, "xds:///g");
        assert_eq!(cli.name, "meshwork");
        assert_eq!(cli.call.calls, 10);

        let cli = Cli::try_parse_from([
            "greeter-client",
            "--target=xds:///a",
            "--target",
            "xds:///b",
            "--name",
            "-me",
            "--header=x-a: 1",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.target, "xds:///b");
        assert_eq!(cli.name, "-me");
        assert!(cli.call.json);
        let (key, value) = grpc_metadata(&cli.call.headers[0]).unwrap();
        assert_eq!((key.as_str(), value.to_str().unwrap()), ("x-a", "1"));
        let binary: Header = "x-b-bin:AAAA".parse().unwrap();
        assert!(grpc_metadata(&binary).is_err());
    }
}
