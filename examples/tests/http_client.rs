//! `http-client` against our ADS test server and two `meshwork_http::Server` backends:
//! counts per backend as JSON, headers reach the router.

use std::convert::Infallible;
use std::net::SocketAddr;

use meshwork_http::Server;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use tokio::net::TcpListener;
use tokio::process::Command;

/// A plaintext backend answering `{id}:hello`.
async fn backend(id: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tower::service_fn(
        move |_req: http::Request<hyper::body::Incoming>| async move {
            Ok::<_, Infallible>(http::Response::new(format!("{id}:hello")))
        },
    );
    tokio::spawn(Server::plaintext().serve(listener, app));
    addr
}

async fn run(server: &XdsTestServer, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": server.addr().to_string(), "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "http-client-test"},
    });
    let out = Command::new(env!("CARGO_BIN_EXE_http-client"))
        .args([
            "--target",
            "http://greeter/hello",
            "--calls",
            "10",
            "--json",
        ])
        .args(extra)
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.to_string())
        .output()
        .await
        .expect("run http-client");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {} / {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap(), json, stderr)
}

#[tokio::test]
async fn counts_backends_and_sends_headers() {
    let (a, b) = (backend("A").await, backend("B").await);
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(
        Snapshot::new()
            .listener(build::api_listener("greeter", "routes"))
            .route(build::route_config(
                "routes",
                vec![build::virtual_host(
                    "greeter",
                    ["greeter"],
                    vec![
                        build::route_on_header("x-backend", "b", "b"),
                        build::route_to("", "a"),
                    ],
                )],
            ))
            .cluster(build::eds_cluster("a"))
            .cluster(build::eds_cluster("b"))
            .endpoints(build::endpoints("a", &[a]))
            .endpoints(build::endpoints("b", &[b])),
    );

    let (code, json, stderr) = run(&server, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json, serde_json::json!({"counts": {"A": 10}, "errors": 0}));

    let (code, json, stderr) = run(&server, &["--header", "x-backend: b"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json, serde_json::json!({"counts": {"B": 10}, "errors": 0}));
}
