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
        filter_overrides: Default::default(),
    }
}

fn vhost(routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: "vh".into(),
        domains: vec!["*".into()],
        routes,
        retry_policy: None,
        filter_overrides: Default::default(),
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
    let mut router = Router::with_seed(rx, clusters, 5);
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

/// An HTTP/1.1 server that counts each request it receives (its head), then, per `reset`,
/// resets the connection with the body half read, or never answers.
async fn server_that_fails_after_receiving(reset: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                // Byte by byte to the end of the head, so that the body stays unread.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                c.fetch_add(1, Ordering::SeqCst);
                if reset {
                    // Wait for the body's first byte: closing with unread data, and no
                    // linger, makes the kernel send RST.
                    let _ = stream.read(&mut byte).await;
                    let _ = stream.set_zero_linger();
                    drop(stream);
                } else {
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    (addr, count)
}

/// The outbound stack with one route to `addr` under `retry`.
fn stack_to(
    addr: SocketAddr,
    retry: RetryPolicy,
) -> impl Service<http::Request<Full<Bytes>>, Error = BoxError> {
    let cfg = StaticConfig::new()
        .virtual_host(vhost(vec![route(
            ClusterSpecifier::Cluster("c".into()),
            Some(Duration::from_secs(30)),
            Some(retry),
        )]))
        .build()
        .unwrap();
    // With the sender gone the config never changes.
    let (_, rx) = config::channel(cfg);
    let stack = TimeoutLayer::new().layer(RetryLayer::new().layer(endpoint(addr)));
    Router::new(rx, HashMap::from([("c".to_string(), stack)]))
}

fn method_request(
    method: http::Method,
    grpc: bool,
    idempotent: bool,
) -> http::Request<Full<Bytes>> {
    // A body larger than one read, so that the resetting server leaves some unread.
    let mut req = http::Request::builder()
        .method(method)
        .uri("http://backend/pkg.Svc/Do")
        .body(Full::new(Bytes::from(vec![b'x'; 16 * 1024])))
        .unwrap();
    if grpc {
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
    }
    if idempotent {
        req.extensions_mut()
            .insert(meshwork_core::retry::Idempotent);
    }
    req
}

/// Sends `req` through a fresh stack to a fresh server; returns how many times the server
/// received it, and the call's error.
async fn runs(
    reset: bool,
    retry: RetryPolicy,
    req: http::Request<Full<Bytes>>,
) -> (usize, BoxError) {
    let (addr, count) = server_that_fails_after_receiving(reset).await;
    let mut stack = stack_to(addr, retry);
    let Err(err) = stack.ready().await.unwrap().call(req).await else {
        panic!("the server never answers");
    };
    (count.load(Ordering::SeqCst), err)
}

/// A per-try timeout leaves the request's fate unknown: it may be running on the server. A
/// `POST` (a gRPC call too) is not sent again, whatever the policy's conditions; an
/// idempotent method, or a request marked `Idempotent`, is, under `5xx`, `reset` and
/// `gateway-error` as in Envoy. A gRPC condition alone never retries a timeout.
#[tokio::test]
async fn a_request_that_timed_out_per_try_is_sent_again_only_if_idempotent() {
    use http::Method;
    let per_try = |on: RetryOn| RetryPolicy {
        retry_on: on,
        per_try_timeout: Some(Duration::from_millis(200)),
        ..retry_5xx(2)
    };
    let envoy = RetryOn::HTTP_5XX | RetryOn::RESET | RetryOn::GATEWAY_ERROR;
    for (on, method, grpc, idempotent, want) in [
        (envoy, Method::POST, false, false, 1),
        (envoy, Method::POST, true, false, 1),
        (RetryOn::UNAVAILABLE, Method::POST, true, false, 1),
        (RetryOn::HTTP_5XX, Method::GET, false, false, 3),
        (RetryOn::GATEWAY_ERROR, Method::PUT, false, false, 3),
        (RetryOn::RESET, Method::POST, true, true, 3),
    ] {
        let (n, err) = runs(
            false,
            per_try(on),
            method_request(method.clone(), grpc, idempotent),
        )
        .await;
        assert_eq!(
            n, want,
            "{method} grpc={grpc} idempotent={idempotent} {on:?}"
        );
        let timeout = err
            .downcast_ref::<TimeoutError>()
            .expect("a per-try timeout");
        assert_eq!(timeout.kind(), meshwork_core::timeout::TimeoutKind::PerTry);
    }
}

/// A connection reset after the server received the request: the same rule.
#[tokio::test]
async fn a_request_reset_after_it_was_received_is_sent_again_only_if_idempotent() {
    use http::Method;
    let reset = RetryPolicy {
        retry_on: RetryOn::RESET | RetryOn::HTTP_5XX,
        ..retry_5xx(1)
    };
    for (method, idempotent, want) in [
        (Method::POST, false, 1),
        (Method::DELETE, false, 2),
        (Method::POST, true, 2),
    ] {
        let (n, err) = runs(
            true,
            reset.clone(),
            method_request(method.clone(), false, idempotent),
        )
        .await;
        assert_eq!(n, want, "{method} idempotent={idempotent}: {err}");
    }
}
