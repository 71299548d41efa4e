//! `XdsClient::watch_server` over a real ADS stream to the in-process test server: the
//! server Listener named after the listening address, and the RDS route configurations its
//! filter chains use (gRFC A36).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use meshwork_test_support::within;
use meshwork_xds::bootstrap::{Bootstrap, BootstrapError, XdsServer};
use meshwork_xds::client::{RouteUnavailable, ServerConfig, ServerState, ServerWatch, XdsClient};
use meshwork_xds::protocol::{ResourceFailure, ResourceStatus};
use meshwork_xds::resource::RouteSource;
use meshwork_xds::server::{RecordedRequest, XdsTestServer, build, type_url};
use meshwork_xds::transport::Backoff;

const TEMPLATE: &str = "grpc/server?xds.resource.listening_address=%s";
const ADDR: &str = "127.0.0.1:7070";
const NAME: &str = "grpc/server?xds.resource.listening_address=127.0.0.1:7070";

fn addr() -> SocketAddr {
    ADDR.parse().unwrap()
}

/// A client of `server` whose does-not-exist timer (gRFC A27) waits `does_not_exist`.
fn client_with(server: &XdsTestServer, does_not_exist: Duration) -> XdsClient {
    let bootstrap = Bootstrap::builder()
        .node_id("meshwork-server-watch-test")
        .server(XdsServer::new(server.uri()).unwrap())
        .server_listener_resource_name_template(TEMPLATE)
        .build()
        .unwrap();
    XdsClient::builder(&bootstrap)
        .unwrap()
        .backoff(Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .does_not_exist_timeout(does_not_exist)
        .start()
}

/// A client whose does-not-exist timer never fires within a test.
fn client(server: &XdsTestServer) -> XdsClient {
    client_with(server, Duration::from_secs(3600))
}

/// One filter chain holding the connection manager of `api` (a client listener built by
/// `build`), so the route source and filters are the ones `build` knows how to make.
fn chain(api: listener_pb::Listener, source_type: i32) -> listener_pb::FilterChain {
    let hcm = api.api_listener.and_then(|a| a.api_listener);
    listener_pb::FilterChain {
        filter_chain_match: Some(listener_pb::FilterChainMatch {
            source_type,
            ..Default::default()
        }),
        filters: vec![listener_pb::Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: hcm.map(listener_pb::filter::ConfigType::TypedConfig),
        }],
        ..Default::default()
    }
}

fn rds_chain(route_config: &str) -> listener_pb::FilterChain {
    chain(build::api_listener("unused", route_config), 0)
}

/// A server Listener for [`ADDR`] with `chains` and, if given, a default chain.
fn server_listener(
    chains: Vec<listener_pb::FilterChain>,
    default: Option<listener_pb::FilterChain>,
) -> listener_pb::Listener {
    listener_pb::Listener {
        name: NAME.into(),
        address: Some(build::socket_address(addr())),
        filter_chains: chains,
        default_filter_chain: default,
        ..Default::default()
    }
}

/// A route configuration whose one virtual host serves `domain`.
fn routes(name: &str, domain: &str) -> RouteConfiguration {
    build::route_config(
        name,
        vec![build::virtual_host(
            "vh",
            [domain],
            vec![build::route_to("/", "c")],
        )],
    )
}

/// The next state other than `Pending`.
async fn settled(watch: &mut ServerWatch) -> ServerState {
    loop {
        match within(10, watch.changed()).await.expect("client running") {
            ServerState::Pending => continue,
            state => return state,
        }
    }
}

async fn ready(watch: &mut ServerWatch) -> ServerConfig {
    match settled(watch).await {
        ServerState::Ready(config) => config,
        other => panic!("expected Ready, got {other:?}"),
    }
}

/// The domain of the one virtual host of the RDS configuration `name` in `config`.
fn domain(config: &ServerConfig, name: &str) -> String {
    let rc = config.routes[name]
        .as_ref()
        .expect("route config available");
    rc.virtual_hosts[0].domains[0].clone()
}

/// Waits until the latest RDS request names exactly `names` (the subscription the client
/// holds now), and checks the server's view of the stream agrees.
async fn wait_for_rds_names(server: &XdsTestServer, names: &[&str]) {
    let want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let latest_is = |reqs: &[RecordedRequest]| {
        match reqs.iter().rev().find(|r| r.type_url() == type_url::ROUTE) {
            Some(r) => {
                let mut got = r.request.resource_names.clone();
                got.sort();
                got == want
            }
            // Never subscribed to any.
            None => want.is_empty(),
        }
    };
    let reqs = within(10, server.wait_for(latest_is)).await;
    let Some(stream) = reqs.last().map(|r| r.stream_id) else {
        return;
    };
    let subscribed = server
        .subscription(stream, type_url::ROUTE)
        .map(|s| s.names.into_iter().collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(subscribed, want);
}

/// A server serving a Listener whose one chain uses RDS `r1` (one virtual host, `first`),
/// and a client watching it until it is ready.
async fn serving_r1() -> (XdsTestServer, XdsClient, ServerWatch, ServerConfig) {
    let server = XdsTestServer::start().await.unwrap();
    server.update(|s| {
        s.insert_listener(server_listener(vec![rds_chain("r1")], None));
        s.insert_route(routes("r1", "first"));
    });
    let client = client(&server);
    let mut watch = client.watch_server(addr()).unwrap();
    let config = ready(&mut watch).await;
    (server, client, watch, config)
}

#[tokio::test]
async fn pending_until_rds_arrives_then_every_rds_update_is_a_new_ready() {
    let server = XdsTestServer::start().await.unwrap();
    server.update(|s| {
        s.insert_listener(server_listener(vec![rds_chain("r1")], None));
    });
    let client = client(&server);
    let mut watch = client.watch_server(addr()).unwrap();
    assert_eq!(watch.resource_name(), NAME);

    // The Listener came (the watch subscribed to its RDS name), the route has not.
    wait_for_rds_names(&server, &["r1"]).await;
    within(10, server.wait_for_ack(type_url::LISTENER, "1")).await;
    assert!(matches!(watch.current(), ServerState::Pending));

    server.update(|s| {
        s.insert_route(routes("r1", "first"));
    });
    let first = ready(&mut watch).await;
    assert_eq!(first.listener.name, NAME);
    assert_eq!(first.listener.address, addr());
    assert_eq!(domain(&first, "r1"), "first");
    let chain_route = &first.listener.filter_chains[0].route;
    assert_eq!(
        first.route_config(chain_route).unwrap().name,
        "r1",
        "a chain finds its routes"
    );

    // The server Listener is in the config dump (and CSDS) like any resource.
    let dump = client.dump().await;
    let lds = dump
        .iter()
        .find(|r| r.name == NAME)
        .expect("the Listener is dumped");
    assert_eq!(lds.status, ResourceStatus::Acked, "{lds:?}");

    server.update(|s| {
        s.insert_route(routes("r1", "second"));
    });
    let second = ready(&mut watch).await;
    assert_eq!(domain(&second, "r1"), "second");
    assert!(
        Arc::ptr_eq(&first.listener, &second.listener),
        "an RDS update keeps the Listener"
    );
}

#[tokio::test]
async fn a_changed_rds_name_replaces_the_old_subscription() {
    let server = XdsTestServer::start().await.unwrap();
    server.update(|s| {
        s.insert_listener(server_listener(
            vec![rds_chain("r1")],
            Some(rds_chain("shared")),
        ));
        s.insert_route(routes("r1", "one"));
        s.insert_route(routes("r2", "two"));
        s.insert_route(routes("shared", "default"));
    });
    let client = client(&server);
    let mut watch = client.watch_server(addr()).unwrap();
    let config = ready(&mut watch).await;
    assert_eq!(
        config.routes.keys().collect::<Vec<_>>(),
        ["r1", "shared"],
        "the default chain's RDS name counts"
    );
    assert_eq!(domain(&config, "shared"), "default");

    server.update(|s| {
        s.insert_listener(server_listener(
            vec![rds_chain("r2")],
            Some(rds_chain("shared")),
        ));
    });
    let config = ready(&mut watch).await;
    assert_eq!(config.routes.keys().collect::<Vec<_>>(), ["r2", "shared"]);
    assert_eq!(domain(&config, "r2"), "two");
    wait_for_rds_names(&server, &["r2", "shared"]).await;
}

#[tokio::test]
async fn a_nacked_listener_keeps_the_last_good_one_whose_routes_still_update() {
    let (server, _client, mut watch, good) = serving_r1().await;

    // A chain without its connection manager: NACKed.
    let mut broken = rds_chain("r2");
    broken.filters.clear();
    server.update(|s| {
        s.insert_listener(server_listener(vec![broken], None));
    });
    within(10, server.wait_for_nack(type_url::LISTENER)).await;
    let (last_good, error) = match settled(&mut watch).await {
        ServerState::Invalid { last_good, error } => (last_good.expect("last good"), error),
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert!(matches!(error, ResourceFailure::Validation(_)), "{error:?}");
    assert!(error.to_string().contains("filter_chains[0]"), "{error}");
    assert!(Arc::ptr_eq(&last_good.listener, &good.listener));
    assert_eq!(domain(&last_good, "r1"), "first");
    // The rejected Listener's RDS name is never subscribed to.
    wait_for_rds_names(&server, &["r1"]).await;

    server.update(|s| {
        s.insert_route(routes("r1", "second"));
    });
    match settled(&mut watch).await {
        ServerState::Invalid { last_good, .. } => {
            let last_good = last_good.expect("last good");
            assert_eq!(domain(&last_good, "r1"), "second");
            assert_eq!(
                watch.current().config().map(|c| domain(c, "r1")),
                Some("second".to_owned())
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn deletion_is_does_not_exist_and_releases_the_routes() {
    let (server, _client, mut watch, _) = serving_r1().await;

    server.update(|s| {
        s.remove(type_url::LISTENER, NAME);
    });
    assert!(matches!(
        settled(&mut watch).await,
        ServerState::DoesNotExist
    ));
    wait_for_rds_names(&server, &[]).await;
}

#[tokio::test]
async fn inline_routes_need_no_rds() {
    let server = XdsTestServer::start().await.unwrap();
    let inline = build::api_listener_inline("unused", routes("inline", "here"));
    server.update(|s| {
        s.insert_listener(server_listener(vec![chain(inline, 0)], None));
    });
    let client = client(&server);
    let mut watch = client.watch_server(addr()).unwrap();
    let config = ready(&mut watch).await;
    assert!(config.routes.is_empty(), "{:?}", config.routes);
    let route = &config.listener.filter_chains[0].route;
    assert!(matches!(route, RouteSource::Inline(_)));
    assert_eq!(config.route_config(route).unwrap().name, "inline");
    let asked_for_routes = server
        .requests()
        .iter()
        .any(|r| r.type_url() == type_url::ROUTE && !r.request.resource_names.is_empty());
    assert!(!asked_for_routes, "no RDS subscription");
}

#[tokio::test]
async fn a_missing_route_configuration_fails_only_its_chain() {
    let server = XdsTestServer::start().await.unwrap();
    server.update(|s| {
        s.insert_listener(server_listener(
            vec![rds_chain("r1")],
            Some(rds_chain("missing")),
        ));
        s.insert_route(routes("r1", "first"));
    });
    let client = client_with(&server, Duration::from_millis(200));
    let mut watch = client.watch_server(addr()).unwrap();
    // The test server answers for the names it has; "missing" waits for the client's
    // does-not-exist timer.
    let config = ready(&mut watch).await;
    assert_eq!(domain(&config, "r1"), "first");
    assert!(matches!(
        &config.routes["missing"],
        Err(RouteUnavailable::DoesNotExist { name }) if name == "missing"
    ));
}

#[tokio::test]
async fn a_client_listener_under_the_server_name_is_invalid() {
    let server = XdsTestServer::start().await.unwrap();
    server.update(|s| {
        s.insert_listener(build::api_listener(NAME, "r1"));
    });
    let client = client(&server);
    let mut watch = client.watch_server(addr()).unwrap();
    match settled(&mut watch).await {
        ServerState::Invalid { last_good, error } => {
            assert!(last_good.is_none());
            assert!(error.to_string().contains("api_listener"), "{error}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    wait_for_rds_names(&server, &[]).await;
}

#[tokio::test]
async fn dropping_the_watch_unsubscribes() {
    let (server, _client, watch, _) = serving_r1().await;
    drop(watch);
    wait_for_rds_names(&server, &[]).await;
    let lds_released = |reqs: &[RecordedRequest]| {
        reqs.iter()
            .rev()
            .find(|r| r.type_url() == type_url::LISTENER)
            .is_some_and(|r| r.request.resource_names.is_empty())
    };
    within(10, server.wait_for(lds_released)).await;
}

#[tokio::test]
async fn no_template_is_a_bootstrap_error() {
    let server = XdsTestServer::start().await.unwrap();
    let client = meshwork_test_support::xds::builder(
        "meshwork-server-watch-test",
        &[server.uri()],
        Duration::from_millis(20),
        Duration::from_millis(100),
    )
    .start();
    assert!(matches!(
        client.watch_server(addr()),
        Err(BootstrapError::NoServerListenerTemplate)
    ));
}
