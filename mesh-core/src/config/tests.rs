use std::time::Duration;

use super::*;

fn forward(clusters: ClusterSpecifier) -> ForwardAction {
    ForwardAction {
        clusters,
        timeout: None,
        max_stream_duration: None,
        retry_policy: None,
        hash_policies: Vec::new(),
    }
}

fn with_route(action: ForwardAction) -> StaticConfig {
    StaticConfig::new().virtual_host(VirtualHost {
        name: "vh".into(),
        domains: vec!["*".into()],
        routes: vec![
            StaticConfig::new().route_all_to("a").virtual_hosts[0].routes[0].clone(),
            Route {
                name: "r".into(),
                matcher: RouteMatch {
                    path: PathMatch::Prefix("/".into()),
                    case_sensitive: true,
                    headers: Vec::new(),
                    query_parameters: Vec::new(),
                    runtime_fraction: None,
                },
                action: RouteAction::Forward(action),
                filter_overrides: Default::default(),
            },
        ],
        retry_policy: None,
        filter_overrides: Default::default(),
    })
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        retry_on: RetryOn::UNAVAILABLE,
        num_retries: 2,
        base_interval: Duration::from_millis(25),
        max_interval: Duration::from_millis(250),
        per_try_timeout: None,
        retriable_status_codes: Vec::new(),
        avoid_previous_hosts: true,
        host_selection_max_attempts: 1,
    }
}

#[test]
fn zero_total_weight_is_rejected_with_its_path() {
    let bad = with_route(forward(ClusterSpecifier::Weighted(vec![
        WeightedCluster {
            name: "a".into(),
            weight: 0,
        },
        WeightedCluster {
            name: "b".into(),
            weight: 0,
        },
    ])));
    let err = bad.build().unwrap_err();
    assert_eq!(
        err,
        ConfigError::ZeroTotalWeight {
            path: "virtual_hosts[0].routes[1].route.weighted_clusters".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "virtual_hosts[0].routes[1].route.weighted_clusters: the cluster weights sum to zero"
    );
    let empty = with_route(forward(ClusterSpecifier::Weighted(Vec::new())));
    assert!(matches!(
        empty.build(),
        Err(ConfigError::ZeroTotalWeight { .. })
    ));
    let overflow = with_route(forward(ClusterSpecifier::Weighted(vec![
        WeightedCluster {
            name: "a".into(),
            weight: u32::MAX,
        },
        WeightedCluster {
            name: "b".into(),
            weight: 1,
        },
    ])));
    assert!(
        overflow
            .build()
            .unwrap_err()
            .to_string()
            .contains("overflows")
    );
}

/// A `source_ip` hash policy is accepted and ignored, as grpc-go does with one from xDS
/// (it hashes nothing: the next policy, or a random hash, decides).
#[test]
fn source_ip_hash_policy_is_accepted_as_from_xds() {
    let mut fa = forward(ClusterSpecifier::Cluster("a".into()));
    fa.hash_policies.push(HashPolicy {
        kind: HashPolicyKind::ChannelId,
        terminal: false,
    });
    fa.hash_policies.push(HashPolicy {
        kind: HashPolicyKind::SourceIp,
        terminal: false,
    });
    let cfg = with_route(fa.clone()).build().unwrap();
    let RouteAction::Forward(built) = &cfg.route_config().virtual_hosts[0].routes[1].action else {
        panic!("not a forwarding route");
    };
    assert_eq!(built.hash_policies, fa.hash_policies);

    fa.hash_policies.push(HashPolicy {
        kind: HashPolicyKind::Header {
            name: String::new(),
            regex_rewrite: None,
        },
        terminal: false,
    });
    assert_eq!(
        with_route(fa).build().unwrap_err().to_string(),
        "virtual_hosts[0].routes[1].route.hash_policy[2].header.header_name: must not be empty"
    );
}

#[test]
fn bad_retry_policies_are_rejected() {
    let mut rp = retry();
    rp.base_interval = Duration::ZERO;
    let mut fa = forward(ClusterSpecifier::Cluster("a".into()));
    fa.retry_policy = Some(rp);
    let err = with_route(fa.clone()).build().unwrap_err();
    assert!(
        err.to_string().starts_with(
            "virtual_hosts[0].routes[1].route.retry_policy.retry_back_off.base_interval"
        ),
        "{err}"
    );
    let mut rp = retry();
    rp.max_interval = Duration::from_millis(1);
    fa.retry_policy = Some(rp);
    assert!(with_route(fa.clone()).build().is_err());
    let mut rp = retry();
    rp.retriable_status_codes = vec![503, 700];
    fa.retry_policy = Some(rp);
    assert_eq!(
        with_route(fa.clone()).build().unwrap_err().to_string(),
        "virtual_hosts[0].routes[1].route.retry_policy.retriable_status_codes[1]: \
         700 is not an HTTP status code"
    );
    fa.retry_policy = Some(retry());
    assert!(with_route(fa).build().is_ok());
}

#[test]
fn bad_matchers_are_rejected() {
    let header = |name: &str| HeaderMatcher {
        name: name.into(),
        kind: HeaderMatchKind::Present(true),
        invert: false,
    };
    let mut cfg = with_route(forward(ClusterSpecifier::Cluster("a".into())));
    let m = &mut cfg.virtual_hosts[0].routes[1].matcher;
    m.headers = vec![header("x"), header("")];
    assert_eq!(
        cfg.clone().build().unwrap_err().to_string(),
        "virtual_hosts[0].routes[1].match.headers[1].name: must not be empty"
    );
    cfg.virtual_hosts[0].routes[1].matcher.headers = vec![header("X-Upper")];
    assert_eq!(
        cfg.build().unwrap_err().to_string(),
        "virtual_hosts[0].routes[1].match.headers[0].name: must be lower case"
    );
    let mut cfg = with_route(forward(ClusterSpecifier::Cluster("a".into())));
    cfg.virtual_hosts[0].routes[1]
        .matcher
        .query_parameters
        .push(QueryParameterMatcher {
            name: String::new(),
            string_match: None,
            present: Some(true),
        });
    assert_eq!(
        cfg.build().unwrap_err().to_string(),
        "virtual_hosts[0].routes[1].match.query_parameters[0].name: must not be empty"
    );
    let mut cfg = with_route(forward(ClusterSpecifier::Cluster("a".into())));
    cfg.virtual_hosts[0].routes[1].matcher.runtime_fraction = Some(1_000_001);
    assert_eq!(
        cfg.build().unwrap_err().to_string(),
        "virtual_hosts[0].routes[1].match.runtime_fraction: \
         1000001 parts per million is more than one million"
    );
    let cfg = with_route(forward(ClusterSpecifier::Cluster(String::new())));
    assert_eq!(
        cfg.build().unwrap_err().to_string(),
        "virtual_hosts[0].routes[1].route.cluster: must not be empty"
    );
    let cfg = with_route(forward(ClusterSpecifier::ClusterHeader(String::new())));
    assert_eq!(
        cfg.build().unwrap_err().to_string(),
        "virtual_hosts[0].routes[1].route.cluster_header: must not be empty"
    );
}

/// What grpc-go accepts from xDS, a hand-built config may hold too: a virtual host with no
/// (or an empty) domain, which no authority reaches, and a header range that is empty.
#[test]
fn unmatchable_hosts_and_ranges_are_accepted_as_from_xds() {
    let mut cfg = with_route(forward(ClusterSpecifier::Cluster("a".into())));
    cfg.virtual_hosts[0].routes[1]
        .matcher
        .headers
        .push(HeaderMatcher {
            name: "x".into(),
            kind: HeaderMatchKind::Range { start: 5, end: 1 },
            invert: false,
        });
    cfg.virtual_hosts[0].domains.clear();
    let mut empty = cfg.virtual_hosts[0].clone();
    empty.domains = vec![String::new()];
    let built = cfg.virtual_host(empty).build().unwrap();
    assert!(built.virtual_host_for(Some("a.example")).is_none());
    assert!(built.virtual_host_for(None).is_none());
}

#[test]
fn static_config_picks_virtual_hosts_by_authority() {
    let mut vh = StaticConfig::new()
        .route_all_to("foo")
        .virtual_hosts
        .remove(0);
    vh.domains = vec!["foo.example".into()];
    let cfg = StaticConfig::new()
        .virtual_host(vh)
        .route_all_to("other")
        .build()
        .unwrap();
    assert_eq!(cfg.virtual_host_for(Some("FOO.example")).unwrap().0, 0);
    assert_eq!(cfg.virtual_host_for(Some("bar.example")).unwrap().0, 1);
    assert_eq!(cfg.virtual_host_for(None).unwrap().0, 1);
    let none = StaticConfig::new().build().unwrap();
    assert!(none.virtual_host_for(Some("x")).is_none());
    let rc = cfg.route_config().clone();
    assert_eq!(
        TargetConfig::try_from(rc)
            .unwrap()
            .route_config()
            .virtual_hosts
            .len(),
        2
    );
}

#[tokio::test]
async fn published_config_is_seen_by_receivers() {
    let (tx, mut rx) = channel(StaticConfig::new().build().unwrap());
    assert!(rx.borrow().virtual_host_for(None).is_none());
    tx.send(Arc::new(
        StaticConfig::new().route_all_to("x").build().unwrap(),
    ))
    .unwrap();
    rx.changed().await.unwrap();
    assert!(rx.borrow().virtual_host_for(None).is_some());
}
