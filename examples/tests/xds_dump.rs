//! `xds-dump` against our ADS test server: a complete target prints every resource ACKED and
//! exits 0; a target that does not exist prints why and exits 1.

use tokio::process::Command;

use meshwork_xds::server::{Snapshot, XdsTestServer, build};

async fn run_dump(
    server: &XdsTestServer,
    target: &str,
    seconds: &str,
) -> (i32, Vec<serde_json::Value>, String) {
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": server.addr().to_string(), "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "xds-dump-test"},
    });
    let out = Command::new(env!("CARGO_BIN_EXE_xds-dump"))
        .args(["--target", target, "--seconds", seconds])
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.to_string())
        .output()
        .await
        .expect("run xds-dump");
    let rows = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not a JSON array ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (
        out.status.code().unwrap(),
        rows,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn prints_every_resource_and_exits_by_completeness() {
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .listener(build::api_listener("greeter:50051", "routes"))
            .route(build::route_config(
                "routes",
                vec![build::virtual_host(
                    "vh",
                    ["*"],
                    vec![build::route_to("", "greeter")],
                )],
            ))
            .cluster(build::eds_cluster("greeter"))
            .endpoints(build::endpoints(
                "greeter",
                &["127.0.0.1:50051".parse().unwrap()],
            )),
    );

    let (code, rows, stderr) = run_dump(&server, "xds:///greeter:50051", "10").await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rows.len(), 4, "{rows:#?}");
    for row in &rows {
        assert_eq!(row["status"], "ACKED", "{row}");
        assert_eq!(row["version"], "1");
        assert!(row["error"].is_null());
        for key in ["type", "name"] {
            assert!(row[key].is_string(), "{row}");
        }
    }
    assert!(rows.iter().any(|r| r["name"] == "greeter:50051"
        && r["type"] == "type.googleapis.com/envoy.config.listener.v3.Listener"));

    // Never defined: declared missing when the 15 s does-not-exist timer fires (gRFC A57).
    let (code, rows, stderr) = run_dump(&server, "missing:1", "30").await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("listener missing:1 does not exist"),
        "{stderr}"
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "DOES_NOT_EXIST");
}
