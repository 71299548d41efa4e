//! `greeter-client --csds-port`: while it runs, a CSDS client reads its xDS view.

use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use meshwork_test_support::within;
use meshwork_test_support::xds::target_routes;
use meshwork_xds::server::{XdsTestServer, build, type_url};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn greeter_client_serves_its_xds_view_over_csds() {
    let xds = XdsTestServer::start().await.unwrap();
    // An endpoint nothing listens on: the calls fail fast, the client keeps calling.
    let refused = meshwork_test_support::refused_addr();
    xds.set_snapshot(
        target_routes("greeter:50051", vec![build::route_to("", "greeter")])
            .cluster(build::eds_cluster("greeter"))
            .endpoints(build::endpoints("greeter", &[refused])),
    );
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": xds.addr().to_string(), "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "csds-test"},
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.to_string())
        .args(["--target", "xds:///greeter:50051", "--calls", "100000000"])
        .args(["--csds-port", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run greeter-client");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    // The first line that announces the port (a log line may come before it).
    let addr = within(30, async {
        loop {
            let line = stderr
                .next_line()
                .await
                .unwrap()
                .expect("csds: serving on ...");
            if let Some(addr) = line.strip_prefix("csds: serving on ") {
                break addr.to_owned();
            }
        }
    })
    .await;
    // Every resource of the target is ACKed before it is asked about.
    for t in [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ] {
        within(30, xds.wait_for_ack(t, &xds.version(t))).await;
    }

    let mut csds = ClientStatusDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let rsp = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rsp.config.len(), 1, "{rsp:?}");
    let config = &rsp.config[0];
    assert_eq!(config.node.as_ref().unwrap().id, "csds-test");
    let status = |name: &str| {
        config
            .generic_xds_configs
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.client_status)
            .unwrap_or_else(|| panic!("{name} not in {config:?}"))
    };
    for name in ["greeter:50051", "routes", "greeter"] {
        assert_eq!(status(name), ClientResourceStatus::Acked as i32, "{name}");
    }
    assert_eq!(
        config
            .generic_xds_configs
            .iter()
            .filter(|c| c.name == "greeter")
            .count(),
        2,
        "the cluster and its endpoints: {config:?}"
    );
    child.kill().await.unwrap();
}
