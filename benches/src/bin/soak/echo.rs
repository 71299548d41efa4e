//! The soak's echo service: `/meshwork.soak.Echo/Echo` answers with the caller's payload,
//! the backend's name and the SPIFFE ID of the SVID it serves with, so the client checks
//! every reply came back whole, from a backend of the service it meant to call.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::identity::SvidSource;
use meshwork_core::retry::Idempotent;
use tokio::net::TcpListener;
use tonic::Status;
use tonic_prost::ProstCodec;

/// The message both ways: the client sends `payload`, the backend fills in the rest.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Echo {
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) payload: Bytes,
    #[prost(string, tag = "2")]
    pub(crate) backend: String,
    #[prost(string, tag = "3")]
    pub(crate) spiffe_id: String,
}

const PATH: &str = "/meshwork.soak.Echo/Echo";

/// A payload unique to call `seq`, so an answer to another call fails the check.
pub(crate) fn payload(seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_u64(seq);
    for i in 8..64u64 {
        b.put_u8((i ^ seq) as u8);
    }
    b.freeze()
}

#[derive(Clone)]
struct Method {
    name: Arc<str>,
    source: Arc<dyn SvidSource>,
    work: Duration,
    in_flight: Arc<AtomicUsize>,
}

/// Counts a call in flight until dropped (a cancelled call included).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl tonic::server::UnaryService<Echo> for Method {
    type Response = Echo;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Echo>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<Echo>) -> Self::Future {
        let mut msg = req.into_inner();
        msg.backend = self.name.to_string();
        // The SVID this backend serves with now: after a rotation, the new one.
        msg.spiffe_id = self
            .source
            .snapshot()
            .svid
            .as_ref()
            .map(|s| s.spiffe_id().to_string())
            .unwrap_or_default();
        let work = self.work;
        let in_flight = InFlight::new(&self.in_flight);
        Box::pin(async move {
            let _in_flight = in_flight;
            // The service's own time: calls are in flight when a backend dies.
            tokio::time::sleep(work).await;
            Ok(tonic::Response::new(msg))
        })
    }
}

/// Serves the echo on `listener` over the TLS of `tls` until the runtime stops; each call
/// takes `work` and counts in `in_flight` meanwhile.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    name: String,
    source: Arc<dyn SvidSource>,
    work: Duration,
    in_flight: Arc<AtomicUsize>,
) {
    let method = Method {
        name: name.into(),
        source,
        work,
        in_flight,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, method) = (acceptor.clone(), method.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let method = method.clone();
                    async move {
                        let rsp = if req.uri().path() == PATH {
                            tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default())
                                .unary(method, req.map(tonic::body::Body::new))
                                .await
                        } else {
                            Status::unimplemented("no such method").into_http()
                        };
                        Ok::<_, Infallible>(rsp)
                    }
                });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// What came back from one call.
pub(crate) enum Outcome {
    /// The echo is whole and from a backend serving as `expected_id`.
    Ok {
        /// The backend that answered.
        backend: String,
    },
    /// The RPC failed.
    Failed(Status),
    /// The RPC succeeded with a wrong answer: another payload, or another identity.
    Wrong(String),
}

/// Calls the echo with call `seq`'s payload and checks the reply.
pub(crate) async fn call<T>(
    mut grpc: tonic::client::Grpc<T>,
    seq: u64,
    expected_id: &str,
) -> Outcome
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError>,
{
    let sent = payload(seq);
    if let Err(e) = grpc.ready().await {
        return Outcome::Failed(Status::unavailable(e.into().to_string()));
    }
    let request = Echo {
        payload: sent.clone(),
        ..Default::default()
    };
    let mut request = tonic::Request::new(request);
    // The echo is idempotent (as a method declared `idempotency_level = IDEMPOTENT` is):
    // the mesh may send it again after a reset that hid whether it ran.
    request.extensions_mut().insert(Idempotent);
    match grpc
        .unary(
            request,
            PathAndQuery::from_static(PATH),
            ProstCodec::<Echo, Echo>::default(),
        )
        .await
    {
        Err(status) => Outcome::Failed(status),
        Ok(rsp) => {
            let rsp = rsp.into_inner();
            if rsp.payload != sent {
                Outcome::Wrong(format!("backend {} echoed another payload", rsp.backend))
            } else if rsp.spiffe_id != expected_id {
                Outcome::Wrong(format!(
                    "backend {} serves as {:?}, not {expected_id}",
                    rsp.backend, rsp.spiffe_id
                ))
            } else {
                Outcome::Ok {
                    backend: rsp.backend,
                }
            }
        }
    }
}
