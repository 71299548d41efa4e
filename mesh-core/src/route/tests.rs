use std::collections::HashMap;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tower::ServiceExt;

use super::*;
use crate::config::{
    self, ClusterError, ClusterState, HashPolicyKind, HeaderMatchKind, HeaderMatcher,
    QueryParameterMatcher, RetryOn, SafeRegex, StaticConfig, StringMatchKind, StringMatcher,
    UnsupportedAction, WeightedCluster,
};

fn matcher(path: PathMatch) -> RouteMatch {
    RouteMatch {
        path,
        case_sensitive: true,
        headers: Vec::new(),
        query_parameters: Vec::new(),
        runtime_fraction: None,
    }
}

fn fwd(cluster: &str) -> RouteAction {
    RouteAction::Forward(ForwardAction {
        clusters: ClusterSpecifier::Cluster(cluster.into()),
        timeout: Some(Duration::from_secs(3)),
        max_stream_duration: None,
        retry_policy: None,
        hash_policies: Vec::new(),
    })
}

fn route_to(name: &str, m: RouteMatch, action: RouteAction) -> Route {
    Route {
        name: name.into(),
        matcher: m,
        action,
        filter_overrides: Default::default(),
    }
}

fn cfg(routes: Vec<Route>) -> Arc<TargetConfig> {
    Arc::new(
        StaticConfig::new()
            .virtual_host(VirtualHost {
                name: "vh".into(),
                domains: vec!["*".into()],
                routes,
                retry_policy: None,
                filter_overrides: Default::default(),
            })
            .build()
            .unwrap(),
    )
}

fn req(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

/// The cluster `uri` goes to, or the error.
fn pick(c: &Arc<TargetConfig>, uri: &str, headers: &[(&str, &str)]) -> Result<String, RouteError> {
    route(c, &req(uri, headers), &mut rng(), 0).map(|p| p.cluster().to_owned())
}

#[test]
fn path_matchers_and_case_sensitivity() {
    let mut insensitive = matcher(PathMatch::Prefix("/Foo.Bar/".into()));
    insensitive.case_sensitive = false;
    let c = cfg(vec![
        route_to(
            "exact",
            matcher(PathMatch::Path("/pkg.Svc/Get".into())),
            fwd("exact"),
        ),
        route_to(
            "prefix",
            matcher(PathMatch::Prefix("/pkg.Svc/".into())),
            fwd("prefix"),
        ),
        route_to("ci", insensitive, fwd("ci")),
        route_to(
            "regex",
            matcher(PathMatch::Regex(
                SafeRegex::full_match("/r/[0-9]+").unwrap(),
            )),
            fwd("regex"),
        ),
    ]);
    assert_eq!(pick(&c, "http://a/pkg.Svc/Get", &[]).unwrap(), "exact");
    assert_eq!(pick(&c, "http://a/pkg.Svc/Get?x=1", &[]).unwrap(), "exact");
    assert_eq!(pick(&c, "http://a/pkg.Svc/Put", &[]).unwrap(), "prefix");
    assert_eq!(
        pick(&c, "http://a/pkg.svc/Get", &[])
            .unwrap_err()
            .grpc_code(),
        config::GrpcCode::Unimplemented
    );
    assert_eq!(pick(&c, "http://a/foo.bar/X", &[]).unwrap(), "ci");
    assert_eq!(pick(&c, "http://a/r/123", &[]).unwrap(), "regex");
    // Regex is a full match.
    assert!(pick(&c, "http://a/r/123/x", &[]).is_err());
    let err = pick(&c, "http://a/nothing", &[]).unwrap_err();
    assert_eq!(
        err,
        RouteError::NoRoute {
            virtual_host: "vh".into(),
            path: "/nothing".into()
        }
    );
    assert_eq!(err.http_status(), http::StatusCode::NOT_FOUND);
}

#[test]
fn case_insensitive_exact_path() {
    let mut m = matcher(PathMatch::Path("/A/b".into()));
    m.case_sensitive = false;
    let c = cfg(vec![route_to("r", m, fwd("x"))]);
    assert!(pick(&c, "http://a/a/B", &[]).is_ok());
    assert!(pick(&c, "http://a/a/B/", &[]).is_err());
}

fn header_route(name: &str, kind: HeaderMatchKind, invert: bool) -> Arc<TargetConfig> {
    let mut m = matcher(PathMatch::Prefix("/".into()));
    m.headers.push(HeaderMatcher {
        name: name.into(),
        kind,
        invert,
    });
    cfg(vec![route_to("h", m, fwd("h"))])
}

fn hits(c: &Arc<TargetConfig>, headers: &[(&str, &str)]) -> bool {
    pick(c, "http://a/", headers).is_ok()
}

#[test]
fn header_matchers() {
    let exact = header_route("x-v", HeaderMatchKind::Exact("b".into()), false);
    assert!(hits(&exact, &[("x-v", "b")]));
    assert!(!hits(&exact, &[("x-v", "B")]));
    assert!(!hits(&exact, &[]));
    // Several values are joined with a comma.
    assert!(!hits(&exact, &[("x-v", "b"), ("x-v", "c")]));
    let joined = header_route("x-v", HeaderMatchKind::Exact("b,c".into()), false);
    assert!(hits(&joined, &[("x-v", "b"), ("x-v", "c")]));

    let prefix = header_route("x-v", HeaderMatchKind::Prefix("ab".into()), false);
    assert!(hits(&prefix, &[("x-v", "abc")]));
    assert!(!hits(&prefix, &[("x-v", "cab")]));
    let suffix = header_route("x-v", HeaderMatchKind::Suffix("yz".into()), false);
    assert!(hits(&suffix, &[("x-v", "xyz")]));
    assert!(!hits(&suffix, &[("x-v", "yzx")]));
    let contains = header_route("x-v", HeaderMatchKind::Contains("mid".into()), false);
    assert!(hits(&contains, &[("x-v", "amidb")]));
    assert!(!hits(&contains, &[("x-v", "amib")]));
    let regex = header_route(
        "x-v",
        HeaderMatchKind::SafeRegex(SafeRegex::full_match("v[0-9]").unwrap()),
        false,
    );
    assert!(hits(&regex, &[("x-v", "v1")]));
    assert!(!hits(&regex, &[("x-v", "v10")]));
    let range = header_route("x-n", HeaderMatchKind::Range { start: -5, end: 10 }, false);
    assert!(hits(&range, &[("x-n", "-5")]));
    assert!(hits(&range, &[("x-n", "9")]));
    assert!(!hits(&range, &[("x-n", "10")]));
    assert!(!hits(&range, &[("x-n", "nine")]));
    assert!(!hits(&range, &[]));
    let string = header_route(
        "x-v",
        HeaderMatchKind::StringMatch(StringMatcher {
            kind: StringMatchKind::Exact("ABC".into()),
            ignore_case: true,
        }),
        false,
    );
    assert!(hits(&string, &[("x-v", "abc")]));
}

#[test]
fn present_and_invert() {
    let present = header_route("x-p", HeaderMatchKind::Present(true), false);
    assert!(hits(&present, &[("x-p", "")]));
    assert!(!hits(&present, &[]));
    let absent = header_route("x-p", HeaderMatchKind::Present(false), false);
    assert!(hits(&absent, &[]));
    assert!(!hits(&absent, &[("x-p", "1")]));
    let not_present = header_route("x-p", HeaderMatchKind::Present(true), true);
    assert!(hits(&not_present, &[]));
    assert!(!hits(&not_present, &[("x-p", "1")]));

    let not_b = header_route("x-v", HeaderMatchKind::Exact("b".into()), true);
    assert!(hits(&not_b, &[("x-v", "c")]));
    assert!(!hits(&not_b, &[("x-v", "b")]));
    // gRPC: a missing header fails a value matcher even when inverted.
    assert!(!hits(&not_b, &[]));
    // Binary headers never match.
    let bin = header_route("x-b-bin", HeaderMatchKind::Present(true), false);
    assert!(!hits(&bin, &[("x-b-bin", "AAAA")]));
}

#[test]
fn query_parameter_matchers() {
    let mut m = matcher(PathMatch::Prefix("/".into()));
    m.query_parameters.push(QueryParameterMatcher {
        name: "debug".into(),
        string_match: Some(StringMatcher {
            kind: StringMatchKind::Exact("a b".into()),
            ignore_case: false,
        }),
        present: None,
    });
    m.query_parameters.push(QueryParameterMatcher {
        name: "trace".into(),
        string_match: None,
        present: Some(false),
    });
    let c = cfg(vec![route_to("q", m, fwd("q"))]);
    assert!(pick(&c, "http://a/x?debug=a%20b", &[]).is_ok());
    assert!(pick(&c, "http://a/x?z=1&debug=a+b", &[]).is_ok());
    assert!(pick(&c, "http://a/x?debug=ab", &[]).is_err());
    assert!(pick(&c, "http://a/x?debug=a+b&trace", &[]).is_err());
    assert!(pick(&c, "http://a/x", &[]).is_err());
    // The first occurrence counts.
    assert!(pick(&c, "http://a/x?debug=no&debug=a+b", &[]).is_err());
    // A bad escape is kept as it is, and does not panic.
    assert!(pick(&c, "http://a/x?debug=%zz&x=%", &[]).is_err());
}

#[test]
fn runtime_fraction_and_first_match_wins() {
    let mut quarter = matcher(PathMatch::Prefix("/".into()));
    quarter.runtime_fraction = Some(250_000);
    let mut never = matcher(PathMatch::Prefix("/".into()));
    never.runtime_fraction = Some(0);
    let c = cfg(vec![
        route_to("never", never, fwd("never")),
        route_to("quarter", quarter, fwd("quarter")),
        route_to("rest", matcher(PathMatch::Prefix("/".into())), fwd("rest")),
        route_to(
            "shadowed",
            matcher(PathMatch::Prefix("/".into())),
            fwd("shadowed"),
        ),
    ]);
    let mut rng = rng();
    let mut counts: HashMap<String, u32> = HashMap::new();
    let r = req("http://a/", &[]);
    for _ in 0..100_000 {
        let p = route(&c, &r, &mut rng, 0).unwrap();
        *counts.entry(p.cluster().to_owned()).or_default() += 1;
    }
    assert_eq!(counts.get("never"), None);
    assert_eq!(counts.get("shadowed"), None);
    let q = f64::from(counts["quarter"]) / 100_000.0;
    assert!((q - 0.25).abs() < 0.02, "{q}");
}

#[test]
fn weighted_split_within_two_points_over_100k_picks() {
    let weights = [("a", 70), ("b", 20), ("c", 9), ("d", 1)];
    let action = RouteAction::Forward(ForwardAction {
        clusters: ClusterSpecifier::Weighted(
            weights
                .iter()
                .map(|(n, w)| WeightedCluster {
                    name: (*n).into(),
                    weight: *w,
                })
                .collect(),
        ),
        timeout: None,
        max_stream_duration: None,
        retry_policy: None,
        hash_policies: Vec::new(),
    });
    let c = cfg(vec![route_to(
        "w",
        matcher(PathMatch::Prefix("/".into())),
        action,
    )]);
    let mut rng = SmallRng::seed_from_u64(42);
    let r = req("http://a/", &[]);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..100_000 {
        *counts
            .entry(route(&c, &r, &mut rng, 0).unwrap().cluster().to_owned())
            .or_default() += 1;
    }
    for (name, w) in weights {
        let share = f64::from(counts[name]) / 1000.0;
        assert!(
            (share - f64::from(w)).abs() < 2.0,
            "{name}: {share}% vs {w}%"
        );
    }
}

#[test]
fn pick_weighted_edges() {
    let list = vec![
        WeightedCluster {
            name: "zero".into(),
            weight: 0,
        },
        WeightedCluster {
            name: "one".into(),
            weight: 1,
        },
    ];
    let mut rng = rng();
    for _ in 0..100 {
        assert_eq!(matching::pick_weighted(&list, &mut rng), 1);
    }
    let all_zero = &list[..1];
    assert_eq!(matching::pick_weighted(all_zero, &mut rng), 0);
}

#[test]
fn cluster_header_and_route_errors() {
    let header = RouteAction::Forward(ForwardAction {
        clusters: ClusterSpecifier::ClusterHeader("x-cluster".into()),
        timeout: None,
        max_stream_duration: None,
        retry_policy: None,
        hash_policies: Vec::new(),
    });
    let c = cfg(vec![
        route_to(
            "redirect",
            matcher(PathMatch::Prefix("/redirect".into())),
            RouteAction::Unsupported(UnsupportedAction::Redirect),
        ),
        route_to(
            "inbound",
            matcher(PathMatch::Prefix("/inbound".into())),
            RouteAction::NonForwarding,
        ),
        route_to("h", matcher(PathMatch::Prefix("/".into())), header),
    ]);
    assert_eq!(
        pick(&c, "http://a/x", &[("x-cluster", "blue")]).unwrap(),
        "blue"
    );
    let missing = pick(&c, "http://a/x", &[]).unwrap_err();
    assert!(matches!(missing, RouteError::MissingClusterHeader { .. }));
    assert_eq!(missing.grpc_code(), config::GrpcCode::Unavailable);
    let unsupported = pick(&c, "http://a/redirect", &[]).unwrap_err();
    assert_eq!(
        unsupported,
        RouteError::UnsupportedAction {
            route: "redirect".into(),
            action: UnsupportedAction::Redirect
        }
    );
    assert_eq!(
        unsupported.http_status(),
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(matches!(
        pick(&c, "http://a/inbound", &[]),
        Err(RouteError::NonForwarding { .. })
    ));
}

#[test]
fn virtual_host_by_authority() {
    let c = Arc::new(
        StaticConfig::new()
            .virtual_host(VirtualHost {
                name: "foo".into(),
                domains: vec!["foo.svc:80".into(), "foo.svc".into()],
                routes: vec![route_to(
                    "r",
                    matcher(PathMatch::Prefix("/".into())),
                    fwd("foo"),
                )],
                retry_policy: None,
                filter_overrides: Default::default(),
            })
            .build()
            .unwrap(),
    );
    assert_eq!(pick(&c, "http://foo.svc/x", &[]).unwrap(), "foo");
    assert_eq!(pick(&c, "/x", &[("host", "foo.svc:80")]).unwrap(), "foo");
    assert_eq!(
        pick(&c, "http://bar.svc/x", &[]).unwrap_err(),
        RouteError::NoVirtualHost {
            authority: Some("bar.svc".into())
        }
    );
}

fn hash_route(policies: Vec<HashPolicy>) -> Arc<TargetConfig> {
    cfg(vec![route_to(
        "h",
        matcher(PathMatch::Prefix("/".into())),
        RouteAction::Forward(ForwardAction {
            clusters: ClusterSpecifier::Cluster("c".into()),
            timeout: None,
            max_stream_duration: None,
            retry_policy: None,
            hash_policies: policies,
        }),
    )])
}

fn hash_of(c: &Arc<TargetConfig>, headers: &[(&str, &str)], channel: u64) -> Option<u64> {
    route(c, &req("http://a/", headers), &mut rng(), channel)
        .unwrap()
        .request_hash()
}

#[test]
fn request_hash_policies() {
    let header = |name: &str, terminal| HashPolicy {
        kind: HashPolicyKind::Header {
            name: name.into(),
            regex_rewrite: None,
        },
        terminal,
    };
    let c = hash_route(vec![header("x-user", false)]);
    let h1 = hash_of(&c, &[("x-user", "alice")], 0).unwrap();
    assert_eq!(h1, xxhash_rust::xxh64::xxh64(b"alice", 0));
    assert_ne!(hash_of(&c, &[("x-user", "bob")], 0).unwrap(), h1);
    assert_eq!(hash_of(&c, &[], 0), None);

    // Terminal: the second policy is not consulted once the first produced a hash.
    let terminal = hash_route(vec![
        header("x-user", true),
        HashPolicy {
            kind: HashPolicyKind::ChannelId,
            terminal: false,
        },
    ]);
    assert_eq!(hash_of(&terminal, &[("x-user", "alice")], 9), Some(h1));
    // ... and is when the first produced none.
    assert_eq!(hash_of(&terminal, &[], 9), Some(9));
    // Not terminal: both are folded in.
    let both = hash_route(vec![
        header("x-user", false),
        HashPolicy {
            kind: HashPolicyKind::ChannelId,
            terminal: false,
        },
    ]);
    assert_eq!(
        hash_of(&both, &[("x-user", "alice")], 9),
        Some(h1.rotate_left(1) ^ 9)
    );

    let rewrite = hash_route(vec![HashPolicy {
        kind: HashPolicyKind::Header {
            name: "x-user".into(),
            regex_rewrite: Some((SafeRegex::unanchored("-[0-9]+").unwrap(), String::new())),
        },
        terminal: false,
    }]);
    assert_eq!(hash_of(&rewrite, &[("x-user", "alice-123")], 0), Some(h1));
}

#[test]
fn grpc_method_parsing() {
    assert_eq!(
        GrpcMethod::from_path("/helloworld.Greeter/SayHello"),
        Some(GrpcMethod {
            service: "helloworld.Greeter",
            method: "SayHello"
        })
    );
    for bad in ["", "/", "//x", "/svc/", "svc/m", "/a/b/c"] {
        assert_eq!(GrpcMethod::from_path(bad), None, "{bad}");
    }
}

type Mock = tower_test::mock::Mock<http::Request<()>, http::Response<&'static str>>;

#[tokio::test]
async fn router_calls_the_cluster_with_the_policy_attached_and_follows_updates() {
    let (tx, rx) = config::channel(
        StaticConfig::new()
            .route_all_to("a")
            .cluster(
                "broken",
                ClusterState::Error(ClusterError::DoesNotExist {
                    name: "broken".into(),
                }),
            )
            .build()
            .unwrap(),
    );
    let (a, mut a_handle) =
        tower_test::mock::pair::<http::Request<()>, http::Response<&'static str>>();
    let (b, mut b_handle) =
        tower_test::mock::pair::<http::Request<()>, http::Response<&'static str>>();
    let clusters: HashMap<String, Mock> = HashMap::from([("a".into(), a), ("b".into(), b)]);
    let mut router = Router::with_seed(rx, clusters, 7);

    let call = tokio::spawn(router.ready().await.unwrap().call(req("http://x/p", &[])));
    let (got, send) = a_handle.next_request().await.unwrap();
    let policy = got.extensions().get::<RoutePolicy>().unwrap();
    assert_eq!(policy.cluster(), "a");
    assert_eq!(policy.timeout(), None);
    send.send_response(http::Response::new("from a"));
    assert_eq!(*call.await.unwrap().unwrap().body(), "from a");

    // A new config is used by the next call.
    tx.send(Arc::new(
        StaticConfig::new().route_all_to("b").build().unwrap(),
    ))
    .unwrap();
    let call = tokio::spawn(router.ready().await.unwrap().call(req("http://x/p", &[])));
    let (_, send) = b_handle.next_request().await.unwrap();
    send.send_response(http::Response::new("from b"));
    assert_eq!(*call.await.unwrap().unwrap().body(), "from b");

    // Unknown and broken clusters fail with typed errors.
    tx.send(Arc::new(
        StaticConfig::new().route_all_to("nope").build().unwrap(),
    ))
    .unwrap();
    let err = router
        .ready()
        .await
        .unwrap()
        .call(req("http://x/p", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        *err.downcast::<RouteError>().unwrap(),
        RouteError::ClusterNotFound {
            cluster: "nope".into()
        }
    );
    tx.send(Arc::new(
        StaticConfig::new()
            .route_all_to("broken")
            .cluster(
                "broken",
                ClusterState::Error(ClusterError::DoesNotExist {
                    name: "broken".into(),
                }),
            )
            .build()
            .unwrap(),
    ))
    .unwrap();
    let err = router
        .ready()
        .await
        .unwrap()
        .call(req("http://x/p", &[]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cluster broken does not exist"),
        "{err}"
    );

    // A closed channel keeps the last config.
    drop(tx);
    let err = router
        .ready()
        .await
        .unwrap()
        .call(req("http://x/p", &[]))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<RouteError>().is_some());
}

#[tokio::test]
async fn a_cluster_error_is_passed_through_boxed() {
    let (_tx, rx) = config::channel(StaticConfig::new().route_all_to("a").build().unwrap());
    let (a, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    let mut router = Router::new(rx, HashMap::from([("a".to_string(), a)]));
    let call = tokio::spawn(router.ready().await.unwrap().call(req("http://x/", &[])));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::other("boom"));
    assert_eq!(call.await.unwrap().unwrap_err().to_string(), "boom");
}

#[tokio::test]
async fn a_ready_cluster_is_called_at_once_one_not_ready_once_it_is_and_one_failing_fails() {
    let (_tx, rx) = config::channel(StaticConfig::new().route_all_to("a").build().unwrap());
    let (a, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    let mut router = Router::new(rx, HashMap::from([("a".to_string(), a)]));
    // Ready: called when the call is made, before its future is polled.
    handle.allow(1);
    let call = router.ready().await.unwrap().call(req("http://x/", &[]));
    let mut next = tokio_test::task::spawn(handle.next_request());
    let std::task::Poll::Ready(Some((_, send))) = next.poll() else {
        panic!("a ready cluster is called in the router's call");
    };
    drop(next);
    send.send_response(http::Response::new(()));
    assert!(call.await.is_ok());

    handle.allow(0);
    let mut call =
        tokio_test::task::spawn(router.ready().await.unwrap().call(req("http://x/", &[])));
    // Not ready when called: nothing sent until the cluster is.
    assert!(call.poll().is_pending());
    handle.allow(1);
    assert!(call.is_woken());
    assert!(call.poll().is_pending());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(http::Response::new(()));
    assert!(call.await.is_ok());

    handle.send_error(std::io::Error::other("cluster down"));
    let err = router
        .ready()
        .await
        .unwrap()
        .call(req("http://x/", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "cluster down");
}

#[test]
fn clones_draw_different_random_streams() {
    let action = RouteAction::Forward(ForwardAction {
        clusters: ClusterSpecifier::Weighted(vec![
            WeightedCluster {
                name: "a".into(),
                weight: 1,
            },
            WeightedCluster {
                name: "b".into(),
                weight: 1,
            },
        ]),
        timeout: None,
        max_stream_duration: None,
        retry_policy: None,
        hash_policies: Vec::new(),
    });
    let c = cfg(vec![route_to(
        "w",
        matcher(PathMatch::Prefix("/".into())),
        action,
    )]);
    let (_tx, rx) = tokio::sync::watch::channel(c);
    let router = Router::with_seed(rx, clusters_fn(|_: &str| None::<Mock>), 7);
    // The first pick of each of 64 fresh clones: with shared streams they would all agree.
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..64 {
        let mut clone = router.clone();
        let p = clone.route(&req("http://a/", &[])).unwrap();
        firsts.insert(p.cluster().to_owned());
    }
    assert_eq!(firsts.len(), 2);
}

#[test]
fn route_policy_from_action() {
    let p = RoutePolicy::from_action(ForwardAction {
        clusters: ClusterSpecifier::Cluster("c".into()),
        timeout: Some(Duration::from_secs(1)),
        max_stream_duration: None,
        retry_policy: None,
        hash_policies: Vec::new(),
    })
    .unwrap();
    assert_eq!(p.cluster(), "c");
    assert_eq!(p.timeout(), Some(Duration::from_secs(1)));
    assert!(format!("{p:?}").contains("\"c\""));
    let bad = RoutePolicy::from_action(ForwardAction {
        clusters: ClusterSpecifier::Weighted(Vec::new()),
        timeout: None,
        max_stream_duration: None,
        retry_policy: None,
        hash_policies: Vec::new(),
    });
    assert!(bad.is_err());
}

#[tokio::test]
async fn the_request_hash_reaches_the_balancer() {
    use crate::balance::RequestHash;
    let c = hash_route(vec![HashPolicy {
        kind: HashPolicyKind::Header {
            name: "x-user".into(),
            regex_rewrite: None,
        },
        terminal: false,
    }]);
    let (_tx, rx) = tokio::sync::watch::channel(c);
    let echo = tower::service_fn(|req: http::Request<()>| async move {
        Ok::<_, std::convert::Infallible>(req.extensions().get::<RequestHash>().copied())
    });
    let mut router = Router::with_seed(rx, HashMap::from([("c".to_string(), echo)]), 7);
    let hashed = router
        .ready()
        .await
        .unwrap()
        .call(req("http://a/", &[("x-user", "alice")]))
        .await
        .unwrap();
    assert_eq!(
        hashed,
        Some(RequestHash::new(xxhash_rust::xxh64::xxh64(b"alice", 0)))
    );
    let unhashed = router
        .ready()
        .await
        .unwrap()
        .call(req("http://a/", &[]))
        .await
        .unwrap();
    assert_eq!(unhashed, None);
}

#[test]
fn a_route_without_a_retry_policy_takes_its_virtual_hosts() {
    let vh_policy = RetryPolicy {
        retry_on: RetryOn::UNAVAILABLE,
        num_retries: 4,
        base_interval: Duration::from_millis(25),
        max_interval: Duration::from_millis(250),
        per_try_timeout: None,
        retriable_status_codes: Vec::new(),
        avoid_previous_hosts: false,
        host_selection_max_attempts: 1,
    };
    let route_policy = RetryPolicy {
        num_retries: 1,
        ..vh_policy.clone()
    };
    let mut own = fwd("b");
    if let RouteAction::Forward(fa) = &mut own {
        fa.retry_policy = Some(route_policy.clone());
    }
    let c = Arc::new(
        StaticConfig::new()
            .virtual_host(VirtualHost {
                name: "vh".into(),
                domains: vec!["*".into()],
                routes: vec![
                    route_to("own", matcher(PathMatch::Prefix("/own".into())), own),
                    route_to(
                        "inherits",
                        matcher(PathMatch::Prefix(String::new())),
                        fwd("a"),
                    ),
                ],
                retry_policy: Some(vh_policy.clone()),
                filter_overrides: Default::default(),
            })
            .build()
            .unwrap(),
    );
    let inherited = route(&c, &req("/x", &[]), &mut rng(), 0).unwrap();
    assert_eq!(inherited.retry_policy(), Some(&vh_policy));
    let replaced = route(&c, &req("/own", &[]), &mut rng(), 0).unwrap();
    assert_eq!(replaced.retry_policy(), Some(&route_policy));
    // No policy anywhere: none.
    let none = route(
        &cfg(vec![route_to(
            "r",
            matcher(PathMatch::Prefix(String::new())),
            fwd("a"),
        )]),
        &req("/x", &[]),
        &mut rng(),
        0,
    )
    .unwrap();
    assert_eq!(none.retry_policy(), None);
}
