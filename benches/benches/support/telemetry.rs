//! The services both telemetry measurements use (`benches/telemetry.rs` in time,
//! `examples/telemetry_ir.rs` in instructions): a gRPC request, an application that answers
//! at once with a body and `grpc-status` trailers, and one client call plus one server
//! request with their bodies read to the end.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};

/// The application's response body.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A gRPC response: a body, then `grpc-status: 0` trailers.
pub(crate) fn response() -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(b"world"))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed_unsync();
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .expect("a valid response")
}

/// A unary gRPC request.
pub(crate) fn request() -> http::Request<Full<Bytes>> {
    http::Request::post("http://greeter:50051/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("a valid request")
}

/// The application's service: answers at once.
pub(crate) fn app()
-> impl Service<http::Request<Full<Bytes>>, Response = http::Response<Body>, Error = Infallible> + Clone
{
    service_fn(|_req: http::Request<Full<Bytes>>| async { Ok::<_, Infallible>(response()) })
}

/// One client call and one server request, bodies read to their end.
pub(crate) async fn roundtrip<C, S, CB, SB>(client: &mut C, server: &mut S)
where
    C: Service<http::Request<Full<Bytes>>, Response = http::Response<CB>>,
    C::Error: std::fmt::Debug,
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<SB>>,
    S::Error: std::fmt::Debug,
    CB: http_body::Body,
    CB::Error: std::fmt::Debug,
    SB: http_body::Body,
    SB::Error: std::fmt::Debug,
{
    let rsp = client.ready().await.unwrap().call(request()).await.unwrap();
    black_box(rsp.into_body().collect().await.unwrap());
    let rsp = server.ready().await.unwrap().call(request()).await.unwrap();
    black_box(rsp.into_body().collect().await.unwrap());
}
