use std::error::Error as _;

use envoy_types::pb::envoy::service::discovery::v3::Resource as Wrapper;
use envoy_types::pb::google::protobuf::Any;

use super::testing::*;
use super::*;

#[test]
fn type_urls_round_trip() {
    for t in ResourceType::ALL {
        assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
    }
    assert_eq!(
        ResourceType::Listener.type_url(),
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    assert_eq!(
        ResourceType::from_type_url("type.googleapis.com/envoy.api.v2.Listener"),
        None
    );
    let names: Vec<_> = ResourceType::ALL.iter().map(|t| t.short_name()).collect();
    assert_eq!(names, ["LDS", "RDS", "CDS", "EDS"]);
    let full: Vec<_> = ResourceType::ALL
        .iter()
        .map(|t| t.is_full_state())
        .collect();
    assert_eq!(full, [true, false, true, false]);
}

#[test]
fn type_urls_match_the_protos() {
    use envoy_types::pb::envoy::config;
    use prost::Name;
    assert_eq!(
        ResourceType::Listener.type_url(),
        config::listener::v3::Listener::type_url()
    );
    assert_eq!(
        ResourceType::RouteConfiguration.type_url(),
        config::route::v3::RouteConfiguration::type_url()
    );
    assert_eq!(
        ResourceType::Cluster.type_url(),
        config::cluster::v3::Cluster::type_url()
    );
    assert_eq!(
        ResourceType::ClusterLoadAssignment.type_url(),
        config::endpoint::v3::ClusterLoadAssignment::type_url()
    );
    assert_eq!(RESOURCE_WRAPPER_TYPE_URL, Wrapper::type_url());
}

#[test]
fn wrong_type_url_is_rejected_without_a_name() {
    let a = any(&eds_cluster("c"));
    let err = decode(ResourceType::Listener, &a).unwrap_err();
    assert!(matches!(
        err.kind(),
        ResourceErrorKind::WrongTypeUrl { expected: ResourceType::Listener, actual }
            if actual == ResourceType::Cluster.type_url()
    ));
    assert_eq!(err.name(), None);
    let unknown = Any {
        type_url: "type.googleapis.com/some.Unknown".into(),
        value: vec![],
    };
    assert!(decode(ResourceType::Cluster, &unknown).is_err());
}

#[test]
fn malformed_bytes_are_a_decode_error_with_a_source() {
    for t in ResourceType::ALL {
        let a = Any {
            type_url: t.type_url().into(),
            // Field 1, wire type 2 (length-delimited), length 100, but only 1 byte follows.
            value: vec![0x0a, 100, b'x'],
        };
        let err = decode(t, &a).unwrap_err();
        assert!(
            matches!(err.kind(), ResourceErrorKind::Decode { path, .. } if path.is_empty()),
            "{t}: {err:?}"
        );
        assert_eq!(err.name(), None);
        assert!(
            err.source().is_some(),
            "{t}: the decode error is the source"
        );
        assert!(err.to_string().contains("protobuf decode error"), "{err}");
    }
}

#[test]
fn empty_name_is_rejected() {
    let err = decode_err(ResourceType::Cluster, &eds_cluster(""));
    assert_eq!(err.kind().path(), Some("name"));
    let err = decode_err(ResourceType::ClusterLoadAssignment, &cla("", vec![]));
    assert_eq!(err.kind().path(), Some("cluster_name"));
}

fn wrap(name: &str, inner: Option<Any>) -> Any {
    any(&Wrapper {
        name: name.into(),
        resource: inner,
        version: "1".into(),
        ..Default::default()
    })
}

#[test]
fn wrapped_resource_is_unwrapped() {
    let r = decode(
        ResourceType::Cluster,
        &wrap("c", Some(any(&eds_cluster("c")))),
    )
    .unwrap();
    assert_eq!(r.name(), "c");
    assert_eq!(r.resource_type(), ResourceType::Cluster);
    // A wrapper without a name is fine too.
    let r = decode(
        ResourceType::Cluster,
        &wrap("", Some(any(&eds_cluster("c")))),
    )
    .unwrap();
    assert_eq!(r.name(), "c");
}

#[test]
fn wrapped_resource_name_must_match() {
    let err = decode(
        ResourceType::Cluster,
        &wrap("other", Some(any(&eds_cluster("c")))),
    )
    .unwrap_err();
    assert!(matches!(
        err.kind(),
        ResourceErrorKind::WrapperNameMismatch { wrapper, inner } if wrapper == "other" && inner == "c"
    ));
    assert_eq!(err.name(), Some("c"));
}

#[test]
fn wrapper_errors() {
    // No inner resource: the wrapper's name is reported.
    let err = decode(ResourceType::Cluster, &wrap("c", None)).unwrap_err();
    assert_eq!(err.name(), Some("c"));
    // Wrong inner type.
    let err = decode(
        ResourceType::Listener,
        &wrap("c", Some(any(&eds_cluster("c")))),
    )
    .unwrap_err();
    assert!(matches!(err.kind(), ResourceErrorKind::WrongTypeUrl { .. }));
    assert_eq!(err.name(), Some("c"));
    // Malformed wrapper bytes.
    let bad = Any {
        type_url: RESOURCE_WRAPPER_TYPE_URL.into(),
        value: vec![0x0a, 50],
    };
    let err = decode(ResourceType::Cluster, &bad).unwrap_err();
    assert!(matches!(err.kind(), ResourceErrorKind::Decode { .. }));
    // An invalid inner resource without a readable name borrows the wrapper's.
    let inner = Any {
        type_url: ResourceType::Cluster.type_url().into(),
        value: vec![0x0a, 50],
    };
    let err = decode(ResourceType::Cluster, &wrap("c", Some(inner))).unwrap_err();
    assert_eq!(err.name(), Some("c"));
}

#[test]
fn error_display_names_the_resource_and_path() {
    let mut rc = one_route(route_to("/", cluster_action("c")));
    rc.virtual_hosts[0].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .path_specifier = Some(
        envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::SafeRegex(
            envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "a(b".into(),
                engine_type: None,
            },
        ),
    );
    let err = decode_err(ResourceType::RouteConfiguration, &rc);
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "resource \"rc\": virtual_hosts[0].routes[0].match.safe_regex: invalid regex"
        ),
        "{msg}"
    );
    assert!(err.source().is_some());
    // Errors are Clone (the protocol layer keeps them for the config dump).
    let copy = err.clone();
    assert_eq!(copy.to_string(), msg);
}

#[test]
fn resources_compare_by_value() {
    let a = decode_ok(ResourceType::Cluster, &eds_cluster("c"));
    let b = decode_ok(ResourceType::Cluster, &eds_cluster("c"));
    assert_eq!(a, b);
    let c = decode_ok(ResourceType::Cluster, &eds_cluster("d"));
    assert_ne!(a, c);
}

#[test]
fn field_path_rendering() {
    let root = FieldPath::ROOT;
    assert_eq!(root.to_string(), "");
    let vh = root.at("virtual_hosts", 0);
    let r = vh.at("routes", 2);
    let m = r.field("match.safe_regex");
    assert_eq!(m.to_string(), "virtual_hosts[0].routes[2].match.safe_regex");
    let mut uns = Unsupported::default();
    uns.field(&root, "vhds");
    uns.field(&vh, "cors");
    uns.note("x".into());
    uns.note("x".into());
    assert_eq!(uns.into_vec(), ["vhds", "virtual_hosts[0].cors", "x"]);
}

#[test]
fn durations_are_checked() {
    use envoy_types::pb::google::protobuf::Duration as D;
    let p = FieldPath::ROOT.field("timeout");
    assert_eq!(
        duration(
            &p,
            &D {
                seconds: 1,
                nanos: 5
            }
        )
        .unwrap(),
        std::time::Duration::new(1, 5)
    );
    assert!(
        duration(
            &p,
            &D {
                seconds: -1,
                nanos: 0
            }
        )
        .is_err()
    );
    assert!(
        duration(
            &p,
            &D {
                seconds: 0,
                nanos: -1
            }
        )
        .is_err()
    );
    assert!(
        duration(
            &p,
            &D {
                seconds: 1,
                nanos: 1_000_000_000
            }
        )
        .is_err()
    );
    assert!(
        duration(
            &p,
            &D {
                seconds: 315_576_000_001,
                nanos: 0
            }
        )
        .is_err()
    );
    let err = duration(
        &p,
        &D {
            seconds: -1,
            nanos: 0,
        },
    )
    .unwrap_err();
    assert_eq!(err.path(), Some("timeout"));
    assert_eq!(nonzero_duration(&p, Some(&D::default())).unwrap(), None);
    assert_eq!(nonzero_duration(&p, None).unwrap(), None);
}

#[test]
fn fractional_percent_to_per_million() {
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    let p = FieldPath::ROOT;
    let fp = |numerator, denominator| FractionalPercent {
        numerator,
        denominator,
    };
    assert_eq!(per_million(&p, &fp(5, 0)).unwrap(), 50_000);
    assert_eq!(per_million(&p, &fp(5, 1)).unwrap(), 500);
    assert_eq!(per_million(&p, &fp(5, 2)).unwrap(), 5);
    assert_eq!(per_million(&p, &fp(500, 0)).unwrap(), 1_000_000);
    assert_eq!(per_million(&p, &fp(u32::MAX, 0)).unwrap(), 1_000_000);
    assert!(per_million(&p, &fp(5, 7)).is_err());
}

proptest::proptest! {
    /// Arbitrary bytes never panic the decoder: they decode to something or are rejected.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256), t in 0usize..4) {
        let ty = ResourceType::ALL[t];
        let any = Any { type_url: ty.type_url().into(), value: bytes };
        let _ = decode(ty, &any);
    }
}
