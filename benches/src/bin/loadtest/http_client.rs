//! The HTTP contestants' clients: a 1 KiB `POST /echo` whose reply must be the same bytes,
//! over bare hyper-util (HTTP/1.1 or HTTP/2 over tokio-rustls mTLS, or plaintext HTTP/1.1
//! to an Envoy sidecar) or meshwork-http's `MeshClient` configured from xDS.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshwork_core::balance::ServedBy;
use meshwork_http::{MeshClient, MeshClientOptions};
use meshwork_xds::client::XdsClient;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::Contestant;
use crate::bare_tls::MtlsConnector;
use crate::client::{self, CallFuture, Caller, ClientArgs, Result};
use crate::echo::payload;
use crate::http_echo::{ECHO_PATH, MAX_BODY};

/// What must outlive the calls (the xDS client, the tracer provider).
pub(crate) type Keep = Box<dyn Send>;

/// The caller of an HTTP contestant; a meshwork one runs on `xds`.
pub(crate) async fn caller(args: &ClientArgs, xds: Option<XdsClient>) -> Result<(Caller, Keep)> {
    match args.contestant {
        Contestant::HyperMtlsH1 | Contestant::HyperMtlsH2 => {
            let addr = args.addr.ok_or("--addr is required")?;
            let h2 = args.contestant == Contestant::HyperMtlsH2;
            let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
            let connector = MtlsConnector::new(addr, &args.certs, alpn)?;
            let client = Client::builder(TokioExecutor::new())
                .http2_only(h2)
                .build(connector);
            let uri = format!("http://echo.mesh:{}{ECHO_PATH}", addr.port());
            Ok((
                Arc::new(move |seq| post(client.clone(), &uri, seq)),
                Box::new(()),
            ))
        }
        Contestant::EnvoySidecarHttp => {
            // The app speaks plaintext HTTP/1.1 to its sidecar, as apps do.
            let addr = args.addr.ok_or("--addr is required")?;
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            let client = Client::builder(TokioExecutor::new()).build(http);
            let uri = format!("http://{addr}{ECHO_PATH}");
            Ok((
                Arc::new(move |seq| post(client.clone(), &uri, seq)),
                Box::new(()),
            ))
        }
        _ => {
            // meshwork-http-h1 / -h2: the cluster's HttpProtocolOptions pick the version.
            let xds = xds.ok_or("--xds is required")?;
            let host = args.target.as_deref().ok_or("--target is required")?;
            let traces = SdkTracerProvider::builder().build();
            let options = MeshClientOptions::new()
                .telemetry(client::telemetry(&traces, true))
                .mtls(client::mesh_identity(&args.certs)?);
            let mesh = MeshClient::from_xds(&xds, options);
            mesh.resolve(host).await?;
            let uri = format!("http://{host}{ECHO_PATH}");
            let caller: Caller = Arc::new(move |seq| {
                let mesh = mesh.clone();
                let req = request(&uri, seq);
                Box::pin(async move {
                    let rsp = mesh.request(req?).await.map_err(|e| format!("{e}"))?;
                    check(rsp, seq).await
                })
            });
            Ok((caller, Box::new((xds, traces))))
        }
    }
}

/// The `POST` of call `seq`.
fn request(uri: &str, seq: u64) -> std::result::Result<http::Request<Full<Bytes>>, String> {
    http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(payload(seq)))
        .map_err(|e| e.to_string())
}

/// A checked echo over a bare hyper-util client.
fn post<C>(client: Client<C, Full<Bytes>>, uri: &str, seq: u64) -> CallFuture
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let req = request(uri, seq);
    Box::pin(async move {
        let rsp = client.request(req?).await.map_err(|e| format!("{e:?}"))?;
        check(rsp, seq).await
    })
}

/// `Ok` when `rsp` is a 200 whose body (read up to [`MAX_BODY`]) is call `seq`'s payload,
/// with the endpoint that answered when the client says.
async fn check<B>(
    rsp: http::Response<B>,
    seq: u64,
) -> std::result::Result<Option<SocketAddr>, String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let status = rsp.status();
    let served_by = rsp.extensions().get::<ServedBy>().map(|s| s.address());
    let mut body = std::pin::pin!(rsp.into_body());
    let mut got = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if got.len() + data.len() > MAX_BODY {
                return Err(format!("a body over {MAX_BODY} bytes"));
            }
            got.extend_from_slice(&data);
        }
    }
    if status != http::StatusCode::OK {
        return Err(format!("status {status}"));
    }
    if got != payload(seq) {
        return Err("the echoed payload differs".into());
    }
    Ok(served_by)
}
