//! `MeshChannel` end to end: a real tonic unary service (hand-written, no codegen) on
//! loopback, called through tonic's client over the mesh channel.

mod support;

use support::*;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{MtlsConfig, StaticSource, VerifyError};
use meshwork_grpc::{MeshChannel, MeshChannelOptions, ResolveError, connect_error};
use meshwork_test_support::xds::{route_config_for, target_routes};
use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::client::{ReadyError, XdsClient};
use meshwork_xds::resource::{StringMatchKind, UpstreamTls};
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use tokio::net::TcpListener;
use tonic::Status;

/// The unary method: answers with the backend's id.
struct SayHello(String);

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<HelloReply>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let message = format!("{} from {}", req.into_inner().name, self.0);
        Box::pin(async move { Ok(tonic::Response::new(HelloReply { message })) })
    }
}

/// A Greeter backend named `id` on 127.0.0.1:0, over h2c or, with `tls`, over TLS.
async fn backend(id: &str, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let id = id.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let id = id.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let id = id.clone();
                        async move {
                            let rsp = dispatch(req.map(tonic::body::Body::new), SayHello(id));
                            Ok::<_, Infallible>(rsp.await)
                        }
                    });
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = h2.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                        if let Ok(s) = acceptor.accept(tcp).await {
                            let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn count(replies: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in replies {
        let who = r.rsplit(' ').next().unwrap().to_owned();
        *m.entry(who).or_insert(0) += 1;
    }
    m
}

#[tokio::test]
async fn static_round_robin_spreads_calls() {
    let addrs = vec![
        backend("one", None).await,
        backend("two", None).await,
        backend("three", None).await,
    ];
    let channel = static_channel(cluster("greeter", None), &addrs, MeshChannelOptions::new());
    let mut replies = Vec::new();
    for _ in 0..30 {
        replies.push(say_hello(&channel).await.unwrap());
    }
    assert_eq!(replies[0], "hi from one");
    let counts = count(&replies);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_with_the_connect_error() {
    // Bind and drop a listener: a port nothing listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let channel = static_channel(cluster("greeter", None), &[addr], MeshChannelOptions::new());
    let status = say_hello(&channel).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let ce = connect_error(&status).expect("a ConnectError in the chain");
    assert!(
        matches!(ce, meshwork_grpc::ConnectError::Tcp { .. }),
        "{ce}"
    );
}

const TARGET: &str = "greeter:50051";

fn xds_client(server: &XdsTestServer) -> XdsClient {
    let bootstrap = Bootstrap::builder()
        .node_id("meshwork-grpc-test")
        .server(XdsServer::new(server.uri()).unwrap())
        .build()
        .unwrap();
    XdsClient::builder(&bootstrap)
        .unwrap()
        .does_not_exist_timeout(Duration::from_millis(500))
        .start()
}

#[tokio::test]
async fn xds_weighted_split_70_30() {
    let a = backend("a", None).await;
    let b = backend("b", None).await;
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        target_routes(
            TARGET,
            vec![build::route_weighted("", &[("a", 70), ("b", 30)])],
        )
        .cluster(build::eds_cluster("a"))
        .cluster(build::eds_cluster("b"))
        .endpoints(build::endpoints("a", &[a]))
        .endpoints(build::endpoints("b", &[b])),
    );
    let client = xds_client(&server);
    let channel = MeshChannel::from_xds(
        &client,
        &format!("xds:///{TARGET}"),
        MeshChannelOptions::new(),
    )
    .await
    .unwrap();
    let n = 1000;
    let mut replies = Vec::new();
    for _ in 0..n {
        replies.push(say_hello(&channel).await.unwrap());
    }
    let counts = count(&replies);
    let to_a = counts.get("a").copied().unwrap_or(0);
    assert_eq!(to_a + counts.get("b").copied().unwrap_or(0), n);
    // 700 expected; the binomial standard deviation is about 14.5, so ±60 is over 4σ.
    assert!((640..=760).contains(&to_a), "{counts:?}");
}

#[tokio::test]
async fn xds_missing_target_is_a_clear_error() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(Snapshot::new());
    let client = xds_client(&server);
    let err = MeshChannel::from_xds(
        &client,
        "xds:///nothing:80",
        MeshChannelOptions::new().ready_timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap_err();
    match &err {
        ResolveError::Xds { target, source } => {
            assert_eq!(target, "xds:///nothing:80");
            assert!(matches!(source, ReadyError::Target(_)), "{source:?}");
        }
        other => panic!("{other:?}"),
    }
    let err = MeshChannel::from_xds(&client, "dns:///x", MeshChannelOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::InvalidTarget { .. }), "{err}");
}

fn upstream_tls(san: StringMatchKind) -> UpstreamTls {
    upstream_tls_matching([san])
}

#[tokio::test]
async fn mtls_with_san_matchers() {
    let ca = TestCa::new("example.org");
    let server_mtls = MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid("/ns/default/sa/greeter")),
        ca.bundles(),
    )))
    .alpn_protocols(vec![b"h2".to_vec()]);
    let server_cfg = Arc::new(server_mtls.server_config().unwrap());
    let addr = backend("secure", Some(server_cfg)).await;
    let client_mtls = MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid("/ns/default/sa/client")),
        ca.bundles(),
    )));
    let options = MeshChannelOptions::new().mtls(client_mtls);

    let good = static_channel(
        cluster(
            "greeter",
            Some(upstream_tls(StringMatchKind::Exact(
                "spiffe://example.org/ns/default/sa/greeter".into(),
            ))),
        ),
        &[addr],
        options.clone(),
    );
    assert_eq!(say_hello(&good).await.unwrap(), "hi from secure");

    let wrong = static_channel(
        cluster(
            "greeter",
            Some(upstream_tls(StringMatchKind::Exact(
                "spiffe://example.org/ns/default/sa/someone-else".into(),
            ))),
        ),
        &[addr],
        options,
    );
    let status = say_hello(&wrong).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let ce = connect_error(&status).expect("a ConnectError in the chain");
    let verify: &VerifyError = ce.verify_error().unwrap_or_else(|| panic!("{ce}"));
    match verify {
        VerifyError::Unauthorized { spiffe_id, .. } => {
            assert_eq!(
                spiffe_id.to_string(),
                "spiffe://example.org/ns/default/sa/greeter"
            );
        }
        other => panic!("{other:?}"),
    }

    // A cluster that asks for TLS on a channel with no identity fails to connect, typed.
    let no_identity = static_channel(
        cluster(
            "greeter",
            Some(upstream_tls(StringMatchKind::Prefix("spiffe://".into()))),
        ),
        &[addr],
        MeshChannelOptions::new(),
    );
    let status = say_hello(&no_identity).await.unwrap_err();
    assert!(
        matches!(
            connect_error(&status),
            Some(meshwork_grpc::ConnectError::NoIdentity { .. })
        ),
        "{status:?}"
    );
}

#[tokio::test]
async fn xds_updates_apply_to_a_live_channel() {
    let a = backend("a", None).await;
    let b = backend("b", None).await;
    let server = XdsTestServer::start().await.unwrap();
    let routes = |cluster: &str| route_config_for(TARGET, vec![build::route_to("", cluster)]);
    server.set_snapshot(
        Snapshot::new()
            .listener(build::api_listener(TARGET, "routes"))
            .route(routes("a"))
            .cluster(build::eds_cluster("a"))
            .endpoints(build::endpoints("a", &[a])),
    );
    let client = xds_client(&server);
    let channel = MeshChannel::from_xds(
        &client,
        &format!("xds:///{TARGET}"),
        MeshChannelOptions::new(),
    )
    .await
    .unwrap();
    assert_eq!(say_hello(&channel).await.unwrap(), "hi from a");

    // EDS: cluster a's endpoint moves to backend b.
    server.update(|s| {
        s.insert_endpoints(build::endpoints("a", &[b]));
    });
    let moved = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if say_hello(&channel).await.unwrap() == "hi from b" {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(moved.is_ok(), "the EDS update never reached the channel");

    // RDS + CDS: a new cluster c (backend a) and every route to it; cluster a goes away.
    server.update(|s| {
        s.insert_route(routes("c"));
        s.insert_cluster(build::eds_cluster("c"));
        s.insert_endpoints(build::endpoints("c", &[a]));
    });
    let rerouted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match say_hello(&channel).await {
                Ok(m) if m == "hi from a" => return,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert!(
        rerouted.is_ok(),
        "the route update never reached the channel"
    );
}

/// The listener is named by the bootstrap's `client_default_listener_resource_name_template`
/// (gRFC A47), while the virtual host is still chosen by the target's name.
#[tokio::test]
async fn xds_listener_name_follows_the_bootstrap_template() {
    let a = backend("a", None).await;
    let server = XdsTestServer::start().await.unwrap();
    let listener = format!("listeners.example/{TARGET}");
    server.set_snapshot(
        Snapshot::new()
            .listener(build::api_listener(&listener, "routes"))
            .route(build::route_config(
                "routes",
                vec![build::virtual_host(
                    "greeter",
                    [TARGET],
                    vec![build::route_to("", "a")],
                )],
            ))
            .cluster(build::eds_cluster("a"))
            .endpoints(build::endpoints("a", &[a])),
    );
    let bootstrap = Bootstrap::builder()
        .node_id("meshwork-grpc-template-test")
        .server(XdsServer::new(server.uri()).unwrap())
        .client_default_listener_resource_name_template("listeners.example/%s")
        .build()
        .unwrap();
    let client = XdsClient::start(&bootstrap).unwrap();
    let channel = MeshChannel::from_xds(
        &client,
        &format!("xds:///{TARGET}"),
        MeshChannelOptions::new(),
    )
    .await
    .unwrap();
    assert_eq!(say_hello(&channel).await.unwrap(), "hi from a");
    let err = MeshChannel::from_xds(
        &client,
        "xds://other.example/greeter",
        MeshChannelOptions::new(),
    )
    .await
    .unwrap_err();
    // An authority the bootstrap does not list (gRFC A47): a typed error, no server asked.
    assert!(
        matches!(
            &err,
            ResolveError::ListenerName { source, .. }
                if matches!(**source, meshwork_xds::bootstrap::BootstrapError::UnknownAuthority { .. })
        ),
        "{err}"
    );
}
