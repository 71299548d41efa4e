//! The HTTP contestants' server: `POST /echo` answers 200 with the request's body, over
//! mTLS (the same SVID and client-certificate check as the gRPC echo), HTTP/1.1 or HTTP/2
//! as ALPN chooses, on one port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The echo's path.
pub(crate) const ECHO_PATH: &str = "/echo";

/// The largest body echoed or read back (the payload is 1 KiB).
pub(crate) const MAX_BODY: usize = 64 * 1024;

fn respond(status: http::StatusCode, body: Bytes) -> http::Response<Full<Bytes>> {
    let mut rsp = http::Response::new(Full::new(body));
    *rsp.status_mut() = status;
    rsp
}

async fn echo(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    if req.method() != http::Method::POST || req.uri().path() != ECHO_PATH {
        return Ok(respond(http::StatusCode::NOT_FOUND, Bytes::new()));
    }
    Ok(
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => respond(http::StatusCode::OK, body.to_bytes()),
            Err(_) => respond(http::StatusCode::BAD_REQUEST, Bytes::new()),
        },
    )
}

/// Serves the echo on `listener` over `tls` (which must offer `h2` and `http/1.1`),
/// counting the requests answered in `served`; runs until the runtime stops.
fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, served: Arc<AtomicU64>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = TokioIo::new(tls);
                let svc = hyper::service::service_fn(|req| {
                    served.fetch_add(1, Ordering::Relaxed);
                    echo(req)
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
}

/// Binds 127.0.0.1:0 and serves; returns the address and the count of requests answered.
pub(crate) async fn start(
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<(SocketAddr, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    serve(listener, tls, served.clone());
    Ok((addr, served))
}
