//! Differential test against gRPC's reference xDS client (grpcio, C-core): for a corpus of
//! valid and invalid resources, grpcio's own view (read through its CSDS service) and our
//! client's dump must agree on which resources are ACKED and which are NACKED.
//!
//! Each corpus case is its own target (`case-N:80`) with its own listener, routes, clusters
//! and endpoints, all served by one of our test servers; grpcio resolves every target at
//! once in one process (`tests/peers/grpcio_csds_dump.py`) and so does our client.

use meshwork_test_support as support;
use meshwork_test_support::xds::bootstrap;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster;
use envoy_types::pb::envoy::config::core::v3::{SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{cluster_load_assignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, route, route_action, route_match,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use meshwork_xds::client::XdsClient;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use meshwork_xds::watch::TargetState;

fn target(case: usize) -> String {
    format!("case-{case}:80")
}

/// One case: a full chain for target `case`, then `spoil` changes one resource.
fn chain(snapshot: &mut Snapshot, case: usize, spoil: impl FnOnce(&mut Chain)) {
    let t = target(case);
    let (rc, cl) = (format!("routes-{case}"), format!("cluster-{case}"));
    let mut chain = Chain {
        listener: build::api_listener(&t, &rc),
        routes: build::route_config(
            &rc,
            vec![build::virtual_host(
                "vh",
                [t.as_str()],
                vec![build::route_to("", &cl)],
            )],
        ),
        cluster: build::eds_cluster(&cl),
        endpoints: build::endpoints(&cl, &["127.0.0.1:9".parse().unwrap()]),
    };
    spoil(&mut chain);
    snapshot.insert_listener(chain.listener);
    snapshot.insert_route(chain.routes);
    snapshot.insert_cluster(chain.cluster);
    snapshot.insert_endpoints(chain.endpoints);
}

struct Chain {
    listener: Listener,
    routes: RouteConfiguration,
    cluster: envoy_types::pb::envoy::config::cluster::v3::Cluster,
    endpoints: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
}

/// Where we differ from grpcio on purpose, by case name, and why. For these cases the test
/// asserts the difference itself (grpcio NACKs the cluster, we ACK it), so a change on
/// either side is noticed.
const DELIBERATE: &[(&str, &str)] = &[(
    "least request",
    "grpcio (C-core) NACKs lb_policy LEAST_REQUEST; grpc-go and grpc-java accept it, Istio \
     sends it for DestinationRule LEAST_REQUEST, and meshwork implements it (gRFC A48)",
)];

/// The case index a resource belongs to (`case-3:80`, `routes-3`, `cluster-3`).
fn case_of(name: &str) -> usize {
    name.trim_end_matches(":80")
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// How a case changes its otherwise valid chain.
type Spoil = Box<dyn FnOnce(&mut Chain)>;

/// The corpus: (what the case exercises, how to spoil the chain).
fn corpus() -> Vec<(&'static str, Spoil)> {
    vec![
        ("valid chain", Box::new(|_| {})),
        (
            "weighted clusters summing to zero",
            Box::new(|c| {
                c.routes.virtual_hosts[0].routes =
                    vec![build::route_weighted("", &[("cluster-1", 0)])];
            }),
        ),
        (
            "invalid safe_regex",
            Box::new(|c| {
                let m = c.routes.virtual_hosts[0].routes[0]
                    .r#match
                    .as_mut()
                    .unwrap();
                m.path_specifier = Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                    regex: "([a-z".into(),
                    ..Default::default()
                }));
            }),
        ),
        (
            "STATIC cluster",
            Box::new(|c| {
                c.cluster.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                ));
            }),
        ),
        (
            "ring hash with murmur",
            Box::new(|c| {
                c.cluster.lb_policy = cluster::LbPolicy::RingHash as i32;
                c.cluster.lb_config = Some(cluster::LbConfig::RingHashLbConfig(
                    cluster::RingHashLbConfig {
                        hash_function: cluster::ring_hash_lb_config::HashFunction::MurmurHash2
                            as i32,
                        ..Default::default()
                    },
                ));
            }),
        ),
        (
            "ring hash valid",
            Box::new(|c| {
                c.cluster.lb_policy = cluster::LbPolicy::RingHash as i32;
            }),
        ),
        (
            "least request",
            Box::new(|c| {
                c.cluster.lb_policy = cluster::LbPolicy::LeastRequest as i32;
            }),
        ),
        (
            "listener without the router filter",
            Box::new(|c| {
                let mut hcm: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
                prost::Message::decode(&*c.listener.api_listener.as_ref().unwrap().api_listener.as_ref().unwrap().value).unwrap();
                hcm.http_filters.clear();
                c.listener.api_listener.as_mut().unwrap().api_listener = Some(build::pack(&hcm));
            }),
        ),
        (
            "endpoint with a hostname",
            Box::new(|c| {
                if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
                    &mut c.endpoints.endpoints[0].lb_endpoints[0].host_identifier
                {
                    e.address = Some(envoy_types::pb::envoy::config::core::v3::Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "backend.example".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(80)),
                            ..Default::default()
                        })),
                    });
                }
            }),
        ),
        (
            "locality without a weight",
            Box::new(|c| {
                c.endpoints.endpoints[0].load_balancing_weight = None;
            }),
        ),
        (
            "duplicate endpoint addresses",
            Box::new(|c| {
                let e = c.endpoints.endpoints[0].lb_endpoints[0].clone();
                c.endpoints.endpoints[0].lb_endpoints.push(e);
            }),
        ),
        (
            "priority gap",
            Box::new(|c| {
                c.endpoints.endpoints[0].priority = 1;
            }),
        ),
        (
            "EDS cluster without eds_config",
            Box::new(|c| {
                c.cluster.eds_cluster_config.as_mut().unwrap().eds_config = None;
            }),
        ),
        (
            "lrs_server other than self",
            Box::new(|c| {
                c.cluster.lrs_server = Some(build::ads());
            }),
        ),
        (
            "drop overload without a category",
            Box::new(|c| {
                c.endpoints.policy = Some(cluster_load_assignment::Policy {
                    drop_overloads: vec![cluster_load_assignment::policy::DropOverload {
                        category: String::new(),
                        drop_percentage: Some(FractionalPercent {
                            numerator: 1,
                            denominator: 0,
                        }),
                    }],
                    ..Default::default()
                });
            }),
        ),
        (
            "undeclared cluster specifier plugin",
            Box::new(|c| {
                let action = match &mut c.routes.virtual_hosts[0].routes[0].action {
                    Some(route::Action::Route(action)) => action,
                    _ => unreachable!("build::route_to makes a route action"),
                };
                action.cluster_specifier = Some(
                    route_action::ClusterSpecifier::ClusterSpecifierPlugin("rls".into()),
                );
            }),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn grpcio_and_meshwork_agree_on_acked_and_nacked() {
    let venv = support::peers::venv();
    let server = XdsTestServer::start().await.unwrap();
    let mut snapshot = Snapshot::new();
    let cases = corpus();
    let names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    for (i, (_, spoil)) in cases.into_iter().enumerate() {
        chain(&mut snapshot, i, spoil);
    }
    server.set_snapshot(snapshot);
    let targets: Vec<String> = (0..names.len()).map(target).collect();

    // grpcio's view.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let bootstrap_path = dir.join(format!("grpcio-diff-bootstrap-{}.json", std::process::id()));
    std::fs::write(
        &bootstrap_path,
        serde_json::json!({
            "xds_servers": [{"server_uri": server.addr().to_string(), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
            "node": {"id": "grpcio-differential", "locality": {}},
        })
        .to_string(),
    )
    .unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/grpcio_csds_dump.py"
    );
    let grpcio = tokio::process::Command::new(venv.join("bin/python"))
        .arg(script)
        .args(["--targets", &targets.join(","), "--wait", "30"])
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap_path)
        .kill_on_drop(true)
        .output();

    // Ours, at the same time.
    let bootstrap = bootstrap("meshwork-differential", &[server.uri()]);
    let client = XdsClient::start(&bootstrap).unwrap();
    let mut watches = Vec::new();
    for t in &targets {
        watches.push(client.watch_target(t, t).await);
    }
    for (w, name) in watches.iter_mut().zip(&names) {
        let settled = support::within(20, async {
            loop {
                let state = w.current();
                if !matches!(state, TargetState::Pending) {
                    return state;
                }
                w.changed().await;
            }
        })
        .await;
        eprintln!(
            "meshwork: {name}: {}",
            match settled {
                TargetState::Ready(_) => "ready".to_string(),
                TargetState::Error(e) => e.to_string(),
                _ => "?".into(),
            }
        );
    }

    let out = grpcio.await.expect("run grpcio_csds_dump.py");
    assert!(
        out.status.success(),
        "grpcio script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let view = |rows: &mut dyn Iterator<Item = (String, String, String)>| -> BTreeMap<(String, String), String> {
        rows.filter(|(_, _, s)| s == "ACKED" || s == "NACKED")
            .map(|(t, n, s)| ((t, n), s))
            .collect()
    };
    let theirs = view(&mut theirs.iter().map(|r| {
        (
            r["type"].as_str().unwrap().into(),
            r["name"].as_str().unwrap().into(),
            r["status"].as_str().unwrap().into(),
        )
    }));
    let ours = view(
        &mut client
            .dump()
            .await
            .into_iter()
            .map(|r| (r.type_url.into(), r.name, r.status.to_string())),
    );

    let short = |t: &str| t.rsplit('.').next().unwrap().to_string();
    let deliberate = |key: &(String, String)| {
        DELIBERATE
            .iter()
            .any(|(case, _)| names[case_of(&key.1)] == *case)
    };
    let mut report = String::new();
    let keys: std::collections::BTreeSet<_> = theirs.keys().chain(ours.keys()).collect();
    let mut disagreements = 0;
    for key in keys {
        let (g, m) = (theirs.get(key), ours.get(key));
        let mark = if deliberate(key) {
            "~~"
        } else if g == m {
            "  "
        } else {
            disagreements += 1;
            "!!"
        };
        report += &format!(
            "{mark} {:<22} {:<14} grpcio={:<7} meshwork={}\n",
            short(&key.0),
            key.1,
            g.map_or("-", |s| s),
            m.map_or("-", |s| s)
        );
    }
    eprintln!("{report}");
    assert!(
        theirs.values().any(|s| s == "NACKED"),
        "the corpus must make grpcio NACK something"
    );
    assert!(theirs.values().any(|s| s == "ACKED"));
    assert_eq!(disagreements, 0, "grpcio and meshwork disagree:\n{report}");
    for (case, why) in DELIBERATE {
        let i = names.iter().position(|n| n == case).unwrap();
        let key = (
            meshwork_xds::server::type_url::CLUSTER.to_string(),
            format!("cluster-{i}"),
        );
        assert_eq!(
            (
                theirs.get(&key).map(String::as_str),
                ours.get(&key).map(String::as_str)
            ),
            (Some("NACKED"), Some("ACKED")),
            "the deliberate difference for {case:?} changed ({why}):\n{report}"
        );
    }
}
