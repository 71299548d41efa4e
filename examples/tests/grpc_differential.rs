//! Differential test against gRPC's reference xDS client: grpcio (C-core, from PyPI) and our
//! `greeter-client` resolve the same `xds:///` targets through the same ADS server (our
//! `XdsTestServer`) and call the same greeter backends; their per-backend distributions must
//! agree, for round robin, a 70/30 weighted split, a header-matched route, priority
//! failover, and xDS-managed mTLS (a backend whose SVID the cluster's SAN matcher accepts,
//! and one it does not). Both also call gRPC's reference server (grpcio) besides ours.
//!
//! Needs the interop venv (`MESHWORK_PEERS_VENV`, made by `scripts/test`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use meshwork_core::identity::testing::{Flaw, TestCa};
use meshwork_examples::greeter::Greeter;
use meshwork_grpc::MeshServer;
use meshwork_grpc::core::identity::{MtlsConfig, StaticSource};
use meshwork_test_support::peers;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use serde_json::Value;
use tokio::net::TcpListener;

/// Serves `greeter` on 127.0.0.1:0, plaintext or with `mtls`.
async fn serve(greeter: &Greeter, mtls: Option<MtlsConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = match mtls {
        Some(m) => MeshServer::new(m),
        None => MeshServer::plaintext(),
    }
    .add_service(greeter.service());
    tokio::spawn(server.serve(listener));
    addr
}

/// A listener + route config for `name` whose only virtual host routes with `routes`.
fn target(
    snapshot: Snapshot,
    name: &str,
    routes: Vec<envoy_types::pb::envoy::config::route::v3::Route>,
) -> Snapshot {
    let rc = format!("{name}-routes");
    snapshot
        .listener(build::api_listener(name, &rc))
        .route(build::route_config(
            &rc,
            vec![build::virtual_host(name, [name], routes)],
        ))
}

/// Starts gRPC's reference greeter server (grpcio) named `id`; killed when the child drops.
async fn grpcio_server(venv: &Path, id: &str) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt as _;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpcio_greeter_server.py");
    let mut child = tokio::process::Command::new(venv.join("bin/python"))
        .arg(&script)
        .args(["--id", id])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start grpcio_greeter_server.py");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("grpcio server started within 30 s")
        .unwrap()
        .expect("grpcio server printed its address");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected: {line}"))
        .parse()
        .unwrap();
    (child, addr)
}

fn locality(zone: &str) -> Locality {
    Locality {
        zone: zone.into(),
        ..Default::default()
    }
}

#[derive(Debug)]
struct Run {
    counts: BTreeMap<String, u64>,
    errors: u64,
}

impl Run {
    fn parse(who: &str, out: std::process::Output) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{who} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().last().unwrap_or_default();
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{who}: {e}: {line}"));
        let counts = v["counts"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .collect();
        Self {
            counts,
            errors: v["errors"].as_u64().unwrap(),
        }
    }

    fn share(&self, id: &str) -> f64 {
        let total: u64 = self.counts.values().sum::<u64>() + self.errors;
        *self.counts.get(id).unwrap_or(&0) as f64 / total.max(1) as f64
    }
}

struct Clients {
    python: PathBuf,
    script: PathBuf,
    bootstrap: PathBuf,
}

impl Clients {
    /// Runs both clients against `target` and returns (meshwork, grpcio).
    async fn run(&self, target: &str, calls: u32, headers: &[&str], mtls: bool) -> (Run, Run) {
        let target = format!("xds:///{target}");
        let mut ours = tokio::process::Command::new(env!("CARGO_BIN_EXE_greeter-client"));
        ours.args(["--target", &target, "--calls", &calls.to_string(), "--json"]);
        let mut theirs = tokio::process::Command::new(&self.python);
        theirs.arg(&self.script).args([
            "--target",
            &target,
            "--calls",
            &calls.to_string(),
            "--timeout",
            "5",
        ]);
        if mtls {
            theirs.arg("--mtls");
        }
        for h in headers {
            ours.args(["--header", h]);
            theirs.args(["--header", h]);
        }
        for c in [&mut ours, &mut theirs] {
            c.env("GRPC_XDS_BOOTSTRAP", &self.bootstrap)
                .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
                .kill_on_drop(true);
        }
        let (a, b) = tokio::join!(ours.output(), theirs.output());
        let ours = Run::parse("greeter-client", a.unwrap());
        let theirs = Run::parse("grpcio", b.unwrap());
        eprintln!("{target} {headers:?}: meshwork {ours:?} / grpcio {theirs:?}");
        (ours, theirs)
    }
}

/// Both runs give each backend the expected share, within `tolerance` (a fraction).
fn assert_agree(what: &str, runs: &(Run, Run), expected: &[(&str, f64)], tolerance: f64) {
    for (who, run) in [("meshwork", &runs.0), ("grpcio", &runs.1)] {
        for (id, want) in expected {
            let got = run.share(id);
            assert!(
                (got - want).abs() <= tolerance,
                "{what}: {who} sent {:.1}% to {id}, expected {:.1}% ± {:.1}: {run:?}",
                got * 100.0,
                want * 100.0,
                tolerance * 100.0
            );
        }
    }
}

fn write_bootstrap(dir: &Path, xds: &XdsTestServer, ca: &TestCa) -> PathBuf {
    let minted = ca.mint("/ns/default/sa/client", Flaw::None);
    std::fs::write(dir.join("cert-chain.pem"), &minted.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &minted.key_pem).unwrap();
    std::fs::write(dir.join("root-cert.pem"), ca.root_pem()).unwrap();
    let d = dir.display();
    let json = format!(
        r#"{{
  "xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}],
                    "server_features": ["xds_v3"]}}],
  "node": {{"id": "meshwork-differential", "locality": {{"zone": "a"}}}},
  "certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{
      "certificate_file": "{d}/cert-chain.pem", "private_key_file": "{d}/key.pem",
      "ca_certificate_file": "{d}/root-cert.pem", "refresh_interval": "600s"}}}}}}
}}"#,
        xds.uri().trim_start_matches("http://")
    );
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, json).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn greeter_client_and_grpcio_agree() {
    let venv = peers::venv();
    let dir = std::env::temp_dir().join(format!("meshwork-differential-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let ca = TestCa::new("example.org");
    let (a, b, c, s) = (
        Greeter::new("A"),
        Greeter::new("B"),
        Greeter::new("C"),
        Greeter::new("S"),
    );
    let (addr_a, addr_b, addr_c) = (
        serve(&a, None).await,
        serve(&b, None).await,
        serve(&c, None).await,
    );
    let server_identity = MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid("/ns/default/sa/greeter")),
        ca.bundles(),
    )));
    let addr_s = serve(&s, Some(server_identity)).await;
    // gRPC's own server (grpcio) as a fourth backend, G.
    let (_grpcio_server, addr_g) = grpcio_server(&venv, "G").await;
    // An address nothing listens on: a backend that is down.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();

    let mut snapshot = Snapshot::new();
    snapshot = target(snapshot, "rr", vec![build::route_to("", "three")]);
    snapshot = target(
        snapshot,
        "split",
        vec![build::route_weighted("", &[("only-a", 70), ("only-b", 30)])],
    );
    snapshot = target(
        snapshot,
        "header",
        vec![
            build::route_on_header("x-canary", "true", "only-c"),
            build::route_to("", "only-a"),
        ],
    );
    snapshot = target(snapshot, "prio", vec![build::route_to("", "failover")]);
    snapshot = target(snapshot, "secure", vec![build::route_to("", "secure")]);
    snapshot = target(snapshot, "wrongsan", vec![build::route_to("", "wrongsan")]);
    snapshot = target(
        snapshot,
        "reference",
        vec![build::route_to("", "grpcio-server")],
    );
    let failover = ClusterLoadAssignment {
        cluster_name: "failover".into(),
        endpoints: vec![
            build::locality_endpoints(locality("p0"), 1, 0, &[dead]),
            build::locality_endpoints(locality("p1"), 1, 1, &[addr_b]),
        ],
        ..Default::default()
    };
    snapshot = snapshot
        .cluster(build::eds_cluster("three"))
        .endpoints(build::endpoints("three", &[addr_a, addr_b, addr_c]))
        .cluster(build::eds_cluster("only-a"))
        .endpoints(build::endpoints("only-a", &[addr_a]))
        .cluster(build::eds_cluster("only-b"))
        .endpoints(build::endpoints("only-b", &[addr_b]))
        .cluster(build::eds_cluster("only-c"))
        .endpoints(build::endpoints("only-c", &[addr_c]))
        .cluster(build::eds_cluster("failover"))
        .endpoints(failover)
        .cluster(build::with_upstream_tls(
            build::eds_cluster("secure"),
            "default",
            &["spiffe://example.org/ns/default/sa/greeter"],
        ))
        .endpoints(build::endpoints("secure", &[addr_s]))
        .cluster(build::with_upstream_tls(
            build::eds_cluster("wrongsan"),
            "default",
            &["spiffe://example.org/ns/default/sa/someone-else"],
        ))
        .endpoints(build::endpoints("wrongsan", &[addr_s]))
        .cluster(build::eds_cluster("grpcio-server"))
        .endpoints(build::endpoints("grpcio-server", &[addr_g]));
    let xds = XdsTestServer::start().await.unwrap();
    xds.set_snapshot(snapshot);

    let clients = Clients {
        python: venv.join("bin/python"),
        script: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpcio_greeter_client.py"),
        bootstrap: write_bootstrap(&dir, &xds, &ca),
    };
    let third = 1.0 / 3.0;
    let scenarios = async {
        // Round robin over three backends: each gets a third.
        let rr = clients.run("rr", 300, &[], false).await;
        assert_agree(
            "round robin",
            &rr,
            &[("A", third), ("B", third), ("C", third)],
            0.03,
        );

        // Weighted clusters 70/30 (binomial sd at n=1000 is 1.45 points; 5 points is 3.4 sd).
        let split = clients.run("split", 1000, &[], false).await;
        assert_agree("70/30 split", &split, &[("A", 0.7), ("B", 0.3)], 0.05);

        // Both clients call gRPC's reference server as well as ours.
        let reference = clients.run("reference", 50, &[], false).await;
        assert_agree("grpcio's server", &reference, &[("G", 1.0)], 0.0);

        // A header match sends everything to C; without the header, the default route.
        let canary = clients.run("header", 100, &["x-canary:true"], false).await;
        assert_agree("header match", &canary, &[("C", 1.0)], 0.0);
        let plain = clients.run("header", 100, &[], false).await;
        assert_agree("header miss", &plain, &[("A", 1.0)], 0.0);

        // xDS-managed mTLS: the SAN matcher accepts the backend's SVID...
        let secure = clients.run("secure", 50, &[], true).await;
        assert_agree("mTLS, matching SAN", &secure, &[("S", 1.0)], 0.0);
        // ...or refuses it: every call fails, in both clients.
        let refused = clients.run("wrongsan", 20, &[], true).await;
        for (who, run) in [("meshwork", &refused.0), ("grpcio", &refused.1)] {
            assert_eq!(run.errors, 20, "{who} must refuse the backend: {run:?}");
        }

        // Priority 0's only endpoint is down: traffic fails over to priority 1.
        let prio = clients.run("prio", 100, &[], false).await;
        assert_agree("priority failover", &prio, &[("B", 1.0)], 0.0);
    };
    tokio::time::timeout(Duration::from_secs(240), scenarios)
        .await
        .expect("the differential finishes within 4 minutes");
    let _ = std::fs::remove_dir_all(&dir);
}
