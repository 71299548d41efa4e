use std::net::SocketAddr;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;

use super::*;
use crate::resource::testing::*;
use crate::resource::{Resource, ResourceType};

fn eds(c: &endpoint_pb::ClusterLoadAssignment) -> ClusterLoadAssignment {
    match decode_ok(ResourceType::ClusterLoadAssignment, c) {
        Resource::ClusterLoadAssignment(c) => (*c).clone(),
        other => panic!("{other:?}"),
    }
}

fn eds_err(c: &endpoint_pb::ClusterLoadAssignment) -> ResourceError {
    decode_err(ResourceType::ClusterLoadAssignment, c)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn basic_assignment() {
    let mut e = lb_endpoint("10.0.0.2", 8080);
    e.health_status = core_pb::HealthStatus::Draining as i32;
    e.load_balancing_weight = u32v(3);
    if let Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(ep)) = &mut e.host_identifier {
        ep.hostname = "pod-2".into();
        ep.additional_addresses = vec![endpoint_pb::endpoint::AdditionalAddress {
            address: socket_address("fd00::2", 8080),
        }];
    }
    let c = eds(&cla(
        "svc",
        vec![
            locality("a", 0, Some(10), vec![lb_endpoint("10.0.0.1", 8080), e]),
            locality("b", 1, Some(5), vec![lb_endpoint("::1", 9090)]),
        ],
    ));
    assert_eq!(c.cluster_name, "svc");
    assert_eq!(c.priority_count(), 2);
    assert!(
        c.unsupported_fields.is_empty(),
        "{:?}",
        c.unsupported_fields
    );
    let l0 = &c.localities[0];
    assert_eq!(
        l0.locality,
        Locality {
            region: "region".into(),
            zone: "a".into(),
            sub_zone: String::new()
        }
    );
    assert_eq!((l0.weight, l0.priority), (10, 0));
    assert_eq!(
        l0.endpoints[0],
        Endpoint {
            address: addr("10.0.0.1:8080"),
            additional_addresses: vec![],
            health: HealthStatus::Unknown,
            weight: 1,
            hostname: None,
            hash_key: None,
        }
    );
    let e1 = &l0.endpoints[1];
    assert_eq!(e1.health, HealthStatus::Draining);
    assert_eq!(e1.weight, 3);
    assert_eq!(e1.hostname.as_deref(), Some("pod-2"));
    assert_eq!(e1.additional_addresses, [addr("[fd00::2]:8080")]);
    assert_eq!(c.localities[1].endpoints[0].address, addr("[::1]:9090"));
}

#[test]
fn health_statuses() {
    use core_pb::HealthStatus as P;
    let cases = [
        (P::Unknown as i32, HealthStatus::Unknown, true),
        (P::Healthy as i32, HealthStatus::Healthy, true),
        (P::Unhealthy as i32, HealthStatus::Unhealthy, false),
        (P::Draining as i32, HealthStatus::Draining, false),
        (P::Timeout as i32, HealthStatus::Timeout, false),
        (P::Degraded as i32, HealthStatus::Degraded, false),
        (42, HealthStatus::Unhealthy, false),
    ];
    for (raw, expected, usable) in cases {
        assert_eq!(HealthStatus::from_proto(raw), expected);
        assert_eq!(expected.is_usable(), usable, "{expected:?}");
    }
}

#[test]
fn localities_without_weight_are_ignored_and_listed() {
    let c = eds(&cla(
        "svc",
        vec![
            locality("a", 0, None, vec![lb_endpoint("10.0.0.1", 80)]),
            locality("b", 0, Some(0), vec![lb_endpoint("10.0.0.2", 80)]),
            locality("c", 0, Some(1), vec![lb_endpoint("10.0.0.3", 80)]),
        ],
    ));
    assert_eq!(c.localities.len(), 1);
    assert_eq!(c.localities[0].locality.zone, "c");
    assert_eq!(c.unsupported_fields.len(), 2, "{:?}", c.unsupported_fields);
    assert!(c.unsupported_fields[0].starts_with("endpoints[0]"));
    // An assignment with no usable locality is valid (and empty).
    let empty = eds(&cla("svc", vec![locality("a", 0, None, vec![])]));
    assert!(empty.localities.is_empty());
    assert_eq!(empty.priority_count(), 0);
}

#[test]
fn duplicate_locality_in_a_priority_is_an_error() {
    let err = eds_err(&cla(
        "svc",
        vec![
            locality("a", 0, Some(1), vec![lb_endpoint("10.0.0.1", 80)]),
            locality("a", 0, Some(1), vec![lb_endpoint("10.0.0.2", 80)]),
        ],
    ));
    assert_eq!(err.name(), Some("svc"));
    assert_eq!(err.kind().path(), Some("endpoints[1].locality"));
    // The same locality in two priorities is fine.
    eds(&cla(
        "svc",
        vec![
            locality("a", 0, Some(1), vec![lb_endpoint("10.0.0.1", 80)]),
            locality("a", 1, Some(1), vec![lb_endpoint("10.0.0.2", 80)]),
        ],
    ));
    // Missing locality ids count as the same (empty) locality.
    let mut l1 = locality("a", 0, Some(1), vec![]);
    l1.locality = None;
    let mut l2 = l1.clone();
    l2.locality = Some(core_pb::Locality::default());
    assert!(
        eds_err(&cla("svc", vec![l1, l2]))
            .to_string()
            .contains("duplicate locality")
    );
}

#[test]
fn priorities_must_be_contiguous() {
    let err = eds_err(&cla(
        "svc",
        vec![
            locality("a", 0, Some(1), vec![lb_endpoint("10.0.0.1", 80)]),
            locality("b", 2, Some(1), vec![lb_endpoint("10.0.0.2", 80)]),
        ],
    ));
    assert!(err.to_string().contains("priority 1 is missing"), "{err}");
    let err = eds_err(&cla("svc", vec![locality("a", 1, Some(1), vec![])]));
    assert!(err.to_string().contains("priority 0 is missing"), "{err}");
    // A gap created by an ignored (weightless) locality is a gap too.
    let err = eds_err(&cla(
        "svc",
        vec![
            locality("a", 0, None, vec![]),
            locality("b", 1, Some(1), vec![]),
        ],
    ));
    assert!(err.to_string().contains("priority 0 is missing"), "{err}");
}

#[test]
fn locality_weights_must_not_overflow() {
    let err = eds_err(&cla(
        "svc",
        vec![
            locality("a", 0, Some(u32::MAX), vec![]),
            locality("b", 0, Some(1), vec![]),
        ],
    ));
    assert_eq!(
        err.kind().path(),
        Some("endpoints[1].load_balancing_weight")
    );
    // Across priorities the sums are separate.
    eds(&cla(
        "svc",
        vec![
            locality("a", 0, Some(u32::MAX), vec![]),
            locality("b", 1, Some(u32::MAX), vec![]),
        ],
    ));
}

/// grpc-go `unmarshal_eds.go`: the endpoint weights of one locality must sum to at most
/// u32::MAX (the balancer normalises by that sum).
#[test]
fn endpoint_weights_of_a_locality_must_not_overflow() {
    let weighted = |address: &str, w: u32| {
        let mut e = lb_endpoint(address, 80);
        e.load_balancing_weight = u32v(w);
        e
    };
    let err = eds_err(&cla(
        "svc",
        vec![locality(
            "a",
            0,
            Some(1),
            vec![
                weighted("10.0.0.1", u32::MAX - 1),
                weighted("10.0.0.2", 1),
                weighted("10.0.0.3", 1),
            ],
        )],
    ));
    assert_eq!(
        err.kind().path(),
        Some("endpoints[0].lb_endpoints[2].load_balancing_weight")
    );
    // Each locality has its own sum.
    eds(&cla(
        "svc",
        vec![
            locality("a", 0, Some(1), vec![weighted("10.0.0.1", u32::MAX)]),
            locality("b", 0, Some(1), vec![weighted("10.0.0.2", u32::MAX)]),
        ],
    ));
}

#[test]
fn endpoint_errors() {
    let one = |e: endpoint_pb::LbEndpoint| cla("svc", vec![locality("a", 0, Some(1), vec![e])]);
    let path = |e| eds_err(&one(e)).kind().path().map(str::to_owned);

    let mut zero = lb_endpoint("10.0.0.1", 80);
    zero.load_balancing_weight = u32v(0);
    assert_eq!(
        path(zero).as_deref(),
        Some("endpoints[0].lb_endpoints[0].load_balancing_weight")
    );

    assert_eq!(
        path(lb_endpoint("my-host.example", 80)).as_deref(),
        Some("endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address")
    );
    assert_eq!(
        path(lb_endpoint("10.0.0.1", 0)).as_deref(),
        Some("endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value")
    );
    assert!(path(lb_endpoint("10.0.0.1", 65_536)).is_some());

    let mut named = lb_endpoint("10.0.0.1", 80);
    if let Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(ep)) = &mut named.host_identifier
    {
        ep.address = Some(core_pb::Address {
            address: Some(core_pb::address::Address::SocketAddress(
                core_pb::SocketAddress {
                    address: "10.0.0.1".into(),
                    port_specifier: Some(core_pb::socket_address::PortSpecifier::NamedPort(
                        "http".into(),
                    )),
                    ..Default::default()
                },
            )),
        });
    }
    assert!(matches!(
        eds_err(&one(named)).kind(),
        ResourceErrorKind::Unsupported { .. }
    ));

    let mut no_address = lb_endpoint("10.0.0.1", 80);
    no_address.host_identifier = Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(
        Default::default(),
    ));
    assert!(path(no_address).is_some());
    let mut by_name = lb_endpoint("10.0.0.1", 80);
    by_name.host_identifier = Some(endpoint_pb::lb_endpoint::HostIdentifier::EndpointName(
        "e".into(),
    ));
    assert_eq!(
        path(by_name).as_deref(),
        Some("endpoints[0].lb_endpoints[0].endpoint_name")
    );
}

#[test]
fn duplicate_addresses_are_an_error() {
    let err = eds_err(&cla(
        "svc",
        vec![
            locality("a", 0, Some(1), vec![lb_endpoint("10.0.0.1", 80)]),
            locality("b", 0, Some(1), vec![lb_endpoint("10.0.0.1", 80)]),
        ],
    ));
    assert_eq!(
        err.kind().path(),
        Some("endpoints[1].lb_endpoints[0].endpoint.address")
    );
    assert!(
        err.to_string()
            .contains("duplicate endpoint address 10.0.0.1:80"),
        "{err}"
    );
    // Same IP, other port: fine.
    eds(&cla(
        "svc",
        vec![locality(
            "a",
            0,
            Some(1),
            vec![lb_endpoint("10.0.0.1", 80), lb_endpoint("10.0.0.1", 81)],
        )],
    ));
    // An additional address may not repeat a primary one.
    let mut e = lb_endpoint("10.0.0.2", 80);
    if let Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(ep)) = &mut e.host_identifier {
        ep.additional_addresses = vec![endpoint_pb::endpoint::AdditionalAddress {
            address: socket_address("10.0.0.1", 80),
        }];
    }
    let err = eds_err(&cla(
        "svc",
        vec![locality(
            "a",
            0,
            Some(1),
            vec![lb_endpoint("10.0.0.1", 80), e],
        )],
    ));
    assert_eq!(
        err.kind().path(),
        Some("endpoints[0].lb_endpoints[1].endpoint.additional_addresses[0].address")
    );
}

#[test]
fn drop_overloads() {
    let mut c = cla("svc", vec![]);
    c.policy = Some(endpoint_pb::cluster_load_assignment::Policy {
        drop_overloads: vec![
            endpoint_pb::cluster_load_assignment::policy::DropOverload {
                category: "lb".into(),
                drop_percentage: Some(FractionalPercent {
                    numerator: 5,
                    denominator: 0,
                }),
            },
            endpoint_pb::cluster_load_assignment::policy::DropOverload {
                category: "throttle".into(),
                drop_percentage: Some(FractionalPercent {
                    numerator: 30,
                    denominator: 1,
                }),
            },
        ],
        ..Default::default()
    });
    let c = eds(&c);
    assert_eq!(
        c.drop_overloads,
        [
            DropOverload {
                category: "lb".into(),
                per_million: 50_000
            },
            DropOverload {
                category: "throttle".into(),
                per_million: 3_000
            },
        ]
    );
}

/// grpc core (`xds_endpoint_parser.cc`): a drop category needs a name and a percentage.
#[test]
fn drop_overloads_need_a_category_and_a_percentage() {
    use endpoint_pb::cluster_load_assignment::{Policy, policy::DropOverload as Pb};
    let with = |drop: Pb| {
        let mut c = cla("svc", vec![]);
        c.policy = Some(Policy {
            drop_overloads: vec![drop],
            ..Default::default()
        });
        c
    };
    let percent = Some(FractionalPercent {
        numerator: 5,
        denominator: 0,
    });
    let err = eds_err(&with(Pb {
        category: String::new(),
        drop_percentage: percent,
    }));
    assert_eq!(err.kind().path(), Some("policy.drop_overloads[0].category"));
    let err = eds_err(&with(Pb {
        category: "lb".into(),
        drop_percentage: None,
    }));
    assert_eq!(
        err.kind().path(),
        Some("policy.drop_overloads[0].drop_percentage")
    );
}

/// Istio puts `tlsMode` metadata on every endpoint: listed once, never per endpoint.
#[test]
fn per_endpoint_metadata_is_listed_once() {
    let with_md = |ip| {
        let mut e = lb_endpoint(ip, 80);
        e.metadata = Some(core_pb::Metadata::default());
        e
    };
    let c = eds(&cla(
        "svc",
        vec![locality(
            "a",
            0,
            Some(1),
            vec![with_md("10.0.0.1"), with_md("10.0.0.2")],
        )],
    ));
    assert_eq!(
        c.unsupported_fields,
        ["endpoints[].lb_endpoints[].metadata"]
    );
}

fn big_assignment(n: u32) -> endpoint_pb::ClusterLoadAssignment {
    let per_zone = n / 10;
    let localities = (0..10)
        .map(|z| {
            let endpoints = (0..per_zone)
                .map(|i| {
                    let k = z * per_zone + i;
                    let mut e = lb_endpoint(
                        &format!("10.{}.{}.{}", k >> 16, (k >> 8) & 255, k & 255),
                        8080,
                    );
                    e.health_status = core_pb::HealthStatus::Healthy as i32;
                    e.metadata = Some(core_pb::Metadata::default());
                    e
                })
                .collect();
            locality(&format!("zone-{z}"), 0, Some(1), endpoints)
        })
        .collect();
    cla("outbound|8080||big.default.svc.cluster.local", localities)
}

/// Decoding and validating 10,000 endpoints must take well under 10 ms in release builds;
/// the time is printed (`--nocapture`), not asserted, since debug builds are far slower.
#[test]
fn ten_thousand_endpoints() {
    let a = any(&big_assignment(10_000));
    let start = Instant::now();
    let r = crate::resource::decode(ResourceType::ClusterLoadAssignment, &a).unwrap();
    let elapsed = start.elapsed();
    println!(
        "decoded and validated 10,000 endpoints ({} bytes) in {elapsed:?}",
        a.value.len()
    );
    let Resource::ClusterLoadAssignment(c) = r else {
        panic!()
    };
    let total: usize = c.localities.iter().map(|l| l.endpoints.len()).sum();
    assert_eq!(total, 10_000);
    assert!(
        c.localities
            .iter()
            .flat_map(|l| &l.endpoints)
            .all(|e| e.health.is_usable())
    );
    assert_eq!(c.unsupported_fields.len(), 1);
}

#[test]
fn hash_key_comes_from_envoy_lb_metadata() {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let with_meta = |filter: &str, key: &str, value: Kind| {
        let mut e = lb_endpoint("10.0.0.1", 8080);
        let fields = [(key.to_string(), Value { kind: Some(value) })]
            .into_iter()
            .collect();
        e.metadata = Some(core_pb::Metadata {
            filter_metadata: [(filter.to_string(), Struct { fields })]
                .into_iter()
                .collect(),
            ..Default::default()
        });
        let c = eds(&cla("svc", vec![locality("a", 0, Some(1), vec![e])]));
        c.localities[0].endpoints[0].hash_key.clone()
    };
    assert_eq!(
        with_meta("envoy.lb", "hash_key", Kind::StringValue("pod-7".into())),
        Some("pod-7".into())
    );
    assert_eq!(
        with_meta("envoy.lb", "hash_key", Kind::StringValue(String::new())),
        None
    );
    assert_eq!(
        with_meta("envoy.lb", "hash_key", Kind::NumberValue(7.0)),
        None
    );
    assert_eq!(
        with_meta("istio", "hash_key", Kind::StringValue("x".into())),
        None
    );
    assert_eq!(
        with_meta("envoy.lb", "other", Kind::StringValue("x".into())),
        None
    );
}
