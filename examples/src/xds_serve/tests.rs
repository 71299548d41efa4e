use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use meshwork_xds::server::type_url;
use prost::Message;

use super::*;

const ISTIO: &str = include_str!("../../testdata/xds-serve/istio.json");
const GREETER: &str = include_str!("../../testdata/xds-serve/greeter.json");

fn decode<M: Message + Default>(resources: &Resources, type_url: &str, name: &str) -> M {
    let any = resources
        .snapshot
        .get(type_url, name)
        .unwrap_or_else(|| panic!("{type_url} {name} missing"));
    assert_eq!(any.type_url, type_url);
    M::decode(any.value.as_slice()).unwrap()
}

#[test]
fn the_descriptor_set_has_every_message_istio_sends() {
    for name in [
        "envoy.config.listener.v3.Listener",
        "envoy.config.route.v3.RouteConfiguration",
        "envoy.config.cluster.v3.Cluster",
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "envoy.extensions.filters.http.router.v3.Router",
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
        "envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin",
        "envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
        "envoy.extensions.filters.http.gcp_authn.v3.GcpAuthnFilterConfig",
        "envoy.config.rbac.v3.RBAC",
        "xds.type.v3.TypedStruct",
        "udpa.type.v1.TypedStruct",
        "google.protobuf.Duration",
        "google.protobuf.Struct",
        "google.protobuf.Any",
    ] {
        assert!(
            descriptors().get_message_by_name(name).is_some(),
            "{name} is not in envoy-types' descriptor set"
        );
    }
}

#[test]
fn a_typed_struct_reads_as_protobuf_json_says() {
    // gRFC A52's custom LB policy config, as grpc-go's tests write it.
    let json = r#"{"resources": [{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "c", "load_balancing_policy": {"policies": [{"typed_extension_config": {
            "name": "custom", "typed_config": {"@type": "type.googleapis.com/xds.type.v3.TypedStruct",
            "type_url": "type.googleapis.com/my.Policy", "value": {"weight": 3}}}}]}}]}"#;
    let resources = parse(json.as_bytes()).unwrap();
    let cluster: Cluster = decode(&resources, type_url::CLUSTER, "c");
    let policy = cluster.load_balancing_policy.unwrap().policies.remove(0);
    let any = policy.typed_extension_config.unwrap().typed_config.unwrap();
    assert_eq!(any.type_url, "type.googleapis.com/xds.type.v3.TypedStruct");
    // Field 1, the inner type URL, as a TypedStruct's decoder reads it.
    let url = "type.googleapis.com/my.Policy";
    assert_eq!(&any.value[..2], &[0x0a, url.len() as u8]);
    assert_eq!(&any.value[2..2 + url.len()], url.as_bytes());
}

#[test]
fn an_istio_shaped_file_round_trips_into_envoy_types() {
    let resources = parse(ISTIO.as_bytes()).unwrap();
    assert_eq!(resources.count, 4);
    assert!(
        resources.version.starts_with("2026-12-06T10:00:00Z/42-"),
        "{}",
        resources.version
    );

    let listener: Listener = decode(
        &resources,
        type_url::LISTENER,
        "greeter.default.svc.cluster.local:7070",
    );
    let hcm = listener.api_listener.unwrap().api_listener.unwrap();
    let hcm = HttpConnectionManager::decode(hcm.value.as_slice()).unwrap();
    assert_eq!(hcm.http_filters[0].name, "envoy.filters.http.router");

    let route: RouteConfiguration = decode(
        &resources,
        type_url::ROUTE,
        "greeter.default.svc.cluster.local:7070",
    );
    assert_eq!(route.virtual_hosts[0].domains.len(), 2);

    let name = "outbound|7070||greeter.default.svc.cluster.local";
    let cluster: Cluster = decode(&resources, type_url::CLUSTER, name);
    assert_eq!(
        cluster.connect_timeout.map(|d| (d.seconds, d.nanos)),
        Some((10, 0))
    );
    let socket = cluster.transport_socket.unwrap();
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        tls,
    )) = socket.config_type
    else {
        panic!("no typed_config");
    };
    let tls = UpstreamTlsContext::decode(tls.value.as_slice()).unwrap();
    assert_eq!(
        tls.common_tls_context
            .unwrap()
            .tls_certificate_provider_instance
            .unwrap()
            .instance_name,
        "default"
    );

    let endpoints: ClusterLoadAssignment = decode(&resources, type_url::ENDPOINTS, name);
    assert_eq!(endpoints.endpoints[0].lb_endpoints.len(), 1);

    // Every type carries the file's version.
    for url in [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ] {
        assert_eq!(
            resources.snapshot.version(url),
            Some(resources.version.as_str())
        );
    }
}

#[test]
fn the_bytes_are_what_prost_encodes() {
    // The reflective encoding must equal prost's own for the same message, or a client
    // would see a different resource than the file says (and versions would churn).
    let resources = parse(GREETER.as_bytes()).unwrap();
    for url in [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ] {
        for name in resources.snapshot.names(url) {
            let any = resources.snapshot.get(url, name).unwrap();
            let again = match url {
                type_url::LISTENER => Listener::decode(any.value.as_slice())
                    .unwrap()
                    .encode_to_vec(),
                type_url::ROUTE => RouteConfiguration::decode(any.value.as_slice())
                    .unwrap()
                    .encode_to_vec(),
                type_url::CLUSTER => Cluster::decode(any.value.as_slice())
                    .unwrap()
                    .encode_to_vec(),
                _ => ClusterLoadAssignment::decode(any.value.as_slice())
                    .unwrap()
                    .encode_to_vec(),
            };
            assert_eq!(any.value, again, "{url} {name}");
        }
    }
}

#[test]
fn the_version_follows_the_content() {
    let a = parse(GREETER.as_bytes()).unwrap();
    let b = parse(GREETER.as_bytes()).unwrap();
    let c = parse(GREETER.replace("50051", "50052").as_bytes()).unwrap();
    assert_eq!(a.version, b.version);
    assert_ne!(a.version, c.version);
    assert_eq!(a.version.len(), 16);
}

fn error(json: &str) -> String {
    let e = parse(json.as_bytes()).expect_err("a bad file");
    meshwork_xds::ErrorChain(&e).to_string()
}

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

#[test]
fn bad_files_say_what_and_where() {
    let cases: &[(String, &[&str])] = &[
        ("{\"resources\": [".to_owned(), &["not JSON", "EOF"]),
        ("[]".to_owned(), &["must be a JSON object"]),
        ("{}".to_owned(), &["needs a `resources` array"]),
        (
            "{\"resources\": [], \"nonce\": \"1\"}".to_owned(),
            &["unknown top-level field `nonce`"],
        ),
        (
            "{\"resources\": [{\"name\": \"x\"}]}".to_owned(),
            &["resources[0] (\"x\")", "no \"@type\""],
        ),
        (
            r#"{"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listenr", "name": "x"}]}"#.to_owned(),
            &["resources[0]", "unknown @type", "Listenr"],
        ),
        (
            format!(r#"{{"resources": [{{"@type": "{LISTENER}", "name": "l", "bogus": 1}}]}}"#),
            &[
                &format!("resources[0] ({LISTENER} \"l\")"),
                "does not match its type at `.`",
                "unrecognized field name 'bogus'",
            ],
        ),
        (
            // Inside an Any: checked against the Any's own @type.
            format!(
                r#"{{"resources": [{{"@type": "{LISTENER}", "name": "l", "api_listener": {{"api_listener": {{
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefx": "x"}}}}}}]}}"#
            ),
            &[
                "resources[0]",
                "at `api_listener.api_listener`",
                "unrecognized field name 'stat_prefx'",
            ],
        ),
        (
            GREETER.replace("\"port_value\": 50051", "\"port_value\": \"abc\""),
            &[
                "resources[3] (type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment \"greeter\")",
                "at `endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value`",
            ],
        ),
        (
            format!(
                r#"{{"resources": [{{"@type": "{LISTENER}", "name": "l", "api_listener": {{"api_listener": {{
                    "@type": "type.googleapis.com/nowhere.Nothing"}}}}}}]}}"#
            ),
            &["resources[0]", "nowhere.Nothing"],
        ),
        (
            format!(r#"{{"resources": [{{"@type": "{LISTENER}", "address": {{}}}}]}}"#),
            &["resources[0]", "has no name (field `name`)"],
        ),
        (
            r#"{"resources": [{"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "endpoints": []}]}"#.to_owned(),
            &["has no name (field `cluster_name`)"],
        ),
        (
            r#"{"resources": [{"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1s"}]}"#.to_owned(),
            &["google.protobuf.Duration has no `name` field"],
        ),
        (
            format!(
                r#"{{"resources": [{{"@type": "{LISTENER}", "name": "l"}}, {{"@type": "{LISTENER}", "name": "m"}}, {{"@type": "{LISTENER}", "name": "l"}}]}}"#
            ),
            &["resources[0] and resources[2] are both", "named \"l\""],
        ),
        (
            format!(r#"{{"resources": [{{"@type": "{LISTENER}", "name": 5}}]}}"#),
            &["resources[0]", "does not match its type"],
        ),
        ("{\"resources\": [7]}".to_owned(), &["resources[0]", "not a JSON object"]),
    ];
    for (json, wanted) in cases {
        let message = error(json);
        for w in *wanted {
            assert!(message.contains(w), "{json}\n=> {message}\nlacks {w:?}");
        }
    }
}

#[test]
fn one_name_may_be_used_by_two_types() {
    let resources = parse(GREETER.as_bytes()).unwrap();
    // The cluster and its endpoints are both "greeter".
    assert_eq!(resources.count, 4);
    assert_eq!(resources.snapshot.len(), 4);
}

#[test]
fn hostile_nesting_is_an_error() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(error(&format!("{{\"resources\": {deep}}}")).contains("not JSON"));
}

#[test]
fn a_type_url_prefix_other_than_googles_is_served_under_googles() {
    let json =
        r#"{"resources": [{"@type": "example.com/envoy.config.cluster.v3.Cluster", "name": "c"}]}"#;
    let resources = parse(json.as_bytes()).unwrap();
    assert!(resources.snapshot.get(type_url::CLUSTER, "c").is_some());
}

#[test]
fn the_watch_reports_each_change_once() {
    let dir = std::env::temp_dir().join(format!("meshwork-xds-serve-watch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resources.json");
    fs::write(&path, GREETER).unwrap();
    let mut watch = FileWatch::new(path.clone(), GREETER.as_bytes());
    // Unchanged, including on the polls that hash the content.
    for _ in 0..2 * FileWatch::RECHECK_EVERY {
        assert!(watch.poll().is_none());
    }

    // A same-size rewrite with the same modification time is still seen, by a content poll.
    let changed = GREETER.replace("50051", "50052");
    let modified = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, &changed).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let seen = (0..FileWatch::RECHECK_EVERY)
        .find_map(|_| watch.poll())
        .expect("the change is seen within RECHECK_EVERY polls");
    assert_eq!(seen.unwrap().count, 4);
    assert!(watch.poll().is_none());

    // A bad file: one error, not one per poll.
    fs::write(&path, "{").unwrap();
    assert!(matches!(watch.poll(), Some(Err(LoadError::Json(_)))));
    for _ in 0..2 * FileWatch::RECHECK_EVERY {
        assert!(watch.poll().is_none());
    }

    // A missing file: one error; then the file is back, with the content served before
    // the bad one, and is loaded again.
    fs::remove_file(&path).unwrap();
    assert!(matches!(watch.poll(), Some(Err(LoadError::Read { .. }))));
    assert!(watch.poll().is_none());
    fs::write(&path, &changed).unwrap();
    assert_eq!(watch.poll().unwrap().unwrap().count, 4);

    // Too large: refused without reading it all.
    let file = fs::File::create(&path).unwrap();
    file.set_len(MAX_FILE_BYTES + 1).unwrap();
    assert!(matches!(
        watch.poll(),
        Some(Err(LoadError::TooLarge { .. }))
    ));
    let _ = fs::remove_dir_all(&dir);
}
