//! Behaviour on loopback: real HTTP/2 backends (hyper) on 127.0.0.1:0 behind the balancer,
//! outlier detection and the circuit breaker. Time is paused and the test runs the detector's
//! sweeps itself, one per interval it advances (a spawned sweeper would tick whenever the
//! paused clock jumps while the runtime waits on sockets; the sweeper's own timing is
//! unit-tested in `outlier`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::balance::{BalancePolicy, Balancer, ServedBy};
use meshwork_core::breaker::{CircuitBreaker, Overloaded};
use meshwork_core::outlier::OutlierDetector;
use meshwork_core::xds::resource::{
    CircuitBreakers, ClusterLoadAssignment, FailurePercentageEjection, OutlierDetection,
};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

type Req = http::Request<Empty<Bytes>>;
type Resp = http::Response<hyper::body::Incoming>;

/// A backend answering 503 while `failing` is set, else 200; it waits for a permit of `gate`
/// (when given) before answering.
async fn backend(failing: Arc<AtomicBool>, gate: Option<Arc<Semaphore>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let failing = failing.clone();
            let gate = gate.clone();
            let svc = hyper::service::service_fn(move |_req: http::Request<_>| {
                let failing = failing.clone();
                let gate = gate.clone();
                async move {
                    if let Some(g) = gate {
                        g.acquire().await.unwrap().forget();
                    }
                    let status = if failing.load(Ordering::SeqCst) {
                        503
                    } else {
                        200
                    };
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(b"hi")))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

fn new_endpoint() -> impl FnMut(SocketAddr) -> BoxCloneSyncService<Req, Resp, BoxError> + Send {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    move |addr| {
        let client = client.clone();
        BoxCloneSyncService::new(
            client
                .map_request(move |mut req: Req| {
                    *req.uri_mut() = format!("http://{addr}/").parse().unwrap();
                    req
                })
                .map_err(BoxError::from),
        )
    }
}

fn endpoints(addrs: &[SocketAddr]) -> Arc<ClusterLoadAssignment> {
    Arc::new(ClusterLoadAssignment::from_addresses("backends", addrs))
}

async fn call<S>(svc: &mut S) -> (SocketAddr, u16)
where
    S: Service<Req, Response = Resp, Error = BoxError>,
{
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(Empty::new()))
        .await
        .unwrap();
    let served = resp.extensions().get::<ServedBy>().unwrap().address();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    (served, status)
}

#[tokio::test(start_paused = true)]
async fn a_failing_backend_is_ejected_within_the_interval_and_returns() {
    let failing = Arc::new(AtomicBool::new(false));
    let good = backend(Arc::new(AtomicBool::new(false)), None).await;
    let flaky = backend(failing.clone(), None).await;
    let config = OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(5),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 50,
        success_rate: None,
        failure_percentage: Some(FailurePercentageEjection {
            threshold: 50,
            enforcement_percentage: 100,
            minimum_hosts: 1,
            request_volume: 5,
        }),
        consecutive_5xx: None,
        consecutive_gateway_failure: None,
    };
    let detector = OutlierDetector::with_seed(config, 1);
    let (_tx, rx) = watch::channel(endpoints(&[good, flaky]));
    let mut lb = Balancer::builder(BalancePolicy::RoundRobin)
        .outlier_detector(detector.clone())
        .build(rx, new_endpoint());

    for _ in 0..10 {
        assert_eq!(call(&mut lb).await.1, 200);
    }
    failing.store(true, Ordering::SeqCst);
    let mut failures = 0;
    for _ in 0..20 {
        let (by, status) = call(&mut lb).await;
        if status == 503 {
            assert_eq!(by, flaky);
            failures += 1;
        }
    }
    assert!(failures >= 5, "{failures}");

    // Within one interval it is ejected, and every call goes to the good backend.
    tokio::time::advance(Duration::from_secs(1)).await;
    detector.sweep(tokio::time::Instant::now());
    assert_eq!(detector.ejected(), vec![flaky]);
    for _ in 0..20 {
        assert_eq!(call(&mut lb).await, (good, 200));
    }

    // After the ejection time it returns (and has recovered meanwhile).
    failing.store(false, Ordering::SeqCst);
    for _ in 0..4 {
        tokio::time::advance(Duration::from_secs(1)).await;
        detector.sweep(tokio::time::Instant::now());
        assert_eq!(detector.ejected(), vec![flaky], "still ejected");
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    detector.sweep(tokio::time::Instant::now());
    assert!(detector.ejected().is_empty());
    let mut seen_flaky = false;
    for _ in 0..10 {
        let (by, status) = call(&mut lb).await;
        assert_eq!(status, 200);
        seen_flaky |= by == flaky;
    }
    assert!(seen_flaky);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_trips_at_its_limit() {
    let gate = Arc::new(Semaphore::new(0));
    let slow = backend(Arc::new(AtomicBool::new(false)), Some(gate.clone())).await;
    let (_tx, rx) = watch::channel(endpoints(&[slow]));
    let lb = Balancer::new(BalancePolicy::default(), rx, new_endpoint());
    let mut svc = CircuitBreaker::new(
        lb,
        CircuitBreakers {
            max_requests: 2,
            max_pending_requests: None,
        },
    );
    let limits = svc.limits().clone();
    let mut held = Vec::new();
    for _ in 0..2 {
        let f = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(Empty::new()));
        held.push(tokio::spawn(f));
    }
    assert_eq!(limits.in_flight(), 2);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(Empty::new()))
        .await
        .unwrap_err();
    assert!(err.is::<Overloaded>(), "{err}");

    gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(limits.in_flight(), 0);
    gate.add_permits(1);
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
