use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as filter_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::Any;
use prost::Message as _;

use super::*;
use crate::resource::cluster::RAW_BUFFER_TYPE_URL;
use crate::resource::testing::*;
use crate::resource::{Principal, RbacAction, RouteAction};

const NAME: &str = "xds.istio.io/grpc/lds/inbound/0.0.0.0:7070";

fn decode_listener(
    l: &listener_pb::Listener,
) -> std::result::Result<ServerListener, ResourceError> {
    ServerListener::decode(&l.encode_to_vec())
}

fn ok(l: &listener_pb::Listener) -> ServerListener {
    decode_listener(l).unwrap_or_else(|e| panic!("expected a valid server listener, got: {e}"))
}

/// The error's path and rendering, for a listener that must be NACKed.
fn nack(l: &listener_pb::Listener) -> (String, String) {
    match decode_listener(l) {
        Ok(v) => panic!("expected a NACK, got {v:?}"),
        Err(e) => {
            assert_eq!(e.name(), Some(l.name.as_str()));
            (
                e.kind().path().unwrap_or_default().to_owned(),
                e.to_string(),
            )
        }
    }
}

fn provider(instance: &str, cert: &str) -> Option<tls_pb::CertificateProviderPluginInstance> {
    Some(tls_pb::CertificateProviderPluginInstance {
        instance_name: instance.into(),
        certificate_name: cert.into(),
    })
}

/// What istiod sends for the mTLS chain: identity and roots from the `default` provider,
/// client certificates required.
fn istio_tls() -> tls_pb::DownstreamTlsContext {
    tls_pb::DownstreamTlsContext {
        common_tls_context: Some(tls_pb::CommonTlsContext {
            tls_certificate_provider_instance: provider("default", "default"),
            validation_context_type: Some(
                tls_pb::common_tls_context::ValidationContextType::ValidationContext(
                    tls_pb::CertificateValidationContext {
                        ca_certificate_provider_instance: provider("default", "ROOTCA"),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        require_client_certificate: boolv(true),
        ..Default::default()
    }
}

fn tls_socket(ctx: &tls_pb::DownstreamTlsContext) -> Option<core_pb::TransportSocket> {
    Some(core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(any(ctx))),
    })
}

fn principal_name(name: &str) -> rbac_pb::Principal {
    rbac_pb::Principal {
        identifier: Some(rbac_pb::principal::Identifier::Authenticated(
            rbac_pb::principal::Authenticated {
                principal_name: Some(matcher_pb::StringMatcher {
                    match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(
                        name.into(),
                    )),
                    ignore_case: false,
                }),
            },
        )),
    }
}

fn rbac_filter(name: &str, action: rbac_pb::rbac::Action, who: &str) -> hcm_pb::HttpFilter {
    let policy = rbac_pb::Policy {
        permissions: vec![rbac_pb::Permission {
            rule: Some(rbac_pb::permission::Rule::Any(true)),
        }],
        principals: vec![principal_name(who)],
        ..Default::default()
    };
    http_filter(
        name,
        any(&filter_pb::Rbac {
            rules: Some(rbac_pb::Rbac {
                action: action as i32,
                policies: [("ns[default]-policy[p]-rule[0]".to_owned(), policy)].into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
}

/// Istio's inbound HCM: DENY then ALLOW RBAC, the router, and an inline route configuration
/// whose one route has a `non_forwarding_action`.
fn istio_hcm() -> hcm_pb::HttpConnectionManager {
    let route = route_pb::Route {
        r#match: prefix_match("/"),
        action: Some(route_pb::route::Action::NonForwardingAction(
            route_pb::NonForwardingAction {},
        )),
        ..Default::default()
    };
    hcm_pb::HttpConnectionManager {
        http_filters: vec![
            rbac_filter(
                "envoy.filters.http.rbac.DENY",
                rbac_pb::rbac::Action::Deny,
                "spiffe://cluster.local/ns/evil/sa/x",
            ),
            rbac_filter(
                "envoy.filters.http.rbac.ALLOW",
                rbac_pb::rbac::Action::Allow,
                "spiffe://cluster.local/ns/default/sa/client",
            ),
            router_filter(),
        ],
        route_specifier: Some(
            hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(route_config(
                "inbound|7070||",
                vec![vhost(&["*"], vec![route])],
            )),
        ),
        ..Default::default()
    }
}

fn hcm_filter(hcm: &hcm_pb::HttpConnectionManager) -> listener_pb::Filter {
    listener_pb::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(listener_pb::filter::ConfigType::TypedConfig(any(hcm))),
    }
}

fn chain(name: &str, fcm: Option<listener_pb::FilterChainMatch>) -> listener_pb::FilterChain {
    listener_pb::FilterChain {
        name: name.into(),
        filter_chain_match: fcm,
        filters: vec![hcm_filter(&istio_hcm())],
        ..Default::default()
    }
}

fn cidr(prefix: &str, len: u32) -> core_pb::CidrRange {
    core_pb::CidrRange {
        address_prefix: prefix.into(),
        prefix_len: u32v(len),
    }
}

/// Istio's inbound listener shapes: the `inbound-mtls` chain (identity and roots from the
/// `default` provider, client certificates required) and the `inbound-plaintext` one. Which
/// of them istiod sends depends on the PeerAuthentication mode; to carry both in one
/// listener they are told apart here by source type, as two chains with the same match
/// would be a NACK.
fn istio_listener() -> listener_pb::Listener {
    let mut mtls = chain(
        "inbound-mtls",
        Some(listener_pb::FilterChainMatch {
            source_type: listener_pb::filter_chain_match::ConnectionSourceType::External as i32,
            ..Default::default()
        }),
    );
    mtls.transport_socket = tls_socket(&istio_tls());
    let plaintext = chain(
        "inbound-plaintext",
        Some(listener_pb::FilterChainMatch {
            source_type: listener_pb::filter_chain_match::ConnectionSourceType::SameIpOrLoopback
                as i32,
            ..Default::default()
        }),
    );
    listener_pb::Listener {
        name: NAME.into(),
        address: socket_address("0.0.0.0", 7070),
        filter_chains: vec![mtls, plaintext],
        ..Default::default()
    }
}

#[test]
fn istio_inbound_listener() {
    let l = ok(&istio_listener());
    assert_eq!(l.name, NAME);
    assert_eq!(l.address, "0.0.0.0:7070".parse().unwrap());
    assert_eq!(l.default_filter_chain, None);
    assert!(
        l.unsupported_fields.is_empty(),
        "{:?}",
        l.unsupported_fields
    );
    let [mtls, plaintext] = l.filter_chains.as_slice() else {
        panic!("{:?}", l.filter_chains);
    };
    assert_eq!(mtls.name, "inbound-mtls");
    assert_eq!(mtls.filter_match.source_type, SourceType::External);
    assert_eq!(
        mtls.tls,
        Some(DownstreamTls {
            identity: CertProviderInstance {
                instance_name: "default".into(),
                certificate_name: "default".into(),
            },
            root: Some(CertProviderInstance {
                instance_name: "default".into(),
                certificate_name: "ROOTCA".into(),
            }),
            require_client_certificate: true,
        })
    );
    assert_eq!(plaintext.name, "inbound-plaintext");
    assert_eq!(plaintext.tls, None);
    assert_eq!(
        plaintext.filter_match.source_type,
        SourceType::SameIpOrLoopback
    );

    for c in [mtls, plaintext] {
        let names: Vec<_> = c.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.rbac.DENY",
                "envoy.filters.http.rbac.ALLOW",
                "envoy.filters.http.router"
            ]
        );
        let actions: Vec<_> = c
            .http_filters
            .iter()
            .map(|f| match &f.config {
                ServerHttpFilterConfig::Rbac(r) => Some(r.rules.as_ref().unwrap().action),
                ServerHttpFilterConfig::Router => None,
            })
            .collect();
        assert_eq!(
            actions,
            [Some(RbacAction::Deny), Some(RbacAction::Allow), None]
        );
        let ServerHttpFilterConfig::Rbac(allow) = &c.http_filters[1].config else {
            unreachable!();
        };
        let policy = &allow.rules.as_ref().unwrap().policies["ns[default]-policy[p]-rule[0]"];
        assert!(matches!(
            &policy.principals[..],
            [Principal::Authenticated {
                principal_name: Some(_)
            }]
        ));
        let RouteSource::Inline(rc) = &c.route else {
            panic!("{:?}", c.route);
        };
        assert_eq!(
            rc.virtual_hosts[0].routes[0].action,
            RouteAction::NonForwarding
        );
    }
}

#[test]
fn rds_and_default_chain() {
    let mut hcm = hcm_rds("inbound-routes");
    hcm.http_filters = vec![router_filter()];
    let mut l = istio_listener();
    l.default_filter_chain = Some(listener_pb::FilterChain {
        name: "default".into(),
        filters: vec![hcm_filter(&hcm)],
        ..Default::default()
    });
    let l = ok(&l);
    let d = l.default_filter_chain.expect("default chain");
    assert_eq!(
        d.route,
        RouteSource::Rds {
            route_config_name: "inbound-routes".into()
        }
    );
    assert_eq!(d.filter_match, FilterChainMatch::default());
}

#[test]
fn match_criteria_are_decoded() {
    let l = listener_pb::Listener {
        name: NAME.into(),
        address: socket_address("::", 8080),
        filter_chains: vec![chain(
            "c",
            Some(listener_pb::FilterChainMatch {
                // Host bits are cleared: 10.1.2.3/8 is 10.0.0.0/8.
                prefix_ranges: vec![cidr("10.1.2.3", 8), cidr("fd00::", 8)],
                source_prefix_ranges: vec![cidr("192.168.0.0", 16)],
                source_ports: vec![1234, 5678],
                transport_protocol: "raw_buffer".into(),
                ..Default::default()
            }),
        )],
        ..Default::default()
    };
    let l = ok(&l);
    assert_eq!(l.address, "[::]:8080".parse().unwrap());
    let m = &l.filter_chains[0].filter_match;
    let ranges: Vec<_> = m
        .prefix_ranges
        .iter()
        .map(|c| (c.prefix().to_string(), c.prefix_len()))
        .collect();
    assert_eq!(ranges, [("10.0.0.0".into(), 8), ("fd00::".into(), 8)]);
    assert_eq!(m.source_prefix_ranges.len(), 1);
    assert_eq!(m.source_ports, [1234, 5678]);
    assert_eq!(m.source_type, SourceType::Any);
}

#[test]
fn chains_that_cannot_match_are_dropped() {
    let cases: Vec<(&str, listener_pb::FilterChainMatch)> = vec![
        (
            "destination_port",
            listener_pb::FilterChainMatch {
                destination_port: u32v(7070),
                ..Default::default()
            },
        ),
        (
            "server_names",
            listener_pb::FilterChainMatch {
                server_names: vec!["example.com".into()],
                ..Default::default()
            },
        ),
        (
            "transport_protocol",
            listener_pb::FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            },
        ),
        (
            "application_protocols",
            listener_pb::FilterChainMatch {
                application_protocols: vec!["h2".into()],
                ..Default::default()
            },
        ),
        (
            "direct_source_prefix_ranges",
            listener_pb::FilterChainMatch {
                direct_source_prefix_ranges: vec![cidr("10.0.0.0", 8)],
                ..Default::default()
            },
        ),
    ];
    for (field, fcm) in cases {
        // The dropped chain would conflict with the kept one, were it kept.
        let mut l = istio_listener();
        l.filter_chains = vec![chain("kept", None), chain("dropped", Some(fcm))];
        let l = ok(&l);
        let names: Vec<_> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["kept"], "{field}");
        assert_eq!(
            l.unsupported_fields,
            [format!("filter_chains[1] (dropped: matches on {field})")],
            "{field}"
        );
    }
}

#[test]
fn overlapping_chains_are_nacked() {
    let fcm = |ranges: Vec<core_pb::CidrRange>, ports: Vec<u32>| listener_pb::FilterChainMatch {
        prefix_ranges: ranges,
        source_ports: ports,
        ..Default::default()
    };
    // Same criteria: two chains without a match, or equal after clearing host bits, or
    // sharing one element of their lists.
    let conflicts = [
        (None, None),
        (
            Some(fcm(vec![cidr("10.0.0.0", 8)], vec![])),
            Some(fcm(vec![cidr("10.9.9.9", 8)], vec![])),
        ),
        (
            Some(fcm(vec![cidr("10.0.0.0", 8)], vec![1, 2])),
            Some(fcm(vec![cidr("10.0.0.0", 8), cidr("11.0.0.0", 8)], vec![2])),
        ),
    ];
    for (a, b) in conflicts {
        let mut l = istio_listener();
        l.filter_chains = vec![chain("a", a.clone()), chain("b", b.clone())];
        let (path, msg) = nack(&l);
        assert_eq!(path, "filter_chains[1].filter_chain_match", "{a:?} {b:?}");
        assert!(msg.contains("filter_chains[0]"), "{msg}");
    }
    // As in grpc-go, a chain repeating one of its own points overlaps itself.
    let mut l = istio_listener();
    l.filter_chains = vec![chain("a", Some(fcm(vec![], vec![1, 1])))];
    let (path, msg) = nack(&l);
    assert_eq!(path, "filter_chains[0].filter_chain_match");
    assert!(msg.contains("filter_chains[0]"), "{msg}");
    // Different criteria are fine.
    let mut l = istio_listener();
    l.filter_chains = vec![
        chain("a", Some(fcm(vec![cidr("10.0.0.0", 8)], vec![1]))),
        chain("b", Some(fcm(vec![cidr("10.0.0.0", 16)], vec![1]))),
        chain("c", Some(fcm(vec![cidr("10.0.0.0", 8)], vec![2]))),
    ];
    assert_eq!(ok(&l).filter_chains.len(), 3);
}

#[test]
fn raw_buffer_chains_shadow_the_ones_without_a_transport_protocol() {
    let fcm = |ranges: Vec<core_pb::CidrRange>, tp: &str| listener_pb::FilterChainMatch {
        prefix_ranges: ranges,
        transport_protocol: tp.into(),
        ..Default::default()
    };
    // Same criteria but for the transport protocol: not an overlap; the raw_buffer chain
    // wins on 10/8 whichever comes first, the other keeps 11/8.
    for raw_first in [false, true] {
        let plain = chain(
            "plain",
            Some(fcm(vec![cidr("10.0.0.0", 8), cidr("11.0.0.0", 8)], "")),
        );
        let raw = chain("raw", Some(fcm(vec![cidr("10.0.0.0", 8)], "raw_buffer")));
        let mut l = istio_listener();
        l.filter_chains = if raw_first {
            vec![raw, plain]
        } else {
            vec![plain, raw]
        };
        let l = ok(&l);
        let chains: Vec<_> = l
            .filter_chains
            .iter()
            .map(|c| {
                let ranges: Vec<_> = c
                    .filter_match
                    .prefix_ranges
                    .iter()
                    .map(|r| r.prefix().to_string())
                    .collect();
                (c.name.as_str(), ranges)
            })
            .collect();
        let want_plain = ("plain", vec!["11.0.0.0".to_owned()]);
        let want_raw = ("raw", vec!["10.0.0.0".to_owned()]);
        let want = if raw_first {
            vec![want_raw, want_plain]
        } else {
            vec![want_plain, want_raw]
        };
        assert_eq!(chains, want, "raw first: {raw_first}");
    }
    // Two chains without a transport protocol on the same points are ambiguous, even where
    // a raw_buffer chain shadows both.
    let mut l = istio_listener();
    l.filter_chains = vec![
        chain("raw", Some(fcm(vec![], "raw_buffer"))),
        chain("plain-1", None),
        chain("plain-2", None),
    ];
    assert_eq!(nack(&l).0, "filter_chains[2].filter_chain_match");
    // A chain shadowed on every prefix is dropped, and a raw_buffer chain claims its
    // prefixes even when it is itself dropped for matching on ALPN.
    let mut raw_alpn = chain("raw-alpn", Some(fcm(vec![], "raw_buffer")));
    raw_alpn
        .filter_chain_match
        .as_mut()
        .unwrap()
        .application_protocols = vec!["h2".into()];
    let mut l = istio_listener();
    l.filter_chains = vec![chain("plain", None), raw_alpn];
    l.default_filter_chain = Some(chain("default", None));
    let l = ok(&l);
    assert!(l.filter_chains.is_empty(), "{:?}", l.filter_chains);
    assert_eq!(
        l.unsupported_fields,
        [
            "filter_chains[1] (dropped: matches on application_protocols)",
            "filter_chains[0] (dropped: shadowed by a raw_buffer chain)",
        ]
    );
}

#[test]
fn listener_level_nacks() {
    // Nothing left to serve with.
    let mut l = istio_listener();
    l.filter_chains = vec![chain(
        "sni",
        Some(listener_pb::FilterChainMatch {
            server_names: vec!["a.example".into()],
            ..Default::default()
        }),
    )];
    assert_eq!(nack(&l).0, "filter_chains");
    // A default chain is enough.
    l.default_filter_chain = Some(chain("default", None));
    assert!(ok(&l).default_filter_chain.is_some());

    let mut l = istio_listener();
    l.listener_filters = vec![listener_pb::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        ..Default::default()
    }];
    assert_eq!(nack(&l).0, "listener_filters");
    let mut l = istio_listener();
    l.use_original_dst = boolv(true);
    assert_eq!(nack(&l).0, "use_original_dst");
    l.use_original_dst = boolv(false);
    ok(&l);
}

#[test]
fn ipv4_mapped_prefixes_are_ipv4() {
    let with_range = |c: core_pb::CidrRange| {
        let mut l = istio_listener();
        l.filter_chains = vec![chain(
            "c",
            Some(listener_pb::FilterChainMatch {
                prefix_ranges: vec![c],
                ..Default::default()
            }),
        )];
        l
    };
    let l = ok(&with_range(cidr("::ffff:10.1.0.0", 16)));
    let r = l.filter_chains[0].filter_match.prefix_ranges[0];
    assert_eq!(
        (r.prefix().to_string(), r.prefix_len()),
        ("10.1.0.0".into(), 16)
    );
    assert_eq!(
        nack(&with_range(cidr("::ffff:10.1.0.0", 112))).0,
        "filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len"
    );
}

#[test]
fn bounds() {
    let mut l = istio_listener();
    l.filter_chains = (0..=MAX_FILTER_CHAINS)
        .map(|i| {
            chain(
                "c",
                Some(listener_pb::FilterChainMatch {
                    source_ports: vec![i as u32],
                    ..Default::default()
                }),
            )
        })
        .collect();
    assert_eq!(nack(&l).0, "filter_chains");

    let mut l = istio_listener();
    l.filter_chains = vec![chain(
        "c",
        Some(listener_pb::FilterChainMatch {
            source_ports: (0..=MAX_MATCH_LIST_LEN as u32).collect(),
            ..Default::default()
        }),
    )];
    assert_eq!(
        nack(&l).0,
        "filter_chains[0].filter_chain_match.source_ports"
    );

    // Each list within its cap, their product past the expansion cap.
    let mut l = istio_listener();
    l.filter_chains = vec![chain(
        "c",
        Some(listener_pb::FilterChainMatch {
            prefix_ranges: (0..300)
                .map(|i| cidr(&format!("10.0.{}.0", i % 256), 24 + i / 256))
                .collect(),
            source_ports: (0..300).collect(),
            ..Default::default()
        }),
    )];
    let (path, msg) = nack(&l);
    assert_eq!(path, "filter_chains[0].filter_chain_match");
    assert!(msg.contains("match combinations"), "{msg}");
}

#[test]
fn match_nacks() {
    let cases: Vec<(listener_pb::FilterChainMatch, &str)> = vec![
        (
            listener_pb::FilterChainMatch {
                prefix_ranges: vec![cidr("not-an-ip", 8)],
                ..Default::default()
            },
            "filter_chains[0].filter_chain_match.prefix_ranges[0].address_prefix",
        ),
        (
            listener_pb::FilterChainMatch {
                source_prefix_ranges: vec![cidr("10.0.0.0", 33)],
                ..Default::default()
            },
            "filter_chains[0].filter_chain_match.source_prefix_ranges[0].prefix_len",
        ),
        (
            listener_pb::FilterChainMatch {
                source_ports: vec![70_000],
                ..Default::default()
            },
            "filter_chains[0].filter_chain_match.source_ports[0]",
        ),
        (
            listener_pb::FilterChainMatch {
                source_type: 7,
                ..Default::default()
            },
            "filter_chains[0].filter_chain_match.source_type",
        ),
    ];
    for (fcm, want) in cases {
        let mut l = istio_listener();
        l.filter_chains = vec![chain("c", Some(fcm))];
        assert_eq!(nack(&l).0, want);
    }
}

#[test]
fn address_nacks() {
    let mut l = istio_listener();
    l.address = None;
    assert_eq!(nack(&l).0, "address.socket_address");
    l.address = socket_address("istio.local", 7070);
    assert_eq!(nack(&l).0, "address.socket_address.address");
    l.address = socket_address("0.0.0.0", 70_000);
    assert_eq!(nack(&l).0, "address.socket_address.port_value");
    let mut l = istio_listener();
    l.api_listener = Some(listener_pb::ApiListener {
        api_listener: Some(any(&istio_hcm())),
    });
    assert_eq!(nack(&l).0, "api_listener");
}

#[test]
fn network_filter_nacks() {
    let other = listener_pb::Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(listener_pb::filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
                .into(),
            value: vec![],
        })),
    };
    let named = |name: &str, hcm: &hcm_pb::HttpConnectionManager| listener_pb::Filter {
        name: name.into(),
        ..hcm_filter(hcm)
    };
    let mut bad_filters = istio_hcm();
    bad_filters.http_filters.pop();
    let cases: Vec<(Vec<listener_pb::Filter>, &str)> = vec![
        (vec![], "filter_chains[0].filters"),
        (
            vec![hcm_filter(&istio_hcm()), hcm_filter(&istio_hcm())],
            "filter_chains[0].filters[1].name",
        ),
        (
            vec![named("", &istio_hcm())],
            "filter_chains[0].filters[0].name",
        ),
        (vec![other], "filter_chains[0].filters[0].typed_config"),
        (
            vec![listener_pb::Filter {
                name: "hcm".into(),
                config_type: None,
            }],
            "filter_chains[0].filters[0].typed_config",
        ),
        (
            vec![named("a", &bad_filters)],
            "filter_chains[0].filters[0].typed_config.http_filters",
        ),
        // A36: exactly one HCM (grpc-go would serve with the first).
        (
            vec![named("a", &istio_hcm()), named("b", &istio_hcm())],
            "filter_chains[0].filters[1]",
        ),
    ];
    for (filters, want) in cases {
        let mut l = istio_listener();
        l.filter_chains.truncate(1);
        l.filter_chains[0].filters = filters;
        assert_eq!(nack(&l).0, want);
    }
}

#[test]
fn dropped_chains_are_still_validated_and_compared() {
    let sni = |name: &str| {
        Some(listener_pb::FilterChainMatch {
            server_names: vec![name.into()],
            ..Default::default()
        })
    };
    // A36: any invalid entry NACKs, even one that can never match.
    let mut l = istio_listener();
    let mut broken = chain("sni", sni("a.example"));
    broken.filters.clear();
    l.filter_chains.push(broken);
    assert_eq!(nack(&l).0, "filter_chains[2].filters");
    // A36: always-failing matchers still count for uniqueness.
    let mut l = istio_listener();
    l.filter_chains = vec![
        chain("a", None),
        chain("sni-1", sni("a.example")),
        chain("sni-2", sni("a.example")),
    ];
    let (path, msg) = nack(&l);
    assert_eq!(path, "filter_chains[2].filter_chain_match");
    assert!(msg.contains("filter_chains[1]"), "{msg}");
    // Different server names differ.
    l.filter_chains[2] = chain("sni-2", sni("b.example"));
    let l = ok(&l);
    assert_eq!(l.filter_chains.len(), 1);
    assert_eq!(
        l.unsupported_fields,
        [
            "filter_chains[1] (dropped: matches on server_names)",
            "filter_chains[2] (dropped: matches on server_names)",
        ]
    );
}

#[test]
fn http_filter_rules_on_the_server() {
    let with_filters = |filters: Vec<hcm_pb::HttpFilter>| {
        let mut hcm = istio_hcm();
        hcm.http_filters = filters;
        let mut l = istio_listener();
        l.filter_chains.truncate(1);
        l.filter_chains[0].filters = vec![hcm_filter(&hcm)];
        l
    };
    let hp = "filter_chains[0].filters[0].typed_config.http_filters";
    // Fault injection is a client-side filter: unknown on a server, NACKed unless optional.
    let fault = http_filter("fault", any(&HttpFault::default()));
    assert_eq!(
        nack(&with_filters(vec![fault.clone(), router_filter()])).0,
        format!("{hp}[0]")
    );
    let mut optional = fault;
    optional.is_optional = true;
    let l = ok(&with_filters(vec![optional, router_filter()]));
    assert_eq!(l.filter_chains[0].http_filters.len(), 1);
    assert_eq!(
        l.unsupported_fields,
        [format!("{hp}[0] (fault: optional filter skipped)")]
    );
    // A broken RBAC config is a NACK naming its field.
    let bad_rbac = http_filter(
        "rbac",
        any(&filter_pb::Rbac {
            rules: Some(rbac_pb::Rbac {
                action: 9,
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    let (path, _) = nack(&with_filters(vec![bad_rbac, router_filter()]));
    assert!(
        path.starts_with(&format!("{hp}[0].typed_config.rules")),
        "{path}"
    );
    // The router must come last.
    let rbac = rbac_filter("rbac", rbac_pb::rbac::Action::Allow, "x");
    assert_eq!(nack(&with_filters(vec![router_filter(), rbac])).0, hp);
    // A41 fields of the HCM.
    let mut hcm = istio_hcm();
    hcm.xff_num_trusted_hops = 1;
    let mut l = istio_listener();
    l.filter_chains[0].filters = vec![hcm_filter(&hcm)];
    assert_eq!(
        nack(&l).0,
        "filter_chains[0].filters[0].typed_config.xff_num_trusted_hops"
    );
}

#[test]
fn tls_nacks() {
    let common = |f: &dyn Fn(&mut tls_pb::CommonTlsContext)| {
        let mut ctx = istio_tls();
        f(ctx.common_tls_context.as_mut().unwrap());
        ctx
    };
    let tp = "filter_chains[0].transport_socket.typed_config";
    let cases: Vec<(tls_pb::DownstreamTlsContext, String)> = vec![
        (
            tls_pb::DownstreamTlsContext {
                require_sni: boolv(true),
                ..istio_tls()
            },
            format!("{tp}.require_sni"),
        ),
        (
            tls_pb::DownstreamTlsContext {
                ocsp_staple_policy: tls_pb::downstream_tls_context::OcspStaplePolicy::MustStaple
                    as i32,
                ..istio_tls()
            },
            format!("{tp}.ocsp_staple_policy"),
        ),
        (
            tls_pb::DownstreamTlsContext {
                common_tls_context: None,
                ..istio_tls()
            },
            format!("{tp}.common_tls_context"),
        ),
        (
            common(&|c| c.tls_certificate_provider_instance = None),
            format!("{tp}.common_tls_context.tls_certificate_provider_instance"),
        ),
        (
            common(&|c| c.validation_context_type = None),
            format!("{tp}.require_client_certificate"),
        ),
        (
            common(&|c| c.tls_params = Some(Default::default())),
            format!("{tp}.common_tls_context.tls_params"),
        ),
        (
            common(&|c| {
                c.validation_context_type = Some(
                    tls_pb::common_tls_context::ValidationContextType::ValidationContext(
                        tls_pb::CertificateValidationContext {
                            ca_certificate_provider_instance: provider("default", "ROOTCA"),
                            match_subject_alt_names: vec![matcher_pb::StringMatcher {
                                match_pattern: Some(
                                    matcher_pb::string_matcher::MatchPattern::Exact("x".into()),
                                ),
                                ignore_case: false,
                            }],
                            ..Default::default()
                        },
                    ),
                )
            }),
            format!("{tp}.common_tls_context.validation_context"),
        ),
    ];
    for (ctx, want) in cases {
        let mut l = istio_listener();
        l.filter_chains.truncate(1);
        l.filter_chains[0].transport_socket = tls_socket(&ctx);
        assert_eq!(nack(&l).0, want);
    }
    // Without require_client_certificate, no roots are needed (TLS, not mTLS).
    let mut l = istio_listener();
    let ctx = tls_pb::DownstreamTlsContext {
        require_client_certificate: None,
        ..common(&|c| c.validation_context_type = None)
    };
    l.filter_chains[0].transport_socket = tls_socket(&ctx);
    let tls = ok(&l).filter_chains[0].tls.clone().unwrap();
    assert_eq!((tls.root, tls.require_client_certificate), (None, false));
    // Another transport socket type is a NACK; RawBuffer is plaintext.
    let mut l = istio_listener();
    l.filter_chains[0].transport_socket = Some(core_pb::TransportSocket {
        name: "alts".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/example.Alts".into(),
            value: vec![],
        })),
    });
    assert_eq!(nack(&l).0, tp);
    l.filter_chains[0].transport_socket = Some(core_pb::TransportSocket {
        name: "raw".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(Any {
            type_url: RAW_BUFFER_TYPE_URL.into(),
            value: vec![],
        })),
    });
    assert_eq!(ok(&l).filter_chains[0].tls, None);
}

#[test]
fn lds_decodes_a_listener_without_api_listener_as_a_server_listener() {
    use crate::resource::{Resource, ResourceType};
    let resource = decode_ok(ResourceType::Listener, &istio_listener());
    assert_eq!(resource.name(), NAME);
    assert_eq!(resource.resource_type(), ResourceType::Listener);
    let Resource::ServerListener(l) = &resource else {
        panic!("expected a server listener, got {resource:?}");
    };
    assert_eq!(*l.as_ref(), ok(&istio_listener()));
    assert_eq!(
        resource.unsupported_fields(),
        l.unsupported_fields.as_slice()
    );
    // A NACK of a server listener carries its name and path, as for a client one.
    let mut broken = istio_listener();
    broken.filter_chains[0].filters.clear();
    let err = decode_err(ResourceType::Listener, &broken);
    assert_eq!(err.name(), Some(NAME));
    assert_eq!(err.kind().path(), Some(nack(&broken).0.as_str()));
}

/// A chain's normalized A36 match points, computed independently of the decoder, over the
/// fields the property test varies.
fn points(m: &listener_pb::FilterChainMatch) -> Vec<String> {
    fn or_empty(list: Vec<String>) -> Vec<String> {
        if list.is_empty() {
            vec![String::new()]
        } else {
            list
        }
    }
    let canonical = |c: &core_pb::CidrRange| {
        let addr: std::net::IpAddr = c.address_prefix.parse().unwrap();
        let len = c.prefix_len.as_ref().map_or(0, |l| l.value) as u8;
        let r = CidrRange::new(addr.to_canonical(), len).unwrap();
        format!("{}/{}", r.prefix(), r.prefix_len())
    };
    let dsts = or_empty(m.prefix_ranges.iter().map(canonical).collect());
    let srcs = or_empty(m.source_prefix_ranges.iter().map(canonical).collect());
    let ports = or_empty(m.source_ports.iter().map(u32::to_string).collect());
    let names = or_empty(m.server_names.clone());
    let mut out = Vec::new();
    for d in &dsts {
        for s in &srcs {
            for p in &ports {
                for n in &names {
                    out.push(format!(
                        "{:?}|{d}|{}|{n}|{}|{s}|{p}",
                        m.destination_port.as_ref().map(|v| v.value),
                        m.source_type,
                        m.transport_protocol
                    ));
                }
            }
        }
    }
    out
}

fn arb_match() -> impl proptest::strategy::Strategy<Value = listener_pb::FilterChainMatch> {
    use proptest::prelude::*;
    let prefix = prop::sample::select(vec![
        ("10.0.0.0", 8),
        ("10.1.0.0", 8),
        ("10.0.0.0", 16),
        ("::ffff:10.0.0.0", 8),
        ("fd00::", 8),
    ]);
    (
        prop::collection::vec(prefix.clone(), 0..3),
        0i32..3,
        prop::collection::vec(prefix, 0..2),
        prop::collection::vec(prop::sample::select(vec![1u32, 2, 3]), 0..3),
        prop::sample::select(vec!["", "", "raw_buffer", "tls"]),
        prop::option::weighted(0.2, Just(7070u32)),
        prop::collection::vec(prop::sample::select(vec!["a", "b"]), 0..2),
    )
        .prop_map(|(dst, source_type, src, ports, tp, port, names)| {
            listener_pb::FilterChainMatch {
                prefix_ranges: dst.into_iter().map(|(a, l)| cidr(a, l)).collect(),
                source_type,
                source_prefix_ranges: src.into_iter().map(|(a, l)| cidr(a, l)).collect(),
                source_ports: ports,
                transport_protocol: tp.into(),
                destination_port: port.and_then(u32v),
                server_names: names.into_iter().map(String::from).collect(),
                ..Default::default()
            }
        })
}

proptest::proptest! {
    /// Random match criteria never panic the decoder, a Listener is accepted exactly when
    /// no two match points coincide (or it has nothing to serve with), and what is kept is
    /// a subset of the chains, in order, each still matching somewhere.
    #[test]
    fn random_filter_chain_matches(
        matches in proptest::collection::vec(arb_match(), 0..6),
        default in proptest::bool::ANY,
    ) {
        let mut l = istio_listener();
        l.filter_chains = matches
            .iter()
            .enumerate()
            .map(|(i, m)| chain(&format!("c{i}"), Some(m.clone())))
            .collect();
        if default {
            l.default_filter_chain = Some(chain("default", None));
        }
        let mut all = Vec::new();
        for m in &matches {
            all.extend(points(m));
        }
        let unique = {
            let mut sorted = all.clone();
            sorted.sort();
            sorted.dedup();
            sorted.len() == all.len()
        };
        match decode_listener(&l) {
            Ok(sl) => {
                proptest::prop_assert!(unique);
                proptest::prop_assert!(default || !sl.filter_chains.is_empty());
                let mut names = sl.filter_chains.iter().map(|c| c.name[1..].parse::<usize>().unwrap());
                let mut last = None;
                for i in names.by_ref() {
                    proptest::prop_assert!(last.is_none_or(|j| j < i));
                    last = Some(i);
                    let m = &matches[i];
                    proptest::prop_assert!(m.destination_port.is_none() && m.server_names.is_empty());
                    proptest::prop_assert!(m.transport_protocol != "tls");
                }
            }
            Err(e) => {
                let path = e.kind().path().unwrap_or_default().to_owned();
                if path == "filter_chains" {
                    proptest::prop_assert!(!default);
                } else {
                    proptest::prop_assert!(!unique, "{e}");
                }
            }
        }
    }
}
