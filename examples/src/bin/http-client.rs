//! `http-client --target http://greeter/hello --calls N [--header k:v]... [--json]`
//!
//! Makes N GETs through a `MeshClient` and prints how many each backend answered (the ID
//! before the colon in each response body) and how many failed (an error, or a status other
//! than 2xx); with `--json`, one line: `{"counts": {"A": 50, "B": 50}, "errors": 0}`. The
//! host is resolved as the xDS target `xds:///greeter`; the bootstrap comes from
//! `GRPC_XDS_BOOTSTRAP` (or `GRPC_XDS_BOOTSTRAP_CONFIG`), and TLS clusters take their
//! identity from its certificate providers.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use meshwork_examples::args::Args;
use meshwork_examples::tally::Tally;
use meshwork_http::core::xds::bootstrap::Bootstrap;
use meshwork_http::core::xds::client::XdsClient;
use meshwork_http::{MeshClient, MeshClientOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http-client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let mut args = Args::from_env();
    let target: String = args
        .value("--target")?
        .ok_or("--target http://HOST/PATH is required")?;
    let calls: u64 = args.value("--calls")?.unwrap_or(10);
    let wait: f64 = args.value("--wait-secs")?.unwrap_or(10.0);
    let json = args.switch("--json");
    let mut headers = Vec::new();
    for h in args.values("--header")? {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?}: expected key:value"))?;
        let key: http::HeaderName = k.trim().parse()?;
        let value: http::HeaderValue = v.trim().parse()?;
        headers.push((key, value));
    }
    args.finish()?;

    let bootstrap = Bootstrap::from_env()?;
    let options = MeshClientOptions::new().ready_timeout(Duration::from_secs_f64(wait));
    let client = MeshClient::from_xds(XdsClient::builder(&bootstrap)?.start(), options);

    let mut tally = Tally::default();
    for _ in 0..calls {
        let mut request = http::Request::get(target.as_str()).body(Empty::<bytes::Bytes>::new())?;
        request.headers_mut().extend(headers.iter().cloned());
        match get(&client, request).await {
            Ok(body) => tally.reply(&body),
            Err(e) => tally.error(chain(e.as_ref())),
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

/// An error and its causes, `: `-separated (the mesh's errors say what failed at the top
/// and why further down).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
