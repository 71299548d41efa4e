//! `http-client`: N GETs through a `MeshClient`, counting which backend answered. The
//! control plane is the one the gRPC bootstrap names (`GRPC_XDS_BOOTSTRAP` or
//! `GRPC_XDS_BOOTSTRAP_CONFIG`); when the bootstrap has a `default` `file_watcher`
//! certificate provider (Istio's agent writes one), its SVID is used for mTLS clusters.
//!
//! ```text
//! http-client --target http://greeter/hello --calls 100 [--header k:v]... [--json]
//! ```
//!
//! A backend is named by the text before the first `:` of its response body. Prints
//! `{"counts": {"A": 50, "B": 50}, "errors": 0}` with `--json`, a line per backend
//! otherwise; a failed call (an error or a non-2xx status) counts as an error and the
//! first is printed on stderr. Exits 0 when every call succeeded, 1 otherwise, 2 on bad
//! arguments or a bad bootstrap.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Empty};
use meshwork_http::core::identity::{FileWatcherSource, MtlsConfig};
use meshwork_http::core::xds::bootstrap::{Bootstrap, CertificateProviderConfig};
use meshwork_http::core::xds::client::XdsClient;
use meshwork_http::{MeshClient, MeshClientOptions};

struct Args {
    target: String,
    calls: usize,
    headers: Vec<(String, String)>,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let (mut target, mut calls, mut headers, mut json) = (None, 1, Vec::new(), false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--target" => target = Some(args.next().ok_or("--target needs a value")?),
            "--calls" => {
                let v = args.next().ok_or("--calls needs a value")?;
                calls = v
                    .parse()
                    .map_err(|_| format!("--calls: not a number: {v}"))?;
            }
            "--header" => {
                let v = args.next().ok_or("--header needs a value")?;
                let (k, val) = v.split_once(':').ok_or(format!("--header {v}: not k:v"))?;
                headers.push((k.trim().to_owned(), val.trim().to_owned()));
            }
            "--json" => json = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let target = target.ok_or("--target is required")?;
    Ok(Args {
        target,
        calls,
        headers,
        json,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("http-client: {e}");
            }
            eprintln!(
                "usage: http-client --target http://HOST/PATH --calls N [--header k:v]... [--json]"
            );
            return ExitCode::from(2);
        }
    };
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("http-client: {e}");
            return ExitCode::from(2);
        }
    };
    let mut counts = BTreeMap::<String, usize>::new();
    let mut errors = 0;
    for _ in 0..args.calls {
        match call(&client, &args).await {
            Ok(backend) => *counts.entry(backend).or_default() += 1,
            Err(e) => {
                if errors == 0 {
                    eprintln!("http-client: {e}");
                }
                errors += 1;
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"counts": counts, "errors": errors})
        );
    } else {
        for (backend, n) in &counts {
            println!("{backend}: {n}");
        }
        println!("errors: {errors}");
    }
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn client() -> Result<MeshClient, Box<dyn std::error::Error>> {
    let bootstrap = Bootstrap::from_env()?;
    let mut options = MeshClientOptions::new();
    if let Some(CertificateProviderConfig::FileWatcher(files)) =
        bootstrap.certificate_providers().get("default")
    {
        let source = FileWatcherSource::start(files)?;
        options = options.mtls(MtlsConfig::new(Arc::new(source)));
    }
    Ok(MeshClient::from_xds(XdsClient::start(&bootstrap)?, options))
}

/// One GET; the backend's name, or why the call failed.
async fn call(
    client: &MeshClient,
    args: &Args,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut req = http::Request::get(args.target.as_str());
    for (k, v) in &args.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let rsp = client
        .request(req.body(Empty::<bytes::Bytes>::new())?)
        .await?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(format!("{status}: {body}").into());
    }
    Ok(body.split(':').next().unwrap_or_default().trim().to_owned())
}
