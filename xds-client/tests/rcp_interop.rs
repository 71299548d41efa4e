//! Interop with a control plane nobody here wrote: rust-control-plane 0.1.2 (crates.io),
//! wrapped as a small binary in `tests/peers/rcp` that `scripts/build-peers` builds and
//! `scripts/test` exports as `MESHWORK_RCP_PEER`. The same snapshot served by it and by our
//! own test server must give our client the same complete config, and an update pushed
//! through it must arrive.

use meshwork_test_support as support;
use meshwork_test_support::xds::builder;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use meshwork_xds::client::XdsClient;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use meshwork_xds::watch::{ClusterChildren, ClusterState, TargetState};
use prost::Message;

const TARGET: &str = "greeter:50051";

fn resources(endpoint_ports: &[u16]) -> Vec<Any> {
    let addrs: Vec<_> = endpoint_ports
        .iter()
        .map(|p| ([127, 0, 0, 1], *p).into())
        .collect();
    vec![
        build::pack(&build::api_listener(TARGET, "greeter-routes")),
        build::pack(&build::route_config(
            "greeter-routes",
            vec![build::virtual_host(
                "greeter",
                [TARGET],
                vec![
                    build::route_on_header("x-canary", "1", "canary"),
                    build::route_weighted("", &[("stable", 70), ("canary", 30)]),
                ],
            )],
        )),
        build::pack(&build::eds_cluster("stable")),
        build::pack(&build::eds_cluster("canary")),
        build::pack(&build::endpoints("stable", &addrs)),
        build::pack(&build::endpoints("canary", &addrs[..1])),
    ]
}

fn write_resources(path: &Path, resources: Vec<Any>) {
    let bytes = DiscoveryResponse {
        resources,
        ..Default::default()
    }
    .encode_to_vec();
    // Atomically, so the peer never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Peer {
    child: Child,
    port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_peer(binary: &Path, resources: &Path, node_id: &str) -> Peer {
    let mut child = Command::new(binary)
        .args([
            "--resources",
            resources.to_str().unwrap(),
            "--port",
            "0",
            "--node-id",
            node_id,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start meshwork-rcp-peer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening on 127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected first line from the peer: {line:?}"))
        .parse()
        .unwrap();
    Peer { child, port }
}

fn client(uri: String, node_id: &str) -> XdsClient {
    let (min, max) = (Duration::from_millis(50), Duration::from_millis(200));
    builder(node_id, &[uri], min, max).start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the rust-control-plane peer: scripts/test provides it (MESHWORK_RCP_PEER)"]
async fn rust_control_plane_gives_the_same_config_as_our_server() {
    let binary = support::peers::rcp();
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("resources.pb");
    write_resources(&file, resources(&[7001, 7002]));

    // Reference: our own server with the same resources.
    let ours = XdsTestServer::start().await.unwrap();
    let mut snapshot = Snapshot::new();
    for any in resources(&[7001, 7002]) {
        let name = meshwork_xds::server::resource_name(&any).unwrap();
        snapshot.insert_raw(any.type_url.clone(), name, any);
    }
    ours.set_snapshot(snapshot);
    let reference = client(ours.uri(), "reference")
        .watch_target(TARGET, TARGET)
        .await
        .ready(Duration::from_secs(10))
        .await
        .unwrap();

    let peer = start_peer(&binary, &file, "meshwork-rcp-interop");
    let client = client(
        format!("http://127.0.0.1:{}", peer.port),
        "meshwork-rcp-interop",
    );
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let config = watch.ready(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        *config, *reference,
        "the same resources give the same complete config"
    );
    assert_eq!(config.clusters.len(), 2);
    assert_eq!(config.virtual_host().routes.len(), 2);

    // An EDS-only update (the peer loses ACKs when two types change at once).
    write_resources(&file, resources(&[7001, 7002, 7003]));
    let updated = support::within(20, async {
        loop {
            if let Some(TargetState::Ready(c)) = watch.changed().await
                && let ClusterState::Ready(stable) = &c.clusters["stable"]
                && let ClusterChildren::Endpoints(Ok(cla)) = &stable.children
                && cla.localities[0].endpoints.len() == 3
            {
                return c;
            }
        }
    })
    .await;
    assert_eq!(updated.route_config, config.route_config);
    let dump = client.dump().await;
    assert_eq!(dump.len(), 6, "{dump:#?}");
    assert!(
        dump.iter()
            .all(|r| r.status == meshwork_xds::protocol::ResourceStatus::Acked),
        "{dump:#?}"
    );
}
