//! `greeter-client --target xds:///greeter --calls N [--header k:v]... [--name NAME] [--json]`
//!
//! Makes N unary `helloworld.Greeter/SayHello` calls through a `MeshChannel` and prints how
//! many each backend answered (the ID before the colon in each reply) and how many failed;
//! with `--json`, one line: `{"counts": {"A": 50, "B": 50}, "errors": 0}`. Works against any
//! helloworld server, ours or gRPC's. The xDS bootstrap comes from `GRPC_XDS_BOOTSTRAP` (or
//! `GRPC_XDS_BOOTSTRAP_CONFIG`); TLS clusters take their identity from its certificate
//! providers, as gRPC's own xDS client does.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use meshwork_examples::args::{Args, CallArgs, Error, exit_code};
use meshwork_examples::helloworld::HelloRequest;
use meshwork_examples::helloworld::greeter_client::GreeterClient;
use meshwork_examples::tally::Tally;
use meshwork_grpc::core::xds::bootstrap::Bootstrap;
use meshwork_grpc::core::xds::client::XdsClient;
use meshwork_grpc::{MeshChannel, MeshChannelOptions};
use tonic::metadata::{MetadataKey, MetadataValue};

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("greeter-client", run().await)
}

async fn run() -> Result<(), Error> {
    let mut args = Args::from_env();
    let CallArgs {
        target,
        calls,
        wait,
        json,
        headers,
    } = CallArgs::parse(&mut args, "xds:///NAME")?;
    let name: String = args.value("--name")?.unwrap_or_else(|| "meshwork".into());
    args.finish()?;
    let mut metadata = Vec::new();
    for (k, v) in headers {
        let key: MetadataKey<_> = k.to_ascii_lowercase().parse()?;
        let value: MetadataValue<_> = v.parse()?;
        metadata.push((key, value));
    }

    let bootstrap = Bootstrap::from_env()?;
    let client = XdsClient::builder(&bootstrap)?.start();
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
    Ok(())
}
