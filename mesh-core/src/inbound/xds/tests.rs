//! The xDS-driven server over real connections: a Listener decoded from the protos a
//! control plane sends, served by `serve` behind `XdsInboundLayer`, called with hyper.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter_pb;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::Any;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use meshwork_xds::resource::ServerListener;
use prost::{Message, Name};
use tokio::net::{TcpListener, TcpStream};
use tower::Layer as _;

use super::XdsInboundLayer;
use super::slot::ChainTls;
use super::state::ListenerState;
use crate::identity::CertificateProviders;
use crate::inbound::{HttpVersions, MeshAcceptor, serve};
use meshwork_xds::client::ServerConfig;

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// An RBAC filter that allows requests whose `x-allow` header is `value`.
fn allow_header(value: &str) -> hcm_pb::HttpFilter {
    hcm_pb::HttpFilter {
        name: "envoy.filters.http.rbac".into(),
        config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(pack(
            &allow_header_rbac(value),
        ))),
        ..Default::default()
    }
}

/// The RBAC config that allows requests whose `x-allow` header is `value`.
fn allow_header_rbac(value: &str) -> rbac_filter_pb::Rbac {
    let header = route_pb::HeaderMatcher {
        name: "x-allow".into(),
        header_match_specifier: Some(route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(
            matcher_pb::StringMatcher {
                match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(
                    value.into(),
                )),
                ignore_case: false,
            },
        )),
        ..Default::default()
    };
    let policy = rbac_pb::Policy {
        permissions: vec![rbac_pb::Permission {
            rule: Some(rbac_pb::permission::Rule::Header(header)),
        }],
        principals: vec![rbac_pb::Principal {
            identifier: Some(rbac_pb::principal::Identifier::Any(true)),
        }],
        ..Default::default()
    };
    rbac_filter_pb::Rbac {
        rules: Some(rbac_pb::Rbac {
            action: rbac_pb::rbac::Action::Allow as i32,
            policies: [("allow-header".to_owned(), policy)].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A route for paths under `prefix`: non-forwarding, or to a cluster.
fn route(prefix: &str, non_forwarding: bool) -> route_pb::Route {
    route_pb::Route {
        r#match: Some(route_pb::RouteMatch {
            path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(if non_forwarding {
            route_pb::route::Action::NonForwardingAction(route_pb::NonForwardingAction {})
        } else {
            route_pb::route::Action::Route(route_pb::RouteAction {
                cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::Cluster(
                    "elsewhere".into(),
                )),
                ..Default::default()
            })
        }),
        ..Default::default()
    }
}

/// A non-forwarding route for `/open` whose RBACPerRoute override (A41) allows `x-allow:
/// open` instead of what the filter allows.
fn open_route() -> route_pb::Route {
    let per_route = rbac_filter_pb::RbacPerRoute {
        rbac: Some(allow_header_rbac("open")),
    };
    route_pb::Route {
        typed_per_filter_config: [("envoy.filters.http.rbac".to_owned(), pack(&per_route))].into(),
        ..route("/open", true)
    }
}

/// A plaintext Listener at `addr` with one chain matching every connection: routes `/served`
/// non-forwarding and `/forwarded` to a cluster, RBAC allowing `x-allow: value`.
fn listener(addr: SocketAddr, value: &str) -> ServerConfig {
    let routes = route_pb::RouteConfiguration {
        name: "inbound".into(),
        virtual_hosts: vec![route_pb::VirtualHost {
            name: "inbound|all".into(),
            domains: vec!["*".into()],
            routes: vec![
                route("/served", true),
                route("/forwarded", false),
                open_route(),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let router = hcm_pb::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(pack(
            &Router::default(),
        ))),
        ..Default::default()
    };
    let hcm = hcm_pb::HttpConnectionManager {
        route_specifier: Some(hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![allow_header(value), router],
        ..Default::default()
    };
    let chain = listener_pb::FilterChain {
        name: "inbound-plaintext".into(),
        filters: vec![listener_pb::Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(listener_pb::filter::ConfigType::TypedConfig(pack(&hcm))),
        }],
        ..Default::default()
    };
    let proto = listener_pb::Listener {
        name: format!("inbound/{addr}"),
        address: Some(core_pb::Address {
            address: Some(core_pb::address::Address::SocketAddress(
                core_pb::SocketAddress {
                    address: addr.ip().to_string(),
                    port_specifier: Some(core_pb::socket_address::PortSpecifier::PortValue(
                        u32::from(addr.port()),
                    )),
                    ..Default::default()
                },
            )),
        }),
        filter_chains: vec![chain],
        ..Default::default()
    };
    ServerConfig {
        listener: Arc::new(ServerListener::decode(&proto.encode_to_vec()).unwrap()),
        routes: BTreeMap::new(),
    }
}

struct Fixture {
    addr: SocketAddr,
    state: Arc<ListenerState>,
    providers: CertificateProviders,
}

impl Fixture {
    /// A server on 127.0.0.1:0 whose application answers 200, not serving yet.
    async fn start() -> Self {
        Self::start_with(crate::inbound::ServerLimits::default(), None).await
    }

    /// A server within `limits`; with `hold` (entered, release), a request to
    /// `/served/held` says it entered and waits for the release.
    async fn start_with(
        limits: crate::inbound::ServerLimits,
        hold: Option<(Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>)>,
    ) -> Self {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let state = Arc::new(ListenerState::default());
        let app = XdsInboundLayer::new().layer(tower::service_fn(
            move |req: http::Request<hyper::body::Incoming>| {
                let hold = hold.clone();
                async move {
                    if let Some((entered, release)) = hold
                        && req.uri().path() == "/served/held"
                    {
                        entered.notify_one();
                        release.notified().await;
                    }
                    Ok::<_, Infallible>(http::Response::new(Empty::<bytes::Bytes>::new()))
                }
            },
        ));
        let acceptor = MeshAcceptor::xds(tcp, state.clone()).limits(limits);
        tokio::spawn(serve(
            acceptor,
            HttpVersions::Any,
            app,
            std::future::pending(),
        ));
        let bootstrap = meshwork_xds::bootstrap::Bootstrap::from_json_str(
            r#"{"xds_servers": [{"server_uri": "localhost:1", "channel_creds": [{"type": "insecure"}]}], "node": {"id": "n"}}"#,
        )
        .unwrap();
        Self {
            addr,
            state,
            providers: CertificateProviders::from_bootstrap(&bootstrap),
        }
    }

    fn serve(&self, config: &ServerConfig) {
        let tls = ChainTls {
            providers: &self.providers,
            alpn: &[],
        };
        self.state.serve(config, &tls).unwrap();
    }
}

/// An HTTP/1.1 connection to `addr`: its sender, and a handle that ends when the server
/// closes the connection.
async fn connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, closed)
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
    path: &str,
    allow: Option<&str>,
) -> u16 {
    let mut req = http::Request::get(path).header("host", "greeter");
    if let Some(value) = allow {
        req = req.header("x-allow", value);
    }
    sender.ready().await.unwrap();
    let rsp = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("answered within 10 s")
    .unwrap();
    let status = rsp.status().as_u16();
    let _ = rsp.into_body().collect().await;
    status
}

/// Whether the server closes a fresh TCP connection without a byte.
async fn closed_on_arrival(addr: SocketAddr) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn routes_and_rbac_of_the_matched_chain_decide_each_request() {
    let f = Fixture::start().await;
    assert!(
        closed_on_arrival(f.addr).await,
        "not serving before a Listener"
    );

    f.serve(&listener(f.addr, "yes"));
    let (mut conn, _closed) = connect(f.addr).await;
    assert_eq!(get(&mut conn, "/served/x", Some("yes")).await, 200);
    assert_eq!(get(&mut conn, "/served/x", Some("no")).await, 403);
    assert_eq!(get(&mut conn, "/served/x", None).await, 403);
    // A36: only non-forwarding routes are served; no route at all is the same.
    assert_eq!(get(&mut conn, "/forwarded", Some("yes")).await, 503);
    assert_eq!(get(&mut conn, "/nowhere", Some("yes")).await, 503);
    // The route's RBACPerRoute replaces the filter's policy there, and only there.
    assert_eq!(get(&mut conn, "/open/x", Some("open")).await, 200);
    assert_eq!(get(&mut conn, "/open/x", Some("yes")).await, 403);
    assert_eq!(get(&mut conn, "/served/x", Some("open")).await, 403);
}

#[tokio::test]
async fn an_rbac_change_applies_to_the_next_request_on_the_same_connection() {
    let f = Fixture::start().await;
    f.serve(&listener(f.addr, "yes"));
    let (mut conn, closed) = connect(f.addr).await;
    assert_eq!(get(&mut conn, "/served", Some("yes")).await, 200);

    // Same match, same TLS: the connection stays and sees the new policy.
    f.serve(&listener(f.addr, "other"));
    assert_eq!(get(&mut conn, "/served", Some("yes")).await, 403);
    assert_eq!(get(&mut conn, "/served", Some("other")).await, 200);
    assert!(!closed.is_finished());
}

#[tokio::test]
async fn a_replaced_chain_drains_its_connections_and_new_ones_take_the_new_chain() {
    let f = Fixture::start().await;
    f.serve(&listener(f.addr, "yes"));
    let (mut conn, closed) = connect(f.addr).await;
    assert_eq!(get(&mut conn, "/served", Some("yes")).await, 200);

    // A different match (that still takes loopback callers): the old chain's connections
    // drain (HTTP/1.1: closed once idle).
    let mut changed = listener(f.addr, "new");
    Arc::make_mut(&mut changed.listener).filter_chains[0]
        .filter_match
        .source_type = meshwork_xds::resource::SourceType::SameIpOrLoopback;
    f.serve(&changed);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the replaced chain's connection was closed")
        .unwrap();
    let (mut fresh, _closed) = connect(f.addr).await;
    assert_eq!(get(&mut fresh, "/served", Some("new")).await, 200);
}

#[tokio::test]
async fn not_serving_closes_new_connections_and_drains_the_old() {
    let f = Fixture::start().await;
    f.serve(&listener(f.addr, "yes"));
    let (mut conn, closed) = connect(f.addr).await;
    assert_eq!(get(&mut conn, "/served", Some("yes")).await, 200);
    f.state.stop();
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("connections drain when the server stops serving")
        .unwrap();
    assert!(closed_on_arrival(f.addr).await);
}

/// Routes and RBAC judge the path the service will execute: escapes, `//` and `..` cannot
/// reach a route's RBAC override from another route's path.
#[tokio::test]
async fn routes_and_rbac_judge_the_normalised_path() {
    let f = Fixture::start().await;
    f.serve(&listener(f.addr, "yes"));
    let (mut conn, _closed) = connect(f.addr).await;
    // Spelled as `/open/...`, executed as `/served/x`: judged by `/served`'s RBAC.
    assert_eq!(get(&mut conn, "/open/../served/x", Some("open")).await, 403);
    assert_eq!(get(&mut conn, "/open/../served/x", Some("yes")).await, 200);
    assert_eq!(get(&mut conn, "/%6Fpen/x", Some("open")).await, 200);
    assert_eq!(get(&mut conn, "//open/x", Some("open")).await, 200);
    // No normal form: refused before any rule.
    assert_eq!(get(&mut conn, "/open%2Fx", Some("open")).await, 400);
}

#[tokio::test]
async fn a_request_with_two_host_headers_is_refused() {
    let f = Fixture::start().await;
    f.serve(&listener(f.addr, "yes"));
    let (mut sender, _closed) = connect(f.addr).await;
    let req = http::Request::get("/served")
        .header("host", "a.example")
        .header("host", "b.example")
        .header("x-allow", "yes")
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 400);
}

/// A kept chain whose connections a new, more specific chain would now take: they drain
/// (grpc-go drains on every Listener change; meshwork keeps only what would be chosen again).
#[tokio::test]
async fn connections_of_a_kept_chain_that_a_new_chain_shadows_drain() {
    let f = Fixture::start().await;
    // Only a default chain.
    let mut only_default = listener(f.addr, "yes");
    {
        let l = Arc::make_mut(&mut only_default.listener);
        l.default_filter_chain = Some(l.filter_chains.remove(0));
    }
    f.serve(&only_default);
    let (mut conn, closed) = connect(f.addr).await;
    assert_eq!(get(&mut conn, "/served", Some("yes")).await, 200);

    // The same default chain, and a chain matching every connection before it.
    let mut both = listener(f.addr, "new");
    {
        let l = Arc::make_mut(&mut both.listener);
        l.default_filter_chain = only_default.listener.default_filter_chain.clone();
    }
    f.serve(&both);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the shadowed chain's connection was closed")
        .unwrap();
    let (mut fresh, _closed) = connect(f.addr).await;
    assert_eq!(get(&mut fresh, "/served", Some("new")).await, 200);
}

/// The layer fails closed: a request that did not come through an xDS server's connection
/// loop (no filter chain) is refused.
#[tokio::test]
async fn the_layer_refuses_requests_without_a_filter_chain() {
    use tower::{Service as _, ServiceExt as _};
    let mut svc =
        XdsInboundLayer::new().layer(tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(()))
        }));
    let addr = SocketAddr::from(([127, 0, 0, 1], 1));
    for info in [
        None,
        Some(crate::inbound::ConnectionInfo::new(addr, addr, None)),
    ] {
        let mut req = http::Request::get("/served").body(()).unwrap();
        if let Some(info) = info {
            req.extensions_mut().insert(info);
        }
        let rsp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(rsp.status(), 503);
    }
}

/// A replaced chain's requests get the config-change drain grace (A36's drain grace time),
/// not the shorter one of idle or aged connections.
#[tokio::test]
async fn a_replaced_chain_s_requests_get_the_config_change_drain_grace() {
    let limits = crate::inbound::ServerLimits::default()
        .drain_grace(Duration::from_secs(3600))
        .config_change_drain_grace(Duration::from_millis(100));
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let f = Fixture::start_with(limits, Some((entered.clone(), release))).await;
    f.serve(&listener(f.addr, "yes"));
    let (mut conn, closed) = connect(f.addr).await;
    conn.ready().await.unwrap();
    let held = conn.send_request(
        http::Request::get("/served/held")
            .header("host", "greeter")
            .header("x-allow", "yes")
            .body(Empty::new())
            .unwrap(),
    );
    let held = tokio::spawn(held);
    // Replace the chain while the request is held: after 100 ms (not an hour) the
    // connection is dropped and the request fails.
    let mut changed = listener(f.addr, "yes");
    Arc::make_mut(&mut changed.listener).filter_chains[0]
        .filter_match
        .source_type = meshwork_xds::resource::SourceType::SameIpOrLoopback;
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the request reached the service");
    f.serve(&changed);
    let outcome = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held request ended within 10 s")
        .unwrap();
    assert!(
        outcome.is_err(),
        "the held request outlived the grace: {outcome:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the connection was dropped")
        .unwrap();
}
