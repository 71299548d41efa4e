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
use tokio::net::TcpStream;

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

/// Serves the echo on one connection over `tls`, HTTP/2 or HTTP/1.1 as ALPN chose.
async fn serve(tcp: TcpStream, tls: tokio_rustls::TlsAcceptor, served: Arc<AtomicU64>) {
    let Ok(tls) = tls.accept(tcp).await else {
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
}

/// Serves the echo on 127.0.0.1:0 over `tls` (which must offer `h2` and `http/1.1`);
/// returns the address and the count of requests answered.
pub(crate) async fn start(
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<(SocketAddr, Arc<AtomicU64>)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    crate::echo::listen(move |tcp, served| serve(tcp, acceptor.clone(), served)).await
}
