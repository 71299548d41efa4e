use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::http::stateful_session::v3::StatefulSession;
use envoy_types::pb::google::protobuf::Any;

use prost::Message as _;

use super::*;
use crate::resource::testing::*;
use crate::resource::{Resource, ResourceType};

fn lds(l: &listener_pb::Listener) -> Listener {
    match decode_ok(ResourceType::Listener, l) {
        Resource::Listener(l) => (*l).clone(),
        other => panic!("{other:?}"),
    }
}

fn lds_err(l: &listener_pb::Listener) -> ResourceError {
    decode_err(ResourceType::Listener, l)
}

fn unknown_filter(name: &str, optional: bool) -> hcm_pb::HttpFilter {
    let mut f = http_filter(
        name,
        Any {
            type_url: "type.googleapis.com/example.Unknown".into(),
            value: vec![],
        },
    );
    f.is_optional = optional;
    f
}

#[test]
fn rds_listener() {
    let l = lds(&api_listener("echo:7070", &hcm_rds("route-a")));
    assert_eq!(l.name, "echo:7070");
    assert_eq!(
        l.route,
        RouteSource::Rds {
            route_config_name: "route-a".into()
        }
    );
    assert_eq!(l.http_filters.len(), 1);
    assert_eq!(l.http_filters[0].kind, HttpFilterKind::Router);
    assert_eq!(l.http_filters[0].type_url, ROUTER_FILTER_TYPE_URL);
    assert_eq!(l.max_stream_duration, None);
    assert!(
        l.unsupported_fields.is_empty(),
        "{:?}",
        l.unsupported_fields
    );
}

#[test]
fn rds_config_source_must_be_ads_or_self() {
    use core_pb::config_source::ConfigSourceSpecifier;
    let mut hcm = hcm_rds("r");
    let set = |hcm: &mut hcm_pb::HttpConnectionManager, s: Option<ConfigSourceSpecifier>| {
        if let Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(rds)) =
            &mut hcm.route_specifier
        {
            rds.config_source = Some(core_pb::ConfigSource {
                config_source_specifier: s,
                ..Default::default()
            });
        }
    };
    set(
        &mut hcm,
        Some(ConfigSourceSpecifier::Self_(
            core_pb::SelfConfigSource::default(),
        )),
    );
    lds(&api_listener("l", &hcm));
    set(
        &mut hcm,
        Some(ConfigSourceSpecifier::Path("/etc/routes".into())),
    );
    let err = lds_err(&api_listener("l", &hcm));
    assert_eq!(err.name(), Some("l"));
    assert_eq!(
        err.kind().path(),
        Some("api_listener.api_listener.rds.config_source")
    );
    set(&mut hcm, None);
    assert!(
        lds_err(&api_listener("l", &hcm))
            .to_string()
            .contains("config source")
    );

    let err = lds_err(&api_listener("l", &hcm_rds("")));
    assert_eq!(
        err.kind().path(),
        Some("api_listener.api_listener.rds.route_config_name")
    );
}

#[test]
fn inline_route_configuration_is_validated_like_rds() {
    let mut hcm = hcm_rds("unused");
    let mut rc = one_route(route_to("/", cluster_action("c")));
    rc.request_headers_to_add = vec![core_pb::HeaderValueOption::default()];
    hcm.route_specifier =
        Some(hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(rc.clone()));
    let l = lds(&api_listener("l", &hcm));
    let RouteSource::Inline(inline) = &l.route else {
        panic!("{:?}", l.route)
    };
    assert_eq!(inline.name, "rc");
    assert_eq!(inline.virtual_hosts[0].routes.len(), 1);
    let expected = "api_listener.api_listener.route_config.request_headers_to_add";
    assert_eq!(inline.unsupported_fields, [expected]);
    assert!(l.unsupported_fields.contains(&expected.to_owned()));

    // Invalid inline routes reject the listener, with the full path.
    rc.virtual_hosts[0].routes[0].r#match = None;
    hcm.route_specifier = Some(hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(rc));
    let err = lds_err(&api_listener("l", &hcm));
    assert_eq!(
        err.kind().path(),
        Some("api_listener.api_listener.route_config.virtual_hosts[0].routes[0].match")
    );
}

#[test]
fn a_client_listener_needs_api_listener() {
    let l = listener_pb::Listener {
        name: "l".into(),
        api_listener: None,
        ..Default::default()
    };
    // Through LDS such a Listener is a server one; the client decoder alone names the field.
    let err = decode_with(&l.encode_to_vec(), validate).unwrap_err();
    assert_eq!(err.kind().path(), Some("api_listener"));
    assert_eq!(err.name(), Some("l"));
}

#[test]
fn api_listener_must_hold_an_hcm() {
    let mut l = api_listener("l", &hcm_rds("r"));
    l.api_listener.as_mut().unwrap().api_listener = Some(any(&eds_cluster("c")));
    let err = lds_err(&l);
    assert_eq!(err.kind().path(), Some("api_listener.api_listener"));
    l.api_listener.as_mut().unwrap().api_listener = Some(Any {
        type_url: HTTP_CONNECTION_MANAGER_TYPE_URL.into(),
        value: vec![0x0a, 9],
    });
    assert!(
        matches!(lds_err(&l).kind(), ResourceErrorKind::Decode { path, .. } if path == "api_listener.api_listener")
    );
    l.api_listener.as_mut().unwrap().api_listener = None;
    assert!(lds_err(&l).to_string().contains("must be set"));

    let mut hcm = hcm_rds("r");
    hcm.route_specifier = None;
    assert!(
        lds_err(&api_listener("l", &hcm))
            .to_string()
            .contains("no route specifier")
    );
    let mut hcm = hcm_rds("r");
    hcm.xff_num_trusted_hops = 1;
    assert_eq!(
        lds_err(&api_listener("l", &hcm)).kind().path(),
        Some("api_listener.api_listener.xff_num_trusted_hops")
    );
}

#[test]
fn router_must_be_present_and_last() {
    let mut hcm = hcm_rds("r");
    hcm.http_filters = vec![];
    assert!(
        lds_err(&api_listener("l", &hcm))
            .to_string()
            .contains("no router filter")
    );

    hcm.http_filters = vec![
        router_filter(),
        http_filter("fault", any(&HttpFault::default())),
    ];
    assert!(
        lds_err(&api_listener("l", &hcm))
            .to_string()
            .contains("not the last filter")
    );

    // An optional unknown filter after the router is skipped, so the router is last.
    hcm.http_filters = vec![router_filter(), unknown_filter("opt", true)];
    let l = lds(&api_listener("l", &hcm));
    assert_eq!(l.http_filters.len(), 1);
}

#[test]
fn http_filter_rules() {
    let mut hcm = hcm_rds("r");
    hcm.http_filters = vec![
        http_filter(
            "envoy.filters.http.stateful_session",
            any(&StatefulSession::default()),
        ),
        unknown_filter("optional.unknown", true),
        http_filter("envoy.filters.http.rbac.DENY", any(&Rbac::default())),
        router_filter(),
    ];
    let l = lds(&api_listener("l", &hcm));
    let kinds: Vec<_> = l.http_filters.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            HttpFilterKind::StatefulSession,
            HttpFilterKind::Rbac,
            HttpFilterKind::Router
        ]
    );
    assert_eq!(l.http_filters[1].name, "envoy.filters.http.rbac.DENY");
    assert_eq!(l.unsupported_fields.len(), 3, "{:?}", l.unsupported_fields);
    assert!(l.unsupported_fields[1].contains("optional.unknown"));

    // An unknown required filter is an error.
    hcm.http_filters = vec![unknown_filter("required.unknown", false), router_filter()];
    let err = lds_err(&api_listener("l", &hcm));
    assert!(matches!(err.kind(), ResourceErrorKind::Unsupported { .. }));
    assert_eq!(
        err.kind().path(),
        Some("api_listener.api_listener.http_filters[0]")
    );

    // Names must be present and unique.
    hcm.http_filters = vec![router_filter(), router_filter()];
    assert!(
        lds_err(&api_listener("l", &hcm))
            .to_string()
            .contains("duplicate filter name")
    );
    let mut nameless = router_filter();
    nameless.name.clear();
    hcm.http_filters = vec![nameless];
    assert_eq!(
        lds_err(&api_listener("l", &hcm)).kind().path(),
        Some("api_listener.api_listener.http_filters[0].name")
    );
}

#[test]
fn typed_struct_filter_configs_are_unwrapped() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Ts {
        #[prost(string, tag = "1")]
        type_url: String,
    }
    let ts = Ts {
        type_url: ROUTER_FILTER_TYPE_URL.into(),
    };
    let mut hcm = hcm_rds("r");
    hcm.http_filters = vec![http_filter(
        "router",
        Any {
            type_url: "type.googleapis.com/xds.type.v3.TypedStruct".into(),
            value: prost::Message::encode_to_vec(&ts),
        },
    )];
    let l = lds(&api_listener("l", &hcm));
    assert_eq!(l.http_filters[0].kind, HttpFilterKind::Router);
    assert_eq!(l.http_filters[0].type_url, ROUTER_FILTER_TYPE_URL);
}

#[test]
fn max_stream_duration_from_common_options() {
    let mut hcm = hcm_rds("r");
    hcm.common_http_protocol_options = Some(core_pb::HttpProtocolOptions {
        max_stream_duration: dur(30, 0),
        ..Default::default()
    });
    let l = lds(&api_listener("l", &hcm));
    assert_eq!(
        l.max_stream_duration,
        Some(std::time::Duration::from_secs(30))
    );
    hcm.common_http_protocol_options
        .as_mut()
        .unwrap()
        .max_stream_duration = dur(0, 0);
    assert_eq!(lds(&api_listener("l", &hcm)).max_stream_duration, None);
    hcm.common_http_protocol_options
        .as_mut()
        .unwrap()
        .max_stream_duration = dur(0, -5);
    assert_eq!(
        lds_err(&api_listener("l", &hcm)).kind().path(),
        Some("api_listener.api_listener.common_http_protocol_options.max_stream_duration")
    );
}

/// What istiod sends a proxyless client for `xds:///echo.default.svc.cluster.local:7070`.
#[test]
fn istio_shaped_listener() {
    let mut hcm = hcm_rds("outbound|7070||echo.default.svc.cluster.local");
    hcm.http_filters = vec![
        http_filter(
            "envoy.filters.http.stateful_session",
            any(&StatefulSession::default()),
        ),
        router_filter(),
    ];
    let mut l = api_listener("echo.default.svc.cluster.local:7070", &hcm);
    l.address = socket_address("10.96.0.12", 7070);
    let l = lds(&l);
    assert_eq!(
        l.route,
        RouteSource::Rds {
            route_config_name: "outbound|7070||echo.default.svc.cluster.local".into()
        }
    );
    assert_eq!(l.http_filters.last().unwrap().kind, HttpFilterKind::Router);
    assert!(!HttpFilterKind::StatefulSession.is_implemented());
    assert_eq!(l.unsupported_fields.len(), 1, "{:?}", l.unsupported_fields);
}
