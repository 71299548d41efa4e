use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use meshwork_xds::resource::{CircuitBreakers, LbPolicy};
use tower::{Service, ServiceExt};

use super::*;
use crate::balance::{NoHealthyEndpoint, ServedBy};
use crate::config::{
    ClusterConfig, ConfigSender, ForwardAction, PathMatch, Route, RouteAction, RouteMatch,
    StaticConfig, TargetConfig, VirtualHost,
};
use crate::config::{ClusterError, ClusterSpecifier, EndpointsError, GrpcCode};
use crate::timeout::TimeoutError;

type Req = http::Request<Full<Bytes>>;
type EndpointSvc = tower::util::BoxCloneSyncService<
    http::Request<RetryBody<Full<Bytes>>>,
    http::Response<String>,
    BoxError,
>;

fn cluster(name: &str, lb: LbPolicy) -> Arc<Cluster> {
    Arc::new(Cluster {
        lb_policy: lb,
        ..Cluster::eds(name)
    })
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn assignment(name: &str, ports: &[u16]) -> Arc<ClusterLoadAssignment> {
    let addrs: Vec<SocketAddr> = ports.iter().map(|&p| addr(p)).collect();
    Arc::new(ClusterLoadAssignment::from_addresses(name, &addrs))
}

fn ready(c: &Arc<Cluster>, cla: Arc<ClusterLoadAssignment>) -> ClusterState {
    ClusterState::Ready(ClusterConfig {
        cluster: c.clone(),
        children: ClusterChildren::Endpoints(Ok(cla)),
    })
}

fn route(prefix: &str, cluster: &str, timeout: Option<Duration>) -> Route {
    Route {
        name: prefix.into(),
        matcher: RouteMatch {
            path: PathMatch::Prefix(prefix.into()),
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
            runtime_fraction: None,
        },
        action: RouteAction::Forward(ForwardAction {
            clusters: ClusterSpecifier::Cluster(cluster.into()),
            timeout,
            max_stream_duration: None,
            retry_policy: None,
            hash_policies: Vec::new(),
        }),
        filter_overrides: Default::default(),
    }
}

fn config(routes: Vec<Route>, clusters: Vec<(&str, ClusterState)>) -> TargetConfig {
    let mut b = StaticConfig::new().virtual_host(VirtualHost {
        name: "vh".into(),
        domains: vec!["*".into()],
        routes,
        retry_policy: None,
        filter_overrides: Default::default(),
    });
    for (n, s) in clusters {
        b = b.cluster(n, s);
    }
    b.build().unwrap()
}

/// A connector that counts the endpoint services it made (by address) and answers 200,
/// except 503 on port 503, or never answers on port 999.
#[derive(Clone, Default)]
struct Counting {
    made: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    calls: Arc<AtomicUsize>,
}

impl Counting {
    fn made(&self, a: SocketAddr) -> usize {
        self.made.lock().unwrap().get(&a).copied().unwrap_or(0)
    }

    fn connector(
        &self,
    ) -> impl Fn(&Arc<Cluster>, SocketAddr) -> EndpointSvc + Clone + Send + Sync + use<> {
        let this = self.clone();
        move |_c: &Arc<Cluster>, a: SocketAddr| {
            *this.made.lock().unwrap().entry(a).or_default() += 1;
            let calls = this.calls.clone();
            tower::util::BoxCloneSyncService::new(tower::service_fn(
                move |_req: http::Request<RetryBody<Full<Bytes>>>| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if a.port() == 999 {
                            std::future::pending::<()>().await;
                        }
                        let mut rsp = http::Response::new(a.to_string());
                        if a.port() == 503 {
                            *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, BoxError>(rsp)
                    }
                },
            ))
        }
    }
}

fn req(path: &str) -> Req {
    http::Request::get(format!("http://svc{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn call(
    stack: &mut OutboundStack<Full<Bytes>, String>,
    path: &str,
) -> Result<SocketAddr, BoxError> {
    let rsp = stack.ready().await?.call(req(path)).await?;
    Ok(rsp
        .extensions()
        .get::<ServedBy>()
        .expect("ServedBy")
        .address())
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn setup(cfg: TargetConfig) -> (ConfigSender, Counting, OutboundStack<Full<Bytes>, String>) {
    let (tx, rx) = crate::config::channel(cfg);
    let conn = Counting::default();
    let stack = outbound(rx, conn.connector(), StackOptions::default());
    (tx, conn, stack)
}

#[tokio::test]
async fn routes_and_balances_round_robin() {
    let a = cluster("a", LbPolicy::RoundRobin);
    let cfg = config(
        vec![route("/", "a", None)],
        vec![("a", ready(&a, assignment("a", &[1, 2, 3])))],
    );
    let (_tx, _conn, mut stack) = setup(cfg);
    let mut seen = HashMap::new();
    for _ in 0..30 {
        *seen
            .entry(call(&mut stack, "/x").await.unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 10), "{seen:?}");
}

#[tokio::test]
async fn route_change_keeps_clusters_and_connections() {
    let a = cluster("a", LbPolicy::RoundRobin);
    let b = cluster("b", LbPolicy::RoundRobin);
    let clusters = || {
        vec![
            ("a", ready(&a, assignment("a", &[1]))),
            ("b", ready(&b, assignment("b", &[2]))),
        ]
    };
    let (tx, conn, mut stack) = setup(config(vec![route("/", "a", None)], clusters()));
    assert_eq!(call(&mut stack, "/x").await.unwrap(), addr(1));
    // Same clusters, different routes: everything to b now.
    tx.send(Arc::new(config(vec![route("/", "b", None)], clusters())))
        .unwrap();
    settle().await;
    assert_eq!(call(&mut stack, "/x").await.unwrap(), addr(2));
    tx.send(Arc::new(config(vec![route("/", "a", None)], clusters())))
        .unwrap();
    settle().await;
    assert_eq!(call(&mut stack, "/x").await.unwrap(), addr(1));
    // Neither balancer was rebuilt: each endpoint service was made once.
    assert_eq!(conn.made(addr(1)), 1);
    assert_eq!(conn.made(addr(2)), 1);
}

#[tokio::test]
async fn eds_change_feeds_only_that_balancer() {
    let a = cluster("a", LbPolicy::RoundRobin);
    let b = cluster("b", LbPolicy::RoundRobin);
    let routes = || vec![route("/a", "a", None), route("/b", "b", None)];
    let (tx, conn, mut stack) = setup(config(
        routes(),
        vec![
            ("a", ready(&a, assignment("a", &[1]))),
            ("b", ready(&b, assignment("b", &[2]))),
        ],
    ));
    assert_eq!(call(&mut stack, "/a").await.unwrap(), addr(1));
    assert_eq!(call(&mut stack, "/b").await.unwrap(), addr(2));
    // a's endpoints move from 1 to 3; b is untouched.
    tx.send(Arc::new(config(
        routes(),
        vec![
            ("a", ready(&a, assignment("a", &[3]))),
            ("b", ready(&b, assignment("b", &[2]))),
        ],
    )))
    .unwrap();
    settle().await;
    assert_eq!(call(&mut stack, "/a").await.unwrap(), addr(3));
    assert_eq!(call(&mut stack, "/b").await.unwrap(), addr(2));
    assert_eq!(conn.made(addr(1)), 1);
    assert_eq!(conn.made(addr(2)), 1);
    assert_eq!(conn.made(addr(3)), 1);
}

#[tokio::test]
async fn removed_clusters_are_dropped_new_and_changed_ones_built() {
    let a = cluster("a", LbPolicy::RoundRobin);
    let b = cluster("b", LbPolicy::RoundRobin);
    let (tx, conn, mut stack) = setup(config(
        vec![route("/", "a", None)],
        vec![("a", ready(&a, assignment("a", &[1])))],
    ));
    assert_eq!(stack.get_ref().cluster_names(), ["a"]);
    assert_eq!(call(&mut stack, "/x").await.unwrap(), addr(1));
    tx.send(Arc::new(config(
        vec![route("/", "b", None)],
        vec![("b", ready(&b, assignment("b", &[2])))],
    )))
    .unwrap();
    settle().await;
    assert_eq!(stack.get_ref().cluster_names(), ["b"]);
    assert_eq!(call(&mut stack, "/x").await.unwrap(), addr(2));
    // b's Cluster resource changes (least request now): its stack is rebuilt.
    let b2 = cluster("b", LbPolicy::LeastRequest { choice_count: 2 });
    tx.send(Arc::new(config(
        vec![route("/", "b", None)],
        vec![("b", ready(&b2, assignment("b", &[2])))],
    )))
    .unwrap();
    settle().await;
    assert_eq!(call(&mut stack, "/x").await.unwrap(), addr(2));
    assert_eq!(conn.made(addr(2)), 2);
}

#[tokio::test]
async fn a_config_the_follower_has_not_applied_is_applied_on_a_miss() {
    let a = cluster("a", LbPolicy::RoundRobin);
    let b = cluster("b", LbPolicy::RoundRobin);
    let (tx, _conn, mut stack) = setup(config(
        vec![route("/", "a", None)],
        vec![("a", ready(&a, assignment("a", &[1])))],
    ));
    tx.send(Arc::new(config(
        vec![route("/", "b", None)],
        vec![("b", ready(&b, assignment("b", &[2])))],
    )))
    .unwrap();
    // No yield: the follower task has not run, yet the router already routes to b.
    assert_eq!(call(&mut stack, "/x").await.unwrap(), addr(2));
}

#[tokio::test]
async fn errors_map_to_codes() {
    let a = cluster("a", LbPolicy::RoundRobin);
    let empty = cluster("empty", LbPolicy::RoundRobin);
    let agg = Arc::new(Cluster {
        kind: ClusterKind::Aggregate {
            clusters: vec!["a".into()],
        },
        ..(*cluster("agg", LbPolicy::RoundRobin)).clone()
    });
    let pf = cluster(
        "pf",
        LbPolicy::PickFirst {
            shuffle_address_list: false,
        },
    );
    let cfg = config(
        vec![
            route("/empty", "empty", None),
            route("/agg", "agg", None),
            route("/pf", "pf", None),
            route("/missing", "missing", None),
            route("/err", "err", None),
            route("/a", "a", None),
        ],
        vec![
            ("a", ready(&a, assignment("a", &[1]))),
            (
                "empty",
                ClusterState::Ready(ClusterConfig {
                    cluster: empty.clone(),
                    children: ClusterChildren::Endpoints(Err(EndpointsError::DoesNotExist {
                        name: "err".into(),
                    })),
                }),
            ),
            (
                "agg",
                ClusterState::Ready(ClusterConfig {
                    cluster: agg.clone(),
                    children: ClusterChildren::Aggregate(vec!["a".into()]),
                }),
            ),
            ("pf", ready(&pf, assignment("pf", &[1]))),
            (
                "err",
                ClusterState::Error(ClusterError::Cycle { name: "err".into() }),
            ),
        ],
    );
    let (_tx, _conn, mut stack) = setup(cfg);
    let codes = |e: &BoxError| error_codes(e.as_ref());

    let e = call(&mut stack, "/nothing").await.unwrap_err();
    assert_eq!(
        codes(&e),
        (GrpcCode::Unimplemented, http::StatusCode::NOT_FOUND)
    );

    let e = call(&mut stack, "/empty").await.unwrap_err();
    assert!(e.is::<NoHealthyEndpoint>(), "{e}");
    assert_eq!(codes(&e).0, GrpcCode::Unavailable);

    let e = call(&mut stack, "/agg").await.unwrap_err();
    let se = e.downcast_ref::<StackError>().expect("StackError");
    assert!(matches!(
        se,
        StackError::UnsupportedCluster {
            kind: "aggregate",
            ..
        }
    ));
    assert_eq!(
        codes(&e),
        (GrpcCode::Unavailable, http::StatusCode::SERVICE_UNAVAILABLE)
    );

    let e = call(&mut stack, "/pf").await.unwrap_err();
    assert!(e.to_string().contains("lb_policy"), "{e}");
    assert_eq!(codes(&e).0, GrpcCode::Unavailable);

    let e = call(&mut stack, "/missing").await.unwrap_err();
    assert_eq!(codes(&e).0, GrpcCode::Unavailable);
    let e = call(&mut stack, "/err").await.unwrap_err();
    assert_eq!(codes(&e).0, GrpcCode::Unavailable);

    let other: BoxError = "something else".into();
    assert_eq!(codes(&other).0, GrpcCode::Unknown);
}

#[tokio::test(start_paused = true)]
async fn route_timeout_applies_through_the_stack() {
    let a = cluster("a", LbPolicy::RoundRobin);
    let cfg = config(
        vec![route("/", "a", Some(Duration::from_secs(2)))],
        vec![("a", ready(&a, assignment("a", &[999])))],
    );
    let (_tx, _conn, mut stack) = setup(cfg);
    let started = tokio::time::Instant::now();
    let e = call(&mut stack, "/slow").await.unwrap_err();
    assert!(e.is::<TimeoutError>(), "{e}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(
        error_codes(e.as_ref()),
        (
            GrpcCode::DeadlineExceeded,
            http::StatusCode::GATEWAY_TIMEOUT
        )
    );
}

#[tokio::test]
async fn breaker_sheds_over_max_requests() {
    let mut a = (*cluster("a", LbPolicy::RoundRobin)).clone();
    a.circuit_breakers = CircuitBreakers {
        max_requests: 1,
        max_pending_requests: None,
    };
    let a = Arc::new(a);
    let cfg = config(
        vec![route("/", "a", None)],
        vec![("a", ready(&a, assignment("a", &[999])))],
    );
    let (_tx, _conn, stack) = setup(cfg);
    let mut first = stack.clone();
    let pending = tokio::spawn(async move { call(&mut first, "/x").await });
    settle().await;
    let mut second = stack.clone();
    let e = call(&mut second, "/x").await.unwrap_err();
    assert!(e.is::<crate::breaker::Overloaded>(), "{e}");
    assert_eq!(error_codes(e.as_ref()).0, GrpcCode::Unavailable);
    pending.abort();
}

#[tokio::test]
async fn the_follower_ends_with_the_stack() {
    let a = cluster("a", LbPolicy::RoundRobin);
    let (tx, _conn, stack) = setup(config(
        vec![route("/", "a", None)],
        vec![("a", ready(&a, assignment("a", &[1])))],
    ));
    // Router + follower task hold receivers.
    assert_eq!(tx.receiver_count(), 3);
    drop(stack);
    settle().await;
    assert_eq!(tx.receiver_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn retries_go_to_another_endpoint() {
    let a = cluster("a", LbPolicy::RoundRobin);
    let mut r = route("/", "a", None);
    if let RouteAction::Forward(fa) = &mut r.action {
        fa.retry_policy = Some(crate::config::RetryPolicy {
            retry_on: crate::config::RetryOn::HTTP_5XX,
            num_retries: 2,
            base_interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(100),
            per_try_timeout: None,
            retriable_status_codes: Vec::new(),
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
        });
    }
    let cfg = config(vec![r], vec![("a", ready(&a, assignment("a", &[503, 2])))]);
    let (_tx, conn, mut stack) = setup(cfg);
    for _ in 0..6 {
        let rsp = stack.ready().await.unwrap().call(req("/x")).await.unwrap();
        assert_eq!(rsp.status(), http::StatusCode::OK);
        assert_eq!(
            rsp.extensions().get::<ServedBy>().unwrap().address(),
            addr(2)
        );
    }
    // Round robin sent some first attempts to the failing endpoint; they were retried.
    assert!(conn.calls.load(Ordering::Relaxed) > 6);
}

#[tokio::test(start_paused = true)]
async fn outlier_detection_ejects_a_failing_endpoint() {
    let mut a = (*cluster("a", LbPolicy::RoundRobin)).clone();
    a.outlier_detection = Some(meshwork_xds::resource::OutlierDetection {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 100,
        success_rate: None,
        failure_percentage: None,
        consecutive_5xx: Some(meshwork_xds::resource::ConsecutiveEjection {
            consecutive: 2,
            enforcement_percentage: 100,
        }),
        consecutive_gateway_failure: None,
    });
    let a = Arc::new(a);
    let cfg = config(
        vec![route("/", "a", None)],
        vec![("a", ready(&a, assignment("a", &[503, 2])))],
    );
    let (_tx, _conn, mut stack) = setup(cfg);
    let mut failures = 0;
    let mut last = Vec::new();
    for _ in 0..12 {
        let rsp = stack.ready().await.unwrap().call(req("/x")).await.unwrap();
        if rsp.status() != http::StatusCode::OK {
            failures += 1;
        }
        last.push(rsp.extensions().get::<ServedBy>().unwrap().address());
    }
    assert_eq!(failures, 2, "ejected after two consecutive 5xx");
    assert!(last[6..].iter().all(|a| *a == addr(2)), "{last:?}");
}

/// A stack over `cfg` whose clusters come from (and go into) `shared`.
fn shared_set(
    shared: &SharedClusters<Full<Bytes>, String>,
    conn: &Counting,
    cfg: TargetConfig,
) -> (ConfigSender, OutboundStack<Full<Bytes>, String>) {
    let (tx, rx) = crate::config::channel(cfg);
    let (set, _) = ClusterSet::with_shared(
        rx.clone(),
        conn.connector(),
        StackOptions::default(),
        shared.clone(),
        Applier::OwnTask,
    );
    (tx, Router::new(rx, set))
}

#[tokio::test]
async fn sets_sharing_a_registry_share_their_common_clusters() {
    let shared = SharedClusters::new();
    let conn = Counting::default();
    let a = cluster("a", LbPolicy::RoundRobin);
    let b = cluster("b", LbPolicy::RoundRobin);
    let set = |cfg| shared_set(&shared, &conn, cfg);
    // Two targets routing to `a`; the second also has `b`.
    let (_tx1, mut one) = set(config(
        vec![route("/", "a", None)],
        vec![("a", ready(&a, assignment("a", &[1])))],
    ));
    let (tx2, mut two) = set(config(
        vec![route("/a", "a", None), route("/b", "b", None)],
        vec![
            ("a", ready(&a, assignment("a", &[1]))),
            ("b", ready(&b, assignment("b", &[2]))),
        ],
    ));
    assert_eq!(call(&mut one, "/x").await.unwrap(), addr(1));
    assert_eq!(call(&mut two, "/a").await.unwrap(), addr(1));
    assert_eq!(call(&mut two, "/b").await.unwrap(), addr(2));
    assert_eq!(conn.made(addr(1)), 1, "one balancer for `a`, shared");
    assert_eq!(shared.cluster_names(), ["a", "b"]);

    // The second target's `a` changes (another policy): it gets its own stack, the first
    // keeps the one it has.
    let a2 = cluster("a", LbPolicy::LeastRequest { choice_count: 2 });
    tx2.send(Arc::new(config(
        vec![route("/a", "a", None)],
        vec![("a", ready(&a2, assignment("a", &[1])))],
    )))
    .unwrap();
    settle().await;
    assert_eq!(call(&mut two, "/a").await.unwrap(), addr(1));
    assert_eq!(call(&mut one, "/x").await.unwrap(), addr(1));
    assert_eq!(
        conn.made(addr(1)),
        2,
        "a second stack for the changed resource"
    );
    assert_eq!(shared.cluster_names(), ["a"], "`b` went with its last user");

    // And back to the first resource: it finds the stack the first target still uses,
    // rather than a third one.
    tx2.send(Arc::new(config(
        vec![route("/a", "a", None)],
        vec![("a", ready(&a, assignment("a", &[1])))],
    )))
    .unwrap();
    settle().await;
    assert_eq!(call(&mut two, "/a").await.unwrap(), addr(1));
    assert_eq!(
        conn.made(addr(1)),
        2,
        "the shared stack again, not a new one"
    );

    // Gone with their sets.
    drop((one, two, tx2));
    settle().await;
    assert!(shared.cluster_names().is_empty());
}

#[tokio::test]
async fn a_shared_cluster_follows_one_sets_endpoints_at_a_time() {
    let shared = SharedClusters::new();
    let conn = Counting::default();
    let a = cluster("a", LbPolicy::RoundRobin);
    let b = cluster("b", LbPolicy::RoundRobin);
    let to_a = |ports: &[u16]| {
        config(
            vec![route("/", "a", None)],
            vec![("a", ready(&a, assignment("a", ports)))],
        )
    };
    let set = |cfg| shared_set(&shared, &conn, cfg);
    let (tx1, mut one) = set(to_a(&[1]));
    let (tx2, mut two) = set(to_a(&[1]));
    assert_eq!(call(&mut two, "/x").await.unwrap(), addr(1));

    // The first set (which built the cluster) moves it to endpoint 2, for both.
    tx1.send(Arc::new(to_a(&[2]))).unwrap();
    settle().await;
    assert_eq!(call(&mut one, "/x").await.unwrap(), addr(2));
    assert_eq!(call(&mut two, "/x").await.unwrap(), addr(2));

    // The second applies an older update late: its endpoints do not go back.
    tx2.send(Arc::new(to_a(&[1]))).unwrap();
    settle().await;
    assert_eq!(call(&mut two, "/x").await.unwrap(), addr(2));
    assert_eq!(call(&mut one, "/x").await.unwrap(), addr(2));

    // Once the first no longer routes to `a`, the second feeds it.
    tx1.send(Arc::new(config(
        vec![route("/", "b", None)],
        vec![("b", ready(&b, assignment("b", &[5])))],
    )))
    .unwrap();
    settle().await;
    assert_eq!(call(&mut one, "/x").await.unwrap(), addr(5));
    tx2.send(Arc::new(to_a(&[3]))).unwrap();
    settle().await;
    assert_eq!(call(&mut two, "/x").await.unwrap(), addr(3));
}

/// How many of `n` calls do not finish within a second (paused time): the ones sent to the
/// endpoint on port 999, which never answers.
async fn stuck_calls(stack: &mut OutboundStack<Full<Bytes>, String>, n: usize) -> usize {
    let mut stuck = 0;
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(1), call(stack, "/")).await {
            Ok(served) => assert_eq!(served.unwrap(), addr(1)),
            Err(_) => stuck += 1,
        }
    }
    stuck
}

#[tokio::test(start_paused = true)]
async fn clusters_that_name_no_policy_take_the_default_balancer() {
    // One endpoint never answers. Round robin sends it every other call; P2C peak-EWMA
    // prefers the endpoint that answers (lower latency estimate) once it has answered once.
    let cfg = |lb: LbPolicy| {
        let c = cluster("a", lb);
        config(
            vec![route("/", "a", None)],
            vec![("a", ready(&c, assignment("a", &[999, 1])))],
        )
    };
    let p2c = || {
        StackOptions::default()
            .default_balancer(BalancePolicy::P2cPeakEwma)
            .unwrap()
    };
    let build = |cfg: TargetConfig, options: StackOptions| {
        let (tx, rx) = crate::config::channel(cfg);
        std::mem::forget(tx);
        outbound(rx, Counting::default().connector(), options)
    };

    // No policy named, no default chosen: round robin, as gRPC.
    let mut stack = build(cfg(LbPolicy::Unspecified), StackOptions::default());
    assert_eq!(stuck_calls(&mut stack, 20).await, 10);

    // No policy named, P2C chosen by the application.
    let mut stack = build(cfg(LbPolicy::Unspecified), p2c());
    let n = stuck_calls(&mut stack, 20).await;
    assert!(n <= 1, "{n}");

    // A named policy wins over the application's default.
    let mut stack = build(cfg(LbPolicy::RoundRobin), p2c());
    assert_eq!(stuck_calls(&mut stack, 20).await, 10);

    // P2C named by the control plane (the A52 custom policy).
    let mut stack = build(cfg(LbPolicy::PeakEwma), StackOptions::default());
    assert!(stuck_calls(&mut stack, 20).await <= 1);

    // A default with parameters out of range is refused.
    assert!(
        StackOptions::default()
            .default_balancer(BalancePolicy::LeastRequest { choice_count: 1 })
            .is_err()
    );
}

/// A stand-in for a cluster's stack: not ready at its first readiness check (it wakes its
/// caller at once), or failing it; it counts the calls made.
#[derive(Clone)]
struct Hesitant {
    checks: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    fail: bool,
}

impl Hesitant {
    fn new(fail: bool) -> Self {
        Self {
            checks: Arc::default(),
            calls: Arc::default(),
            fail,
        }
    }
}

impl Service<Req> for Hesitant {
    type Response = ClusterResponse<String>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<ClusterResponse<String>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.fail {
            return Poll::Ready(Err("the stack is broken".into()));
        }
        if self.checks.fetch_add(1, Ordering::SeqCst) == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let body = TimeoutBody::new(TelemetryBody::new("ok".to_string(), None), None);
        std::future::ready(Ok(http::Response::new(body)))
    }
}

#[tokio::test]
async fn a_cluster_stack_not_ready_at_once_is_called_once_it_is() {
    let stack = Hesitant::new(false);
    let future = ClusterCall::call(&stack, req("/"));
    // The check in `call` found it not ready: nothing called yet.
    assert_eq!(stack.calls.load(Ordering::SeqCst), 0);
    let rsp = future.await.unwrap();
    assert_eq!(rsp.status(), http::StatusCode::OK);
    assert_eq!(stack.calls.load(Ordering::SeqCst), 1);
    assert_eq!(stack.checks.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_ready_cluster_stack_is_called_when_the_call_is_made() {
    let stack = Hesitant::new(false);
    // Ready from its second check on (the first one here is spent).
    stack.checks.store(1, Ordering::SeqCst);
    let future = ClusterCall::call(&stack, req("/"));
    assert_eq!(stack.calls.load(Ordering::SeqCst), 1);
    assert!(future.await.is_ok());
    assert_eq!(stack.checks.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cluster_stack_whose_readiness_fails_fails_the_call() {
    let stack = Hesitant::new(true);
    let e = ClusterCall::call(&stack, req("/")).await.unwrap_err();
    assert_eq!(e.to_string(), "the stack is broken");
    assert_eq!(stack.calls.load(Ordering::SeqCst), 0);
}

/// A call may be made outside the runtime and its future run inside it: nothing a call
/// makes at once (the balancer picks and calls a ready endpoint in `call`) needs the
/// runtime; the route timeout's timer is made at the first poll.
#[test]
fn a_call_made_outside_the_runtime_runs_inside_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a = cluster("a", LbPolicy::RoundRobin);
    let cfg = config(
        vec![route("/", "a", Some(Duration::from_secs(2)))],
        vec![("a", ready(&a, assignment("a", &[1])))],
    );
    let (_tx, conn, mut stack) = rt.block_on(async {
        let (tx, conn, mut stack) = setup(cfg);
        // Connected, so the next call reaches its endpoint in `call`.
        assert_eq!(call(&mut stack, "/").await.unwrap(), addr(1));
        (tx, conn, stack)
    });
    rt.block_on(std::future::poll_fn(|cx| stack.poll_ready(cx)))
        .unwrap();
    let future = stack.call(req("/"));
    assert_eq!(conn.calls.load(Ordering::SeqCst), 2);
    let rsp = rt.block_on(future).unwrap();
    assert_eq!(
        rsp.extensions().get::<ServedBy>().map(|s| s.address()),
        Some(addr(1))
    );
}
