//! `MeshChannels`: the channels of one xDS client share resolved targets and clusters.

mod support;

use support::*;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_grpc::{MeshChannelOptions, MeshChannels, ResolveError};
use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::client::XdsClient;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use tokio::net::TcpListener;
use tonic::Status;

struct SayHello;

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<HelloReply>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let message = format!("{} back", req.into_inner().name);
        Box::pin(async move { Ok(tonic::Response::new(HelloReply { message })) })
    }
}

/// An h2c Greeter backend on 127.0.0.1:0 that counts the connections it accepts.
async fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let rsp = dispatch(req.map(tonic::body::Body::new), SayHello).await;
                        Ok::<_, Infallible>(rsp)
                    },
                );
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = h2.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn channels_of_one_client_share_targets_and_the_clusters_they_route_to() {
    let (addr, accepted) = counting_backend().await;
    let server = XdsTestServer::start().await.unwrap();
    // Two names of one service: two listeners, each routing to the cluster "greeter".
    let route = |name: &str, host: &str| {
        build::route_config(
            name,
            vec![build::virtual_host(
                "greeter",
                [host],
                vec![build::route_to("", "greeter")],
            )],
        )
    };
    server.set_snapshot(
        Snapshot::new()
            .listener(build::api_listener("greeter:50051", "r1"))
            .listener(build::api_listener("greeter.default:50051", "r2"))
            .route(route("r1", "greeter:50051"))
            .route(route("r2", "greeter.default:50051"))
            .cluster(build::eds_cluster("greeter"))
            .endpoints(build::endpoints("greeter", &[addr])),
    );
    let bootstrap = Bootstrap::builder()
        .node_id("meshwork-grpc-test")
        .server(XdsServer::new(server.uri()).unwrap())
        .build()
        .unwrap();
    let client = XdsClient::builder(&bootstrap)
        .unwrap()
        .does_not_exist_timeout(Duration::from_millis(500))
        .start();
    let channels = MeshChannels::new(
        &client,
        MeshChannelOptions::new().negative_ttl(Duration::from_secs(60)),
    );

    let first = channels.channel("xds:///greeter:50051").await.unwrap();
    let again = channels.channel("xds:///greeter:50051").await.unwrap();
    let alias = channels
        .channel("xds:///greeter.default:50051")
        .await
        .unwrap();
    for channel in [&first, &again, &alias, &first] {
        assert_eq!(say_hello(channel).await.unwrap(), "hi back");
    }
    assert_eq!(
        channels.targets(),
        ["xds:///greeter.default:50051", "xds:///greeter:50051"]
    );
    // One cluster stack behind all three channels: one connection to the backend.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // A target the control plane does not have fails, and keeps failing at once (the
    // negative TTL) with the same error rather than waiting for the control plane again.
    let missing = channels.channel("xds:///nope:1").await.unwrap_err();
    assert!(matches!(missing, ResolveError::Xds { .. }), "{missing:?}");
    let started = tokio::time::Instant::now();
    let again = channels.channel("xds:///nope:1").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(400), "{again:?}");
    assert_eq!(again.to_string(), missing.to_string());
}
