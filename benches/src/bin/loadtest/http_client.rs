//! The HTTP contestants' clients: a 1 KiB `POST /echo` whose reply must be the same bytes,
//! over bare hyper-util (HTTP/1.1 or HTTP/2 over tokio-rustls mTLS, or plaintext HTTP/1.1
//! to an Envoy sidecar) or meshwork-http's `MeshClient` configured from xDS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_http::{MeshClient, MeshClientOptions};
use opentelemetry_sdk::trace::SdkTracerProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::Contestant;
use crate::client::{self, CallFuture, Caller, ClientArgs, Result};
use crate::echo::payload;
use crate::http_echo::{ECHO_PATH, MAX_BODY};

/// What must outlive the calls (the xDS client, the tracer provider).
pub(crate) type Keep = Box<dyn Send>;

/// The caller of an HTTP contestant.
pub(crate) async fn caller(args: &ClientArgs) -> Result<(Caller, Keep)> {
    match args.contestant {
        Contestant::HyperMtlsH1 | Contestant::HyperMtlsH2 => {
            let addr = args.addr.ok_or("--addr is required")?;
            let h2 = args.contestant == Contestant::HyperMtlsH2;
            let connector = MtlsConnector::new(addr, &args.certs, h2)?;
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
            let xds = client::xds_client(args)?;
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

/// `Ok` when `rsp` is a 200 whose body (read up to [`MAX_BODY`]) is call `seq`'s payload.
async fn check<B>(rsp: http::Response<B>, seq: u64) -> std::result::Result<(), String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let status = rsp.status();
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
    Ok(())
}

/// hyper-util's connector for the bare mTLS contestants: TCP, then tokio-rustls with the
/// client SVID as the client certificate and webpki's usual verification of the server
/// (whose certificate names `echo.mesh`), ALPN `h2` or `http/1.1`.
#[derive(Clone)]
struct MtlsConnector {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl MtlsConnector {
    fn new(addr: SocketAddr, certs: &std::path::Path, h2: bool) -> Result<Self> {
        let provider = meshwork_core::crypto::provider();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&client::read(certs, "ca.pem")?) {
            roots.add(c?)?;
        }
        let chain = CertificateDer::pem_slice_iter(&client::read(certs, "client.pem")?)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&client::read(certs, "client-key.pem")?)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Ok(Self {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

impl tower::Service<http::Uri> for MtlsConnector {
    type Response = TokioIo<TlsConn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsConn>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, tls) = (self.addr, self.tls.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("echo.mesh").map_err(io::Error::other)?;
            Ok(TokioIo::new(TlsConn(tls.connect(name, tcp).await?)))
        })
    }
}

/// A client TLS stream that tells hyper-util's pool whether ALPN chose HTTP/2.
struct TlsConn(tokio_rustls::client::TlsStream<TcpStream>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.0.get_ref().1.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
