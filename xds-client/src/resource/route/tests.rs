use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::envoy::r#type::v3 as type_pb;
use envoy_types::pb::google::protobuf::Any;

use super::*;
use crate::resource::testing::*;
use crate::resource::{Resource, ResourceError, ResourceErrorKind, ResourceType, StringMatchKind};

/// Decodes a config that must be accepted; what the decoder builds obeys the rules a
/// hand-built config is checked against.
fn rds(rc: &route_pb::RouteConfiguration) -> RouteConfiguration {
    match decode_ok(ResourceType::RouteConfiguration, rc) {
        Resource::RouteConfiguration(rc) => {
            if let Err(e) = rc.validate() {
                panic!("a decoded config breaks a rule: {e}");
            }
            (*rc).clone()
        }
        other => panic!("{other:?}"),
    }
}

fn rds_err(rc: &route_pb::RouteConfiguration) -> ResourceError {
    decode_err(ResourceType::RouteConfiguration, rc)
}

/// Decodes a config with one route and returns that route.
fn single(route: route_pb::Route) -> Route {
    let rc = rds(&one_route(route));
    rc.virtual_hosts[0].routes[0].clone()
}

fn forward(route: &Route) -> &ForwardAction {
    match &route.action {
        RouteAction::Forward(f) => f,
        other => panic!("not a forward action: {other:?}"),
    }
}

fn regex(re: &str) -> matcher_pb::RegexMatcher {
    matcher_pb::RegexMatcher {
        regex: re.into(),
        engine_type: None,
    }
}

#[test]
fn minimal_route_configuration() {
    let rc = rds(&one_route(route_to("/", cluster_action("missing-cluster"))));
    assert_eq!(rc.name, "rc");
    assert!(
        rc.unsupported_fields.is_empty(),
        "{:?}",
        rc.unsupported_fields
    );
    let route = &rc.virtual_hosts[0].routes[0];
    assert_eq!(route.matcher.path, PathMatch::Prefix("/".into()));
    assert!(route.matcher.case_sensitive);
    // A route pointing at a cluster that does not exist is not a resource error.
    assert_eq!(
        forward(route).clusters,
        ClusterSpecifier::Cluster("missing-cluster".into())
    );
    assert_eq!(forward(route).timeout, None);
    assert_eq!(forward(route).retry_policy, None);
}

#[test]
fn virtual_host_domain_matching() {
    let rc = rds(&route_config(
        "rc",
        vec![
            vhost(&["*"], vec![]),
            vhost(&["foo.*"], vec![]),
            vhost(&["*.example.com"], vec![]),
            vhost(&["*.b.example.com", "f*o.com"], vec![]),
            vhost(&["api.example.com", "API.other.com:8080"], vec![]),
            vhost(&["fo*"], vec![]),
        ],
    ));
    let name = |host: &str| rc.virtual_host_for(host).map(|vh| vh.domains[0].as_str());
    // Exact beats everything, case-insensitively.
    assert_eq!(name("api.example.com"), Some("api.example.com"));
    assert_eq!(name("API.EXAMPLE.COM"), Some("api.example.com"));
    assert_eq!(name("api.other.com:8080"), Some("api.example.com"));
    // The longest suffix wildcard wins.
    assert_eq!(name("a.b.example.com"), Some("*.b.example.com"));
    assert_eq!(name("x.example.com"), Some("*.example.com"));
    // Suffix beats prefix.
    assert_eq!(name("foo.example.com"), Some("*.example.com"));
    // The longest prefix wildcard wins.
    assert_eq!(name("foo.bar"), Some("foo.*"));
    assert_eq!(name("fox"), Some("fo*"));
    // A `*` in the middle never matches; `*` catches the rest.
    assert_eq!(name("fao.com"), Some("*"));
    assert_eq!(name("unrelated"), Some("*"));

    let no_default = rds(&route_config("rc", vec![vhost(&["a.com"], vec![])]));
    assert!(no_default.virtual_host_for("b.com").is_none());
    // On a tie, the first virtual host wins.
    let tie = rds(&route_config(
        "rc",
        vec![vhost(&["*.com"], vec![]), vhost(&["*.com"], vec![])],
    ));
    assert!(std::ptr::eq(
        tie.virtual_host_for("a.com").unwrap(),
        &tie.virtual_hosts[0]
    ));
}

#[test]
fn path_specifiers() {
    let mut r = route_to("/", cluster_action("c"));
    let set = |r: &mut route_pb::Route, ps| r.r#match.as_mut().unwrap().path_specifier = ps;
    use route_pb::route_match::PathSpecifier as PS;

    set(&mut r, Some(PS::Path("/svc/Method".into())));
    assert_eq!(
        single(r.clone()).matcher.path,
        PathMatch::Path("/svc/Method".into())
    );

    set(&mut r, Some(PS::SafeRegex(regex("/svc/.*"))));
    let PathMatch::Regex(re) = single(r.clone()).matcher.path else {
        panic!()
    };
    assert!(re.is_match("/svc/x"));
    assert!(!re.is_match("/other/svc/x"));

    set(&mut r, Some(PS::SafeRegex(regex("/svc/[z-a]"))));
    let err = rds_err(&one_route(r.clone()));
    assert_eq!(err.name(), Some("rc"));
    assert!(
        matches!(err.kind(), ResourceErrorKind::InvalidRegex { path, .. }
        if path == "virtual_hosts[0].routes[0].match.safe_regex")
    );

    set(&mut r, None);
    let err = rds_err(&one_route(r.clone()));
    assert_eq!(err.kind().path(), Some("virtual_hosts[0].routes[0].match"));

    set(
        &mut r,
        Some(PS::ConnectMatcher(route_pb::route_match::ConnectMatcher {})),
    );
    let err = rds_err(&one_route(r.clone()));
    assert!(matches!(err.kind(), ResourceErrorKind::Unsupported { .. }));
    assert_eq!(
        err.kind().path(),
        Some("virtual_hosts[0].routes[0].match.connect_matcher")
    );

    set(
        &mut r,
        Some(PS::PathMatchPolicy(core_pb::TypedExtensionConfig::default())),
    );
    assert!(matches!(
        rds_err(&one_route(r.clone())).kind(),
        ResourceErrorKind::Unsupported { .. }
    ));

    r.r#match = None;
    let err = rds_err(&one_route(r));
    assert_eq!(err.kind().path(), Some("virtual_hosts[0].routes[0].match"));
}

#[test]
fn case_sensitivity_and_runtime_fraction() {
    let mut r = route_to("/A", cluster_action("c"));
    let m = r.r#match.as_mut().unwrap();
    m.case_sensitive = boolv(false);
    m.runtime_fraction = Some(core_pb::RuntimeFractionalPercent {
        default_value: Some(type_pb::FractionalPercent {
            numerator: 25,
            denominator: type_pb::fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: "key".into(),
    });
    let route = single(r);
    assert!(!route.matcher.case_sensitive);
    assert_eq!(route.matcher.runtime_fraction, Some(250_000));
}

#[test]
fn header_matchers() {
    use route_pb::header_matcher::HeaderMatchSpecifier as S;
    let hm = |name: &str, s: Option<S>, invert| route_pb::HeaderMatcher {
        name: name.into(),
        invert_match: invert,
        header_match_specifier: s,
        ..Default::default()
    };
    let mut r = route_to("/", cluster_action("c"));
    r.r#match.as_mut().unwrap().headers = vec![
        hm("X-Exact", Some(S::ExactMatch("v".into())), false),
        hm("x-prefix", Some(S::PrefixMatch("p".into())), true),
        hm("x-suffix", Some(S::SuffixMatch("s".into())), false),
        hm("x-contains", Some(S::ContainsMatch("c".into())), false),
        hm("x-regex", Some(S::SafeRegexMatch(regex("a+"))), false),
        hm(
            "x-range",
            Some(S::RangeMatch(type_pb::Int64Range { start: 1, end: 10 })),
            false,
        ),
        hm("x-present", Some(S::PresentMatch(true)), false),
        hm(
            "x-string",
            Some(S::StringMatch(matcher_pb::StringMatcher {
                ignore_case: true,
                match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(
                    "ABC".into(),
                )),
            })),
            false,
        ),
    ];
    let h = single(r.clone()).matcher.headers;
    assert_eq!(h.len(), 8);
    assert_eq!(h[0].name, "x-exact", "header names are lower-cased");
    assert_eq!(h[0].kind, HeaderMatchKind::Exact("v".into()));
    assert!(h[1].invert);
    assert_eq!(h[1].kind, HeaderMatchKind::Prefix("p".into()));
    assert_eq!(h[2].kind, HeaderMatchKind::Suffix("s".into()));
    assert_eq!(h[3].kind, HeaderMatchKind::Contains("c".into()));
    let HeaderMatchKind::SafeRegex(re) = &h[4].kind else {
        panic!()
    };
    assert!(re.is_match("aaa") && !re.is_match("aab"));
    assert_eq!(h[5].kind, HeaderMatchKind::Range { start: 1, end: 10 });
    assert_eq!(h[6].kind, HeaderMatchKind::Present(true));
    let HeaderMatchKind::StringMatch(sm) = &h[7].kind else {
        panic!()
    };
    assert!(sm.ignore_case && sm.matches("abc"));

    // Bad header matchers name their path.
    let mut bad = r.clone();
    bad.r#match.as_mut().unwrap().headers =
        vec![hm("x", Some(S::SafeRegexMatch(regex("("))), false)];
    let err = rds_err(&one_route(bad));
    assert_eq!(
        err.kind().path(),
        Some("virtual_hosts[0].routes[0].match.headers[0].safe_regex_match")
    );
    let mut bad = r.clone();
    bad.r#match.as_mut().unwrap().headers = vec![hm("x", None, false)];
    assert_eq!(
        rds_err(&one_route(bad)).kind().path(),
        Some("virtual_hosts[0].routes[0].match.headers[0]")
    );
    let mut bad = r;
    bad.r#match.as_mut().unwrap().headers = vec![hm("", Some(S::PresentMatch(true)), false)];
    assert_eq!(
        rds_err(&one_route(bad)).kind().path(),
        Some("virtual_hosts[0].routes[0].match.headers[0].name")
    );
}

#[test]
fn query_parameter_matchers() {
    use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    let qm = |name: &str, s| route_pb::QueryParameterMatcher {
        name: name.into(),
        query_parameter_match_specifier: s,
    };
    let mut r = route_to("/", cluster_action("c"));
    r.r#match.as_mut().unwrap().query_parameters = vec![
        qm(
            "debug",
            Some(S::StringMatch(matcher_pb::StringMatcher {
                ignore_case: false,
                match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Prefix("1".into())),
            })),
        ),
        qm("trace", Some(S::PresentMatch(true))),
    ];
    let q = single(r.clone()).matcher.query_parameters;
    assert_eq!(q[0].name, "debug");
    assert_eq!(
        q[0].string_match.as_ref().map(|m| &m.kind),
        Some(&StringMatchKind::Prefix("1".into()))
    );
    assert_eq!(q[0].present, None);
    assert_eq!(q[1].present, Some(true));
    assert_eq!(q[1].string_match, None);

    r.r#match.as_mut().unwrap().query_parameters = vec![qm("x", None)];
    assert_eq!(
        rds_err(&one_route(r)).kind().path(),
        Some("virtual_hosts[0].routes[0].match.query_parameters[0]")
    );
}

fn weighted(clusters: &[(&str, Option<u32>)]) -> route_pb::RouteAction {
    route_pb::RouteAction {
        cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::WeightedClusters(
            route_pb::WeightedCluster {
                clusters: clusters
                    .iter()
                    .map(|&(name, w)| route_pb::weighted_cluster::ClusterWeight {
                        name: name.into(),
                        weight: w.and_then(u32v),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

#[test]
fn weighted_clusters() {
    let route = single(route_to(
        "/",
        weighted(&[
            ("a", Some(80)),
            ("zero", Some(0)),
            ("b", Some(20)),
            ("unset", None),
        ]),
    ));
    assert_eq!(
        forward(&route).clusters,
        ClusterSpecifier::Weighted(vec![
            WeightedCluster {
                name: "a".into(),
                weight: 80
            },
            WeightedCluster {
                name: "b".into(),
                weight: 20
            },
        ])
    );

    let err = rds_err(&one_route(route_to(
        "/",
        weighted(&[("a", Some(0)), ("b", None)]),
    )));
    assert_eq!(
        err.kind().path(),
        Some("virtual_hosts[0].routes[0].route.weighted_clusters")
    );
    assert!(err.to_string().contains("sum to zero"), "{err}");

    let err = rds_err(&one_route(route_to(
        "/",
        weighted(&[("a", Some(u32::MAX)), ("b", Some(1))]),
    )));
    assert!(err.to_string().contains("overflows"), "{err}");

    let err = rds_err(&one_route(route_to(
        "/",
        weighted(&[("a", Some(1)), ("", Some(1))]),
    )));
    assert_eq!(
        err.kind().path(),
        Some("virtual_hosts[0].routes[0].route.weighted_clusters.clusters[1].name")
    );
}

#[test]
fn cluster_specifiers() {
    use route_pb::route_action::ClusterSpecifier as S;
    let with = |s| route_pb::RouteAction {
        cluster_specifier: Some(s),
        ..Default::default()
    };
    let route = single(route_to("/", with(S::ClusterHeader("X-Cluster".into()))));
    assert_eq!(
        forward(&route).clusters,
        ClusterSpecifier::ClusterHeader("x-cluster".into())
    );

    let err = rds_err(&one_route(route_to("/", with(S::Cluster(String::new())))));
    assert_eq!(
        err.kind().path(),
        Some("virtual_hosts[0].routes[0].route.cluster")
    );

    // gRFC A28: a route with a cluster specifier plugin we do not support is ignored (and
    // listed), the rest of the virtual host is kept.
    let mut pb = route_config(
        "rc",
        vec![vhost(
            &["*"],
            vec![
                route_to("/rls", with(S::ClusterSpecifierPlugin("rls".into()))),
                route_to("/", cluster_action("c")),
            ],
        )],
    );
    pb.cluster_specifier_plugins = vec![plugin("rls")];
    let rc = rds(&pb);
    assert_eq!(rc.virtual_hosts[0].routes.len(), 1);
    assert!(
        rc.unsupported_fields
            .iter()
            .any(|f| f.starts_with("virtual_hosts[0].routes[0].route"))
    );
}

fn plugin(name: &str) -> route_pb::ClusterSpecifierPlugin {
    route_pb::ClusterSpecifierPlugin {
        extension: Some(core_pb::TypedExtensionConfig {
            name: name.into(),
            typed_config: Some(Any {
                type_url: "type.googleapis.com/grpc.lookup.v1.RouteLookupClusterSpecifier".into(),
                value: vec![],
            }),
        }),
        is_optional: false,
    }
}

/// grpc-go (`unmarshal_rds.go`) and grpc core (`xds_route_config_parser.cc`): a route
/// naming a cluster specifier plugin the configuration does not declare is a NACK, and so
/// are two plugins with one name (core).
#[test]
fn cluster_specifier_plugins_must_be_declared_once() {
    use route_pb::route_action::ClusterSpecifier as S;
    let rls = route_pb::RouteAction {
        cluster_specifier: Some(S::ClusterSpecifierPlugin("rls".into())),
        ..Default::default()
    };
    let pb = one_route(route_to("/", rls.clone()));
    let err = rds_err(&pb);
    assert_eq!(
        err.kind().path(),
        Some("virtual_hosts[0].routes[0].route.cluster_specifier_plugin")
    );

    let mut pb = one_route(route_to("/", rls));
    pb.cluster_specifier_plugins = vec![plugin("rls"), plugin("rls")];
    assert_eq!(
        rds_err(&pb).kind().path(),
        Some("cluster_specifier_plugins[1].extension.name")
    );
    pb.cluster_specifier_plugins = vec![plugin("other"), plugin("rls")];
    rds(&pb);
    pb.cluster_specifier_plugins[0].extension = None;
    assert_eq!(
        rds_err(&pb).kind().path(),
        Some("cluster_specifier_plugins[0].extension")
    );
}

#[test]
fn non_forwarding_and_unsupported_actions() {
    use route_pb::route::Action;
    let mut r = route_to("/", cluster_action("c"));
    r.action = Some(Action::NonForwardingAction(
        route_pb::NonForwardingAction {},
    ));
    assert_eq!(single(r.clone()).action, RouteAction::NonForwarding);

    // Redirects stay in place (so matching is unchanged) but fail the requests they match.
    r.action = Some(Action::Redirect(route_pb::RedirectAction::default()));
    let rc = rds(&one_route(r.clone()));
    assert_eq!(
        rc.virtual_hosts[0].routes[0].action,
        RouteAction::Unsupported(UnsupportedAction::Redirect)
    );
    assert!(!rc.unsupported_fields.is_empty());

    r.action = Some(Action::DirectResponse(
        route_pb::DirectResponseAction::default(),
    ));
    assert_eq!(
        single(r.clone()).action,
        RouteAction::Unsupported(UnsupportedAction::DirectResponse)
    );
    r.action = None;
    assert_eq!(
        single(r).action,
        RouteAction::Unsupported(UnsupportedAction::Missing)
    );
}

#[test]
fn timeouts_and_max_stream_duration() {
    let mut a = cluster_action("c");
    a.timeout = dur(0, 0);
    let f = single(route_to("/", a.clone()));
    assert_eq!(forward(&f).timeout, None, "timeout: 0s means none");
    assert_eq!(forward(&f).max_stream_duration, None);

    a.timeout = dur(3, 500_000_000);
    a.max_stream_duration = Some(route_pb::route_action::MaxStreamDuration {
        max_stream_duration: dur(10, 0),
        grpc_timeout_header_max: dur(5, 0),
        grpc_timeout_header_offset: dur(0, 0),
    });
    let f = single(route_to("/", a.clone()));
    assert_eq!(forward(&f).timeout, Some(StdDuration::from_millis(3500)));
    let msd = forward(&f).max_stream_duration.unwrap();
    assert_eq!(msd.max, Some(StdDuration::from_secs(10)));
    assert_eq!(msd.grpc_timeout_header_max, Some(StdDuration::from_secs(5)));
    assert_eq!(msd.grpc_timeout_header_offset, None);
    assert_eq!(msd.effective(), Some(StdDuration::from_secs(5)));

    // Istio's VirtualService routes: max_stream_duration 0s = no limit.
    a.max_stream_duration = Some(route_pb::route_action::MaxStreamDuration {
        max_stream_duration: dur(0, 0),
        ..Default::default()
    });
    let msd = forward(&single(route_to("/", a.clone())))
        .max_stream_duration
        .unwrap();
    assert_eq!(msd.max, None);
    assert_eq!(msd.effective(), None);

    // The deprecated max_grpc_timeout fills in for grpc_timeout_header_max.
    a.max_stream_duration = None;
    a.max_grpc_timeout = dur(2, 0);
    let msd = forward(&single(route_to("/", a.clone())))
        .max_stream_duration
        .unwrap();
    assert_eq!(msd.grpc_timeout_header_max, Some(StdDuration::from_secs(2)));
    assert_eq!(msd.effective(), Some(StdDuration::from_secs(2)));

    a.timeout = dur(-1, 0);
    let err = rds_err(&one_route(route_to("/", a)));
    assert_eq!(
        err.kind().path(),
        Some("virtual_hosts[0].routes[0].route.timeout")
    );
}

fn retry(retry_on: &str) -> route_pb::RetryPolicy {
    route_pb::RetryPolicy {
        retry_on: retry_on.into(),
        ..Default::default()
    }
}

#[test]
fn retry_policy_defaults_and_conditions() {
    let mut a = cluster_action("c");
    a.retry_policy = Some(retry("unavailable, cancelled,5xx,previous-hosts,RESET"));
    let rc = rds(&one_route(route_to("/", a)));
    let rp = forward(&rc.virtual_hosts[0].routes[0])
        .retry_policy
        .clone()
        .unwrap();
    assert_eq!(
        rp.retry_on,
        RetryOn::UNAVAILABLE | RetryOn::CANCELLED | RetryOn::HTTP_5XX | RetryOn::RESET
    );
    assert!(!rp.retry_on.contains(RetryOn::INTERNAL));
    assert_eq!(rp.num_retries, 1);
    assert_eq!(rp.base_interval, StdDuration::from_millis(25));
    assert_eq!(rp.max_interval, StdDuration::from_millis(250));
    assert_eq!(rp.per_try_timeout, None);
    assert!(!rp.avoid_previous_hosts);
    // Unknown tokens are listed, not errors.
    assert!(
        rc.unsupported_fields.contains(
            &"virtual_hosts[0].routes[0].route.retry_policy.retry_on (previous-hosts)".to_owned()
        ),
        "{:?}",
        rc.unsupported_fields
    );
    assert_eq!(
        format!("{:?}", rp.retry_on),
        r#"{"cancelled", "unavailable", "5xx", "reset"}"#
    );
}

#[test]
fn retry_policy_values_and_errors() {
    let mut p = retry("unavailable");
    p.num_retries = u32v(0);
    p.retry_back_off = Some(route_pb::retry_policy::RetryBackOff {
        base_interval: dur(0, 100_000_000),
        max_interval: None,
    });
    p.per_try_timeout = dur(1, 0);
    p.retriable_status_codes = vec![503, 429];
    let mut a = cluster_action("c");
    a.retry_policy = Some(p.clone());
    let rp = forward(&single(route_to("/", a.clone())))
        .retry_policy
        .clone()
        .unwrap();
    assert_eq!(rp.num_retries, 0, "no retries is valid");
    assert_eq!(rp.base_interval, StdDuration::from_millis(100));
    assert_eq!(rp.max_interval, StdDuration::from_secs(1));
    assert_eq!(rp.per_try_timeout, Some(StdDuration::from_secs(1)));
    assert_eq!(rp.retriable_status_codes, [503, 429]);

    let check = |p: route_pb::RetryPolicy, path: &str| {
        let mut a = cluster_action("c");
        a.retry_policy = Some(p);
        let err = rds_err(&one_route(route_to("/", a)));
        assert_eq!(err.kind().path(), Some(path), "{err}");
    };
    let mut bad = p.clone();
    bad.retry_back_off.as_mut().unwrap().base_interval = dur(0, 0);
    check(
        bad,
        "virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.base_interval",
    );
    let mut bad = p.clone();
    bad.retry_back_off.as_mut().unwrap().max_interval = dur(0, 1_000);
    check(
        bad,
        "virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.max_interval",
    );
    let mut bad = p.clone();
    bad.retriable_status_codes = vec![503, 70_000];
    check(
        bad,
        "virtual_hosts[0].routes[0].route.retry_policy.retriable_status_codes[1]",
    );
}

#[test]
fn route_retry_policy_overrides_the_virtual_host() {
    let mut vh = vhost(
        &["*"],
        vec![
            route_to("/own", cluster_action("c")),
            route_to("/", cluster_action("c")),
        ],
    );
    vh.retry_policy = Some(retry("internal"));
    let mut own = cluster_action("c");
    own.retry_policy = Some(retry("deadline-exceeded"));
    vh.routes[0].action = Some(route_pb::route::Action::Route(own));
    let rc = rds(&route_config("rc", vec![vh]));
    let vh = &rc.virtual_hosts[0];
    assert_eq!(
        vh.retry_policy.as_ref().unwrap().retry_on,
        RetryOn::INTERNAL
    );
    let r0 = forward(&vh.routes[0]).retry_policy.as_ref().unwrap();
    assert_eq!(r0.retry_on, RetryOn::DEADLINE_EXCEEDED);
    let r1 = forward(&vh.routes[1]).retry_policy.as_ref().unwrap();
    assert_eq!(r1.retry_on, RetryOn::INTERNAL);
}

#[test]
fn hash_policies() {
    use route_pb::route_action::hash_policy::{self as hp, PolicySpecifier as S};
    let policy = |s, terminal| route_pb::route_action::HashPolicy {
        terminal,
        policy_specifier: Some(s),
    };
    let mut a = cluster_action("c");
    a.hash_policy = vec![
        policy(
            S::Header(hp::Header {
                header_name: "X-User".into(),
                regex_rewrite: Some(matcher_pb::RegexMatchAndSubstitute {
                    pattern: Some(regex("[0-9]+")),
                    substitution: "N".into(),
                }),
            }),
            true,
        ),
        policy(
            S::FilterState(hp::FilterState {
                key: "io.grpc.channel_id".into(),
            }),
            false,
        ),
        policy(
            S::ConnectionProperties(hp::ConnectionProperties { source_ip: true }),
            false,
        ),
        policy(
            S::Cookie(hp::Cookie {
                name: "session".into(),
                ..Default::default()
            }),
            false,
        ),
        policy(
            S::FilterState(hp::FilterState {
                key: "other".into(),
            }),
            false,
        ),
    ];
    let rc = rds(&one_route(route_to("/", a.clone())));
    let hps = &forward(&rc.virtual_hosts[0].routes[0]).hash_policies;
    assert_eq!(
        hps.len(),
        3,
        "cookie and unknown filter-state policies are skipped"
    );
    let HashPolicyKind::Header {
        name,
        regex_rewrite: Some((re, sub)),
    } = &hps[0].kind
    else {
        panic!("{hps:?}")
    };
    assert_eq!(name, "x-user");
    assert!(hps[0].terminal);
    // The rewrite regex is unanchored: it replaces every match.
    assert_eq!(re.regex().replace_all("a1b22", sub.as_str()), "aNbN");
    assert_eq!(hps[1].kind, HashPolicyKind::ChannelId);
    assert_eq!(hps[2].kind, HashPolicyKind::SourceIp);
    assert!(
        rc.unsupported_fields
            .iter()
            .any(|f| f.contains("hash_policy[3]"))
    );
    assert!(
        rc.unsupported_fields
            .iter()
            .any(|f| f.contains("hash_policy[4]"))
    );

    a.hash_policy = vec![policy(
        S::Header(hp::Header {
            header_name: "x".into(),
            regex_rewrite: Some(matcher_pb::RegexMatchAndSubstitute {
                pattern: Some(regex("(")),
                substitution: String::new(),
            }),
        }),
        false,
    )];
    let err = rds_err(&one_route(route_to("/", a)));
    assert_eq!(
        err.kind().path(),
        Some("virtual_hosts[0].routes[0].route.hash_policy[0].header.regex_rewrite.pattern")
    );
}

#[test]
fn unsupported_fields_are_listed() {
    let hv = core_pb::HeaderValueOption::default();
    let mut rc = one_route(route_to("/", cluster_action("c")));
    rc.request_headers_to_add = vec![hv.clone()];
    rc.virtual_hosts[0].request_headers_to_add = vec![hv.clone()];
    rc.virtual_hosts[0]
        .typed_per_filter_config
        .insert("f".into(), Any::default());
    rc.virtual_hosts[0].routes[0].response_headers_to_add = vec![hv];
    let rc = rds(&rc);
    for field in [
        "request_headers_to_add",
        "virtual_hosts[0].request_headers_to_add",
        "virtual_hosts[0].typed_per_filter_config[\"f\"] (override of type \"\" not implemented)",
        "virtual_hosts[0].routes[0].response_headers_to_add",
    ] {
        assert!(
            rc.unsupported_fields.contains(&field.to_owned()),
            "{field}: {:?}",
            rc.unsupported_fields
        );
    }
    let r = Resource::RouteConfiguration(std::sync::Arc::new(rc.clone()));
    assert_eq!(r.unsupported_fields(), rc.unsupported_fields.as_slice());
}

/// What istiod's grpcgen sends for an outbound route without a VirtualService.
#[test]
fn istio_shaped_route_configuration() {
    let cluster = "outbound|7070||echo.default.svc.cluster.local";
    let retry_policy = route_pb::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into(),
        num_retries: u32v(2),
        retry_host_predicate: vec![route_pb::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(route_pb::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                Any {
                    type_url: "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate".into(),
                    value: vec![],
                },
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    };
    let mut action = cluster_action(cluster);
    action.timeout = dur(0, 0);
    action.max_grpc_timeout = dur(0, 0);
    action.retry_policy = Some(retry_policy);
    let mut route = route_to("", action);
    route.name = "default".into();
    let rc = route_config(
        cluster,
        vec![vhost(
            &[
                "echo.default.svc.cluster.local",
                "echo.default.svc.cluster.local:7070",
                "echo.default.svc.cluster.local.",
                "echo",
                "echo:7070",
            ],
            vec![route],
        )],
    );
    let rc = rds(&rc);
    assert!(
        rc.unsupported_fields.is_empty(),
        "{:?}",
        rc.unsupported_fields
    );
    let vh = rc
        .virtual_host_for("echo.default.svc.cluster.local:7070")
        .unwrap();
    let f = forward(&vh.routes[0]);
    assert_eq!(f.clusters, ClusterSpecifier::Cluster(cluster.into()));
    assert_eq!(f.timeout, None);
    let msd = f.max_stream_duration.unwrap();
    assert_eq!(msd.grpc_timeout_header_max, Some(StdDuration::ZERO));
    assert_eq!(msd.effective(), None, "0s means no limit");
    let rp = f.retry_policy.as_ref().unwrap();
    assert_eq!(rp.num_retries, 2);
    assert!(
        rp.retry_on
            .contains(RetryOn::UNAVAILABLE | RetryOn::CANCELLED)
    );
    assert!(
        rp.retry_on
            .contains(RetryOn::CONNECT_FAILURE | RetryOn::REFUSED_STREAM)
    );
    assert!(rp.avoid_previous_hosts);
    assert_eq!(rp.host_selection_max_attempts, 5);
    assert!(rc.virtual_host_for("other:7070").is_none());
}

/// One rule, two inputs: a value that breaks it is refused with the same words and field
/// path whether a control plane sent it (a NACK) or it was built by hand
/// (`RouteConfiguration::validate`, which `StaticConfig` calls).
#[test]
fn hand_built_configs_are_refused_like_decoded_ones() {
    use route_pb::route_action::hash_policy::{Header, PolicySpecifier};
    // Breaks the decoded form of `good` the way `break_pb` breaks the proto.
    let case =
        |name: &str, break_pb: &dyn Fn(&mut route_pb::Route), break_rc: &dyn Fn(&mut Route)| {
            let mut good = route_to("/", cluster_action("c"));
            good.r#match.as_mut().unwrap().headers = vec![route_pb::HeaderMatcher {
                name: "x".into(),
                header_match_specifier: Some(
                    route_pb::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
                ),
                ..Default::default()
            }];
            let mut rc = rds(&one_route(good.clone()));
            break_rc(&mut rc.virtual_hosts[0].routes[0]);
            let hand = rc.validate().expect_err(name);
            break_pb(&mut good);
            let nack = rds_err(&one_route(good));
            assert_eq!(
                ResourceErrorKind::from(hand.clone()).to_string(),
                nack.kind().to_string(),
                "{name}"
            );
            assert_eq!(Some(hand.path()), nack.kind().path(), "{name}");
        };
    fn set_action(r: &mut route_pb::Route, a: route_pb::RouteAction) {
        r.action = Some(route_pb::route::Action::Route(a));
    }
    fn weights(list: &[(&str, u32)]) -> ClusterSpecifier {
        let list = list.iter().map(|&(name, weight)| WeightedCluster {
            name: name.into(),
            weight,
        });
        ClusterSpecifier::Weighted(list.collect())
    }
    fn forward_mut(r: &mut Route) -> &mut ForwardAction {
        match &mut r.action {
            RouteAction::Forward(fa) => fa,
            other => panic!("not a forward action: {other:?}"),
        }
    }

    case(
        "empty cluster",
        &|r| set_action(r, cluster_action("")),
        &|r| forward_mut(r).clusters = ClusterSpecifier::Cluster(String::new()),
    );
    case(
        "zero weights",
        &|r| set_action(r, weighted(&[("a", Some(0)), ("b", None)])),
        &|r| forward_mut(r).clusters = weights(&[("a", 0)]),
    );
    case(
        "weights overflow",
        &|r| set_action(r, weighted(&[("a", Some(u32::MAX)), ("b", Some(1))])),
        &|r| forward_mut(r).clusters = weights(&[("a", u32::MAX), ("b", 1)]),
    );
    case(
        "empty weighted cluster name",
        &|r| set_action(r, weighted(&[("a", Some(1)), ("", Some(1))])),
        &|r| forward_mut(r).clusters = weights(&[("a", 1), ("", 1)]),
    );
    case(
        "empty header name",
        &|r| r.r#match.as_mut().unwrap().headers[0].name.clear(),
        &|r| r.matcher.headers[0].name.clear(),
    );
    case(
        "empty query parameter name",
        &|r| {
            r.r#match.as_mut().unwrap().query_parameters = vec![route_pb::QueryParameterMatcher {
                name: String::new(),
                query_parameter_match_specifier: Some(
                    route_pb::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(
                        true,
                    ),
                ),
            }]
        },
        &|r| {
            r.matcher.query_parameters = vec![QueryParameterMatcher {
                name: String::new(),
                string_match: None,
                present: Some(true),
            }]
        },
    );
    case(
        "empty hash header",
        &|r| {
            let mut a = cluster_action("c");
            a.hash_policy = vec![route_pb::route_action::HashPolicy {
                policy_specifier: Some(PolicySpecifier::Header(Header::default())),
                terminal: false,
            }];
            set_action(r, a)
        },
        &|r| {
            forward_mut(r).hash_policies = vec![HashPolicy {
                kind: HashPolicyKind::Header {
                    name: String::new(),
                    regex_rewrite: None,
                },
                terminal: false,
            }]
        },
    );
    let with_retry = |r: &mut route_pb::Route, f: &dyn Fn(&mut route_pb::RetryPolicy)| {
        let mut p = retry("5xx");
        p.retry_back_off = Some(route_pb::retry_policy::RetryBackOff {
            base_interval: dur(0, 100_000_000),
            max_interval: dur(1, 0),
        });
        f(&mut p);
        let mut a = cluster_action("c");
        a.retry_policy = Some(p);
        set_action(r, a);
    };
    fn retry_mut(r: &mut Route) -> &mut RetryPolicy {
        forward_mut(r).retry_policy.get_or_insert(RetryPolicy {
            retry_on: RetryOn::HTTP_5XX,
            num_retries: 1,
            base_interval: StdDuration::from_millis(100),
            max_interval: StdDuration::from_secs(1),
            per_try_timeout: None,
            retriable_status_codes: Vec::new(),
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
        })
    }
    case(
        "zero base interval",
        &|r| {
            with_retry(r, &|p| {
                p.retry_back_off.as_mut().unwrap().base_interval = dur(0, 0);
                p.retry_back_off.as_mut().unwrap().max_interval = None;
            })
        },
        &|r| {
            let p = retry_mut(r);
            p.base_interval = StdDuration::ZERO;
            p.max_interval = StdDuration::ZERO;
        },
    );
    case(
        "max interval below base",
        &|r| {
            with_retry(r, &|p| {
                p.retry_back_off.as_mut().unwrap().max_interval = dur(0, 1_000)
            })
        },
        &|r| retry_mut(r).max_interval = StdDuration::from_micros(1),
    );
    case(
        "not an HTTP status",
        &|r| with_retry(r, &|p| p.retriable_status_codes = vec![503, 700]),
        &|r| retry_mut(r).retriable_status_codes = vec![503, 700],
    );
}

/// The decoder checks each value where it stands in the proto: a route it leaves out (a
/// cluster specifier plugin) does not shift the path of an error in a later route.
#[test]
fn errors_name_the_proto_position_after_a_skipped_route() {
    use route_pb::route_action::ClusterSpecifier as S;
    let rls = route_pb::RouteAction {
        cluster_specifier: Some(S::ClusterSpecifierPlugin("rls".into())),
        ..Default::default()
    };
    let mut pb = route_config(
        "rc",
        vec![vhost(
            &["*"],
            vec![route_to("/a", rls), route_to("/b", cluster_action(""))],
        )],
    );
    pb.cluster_specifier_plugins = vec![plugin("rls")];
    assert_eq!(
        rds_err(&pb).kind().to_string(),
        "virtual_hosts[0].routes[1].route.cluster: must not be empty"
    );
}

/// `typed_per_filter_config` as grpc-go reads it (A39, A41): RBACPerRoute overrides are
/// decoded on the virtual host and the route, bare or in a `FilterConfig`; overrides of
/// filters meshwork does not run are listed; a malformed RBAC override is a NACK naming the
/// entry.
#[test]
fn per_filter_overrides() {
    use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as filter_pb;

    let deny_all = filter_pb::RbacPerRoute {
        rbac: Some(filter_pb::Rbac {
            rules: Some(rbac_pb::Rbac {
                action: rbac_pb::rbac::Action::Deny as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let wrapped = |config: Option<Any>, is_optional: bool| {
        any(&route_pb::FilterConfig {
            config,
            is_optional,
            disabled: false,
        })
    };
    let mut rc = one_route(route_to("/", cluster_action("c")));
    let vh = &mut rc.virtual_hosts[0];
    vh.typed_per_filter_config
        .insert("rbac".into(), any(&filter_pb::RbacPerRoute::default()));
    vh.typed_per_filter_config
        .insert("fault".into(), any(&HttpFault::default()));
    let route = &mut vh.routes[0];
    route
        .typed_per_filter_config
        .insert("rbac".into(), wrapped(Some(any(&deny_all)), false));
    route.typed_per_filter_config.insert(
        "unknown".into(),
        wrapped(
            Some(Any {
                type_url: "type.googleapis.com/example.Unknown".into(),
                value: vec![],
            }),
            true,
        ),
    );
    let decoded = rds(&rc);
    let vh = &decoded.virtual_hosts[0];
    assert_eq!(
        vh.filter_overrides,
        [(
            "rbac".to_owned(),
            FilterOverride::Rbac(crate::resource::RbacPerRoute::default())
        )]
        .into()
    );
    let route = &vh.routes[0];
    assert_eq!(
        route.filter_overrides.len(),
        1,
        "{:?}",
        route.filter_overrides
    );
    let FilterOverride::Rbac(per_route) = &route.filter_overrides["rbac"];
    let rules = per_route.rbac.rules.as_ref().expect("rules");
    assert_eq!(rules.action, crate::resource::RbacAction::Deny);
    assert_eq!(
        decoded.unsupported_fields,
        [
            "virtual_hosts[0].typed_per_filter_config[\"fault\"] (override of type \"type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\" not implemented)",
            "virtual_hosts[0].routes[0].typed_per_filter_config[\"unknown\"] (optional override of type \"type.googleapis.com/example.Unknown\" not implemented)",
        ]
    );

    // NACKs, each naming the entry.
    let nack = |entry: Any| {
        let mut rc = one_route(route_to("/", cluster_action("c")));
        rc.virtual_hosts[0].routes[0]
            .typed_per_filter_config
            .insert("envoy.filters.http.rbac".into(), entry);
        let err = rds_err(&rc);
        err.kind().path().unwrap_or_default().to_owned()
    };
    let at = "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.rbac\"]";
    let mut bad_rules = deny_all.clone();
    bad_rules.rbac.as_mut().unwrap().matcher = Some(Default::default());
    assert_eq!(nack(any(&bad_rules)), format!("{at}.rbac.matcher"));
    assert_eq!(
        nack(wrapped(Some(any(&bad_rules)), true)),
        format!("{at}.config.rbac.matcher")
    );
    assert_eq!(nack(wrapped(None, true)), format!("{at}.config"));
    assert_eq!(
        nack(any(&filter_pb::Rbac::default())),
        at,
        "an RBAC override is an RBACPerRoute"
    );
    let garbage = |type_url: &str| Any {
        type_url: type_url.into(),
        value: vec![0xff],
    };
    assert_eq!(nack(garbage(crate::resource::RBAC_PER_ROUTE_TYPE_URL)), at);
    assert_eq!(nack(garbage(FILTER_CONFIG_TYPE_URL)), at);
}
