//! `http-client --target http://greeter/hello [--calls N] [--header k:v]... [--wait-secs S]
//! [--json]` (`--help` explains each flag)
//!
//! Makes N GETs through a `MeshClient` and prints how many each backend answered (the ID
//! before the colon in each response body) and how many failed (an error, or a status other
//! than 2xx); with `--json`, one line: `{"counts": {"A": 50, "B": 50}, "errors": 0}`. The
//! host is resolved as the xDS target `xds:///greeter`; the bootstrap comes from
//! `GRPC_XDS_BOOTSTRAP` (or `GRPC_XDS_BOOTSTRAP_CONFIG`), and TLS clusters take their
//! identity from its certificate providers.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use http_body_util::{BodyExt as _, Empty};
use meshwork_examples::args::{self, CallArgs, Error, exit_code};
use meshwork_examples::tally::Tally;
use meshwork_http::core::xds::ErrorChain;
use meshwork_http::{Bootstrap, MeshClient, MeshClientOptions, XdsClient};

/// Makes N GETs through a meshwork MeshClient and prints how many each backend answered
/// (the ID before the colon in each response body) and how many failed (an error, or a
/// status other than 2xx).
///
/// The URL's host resolves as an xDS target through the control plane the gRPC bootstrap
/// names; TLS clusters take their identity from its certificate providers.
#[derive(Debug, clap::Parser)]
#[command(
    name = "http-client",
    version,
    args_override_self = true,
    after_help = args::XDS_ENVIRONMENT
)]
struct Cli {
    /// The URL to GET, http://HOST/PATH; HOST is resolved as the xDS target xds:///HOST.
    #[arg(long, value_name = "URL")]
    target: http::Uri,

    #[command(flatten)]
    call: CallArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("http-client", run(Cli::parse()).await)
}

async fn run(cli: Cli) -> Result<(), Error> {
    let Cli {
        target,
        call:
            CallArgs {
                calls,
                headers,
                wait,
                json,
            },
    } = cli;
    let headers: Vec<(http::HeaderName, http::HeaderValue)> =
        headers.into_iter().map(|h| (h.name, h.value)).collect();

    let bootstrap = Bootstrap::from_env()?;
    let options = MeshClientOptions::new().ready_timeout(wait);
    let client = MeshClient::from_xds(&XdsClient::builder(&bootstrap)?.start(), options);

    let mut tally = Tally::default();
    for _ in 0..calls {
        let mut request = http::Request::get(target.clone()).body(Empty::<bytes::Bytes>::new())?;
        request.headers_mut().extend(headers.iter().cloned());
        match get(&client, request).await {
            Ok(body) => tally.reply(&body),
            Err(e) => tally.error(ErrorChain(e.as_ref()).to_string()),
        }
    }
    if json {
        println!("{}", tally.to_json());
    } else {
        print!("{}", tally.to_text());
    }
    Ok(())
}

/// The body of a 2xx response.
async fn get(
    client: &MeshClient,
    request: http::Request<Empty<bytes::Bytes>>,
) -> Result<String, Error> {
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        return Err(format!("{status}: {body}").into());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["http-client", "--target", "http://greeter/hello"]).unwrap();
        assert_eq!(cli.target, "http://greeter/hello");
        assert_eq!(cli.call.calls, 10);
        assert!(Cli::try_parse_from(["http-client", "--target", "http://a b/"]).is_err());
    }
}
