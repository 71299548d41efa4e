use std::time::Duration;

use futures_util::FutureExt as _;
use meshwork_xds::resource::{
    ConsecutiveEjection, Endpoint, HealthStatus, LocalityEndpoints, OutlierDetection,
};
use tower::{Service, ServiceExt};

use super::table::tests::{cla, endpoint, locality};
use super::*;

type Svc = tower::util::BoxService<http::Request<()>, http::Response<()>, BoxError>;

/// Endpoints that answer with the status `status(addr)`.
fn endpoints(
    status: impl Fn(SocketAddr) -> u16 + Clone + Send + 'static,
) -> impl FnMut(SocketAddr) -> Svc {
    move |addr| {
        let status = status.clone();
        Svc::new(tower::service_fn(move |_req: http::Request<()>| {
            let s = status(addr);
            async move { Ok::<_, BoxError>(http::Response::builder().status(s).body(()).unwrap()) }
        }))
    }
}

fn addr(i: u32) -> SocketAddr {
    endpoint(i, 1, HealthStatus::Healthy).address
}

fn one_locality(eps: Vec<Endpoint>) -> Arc<ClusterLoadAssignment> {
    Arc::new(cla(vec![locality("a", 1, 0, eps)]))
}

fn healthy(n: u32) -> Vec<Endpoint> {
    (0..n)
        .map(|i| endpoint(i, 1, HealthStatus::Healthy))
        .collect()
}

async fn send<S>(b: &mut S, req: http::Request<()>) -> Result<SocketAddr, BoxError>
where
    S: Service<http::Request<()>, Response = http::Response<()>, Error = BoxError>,
{
    let resp = b.ready().await?.call(req).await?;
    Ok(resp.extensions().get::<ServedBy>().expect("ServedBy").0)
}

async fn served<S>(b: &mut S) -> SocketAddr
where
    S: Service<http::Request<()>, Response = http::Response<()>, Error = BoxError>,
{
    send(b, http::Request::new(())).await.unwrap()
}

#[tokio::test]
async fn follows_endpoint_updates() {
    let (tx, rx) = watch::channel(one_locality(healthy(2)));
    let mut b = Balancer::new(BalancePolicy::RoundRobin, rx, endpoints(|_| 200)).with_seed(1);
    let mut seen = HashSet::new();
    for _ in 0..4 {
        seen.insert(served(&mut b).await);
    }
    assert_eq!(seen, HashSet::from([addr(0), addr(1)]));

    tx.send(one_locality(vec![
        endpoint(1, 1, HealthStatus::Healthy),
        endpoint(2, 1, HealthStatus::Healthy),
    ]))
    .unwrap();
    let mut seen = HashSet::new();
    for _ in 0..4 {
        seen.insert(served(&mut b).await);
    }
    assert_eq!(seen, HashSet::from([addr(1), addr(2)]));
    assert_eq!(b.endpoint_count(), 2);
}

#[tokio::test]
async fn a_rejected_update_keeps_the_previous_set() {
    let (tx, rx) = watch::channel(one_locality(healthy(1)));
    let mut b = Balancer::new(BalancePolicy::default(), rx, endpoints(|_| 200));
    assert_eq!(served(&mut b).await, addr(0));
    tx.send(Arc::new(cla(vec![LocalityEndpoints {
        weight: 0,
        ..locality("z", 1, 0, healthy(3))
    }])))
    .unwrap();
    assert_eq!(served(&mut b).await, addr(0));
    assert_eq!(
        b.last_update_error().map(ToString::to_string).as_deref(),
        Some("localities[0].weight: must not be zero")
    );
}

#[tokio::test]
async fn no_endpoint_fails_fast() {
    let (_tx, rx) = watch::channel(Arc::new(cla(vec![])));
    let mut b = Balancer::new(BalancePolicy::default(), rx, endpoints(|_| 200));
    let e = send(&mut b, http::Request::new(())).await.unwrap_err();
    assert!(e.is::<NoHealthyEndpoint>(), "{e}");

    let (_tx, rx) = watch::channel(one_locality(vec![endpoint(0, 1, HealthStatus::Draining)]));
    let mut b = Balancer::new(BalancePolicy::default(), rx, endpoints(|_| 200));
    let e = send(&mut b, http::Request::new(())).await.unwrap_err();
    let e = e.downcast::<NoHealthyEndpoint>().unwrap();
    assert_eq!(e.known(), 1);
}

#[tokio::test]
async fn avoided_endpoints_are_skipped_when_another_exists() {
    let (_tx, rx) = watch::channel(one_locality(healthy(2)));
    for policy in [
        BalancePolicy::P2cPeakEwma,
        BalancePolicy::RoundRobin,
        BalancePolicy::LeastRequest { choice_count: 2 },
        BalancePolicy::RingHash {
            min_ring_size: 64,
            max_ring_size: 1024,
        },
    ] {
        let mut b = Balancer::new(policy.clone(), rx.clone(), endpoints(|_| 200)).with_seed(3);
        for _ in 0..20 {
            let mut req = http::Request::new(());
            req.extensions_mut().insert(AvoidEndpoints(vec![addr(0)]));
            assert_eq!(send(&mut b, req).await.unwrap(), addr(1), "{policy:?}");
        }
        // Everything avoided: still served.
        let mut req = http::Request::new(());
        req.extensions_mut()
            .insert(AvoidEndpoints(vec![addr(0), addr(1)]));
        assert!(send(&mut b, req).await.is_ok());
    }
}

#[tokio::test]
async fn ring_hash_uses_the_request_hash() {
    let (_tx, rx) = watch::channel(one_locality(healthy(5)));
    let policy = BalancePolicy::RingHash {
        min_ring_size: 1024,
        max_ring_size: 4096,
    };
    let mut b = Balancer::new(policy, rx, endpoints(|_| 200));
    for h in [1u64, 77, 1 << 40, u64::MAX] {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(RequestHash(h));
        let first = send(&mut b, req).await.unwrap();
        for _ in 0..5 {
            let mut req = http::Request::new(());
            req.extensions_mut().insert(RequestHash(h));
            assert_eq!(send(&mut b, req).await.unwrap(), first);
        }
    }
}

#[tokio::test]
async fn endpoints_that_are_not_ready_are_not_picked() {
    let (_tx, rx) = watch::channel(one_locality(healthy(2)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(0);
    let mut mock = Some(mock);
    let new = move |a: SocketAddr| -> Svc {
        if a == addr(0) {
            Svc::new(mock.take().unwrap().map_err(BoxError::from))
        } else {
            endpoints(|_| 200)(a)
        }
    };
    let mut b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    for _ in 0..5 {
        assert_eq!(served(&mut b).await, addr(1));
    }
}

#[tokio::test]
async fn waits_while_every_endpoint_is_connecting() {
    let (_tx, rx) = watch::channel(one_locality(healthy(1)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(0);
    let mut mock = Some(mock);
    let new = move |_| Svc::new(mock.take().unwrap().map_err(BoxError::from));
    let mut b = tokio_test::task::spawn(Balancer::new(BalancePolicy::RoundRobin, rx, new));
    assert!(b.enter(|cx, mut b| b.poll_ready(cx)).is_pending());
    handle.allow(1);
    assert!(b.is_woken());
    assert!(b.enter(|cx, mut b| b.poll_ready(cx)).is_ready());
}

#[tokio::test]
async fn endpoint_errors_name_the_endpoint() {
    let (_tx, rx) = watch::channel(one_locality(healthy(1)));
    let new = |_| {
        Svc::new(tower::service_fn(|_req: http::Request<()>| async {
            Err::<http::Response<()>, BoxError>("refused".into())
        }))
    };
    let mut b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    let e = send(&mut b, http::Request::new(())).await.unwrap_err();
    let e = e.downcast::<EndpointError>().unwrap();
    assert_eq!(e.address(), addr(0));
    assert_eq!(e.into_source().to_string(), "refused");
}

fn consecutive_5xx(n: u32) -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 50,
        success_rate: None,
        failure_percentage: None,
        consecutive_5xx: Some(ConsecutiveEjection {
            consecutive: n,
            enforcement_percentage: 100,
        }),
        consecutive_gateway_failure: None,
    }
}

#[tokio::test(start_paused = true)]
async fn ejected_endpoints_are_skipped_by_every_policy_and_return() {
    for policy in [
        BalancePolicy::P2cPeakEwma,
        BalancePolicy::RoundRobin,
        BalancePolicy::LeastRequest { choice_count: 2 },
        BalancePolicy::RingHash {
            min_ring_size: 64,
            max_ring_size: 1024,
        },
    ] {
        let (_tx, rx) = watch::channel(one_locality(healthy(2)));
        let detector = OutlierDetector::with_seed(consecutive_5xx(3), 1);
        let bad = addr(0);
        let mut b = Balancer::new(
            policy.clone(),
            rx,
            endpoints(move |a| if a == bad { 500 } else { 200 }),
        )
        .with_outlier_detector(detector.clone())
        .with_seed(5);
        for _ in 0..40 {
            let _ = served(&mut b).await;
        }
        assert_eq!(detector.ejected(), vec![bad], "{policy:?}");
        for _ in 0..20 {
            assert_eq!(served(&mut b).await, addr(1), "{policy:?}");
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        detector.sweep(tokio::time::Instant::now());
        assert!(detector.ejected().is_empty());
        let mut seen = HashSet::new();
        for _ in 0..40 {
            seen.insert(served(&mut b).await);
        }
        assert!(seen.contains(&bad), "{policy:?}: it came back");
    }
}

#[test]
fn policies_from_xds() {
    assert_eq!(
        BalancePolicy::from_lb_policy(&LbPolicy::WrrLocality {
            child: Box::new(LbPolicy::LeastRequest { choice_count: 50 })
        }),
        Ok(BalancePolicy::LeastRequest { choice_count: 10 })
    );
    assert_eq!(
        BalancePolicy::from_lb_policy(&LbPolicy::RoundRobin),
        Ok(BalancePolicy::RoundRobin)
    );
    let e = BalancePolicy::from_lb_policy(&LbPolicy::PickFirst {
        shuffle_address_list: false,
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "lb_policy: unsupported load-balancing policy pick_first"
    );
    let e = BalancePolicy::from_lb_policy(&LbPolicy::RingHash {
        min_ring_size: 10,
        max_ring_size: 5,
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "lb_policy.ring_hash.max_ring_size: 5 is not between min_ring_size (10) and 8388608"
    );
    assert!(
        BalancePolicy::LeastRequest { choice_count: 1 }
            .validate()
            .is_err()
    );
    assert!(
        BalancePolicy::RingHash {
            min_ring_size: 0,
            max_ring_size: 5
        }
        .validate()
        .is_err()
    );
    assert_eq!(BalancePolicy::default(), BalancePolicy::P2cPeakEwma);
}

#[test]
fn validate_endpoints_reports_zero_weights() {
    assert!(validate_endpoints(&one_locality(healthy(2))).is_ok());
    let bad = cla(vec![locality(
        "a",
        1,
        0,
        vec![endpoint(0, 0, HealthStatus::Healthy)],
    )]);
    assert_eq!(
        validate_endpoints(&bad).unwrap_err().to_string(),
        "localities[0].endpoints[0].weight: must not be zero"
    );
}

#[tokio::test]
async fn a_called_endpoint_is_polled_again_before_its_next_call() {
    let (_tx, rx) = watch::channel(one_locality(healthy(1)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(1);
    let mut mock = Some(mock);
    let new = move |_| Svc::new(mock.take().unwrap().map_err(BoxError::from));
    let mut b = tokio_test::task::spawn(Balancer::new(BalancePolicy::RoundRobin, rx, new));
    assert!(b.enter(|cx, mut b| b.poll_ready(cx)).is_ready());
    let first = b.call(http::Request::new(()));
    // A second call without `poll_ready` must not reuse the endpoint unpolled.
    let e = b.call(http::Request::new(())).await.unwrap_err();
    assert!(e.is::<NoHealthyEndpoint>(), "{e}");
    // The mock allowed one call only: the endpoint is not ready, so neither is the balancer.
    assert!(b.enter(|cx, mut b| b.poll_ready(cx)).is_pending());
    handle.allow(1);
    assert!(b.is_woken());
    assert!(b.enter(|cx, mut b| b.poll_ready(cx)).is_ready());
    let second = b.call(http::Request::new(()));
    for _ in 0..2 {
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(http::Response::new(()));
    }
    for f in [first, second] {
        let resp = f.await.unwrap();
        assert_eq!(
            resp.extensions().get::<ServedBy>(),
            Some(&ServedBy(addr(0)))
        );
    }
}

#[tokio::test]
async fn an_endpoint_failing_after_a_call_is_dropped() {
    let (_tx, rx) = watch::channel(one_locality(healthy(2)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(1);
    let mut mock = Some(mock);
    let new = move |a: SocketAddr| -> Svc {
        if a == addr(0) {
            Svc::new(mock.take().unwrap().map_err(BoxError::from))
        } else {
            endpoints(|_| 200)(a)
        }
    };
    let mut b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    // Round robin reaches the mock within two calls; answer it, then make it fail.
    let mut mock_served = false;
    for _ in 0..2 {
        let f = b.ready().await.unwrap().call(http::Request::new(()));
        if let Some((_req, send)) = handle.next_request().now_or_never().flatten() {
            send.send_response(http::Response::new(()));
            mock_served = true;
        }
        f.await.unwrap();
        if mock_served {
            break;
        }
    }
    assert!(mock_served);
    handle.send_error("connection lost");
    for _ in 0..5 {
        assert_eq!(served(&mut b).await, addr(1));
    }
    assert_eq!(b.cache.ready_len(), 1);
    assert_eq!(b.cache.pending_len(), 0);
}

#[tokio::test]
async fn an_update_after_a_call_is_honoured_by_the_next_poll_ready() {
    let (tx, rx) = watch::channel(one_locality(healthy(1)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(0);
    let mut mock = Some(mock);
    let new = move |a: SocketAddr| -> Svc {
        if a == addr(1) {
            Svc::new(mock.take().unwrap().map_err(BoxError::from))
        } else {
            endpoints(|_| 200)(a)
        }
    };
    let mut b = tokio_test::task::spawn(Balancer::new(BalancePolicy::RoundRobin, rx, new));
    assert!(b.enter(|cx, mut b| b.poll_ready(cx)).is_ready());
    b.call(http::Request::new(())).await.unwrap();
    // The endpoint just called leaves; its replacement is still connecting.
    tx.send(one_locality(vec![endpoint(1, 1, HealthStatus::Healthy)]))
        .unwrap();
    assert!(b.enter(|cx, mut b| b.poll_ready(cx)).is_pending());
    handle.allow(1);
    assert!(b.enter(|cx, mut b| b.poll_ready(cx)).is_ready());
}
