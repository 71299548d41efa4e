use std::collections::HashSet;

use meshwork_xds::resource::{ConsecutiveEjection, FailurePercentageEjection, SuccessRateEjection};

use super::*;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1000 + i))
}

fn base() -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 100,
        success_rate: None,
        failure_percentage: None,
        consecutive_5xx: None,
        consecutive_gateway_failure: None,
    }
}

fn feed(s: &EndpointStats, ok: u32, failed: u32) {
    for _ in 0..ok {
        s.record(Outcome::Success);
    }
    for _ in 0..failed {
        s.record(Outcome::ServerError { gateway: false });
    }
}

#[test]
fn classification() {
    assert_eq!(Outcome::from_http_status(200), Outcome::Success);
    assert_eq!(Outcome::from_http_status(404), Outcome::Success);
    assert_eq!(
        Outcome::from_http_status(500),
        Outcome::ServerError { gateway: false }
    );
    assert_eq!(
        Outcome::from_http_status(503),
        Outcome::ServerError { gateway: true }
    );
    assert_eq!(
        Outcome::from_grpc_code(14),
        Outcome::ServerError { gateway: true }
    );
    assert_eq!(
        Outcome::from_grpc_code(13),
        Outcome::ServerError { gateway: false }
    );
    assert_eq!(Outcome::from_grpc_code(5), Outcome::Success); // NOT_FOUND
    let r = http::Response::builder()
        .status(200)
        .header("grpc-status", "4")
        .body(())
        .unwrap();
    assert_eq!(
        Outcome::from_response(&r),
        Outcome::ServerError { gateway: true }
    );
    let r = http::Response::builder().status(502).body(()).unwrap();
    assert!(Outcome::from_response(&r).is_failure());
}

#[tokio::test(start_paused = true)]
async fn success_rate_ejects_the_outlier_only() {
    let d = OutlierDetector::with_seed(
        OutlierDetection {
            success_rate: Some(SuccessRateEjection {
                stdev_factor: 1900,
                enforcement_percentage: 100,
                minimum_hosts: 5,
                request_volume: 100,
            }),
            ..base()
        },
        1,
    );
    let eps: Vec<_> = (0..6).map(|i| d.endpoint(addr(i))).collect();
    for (i, e) in eps.iter().enumerate() {
        if i == 5 {
            feed(e, 50, 50);
        } else {
            feed(e, 100, 0);
        }
    }
    d.sweep(Instant::now());
    assert_eq!(d.ejected(), vec![addr(5)]);

    // Too few endpoints with enough volume: no check.
    let d = OutlierDetector::with_seed(d.config().clone(), 1);
    let eps: Vec<_> = (0..6).map(|i| d.endpoint(addr(i))).collect();
    feed(&eps[0], 0, 200);
    for e in &eps[1..4] {
        feed(e, 100, 0);
    }
    d.sweep(Instant::now());
    assert!(d.ejected().is_empty());
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_threshold_and_volume() {
    let d = OutlierDetector::with_seed(
        OutlierDetection {
            failure_percentage: Some(FailurePercentageEjection {
                threshold: 85,
                enforcement_percentage: 100,
                minimum_hosts: 2,
                request_volume: 50,
            }),
            ..base()
        },
        1,
    );
    let a = d.endpoint(addr(0));
    let b = d.endpoint(addr(1));
    let c = d.endpoint(addr(2));
    feed(&a, 5, 95); // 95 % failures: ejected
    feed(&b, 20, 80); // 80 %: not over 85
    feed(&c, 0, 49); // under the volume
    d.sweep(Instant::now());
    assert_eq!(d.ejected(), vec![addr(0)]);
    assert!(a.is_ejected() && !b.is_ejected() && !c.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_with_each_ejection_and_is_capped() {
    let d = OutlierDetector::with_seed(
        OutlierDetection {
            consecutive_5xx: Some(ConsecutiveEjection {
                consecutive: 2,
                enforcement_percentage: 100,
            }),
            max_ejection_time: Duration::from_secs(60),
            ..base()
        },
        1,
    );
    let e = d.endpoint(addr(0));
    let _other = d.endpoint(addr(1));
    let step = Duration::from_secs(10);
    let mut returned_after = Vec::new();
    for _ in 0..3 {
        feed(&e, 0, 2);
        assert!(e.is_ejected());
        let mut waited = Duration::ZERO;
        while e.is_ejected() {
            tokio::time::advance(step).await;
            waited += step;
            d.sweep(Instant::now());
        }
        returned_after.push(waited.as_secs());
    }
    // 30 s, then 60 s, then 90 s capped at max(60, 30) = 60 s.
    assert_eq!(returned_after, vec![30, 60, 60]);
}

#[tokio::test(start_paused = true)]
async fn multiplier_cools_down_while_healthy() {
    let d = OutlierDetector::with_seed(
        OutlierDetection {
            consecutive_5xx: Some(ConsecutiveEjection {
                consecutive: 1,
                enforcement_percentage: 100,
            }),
            ..base()
        },
        1,
    );
    let e = d.endpoint(addr(0));
    feed(&e, 0, 1);
    tokio::time::advance(Duration::from_secs(30)).await;
    d.sweep(Instant::now());
    assert!(!e.is_ejected());
    // Ten more healthy sweeps take the multiplier back to zero, so the next ejection is short.
    for _ in 0..10 {
        d.sweep(Instant::now());
    }
    feed(&e, 0, 1);
    tokio::time::advance(Duration::from_secs(30)).await;
    d.sweep(Instant::now());
    assert!(!e.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_bounds_ejections() {
    let d = OutlierDetector::with_seed(
        OutlierDetection {
            consecutive_5xx: Some(ConsecutiveEjection {
                consecutive: 1,
                enforcement_percentage: 100,
            }),
            max_ejection_percent: 30,
            ..base()
        },
        1,
    );
    let eps: Vec<_> = (0..10).map(|i| d.endpoint(addr(i))).collect();
    for e in &eps {
        feed(e, 0, 1);
    }
    assert_eq!(d.ejected().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn consecutive_gateway_failures_count_only_gateway_errors() {
    let d = OutlierDetector::with_seed(
        OutlierDetection {
            consecutive_gateway_failure: Some(ConsecutiveEjection {
                consecutive: 3,
                enforcement_percentage: 100,
            }),
            ..base()
        },
        1,
    );
    let e = d.endpoint(addr(0));
    let _other = d.endpoint(addr(1));
    let gw = Outcome::ServerError { gateway: true };
    e.record(gw);
    e.record(gw);
    e.record(Outcome::ServerError { gateway: false }); // breaks the gateway streak
    e.record(gw);
    e.record(gw);
    assert!(!e.is_ejected());
    e.record(Outcome::Success);
    e.record(gw);
    e.record(Outcome::LocalOriginFailure); // counts as a gateway failure
    assert!(!e.is_ejected());
    e.record(gw);
    assert!(e.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn enforcement_percentage_zero_never_ejects() {
    let d = OutlierDetector::with_seed(
        OutlierDetection {
            consecutive_5xx: Some(ConsecutiveEjection {
                consecutive: 1,
                enforcement_percentage: 0,
            }),
            ..base()
        },
        1,
    );
    let e = d.endpoint(addr(0));
    for _ in 0..10 {
        feed(&e, 0, 1);
        feed(&e, 1, 0);
    }
    assert!(!e.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn sweeper_ejects_within_the_interval_and_returns_them() {
    let d = OutlierDetector::with_seed(
        OutlierDetection {
            failure_percentage: Some(FailurePercentageEjection {
                threshold: 50,
                enforcement_percentage: 100,
                minimum_hosts: 1,
                request_volume: 10,
            }),
            ..base()
        },
        1,
    );
    let task = d.spawn_sweeper();
    let e = d.endpoint(addr(0));
    let g0 = d.generation();
    feed(&e, 0, 20);
    tokio::time::sleep(Duration::from_secs(10) + Duration::from_millis(1)).await;
    assert!(e.is_ejected(), "ejected at the first sweep");
    assert_ne!(d.generation(), g0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!e.is_ejected(), "back after base_ejection_time");
    drop(d);
    // The sweeper ends once the detector is gone.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(task.is_finished());
}

#[test]
fn retain_forgets_endpoints() {
    let d = OutlierDetector::with_seed(base(), 1);
    let a = d.endpoint(addr(0));
    let _b = d.endpoint(addr(1));
    let g = d.generation();
    d.retain(&HashSet::from([addr(1)]));
    assert_ne!(d.generation(), g);
    // A forgotten endpoint comes back afresh.
    let a2 = d.endpoint(addr(0));
    assert!(!Arc::ptr_eq(&a, &a2));
    assert_eq!(a2.address(), addr(0));
}
