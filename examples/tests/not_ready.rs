//! `xds-dump`, `greeter-client` and `http-client` say why a target is not ready, as
//! processes: a control plane that refuses connections (the server and the connection
//! error), and a cluster the control plane says does not exist (its name).

use std::process::Output;

use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryResponse, ResourceError, ResourceName,
};
use envoy_types::pb::google::rpc::Status;
use meshwork_xds::server::{Snapshot, XdsTestServer, build, type_url};
use tokio::process::Command;

/// gRPC's NOT_FOUND code: a control plane's "this resource does not exist" (gRFC A88).
const NOT_FOUND: i32 = 5;

/// `binary` with a bootstrap naming the xDS server at `server_uri`.
fn command(binary: &str, server_uri: &str) -> Command {
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": server_uri, "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "not-ready-test"},
    });
    let mut cmd = Command::new(binary);
    cmd.env_remove("GRPC_XDS_BOOTSTRAP")
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.to_string())
        .kill_on_drop(true);
    cmd
}

/// A `host:port` nothing listens on: bound, then closed, so connecting to it is refused.
fn refused_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// With the control plane down, `xds-dump` exits 1 naming the server and the refusal, and
/// the listener it requested shows the same error in the JSON; `greeter-client` and
/// `http-client` fail with it too.
#[tokio::test]
async fn a_refused_control_plane_is_named_with_the_error() {
    let server = refused_addr();

    let out = command(env!("CARGO_BIN_EXE_xds-dump"), &server)
        .args(["--target", "xds:///greeter:50051", "--seconds", "2"])
        .output()
        .await
        .expect("run xds-dump");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "target xds:///greeter:50051 is not complete: no complete xDS config for \
             greeter:50051 within 2s: xDS server {server}: "
        )),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["status"], "REQUESTED");
    assert_eq!(rows[0]["name"], "greeter:50051");
    assert!(rows[0]["error"].is_null());
    let transport = rows[0]["transport_error"]
        .as_str()
        .expect("transport_error");
    assert!(
        transport.starts_with(&format!("xDS server {server}: ")),
        "{transport}"
    );
    assert!(
        transport.to_lowercase().contains("connection refused"),
        "{transport}"
    );

    let out = greeter_client(&server, &["--wait-secs", "2"]).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "greeter-client: target \"xds:///greeter:50051\": no complete xDS config for \
             greeter:50051 within 2s: xDS server {server}: "
        )),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );

    // A MeshClient request waiting for its host fails with the same cause.
    let out = command(env!("CARGO_BIN_EXE_http-client"), &server)
        .args(["--target", "http://greeter/hello", "--calls", "1"])
        .args(["--wait-secs", "2"])
        .output()
        .await
        .expect("run http-client");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "cannot resolve host (503): target \"xds:///greeter\": no complete xDS config for greeter \
             within 2s: xDS server {server}: "
        )),
        "{stdout}"
    );
    assert_eq!(
        stdout.to_lowercase().matches("connection refused").count(),
        1,
        "{stdout}"
    );
}

async fn greeter_client(server: &str, extra: &[&str]) -> Output {
    command(env!("CARGO_BIN_EXE_greeter-client"), server)
        .args(["--target", "xds:///greeter:50051", "--calls", "1"])
        .args(extra)
        .output()
        .await
        .expect("run greeter-client")
}

/// The route's only cluster does not exist (the control plane says so, gRFC A88): the
/// target is complete, and `greeter-client`'s call fails naming the cluster.
#[tokio::test]
async fn a_cluster_that_does_not_exist_is_named() {
    let xds = XdsTestServer::start().await.unwrap();
    xds.set_snapshot(
        Snapshot::new()
            .listener(build::api_listener("greeter:50051", "routes"))
            .route(build::route_config(
                "routes",
                vec![build::virtual_host(
                    "vh",
                    ["*"],
                    vec![build::route_to("", "ghost")],
                )],
            )),
    );
    let uri = xds.addr().to_string();
    let client = greeter_client(&uri, &["--wait-secs", "20"]);
    let not_found = async {
        xds.wait_for(|requests| {
            requests.iter().any(|r| {
                r.type_url() == type_url::CLUSTER
                    && r.request.resource_names.iter().any(|n| n == "ghost")
            })
        })
        .await;
        xds.push_raw(DiscoveryResponse {
            version_info: "1".into(),
            type_url: type_url::CLUSTER.into(),
            resource_errors: vec![ResourceError {
                resource_name: Some(ResourceName {
                    name: "ghost".into(),
                    ..Default::default()
                }),
                error_detail: Some(Status {
                    code: NOT_FOUND,
                    message: "no such cluster".into(),
                    details: vec![],
                }),
            }],
            ..Default::default()
        });
    };
    let (out, ()) = tokio::join!(client, not_found);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("cluster ghost is unavailable: cluster ghost does not exist"),
        "{stdout}"
    );
}
