// The tests build policies with the deprecated kinds control planes still send.
#![allow(deprecated)]

use std::collections::HashMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as filter_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::api::expr::v1alpha1 as cel_pb;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::*;
use crate::resource::route::HeaderMatchKind;
use crate::resource::testing::any;
use crate::resource::{ResourceErrorKind, StringMatchKind};

use rbac_pb::permission::Rule;
use rbac_pb::principal::Identifier;

fn perm(rule: Rule) -> rbac_pb::Permission {
    rbac_pb::Permission { rule: Some(rule) }
}

fn id(identifier: Identifier) -> rbac_pb::Principal {
    rbac_pb::Principal {
        identifier: Some(identifier),
    }
}

fn any_perm() -> rbac_pb::Permission {
    perm(Rule::Any(true))
}

fn any_id() -> rbac_pb::Principal {
    id(Identifier::Any(true))
}

fn exact(s: &str) -> matcher_pb::StringMatcher {
    matcher_pb::StringMatcher {
        match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(s.into())),
        ignore_case: false,
    }
}

fn header(name: &str, value: &str) -> route_pb::HeaderMatcher {
    route_pb::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(route_pb::header_matcher::HeaderMatchSpecifier::ExactMatch(
            value.into(),
        )),
        ..Default::default()
    }
}

fn cidr(prefix: &str, len: u32) -> core_pb::CidrRange {
    core_pb::CidrRange {
        address_prefix: prefix.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
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

fn filter(
    action: rbac_pb::rbac::Action,
    policies: Vec<(&str, rbac_pb::Policy)>,
) -> filter_pb::Rbac {
    filter_pb::Rbac {
        rules: Some(rbac_pb::Rbac {
            action: action as i32,
            policies: policies
                .into_iter()
                .map(|(n, p)| (n.to_owned(), p))
                .collect::<HashMap<_, _>>(),
            audit_logging_options: None,
        }),
        ..Default::default()
    }
}

fn one(p: rbac_pb::Policy) -> filter_pb::Rbac {
    filter(rbac_pb::rbac::Action::Allow, vec![("p", p)])
}

fn decode_one(p: rbac_pb::Policy) -> Policy {
    let config = RbacConfig::from_proto(&one(p)).unwrap();
    config.rules.unwrap().policies.remove("p").unwrap()
}

fn reject(p: rbac_pb::Policy) -> ResourceErrorKind {
    RbacConfig::from_proto(&one(p)).unwrap_err()
}

#[test]
fn absent_rules_and_log_enforce_nothing_but_log_is_validated() {
    let config = RbacConfig::from_proto(&filter_pb::Rbac::default()).unwrap();
    assert_eq!(config, RbacConfig::default());

    let log = filter(
        rbac_pb::rbac::Action::Log,
        vec![("p", policy(vec![any_perm()], vec![any_id()]))],
    );
    let rules = RbacConfig::from_proto(&log).unwrap().rules.unwrap();
    assert_eq!(rules.action, RbacAction::Log);

    let mut bad_log = log.clone();
    let policy = bad_log
        .rules
        .as_mut()
        .unwrap()
        .policies
        .get_mut("p")
        .unwrap();
    policy.condition = Some(cel_pb::Expr::default());
    assert!(RbacConfig::from_proto(&bad_log).is_err());

    let mut unknown = log;
    unknown.rules.as_mut().unwrap().action = 7;
    let err = RbacConfig::from_proto(&unknown).unwrap_err();
    assert_eq!(err.path(), Some("rules.action"), "{err}");
}

#[test]
fn policies_are_kept_in_name_order() {
    let p = || policy(vec![any_perm()], vec![any_id()]);
    let config = filter(
        rbac_pb::rbac::Action::Deny,
        vec![("ns[b]", p()), ("ns[a]", p()), ("c", p())],
    );
    let rules = RbacConfig::from_proto(&config).unwrap().rules.unwrap();
    assert_eq!(rules.action, RbacAction::Deny);
    let names: Vec<_> = rules.policies.keys().map(String::as_str).collect();
    assert_eq!(names, ["c", "ns[a]", "ns[b]"]);
}

#[test]
fn shadow_rules_and_stats_are_listed_not_enforced() {
    let mut config = one(policy(vec![any_perm()], vec![any_id()]));
    config.shadow_rules = config.rules.clone();
    config.shadow_rules_stat_prefix = "shadow".into();
    config.rules_stat_prefix = "rules".into();
    config.track_per_rule_stats = true;
    config.rules.as_mut().unwrap().audit_logging_options = Some(Default::default());
    let decoded = RbacConfig::from_proto(&config).unwrap();
    assert_eq!(
        decoded.unsupported_fields,
        [
            "rules_stat_prefix",
            "shadow_rules",
            "shadow_rules_stat_prefix",
            "track_per_rule_stats",
            "rules.audit_logging_options"
        ]
    );
    assert_eq!(decoded.rules.unwrap().policies.len(), 1);
}

#[test]
fn matcher_api_is_rejected() {
    let config = filter_pb::Rbac {
        matcher: Some(Default::default()),
        ..Default::default()
    };
    let err = RbacConfig::from_proto(&config).unwrap_err();
    assert!(
        matches!(err, ResourceErrorKind::Unsupported { .. }),
        "{err}"
    );
    assert_eq!(err.path(), Some("matcher"));
}

#[test]
fn every_permission_kind_decodes() {
    let p = decode_one(policy(
        vec![
            perm(Rule::AndRules(rbac_pb::permission::Set {
                rules: vec![any_perm(), perm(Rule::DestinationPort(8080))],
            })),
            perm(Rule::OrRules(rbac_pb::permission::Set { rules: vec![] })),
            perm(Rule::NotRule(Box::new(any_perm()))),
            perm(Rule::Header(header("Host", "a.b"))),
            perm(Rule::UrlPath(matcher_pb::PathMatcher {
                rule: Some(matcher_pb::path_matcher::Rule::Path(exact("/pkg.Svc/M"))),
            })),
            perm(Rule::DestinationIp(cidr("10.1.2.3", 8))),
            perm(Rule::DestinationPortRange(Int32Range {
                start: 80,
                end: 90,
            })),
            perm(Rule::Metadata(matcher_pb::MetadataMatcher {
                invert: true,
                ..Default::default()
            })),
            perm(Rule::RequestedServerName(exact(""))),
        ],
        vec![any_id()],
    ));
    let exact_kind = |s: &str| StringMatcher {
        kind: StringMatchKind::Exact(s.into()),
        ignore_case: false,
    };
    assert_eq!(
        p.permissions,
        [
            Permission::And(vec![Permission::Any, Permission::DestinationPort(8080)]),
            Permission::Or(vec![]),
            Permission::Not(Box::new(Permission::Any)),
            Permission::Header(HeaderMatcher {
                name: ":authority".into(),
                kind: HeaderMatchKind::Exact("a.b".into()),
                invert: false,
            }),
            Permission::UrlPath(exact_kind("/pkg.Svc/M")),
            Permission::DestinationIp(CidrRange::new("10.0.0.0".parse().unwrap(), 8).unwrap()),
            Permission::DestinationPortRange { start: 80, end: 90 },
            Permission::Metadata { invert: true },
            Permission::RequestedServerName(exact_kind("")),
        ]
    );
    assert_eq!(p.principals, [Principal::Any]);
}

#[test]
fn every_principal_kind_decodes() {
    use rbac_pb::principal::Authenticated;
    let p = decode_one(policy(
        vec![any_perm()],
        vec![
            id(Identifier::AndIds(rbac_pb::principal::Set {
                ids: vec![any_id()],
            })),
            id(Identifier::OrIds(rbac_pb::principal::Set { ids: vec![] })),
            id(Identifier::NotId(Box::new(any_id()))),
            id(Identifier::Authenticated(Authenticated {
                principal_name: Some(exact("spiffe://td/ns/a/sa/b")),
            })),
            id(Identifier::Authenticated(Authenticated {
                principal_name: None,
            })),
            id(Identifier::SourceIp(cidr("192.168.0.0", 16))),
            id(Identifier::DirectRemoteIp(cidr("::1", 128))),
            id(Identifier::RemoteIp(cidr("0.0.0.0", 0))),
            id(Identifier::Header(header(":method", "POST"))),
            id(Identifier::UrlPath(matcher_pb::PathMatcher {
                rule: Some(matcher_pb::path_matcher::Rule::Path(exact("/x"))),
            })),
            id(Identifier::Metadata(Default::default())),
        ],
    ));
    let ip = |s: &str, len| CidrRange::new(s.parse().unwrap(), len).unwrap();
    assert_eq!(
        p.principals,
        [
            Principal::And(vec![Principal::Any]),
            Principal::Or(vec![]),
            Principal::Not(Box::new(Principal::Any)),
            Principal::Authenticated {
                principal_name: Some(StringMatcher {
                    kind: StringMatchKind::Exact("spiffe://td/ns/a/sa/b".into()),
                    ignore_case: false,
                }),
            },
            Principal::Authenticated {
                principal_name: None
            },
            Principal::RemoteIp(ip("192.168.0.0", 16)),
            Principal::RemoteIp(ip("::1", 128)),
            Principal::RemoteIp(ip("0.0.0.0", 0)),
            Principal::Header(HeaderMatcher {
                name: ":method".into(),
                kind: HeaderMatchKind::Exact("POST".into()),
                invert: false,
            }),
            Principal::UrlPath(StringMatcher {
                kind: StringMatchKind::Exact("/x".into()),
                ignore_case: false,
            }),
            Principal::Metadata { invert: false },
        ]
    );
}

#[test]
fn a41_rejections_name_the_field() {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    let cases: Vec<(rbac_pb::Policy, &str)> = vec![
        (
            rbac_pb::Policy {
                condition: Some(cel_pb::Expr::default()),
                ..policy(vec![any_perm()], vec![any_id()])
            },
            r#"rules.policies["p"].condition"#,
        ),
        (
            rbac_pb::Policy {
                checked_condition: Some(cel_pb::CheckedExpr::default()),
                ..policy(vec![any_perm()], vec![any_id()])
            },
            r#"rules.policies["p"].checked_condition"#,
        ),
        (
            policy(
                vec![perm(Rule::Header(header("grpc-timeout", "1S")))],
                vec![any_id()],
            ),
            r#"rules.policies["p"].permissions[0].header.name"#,
        ),
        (
            policy(
                vec![any_perm()],
                vec![id(Identifier::Header(header("GRPC-x", "1")))],
            ),
            r#"rules.policies["p"].principals[0].header.name"#,
        ),
        (
            policy(
                vec![perm(Rule::NotRule(Box::new(perm(Rule::Header(header(
                    ":scheme", "http",
                ))))))],
                vec![any_id()],
            ),
            r#"rules.policies["p"].permissions[0].not_rule.header.name"#,
        ),
        (
            policy(
                vec![perm(Rule::Matcher(TypedExtensionConfig::default()))],
                vec![any_id()],
            ),
            r#"rules.policies["p"].permissions[0].matcher"#,
        ),
        (
            policy(
                vec![perm(Rule::UriTemplate(TypedExtensionConfig::default()))],
                vec![any_id()],
            ),
            r#"rules.policies["p"].permissions[0].uri_template"#,
        ),
        (
            policy(
                vec![perm(Rule::SourcedMetadata(Default::default()))],
                vec![any_id()],
            ),
            r#"rules.policies["p"].permissions[0].sourced_metadata"#,
        ),
        (
            policy(
                vec![any_perm()],
                vec![id(Identifier::FilterState(Default::default()))],
            ),
            r#"rules.policies["p"].principals[0].filter_state"#,
        ),
        (
            policy(
                vec![any_perm()],
                vec![id(Identifier::SourcedMetadata(Default::default()))],
            ),
            r#"rules.policies["p"].principals[0].sourced_metadata"#,
        ),
        (
            policy(
                vec![any_perm()],
                vec![id(Identifier::Custom(TypedExtensionConfig::default()))],
            ),
            r#"rules.policies["p"].principals[0].custom"#,
        ),
        (
            policy(vec![rbac_pb::Permission { rule: None }], vec![any_id()]),
            r#"rules.policies["p"].permissions[0]"#,
        ),
        (
            policy(
                vec![any_perm()],
                vec![rbac_pb::Principal { identifier: None }],
            ),
            r#"rules.policies["p"].principals[0]"#,
        ),
        (
            policy(vec![perm(Rule::DestinationPort(70_000))], vec![any_id()]),
            r#"rules.policies["p"].permissions[0].destination_port"#,
        ),
        (
            policy(
                vec![perm(Rule::DestinationIp(cidr("10.0.0.1", 33)))],
                vec![any_id()],
            ),
            r#"rules.policies["p"].permissions[0].destination_ip.prefix_len"#,
        ),
        (
            policy(
                vec![any_perm()],
                vec![id(Identifier::SourceIp(cidr("10.0.0", 8)))],
            ),
            r#"rules.policies["p"].principals[0].source_ip.address_prefix"#,
        ),
        (
            policy(
                vec![perm(Rule::UrlPath(matcher_pb::PathMatcher { rule: None }))],
                vec![any_id()],
            ),
            r#"rules.policies["p"].permissions[0].url_path"#,
        ),
        (
            policy(
                vec![any_perm()],
                vec![id(Identifier::Authenticated(
                    rbac_pb::principal::Authenticated {
                        principal_name: Some(matcher_pb::StringMatcher {
                            match_pattern: Some(
                                matcher_pb::string_matcher::MatchPattern::SafeRegex(
                                    matcher_pb::RegexMatcher {
                                        regex: "spiffe://(".into(),
                                        engine_type: None,
                                    },
                                ),
                            ),
                            ignore_case: false,
                        }),
                    },
                ))],
            ),
            r#"rules.policies["p"].principals[0].authenticated.principal_name.safe_regex"#,
        ),
    ];
    for (p, path) in cases {
        let err = reject(p);
        assert_eq!(err.path(), Some(path), "{err}");
        assert!(err.to_string().starts_with(path), "{err}");
    }
}

#[test]
fn header_names_are_lowercased_and_host_is_authority() {
    let p = decode_one(policy(
        vec![
            perm(Rule::Header(header("HOST", "x"))),
            perm(Rule::Header(header("X-User", "u"))),
        ],
        vec![any_id()],
    ));
    let names: Vec<_> = p
        .permissions
        .iter()
        .map(|p| match p {
            Permission::Header(h) => h.name.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, [":authority", "x-user"]);
}

fn nested_not(depth: usize) -> rbac_pb::Permission {
    let mut p = any_perm();
    for _ in 1..depth {
        p = perm(Rule::NotRule(Box::new(p)));
    }
    p
}

fn nested_or_ids(depth: usize) -> rbac_pb::Principal {
    let mut p = any_id();
    for _ in 1..depth {
        p = id(Identifier::OrIds(rbac_pb::principal::Set { ids: vec![p] }));
    }
    p
}

#[test]
fn nesting_depth_is_bounded() {
    decode_one(policy(
        vec![nested_not(MAX_RBAC_DEPTH)],
        vec![nested_or_ids(MAX_RBAC_DEPTH)],
    ));

    let err = reject(policy(vec![nested_not(MAX_RBAC_DEPTH + 1)], vec![any_id()]));
    assert!(
        matches!(err, ResourceErrorKind::InvalidField { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nest deeper"), "{err}");
    let err = reject(policy(
        vec![any_perm()],
        vec![nested_or_ids(MAX_RBAC_DEPTH + 1)],
    ));
    assert!(err.to_string().contains("nest deeper"), "{err}");
    assert!(
        err.path()
            .unwrap()
            .starts_with(r#"rules.policies["p"].principals[0].or_ids.ids[0].or_ids"#),
        "{err}"
    );
}

/// A length-delimited field: key, varint length, bytes.
fn wrap(field: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![field << 3 | 2];
    let mut len = inner.len();
    while len >= 0x80 {
        out.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(inner);
    out
}

#[test]
fn deeply_nested_bytes_are_an_error_not_a_stack_overflow() {
    use prost::Message as _;
    // `Permission { not_rule: Permission { not_rule: ... { any: true } } }`, 5_000 deep,
    // deep enough to overflow a test thread's stack in a naive recursive decoder.
    let mut permission = vec![3 << 3, 1];
    for _ in 0..5_000 {
        permission = wrap(8, &permission);
    }
    let bytes = wrap(1, &permission);
    // The protobuf decoder's recursion limit refuses it before our depth bound would.
    assert!(rbac_pb::Policy::decode(bytes.as_slice()).is_err());
}

#[test]
fn matcher_count_is_bounded() {
    let many = |n: usize| {
        policy(
            vec![perm(Rule::OrRules(rbac_pb::permission::Set {
                rules: vec![any_perm(); n],
            }))],
            vec![any_id()],
        )
    };
    // The `or_rules`, its children and the principal.
    decode_one(many(MAX_RBAC_MATCHERS - 2));
    let err = reject(many(MAX_RBAC_MATCHERS - 1));
    assert!(err.to_string().contains("more than"), "{err}");
}

#[test]
fn cidr_ranges_mask_host_bits_and_keep_families_apart() {
    let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
    let r = CidrRange::new(v4("10.1.2.3"), 16).unwrap();
    assert_eq!(r.prefix(), v4("10.1.0.0"));
    assert_eq!(r.prefix_len(), 16);
    assert!(r.contains(v4("10.1.255.1")));
    assert!(!r.contains(v4("10.2.0.1")));
    assert!(!r.contains(v4("::ffff:10.1.0.1")));
    let all = CidrRange::new(v4("1.2.3.4"), 0).unwrap();
    assert!(all.contains(v4("255.255.255.255")));
    assert!(!all.contains(v4("::1")));
    let host = CidrRange::new(v4("fd00::1"), 128).unwrap();
    assert!(host.contains(v4("fd00::1")));
    assert!(!host.contains(v4("fd00::2")));
    assert!(CidrRange::new(v4("fd00::1"), 129).is_none());
    assert!(CidrRange::new(v4("1.2.3.4"), 33).is_none());
}

#[test]
fn per_route_override_and_embedded_decoding() {
    let per_route = filter_pb::RbacPerRoute {
        rbac: Some(one(policy(vec![any_perm()], vec![any_id()]))),
    };
    let decoded = RbacPerRoute::from_proto(&per_route).unwrap();
    assert!(decoded.rbac.rules.is_some());
    // No `rbac`: the filter is off on this route.
    let off = RbacPerRoute::from_proto(&filter_pb::RbacPerRoute::default()).unwrap();
    assert_eq!(off.rbac, RbacConfig::default());

    let root = FieldPath::ROOT;
    let mut uns = Unsupported::default();
    let from_any = decode_per_route(
        &root.field("typed_per_filter_config"),
        &any(&per_route),
        &mut uns,
    )
    .unwrap();
    assert_eq!(from_any, decoded);

    let mut bad = per_route.clone();
    bad.rbac
        .as_mut()
        .unwrap()
        .rules
        .as_mut()
        .unwrap()
        .policies
        .get_mut("p")
        .unwrap()
        .condition = Some(cel_pb::Expr::default());
    let err = RbacPerRoute::from_proto(&bad).unwrap_err();
    assert_eq!(err.path(), Some(r#"rbac.rules.policies["p"].condition"#));

    let fp = root.at("http_filters", 0);
    let fp = fp.field("typed_config");
    let config = one(policy(vec![any_perm()], vec![any_id()]));
    assert_eq!(
        decode_filter(&fp, &any(&config), &mut uns).unwrap(),
        RbacConfig::from_proto(&config).unwrap()
    );
    let err = decode_filter(&fp, &any(&per_route), &mut uns).unwrap_err();
    assert_eq!(err.path(), Some("http_filters[0].typed_config"));
}
