//! The xDS path of the policy model: Istio-shaped resources decoded and resolved by
//! `meshwork-xds`, turned into a `TargetConfig`, and routed by the `Router`.

// istiod still sends `exact_match` header matchers.
#![allow(deprecated)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, config_source,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster, header_matcher, retry_policy, route, route_action, route_match,
    weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router as RouterFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier,
    http_filter::ConfigType,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use meshwork_core::config::{RetryOn, TargetConfig};
use meshwork_core::route::{RouteError, RoutePolicy, Router};
use meshwork_xds::protocol::{AdsState, ProtocolConfig};
use meshwork_xds::resource::ResourceType;
use meshwork_xds::watch::resolve;
use prost::{Message, Name};
use tower::{Service, ServiceExt, service_fn};

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn ads_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

const V1: &str = "outbound|7070|v1|echo.default.svc.cluster.local";
const V2: &str = "outbound|7070|v2|echo.default.svc.cluster.local";

/// What istiod sends for `echo:7070` with a VirtualService: a header route to v2, then a
/// 80/20 split, with the mesh-default retry policy.
fn route_config() -> RouteConfiguration {
    let istio_retry = envoy_types::pb::envoy::config::route::v3::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pack(&PreviousHostsPredicate::default()),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    };
    let action = |clusters| {
        Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(clusters),
            timeout: Some(PbDuration {
                seconds: 0,
                nanos: 0,
            }),
            retry_policy: Some(istio_retry.clone()),
            ..Default::default()
        }))
    };
    let weighted = |name: &str, w| weighted_cluster::ClusterWeight {
        name: name.into(),
        weight: Some(UInt32Value { value: w }),
        ..Default::default()
    };
    RouteConfiguration {
        name: "echo.default.svc.cluster.local:7070".into(),
        virtual_hosts: vec![VirtualHost {
            name: "echo.default.svc.cluster.local:7070".into(),
            domains: vec![
                "echo.default.svc.cluster.local".into(),
                "echo.default.svc.cluster.local:7070".into(),
                "echo".into(),
                "echo:7070".into(),
            ],
            routes: vec![
                Route {
                    name: "canary".into(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        headers: vec![HeaderMatcher {
                            name: "x-canary".into(),
                            header_match_specifier: Some(
                                header_matcher::HeaderMatchSpecifier::ExactMatch("1".into()),
                            ),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    action: action(route_action::ClusterSpecifier::Cluster(V2.into())),
                    ..Default::default()
                },
                Route {
                    name: "split".into(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix(
                            "/proto.EchoTestService/".into(),
                        )),
                        ..Default::default()
                    }),
                    action: action(route_action::ClusterSpecifier::WeightedClusters(
                        WeightedCluster {
                            clusters: vec![weighted(V1, 80), weighted(V2, 20)],
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener() -> Listener {
    let hcm = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config())),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(ConfigType::TypedConfig(pack(&RouterFilter::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: "echo:7070".into(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&hcm)),
        }),
        ..Default::default()
    }
}

fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

fn respond(
    ads: &mut AdsState,
    stream: meshwork_xds::protocol::StreamId,
    t: ResourceType,
    resources: Vec<Any>,
) {
    ads.on_response(
        stream,
        DiscoveryResponse {
            version_info: "1".into(),
            resources,
            type_url: t.type_url().into(),
            nonce: "n".into(),
            ..Default::default()
        },
        Instant::now(),
    );
    // ACK, as the client task would.
    while ads.poll_request(Instant::now()).is_some() {}
}

fn target_config() -> TargetConfig {
    let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
    let stream = ads.on_stream_open();
    ads.subscribe(ResourceType::Listener, "echo:7070");
    for c in [V1, V2] {
        ads.subscribe(ResourceType::Cluster, c);
        ads.subscribe(ResourceType::ClusterLoadAssignment, c);
    }
    while ads.poll_request(Instant::now()).is_some() {}
    respond(
        &mut ads,
        stream,
        ResourceType::Listener,
        vec![pack(&listener())],
    );
    respond(
        &mut ads,
        stream,
        ResourceType::Cluster,
        vec![pack(&eds_cluster(V1)), pack(&eds_cluster(V2))],
    );
    // v2 has endpoints; v1's assignment is absent from the response.
    respond(
        &mut ads,
        stream,
        ResourceType::ClusterLoadAssignment,
        vec![pack(&ClusterLoadAssignment {
            cluster_name: V2.into(),
            ..Default::default()
        })],
    );
    respond(
        &mut ads,
        stream,
        ResourceType::ClusterLoadAssignment,
        vec![pack(&ClusterLoadAssignment {
            cluster_name: V1.into(),
            ..Default::default()
        })],
    );
    let resolution = resolve(&ads, "echo:7070", "echo:7070");
    let cfg = resolution
        .state
        .expect("no target error")
        .expect("the config is complete");
    TargetConfig::from_xds(&cfg)
}

#[tokio::test]
async fn istio_routes_from_xds_drive_the_router() {
    let cfg = target_config();
    assert_eq!(cfg.cluster_names().collect::<Vec<_>>(), vec![V1, V2]);
    let (_tx, rx) = meshwork_core::config::channel(cfg);
    let cluster = |name: &'static str| {
        service_fn(move |req: http::Request<()>| async move {
            let policy = req.extensions().get::<RoutePolicy>().unwrap().clone();
            Ok::<_, Infallible>((name, policy))
        })
    };
    let clusters = HashMap::from([
        (V1.to_string(), cluster("v1")),
        (V2.to_string(), cluster("v2")),
    ]);
    let mut router = Router::with_seed(rx, clusters, 11);
    let call = |uri: &str, canary: bool| {
        let mut b = http::Request::post(uri).header("content-type", "application/grpc");
        if canary {
            b = b.header("x-canary", "1");
        }
        b.body(()).unwrap()
    };

    // The header route wins over the split, whatever the request's authority (the virtual
    // host was chosen for the target, as gRPC does).
    let (name, policy) = router
        .ready()
        .await
        .unwrap()
        .call(call("http://anything/proto.EchoTestService/Echo", true))
        .await
        .unwrap();
    assert_eq!(name, "v2");
    assert_eq!(policy.route().name, "canary");
    // Istio's zero timeout is "no timeout"; its retry policy arrives whole.
    assert_eq!(policy.timeout(), None);
    let retry = policy.retry_policy().unwrap();
    assert_eq!(retry.num_retries, 2);
    assert!(
        retry
            .retry_on
            .contains(RetryOn::UNAVAILABLE | RetryOn::CANCELLED)
    );
    assert!(retry.avoid_previous_hosts);

    // The 80/20 split.
    let mut v1 = 0;
    for _ in 0..10_000 {
        let (name, _) = router
            .ready()
            .await
            .unwrap()
            .call(call("http://echo:7070/proto.EchoTestService/Echo", false))
            .await
            .unwrap();
        v1 += usize::from(name == "v1");
    }
    assert!((7_800..=8_200).contains(&v1), "{v1}");

    // No route: UNIMPLEMENTED.
    let err = router
        .ready()
        .await
        .unwrap()
        .call(call("http://echo:7070/other.Service/Method", false))
        .await
        .unwrap_err();
    let err = err.downcast::<RouteError>().unwrap();
    assert_eq!(
        err.grpc_code(),
        meshwork_core::config::GrpcCode::Unimplemented
    );
}
