//! The echo service every contestant calls: a hand-written prost message and a tonic unary
//! method (no codegen, so no protoc), served over h2c and over SPIFFE mTLS.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::balance::ServedBy;
use tokio::net::{TcpListener, TcpStream};
use tonic::Status;
use tonic_prost::ProstCodec;

/// Request and response of `/meshwork.bench.Echo/Echo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EchoMessage {
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) payload: Bytes,
}

pub(crate) const ECHO: &str = "/meshwork.bench.Echo/Echo";

/// The payload size of every call.
pub(crate) const PAYLOAD_BYTES: usize = 1024;

/// A 1 KiB payload unique to call `seq`: the sequence number, then a pattern, so an echo of
/// another call's payload or a truncated one fails the check.
pub(crate) fn payload(seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(PAYLOAD_BYTES);
    b.put_u64(seq);
    for i in 8..PAYLOAD_BYTES {
        b.put_u8((i as u64 ^ seq) as u8);
    }
    b.freeze()
}

struct EchoMethod;

impl tonic::server::UnaryService<EchoMessage> for EchoMethod {
    type Response = EchoMessage;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<EchoMessage>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<EchoMessage>) -> Self::Future {
        let msg = req.into_inner();
        Box::pin(async move { Ok(tonic::Response::new(msg)) })
    }
}

/// Binds 127.0.0.1:0 and serves each connection accepted there with `serve_conn` (on its
/// own task, `TCP_NODELAY` set), which counts the requests it answers in the counter it is
/// given; runs until the runtime stops. Returns the address and that counter.
pub(crate) async fn listen<F, Fut>(serve_conn: F) -> std::io::Result<(SocketAddr, Arc<AtomicU64>)>
where
    F: Fn(TcpStream, Arc<AtomicU64>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_conn(tcp, counter.clone()));
        }
    });
    Ok((addr, served))
}

/// The server's answer to one request: the echo method's, or `UNIMPLEMENTED` (trailers
/// only) for any other path.
pub(crate) async fn respond(
    req: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    Ok(if req.uri().path() == ECHO {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoMessage, EchoMessage>::default());
        grpc.unary(EchoMethod, req).await
    } else {
        Status::unimplemented("no such method").into_http()
    })
}

/// Serves the echo method on one connection, over h2c or, with `tls`, over TLS.
async fn serve(tcp: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, served: Arc<AtomicU64>) {
    let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
        served.fetch_add(1, Ordering::Relaxed);
        respond(req.map(tonic::body::Body::new))
    });
    let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    match tls {
        None => {
            let _ = h2.serve_connection(TokioIo::new(tcp), svc).await;
        }
        Some(cfg) => {
            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                let _ = h2.serve_connection(TokioIo::new(s), svc).await;
            }
        }
    }
}

/// Serves the echo method on 127.0.0.1:0, over h2c or, with `tls`, over TLS; returns the
/// address and the count of requests answered.
pub(crate) async fn start(
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<(SocketAddr, Arc<AtomicU64>)> {
    listen(move |tcp, served| serve(tcp, tls.clone(), served)).await
}

/// Why a call did not count as a success.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The RPC failed.
    Status(Status),
    /// The RPC succeeded but the payload came back different.
    Mismatch,
}

/// One echo call of `seq`'s payload over `grpc`; checks the echo. The endpoint that answered
/// when the channel says (meshwork's balancer's `ServedBy`).
pub(crate) async fn call<T>(
    grpc: &mut tonic::client::Grpc<T>,
    seq: u64,
) -> Result<Option<SocketAddr>, CallError>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError>,
{
    let sent = payload(seq);
    grpc.ready()
        .await
        .map_err(|e| CallError::Status(Status::unavailable(e.into().to_string())))?;
    let rsp = grpc
        .unary(
            tonic::Request::new(EchoMessage {
                payload: sent.clone(),
            }),
            PathAndQuery::from_static(ECHO),
            ProstCodec::<EchoMessage, EchoMessage>::default(),
        )
        .await
        .map_err(CallError::Status)?;
    let served_by = rsp.extensions().get::<ServedBy>().map(|s| s.address());
    if rsp.into_inner().payload == sent {
        Ok(served_by)
    } else {
        Err(CallError::Mismatch)
    }
}
