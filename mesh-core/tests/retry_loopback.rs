//! The outbound stack (router -> timeout -> retry) against real HTTP/1.1 servers on
//! loopback: a flaky backend is hidden by retries, a weighted route splits traffic, a slow
//! backend hits the route timeout.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshwork_core::config::{
    self, ClusterSpecifier, ForwardAction, PathMatch, RetryOn, RetryPolicy, Route, RouteAction,
    RouteMatch, StaticConfig, VirtualHost, WeightedCluster,
};
use meshwork_core::retry::{RetryBody, RetryLayer};
use meshwork_core::route::{RouteError, Router};
use meshwork_core::timeout::{TimeoutError, TimeoutLayer};
use tokio::net::{TcpListener, TcpStream};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

/// Serves `respond(n)` for the n-th request (counting from 0) on a loopback port.
async fn server<F>(respond: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize) -> (u16, Duration) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let respond = Arc::new(respond);
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let respond = respond.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    let (status, delay) = respond(n);
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        tokio::time::sleep(delay).await;
                        let rsp = http::Response::builder()
                            .status(status)
                            .body(Full::new(body))
                            .unwrap();
                        Ok::<_, hyper::Error>(rsp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, count)
}

type Body = RetryBody<Full<Bytes>>;

/// A cluster with one endpoint: one HTTP/1.1 connection per call.
fn endpoint(
    addr: SocketAddr,
) -> impl Service<
    http::Request<Body>,
    Response = http::Response<Incoming>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send {
    service_fn(move |req: http::Request<Body>| async move {
        let stream = TcpStream::connect(addr).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok::<_, BoxError>(send.send_request(req).await?)
    })
}

fn retry_5xx(n: u32) -> RetryPolicy {
    RetryPolicy {
        retry_on: RetryOn::HTTP_5XX,
        num_retries: n,
        base_interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(5),
        per_try_timeout: None,
        retriable_status_codes: Vec::new(),
        avoid_previous_hosts: true,
        host_selection_max_attempts: 1,
    }
}

fn route(
    clusters: ClusterSpecifier,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
) -> Route {
    Route {
        name: "r".into(),
        matcher: RouteMatch {
            path: PathMatch::Prefix("/".into()),
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
            runtime_fraction: None,
        },
        action: RouteAction::Forward(ForwardAction {
            clusters,
            timeout,
            max_stream_duration: None,
            retry_policy: retry,
            hash_policies: Vec::new(),
        }),
    }
}

fn vhost(routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: "vh".into(),
        domains: vec!["*".into()],
        routes,
        retry_policy: None,
    }
}

fn request(body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post("http://backend/echo")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn a_flaky_backend_is_hidden_by_retries() {
    // Fails one call in three.
    let (addr, count) = server(|n| (if n % 3 == 1 { 503 } else { 200 }, Duration::ZERO)).await;
    let cfg = StaticConfig::new()
        .virtual_host(vhost(vec![route(
            ClusterSpecifier::Cluster("flaky".into()),
            Some(Duration::from_secs(10)),
            Some(retry_5xx(2)),
        )]))
        .build()
        .unwrap();
    let (_tx, rx) = config::channel(cfg);
    let stack = TimeoutLayer::new().layer(RetryLayer::new().layer(endpoint(addr)));
    let mut router = Router::new(rx, HashMap::from([("flaky".to_string(), stack)]));
    for i in 0..60 {
        let rsp = router
            .ready()
            .await
            .unwrap()
            .call(request("ping"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "call {i}");
        // The body was replayed intact on retries.
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "ping");
    }
    // 60 calls, 30 of the first 90 attempts failed and were retried.
    assert_eq!(count.load(Ordering::SeqCst), 90);
}

#[tokio::test]
async fn without_retries_the_failures_show() {
    let (addr, _) = server(|n| (if n % 3 == 1 { 503 } else { 200 }, Duration::ZERO)).await;
    let cfg = StaticConfig::new()
        .virtual_host(vhost(vec![route(
            ClusterSpecifier::Cluster("flaky".into()),
            None,
            None,
        )]))
        .build()
        .unwrap();
    let (_tx, rx) = config::channel(cfg);
    let stack = RetryLayer::new().layer(endpoint(addr));
    let mut router = Router::new(rx, HashMap::from([("flaky".to_string(), stack)]));
    let mut failed = 0;
    for _ in 0..30 {
        let rsp = router
            .ready()
            .await
            .unwrap()
            .call(request("x"))
            .await
            .unwrap();
        failed += usize::from(rsp.status() == 503);
    }
    assert_eq!(failed, 10);
}

#[tokio::test]
async fn weighted_clusters_split_real_traffic_and_timeouts_fire() {
    let (fast, fast_count) = server(|_| (200, Duration::ZERO)).await;
    let (slow, slow_count) = server(|_| (200, Duration::from_secs(30))).await;
    let cfg = StaticConfig::new()
        .virtual_host(vhost(vec![route(
            ClusterSpecifier::Weighted(vec![
                WeightedCluster {
                    name: "fast".into(),
                    weight: 3,
                },
                WeightedCluster {
                    name: "slow".into(),
                    weight: 1,
                },
            ]),
            Some(Duration::from_millis(200)),
            None,
        )]))
        .build()
        .unwrap();
    let (_tx, rx) = config::channel(cfg);
    let timeout = TimeoutLayer::new();
    let retry = RetryLayer::new();
    let clusters = HashMap::from([
        (
            "fast".to_string(),
            timeout.layer(retry.layer(endpoint(fast))),
        ),
        (
            "slow".to_string(),
            timeout.layer(retry.layer(endpoint(slow))),
        ),
    ]);
    // A fixed seed: the split is the same on every run.
    let rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(5);
    let mut router = Router::with_rng(rx, clusters, rng);
    let mut timeouts = 0;
    let calls = 40;
    let mut pending = Vec::new();
    for _ in 0..calls {
        pending.push(tokio::spawn(
            router.ready().await.unwrap().call(request("x")),
        ));
    }
    for p in pending {
        match p.await.unwrap() {
            Ok(rsp) => assert_eq!(rsp.status(), 200),
            Err(e) => {
                assert!(e.downcast_ref::<TimeoutError>().is_some(), "{e}");
                timeouts += 1;
            }
        }
    }
    assert_eq!(fast_count.load(Ordering::SeqCst) + timeouts, calls);
    assert!(slow_count.load(Ordering::SeqCst) <= timeouts);
    assert!(timeouts > 0 && timeouts < calls / 2, "{timeouts}");
}

#[tokio::test]
async fn no_route_is_a_typed_404() {
    let mut vh = vhost(vec![route(
        ClusterSpecifier::Cluster("x".into()),
        None,
        None,
    )]);
    if let PathMatch::Prefix(p) = &mut vh.routes[0].matcher.path {
        *p = "/only".into();
    }
    let (_tx, rx) = config::channel(StaticConfig::new().virtual_host(vh).build().unwrap());
    let never = service_fn(|_req: http::Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(http::Response::new(()))
    });
    let mut router = Router::new(rx, HashMap::from([("x".to_string(), never)]));
    let err = router
        .ready()
        .await
        .unwrap()
        .call(request("x"))
        .await
        .unwrap_err();
    let err = err.downcast::<RouteError>().unwrap();
    assert_eq!(err.http_status(), http::StatusCode::NOT_FOUND);
}
