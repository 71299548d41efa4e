//! Requests judged against Istio-shaped RBAC filters, built from the Envoy protos istiod
//! sends and decoded by meshwork-xds, so decoding and evaluation are tested together.

// The tests build policies with the deprecated kinds control planes still send.
#![allow(deprecated)]

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as filter_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::UInt32Value;
use meshwork_xds::resource::RbacConfig;
use spiffe::SpiffeId;

use super::*;
use crate::identity::PeerIdentity;
use crate::inbound::ConnectionInfo;

use matcher_pb::string_matcher::MatchPattern;
use rbac_pb::permission::Rule;
use rbac_pb::principal::Identifier;
use rbac_pb::rbac::Action;

// ---- Envoy protos, shaped as istiod writes them ----

fn sm(pattern: MatchPattern) -> matcher_pb::StringMatcher {
    matcher_pb::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

fn exact(s: &str) -> matcher_pb::StringMatcher {
    sm(MatchPattern::Exact(s.into()))
}

fn prefix(s: &str) -> matcher_pb::StringMatcher {
    sm(MatchPattern::Prefix(s.into()))
}

fn regex(s: &str) -> matcher_pb::StringMatcher {
    sm(MatchPattern::SafeRegex(matcher_pb::RegexMatcher {
        regex: s.into(),
        engine_type: None,
    }))
}

fn perm(rule: Rule) -> rbac_pb::Permission {
    rbac_pb::Permission { rule: Some(rule) }
}

fn id(identifier: Identifier) -> rbac_pb::Principal {
    rbac_pb::Principal {
        identifier: Some(identifier),
    }
}

fn and_rules(rules: Vec<rbac_pb::Permission>) -> rbac_pb::Permission {
    perm(Rule::AndRules(rbac_pb::permission::Set { rules }))
}

fn or_rules(rules: Vec<rbac_pb::Permission>) -> rbac_pb::Permission {
    perm(Rule::OrRules(rbac_pb::permission::Set { rules }))
}

fn and_ids(ids: Vec<rbac_pb::Principal>) -> rbac_pb::Principal {
    id(Identifier::AndIds(rbac_pb::principal::Set { ids }))
}

fn or_ids(ids: Vec<rbac_pb::Principal>) -> rbac_pb::Principal {
    id(Identifier::OrIds(rbac_pb::principal::Set { ids }))
}

fn url_path(m: matcher_pb::StringMatcher) -> rbac_pb::Permission {
    perm(Rule::UrlPath(matcher_pb::PathMatcher {
        rule: Some(matcher_pb::path_matcher::Rule::Path(m)),
    }))
}

fn header(name: &str, m: matcher_pb::StringMatcher) -> route_pb::HeaderMatcher {
    route_pb::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(
            m,
        )),
        ..Default::default()
    }
}

fn present(name: &str, present: bool, invert: bool) -> route_pb::HeaderMatcher {
    route_pb::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(
            route_pb::header_matcher::HeaderMatchSpecifier::PresentMatch(present),
        ),
        invert_match: invert,
        ..Default::default()
    }
}

fn principal_name(m: matcher_pb::StringMatcher) -> rbac_pb::Principal {
    id(Identifier::Authenticated(
        rbac_pb::principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

fn cidr(prefix: &str, len: u32) -> core_pb::CidrRange {
    core_pb::CidrRange {
        address_prefix: prefix.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

fn any_id() -> rbac_pb::Principal {
    id(Identifier::Any(true))
}

fn policy(
    permissions: Vec<rbac_pb::Permission>,
    principals: Vec<rbac_pb::Principal>,
) -> rbac_pb::Policy {
    rbac_pb::Policy {
        permissions,
        principals,
        ..Default::default()
    }
}

fn engine(action: Action, policies: Vec<(&str, rbac_pb::Policy)>) -> RbacEngine {
    let filter = filter_pb::Rbac {
        rules: Some(rbac_pb::Rbac {
            action: action as i32,
            policies: policies
                .into_iter()
                .map(|(n, p)| (n.to_owned(), p))
                .collect::<HashMap<_, _>>(),
            audit_logging_options: None,
        }),
        ..Default::default()
    };
    RbacEngine::new(&RbacConfig::from_proto(&filter).unwrap())
}

/// Istio's DENY filter (`envoy.filters.http.rbac.DENY`): nobody calls the admin service,
/// and nothing comes from 10.9.0.0/16.
fn istio_deny() -> RbacEngine {
    engine(
        Action::Deny,
        vec![
            (
                "ns[default]-policy[deny-admin]-rule[0]",
                policy(
                    vec![and_rules(vec![or_rules(vec![url_path(prefix(
                        "/admin.Admin/",
                    ))])])],
                    vec![and_ids(vec![any_id()])],
                ),
            ),
            (
                "ns[default]-policy[deny-net]-rule[0]",
                policy(
                    vec![and_rules(vec![perm(Rule::Any(true))])],
                    vec![and_ids(vec![or_ids(vec![id(Identifier::RemoteIp(cidr(
                        "10.9.0.0", 16,
                    )))])])],
                ),
            ),
        ],
    )
}

/// Istio's ALLOW filter: `sleep` may call Get and List on port 8080 with POST; anyone in
/// namespace `foo` may call anything but Delete when it says `x-env: canary`; the health
/// check is open to plaintext callers on loopback ports 9000-9099.
fn istio_allow() -> RbacEngine {
    engine(
        Action::Allow,
        vec![
            (
                "ns[default]-policy[allow-sleep]-rule[0]",
                policy(
                    vec![and_rules(vec![
                        or_rules(vec![perm(Rule::Header(header(":method", exact("POST"))))]),
                        or_rules(vec![
                            url_path(exact("/echo.Echo/Get")),
                            url_path(prefix("/echo.Echo/List")),
                        ]),
                        or_rules(vec![perm(Rule::DestinationPort(8080))]),
                    ])],
                    vec![and_ids(vec![or_ids(vec![principal_name(exact(
                        "spiffe://cluster.local/ns/default/sa/sleep",
                    ))])])],
                ),
            ),
            (
                "ns[default]-policy[allow-foo]-rule[0]",
                policy(
                    vec![and_rules(vec![
                        or_rules(vec![perm(Rule::Header(header("x-env", exact("canary"))))]),
                        perm(Rule::NotRule(Box::new(or_rules(vec![url_path(exact(
                            "/echo.Echo/Delete",
                        ))])))),
                    ])],
                    vec![and_ids(vec![or_ids(vec![principal_name(regex(
                        "spiffe://cluster\\.local/ns/foo/.*",
                    ))])])],
                ),
            ),
            (
                "ns[default]-policy[health]-rule[0]",
                policy(
                    vec![and_rules(vec![
                        url_path(exact("/grpc.health.v1.Health/Check")),
                        perm(Rule::DestinationIp(cidr("127.0.0.0", 8))),
                        perm(Rule::DestinationPortRange(Int32Range {
                            start: 9000,
                            end: 9100,
                        })),
                    ])],
                    vec![any_id()],
                ),
            ),
        ],
    )
}

// ---- requests ----

struct Req {
    method: http::Method,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    peer: Option<&'static str>,
    tls: bool,
    remote: &'static str,
    local: &'static str,
}

fn req(path: &'static str) -> Req {
    Req {
        method: http::Method::POST,
        path,
        headers: vec![],
        peer: None,
        tls: false,
        remote: "10.0.0.2:40000",
        local: "10.0.0.1:8080",
    }
}

impl Req {
    fn from(mut self, spiffe_id: &'static str) -> Self {
        self.peer = Some(spiffe_id);
        self.tls = true;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn remote(mut self, addr: &'static str) -> Self {
        self.remote = addr;
        self
    }

    fn local(mut self, addr: &'static str) -> Self {
        self.local = addr;
        self
    }

    fn method(mut self, method: http::Method) -> Self {
        self.method = method;
        self
    }

    fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Runs `f` with the request's attributes.
    fn with<T>(&self, f: impl FnOnce(&RbacAttributes<'_>) -> T) -> T {
        let mut builder = http::Request::builder()
            .method(self.method.clone())
            .uri(self.path);
        for (name, value) in &self.headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(()).unwrap();
        let peer = self
            .peer
            .map(|s| PeerIdentity::new(SpiffeId::new(s).unwrap()));
        let connection = ConnectionInfo::new(
            self.remote.parse::<SocketAddr>().unwrap(),
            self.local.parse::<SocketAddr>().unwrap(),
            peer,
        );
        f(&RbacAttributes::new(&request, &connection, self.tls))
    }
}

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const FOO: &str = "spiffe://cluster.local/ns/foo/sa/app";

fn allow(policy: &'static str) -> RbacDecision<'static> {
    RbacDecision::Allow {
        policy: Some(policy),
    }
}

fn deny(policy: &'static str) -> RbacDecision<'static> {
    RbacDecision::Deny {
        policy: Some(policy),
    }
}

const NOT_ALLOWED: RbacDecision<'static> = RbacDecision::Deny { policy: None };

#[test]
fn istio_deny_then_allow_chain() {
    let chain = [istio_deny(), istio_allow()];
    let cases: Vec<(&str, Req, RbacDecision<'static>)> = vec![
        (
            "sleep, exact path",
            req("/echo.Echo/Get").from(SLEEP),
            allow("ns[default]-policy[allow-sleep]-rule[0]"),
        ),
        (
            "sleep, prefix path",
            req("/echo.Echo/ListAll").from(SLEEP),
            allow("ns[default]-policy[allow-sleep]-rule[0]"),
        ),
        (
            "sleep, other method",
            req("/echo.Echo/Put").from(SLEEP),
            NOT_ALLOWED,
        ),
        (
            "sleep, GET",
            req("/echo.Echo/Get").from(SLEEP).method(http::Method::GET),
            NOT_ALLOWED,
        ),
        (
            "sleep, other port",
            req("/echo.Echo/Get").from(SLEEP).local("10.0.0.1:8081"),
            NOT_ALLOWED,
        ),
        (
            "sleep lookalike",
            req("/echo.Echo/Get").from("spiffe://cluster.local/ns/default/sa/sleepy"),
            NOT_ALLOWED,
        ),
        ("no certificate", req("/echo.Echo/Get"), NOT_ALLOWED),
        (
            "foo with header",
            req("/echo.Echo/Put").from(FOO).header("x-env", "canary"),
            allow("ns[default]-policy[allow-foo]-rule[0]"),
        ),
        (
            "foo, header differs",
            req("/echo.Echo/Put").from(FOO).header("x-env", "prod"),
            NOT_ALLOWED,
        ),
        (
            "foo, no header",
            req("/echo.Echo/Put").from(FOO),
            NOT_ALLOWED,
        ),
        (
            "foo, Delete excluded by not_rule",
            req("/echo.Echo/Delete").from(FOO).header("x-env", "canary"),
            NOT_ALLOWED,
        ),
        (
            "regex is a full match",
            req("/echo.Echo/Put")
                .from("spiffe://evil/cluster.local/ns/foo/sa/app")
                .header("x-env", "canary"),
            NOT_ALLOWED,
        ),
        (
            "admin denied even to sleep",
            req("/admin.Admin/Reset").from(SLEEP),
            deny("ns[default]-policy[deny-admin]-rule[0]"),
        ),
        (
            "denied network",
            req("/echo.Echo/Get").from(SLEEP).remote("10.9.3.4:5000"),
            deny("ns[default]-policy[deny-net]-rule[0]"),
        ),
        (
            "neighbouring network",
            req("/echo.Echo/Get").from(SLEEP).remote("10.10.3.4:5000"),
            allow("ns[default]-policy[allow-sleep]-rule[0]"),
        ),
        (
            "health check on loopback",
            req("/grpc.health.v1.Health/Check").local("127.0.0.1:9000"),
            allow("ns[default]-policy[health]-rule[0]"),
        ),
        (
            "health check, end of port range is exclusive",
            req("/grpc.health.v1.Health/Check").local("127.0.0.1:9100"),
            NOT_ALLOWED,
        ),
        (
            "health check on another address",
            req("/grpc.health.v1.Health/Check").local("10.0.0.1:9000"),
            NOT_ALLOWED,
        ),
        (
            "health check over IPv6 loopback is outside an IPv4 range",
            req("/grpc.health.v1.Health/Check").local("[::1]:9000"),
            NOT_ALLOWED,
        ),
    ];
    for (name, request, want) in cases {
        let got = request.with(|a| RbacEngine::decide_chain(&chain, a));
        assert_eq!(got, want, "{name}");
        assert_eq!(got.is_allowed(), matches!(want, RbacDecision::Allow { .. }));
    }
}

#[test]
fn chain_order_and_noop_engines() {
    let log = engine(
        Action::Log,
        vec![("all", policy(vec![perm(Rule::Any(true))], vec![any_id()]))],
    );
    let none = RbacEngine::new(&RbacConfig::default());
    assert!(log.is_noop() && none.is_noop());
    let request = req("/admin.Admin/Reset").from(SLEEP);
    // LOG and absent rules admit everything, alone or in a chain.
    assert_eq!(
        request.with(|a| RbacEngine::decide_chain([&log, &none], a)),
        RbacDecision::Allow { policy: None }
    );
    // An empty chain admits.
    assert!(
        request
            .with(|a| RbacEngine::decide_chain([], a))
            .is_allowed()
    );
    // Istio's allow-nothing: an ALLOW filter without policies denies every request.
    let nothing = engine(Action::Allow, vec![]);
    assert_eq!(request.with(|a| nothing.decide(a)), NOT_ALLOWED);
    // The first denial wins, whatever follows.
    let deny_filter = istio_deny();
    let allow_all = engine(
        Action::Allow,
        vec![("all", policy(vec![perm(Rule::Any(true))], vec![any_id()]))],
    );
    assert_eq!(
        request.with(|a| RbacEngine::decide_chain([&deny_filter, &allow_all], a)),
        deny("ns[default]-policy[deny-admin]-rule[0]")
    );
    assert_eq!(
        request.with(|a| RbacEngine::decide_chain([&allow_all, &deny_filter], a)),
        deny("ns[default]-policy[deny-admin]-rule[0]")
    );
    // Policies are tried in name order: both match, the first name is reported.
    let two = engine(
        Action::Deny,
        vec![
            ("b", policy(vec![perm(Rule::Any(true))], vec![any_id()])),
            ("a", policy(vec![perm(Rule::Any(true))], vec![any_id()])),
        ],
    );
    assert_eq!(request.with(|a| two.decide(a)), deny("a"));
}

fn allows(e: &RbacEngine, r: &Req) -> bool {
    r.with(|a| e.decide(a)).is_allowed()
}

fn allow_if(permission: rbac_pb::Permission) -> RbacEngine {
    engine(
        Action::Allow,
        vec![("p", policy(vec![permission], vec![any_id()]))],
    )
}

fn allow_from(principal: rbac_pb::Principal) -> RbacEngine {
    engine(
        Action::Allow,
        vec![("p", policy(vec![perm(Rule::Any(true))], vec![principal]))],
    )
}

#[test]
fn pseudo_headers_follow_a41() {
    let method = allow_if(perm(Rule::Header(header(":method", exact("PUT")))));
    assert!(allows(&method, &req("/x").method(http::Method::PUT)));
    assert!(!allows(&method, &req("/x")));

    // `:path` is the request target with its query; `url_path` is without it.
    let path = allow_if(perm(Rule::Header(header(":path", exact("/x?a=1")))));
    assert!(allows(&path, &req("/x?a=1")));
    let url = allow_if(url_path(exact("/x")));
    assert!(allows(&url, &req("/x?a=1")));

    // `:authority` and `host` are one header, whichever the policy names, and whichever
    // the request carries.
    for name in [":authority", "host", "Host"] {
        let e = allow_if(perm(Rule::Header(header(name, exact("svc.ns:8080")))));
        assert!(allows(&e, &req("http://svc.ns:8080/x")), "{name}");
        assert!(
            allows(&e, &req("/x").header("host", "svc.ns:8080")),
            "{name}"
        );
        assert!(!allows(&e, &req("/x").header("host", "other")), "{name}");
        assert!(!allows(&e, &req("/x")), "{name}");
    }
}

#[test]
fn hop_by_hop_headers_are_absent() {
    let te = allow_if(perm(Rule::Header(present("te", true, false))));
    assert!(!allows(&te, &req("/x").header("te", "trailers")));
    let nominated = allow_if(perm(Rule::Header(present("x-hop", true, false))));
    assert!(allows(&nominated, &req("/x").header("x-hop", "1")));
    assert!(!allows(
        &nominated,
        &req("/x")
            .header("connection", "keep-alive, X-Hop")
            .header("x-hop", "1")
    ));
}

#[test]
fn header_values_presence_and_binary() {
    // Several values are joined with a comma, no space.
    let joined = allow_if(perm(Rule::Header(header("x-a", exact("1,2")))));
    assert!(allows(
        &joined,
        &req("/x").header("x-a", "1").header("x-a", "2")
    ));
    // Binary headers are seen in their base64 form.
    let bin = allow_if(perm(Rule::Header(header("x-id-bin", exact("AAE=")))));
    assert!(allows(&bin, &req("/x").header("x-id-bin", "AAE=")));
    // A missing header fails a value match even inverted, but `present_match` ==
    // `invert_match` matches it (A41).
    let mut inverted = header("x-a", exact("1"));
    inverted.invert_match = true;
    let inverted = allow_if(perm(Rule::Header(inverted)));
    assert!(!allows(&inverted, &req("/x")));
    assert!(allows(&inverted, &req("/x").header("x-a", "2")));
    assert!(!allows(&inverted, &req("/x").header("x-a", "1")));
    let absent = allow_if(perm(Rule::Header(present("x-a", true, true))));
    assert!(allows(&absent, &req("/x")));
    assert!(!allows(&absent, &req("/x").header("x-a", "1")));
    let absent = allow_if(perm(Rule::Header(present("x-a", false, false))));
    assert!(allows(&absent, &req("/x")));
    // Principals see headers the same way.
    let from_header = allow_from(id(Identifier::Header(header("x-a", prefix("ab")))));
    assert!(allows(&from_header, &req("/x").header("x-a", "abc")));
    assert!(!allows(&from_header, &req("/x").header("x-a", "b")));
}

#[test]
fn authenticated_needs_tls_and_checks_the_uri_san() {
    let tls_only = allow_from(id(Identifier::Authenticated(
        rbac_pb::principal::Authenticated {
            principal_name: None,
        },
    )));
    assert!(allows(&tls_only, &req("/x").tls()));
    assert!(allows(&tls_only, &req("/x").from(SLEEP)));
    assert!(!allows(&tls_only, &req("/x")));

    // Without a client certificate the name compared is "".
    let empty = allow_from(principal_name(exact("")));
    assert!(allows(&empty, &req("/x").tls()));
    assert!(!allows(&empty, &req("/x")));
    assert!(!allows(&empty, &req("/x").from(SLEEP)));

    let exact_sleep = allow_from(principal_name(exact(SLEEP)));
    assert!(allows(&exact_sleep, &req("/x").from(SLEEP)));
    assert!(!allows(&exact_sleep, &req("/x").from(FOO)));
    let not_sleep = allow_from(id(Identifier::NotId(Box::new(principal_name(exact(
        SLEEP,
    ))))));
    assert!(!allows(&not_sleep, &req("/x").from(SLEEP)));
    assert!(allows(&not_sleep, &req("/x").from(FOO)));
    assert!(allows(&not_sleep, &req("/x")));
}

#[test]
fn addresses_and_fixed_kinds() {
    for kind in [
        Identifier::SourceIp(cidr("fd00::", 16)),
        Identifier::DirectRemoteIp(cidr("fd00::", 16)),
        Identifier::RemoteIp(cidr("fd00::", 16)),
    ] {
        let e = allow_from(id(kind));
        assert!(allows(&e, &req("/x").remote("[fd00::5]:1")));
        assert!(!allows(&e, &req("/x").remote("[fd01::5]:1")));
        assert!(!allows(&e, &req("/x").remote("10.0.0.1:1")));
    }
    // Envoy metadata is empty for gRPC: a matcher never matches unless inverted.
    let metadata = |invert| {
        perm(Rule::Metadata(matcher_pb::MetadataMatcher {
            invert,
            ..Default::default()
        }))
    };
    assert!(!allows(&allow_if(metadata(false)), &req("/x")));
    assert!(allows(&allow_if(metadata(true)), &req("/x")));
    assert!(!allows(
        &allow_from(id(Identifier::Metadata(Default::default()))),
        &req("/x")
    ));
    // The SNI is taken as "".
    assert!(allows(
        &allow_if(perm(Rule::RequestedServerName(exact("")))),
        &req("/x")
    ));
    assert!(!allows(
        &allow_if(perm(Rule::RequestedServerName(exact("a.b")))),
        &req("/x")
    ));
    // Empty `and` matches, empty `or` does not.
    assert!(allows(&allow_if(and_rules(vec![])), &req("/x")));
    assert!(!allows(&allow_if(or_rules(vec![])), &req("/x")));
    assert!(!allows(&allow_from(or_ids(vec![])), &req("/x")));
    assert!(allows(&allow_from(and_ids(vec![])), &req("/x")));
}

#[test]
fn per_route_override_replaces_or_disables_the_filter() {
    use meshwork_xds::resource::RbacPerRoute;
    let request = req("/echo.Echo/Get").from(SLEEP);
    // No `rbac` in the override: the filter is off on this route.
    let off = RbacPerRoute::from_proto(&filter_pb::RbacPerRoute::default()).unwrap();
    let off = RbacEngine::new(&off.rbac);
    assert!(off.is_noop());
    assert!(request.with(|a| off.decide(a)).is_allowed());
    // An override with rules replaces the filter's: here one that allows only `foo`.
    let only_foo = filter_pb::RbacPerRoute {
        rbac: Some(filter_pb::Rbac {
            rules: Some(rbac_pb::Rbac {
                action: Action::Allow as i32,
                policies: HashMap::from([(
                    "foo".to_owned(),
                    policy(
                        vec![perm(Rule::Any(true))],
                        vec![principal_name(prefix("spiffe://cluster.local/ns/foo/"))],
                    ),
                )]),
                audit_logging_options: None,
            }),
            ..Default::default()
        }),
    };
    let route_engine = RbacEngine::new(&RbacPerRoute::from_proto(&only_foo).unwrap().rbac);
    assert_eq!(request.with(|a| route_engine.decide(a)), NOT_ALLOWED);
    assert_eq!(
        req("/echo.Echo/Get")
            .from(FOO)
            .with(|a| route_engine.decide(a)),
        allow("foo")
    );
}
