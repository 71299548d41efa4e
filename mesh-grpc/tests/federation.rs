//! Federation (gRFC A47) end to end: a tonic channel to `xds://a/greeter` reaches the
//! backend whose endpoint came from authority `a`'s own xDS server, not the one the
//! top-level server holds under the same names, also when its route names the `xdstp`
//! cluster with the context parameters in another order than the cluster's own name.

mod support;

use support::*;

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::cluster;
use meshwork_grpc::{MeshChannel, MeshChannelOptions};
use meshwork_test_support::backend::Backend;
use meshwork_xds::bootstrap::{Authority, Bootstrap, XdsServer};
use meshwork_xds::client::XdsClient;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};

/// A Greeter backend that answers with `id`.
async fn greeter(id: &'static str) -> SocketAddr {
    let backend = Backend::start(None, move |_, req: http::Request<hyper::body::Incoming>| {
        dispatch(req.map(tonic::body::Body::new), SayHello(id))
    })
    .await;
    backend.addr
}

struct SayHello(&'static str);

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let message = format!("{} from {}", req.into_inner().name, self.0);
        std::future::ready(Ok(tonic::Response::new(HelloReply { message })))
    }
}

/// `xdstp://a/{ty}/greeter`.
fn name(ty: &str) -> String {
    format!("xdstp://a/envoy.config.{ty}/greeter")
}

/// Authority `a`'s chain for the data-plane authority `greeter`, all in `xdstp://a/`
/// names, to the endpoint `backend`: the route names the cluster `route_to`, the cluster
/// is named `cluster`.
fn chain(backend: SocketAddr, route_to: &str, cluster: &str) -> Snapshot {
    let (listener, route) = (
        name("listener.v3.Listener"),
        name("route.v3.RouteConfiguration"),
    );
    let endpoints = name("endpoint.v3.ClusterLoadAssignment");
    let mut eds = build::eds_cluster(cluster);
    // An xdstp cluster names its assignment (A47).
    eds.eds_cluster_config = Some(cluster::EdsClusterConfig {
        eds_config: Some(build::ads()),
        service_name: endpoints.clone(),
    });
    Snapshot::new()
        .listener(build::api_listener(&listener, &route))
        .route(build::route_config(
            &route,
            vec![build::virtual_host(
                "greeter",
                ["greeter"],
                vec![build::route_to("", route_to)],
            )],
        ))
        .cluster(eds)
        .endpoints(build::endpoints(&endpoints, &[backend]))
}

/// A client whose authority `a` is served by `a` and whose top-level server is `top`.
fn client(a: &XdsTestServer, top: &XdsTestServer) -> XdsClient {
    let bootstrap = Bootstrap::builder()
        .node_id("meshwork-grpc-federation-test")
        .server(XdsServer::new(top.uri()).unwrap())
        .authority(
            "a",
            Authority::new().with_server(XdsServer::new(a.uri()).unwrap()),
        )
        .build()
        .unwrap();
    XdsClient::start(&bootstrap).unwrap()
}

#[tokio::test]
async fn a_channel_to_an_authority_reaches_the_endpoint_its_server_gave() {
    let from_a = greeter("a").await;
    let from_top = greeter("top").await;
    let a = XdsTestServer::start().await.unwrap();
    let top = XdsTestServer::start().await.unwrap();
    let cluster = name("cluster.v3.Cluster");
    a.set_snapshot(chain(from_a, &cluster, &cluster));
    // The same names with another backend: a request sent to the top-level server would
    // resolve to it.
    top.set_snapshot(chain(from_top, &cluster, &cluster));
    let client = client(&a, &top);
    let channel = MeshChannel::from_xds(&client, "xds://a/greeter", MeshChannelOptions::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(say_hello(&channel).await.unwrap(), "hi from a");
    assert_eq!(top.requests(), [], "the top-level server was asked nothing");
}

/// A route may name an `xdstp` cluster with its context parameters in any order: the
/// server holds (and sends) the cluster under the canonical name, and calls routed by the
/// other spelling reach its endpoint.
#[tokio::test]
async fn a_route_may_name_a_cluster_with_its_parameters_in_any_order() {
    let backend = greeter("a").await;
    let a = XdsTestServer::start().await.unwrap();
    let top = XdsTestServer::start().await.unwrap();
    let cluster = name("cluster.v3.Cluster");
    a.set_snapshot(chain(
        backend,
        &format!("{cluster}?b=2&a=1"),
        &format!("{cluster}?a=1&b=2"),
    ));
    let client = client(&a, &top);
    let channel = MeshChannel::from_xds(&client, "xds://a/greeter", MeshChannelOptions::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(say_hello(&channel).await.unwrap(), "hi from a");
}
