//! Every field meshwork does not implement, set one at a time on an otherwise clean resource
//! of each type: the table pins whether the field is listed in `unsupported_fields` (and
//! under which path) or NACKed (and with which text). A change to how these fields are
//! checked must leave every row as it is.

use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    self as tls_pb, common_tls_context as ctc,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as http_pb;

use super::testing::*;
use super::{HTTP_PROTOCOL_OPTIONS, ResourceType, decode};

/// One row: a label, how to set the field, and the outcome: the `unsupported_fields` of the
/// decoded resource joined by `" | "`, or `"NACK: "` and the error text.
type Row<T> = (&'static str, fn(&mut T), &'static str);

fn outcome(ty: ResourceType, value: Vec<u8>) -> String {
    let any = envoy_types::pb::google::protobuf::Any {
        type_url: ty.type_url().into(),
        value,
    };
    match decode(ty, &any) {
        Ok(r) => r.unsupported_fields().join(" | "),
        Err(e) => format!("NACK: {e}"),
    }
}

/// Runs every row and fails with the whole table of differences (ready to paste) if any
/// row's outcome changed.
fn check<T>(ty: ResourceType, base: fn() -> T, build: fn(T) -> Vec<u8>, rows: &[Row<T>]) {
    assert_eq!(outcome(ty, build(base())), "", "the {ty} base is not clean");
    let mut diffs = String::new();
    for &(label, set, want) in rows {
        let mut t = base();
        set(&mut t);
        let got = outcome(ty, build(t));
        if got != want {
            diffs.push_str(&format!("({label:?}, {got:?})\n"));
        }
    }
    assert!(diffs.is_empty(), "{ty} rows changed:\n{diffs}");
}

// ---- clusters ----

struct ClusterParts {
    cluster: cluster_pb::Cluster,
    tls: tls_pb::UpstreamTlsContext,
    http: http_pb::HttpProtocolOptions,
}

fn cluster_base() -> ClusterParts {
    use http_pb::http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    let mut cluster = eds_cluster("c");
    cluster.outlier_detection = Some(Default::default());
    cluster.common_lb_config = Some(Default::default());
    cluster.circuit_breakers = Some(Default::default());
    let tls = tls_pb::UpstreamTlsContext {
        common_tls_context: Some(tls_pb::CommonTlsContext {
            validation_context_type: Some(ctc::ValidationContextType::ValidationContext(
                tls_pb::CertificateValidationContext {
                    ca_certificate_provider_instance: Some(
                        tls_pb::CertificateProviderPluginInstance {
                            instance_name: "roots".into(),
                            certificate_name: "ROOTCA".into(),
                        },
                    ),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let http = http_pb::HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
            },
        )),
        ..Default::default()
    };
    ClusterParts { cluster, tls, http }
}

fn cluster_build(mut p: ClusterParts) -> Vec<u8> {
    use prost::Message as _;
    p.cluster.transport_socket = Some(core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(any(
            &p.tls
        ))),
    });
    p.cluster
        .typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.into(), any(&p.http));
    p.cluster.encode_to_vec()
}

fn od(p: &mut ClusterParts) -> &mut cluster_pb::OutlierDetection {
    p.cluster.outlier_detection.as_mut().unwrap()
}

fn lb(p: &mut ClusterParts) -> &mut cluster_pb::cluster::CommonLbConfig {
    p.cluster.common_lb_config.as_mut().unwrap()
}

fn common(p: &mut ClusterParts) -> &mut tls_pb::CommonTlsContext {
    p.tls.common_tls_context.as_mut().unwrap()
}

fn vc(p: &mut ClusterParts) -> &mut tls_pb::CertificateValidationContext {
    match &mut common(p).validation_context_type {
        Some(ctc::ValidationContextType::ValidationContext(vc)) => vc,
        _ => unreachable!(),
    }
}

#[test]
#[allow(deprecated)]
fn cluster_unsupported_fields() {
    let rows: &[Row<ClusterParts>] = &[
        (
            "alt_stat_name",
            |p| p.cluster.alt_stat_name = "x".into(),
            "alt_stat_name",
        ),
        (
            "metadata",
            |p| p.cluster.metadata = Some(Default::default()),
            "metadata",
        ),
        (
            "transport_socket_matches",
            |p| p.cluster.transport_socket_matches = vec![Default::default()],
            "transport_socket_matches",
        ),
        (
            "dns_lookup_family",
            |p| p.cluster.dns_lookup_family = 1,
            "dns_lookup_family",
        ),
        (
            "health_checks",
            |p| p.cluster.health_checks = vec![Default::default()],
            "health_checks",
        ),
        (
            "max_requests_per_connection",
            |p| p.cluster.max_requests_per_connection = u32v(1),
            "max_requests_per_connection",
        ),
        (
            "upstream_http_protocol_options",
            |p| p.cluster.upstream_http_protocol_options = Some(Default::default()),
            "upstream_http_protocol_options",
        ),
        (
            "common_http_protocol_options",
            |p| p.cluster.common_http_protocol_options = Some(Default::default()),
            "common_http_protocol_options",
        ),
        (
            "lb_subset_config",
            |p| p.cluster.lb_subset_config = Some(Default::default()),
            "lb_subset_config",
        ),
        (
            "filters",
            |p| p.cluster.filters = vec![Default::default()],
            "filters",
        ),
        (
            "upstream_connection_options",
            |p| p.cluster.upstream_connection_options = Some(Default::default()),
            "upstream_connection_options",
        ),
        (
            "preconnect_policy",
            |p| p.cluster.preconnect_policy = Some(Default::default()),
            "preconnect_policy",
        ),
        (
            "dns_refresh_rate",
            |p| p.cluster.dns_refresh_rate = dur(1, 0),
            "dns_refresh_rate",
        ),
        (
            "http_protocol_options",
            |p| p.cluster.http_protocol_options = Some(Default::default()),
            "http_protocol_options",
        ),
        (
            "protocol_selection",
            |p| p.cluster.protocol_selection = 1,
            "protocol_selection",
        ),
        (
            "http2_protocol_options",
            |p| p.cluster.http2_protocol_options = Some(Default::default()),
            "http2_protocol_options (overridden by HttpProtocolOptions)",
        ),
        (
            "typed_extension_protocol_options[other]",
            |p| {
                p.cluster
                    .typed_extension_protocol_options
                    .insert("other".into(), Default::default());
            },
            "typed_extension_protocol_options[other]",
        ),
        (
            "common_lb_config.override_host_status",
            |p| lb(p).override_host_status = Some(Default::default()),
            "common_lb_config.override_host_status",
        ),
        (
            "common_lb_config.healthy_panic_threshold",
            |p| lb(p).healthy_panic_threshold = Some(Default::default()),
            "common_lb_config.healthy_panic_threshold",
        ),
        (
            "common_lb_config.locality_config_specifier",
            |p| {
                lb(p).locality_config_specifier = Some(
                cluster_pb::cluster::common_lb_config::LocalityConfigSpecifier::ZoneAwareLbConfig(Default::default()),
            );
            },
            "common_lb_config.locality_config_specifier",
        ),
        (
            "common_lb_config.consistent_hashing_lb_config",
            |p| lb(p).consistent_hashing_lb_config = Some(Default::default()),
            "common_lb_config.consistent_hashing_lb_config",
        ),
        (
            "circuit_breakers.per_host_thresholds",
            |p| {
                p.cluster
                    .circuit_breakers
                    .as_mut()
                    .unwrap()
                    .per_host_thresholds = vec![Default::default()];
            },
            "circuit_breakers.per_host_thresholds",
        ),
        (
            "outlier_detection.split_external_local_origin_errors",
            |p| od(p).split_external_local_origin_errors = true,
            "outlier_detection.split_external_local_origin_errors",
        ),
        (
            "outlier_detection.consecutive_local_origin_failure",
            |p| od(p).consecutive_local_origin_failure = u32v(1),
            "outlier_detection.consecutive_local_origin_failure",
        ),
        (
            "outlier_detection.enforcing_local_origin_success_rate",
            |p| od(p).enforcing_local_origin_success_rate = u32v(1),
            "outlier_detection.enforcing_local_origin_success_rate",
        ),
        (
            "outlier_detection.enforcing_failure_percentage_local_origin",
            |p| od(p).enforcing_failure_percentage_local_origin = u32v(1),
            "outlier_detection.enforcing_failure_percentage_local_origin",
        ),
        (
            "outlier_detection.max_ejection_time_jitter",
            |p| od(p).max_ejection_time_jitter = dur(1, 0),
            "outlier_detection.max_ejection_time_jitter",
        ),
        (
            "outlier_detection.successful_active_health_check_uneject_host",
            |p| od(p).successful_active_health_check_uneject_host = boolv(true),
            "outlier_detection.successful_active_health_check_uneject_host",
        ),
        (
            "outlier_detection.monitors",
            |p| od(p).monitors = vec![Default::default()],
            "outlier_detection.monitors",
        ),
        (
            "outlier_detection.always_eject_one_host",
            |p| od(p).always_eject_one_host = boolv(true),
            "outlier_detection.always_eject_one_host",
        ),
        (
            "outlier_detection.detect_degraded_hosts",
            |p| od(p).detect_degraded_hosts = boolv(true),
            "outlier_detection.detect_degraded_hosts",
        ),
        (
            "http.common_http_protocol_options",
            |p| p.http.common_http_protocol_options = Some(Default::default()),
            "typed_extension_protocol_options[HttpProtocolOptions].common_http_protocol_options",
        ),
        (
            "http.upstream_http_protocol_options",
            |p| p.http.upstream_http_protocol_options = Some(Default::default()),
            "typed_extension_protocol_options[HttpProtocolOptions].upstream_http_protocol_options",
        ),
        (
            "http.http_filters",
            |p| p.http.http_filters = vec![Default::default()],
            "typed_extension_protocol_options[HttpProtocolOptions].http_filters",
        ),
        (
            "http.header_validation_config",
            |p| p.http.header_validation_config = Some(Default::default()),
            "typed_extension_protocol_options[HttpProtocolOptions].header_validation_config",
        ),
        (
            "http.outlier_detection",
            |p| p.http.outlier_detection = Some(Default::default()),
            "typed_extension_protocol_options[HttpProtocolOptions].outlier_detection",
        ),
        (
            "http.request_mirror_policies",
            |p| p.http.request_mirror_policies = vec![Default::default()],
            "typed_extension_protocol_options[HttpProtocolOptions].request_mirror_policies",
        ),
        (
            "http.hash_policy",
            |p| p.http.hash_policy = vec![Default::default()],
            "typed_extension_protocol_options[HttpProtocolOptions].hash_policy",
        ),
        (
            "http.retry_policy",
            |p| p.http.retry_policy = Some(Default::default()),
            "typed_extension_protocol_options[HttpProtocolOptions].retry_policy",
        ),
        (
            "http.http3",
            |p| {
                use http_pb::http_protocol_options::{
                    ExplicitHttpConfig, UpstreamProtocolOptions,
                    explicit_http_config::ProtocolConfig,
                };
                p.http.upstream_protocol_options = Some(
                    UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                        protocol_config: Some(ProtocolConfig::Http3ProtocolOptions(
                            Default::default(),
                        )),
                    }),
                );
            },
            "typed_extension_protocol_options[HttpProtocolOptions].explicit_http_config.http3_protocol_options",
        ),
        (
            "tls.sni",
            |p| p.tls.sni = "x".into(),
            "transport_socket.typed_config.sni",
        ),
        (
            "tls.auto_host_sni",
            |p| p.tls.auto_host_sni = true,
            "transport_socket.typed_config.auto_host_sni",
        ),
        (
            "tls.auto_sni_san_validation",
            |p| p.tls.auto_sni_san_validation = true,
            "transport_socket.typed_config.auto_sni_san_validation",
        ),
        (
            "tls.allow_renegotiation",
            |p| p.tls.allow_renegotiation = true,
            "transport_socket.typed_config.allow_renegotiation",
        ),
        (
            "tls.max_session_keys",
            |p| p.tls.max_session_keys = u32v(1),
            "transport_socket.typed_config.max_session_keys",
        ),
        (
            "tls.common.tls_params",
            |p| common(p).tls_params = Some(Default::default()),
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.tls_params: unsupported: TLS parameters",
        ),
        (
            "tls.common.custom_handshaker",
            |p| common(p).custom_handshaker = Some(Default::default()),
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.custom_handshaker: unsupported: custom handshakers",
        ),
        (
            "tls.common.tls_certificates",
            |p| common(p).tls_certificates = vec![Default::default()],
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.tls_certificates: unsupported: inline certificates (use a certificate provider instance)",
        ),
        (
            "tls.common.tls_certificate_sds_secret_configs",
            |p| common(p).tls_certificate_sds_secret_configs = vec![Default::default()],
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs: unsupported: SDS (use a certificate provider instance)",
        ),
        (
            "tls.common.tls_certificate_certificate_provider",
            |p| common(p).tls_certificate_certificate_provider = Some(Default::default()),
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.tls_certificate_certificate_provider: unsupported: certificate provider plugins (use a certificate provider instance)",
        ),
        (
            "tls.common.custom_tls_certificate_selector",
            |p| common(p).custom_tls_certificate_selector = Some(Default::default()),
            "transport_socket.typed_config.common_tls_context.custom_tls_certificate_selector",
        ),
        (
            "tls.common.alpn_protocols",
            |p| common(p).alpn_protocols = vec!["h2".into()],
            "transport_socket.typed_config.common_tls_context.alpn_protocols",
        ),
        (
            "tls.common.key_log",
            |p| common(p).key_log = Some(Default::default()),
            "transport_socket.typed_config.common_tls_context.key_log",
        ),
        (
            "tls.vc.verify_certificate_spki",
            |p| vc(p).verify_certificate_spki = vec!["x".into()],
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.validation_context.verify_certificate_spki: unsupported: SPKI pinning",
        ),
        (
            "tls.vc.verify_certificate_hash",
            |p| vc(p).verify_certificate_hash = vec!["x".into()],
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.validation_context.verify_certificate_hash: unsupported: certificate hash pinning",
        ),
        (
            "tls.vc.require_signed_certificate_timestamp false",
            |p| vc(p).require_signed_certificate_timestamp = boolv(false),
            "",
        ),
        (
            "tls.vc.require_signed_certificate_timestamp true",
            |p| vc(p).require_signed_certificate_timestamp = boolv(true),
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.validation_context.require_signed_certificate_timestamp: unsupported: signed certificate timestamps",
        ),
        (
            "tls.vc.crl",
            |p| vc(p).crl = Some(Default::default()),
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.validation_context.crl: unsupported: certificate revocation lists",
        ),
        (
            "tls.vc.custom_validator_config",
            |p| vc(p).custom_validator_config = Some(Default::default()),
            "NACK: resource \"c\": transport_socket.typed_config.common_tls_context.validation_context.custom_validator_config: unsupported: custom certificate validators",
        ),
        (
            "tls.vc.trusted_ca",
            |p| vc(p).trusted_ca = Some(Default::default()),
            "transport_socket.typed_config.common_tls_context.validation_context.trusted_ca",
        ),
        (
            "tls.vc.watched_directory",
            |p| vc(p).watched_directory = Some(Default::default()),
            "transport_socket.typed_config.common_tls_context.validation_context.watched_directory",
        ),
        (
            "tls.vc.system_root_certs",
            |p| vc(p).system_root_certs = Some(Default::default()),
            "transport_socket.typed_config.common_tls_context.validation_context.system_root_certs",
        ),
        (
            "tls.vc.allow_expired_certificate",
            |p| vc(p).allow_expired_certificate = true,
            "transport_socket.typed_config.common_tls_context.validation_context.allow_expired_certificate",
        ),
        (
            "tls.vc.max_verify_depth",
            |p| vc(p).max_verify_depth = u32v(1),
            "transport_socket.typed_config.common_tls_context.validation_context.max_verify_depth",
        ),
    ];
    check(ResourceType::Cluster, cluster_base, cluster_build, rows);
}

// ---- listeners ----

struct ListenerParts {
    listener: listener_pb::Listener,
    hcm: hcm_pb::HttpConnectionManager,
}

fn listener_base() -> ListenerParts {
    let mut hcm = hcm_rds("rc");
    hcm.common_http_protocol_options = Some(Default::default());
    ListenerParts {
        listener: api_listener("l", &hcm_pb::HttpConnectionManager::default()),
        hcm,
    }
}

fn listener_build(mut p: ListenerParts) -> Vec<u8> {
    use prost::Message as _;
    p.listener.api_listener = Some(listener_pb::ApiListener {
        api_listener: Some(any(&p.hcm)),
    });
    p.listener.encode_to_vec()
}

fn hcm_options(p: &mut ListenerParts) -> &mut core_pb::HttpProtocolOptions {
    p.hcm.common_http_protocol_options.as_mut().unwrap()
}

#[test]
fn listener_unsupported_fields() {
    let rows: &[Row<ListenerParts>] = &[
        (
            "filter_chains",
            |p| p.listener.filter_chains = vec![Default::default()],
            "filter_chains",
        ),
        (
            "default_filter_chain",
            |p| p.listener.default_filter_chain = Some(Default::default()),
            "default_filter_chain",
        ),
        (
            "listener_filters",
            |p| p.listener.listener_filters = vec![Default::default()],
            "listener_filters",
        ),
        (
            "access_log",
            |p| p.listener.access_log = vec![Default::default()],
            "access_log",
        ),
        (
            "hcm.xff_num_trusted_hops",
            |p| p.hcm.xff_num_trusted_hops = 1,
            "NACK: resource \"l\": api_listener.api_listener.xff_num_trusted_hops: unsupported: trusting X-Forwarded-For hops",
        ),
        (
            "hcm.original_ip_detection_extensions",
            |p| p.hcm.original_ip_detection_extensions = vec![Default::default()],
            "NACK: resource \"l\": api_listener.api_listener.original_ip_detection_extensions: unsupported: original IP detection extensions",
        ),
        (
            "hcm.common_http_protocol_options.idle_timeout",
            |p| hcm_options(p).idle_timeout = dur(1, 0),
            "api_listener.api_listener.common_http_protocol_options.idle_timeout",
        ),
        (
            "hcm.common_http_protocol_options.max_connection_duration",
            |p| hcm_options(p).max_connection_duration = dur(1, 0),
            "api_listener.api_listener.common_http_protocol_options.max_connection_duration",
        ),
        (
            "hcm.common_http_protocol_options.max_headers_count",
            |p| hcm_options(p).max_headers_count = u32v(1),
            "api_listener.api_listener.common_http_protocol_options.max_headers_count",
        ),
        (
            "hcm.tracing",
            |p| p.hcm.tracing = Some(Default::default()),
            "api_listener.api_listener.tracing",
        ),
        (
            "hcm.access_log",
            |p| p.hcm.access_log = vec![Default::default()],
            "api_listener.api_listener.access_log",
        ),
        (
            "hcm.upgrade_configs",
            |p| p.hcm.upgrade_configs = vec![Default::default()],
            "api_listener.api_listener.upgrade_configs",
        ),
        (
            "hcm.stream_idle_timeout",
            |p| p.hcm.stream_idle_timeout = dur(1, 0),
            "api_listener.api_listener.stream_idle_timeout",
        ),
        (
            "hcm.request_timeout",
            |p| p.hcm.request_timeout = dur(1, 0),
            "api_listener.api_listener.request_timeout",
        ),
        (
            "hcm.local_reply_config",
            |p| p.hcm.local_reply_config = Some(Default::default()),
            "api_listener.api_listener.local_reply_config",
        ),
        (
            "hcm.request_id_extension",
            |p| p.hcm.request_id_extension = Some(Default::default()),
            "api_listener.api_listener.request_id_extension",
        ),
        (
            "hcm.http_filters[0].disabled",
            |p| p.hcm.http_filters[0].disabled = true,
            "api_listener.api_listener.http_filters[0].disabled",
        ),
        (
            "hcm.inline route_config.vhds",
            |p| {
                p.hcm.route_specifier = Some(
                    hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(
                        route_pb::RouteConfiguration {
                            name: "inline".into(),
                            vhds: Some(Default::default()),
                            ..Default::default()
                        },
                    ),
                );
            },
            "api_listener.api_listener.route_config.vhds",
        ),
    ];
    check(ResourceType::Listener, listener_base, listener_build, rows);
}

// ---- routes ----

fn route_base() -> route_pb::RouteConfiguration {
    let mut action = cluster_action("a");
    action.retry_policy = Some(Default::default());
    let mut weighted = route_to(
        "/w",
        route_pb::RouteAction {
            cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::WeightedClusters(
                route_pb::WeightedCluster {
                    clusters: vec![route_pb::weighted_cluster::ClusterWeight {
                        name: "b".into(),
                        weight: u32v(1),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        },
    );
    weighted.name = "weighted".into();
    let mut first = route_to("/", action);
    first.r#match.as_mut().unwrap().headers = vec![route_pb::HeaderMatcher {
        name: "h".into(),
        header_match_specifier: Some(
            route_pb::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
        ),
        ..Default::default()
    }];
    let mut vh = vhost(&["*"], vec![first, weighted]);
    vh.retry_policy = Some(Default::default());
    route_config("rc", vec![vh])
}

fn route_build(rc: route_pb::RouteConfiguration) -> Vec<u8> {
    use prost::Message as _;
    rc.encode_to_vec()
}

fn vh(rc: &mut route_pb::RouteConfiguration) -> &mut route_pb::VirtualHost {
    &mut rc.virtual_hosts[0]
}

fn rt(rc: &mut route_pb::RouteConfiguration) -> &mut route_pb::Route {
    &mut vh(rc).routes[0]
}

fn rm(rc: &mut route_pb::RouteConfiguration) -> &mut route_pb::RouteMatch {
    rt(rc).r#match.as_mut().unwrap()
}

fn ra(rc: &mut route_pb::RouteConfiguration) -> &mut route_pb::RouteAction {
    match &mut rt(rc).action {
        Some(route_pb::route::Action::Route(ra)) => ra,
        _ => unreachable!(),
    }
}

fn rp(rc: &mut route_pb::RouteConfiguration) -> &mut route_pb::RetryPolicy {
    ra(rc).retry_policy.as_mut().unwrap()
}

fn wc(rc: &mut route_pb::RouteConfiguration) -> &mut route_pb::WeightedCluster {
    match &mut vh(rc).routes[1].action {
        Some(route_pb::route::Action::Route(route_pb::RouteAction {
            cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::WeightedClusters(wc)),
            ..
        })) => wc,
        _ => unreachable!(),
    }
}

#[test]
#[allow(deprecated)]
fn route_unsupported_fields() {
    let rows: &[Row<route_pb::RouteConfiguration>] = &[
        ("vhds", |rc| rc.vhds = Some(Default::default()), "vhds"),
        (
            "internal_only_headers",
            |rc| rc.internal_only_headers = vec!["x".into()],
            "internal_only_headers",
        ),
        (
            "request_headers_to_add",
            |rc| rc.request_headers_to_add = vec![Default::default()],
            "request_headers_to_add",
        ),
        (
            "request_headers_to_remove",
            |rc| rc.request_headers_to_remove = vec!["x".into()],
            "request_headers_to_remove",
        ),
        (
            "response_headers_to_add",
            |rc| rc.response_headers_to_add = vec![Default::default()],
            "response_headers_to_add",
        ),
        (
            "response_headers_to_remove",
            |rc| rc.response_headers_to_remove = vec!["x".into()],
            "response_headers_to_remove",
        ),
        (
            "cluster_specifier_plugins",
            |rc| {
                rc.cluster_specifier_plugins = vec![route_pb::ClusterSpecifierPlugin {
                    extension: Some(core_pb::TypedExtensionConfig {
                        name: "p".into(),
                        typed_config: Some(Default::default()),
                    }),
                    is_optional: false,
                }];
            },
            "cluster_specifier_plugins",
        ),
        (
            "request_mirror_policies",
            |rc| rc.request_mirror_policies = vec![Default::default()],
            "request_mirror_policies",
        ),
        (
            "typed_per_filter_config",
            |rc| {
                rc.typed_per_filter_config
                    .insert("f".into(), Default::default());
            },
            "typed_per_filter_config",
        ),
        (
            "vhost_header",
            |rc| rc.vhost_header = "x".into(),
            "vhost_header",
        ),
        (
            "ignore_port_in_host_matching",
            |rc| rc.ignore_port_in_host_matching = true,
            "ignore_port_in_host_matching",
        ),
        (
            "route_specifiers",
            |rc| rc.route_specifiers = vec![Default::default()],
            "route_specifiers",
        ),
        (
            "vh.matcher",
            |rc| vh(rc).matcher = Some(Default::default()),
            "virtual_hosts[0].matcher",
        ),
        (
            "vh.require_tls",
            |rc| vh(rc).require_tls = 1,
            "virtual_hosts[0].require_tls",
        ),
        (
            "vh.virtual_clusters",
            |rc| vh(rc).virtual_clusters = vec![Default::default()],
            "virtual_hosts[0].virtual_clusters",
        ),
        (
            "vh.rate_limits",
            |rc| vh(rc).rate_limits = vec![Default::default()],
            "virtual_hosts[0].rate_limits",
        ),
        (
            "vh.request_headers_to_add",
            |rc| vh(rc).request_headers_to_add = vec![Default::default()],
            "virtual_hosts[0].request_headers_to_add",
        ),
        (
            "vh.request_headers_to_remove",
            |rc| vh(rc).request_headers_to_remove = vec!["x".into()],
            "virtual_hosts[0].request_headers_to_remove",
        ),
        (
            "vh.response_headers_to_add",
            |rc| vh(rc).response_headers_to_add = vec![Default::default()],
            "virtual_hosts[0].response_headers_to_add",
        ),
        (
            "vh.response_headers_to_remove",
            |rc| vh(rc).response_headers_to_remove = vec!["x".into()],
            "virtual_hosts[0].response_headers_to_remove",
        ),
        (
            "vh.cors",
            |rc| vh(rc).cors = Some(Default::default()),
            "virtual_hosts[0].cors",
        ),
        (
            "vh.typed_per_filter_config",
            |rc| {
                vh(rc)
                    .typed_per_filter_config
                    .insert("f".into(), Default::default());
            },
            "virtual_hosts[0].typed_per_filter_config[\"f\"] (override of type \"\" not implemented)",
        ),
        (
            "vh.retry_policy_typed_config",
            |rc| vh(rc).retry_policy_typed_config = Some(Default::default()),
            "virtual_hosts[0].retry_policy_typed_config",
        ),
        (
            "vh.hedge_policy",
            |rc| vh(rc).hedge_policy = Some(Default::default()),
            "virtual_hosts[0].hedge_policy",
        ),
        (
            "vh.request_mirror_policies",
            |rc| vh(rc).request_mirror_policies = vec![Default::default()],
            "virtual_hosts[0].request_mirror_policies",
        ),
        (
            "vh.retry_policy.per_try_idle_timeout",
            |rc| vh(rc).retry_policy.as_mut().unwrap().per_try_idle_timeout = dur(1, 0),
            "virtual_hosts[0].retry_policy.per_try_idle_timeout",
        ),
        (
            "route.typed_per_filter_config",
            |rc| {
                rt(rc)
                    .typed_per_filter_config
                    .insert("f".into(), Default::default());
            },
            "virtual_hosts[0].routes[0].typed_per_filter_config[\"f\"] (override of type \"\" not implemented)",
        ),
        (
            "route.request_headers_to_add",
            |rc| rt(rc).request_headers_to_add = vec![Default::default()],
            "virtual_hosts[0].routes[0].request_headers_to_add",
        ),
        (
            "route.request_headers_to_remove",
            |rc| rt(rc).request_headers_to_remove = vec!["x".into()],
            "virtual_hosts[0].routes[0].request_headers_to_remove",
        ),
        (
            "route.response_headers_to_add",
            |rc| rt(rc).response_headers_to_add = vec![Default::default()],
            "virtual_hosts[0].routes[0].response_headers_to_add",
        ),
        (
            "route.response_headers_to_remove",
            |rc| rt(rc).response_headers_to_remove = vec!["x".into()],
            "virtual_hosts[0].routes[0].response_headers_to_remove",
        ),
        (
            "route.decorator",
            |rc| rt(rc).decorator = Some(Default::default()),
            "virtual_hosts[0].routes[0].decorator",
        ),
        (
            "route.tracing",
            |rc| rt(rc).tracing = Some(Default::default()),
            "virtual_hosts[0].routes[0].tracing",
        ),
        (
            "route.route_specifiers",
            |rc| rt(rc).route_specifiers = vec![Default::default()],
            "virtual_hosts[0].routes[0].route_specifiers",
        ),
        (
            "match.cookies",
            |rc| rm(rc).cookies = vec![Default::default()],
            "virtual_hosts[0].routes[0].match.cookies",
        ),
        (
            "match.grpc",
            |rc| rm(rc).grpc = Some(Default::default()),
            "virtual_hosts[0].routes[0].match.grpc",
        ),
        (
            "match.tls_context",
            |rc| rm(rc).tls_context = Some(Default::default()),
            "virtual_hosts[0].routes[0].match.tls_context",
        ),
        (
            "match.dynamic_metadata",
            |rc| rm(rc).dynamic_metadata = vec![Default::default()],
            "virtual_hosts[0].routes[0].match.dynamic_metadata",
        ),
        (
            "match.filter_state",
            |rc| rm(rc).filter_state = vec![Default::default()],
            "virtual_hosts[0].routes[0].match.filter_state",
        ),
        (
            "match.headers[0].treat_missing_header_as_empty",
            |rc| rm(rc).headers[0].treat_missing_header_as_empty = true,
            "virtual_hosts[0].routes[0].match.headers[0].treat_missing_header_as_empty",
        ),
        (
            "match.connect_matcher",
            |rc| {
                rm(rc).path_specifier = Some(route_pb::route_match::PathSpecifier::ConnectMatcher(
                    Default::default(),
                ));
            },
            "NACK: resource \"rc\": virtual_hosts[0].routes[0].match.connect_matcher: unsupported: CONNECT matching",
        ),
        (
            "action.prefix_rewrite",
            |rc| ra(rc).prefix_rewrite = "/x".into(),
            "virtual_hosts[0].routes[0].route.prefix_rewrite",
        ),
        (
            "action.regex_rewrite",
            |rc| ra(rc).regex_rewrite = Some(Default::default()),
            "virtual_hosts[0].routes[0].route.regex_rewrite",
        ),
        (
            "action.path_rewrite_policy",
            |rc| ra(rc).path_rewrite_policy = Some(Default::default()),
            "virtual_hosts[0].routes[0].route.path_rewrite_policy",
        ),
        (
            "action.path_rewrite",
            |rc| ra(rc).path_rewrite = "/x".into(),
            "virtual_hosts[0].routes[0].route.path_rewrite",
        ),
        (
            "action.host_rewrite_specifier",
            |rc| {
                ra(rc).host_rewrite_specifier = Some(
                    route_pb::route_action::HostRewriteSpecifier::HostRewriteLiteral("x".into()),
                );
            },
            "virtual_hosts[0].routes[0].route.host_rewrite_specifier",
        ),
        (
            "action.metadata_match",
            |rc| ra(rc).metadata_match = Some(Default::default()),
            "virtual_hosts[0].routes[0].route.metadata_match",
        ),
        (
            "action.idle_timeout",
            |rc| ra(rc).idle_timeout = dur(1, 0),
            "virtual_hosts[0].routes[0].route.idle_timeout",
        ),
        (
            "action.retry_policy_typed_config",
            |rc| ra(rc).retry_policy_typed_config = Some(Default::default()),
            "virtual_hosts[0].routes[0].route.retry_policy_typed_config",
        ),
        (
            "action.request_mirror_policies",
            |rc| ra(rc).request_mirror_policies = vec![Default::default()],
            "virtual_hosts[0].routes[0].route.request_mirror_policies",
        ),
        (
            "action.rate_limits",
            |rc| ra(rc).rate_limits = vec![Default::default()],
            "virtual_hosts[0].routes[0].route.rate_limits",
        ),
        (
            "action.cors",
            |rc| ra(rc).cors = Some(Default::default()),
            "virtual_hosts[0].routes[0].route.cors",
        ),
        (
            "action.upgrade_configs",
            |rc| ra(rc).upgrade_configs = vec![Default::default()],
            "virtual_hosts[0].routes[0].route.upgrade_configs",
        ),
        (
            "action.internal_redirect_policy",
            |rc| ra(rc).internal_redirect_policy = Some(Default::default()),
            "virtual_hosts[0].routes[0].route.internal_redirect_policy",
        ),
        (
            "action.hedge_policy",
            |rc| ra(rc).hedge_policy = Some(Default::default()),
            "virtual_hosts[0].routes[0].route.hedge_policy",
        ),
        (
            "retry.per_try_idle_timeout",
            |rc| rp(rc).per_try_idle_timeout = dur(1, 0),
            "virtual_hosts[0].routes[0].route.retry_policy.per_try_idle_timeout",
        ),
        (
            "retry.retry_priority",
            |rc| rp(rc).retry_priority = Some(Default::default()),
            "virtual_hosts[0].routes[0].route.retry_policy.retry_priority",
        ),
        (
            "retry.retry_options_predicates",
            |rc| rp(rc).retry_options_predicates = vec![Default::default()],
            "virtual_hosts[0].routes[0].route.retry_policy.retry_options_predicates",
        ),
        (
            "retry.rate_limited_retry_back_off",
            |rc| rp(rc).rate_limited_retry_back_off = Some(Default::default()),
            "virtual_hosts[0].routes[0].route.retry_policy.rate_limited_retry_back_off",
        ),
        (
            "retry.retriable_headers",
            |rc| rp(rc).retriable_headers = vec![Default::default()],
            "virtual_hosts[0].routes[0].route.retry_policy.retriable_headers",
        ),
        (
            "retry.retriable_request_headers",
            |rc| rp(rc).retriable_request_headers = vec![Default::default()],
            "virtual_hosts[0].routes[0].route.retry_policy.retriable_request_headers",
        ),
        (
            "retry.retry_on unknown",
            |rc| rp(rc).retry_on = "5xx,bogus".into(),
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on (bogus)",
        ),
        (
            "weighted.typed_per_filter_config",
            |rc| {
                wc(rc).clusters[0]
                    .typed_per_filter_config
                    .insert("f".into(), Default::default());
            },
            "virtual_hosts[0].routes[1].route.weighted_clusters.clusters[0].typed_per_filter_config",
        ),
        (
            "weighted.request_headers_to_add",
            |rc| wc(rc).clusters[0].request_headers_to_add = vec![Default::default()],
            "virtual_hosts[0].routes[1].route.weighted_clusters.clusters[0].request_headers_to_add",
        ),
        (
            "weighted.response_headers_to_add",
            |rc| wc(rc).clusters[0].response_headers_to_add = vec![Default::default()],
            "virtual_hosts[0].routes[1].route.weighted_clusters.clusters[0].response_headers_to_add",
        ),
        (
            "weighted.host_rewrite_specifier",
            |rc| {
                wc(rc).clusters[0].host_rewrite_specifier = Some(
                route_pb::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral("x".into()),
            );
            },
            "virtual_hosts[0].routes[1].route.weighted_clusters.clusters[0].host_rewrite_specifier",
        ),
        (
            "weighted.runtime_key_prefix",
            |rc| wc(rc).runtime_key_prefix = "x".into(),
            "virtual_hosts[0].routes[1].route.weighted_clusters.runtime_key_prefix",
        ),
        (
            "weighted.random_value_specifier",
            |rc| {
                wc(rc).random_value_specifier =
                    Some(route_pb::weighted_cluster::RandomValueSpecifier::HeaderName("x".into()));
            },
            "virtual_hosts[0].routes[1].route.weighted_clusters.random_value_specifier",
        ),
    ];
    check(
        ResourceType::RouteConfiguration,
        route_base,
        route_build,
        rows,
    );
}

// ---- endpoints ----

fn cla_base() -> endpoint_pb::ClusterLoadAssignment {
    let mut c = cla(
        "e",
        vec![locality("z", 0, Some(1), vec![lb_endpoint("10.0.0.1", 80)])],
    );
    c.policy = Some(Default::default());
    c
}

fn cla_build(c: endpoint_pb::ClusterLoadAssignment) -> Vec<u8> {
    use prost::Message as _;
    c.encode_to_vec()
}

fn policy(
    c: &mut endpoint_pb::ClusterLoadAssignment,
) -> &mut endpoint_pb::cluster_load_assignment::Policy {
    c.policy.as_mut().unwrap()
}

#[test]
fn endpoint_unsupported_fields() {
    let rows: &[Row<endpoint_pb::ClusterLoadAssignment>] = &[
        (
            "named_endpoints",
            |c| {
                c.named_endpoints.insert("n".into(), Default::default());
            },
            "named_endpoints",
        ),
        (
            "policy.overprovisioning_factor",
            |c| policy(c).overprovisioning_factor = u32v(1),
            "policy.overprovisioning_factor",
        ),
        (
            "policy.endpoint_stale_after",
            |c| policy(c).endpoint_stale_after = dur(1, 0),
            "policy.endpoint_stale_after",
        ),
        (
            "policy.weighted_priority_health",
            |c| policy(c).weighted_priority_health = true,
            "policy.weighted_priority_health",
        ),
        (
            "endpoints[0].metadata",
            |c| c.endpoints[0].metadata = Some(Default::default()),
            "endpoints[].metadata",
        ),
        (
            "endpoints[0].proximity",
            |c| c.endpoints[0].proximity = u32v(1),
            "endpoints[].proximity",
        ),
        (
            "endpoints[0].lb_endpoints[0].metadata",
            |c| c.endpoints[0].lb_endpoints[0].metadata = Some(Default::default()),
            "endpoints[].lb_endpoints[].metadata",
        ),
    ];
    check(
        ResourceType::ClusterLoadAssignment,
        cla_base,
        cla_build,
        rows,
    );
}
