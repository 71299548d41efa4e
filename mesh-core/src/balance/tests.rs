use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use meshwork_xds::resource::{
    ConsecutiveEjection, Endpoint, HealthStatus, LocalityEndpoints, OutlierDetection,
};
use tower::{Service, ServiceExt};

use super::table::tests::{cla, endpoint, locality};
use super::*;

type Svc = tower::util::BoxCloneSyncService<http::Request<()>, http::Response<()>, BoxError>;

/// Yields to the driver task until `done` holds; fails after a bounded number of turns.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

impl<S, B> Balancer<S, B> {
    /// The addresses of the current snapshot, in table order.
    fn addresses(&self) -> Vec<SocketAddr> {
        let snapshot = self.inner.published.snapshot.load();
        snapshot.table.slots.iter().map(|s| s.address).collect()
    }

    /// The calls in flight, over every endpoint.
    fn in_flight_total(&self) -> u32 {
        let snapshot = self.inner.published.snapshot.load();
        snapshot
            .table
            .slots
            .iter()
            .map(|s| s.endpoint.load.in_flight())
            .sum()
    }
}

/// Endpoints that answer with the status `status(addr)`.
fn endpoints(
    status: impl Fn(SocketAddr) -> u16 + Clone + Send + Sync + 'static,
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
    Ok(resp
        .extensions()
        .get::<ServedBy>()
        .expect("ServedBy")
        .address())
}

/// One call on a clone of `b`, for spawned callers. Boxed outside an `async` block: rustc
/// cannot prove such a block `Send` when it holds a future whose bounds involve
/// `BoxError`'s trait-object lifetime ("implementation of `From` is not general enough").
fn served_by(
    b: &Balancer<Svc, ()>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = SocketAddr> + Send>> {
    use futures_util::FutureExt as _;
    Box::pin(b.clone().oneshot(http::Request::new(())).map(|rsp| {
        rsp.unwrap()
            .extensions()
            .get::<ServedBy>()
            .expect("ServedBy")
            .address()
    }))
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
    let mut b = Balancer::builder(BalancePolicy::RoundRobin)
        .seed(1)
        .build(rx, endpoints(|_| 200));
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
    until("the update is applied", || {
        b.addresses() == [addr(1), addr(2)]
    })
    .await;
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
    until("the update is seen", || b.last_update_error().is_some()).await;
    assert_eq!(served(&mut b).await, addr(0));
    assert_eq!(
        b.last_update_error().map(|e| e.to_string()).as_deref(),
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
        let mut b = Balancer::builder(policy.clone())
            .seed(3)
            .build(rx.clone(), endpoints(|_| 200));
        for _ in 0..20 {
            let mut req = http::Request::new(());
            req.extensions_mut()
                .insert(AvoidEndpoints::from_iter([addr(0)]));
            assert_eq!(send(&mut b, req).await.unwrap(), addr(1), "{policy:?}");
        }
        // Everything avoided: still served.
        let mut req = http::Request::new(());
        req.extensions_mut()
            .insert(AvoidEndpoints::from_iter([addr(0), addr(1)]));
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
        req.extensions_mut().insert(RequestHash::new(h));
        let first = send(&mut b, req).await.unwrap();
        for _ in 0..5 {
            let mut req = http::Request::new(());
            req.extensions_mut().insert(RequestHash::new(h));
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
    assert_eq!(b.ready_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_becoming_ready_wakes_every_waiting_call() {
    let (_tx, rx) = watch::channel(one_locality(healthy(1)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(0);
    let mut mock = Some(mock);
    let new = move |_| Svc::new(mock.take().unwrap().map_err(BoxError::from));
    let b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    let mut calls: Vec<_> = (0..3)
        .map(|_| tokio_test::task::spawn(b.clone().oneshot(http::Request::new(()))))
        .collect();
    for c in &mut calls {
        assert!(c.poll().is_pending(), "nothing is ready yet");
    }
    assert_eq!(b.ready_count(), 0);
    handle.allow(3);
    until("the endpoint is published", || b.ready_count() == 1).await;
    for c in &mut calls {
        assert!(c.is_woken(), "a waiting call is woken by the publication");
        assert!(c.poll().is_pending(), "called, waiting for the response");
    }
    for _ in 0..3 {
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(http::Response::new(()));
    }
    for c in calls {
        let rsp = c.await.unwrap();
        assert_eq!(
            rsp.extensions().get::<ServedBy>(),
            Some(&ServedBy::new(addr(0)))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_ends_with_no_endpoint_when_the_set_empties() {
    let (tx, rx) = watch::channel(one_locality(healthy(1)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(0);
    let mut mock = Some(mock);
    let new = move |_| Svc::new(mock.take().unwrap().map_err(BoxError::from));
    let b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    let mut call = tokio_test::task::spawn(b.clone().oneshot(http::Request::new(())));
    assert!(call.poll().is_pending());
    tx.send(Arc::new(cla(vec![]))).unwrap();
    until("the update is applied", || b.endpoint_count() == 0).await;
    assert!(call.is_woken());
    match call.poll() {
        Poll::Ready(Err(e)) => assert!(e.is::<NoHealthyEndpoint>(), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
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
        let mut b = Balancer::builder(policy.clone())
            .outlier_detector(detector.clone())
            .seed(5)
            .build(rx, endpoints(move |a| if a == bad { 500 } else { 200 }));
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
async fn each_call_checks_its_handle_before_calling() {
    let (_tx, rx) = watch::channel(one_locality(healthy(1)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    // The mock takes one call.
    handle.allow(1);
    let mut mock = Some(mock);
    let new = move |_| Svc::new(mock.take().unwrap().map_err(BoxError::from));
    let mut b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    until("the endpoint is published", || b.ready_count() == 1).await;
    let mut first = tokio_test::task::spawn(b.call(http::Request::new(())));
    assert!(
        first.poll().is_pending(),
        "called, waiting for the response"
    );
    // The endpoint takes no more calls for now: the second call waits on its own clone of
    // the handle, without failing and without holding anything other calls need.
    let mut second = tokio_test::task::spawn(b.call(http::Request::new(())));
    assert!(second.poll().is_pending());
    handle.allow(1);
    assert!(second.is_woken());
    assert!(second.poll().is_pending(), "called");
    for _ in 0..2 {
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(http::Response::new(()));
    }
    for f in [first, second] {
        let resp = f.await.unwrap();
        assert_eq!(
            resp.extensions().get::<ServedBy>(),
            Some(&ServedBy::new(addr(0)))
        );
    }
}

/// An endpoint service whose readiness fails once `broken` is set, as a multiplexed
/// connection's sender does once the connection is gone.
#[derive(Clone)]
struct Breakable {
    broken: Arc<AtomicBool>,
    address: SocketAddr,
}

impl Service<http::Request<()>> for Breakable {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<http::Response<()>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.broken.load(Ordering::SeqCst) {
            Poll::Ready(Err(format!("connection to {} closed", self.address).into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

#[tokio::test(start_paused = true)]
async fn a_broken_handle_is_skipped_and_its_endpoint_reconnected() {
    let (_tx, rx) = watch::channel(one_locality(healthy(2)));
    // Every service made for an endpoint, by address: the first of addr(0) breaks.
    let made: Arc<Mutex<HashMap<SocketAddr, Vec<Arc<AtomicBool>>>>> = Arc::default();
    let m = made.clone();
    let new = move |address: SocketAddr| {
        let broken = Arc::new(AtomicBool::new(false));
        m.lock()
            .unwrap()
            .entry(address)
            .or_default()
            .push(broken.clone());
        Breakable { broken, address }
    };
    let mut b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    let mut seen = HashSet::new();
    for _ in 0..4 {
        seen.insert(served(&mut b).await);
    }
    assert_eq!(seen.len(), 2);
    made.lock().unwrap()[&addr(0)][0].store(true, Ordering::SeqCst);
    // Calls that pick the broken handle go on to the other endpoint: none fails.
    for _ in 0..4 {
        assert_eq!(served(&mut b).await, addr(1));
    }
    // The driver reconnects it (at once: it had been working), and calls come back.
    until("addr(0) is reconnected", || {
        made.lock().unwrap()[&addr(0)].len() == 2 && b.ready_count() == 2
    })
    .await;
    let mut seen = HashSet::new();
    for _ in 0..4 {
        seen.insert(served(&mut b).await);
    }
    assert!(seen.contains(&addr(0)), "{seen:?}");
    assert_eq!(made.lock().unwrap()[&addr(1)].len(), 1);
}

/// An endpoint service that connects (its first readiness check, the driver's, passes),
/// then is ready for a call only once `open` is set (it wakes the waiting call then, as a
/// connection's sender does when it can take a stream again); it counts the calls made.
#[derive(Clone)]
struct Gated {
    checks: Arc<AtomicUsize>,
    open: Arc<AtomicBool>,
    waiting: Arc<Mutex<Option<std::task::Waker>>>,
    calls: Arc<AtomicUsize>,
}

impl Gated {
    fn new() -> Self {
        Self {
            checks: Arc::default(),
            open: Arc::default(),
            waiting: Arc::default(),
            calls: Arc::default(),
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(w) = self.waiting.lock().unwrap().take() {
            w.wake();
        }
    }
}

impl Service<http::Request<()>> for Gated {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<http::Response<()>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.checks.fetch_add(1, Ordering::SeqCst) == 0 || self.open.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.waiting.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(http::Response::new(())))
    }
}

#[tokio::test]
async fn a_ready_endpoint_is_called_when_the_call_is_made() {
    let (_tx, rx) = watch::channel(one_locality(healthy(1)));
    let gated = Gated::new();
    gated.open.store(true, Ordering::SeqCst);
    let g = gated.clone();
    let mut b = Balancer::new(BalancePolicy::RoundRobin, rx, move |_| g.clone());
    until("the endpoint is connected", || b.ready_count() == 1).await;
    let future = b.ready().await.unwrap().call(http::Request::new(()));
    // Called in `call`: the future carries the endpoint's future, not the request.
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
    let resp = future.await.unwrap();
    assert_eq!(
        resp.extensions().get::<ServedBy>(),
        Some(&ServedBy::new(addr(0)))
    );
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_handle_not_ready_when_picked_is_called_once_it_is() {
    let (_tx, rx) = watch::channel(one_locality(healthy(1)));
    let gated = Gated::new();
    let g = gated.clone();
    let mut b = Balancer::new(BalancePolicy::RoundRobin, rx, move |_| g.clone());
    until("the endpoint is connected", || b.ready_count() == 1).await;
    let mut future = tokio_test::task::spawn(b.ready().await.unwrap().call(http::Request::new(())));
    // Checked in `call` (not ready), then at the first poll, with the call's waker: the
    // handle's wake reaches the call.
    assert!(future.poll().is_pending());
    assert_eq!(gated.calls.load(Ordering::SeqCst), 0);
    assert_eq!(b.in_flight_total(), 1);
    gated.open();
    assert!(future.is_woken());
    let resp = future.await.unwrap();
    assert_eq!(
        resp.extensions().get::<ServedBy>(),
        Some(&ServedBy::new(addr(0)))
    );
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.in_flight_total(), 0);
}

/// An endpoint service that connects (its first readiness check, the driver's, passes) and
/// then fails every call's check.
#[derive(Clone)]
struct Doomed {
    checks: Arc<AtomicUsize>,
    address: SocketAddr,
}

impl Service<http::Request<()>> for Doomed {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<http::Response<()>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.checks.fetch_add(1, Ordering::SeqCst) == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(format!("connection to {} closed", self.address).into()))
        }
    }

    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

#[tokio::test(start_paused = true)]
async fn a_handle_that_keeps_breaking_is_reconnected_with_backoff() {
    let (_tx, rx) = watch::channel(one_locality(healthy(1)));
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let new = move |address: SocketAddr| {
        m.fetch_add(1, Ordering::SeqCst);
        Doomed {
            checks: Arc::default(),
            address,
        }
    };
    let b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    let start = tokio::time::Instant::now();
    let mut failures = 0;
    for _ in 0..6 {
        // A broken handle hides the endpoint; the call waits for the reconnect, finds it
        // broken again, and gives up after a few tries with the endpoint's error.
        let e = b.clone().oneshot(http::Request::new(())).await.unwrap_err();
        if e.is::<EndpointError>() {
            failures += 1;
        }
    }
    assert_eq!(failures, 6);
    // Without backoff these 6 calls × 4 tries would have made ~24 services at once.
    let n = made.load(Ordering::SeqCst);
    assert!(n >= 3, "{n}");
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "reconnects waited: {:?}",
        start.elapsed()
    );
}

/// An endpoint service that cannot connect: its readiness fails.
#[derive(Clone)]
struct Unreachable(SocketAddr);

impl Service<http::Request<()>> for Unreachable {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<http::Response<()>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err(format!("connecting to {}: refused", self.0).into()))
    }

    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        unreachable!("never ready")
    }
}

#[tokio::test(start_paused = true)]
async fn calls_fail_at_once_while_every_endpoint_fails_to_connect_and_recover() {
    let (_tx, rx) = watch::channel(one_locality(healthy(2)));
    let reachable = Arc::new(AtomicBool::new(false));
    let r = reachable.clone();
    let new = move |a: SocketAddr| -> Svc {
        if r.load(Ordering::SeqCst) {
            endpoints(|_| 200)(a)
        } else {
            Svc::new(Unreachable(a))
        }
    };
    let b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    let e = b.clone().oneshot(http::Request::new(())).await.unwrap_err();
    let e = e.downcast::<EndpointError>().expect("an endpoint error");
    assert!([addr(0), addr(1)].contains(&e.address()));
    let source = e.into_source();
    let failed = source
        .downcast_ref::<ConnectFailed>()
        .expect("ConnectFailed");
    assert!(
        failed.error().to_string().ends_with(": refused"),
        "{failed:?}"
    );
    // The driver keeps trying with backoff; once an attempt connects, calls go through.
    reachable.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(2)).await;
    until("an endpoint reconnects", || b.ready_count() > 0).await;
    let mut b = b;
    served(&mut b).await;
}

#[tokio::test(start_paused = true)]
async fn endpoint_removal_during_calls() {
    let (tx, rx) = watch::channel(one_locality(healthy(1)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(10);
    let mut mock = Some(mock);
    let new = move |a: SocketAddr| -> Svc {
        if a == addr(0) {
            Svc::new(mock.take().unwrap().map_err(BoxError::from))
        } else {
            endpoints(|_| 200)(a)
        }
    };
    let b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    until("the endpoint is published", || b.ready_count() == 1).await;
    let in_flight = tokio::spawn(b.clone().oneshot(http::Request::new(())));
    let (_req, send) = handle.next_request().await.unwrap();
    // The endpoint leaves while a call is on it; another takes its place.
    tx.send(one_locality(vec![endpoint(1, 1, HealthStatus::Healthy)]))
        .unwrap();
    until("the update is applied", || b.addresses() == [addr(1)]).await;
    for _ in 0..3 {
        assert_eq!(served(&mut b.clone()).await, addr(1));
    }
    // The call in flight finishes on the handle it holds.
    send.send_response(http::Response::new(()));
    let rsp = in_flight.await.unwrap().unwrap();
    assert_eq!(
        rsp.extensions().get::<ServedBy>(),
        Some(&ServedBy::new(addr(0)))
    );
    assert_eq!(b.ready_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_is_exactly_even_across_concurrent_callers() {
    let (_tx, rx) = watch::channel(one_locality(healthy(3)));
    let b = Balancer::new(BalancePolicy::RoundRobin, rx, endpoints(|_| 200));
    let counts: Arc<Mutex<HashMap<SocketAddr, usize>>> = Arc::default();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                for _ in 0..300 {
                    let a = served_by(&b).await;
                    *counts.lock().unwrap().entry(a).or_default() += 1;
                }
            })
        })
        .collect();
    // A guard against a hang, not a synchronisation.
    tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::try_join_all(tasks),
    )
    .await
    .expect("every call completes")
    .unwrap();
    let counts = counts.lock().unwrap();
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n == 800), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_through_an_update_are_all_served_by_a_listed_endpoint() {
    let (tx, rx) = watch::channel(one_locality(healthy(3)));
    let b = Balancer::new(BalancePolicy::P2cPeakEwma, rx, endpoints(|_| 200));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                for _ in 0..500 {
                    seen.insert(served_by(&b).await);
                }
                seen
            })
        })
        .collect();
    // Endpoints 0-2 give way to 3-5 while the calls run.
    tx.send(one_locality(
        (3..6)
            .map(|i| endpoint(i, 1, HealthStatus::Healthy))
            .collect(),
    ))
    .unwrap();
    let all = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::try_join_all(tasks),
    )
    .await
    .expect("every call completes")
    .unwrap();
    let listed: HashSet<_> = (0..6).map(addr).collect();
    for seen in all {
        assert!(seen.is_subset(&listed), "{seen:?}");
    }
    let mut b = b;
    until("the update is applied", || {
        b.addresses() == [addr(3), addr(4), addr(5)]
    })
    .await;
    for _ in 0..10 {
        let a = served(&mut b).await;
        assert!([addr(3), addr(4), addr(5)].contains(&a), "{a}");
    }
}

/// gRPC's priority policy moves to the next priority when one is in TRANSIENT_FAILURE; so
/// does the balancer when a priority's endpoints cannot connect, and traffic comes back once
/// they do (checked against grpcio in examples/tests/grpc_differential.rs).
#[tokio::test(start_paused = true)]
async fn a_priority_that_cannot_connect_fails_over_and_comes_back() {
    let p0 = endpoint(0, 1, HealthStatus::Healthy);
    let p1 = endpoint(1, 1, HealthStatus::Healthy);
    let (_tx, rx) = watch::channel(Arc::new(cla(vec![
        locality("p0", 1, 0, vec![p0]),
        locality("p1", 1, 1, vec![p1]),
    ])));
    let p0_up = Arc::new(AtomicBool::new(false));
    let up = p0_up.clone();
    let new = move |a: SocketAddr| -> Svc {
        if a == addr(0) && !up.load(Ordering::SeqCst) {
            Svc::new(Unreachable(a))
        } else {
            endpoints(|_| 200)(a)
        }
    };
    let mut b = Balancer::new(BalancePolicy::RoundRobin, rx, new);
    for _ in 0..50 {
        assert_eq!(
            served(&mut b).await,
            addr(1),
            "priority 1 takes the traffic"
        );
    }
    // Priority 0 becomes reachable: the driver's next attempt connects, and traffic returns.
    p0_up.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(3)).await;
    until("priority 0 reconnects", || b.ready_count() == 2).await;
    for _ in 0..50 {
        assert_eq!(served(&mut b).await, addr(0), "priority 0 is back");
    }
}

/// The process's peak resident set so far (`VmHWM`), in KiB (Linux; 0 elsewhere).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A cluster may ask for A42's largest ring (8M entries) on every priority; gRPC caps a ring
/// at 4096 entries by default. Only the priority that takes traffic needs its ring.
#[tokio::test]
async fn ring_hash_asking_for_8m_entries_builds_at_most_the_cap() {
    let before = peak_rss_kib();
    let (_tx, rx) = watch::channel(Arc::new(cla(vec![
        locality(
            "p0",
            1,
            0,
            (0..3)
                .map(|i| endpoint(i, 1, HealthStatus::Healthy))
                .collect(),
        ),
        locality(
            "p1",
            1,
            1,
            (3..6)
                .map(|i| endpoint(i, 1, HealthStatus::Healthy))
                .collect(),
        ),
        locality(
            "p2",
            1,
            2,
            (6..9)
                .map(|i| endpoint(i, 1, HealthStatus::Healthy))
                .collect(),
        ),
    ])));
    let policy = BalancePolicy::RingHash {
        min_ring_size: MAX_RING_SIZE,
        max_ring_size: MAX_RING_SIZE,
    };
    let mut b = Balancer::builder(policy)
        .seed(1)
        .build(rx, endpoints(|_| 200));
    for h in 0..20u64 {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(RequestHash::new(h << 40));
        send(&mut b, req).await.unwrap();
    }
    let built = b.inner.published.snapshot.load().table.ring_entries_built();
    let after = peak_rss_kib();
    eprintln!(
        "ring entries built: {built} ({} KiB of hashes and slots); VmHWM {before} KiB -> {after} KiB",
        built * 12 / 1024
    );
    assert_eq!(
        built as u64, DEFAULT_RING_SIZE_CAP,
        "one priority's ring, capped"
    );

    // The cap is the balancer's to choose.
    let (_tx, rx) = watch::channel(one_locality(healthy(3)));
    let b: Balancer<Svc, ()> = Balancer::builder(BalancePolicy::RingHash {
        min_ring_size: 1024,
        max_ring_size: MAX_RING_SIZE,
    })
    .ring_size_cap(512)
    .build(rx, endpoints(|_| 200));
    assert_eq!(
        b.inner.published.snapshot.load().table.ring_entries_built(),
        512
    );
}

/// gRFC A42: while the endpoint a request's hash belongs to is connecting, the call waits for
/// it rather than going to the next endpoint on the ring, so a key's first call lands where
/// its next ones will.
#[tokio::test(start_paused = true)]
async fn ring_hash_waits_for_the_endpoint_of_the_key_while_it_connects() {
    let policy = BalancePolicy::RingHash {
        min_ring_size: 64,
        max_ring_size: 1024,
    };
    let set = one_locality(healthy(3));
    let key = 0x5eed_u64 << 32;
    let home = {
        let t =
            Table::<()>::build(&set, &policy, |_| Arc::new(endpoint::Endpoint::new(None))).unwrap();
        let rng = SharedRng::new(0);
        let input = PickInput {
            hash: Some(key),
            rng: &rng,
        };
        t.slots[t.pick(&input, |_| true).unwrap()].address
    };
    let (_tx, rx) = watch::channel(set);
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(0);
    let mut mock = Some(mock);
    let new = move |a: SocketAddr| -> Svc {
        if a == home {
            Svc::new(mock.take().unwrap().map_err(BoxError::from))
        } else {
            endpoints(|_| 200)(a)
        }
    };
    let b = Balancer::builder(policy).seed(1).build(rx, new);
    assert_eq!(b.ready_count(), 2, "the other endpoints are connected");
    let keyed = || {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(RequestHash::new(key));
        req
    };
    let mut first = tokio_test::task::spawn(b.clone().oneshot(keyed()));
    assert!(first.poll().is_pending(), "the key's first call waits");
    handle.allow(10);
    until("the key's endpoint connects", || b.ready_count() == 3).await;
    assert!(first.is_woken());
    assert!(
        first.poll().is_pending(),
        "called, waiting for the response"
    );
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_response(http::Response::new(()));
    let rsp = first.await.unwrap();
    assert_eq!(
        rsp.extensions().get::<ServedBy>(),
        Some(&ServedBy::new(home))
    );

    // A call without a request hash does not wait for anyone.
    let (_tx, rx) = watch::channel(one_locality(healthy(3)));
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    handle.allow(0);
    let mut mock = Some(mock);
    let new = move |a: SocketAddr| -> Svc {
        if a == home {
            Svc::new(mock.take().unwrap().map_err(BoxError::from))
        } else {
            endpoints(|_| 200)(a)
        }
    };
    let mut b = Balancer::builder(BalancePolicy::RingHash {
        min_ring_size: 64,
        max_ring_size: 1024,
    })
    .seed(1)
    .build(rx, new);
    for _ in 0..20 {
        assert_ne!(served(&mut b).await, home);
    }
}

/// A42: an endpoint failing to connect hands its keys to the next endpoint on the ring.
#[tokio::test(start_paused = true)]
async fn ring_hash_passes_a_key_on_when_its_endpoint_fails_to_connect() {
    let policy = BalancePolicy::RingHash {
        min_ring_size: 64,
        max_ring_size: 1024,
    };
    let (_tx, rx) = watch::channel(one_locality(healthy(3)));
    let down = addr(1);
    let new = move |a: SocketAddr| -> Svc {
        if a == down {
            Svc::new(Unreachable(a))
        } else {
            endpoints(|_| 200)(a)
        }
    };
    let mut b = Balancer::builder(policy).seed(1).build(rx, new);
    let mut seen = HashSet::new();
    for h in 0..64u64 {
        let mut req = http::Request::new(());
        req.extensions_mut()
            .insert(RequestHash::new(h.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        seen.insert(send(&mut b, req).await.unwrap());
    }
    assert_eq!(seen, HashSet::from([addr(0), addr(2)]));
}
