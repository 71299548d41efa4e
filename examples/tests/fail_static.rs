//! `greeter-client` and `xds-dump` with `MESHWORK_XDS_SNAPSHOT_DIR` (issue #15): run once
//! with the control plane up, they keep its config; run again with it down, they serve from
//! that snapshot; with the control plane back, its config replaces the snapshot.

use std::net::SocketAddr;
use std::path::Path;

use meshwork_examples::greeter::Greeter;
use meshwork_grpc::MeshServer;
use meshwork_test_support::temp_dir;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use tokio::net::TcpListener;
use tokio::process::Command;

/// A plaintext greeter answering as `id`, on 127.0.0.1:0.
async fn greeter(id: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = MeshServer::plaintext().add_service(Greeter::new(id).service());
    tokio::spawn(server.serve(listener));
    addr
}

/// `xds:///greeter` -> cluster `greeter` with the one endpoint `backend`.
fn config(backend: SocketAddr) -> Snapshot {
    Snapshot::new()
        .listener(build::api_listener("greeter", "routes"))
        .route(build::route_config(
            "routes",
            vec![build::virtual_host(
                "vh",
                ["*"],
                vec![build::route_to("", "greeter")],
            )],
        ))
        .cluster(build::eds_cluster("greeter"))
        .endpoints(build::endpoints("greeter", &[backend]))
}

/// Runs an example binary with the bootstrap naming `control_plane`, and the snapshot
/// directory when given; returns its exit code, stdout and stderr.
async fn run(
    exe: &str,
    args: &[&str],
    control_plane: SocketAddr,
    snapshots: Option<&Path>,
) -> (i32, String, String) {
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": control_plane.to_string(), "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "fail-static-example-test"},
    });
    let mut command = Command::new(exe);
    command
        .args(args)
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env_remove("MESHWORK_XDS_SNAPSHOT_DIR")
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.to_string());
    if let Some(dir) = snapshots {
        command.env("MESHWORK_XDS_SNAPSHOT_DIR", dir);
    }
    let out = command.output().await.expect("run the example");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `greeter-client --calls 3 --json`'s tally.
async fn call(
    control_plane: SocketAddr,
    snapshots: Option<&Path>,
    wait_secs: &str,
) -> serde_json::Value {
    let args = [
        "--target",
        "xds:///greeter",
        "--calls",
        "3",
        "--json",
        "--wait-secs",
        wait_secs,
    ];
    let exe = env!("CARGO_BIN_EXE_greeter-client");
    let (code, stdout, stderr) = run(exe, &args, control_plane, snapshots).await;
    if code != 0 {
        return serde_json::json!({"exit": code, "stderr": stderr});
    }
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"))
}

#[tokio::test]
async fn the_examples_serve_their_last_config_while_the_control_plane_is_down() {
    let dir = temp_dir("fail-static-examples");
    let (a, b) = (greeter("A").await, greeter("B").await);
    let server = XdsTestServer::start().await.unwrap();
    let control_plane = server.addr();
    server.set_snapshot(config(a));

    let up = call(control_plane, Some(&dir), "10").await;
    assert_eq!(up, serde_json::json!({"counts": {"A": 3}, "errors": 0}));
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one snapshot file: {files:?}");
    server.shutdown().await.unwrap();

    // The control plane is down: served from the snapshot, and only with it.
    let down = call(control_plane, Some(&dir), "10").await;
    assert_eq!(down, serde_json::json!({"counts": {"A": 3}, "errors": 0}));
    let without = call(control_plane, None, "1").await;
    assert_ne!(without["exit"], 0, "{without}");
    let exe = env!("CARGO_BIN_EXE_xds-dump");
    let args = ["--target", "xds:///greeter", "--seconds", "10"];
    let (code, stdout, stderr) = run(exe, &args, control_plane, Some(&dir)).await;
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.len(), 4, "{rows:#?}");
    for row in &rows {
        assert_eq!(row["from_snapshot"], true, "{row}");
        assert_eq!(row["status"], "ACKED", "{row}");
    }

    // Back, with the greeter moved: the control plane's config wins, and is kept.
    let server = XdsTestServer::start_on(control_plane).await.unwrap();
    server.set_snapshot(config(b));
    let back = call(control_plane, Some(&dir), "10").await;
    assert_eq!(back, serde_json::json!({"counts": {"B": 3}, "errors": 0}));
    let (code, stdout, stderr) = run(exe, &args, control_plane, Some(&dir)).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("from_snapshot"), "{stdout}");
    server.shutdown().await.unwrap();
    let down = call(control_plane, Some(&dir), "10").await;
    assert_eq!(down, serde_json::json!({"counts": {"B": 3}, "errors": 0}));
}
