//! The `greeter-server` binary as a user runs it: SPIFFE mTLS with the identity from the
//! bootstrap's certificate provider, an `--allow` policy, and a graceful stop on SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshwork_core::config::StaticConfig;
use meshwork_core::identity::testing::{Flaw, TestCa};
use meshwork_core::identity::{MtlsConfig, StaticSource};
use meshwork_examples::helloworld::HelloRequest;
use meshwork_examples::helloworld::greeter_client::GreeterClient;
use meshwork_grpc::{MeshChannel, MeshChannelOptions};
use meshwork_xds::resource::{CertProviderInstance, Cluster, UpstreamTls};
use tokio::io::AsyncBufReadExt as _;

const SERVER: &str = "/ns/default/sa/greeter";
const FRIEND: &str = "/ns/default/sa/friend";

/// A bootstrap whose `default` certificate provider holds the server's SVID.
fn bootstrap(dir: &Path, ca: &TestCa) -> std::path::PathBuf {
    let minted = ca.mint(SERVER, Flaw::None);
    std::fs::write(dir.join("cert.pem"), &minted.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &minted.key_pem).unwrap();
    std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    let d = dir.display();
    let json = format!(
        r#"{{"xds_servers": [{{"server_uri": "127.0.0.1:1", "channel_creds": [{{"type": "insecure"}}]}}],
  "node": {{"id": "greeter-server-test"}},
  "certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{
    "certificate_file": "{d}/cert.pem", "private_key_file": "{d}/key.pem",
    "ca_certificate_file": "{d}/root.pem"}}}}}}}}"#
    );
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, json).unwrap();
    path
}

/// A channel to `addr` over mTLS as `client`, expecting the server's SVID.
fn channel(ca: &TestCa, client: &str, addr: SocketAddr) -> MeshChannel {
    let instance = CertProviderInstance {
        instance_name: "default".into(),
        certificate_name: "default".into(),
    };
    let cluster = Cluster {
        tls: Some(UpstreamTls {
            identity: Some(instance.clone()),
            root: instance,
            san_matchers: vec![],
        }),
        ..Cluster::eds("greeter")
    };
    let config = StaticConfig::new()
        .route_all_to("greeter")
        .cluster_with_endpoints(cluster, [addr])
        .build()
        .unwrap();
    let identity = MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid(client)),
        ca.bundles(),
    )));
    MeshChannel::from_static(config, MeshChannelOptions::new().mtls(identity))
}

#[tokio::test]
async fn greeter_server_serves_mtls_with_its_policy_and_stops_on_sigterm() {
    let ca = TestCa::new("example.org");
    let dir = std::env::temp_dir().join(format!("meshwork-greeter-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_greeter-server"))
        .args(["--port", "0", "--id", "X", "--mtls", "--allow"])
        .arg(format!("spiffe://example.org{FRIEND}"))
        .env("GRPC_XDS_BOOTSTRAP", bootstrap(&dir, &ca))
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the server starts within 30 s")
        .unwrap()
        .expect("it prints its address");
    let addr: SocketAddr = line.strip_prefix("listening on ").unwrap().parse().unwrap();

    let mut friend = GreeterClient::new(channel(&ca, FRIEND, addr));
    let reply = friend
        .say_hello(HelloRequest { name: "you".into() })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "X: hello you");

    let mut stranger = GreeterClient::new(channel(&ca, "/ns/default/sa/stranger", addr));
    let status = stranger
        .say_hello(HelloRequest { name: "me".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // SIGTERM: a graceful stop, exit status 0.
    let pid = server.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("it stops within 20 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
