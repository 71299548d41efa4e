//! The control plane of the meshwork contestants: meshwork-xds's test server with every
//! data-path policy meshwork has switched on, as a mesh would send it. Each target has its
//! own EDS cluster, so `--churn` changes only the endpoints of the contestant it measures.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, OutlierDetection, cluster};
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, Route, route};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    SubjectAltNameMatcher, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use meshwork_xds::resource::UpstreamProtocol;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};

/// The `meshwork` contestant's target: the echo server over SPIFFE mTLS.
pub(crate) const DIRECT_TARGET: &str = "xds:///echo.mesh:50051";
/// The `meshwork-via-envoy` contestant's target: plaintext to its Envoy sidecar.
pub(crate) const SIDECAR_TARGET: &str = "xds:///echo-sidecar.mesh:15001";
/// The `meshwork-http-h1` contestant's host: the HTTP echo over SPIFFE mTLS, a cluster whose
/// `HttpProtocolOptions` ask for HTTP/1.1.
pub(crate) const HTTP_H1_HOST: &str = "echo-http-h1.mesh:8080";
/// The `meshwork-http-h2` contestant's host: the same server, a cluster asking for HTTP/2.
pub(crate) const HTTP_H2_HOST: &str = "echo-http-h2.mesh:8080";

/// The EDS cluster of each target.
pub(crate) const DIRECT_CLUSTER: &str = "echo";
pub(crate) const SIDECAR_CLUSTER: &str = "echo-sidecar";
pub(crate) const HTTP_H1_CLUSTER: &str = "echo-http-h1";
pub(crate) const HTTP_H2_CLUSTER: &str = "echo-http-h2";
/// The `envoy-sidecar` contestant's sidecar's EDS cluster, under `--churn` (the sidecar's
/// listener and cluster are static; only its endpoints come from this control plane).
pub(crate) const ENVOY_CLUSTER: &str = "echo-envoy";

/// Where the control plane sends each target.
pub(crate) struct Upstreams {
    /// The gRPC echo over mTLS.
    pub(crate) grpc: SocketAddr,
    /// The HTTP echo over mTLS.
    pub(crate) http: SocketAddr,
}

/// Istio's default retry policy (what istiod sends on every route).
fn with_retries(mut route: Route) -> Route {
    if let Some(route::Action::Route(action)) = &mut route.action {
        action.retry_policy = Some(RetryPolicy {
            retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                .into(),
            num_retries: Some(UInt32Value { value: 2 }),
            ..Default::default()
        });
    }
    route
}

/// A certificate provider instance: required by the proto; meshwork-grpc uses the channel's
/// identity for every cluster.
fn instance() -> CertificateProviderPluginInstance {
    CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: "default".into(),
    }
}

/// An EDS cluster with P2C (least request over two random choices, gRFC A48: P2C's xDS
/// name), circuit breakers, outlier detection, and, with `server_id`, SPIFFE mTLS that
/// requires that server ID.
fn cluster(name: &str, server_id: Option<&str>) -> Cluster {
    let mut c = build::eds_cluster(name);
    c.lb_policy = cluster::LbPolicy::LeastRequest as i32;
    c.lb_config = Some(cluster::LbConfig::LeastRequestLbConfig(
        cluster::LeastRequestLbConfig {
            choice_count: Some(UInt32Value { value: 2 }),
            ..Default::default()
        },
    ));
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_requests: Some(UInt32Value { value: 4096 }),
            max_pending_requests: Some(UInt32Value { value: 4096 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    c.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 5 }),
        interval: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    });
    if let Some(id) = server_id {
        let tls = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_provider_instance: Some(instance()),
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::ValidationContext(
                        CertificateValidationContext {
                            ca_certificate_provider_instance: Some(instance()),
                            match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                                san_type: subject_alt_name_matcher::SanType::Uri as i32,
                                matcher: Some(StringMatcher {
                                    match_pattern: Some(string_matcher::MatchPattern::Exact(
                                        id.into(),
                                    )),
                                    ignore_case: false,
                                }),
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(build::pack(&tls))),
        });
    }
    c
}

/// `snapshot` with `target` (an xDS target) routed to `cluster`, whose one endpoint is
/// `addr`.
fn with_target(snapshot: Snapshot, target: &str, cluster: Cluster, addr: SocketAddr) -> Snapshot {
    let target = target.trim_start_matches("xds:///");
    let name = cluster.name.clone();
    let routes = format!("{name}-routes");
    snapshot
        .listener(build::api_listener(target, &routes))
        .route(build::route_config(
            &routes,
            vec![build::virtual_host(
                &name,
                [target],
                vec![with_retries(build::route_to("", &name))],
            )],
        ))
        .cluster(cluster)
        .endpoints(build::endpoints(&name, &[addr]))
}

/// Starts the control plane: each target to its upstream, with one endpoint, and the
/// `envoy-sidecar` contestant's sidecar's endpoints ([`ENVOY_CLUSTER`]).
pub(crate) async fn control_plane(
    upstreams: &Upstreams,
    server_id: &str,
) -> Result<XdsTestServer, Box<dyn std::error::Error + Send + Sync>> {
    let server = XdsTestServer::start().await?;
    let id = Some(server_id);
    let mut snapshot = with_target(
        Snapshot::new(),
        DIRECT_TARGET,
        cluster(DIRECT_CLUSTER, id),
        upstreams.grpc,
    );
    // As a user chooses the HTTP version: the cluster's protocol options (Envoy's
    // `HttpProtocolOptions`, which meshwork-http reads).
    let http = |name, protocol| build::with_http_protocol(cluster(name, id), protocol);
    snapshot = with_target(
        snapshot,
        HTTP_H1_HOST,
        http(HTTP_H1_CLUSTER, UpstreamProtocol::Http1),
        upstreams.http,
    );
    snapshot = with_target(
        snapshot,
        HTTP_H2_HOST,
        http(HTTP_H2_CLUSTER, UpstreamProtocol::Http2),
        upstreams.http,
    );
    snapshot = snapshot.endpoints(build::endpoints(ENVOY_CLUSTER, &[upstreams.grpc]));
    server.set_snapshot(snapshot);
    Ok(server)
}

/// Adds the `meshwork-via-envoy` contestant's target: plaintext to its sidecar's listener
/// `addr` (known only once the sidecar, which may take its own endpoints from `server`,
/// has started).
pub(crate) fn add_via_sidecar(server: &XdsTestServer, addr: SocketAddr) {
    server.update(|s| {
        *s = with_target(
            std::mem::take(s),
            SIDECAR_TARGET,
            cluster(SIDECAR_CLUSTER, None),
            addr,
        );
    });
}
