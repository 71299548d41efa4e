//! What meshwork-grpc's integration tests share: the `helloworld.Greeter` messages written
//! by hand (no codegen), a client call, a server-side dispatch, and static cluster configs
//! (the package-independent pieces come from `meshwork-test-support`).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::PathAndQuery;
use meshwork_core::config::StaticConfig;
use meshwork_grpc::{MeshChannel, MeshChannelOptions};
use meshwork_xds::resource::{Cluster, UpstreamTls};
use tonic::Status;
use tonic::body::Body;
use tonic_prost::ProstCodec;

// Each test file uses some of these through `use support::*`.
#[allow(unused_imports)]
pub use meshwork_test_support::cluster::{ready, upstream_tls, upstream_tls_matching};

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// One `SayHello("hi")` through `channel`; the reply's message.
pub async fn say_hello(channel: &MeshChannel) -> Result<String, Status> {
    hello(channel, "hi").await
}

/// One `SayHello(name)` through `channel`; the reply's message.
pub async fn hello(channel: &MeshChannel, name: &str) -> Result<String, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(Status::from_error)?;
    let rsp = grpc
        .unary(
            tonic::Request::new(HelloRequest { name: name.into() }),
            PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await?;
    Ok(rsp.into_inner().message)
}

/// The server side of one request: `SayHello` goes to `method`, anything else is
/// UNIMPLEMENTED.
pub async fn dispatch<M>(req: http::Request<Body>, method: M) -> http::Response<Body>
where
    M: tonic::server::UnaryService<HelloRequest, Response = HelloReply>,
{
    if req.uri().path() == SAY_HELLO {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
        grpc.unary(method, req).await
    } else {
        Status::unimplemented("no such method").into_http()
    }
}

/// An EDS cluster named `name`, round robin, with `tls` when given.
pub fn cluster(name: &str, tls: Option<UpstreamTls>) -> Arc<Cluster> {
    Arc::new(Cluster {
        tls,
        ..Cluster::eds(name)
    })
}

/// A channel that sends every call to cluster `c`, whose endpoints are `addrs`.
pub fn static_channel(
    c: Arc<Cluster>,
    addrs: &[SocketAddr],
    options: MeshChannelOptions,
) -> MeshChannel {
    let name = c.name.clone();
    let cfg = StaticConfig::new()
        .route_all_to(&name)
        .cluster(&name, ready(c, addrs))
        .build()
        .unwrap();
    MeshChannel::from_static(cfg, options)
}
