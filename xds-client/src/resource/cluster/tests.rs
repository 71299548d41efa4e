use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3 as aggregate_pb;
use envoy_types::pb::envoy::extensions::load_balancing_policies as lb_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    self as tls_pb, common_tls_context as ctc,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as http_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::{Any, UInt64Value};

use super::*;
use crate::resource::testing::*;
use crate::resource::{Resource, ResourceError, ResourceErrorKind, ResourceType, StringMatchKind};

fn cds(c: &cluster_pb::Cluster) -> Cluster {
    match decode_ok(ResourceType::Cluster, c) {
        Resource::Cluster(c) => (*c).clone(),
        other => panic!("{other:?}"),
    }
}

fn cds_err(c: &cluster_pb::Cluster) -> ResourceError {
    decode_err(ResourceType::Cluster, c)
}

fn with_type(
    mut c: cluster_pb::Cluster,
    t: cluster_pb::cluster::DiscoveryType,
) -> cluster_pb::Cluster {
    c.cluster_discovery_type = Some(cluster_pb::cluster::ClusterDiscoveryType::Type(t as i32));
    c
}

#[test]
fn eds_cluster_defaults() {
    let c = cds(&eds_cluster("c"));
    assert_eq!(c.kind, ClusterKind::Eds { service_name: None });
    assert_eq!(c.kind.eds_service_name("c"), Some("c"));
    assert_eq!(c.lb_policy, LbPolicy::Unspecified, "no policy named");
    assert_eq!(
        c.circuit_breakers,
        CircuitBreakers {
            max_requests: 1024,
            max_pending_requests: None
        }
    );
    assert_eq!(c.outlier_detection, None);
    assert_eq!(c.tls, None);
    assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert!(
        c.unsupported_fields.is_empty(),
        "{:?}",
        c.unsupported_fields
    );
}

#[test]
fn eds_config_source_and_service_name() {
    let mut pb = eds_cluster("c");
    pb.eds_cluster_config.as_mut().unwrap().service_name = "svc".into();
    let c = cds(&pb);
    assert_eq!(c.kind.eds_service_name("c"), Some("svc"));
    pb.eds_cluster_config.as_mut().unwrap().eds_config = Some(core_pb::ConfigSource {
        config_source_specifier: Some(core_pb::config_source::ConfigSourceSpecifier::Self_(
            core_pb::SelfConfigSource::default(),
        )),
        ..Default::default()
    });
    cds(&pb);
}

/// gRFC A27 (grpc-go `unmarshal_cds.go`, grpc core `xds_cluster_parser.cc`): an EDS
/// cluster must say its endpoints come over ADS (`ads` or `self`); no `eds_cluster_config`
/// or no `eds_config` is a NACK, as is any other config source.
#[test]
fn eds_cluster_needs_an_ads_or_self_eds_config() {
    use core_pb::config_source::ConfigSourceSpecifier as S;
    let mut pb = eds_cluster("c");
    pb.eds_cluster_config.as_mut().unwrap().eds_config = None;
    let err = cds_err(&pb);
    assert_eq!(err.name(), Some("c"));
    assert_eq!(err.kind().path(), Some("eds_cluster_config.eds_config"));

    pb.eds_cluster_config = None;
    assert_eq!(cds_err(&pb).kind().path(), Some("eds_cluster_config"));

    for other in [
        S::Path("/x".into()),
        S::ApiConfigSource(core_pb::ApiConfigSource::default()),
    ] {
        let mut pb = eds_cluster("c");
        pb.eds_cluster_config.as_mut().unwrap().eds_config = Some(core_pb::ConfigSource {
            config_source_specifier: Some(other),
            ..Default::default()
        });
        assert_eq!(
            cds_err(&pb).kind().path(),
            Some("eds_cluster_config.eds_config")
        );
    }
    let mut pb = eds_cluster("c");
    pb.eds_cluster_config.as_mut().unwrap().eds_config = Some(core_pb::ConfigSource::default());
    assert_eq!(
        cds_err(&pb).kind().path(),
        Some("eds_cluster_config.eds_config")
    );
}

/// grpc-go and grpc core: a cluster with an `xdstp:` name must name its EDS resource.
#[test]
fn xdstp_eds_cluster_needs_a_service_name() {
    let name = "xdstp://authority/envoy.config.cluster.v3.Cluster/c";
    let err = cds_err(&eds_cluster(name));
    assert_eq!(err.kind().path(), Some("eds_cluster_config.service_name"));
    let mut pb = eds_cluster(name);
    pb.eds_cluster_config.as_mut().unwrap().service_name = "xdstp://authority/e".into();
    cds(&pb);
}

/// grpc-go and grpc core: `lrs_server`, when set, must be `self` (load reports go to the
/// server that sent the cluster).
#[test]
fn lrs_server_must_be_self() {
    use core_pb::config_source::ConfigSourceSpecifier as S;
    for bad in [
        None,
        Some(S::Ads(core_pb::AggregatedConfigSource::default())),
        Some(S::Path("/x".into())),
    ] {
        let mut pb = eds_cluster("c");
        pb.lrs_server = Some(core_pb::ConfigSource {
            config_source_specifier: bad.clone(),
            ..Default::default()
        });
        assert_eq!(cds_err(&pb).kind().path(), Some("lrs_server"), "{bad:?}");
    }
    let mut pb = eds_cluster("c");
    pb.lrs_server = Some(core_pb::ConfigSource {
        config_source_specifier: Some(S::Self_(core_pb::SelfConfigSource::default())),
        ..Default::default()
    });
    // Load reporting is not implemented: a valid one is listed.
    assert!(
        cds(&pb)
            .unsupported_fields
            .contains(&"lrs_server".to_owned())
    );
}

#[test]
fn unsupported_discovery_types() {
    use cluster_pb::cluster::DiscoveryType as T;
    for t in [T::Static, T::StrictDns, T::OriginalDst] {
        let err = cds_err(&with_type(eds_cluster("c"), t));
        assert!(
            matches!(err.kind(), ResourceErrorKind::Unsupported { .. }),
            "{t:?}"
        );
        assert_eq!(err.name(), Some("c"));
    }
    let mut pb = eds_cluster("c");
    pb.cluster_discovery_type = None;
    assert!(cds_err(&pb).to_string().contains("STATIC"));
}

fn logical_dns_cluster(host: &str, port: u32) -> cluster_pb::Cluster {
    let mut c = with_type(
        eds_cluster("dns"),
        cluster_pb::cluster::DiscoveryType::LogicalDns,
    );
    c.eds_cluster_config = None;
    c.load_assignment = Some(cla(
        "dns",
        vec![locality("z", 0, Some(1), vec![lb_endpoint(host, port)])],
    ));
    c
}

#[test]
fn logical_dns() {
    let c = cds(&logical_dns_cluster("example.com", 443));
    assert_eq!(
        c.kind,
        ClusterKind::LogicalDns {
            host: "example.com".into(),
            port: 443
        }
    );
    assert_eq!(c.kind.eds_service_name("dns"), None);

    assert_eq!(
        cds_err(&logical_dns_cluster("example.com", 0))
            .kind()
            .path(),
        Some(
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value"
        )
    );
    assert!(
        cds_err(&logical_dns_cluster("example.com", 70_000))
            .to_string()
            .contains("port")
    );
    assert!(
        cds_err(&logical_dns_cluster("", 80))
            .to_string()
            .contains("address")
    );

    let mut two_localities = logical_dns_cluster("a", 80);
    let la = two_localities.load_assignment.as_mut().unwrap();
    la.endpoints.push(la.endpoints[0].clone());
    assert_eq!(
        cds_err(&two_localities).kind().path(),
        Some("load_assignment.endpoints")
    );

    let mut two_endpoints = logical_dns_cluster("a", 80);
    two_endpoints.load_assignment.as_mut().unwrap().endpoints[0]
        .lb_endpoints
        .push(lb_endpoint("b", 80));
    assert_eq!(
        cds_err(&two_endpoints).kind().path(),
        Some("load_assignment.endpoints[0].lb_endpoints")
    );

    let mut none = logical_dns_cluster("a", 80);
    none.load_assignment = None;
    assert_eq!(cds_err(&none).kind().path(), Some("load_assignment"));
}

fn aggregate(clusters: &[&str]) -> cluster_pb::Cluster {
    let mut c = eds_cluster("agg");
    c.eds_cluster_config = None;
    c.cluster_discovery_type = Some(cluster_pb::cluster::ClusterDiscoveryType::ClusterType(
        cluster_pb::cluster::CustomClusterType {
            name: "envoy.clusters.aggregate".into(),
            typed_config: Some(any(&aggregate_pb::ClusterConfig {
                clusters: clusters.iter().map(|c| c.to_string()).collect(),
            })),
        },
    ));
    c
}

#[test]
fn aggregate_clusters() {
    let c = cds(&aggregate(&["primary", "fallback"]));
    assert_eq!(
        c.kind,
        ClusterKind::Aggregate {
            clusters: vec!["primary".into(), "fallback".into()]
        }
    );
    assert_eq!(
        cds_err(&aggregate(&[])).kind().path(),
        Some("cluster_type.typed_config.clusters")
    );
    let mut other = aggregate(&["a"]);
    if let Some(cluster_pb::cluster::ClusterDiscoveryType::ClusterType(t)) =
        &mut other.cluster_discovery_type
    {
        t.name = "envoy.clusters.redis".into();
    }
    assert!(matches!(
        cds_err(&other).kind(),
        ResourceErrorKind::Unsupported { .. }
    ));
}

#[test]
fn legacy_lb_policies() {
    use cluster_pb::cluster::{LbConfig, LbPolicy as L};
    let mut pb = eds_cluster("c");
    pb.lb_policy = L::LeastRequest as i32;
    assert_eq!(
        cds(&pb).lb_policy,
        LbPolicy::LeastRequest { choice_count: 2 },
        "Istio sends no config"
    );
    pb.lb_config = Some(LbConfig::LeastRequestLbConfig(
        cluster_pb::cluster::LeastRequestLbConfig {
            choice_count: u32v(4),
            ..Default::default()
        },
    ));
    assert_eq!(
        cds(&pb).lb_policy,
        LbPolicy::LeastRequest { choice_count: 4 }
    );
    pb.lb_config = Some(LbConfig::LeastRequestLbConfig(
        cluster_pb::cluster::LeastRequestLbConfig {
            choice_count: u32v(1),
            ..Default::default()
        },
    ));
    assert_eq!(
        cds_err(&pb).kind().path(),
        Some("least_request_lb_config.choice_count")
    );

    let mut pb = eds_cluster("c");
    pb.lb_policy = L::RingHash as i32;
    assert_eq!(
        cds(&pb).lb_policy,
        LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 8 * 1024 * 1024
        }
    );
    let ring = |min: Option<u64>, max: Option<u64>, hash: i32| {
        LbConfig::RingHashLbConfig(cluster_pb::cluster::RingHashLbConfig {
            minimum_ring_size: min.map(|value| UInt64Value { value }),
            maximum_ring_size: max.map(|value| UInt64Value { value }),
            hash_function: hash,
        })
    };
    pb.lb_config = Some(ring(Some(10), Some(100), 0));
    assert_eq!(
        cds(&pb).lb_policy,
        LbPolicy::RingHash {
            min_ring_size: 10,
            max_ring_size: 100
        }
    );
    pb.lb_config = Some(ring(Some(200), Some(100), 0));
    assert_eq!(cds_err(&pb).kind().path(), Some("ring_hash_lb_config"));
    pb.lb_config = Some(ring(None, Some(9 * 1024 * 1024), 0));
    assert_eq!(
        cds_err(&pb).kind().path(),
        Some("ring_hash_lb_config.maximum_ring_size")
    );
    pb.lb_config = Some(ring(None, None, 1));
    assert_eq!(
        cds_err(&pb).kind().path(),
        Some("ring_hash_lb_config.hash_function")
    );

    for bad in [L::Random, L::Maglev, L::ClusterProvided] {
        let mut pb = eds_cluster("c");
        pb.lb_policy = bad as i32;
        assert!(
            matches!(cds_err(&pb).kind(), ResourceErrorKind::Unsupported { .. }),
            "{bad:?}"
        );
    }
}

fn policy(any: Any) -> cluster_pb::load_balancing_policy::Policy {
    cluster_pb::load_balancing_policy::Policy {
        typed_extension_config: Some(core_pb::TypedExtensionConfig {
            name: "p".into(),
            typed_config: Some(any),
        }),
    }
}

#[test]
fn load_balancing_policy_field() {
    use lb_pb::{
        least_request::v3::LeastRequest, pick_first::v3::PickFirst, ring_hash::v3::RingHash,
    };
    use lb_pb::{round_robin::v3::RoundRobin, wrr_locality::v3::WrrLocality};
    let unknown = Any {
        type_url: "type.googleapis.com/example.Custom".into(),
        value: vec![],
    };
    let mut pb = eds_cluster("c");
    // Unknown policies are skipped; the first supported one wins.
    pb.load_balancing_policy = Some(cluster_pb::LoadBalancingPolicy {
        policies: vec![
            policy(unknown.clone()),
            policy(any(&WrrLocality {
                endpoint_picking_policy: Some(cluster_pb::LoadBalancingPolicy {
                    policies: vec![policy(unknown.clone()), policy(any(&RoundRobin::default()))],
                }),
            })),
            policy(any(&PickFirst::default())),
        ],
    });
    assert_eq!(
        cds(&pb).lb_policy,
        LbPolicy::WrrLocality {
            child: Box::new(LbPolicy::RoundRobin)
        }
    );

    pb.load_balancing_policy = Some(cluster_pb::LoadBalancingPolicy {
        policies: vec![policy(any(&PickFirst {
            shuffle_address_list: true,
        }))],
    });
    assert_eq!(
        cds(&pb).lb_policy,
        LbPolicy::PickFirst {
            shuffle_address_list: true
        }
    );

    pb.load_balancing_policy = Some(cluster_pb::LoadBalancingPolicy {
        policies: vec![policy(any(&LeastRequest {
            choice_count: u32v(3),
            ..Default::default()
        }))],
    });
    assert_eq!(
        cds(&pb).lb_policy,
        LbPolicy::LeastRequest { choice_count: 3 }
    );

    pb.load_balancing_policy = Some(cluster_pb::LoadBalancingPolicy {
        policies: vec![policy(any(&RingHash {
            minimum_ring_size: Some(UInt64Value { value: 0 }),
            ..Default::default()
        }))],
    });
    assert_eq!(
        cds_err(&pb).kind().path(),
        Some(
            "load_balancing_policy.policies[0].typed_extension_config.typed_config.minimum_ring_size"
        )
    );

    pb.load_balancing_policy = Some(cluster_pb::LoadBalancingPolicy {
        policies: vec![policy(unknown)],
    });
    assert!(matches!(
        cds_err(&pb).kind(),
        ResourceErrorKind::Unsupported { .. }
    ));

    // Nesting is bounded.
    let mut nested = cluster_pb::LoadBalancingPolicy {
        policies: vec![policy(any(&RoundRobin::default()))],
    };
    for _ in 0..20 {
        nested = cluster_pb::LoadBalancingPolicy {
            policies: vec![policy(any(&WrrLocality {
                endpoint_picking_policy: Some(nested),
            }))],
        };
    }
    pb.load_balancing_policy = Some(nested);
    assert!(cds_err(&pb).to_string().contains("nested too deeply"));
}

#[test]
fn circuit_breakers_use_the_default_priority() {
    use cluster_pb::circuit_breakers::Thresholds;
    let mut pb = eds_cluster("c");
    pb.circuit_breakers = Some(cluster_pb::CircuitBreakers {
        thresholds: vec![
            Thresholds {
                priority: core_pb::RoutingPriority::High as i32,
                max_requests: u32v(1),
                ..Default::default()
            },
            Thresholds {
                max_requests: u32v(100),
                max_pending_requests: u32v(7),
                ..Default::default()
            },
        ],
        per_host_thresholds: vec![],
    });
    assert_eq!(
        cds(&pb).circuit_breakers,
        CircuitBreakers {
            max_requests: 100,
            max_pending_requests: Some(7)
        }
    );
    // A DEFAULT threshold without max_requests keeps the default of 1024.
    pb.circuit_breakers = Some(cluster_pb::CircuitBreakers {
        thresholds: vec![Thresholds::default()],
        per_host_thresholds: vec![],
    });
    assert_eq!(cds(&pb).circuit_breakers.max_requests, 1024);
}

#[test]
fn outlier_detection_defaults() {
    let mut pb = eds_cluster("c");
    pb.outlier_detection = Some(cluster_pb::OutlierDetection::default());
    let od = cds(&pb).outlier_detection.unwrap();
    assert_eq!(od.interval, StdDuration::from_secs(10));
    assert_eq!(od.base_ejection_time, StdDuration::from_secs(30));
    assert_eq!(od.max_ejection_time, StdDuration::from_secs(300));
    assert_eq!(od.max_ejection_percent, 10);
    assert_eq!(
        od.success_rate,
        Some(SuccessRateEjection {
            stdev_factor: 1900,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100
        })
    );
    assert_eq!(od.failure_percentage, None);
    assert_eq!(
        od.consecutive_5xx,
        Some(ConsecutiveEjection {
            consecutive: 5,
            enforcement_percentage: 100
        })
    );
    assert_eq!(od.consecutive_gateway_failure, None);
}

#[test]
fn outlier_detection_values_and_errors() {
    let mut pb = eds_cluster("c");
    pb.outlier_detection = Some(cluster_pb::OutlierDetection {
        base_ejection_time: dur(400, 0),
        enforcing_success_rate: u32v(0),
        enforcing_failure_percentage: u32v(50),
        failure_percentage_threshold: u32v(90),
        enforcing_consecutive_5xx: u32v(0),
        enforcing_consecutive_gateway_failure: u32v(100),
        consecutive_gateway_failure: u32v(3),
        ..Default::default()
    });
    let od = cds(&pb).outlier_detection.unwrap();
    assert_eq!(
        od.max_ejection_time,
        StdDuration::from_secs(400),
        "max(300s, base)"
    );
    assert_eq!(od.success_rate, None);
    assert_eq!(
        od.failure_percentage,
        Some(FailurePercentageEjection {
            threshold: 90,
            enforcement_percentage: 50,
            minimum_hosts: 5,
            request_volume: 50
        })
    );
    assert_eq!(od.consecutive_5xx, None);
    assert_eq!(
        od.consecutive_gateway_failure,
        Some(ConsecutiveEjection {
            consecutive: 3,
            enforcement_percentage: 100
        })
    );

    for (field, od) in [
        (
            "outlier_detection.max_ejection_percent",
            cluster_pb::OutlierDetection {
                max_ejection_percent: u32v(101),
                ..Default::default()
            },
        ),
        (
            "outlier_detection.enforcing_success_rate",
            cluster_pb::OutlierDetection {
                enforcing_success_rate: u32v(200),
                ..Default::default()
            },
        ),
        (
            "outlier_detection.failure_percentage_threshold",
            cluster_pb::OutlierDetection {
                failure_percentage_threshold: u32v(101),
                ..Default::default()
            },
        ),
        (
            "outlier_detection.enforcing_failure_percentage",
            cluster_pb::OutlierDetection {
                enforcing_failure_percentage: u32v(101),
                ..Default::default()
            },
        ),
        (
            "outlier_detection.interval",
            cluster_pb::OutlierDetection {
                interval: dur(-1, 0),
                ..Default::default()
            },
        ),
        (
            "outlier_detection.base_ejection_time",
            cluster_pb::OutlierDetection {
                base_ejection_time: dur(1, 2_000_000_000),
                ..Default::default()
            },
        ),
    ] {
        let mut pb = eds_cluster("c");
        pb.outlier_detection = Some(od);
        assert_eq!(cds_err(&pb).kind().path(), Some(field));
    }
}

fn provider(instance: &str, cert: &str) -> Option<tls_pb::CertificateProviderPluginInstance> {
    Some(tls_pb::CertificateProviderPluginInstance {
        instance_name: instance.into(),
        certificate_name: cert.into(),
    })
}

fn exact(s: &str) -> matcher_pb::StringMatcher {
    matcher_pb::StringMatcher {
        ignore_case: false,
        match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(s.into())),
    }
}

fn with_tls(ctx: &tls_pb::UpstreamTlsContext) -> cluster_pb::Cluster {
    let mut pb = eds_cluster("c");
    pb.transport_socket = Some(core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(any(ctx))),
    });
    pb
}

fn tls_ctx(common: tls_pb::CommonTlsContext) -> tls_pb::UpstreamTlsContext {
    tls_pb::UpstreamTlsContext {
        common_tls_context: Some(common),
        ..Default::default()
    }
}

#[test]
fn upstream_tls_current_fields() {
    let common = tls_pb::CommonTlsContext {
        tls_certificate_provider_instance: provider("default", "default"),
        validation_context_type: Some(ctc::ValidationContextType::ValidationContext(
            tls_pb::CertificateValidationContext {
                ca_certificate_provider_instance: provider("default", "ROOTCA"),
                match_subject_alt_names: vec![exact("spiffe://td/ns/a/sa/b")],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let tls = cds(&with_tls(&tls_ctx(common.clone()))).tls.unwrap();
    assert_eq!(
        tls.identity,
        Some(CertProviderInstance {
            instance_name: "default".into(),
            certificate_name: "default".into()
        })
    );
    assert_eq!(tls.root.certificate_name, "ROOTCA");
    assert_eq!(tls.san_matchers.len(), 1);
    assert!(tls.san_matchers[0].matches("spiffe://td/ns/a/sa/b"));

    // Without a root provider the context is rejected.
    let mut no_root = common.clone();
    no_root.validation_context_type = Some(ctc::ValidationContextType::ValidationContext(
        tls_pb::CertificateValidationContext::default(),
    ));
    assert_eq!(
        cds_err(&with_tls(&tls_ctx(no_root))).kind().path(),
        Some(
            "transport_socket.typed_config.common_tls_context.validation_context.ca_certificate_provider_instance"
        )
    );
    let mut none = common.clone();
    none.validation_context_type = None;
    assert!(
        cds_err(&with_tls(&tls_ctx(none)))
            .to_string()
            .contains("root certificates")
    );
    assert!(
        cds_err(&with_tls(&tls_pb::UpstreamTlsContext::default()))
            .to_string()
            .contains("common_tls_context")
    );
}

#[test]
fn upstream_tls_rejected_features() {
    let base = tls_pb::CommonTlsContext {
        validation_context_type: Some(ctc::ValidationContextType::ValidationContext(
            tls_pb::CertificateValidationContext {
                ca_certificate_provider_instance: provider("default", "ROOTCA"),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let cases: Vec<(&str, tls_pb::CommonTlsContext)> = vec![
        (
            "tls_certificates",
            tls_pb::CommonTlsContext {
                tls_certificates: vec![Default::default()],
                ..base.clone()
            },
        ),
        (
            "tls_certificate_sds_secret_configs",
            tls_pb::CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![Default::default()],
                ..base.clone()
            },
        ),
        (
            "tls_params",
            tls_pb::CommonTlsContext {
                tls_params: Some(Default::default()),
                ..base.clone()
            },
        ),
        (
            "validation_context_sds_secret_config",
            tls_pb::CommonTlsContext {
                validation_context_type: Some(
                    ctc::ValidationContextType::ValidationContextSdsSecretConfig(Default::default()),
                ),
                ..base.clone()
            },
        ),
        (
            "combined_validation_context.validation_context_sds_secret_config",
            tls_pb::CommonTlsContext {
                validation_context_type: Some(
                    ctc::ValidationContextType::CombinedValidationContext(
                        ctc::CombinedCertificateValidationContext {
                            validation_context_sds_secret_config: Some(Default::default()),
                            ..Default::default()
                        },
                    ),
                ),
                ..base.clone()
            },
        ),
        (
            "validation_context.verify_certificate_spki",
            tls_pb::CommonTlsContext {
                validation_context_type: Some(ctc::ValidationContextType::ValidationContext(
                    tls_pb::CertificateValidationContext {
                        ca_certificate_provider_instance: provider("default", "ROOTCA"),
                        verify_certificate_spki: vec!["x".into()],
                        ..Default::default()
                    },
                )),
                ..base.clone()
            },
        ),
    ];
    for (field, common) in cases {
        let err = cds_err(&with_tls(&tls_ctx(common)));
        assert_eq!(
            err.kind().path().map(str::to_owned),
            Some(format!(
                "transport_socket.typed_config.common_tls_context.{field}"
            )),
            "{err}"
        );
        assert!(
            matches!(err.kind(), ResourceErrorKind::Unsupported { .. }),
            "{field}"
        );
    }
}

#[test]
fn transport_socket_types() {
    let mut pb = eds_cluster("c");
    pb.transport_socket = Some(core_pb::TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(Any {
            type_url: RAW_BUFFER_TYPE_URL.into(),
            value: vec![],
        })),
    });
    assert_eq!(cds(&pb).tls, None);
    pb.transport_socket.as_mut().unwrap().config_type =
        Some(core_pb::transport_socket::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts".into(),
            value: vec![],
        }));
    assert!(matches!(
        cds_err(&pb).kind(),
        ResourceErrorKind::Unsupported { .. }
    ));
    pb.transport_socket.as_mut().unwrap().config_type = None;
    assert_eq!(
        cds_err(&pb).kind().path(),
        Some("transport_socket.typed_config")
    );
}

/// What istiod sends for a DestinationRule with ISTIO_MUTUAL and consistent hashing.
#[test]
fn istio_shaped_cluster() {
    let san = "spiffe://cluster.local/ns/default/sa/echo";
    let common = tls_pb::CommonTlsContext {
        tls_certificate_provider_instance: provider("default", "default"),
        tls_certificate_certificate_provider_instance: Some(ctc::CertificateProviderInstance {
            instance_name: "default".into(),
            certificate_name: "default".into(),
        }),
        validation_context_type: Some(ctc::ValidationContextType::CombinedValidationContext(
            ctc::CombinedCertificateValidationContext {
                default_validation_context: Some(tls_pb::CertificateValidationContext {
                    ca_certificate_provider_instance: provider("default", "ROOTCA"),
                    match_subject_alt_names: vec![exact(san)],
                    match_typed_subject_alt_names: vec![tls_pb::SubjectAltNameMatcher {
                        san_type: tls_pb::subject_alt_name_matcher::SanType::Uri as i32,
                        matcher: Some(exact(san)),
                        oid: String::new(),
                    }],
                    ..Default::default()
                }),
                validation_context_certificate_provider_instance: Some(
                    ctc::CertificateProviderInstance {
                        instance_name: "default".into(),
                        certificate_name: "ROOTCA".into(),
                    },
                ),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut pb = with_tls(&tls_ctx(common));
    pb.name = "outbound|7070||echo.default.svc.cluster.local".into();
    pb.alt_stat_name = "outbound_7070__echo.default.svc.cluster.local;".into();
    pb.connect_timeout = None;
    pb.lb_policy = cluster_pb::cluster::LbPolicy::RingHash as i32;
    pb.lb_config = Some(cluster_pb::cluster::LbConfig::RingHashLbConfig(
        cluster_pb::cluster::RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 1024 }),
            ..Default::default()
        },
    ));
    pb.circuit_breakers = Some(cluster_pb::CircuitBreakers {
        thresholds: vec![cluster_pb::circuit_breakers::Thresholds {
            max_requests: u32v(100),
            ..Default::default()
        }],
        per_host_thresholds: vec![],
    });
    pb.common_lb_config = Some(cluster_pb::cluster::CommonLbConfig {
        override_host_status: Some(core_pb::HealthStatusSet {
            statuses: vec![1, 3],
        }),
        ..Default::default()
    });
    let c = cds(&pb);
    assert_eq!(
        c.lb_policy,
        LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 8 * 1024 * 1024
        }
    );
    assert_eq!(c.circuit_breakers.max_requests, 100);
    assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.identity.as_ref().unwrap().instance_name, "default");
    assert_eq!(
        tls.root,
        CertProviderInstance {
            instance_name: "default".into(),
            certificate_name: "ROOTCA".into()
        }
    );
    // The same SAN in the current and the typed field is kept once.
    assert_eq!(tls.san_matchers.len(), 1);
    assert_eq!(tls.san_matchers[0].kind, StringMatchKind::Exact(san.into()));
    assert!(
        c.unsupported_fields.contains(&"alt_stat_name".to_owned()),
        "{:?}",
        c.unsupported_fields
    );
    assert!(
        c.unsupported_fields
            .contains(&"common_lb_config.override_host_status".to_owned())
    );
}

#[test]
fn deprecated_only_tls_fields() {
    let common = tls_pb::CommonTlsContext {
        tls_certificate_certificate_provider_instance: Some(ctc::CertificateProviderInstance {
            instance_name: "id".into(),
            certificate_name: "c".into(),
        }),
        validation_context_type: Some(
            ctc::ValidationContextType::ValidationContextCertificateProviderInstance(
                ctc::CertificateProviderInstance {
                    instance_name: "roots".into(),
                    certificate_name: "r".into(),
                },
            ),
        ),
        ..Default::default()
    };
    let tls = cds(&with_tls(&tls_ctx(common))).tls.unwrap();
    assert_eq!(tls.identity.unwrap().instance_name, "id");
    assert_eq!(tls.root.instance_name, "roots");
    assert!(tls.san_matchers.is_empty());
}

/// grpc core (`xds_cluster_parser.cc`): `upstream_config` must hold `HttpProtocolOptions`.
/// Its one field gRPC reads (the idle timeout) is not implemented here: listed.
#[test]
fn upstream_config_must_be_http_protocol_options() {
    let with = |typed_config: Option<Any>| {
        let mut pb = eds_cluster("c");
        pb.upstream_config = Some(core_pb::TypedExtensionConfig {
            name: "envoy.upstreams.http.generic".into(),
            typed_config,
        });
        pb
    };
    let err = cds_err(&with(Some(any(&tls_pb::UpstreamTlsContext::default()))));
    assert_eq!(err.kind().path(), Some("upstream_config.typed_config"));
    let err = cds_err(&with(None));
    assert_eq!(err.kind().path(), Some("upstream_config.typed_config"));
    let c = cds(&with(Some(any(&http_pb::HttpProtocolOptions::default()))));
    assert!(
        c.unsupported_fields.contains(&"upstream_config".to_owned()),
        "{:?}",
        c.unsupported_fields
    );
}

#[test]
fn harmless_fields_are_listed_not_rejected() {
    let mut pb = eds_cluster("c");
    pb.metadata = Some(core_pb::Metadata::default());
    pb.dns_lookup_family = 1;
    pb.transport_socket_matches = vec![Default::default()];
    pb.connect_timeout = dur(1, 0);
    let c = cds(&pb);
    assert_eq!(c.connect_timeout, StdDuration::from_secs(1));
    for f in ["metadata", "dns_lookup_family", "transport_socket_matches"] {
        assert!(
            c.unsupported_fields.contains(&f.to_owned()),
            "{f}: {:?}",
            c.unsupported_fields
        );
    }
}

fn with_http_options(
    mut c: cluster_pb::Cluster,
    options: Option<http_pb::http_protocol_options::UpstreamProtocolOptions>,
) -> cluster_pb::Cluster {
    let message = http_pb::HttpProtocolOptions {
        upstream_protocol_options: options,
        ..Default::default()
    };
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.into(), any(&message));
    c
}

#[test]
fn the_upstream_http_version_is_read_from_either_field() {
    use http_pb::http_protocol_options::{
        AutoHttpConfig, ExplicitHttpConfig, UpstreamProtocolOptions as Upo,
        UseDownstreamHttpConfig, explicit_http_config::ProtocolConfig as Pc,
    };
    let explicit = |pc| {
        Some(Upo::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(pc),
        }))
    };
    // Nothing said.
    let c = cds(&eds_cluster("c"));
    assert_eq!(c.protocol, UpstreamProtocol::Unspecified);
    // The deprecated field, which is supported (not listed) now.
    let mut pb = eds_cluster("c");
    pb.http2_protocol_options = Some(Default::default());
    let c = cds(&pb);
    assert_eq!(c.protocol, UpstreamProtocol::Http2);
    assert!(
        c.unsupported_fields.is_empty(),
        "{:?}",
        c.unsupported_fields
    );
    // The typed options, as Istio and go-control-plane write them (auto on a TLS cluster,
    // below).
    for (options, want) in [
        (
            explicit(Pc::Http2ProtocolOptions(Default::default())),
            UpstreamProtocol::Http2,
        ),
        (
            explicit(Pc::HttpProtocolOptions(Default::default())),
            UpstreamProtocol::Http1,
        ),
        (
            Some(Upo::UseDownstreamProtocolConfig(
                UseDownstreamHttpConfig::default(),
            )),
            UpstreamProtocol::Downstream,
        ),
    ] {
        let c = cds(&with_http_options(eds_cluster("c"), options));
        assert_eq!(c.protocol, want);
        assert!(
            c.unsupported_fields.is_empty(),
            "{:?}",
            c.unsupported_fields
        );
    }
    // Auto needs ALPN, so TLS.
    let mut tls = eds_cluster("c");
    tls.transport_socket = Some(core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(any(
            &tls_ctx(tls_pb::CommonTlsContext {
                tls_certificate_provider_instance: provider("default", "default"),
                validation_context_type: Some(ctc::ValidationContextType::ValidationContext(
                    tls_pb::CertificateValidationContext {
                        ca_certificate_provider_instance: provider("default", "ROOTCA"),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
        ))),
    });
    let auto = Some(Upo::AutoConfig(AutoHttpConfig::default()));
    let c = cds(&with_http_options(tls, auto.clone()));
    assert_eq!(c.protocol, UpstreamProtocol::Auto);
    assert!(
        c.unsupported_fields.is_empty(),
        "{:?}",
        c.unsupported_fields
    );
    let err = cds_err(&with_http_options(eds_cluster("c"), auto));
    assert!(err.to_string().contains("auto_config"), "{err}");
    // The typed options replace the deprecated field entirely, as in Envoy: with them
    // present the deprecated HTTP/2 field does not count, even when they name HTTP/3.
    let mut pb = with_http_options(
        eds_cluster("c"),
        explicit(Pc::HttpProtocolOptions(Default::default())),
    );
    pb.http2_protocol_options = Some(Default::default());
    assert_eq!(cds(&pb).protocol, UpstreamProtocol::Http1);
    let mut pb = with_http_options(
        eds_cluster("c"),
        explicit(Pc::Http3ProtocolOptions(Default::default())),
    );
    pb.http2_protocol_options = Some(Default::default());
    assert_eq!(cds(&pb).protocol, UpstreamProtocol::Unspecified);
    // HTTP/3 is not spoken here: listed, and the cluster keeps the default.
    let c = cds(&with_http_options(
        eds_cluster("c"),
        explicit(Pc::Http3ProtocolOptions(Default::default())),
    ));
    assert_eq!(c.protocol, UpstreamProtocol::Unspecified);
    assert_eq!(
        c.unsupported_fields,
        vec![
            "typed_extension_protocol_options[HttpProtocolOptions].explicit_http_config.http3_protocol_options"
        ]
    );
    // Another extension's protocol options are listed, not applied, and an
    // HttpProtocolOptions only counts under its own key (as Envoy finds it).
    let mut pb = eds_cluster("c");
    pb.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions".into(),
        any(&http_pb::HttpProtocolOptions {
            upstream_protocol_options: explicit(Pc::Http2ProtocolOptions(Default::default())),
            ..Default::default()
        }),
    );
    let c = cds(&pb);
    assert_eq!(c.protocol, UpstreamProtocol::Unspecified);
    assert_eq!(
        c.unsupported_fields,
        vec![
            "typed_extension_protocol_options[envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions]"
        ]
    );
}

#[test]
fn the_rest_of_http_protocol_options_is_listed() {
    use http_pb::http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions as Upo, explicit_http_config::ProtocolConfig,
    };
    let mut pb = eds_cluster("c");
    let message = http_pb::HttpProtocolOptions {
        upstream_protocol_options: Some(Upo::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
        })),
        common_http_protocol_options: Some(Default::default()),
        retry_policy: Some(Default::default()),
        hash_policy: vec![Default::default()],
        ..Default::default()
    };
    pb.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.into(), any(&message));
    let c = cds(&pb);
    assert_eq!(c.protocol, UpstreamProtocol::Http2);
    for f in [
        "common_http_protocol_options",
        "retry_policy",
        "hash_policy",
    ] {
        let want = format!("typed_extension_protocol_options[HttpProtocolOptions].{f}");
        assert!(
            c.unsupported_fields.contains(&want),
            "{want}: {:?}",
            c.unsupported_fields
        );
    }
}

#[test]
fn broken_http_protocol_options_are_rejected() {
    use http_pb::http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions as Upo};
    // No version at all (the oneof is required).
    let err = cds_err(&with_http_options(eds_cluster("c"), None));
    assert!(
        err.to_string().contains("upstream_protocol_options"),
        "{err}"
    );
    // An explicit config that names no version.
    let err = cds_err(&with_http_options(
        eds_cluster("c"),
        Some(Upo::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: None,
        })),
    ));
    assert!(
        err.to_string()
            .contains("typed_extension_protocol_options[HttpProtocolOptions].explicit_http_config"),
        "{err}"
    );
    // Bytes that are not an HttpProtocolOptions.
    let mut pb = eds_cluster("c");
    pb.typed_extension_protocol_options.insert(
        HTTP_PROTOCOL_OPTIONS.into(),
        Any {
            type_url: format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"),
            value: vec![0xff, 0xff, 0xff],
        },
    );
    let err = cds_err(&pb);
    assert_eq!(err.name.as_deref(), Some("c"), "{err}");
    // The key of the HTTP options with another message's type.
    let mut pb = eds_cluster("c");
    pb.typed_extension_protocol_options.insert(
        HTTP_PROTOCOL_OPTIONS.into(),
        Any {
            type_url: "type.googleapis.com/google.protobuf.Empty".into(),
            value: Vec::new(),
        },
    );
    let err = cds_err(&pb);
    assert!(err.to_string().contains("unexpected type URL"), "{err}");
}

#[test]
fn the_eds_constructor_is_what_a_bare_eds_cluster_decodes_to() {
    assert_eq!(cds(&eds_cluster("c")), Cluster::eds("c"));
}

#[test]
fn peak_ewma_is_a_custom_policy_named_by_a_typed_struct() {
    use super::decode::{TypedStruct, UDPA_TYPED_STRUCT, XDS_TYPED_STRUCT};
    use lb_pb::round_robin::v3::RoundRobin;
    use prost::Message as _;
    let typed_struct = |outer: &str, inner: &str| Any {
        type_url: outer.into(),
        value: TypedStruct {
            type_url: inner.into(),
            value: None,
        }
        .encode_to_vec(),
    };
    let mut pb = eds_cluster("c");
    for outer in [XDS_TYPED_STRUCT, UDPA_TYPED_STRUCT] {
        // Offered first, with round robin after it for clients that do not know it (A52).
        pb.load_balancing_policy = Some(cluster_pb::LoadBalancingPolicy {
            policies: vec![
                policy(typed_struct(outer, PEAK_EWMA_POLICY_TYPE_URL)),
                policy(any(&RoundRobin::default())),
            ],
        });
        assert_eq!(cds(&pb).lb_policy, LbPolicy::PeakEwma, "{outer}");
    }
    // A52 names the policy by the type URL's last segment, whatever its prefix.
    pb.load_balancing_policy = Some(cluster_pb::LoadBalancingPolicy {
        policies: vec![policy(typed_struct(
            XDS_TYPED_STRUCT,
            "example.com/policies/meshwork.lb.PeakEwma",
        ))],
    });
    assert_eq!(cds(&pb).lb_policy, LbPolicy::PeakEwma);
    // Another custom policy is skipped like any unknown one.
    pb.load_balancing_policy = Some(cluster_pb::LoadBalancingPolicy {
        policies: vec![
            policy(typed_struct(
                XDS_TYPED_STRUCT,
                "type.googleapis.com/example.Custom",
            )),
            policy(any(&RoundRobin::default())),
        ],
    });
    assert_eq!(cds(&pb).lb_policy, LbPolicy::RoundRobin);
    // A TypedStruct that does not decode is NACKed, naming the field.
    pb.load_balancing_policy = Some(cluster_pb::LoadBalancingPolicy {
        policies: vec![policy(Any {
            type_url: XDS_TYPED_STRUCT.into(),
            value: vec![0xff, 0xff],
        })],
    });
    let err = cds_err(&pb).to_string();
    assert!(err.contains("load_balancing_policy.policies[0]"), "{err}");
}
