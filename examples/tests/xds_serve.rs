//! `xds-serve` as a user runs it, with meshwork's own `xds-dump` as the client: every resource
//! of a good file is ACKED at the file's version; a rewritten file is served anew; a bad file
//! is reported on stderr while the previous resources stay served; and an Istio-shaped file
//! (api_listener over RDS, an EDS cluster with SPIFFE upstream TLS) passes meshwork's
//! validators. With the interop peers: Envoy takes its listener, routes and clusters from
//! `xds-serve` over SotW and over delta ADS and routes a request with them; gRPC's reference
//! client (grpcio) and meshwork's `greeter-client` both call a greeter through the same file;
//! grpcio (SotW) and meshwork (SotW and delta) reach the same per-resource ACK view of a file
//! with a resource every gRPC-style client NACKs; and grpcio and meshwork reach the same view
//! of a target of a bootstrap authority (`xds://a/svc`, federation: gRFC A47).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use meshwork_core::identity::testing::TestCa;
use meshwork_examples::greeter::Greeter;
use meshwork_grpc::MeshServer;
use meshwork_test_support::envoy::Envoy;
use meshwork_test_support::{certs, peers, temp_dir};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const GREETER: &str = include_str!("../testdata/xds-serve/greeter.json");
const ISTIO: &str = include_str!("../testdata/xds-serve/istio.json");

/// A running `xds-serve` and its output, line by line.
struct Serve {
    _child: Child,
    addr: String,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
}

fn lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line of `rx` that starts with `prefix`; the lines before it must not be errors.
async fn line_starting(rx: &mut mpsc::UnboundedReceiver<String>, prefix: &str) -> String {
    let next = async {
        loop {
            let line = rx.recv().await.expect("xds-serve exited");
            if line.starts_with(prefix) {
                return line;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), next)
        .await
        .unwrap_or_else(|_| panic!("no line starting with {prefix:?} within 60 s"))
}

impl Serve {
    async fn start(file: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xds-serve"))
            .arg("--port")
            .arg("0")
            .arg("--resources")
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run xds-serve");
        let mut stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let listening = line_starting(&mut stdout, "listening on ").await;
        let addr = listening["listening on ".len()..].to_owned();
        Self {
            _child: child,
            addr,
            stdout,
            stderr,
        }
    }

    /// The version of the next `loaded N resources (version V)` line, checking N.
    async fn loaded(&mut self, count: usize) -> String {
        let line = line_starting(&mut self.stdout, "loaded ").await;
        let rest = line
            .strip_prefix(&format!("loaded {count} resources (version "))
            .unwrap_or_else(|| panic!("{line:?}: not {count} resources"));
        rest.strip_suffix(')')
            .expect("a closing parenthesis")
            .to_owned()
    }

    /// A bootstrap file in `dir` naming this server, as gRPC reads it (`GRPC_XDS_BOOTSTRAP`).
    fn bootstrap_file(&self, dir: &Path, node: &str) -> PathBuf {
        self.bootstrap_file_with(dir, node, None)
    }

    /// [`bootstrap_file`](Self::bootstrap_file) with `top_level` fields added (e.g.
    /// `"authorities": {...}`).
    fn bootstrap_file_with(&self, dir: &Path, node: &str, top_level: Option<&str>) -> PathBuf {
        let top_level = top_level.map(|t| format!(", {t}")).unwrap_or_default();
        let path = dir.join("bootstrap.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"xds_servers": [{}], "node": {{"id": "{node}"}} {top_level}}}"#,
                self.grpc_server_entry()
            ),
        )
        .unwrap();
        path
    }

    /// This server as an entry of a bootstrap's `xds_servers`, as gRPC takes it.
    fn grpc_server_entry(&self) -> String {
        format!(
            r#"{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}],
                "server_features": ["xds_v3"]}}"#,
            self.addr
        )
    }

    /// `xds-dump`'s rows for `target`, checking that it exits 0 (the config is complete).
    async fn dump(&self, target: &str, providers: Option<&str>) -> Vec<serde_json::Value> {
        let (code, rows) = self.dump_with(target, providers, "").await;
        assert_eq!(code, Some(0), "xds-dump: {rows:?}");
        rows
    }

    /// `xds-dump`'s exit code and rows for `target`; `top_level` fields are added to the
    /// bootstrap (e.g. `"certificate_providers": {...}`), `server_fields` to its server entry
    /// (e.g. `, "api_type": "DELTA_GRPC"`).
    async fn dump_with(
        &self,
        target: &str,
        top_level: Option<&str>,
        server_fields: &str,
    ) -> (Option<i32>, Vec<serde_json::Value>) {
        let bootstrap = format!(
            r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}] {}}}],
                "node": {{"id": "xds-serve-test"}} {}}}"#,
            self.addr,
            server_fields,
            top_level.map(|p| format!(", {p}")).unwrap_or_default()
        );
        let out = Command::new(env!("CARGO_BIN_EXE_xds-dump"))
            .args(["--target", target, "--seconds", "30"])
            .env_remove("GRPC_XDS_BOOTSTRAP")
            .env_remove("MESHWORK_XDS_SNAPSHOT_DIR")
            .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap)
            .kill_on_drop(true)
            .output()
            .await
            .expect("run xds-dump");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let rows = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
        (out.status.code(), rows)
    }
}

/// Writes `contents` to `path` as an editor that saves atomically does, so that the server
/// never reads half a file.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// (type URL's last segment, name) of every row, sorted; each row ACKED at `version`.
fn acked(rows: &[serde_json::Value], version: &str) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            assert_eq!(row["status"], "ACKED", "{row}");
            assert_eq!(row["version"], version, "{row}");
            assert!(row["error"].is_null(), "{row}");
            // The sample files hold nothing meshwork would ignore.
            assert_eq!(row["unsupported_fields"], serde_json::json!([]), "{row}");
            let ty = row["type"].as_str().unwrap();
            (
                ty.rsplit('.').next().unwrap().to_owned(),
                row["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    seen
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(t, n)| ((*t).to_owned(), (*n).to_owned()))
        .collect()
}

fn file(dir: &Path, contents: &str) -> PathBuf {
    let path = dir.join("resources.json");
    replace(&path, contents);
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_the_file_reloads_it_and_keeps_the_last_good_set() {
    let dir = temp_dir("xds-serve");
    let path = file(&dir, GREETER);
    let mut serve = Serve::start(&path).await;
    let v1 = serve.loaded(4).await;

    let rows = serve.dump("greeter:50051", None).await;
    assert_eq!(
        acked(&rows, &v1),
        pairs(&[
            ("Cluster", "greeter"),
            ("ClusterLoadAssignment", "greeter"),
            ("Listener", "greeter:50051"),
            ("RouteConfiguration", "greeter-routes"),
        ])
    );

    // Every resource changes: the listener to other routes, which send to another cluster.
    let v2_file = GREETER
        .replace("greeter-routes", "greeter-routes-2")
        .replace("\"greeter\"", "\"greeter-2\"");
    replace(&path, &v2_file);
    let v2 = serve.loaded(4).await;
    assert_ne!(v1, v2);
    let v2_names = pairs(&[
        ("Cluster", "greeter-2"),
        ("ClusterLoadAssignment", "greeter-2"),
        ("Listener", "greeter:50051"),
        ("RouteConfiguration", "greeter-routes-2"),
    ]);
    assert_eq!(
        acked(&serve.dump("greeter:50051", None).await, &v2),
        v2_names
    );

    // A bad file: said on stderr, and the previous set is still what clients get.
    replace(&path, &v2_file.replace("\"lb_policy\"", "\"lb_polciy\""));
    let error = line_starting(&mut serve.stderr, "xds-serve: ").await;
    for wanted in [
        "resources[2] (type.googleapis.com/envoy.config.cluster.v3.Cluster \"greeter-2\")",
        "lb_polciy",
        "still serving the previous resources",
    ] {
        assert!(error.contains(wanted), "{error:?} lacks {wanted:?}");
    }
    assert_eq!(
        acked(&serve.dump("greeter:50051", None).await, &v2),
        v2_names
    );

    // Fixed again, to the first content: served at the first version.
    replace(&path, GREETER);
    assert_eq!(serve.loaded(4).await, v1);
    let rows = serve.dump("greeter:50051", None).await;
    assert_eq!(acked(&rows, &v1).len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_istio_shaped_file_passes_meshworks_validators() {
    let dir = temp_dir("xds-serve-istio");
    let path = file(&dir, ISTIO);
    let mut serve = Serve::start(&path).await;
    let version = serve.loaded(4).await;
    assert!(version.starts_with("2026-12-06T10:00:00Z/42-"), "{version}");

    // The upstream TLS names the bootstrap's certificate provider instance "default".
    let ca = TestCa::new("cluster.local");
    let svid = certs::istio_dir(&ca, "/ns/default/sa/client");
    let providers = certs::file_watcher_providers(&svid);
    let rows = serve
        .dump("greeter.default.svc.cluster.local:7070", Some(&providers))
        .await;
    let name = "outbound|7070||greeter.default.svc.cluster.local";
    let host = "greeter.default.svc.cluster.local:7070";
    assert_eq!(
        acked(&rows, &version),
        pairs(&[
            ("Cluster", name),
            ("ClusterLoadAssignment", name),
            ("Listener", host),
            ("RouteConfiguration", host),
        ])
    );
}

#[tokio::test]
async fn a_bad_file_at_start_is_an_error() {
    let dir = temp_dir("xds-serve-bad");
    let path = file(
        &dir,
        r#"{"resources": [{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}]}"#,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_xds-serve"))
        .arg("--port")
        .arg("0")
        .arg("--resources")
        .arg(&path)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("resources[0] (type.googleapis.com/envoy.config.cluster.v3.Cluster)")
            && stderr.contains("has no name (field `name`)")
            && stderr.contains("nothing served"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "it must not listen");
}

/// An HTTP/1.1 server on 127.0.0.1:0 that answers every request with 200 and `body`.
async fn http_backend(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs envoy: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn envoy_routes_a_request_with_the_files_config() {
    let envoy_bin = peers::envoy();
    let dir = temp_dir("xds-serve-envoy");
    let backend = http_backend("hello from the backend").await;
    let hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    let resources = json!({"resources": [
        {
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": "ingress",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": hcm,
                    "stat_prefix": "ingress",
                    "rds": {"config_source": {"ads": {}, "resource_api_version": "V3"},
                            "route_config_name": "routes"},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        },
        {
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": "routes",
            "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]
        },
        {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "backend",
            "type": "EDS",
            "connect_timeout": "5s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}
        },
        {
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": "backend",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": backend}}}}]}]
        }
    ]});
    let path = file(&dir, &resources.to_string());
    let mut serve = Serve::start(&path).await;
    serve.loaded(4).await;
    let (host, port) = serve.addr.rsplit_once(':').unwrap();
    let port = port.parse::<u16>().unwrap();
    // Envoy as a state-of-the-world client, then as a delta (incremental) one.
    for api_type in ["GRPC", "DELTA_GRPC"] {
        let envoy_dir = dir.join(api_type);
        std::fs::create_dir_all(&envoy_dir).unwrap();
        let response = envoy_request(&envoy_bin, &envoy_dir, api_type, host, port).await;
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with("hello from the backend"),
            "{api_type}: {response}"
        );
    }
}

/// Start Envoy with its ADS (of `api_type`) at `host:port` and send one request to its
/// `ingress` listener; the response, or the response and Envoy's log.
async fn envoy_request(
    envoy_bin: &Path,
    dir: &Path,
    api_type: &str,
    host: &str,
    port: u16,
) -> String {
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let bootstrap = json!({
        "node": {"id": "envoy-xds-serve", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-serve"}}]},
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {"clusters": [{
            "name": "xds-serve",
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {"cluster_name": "xds-serve", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": host, "port_value": port}}}}]}]},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
        }]},
    });
    // Live only once the initial LDS and CDS (and the RDS and EDS they name) arrived.
    let envoy = Envoy::start(envoy_bin, dir, &bootstrap).await;
    let ingress = envoy.listener_port("ingress").await;
    let mut conn = TcpStream::connect(("127.0.0.1", ingress)).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: greeter\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_string(&mut response))
        .await
        .expect("envoy answers within 30 s")
        .unwrap();
    if response.ends_with("hello from the backend") {
        response
    } else {
        format!("{response}\n{}", envoy.log_text())
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn grpcio_and_meshwork_call_a_greeter_through_the_file() {
    let venv = peers::venv();
    let dir = temp_dir("xds-serve-grpcio");
    let greeter = Greeter::new("A");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap().port();
    tokio::spawn(
        MeshServer::plaintext()
            .add_service(greeter.service())
            .serve(listener),
    );
    let path = file(
        &dir,
        &GREETER.replace(
            "\"port_value\": 50051",
            &format!("\"port_value\": {backend}"),
        ),
    );
    let mut serve = Serve::start(&path).await;
    serve.loaded(4).await;
    let bootstrap = serve.bootstrap_file(&dir, "xds-serve-interop");

    let target = "xds:///greeter:50051";
    let mut ours = Command::new(env!("CARGO_BIN_EXE_greeter-client"));
    ours.args(["--target", target, "--calls", "5", "--json"]);
    let mut theirs = Command::new(venv.join("bin/python"));
    theirs
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/grpcio_greeter_client.py"
        ))
        .args(["--target", target, "--calls", "5", "--timeout", "10"]);
    for (who, mut command) in [("greeter-client", ours), ("grpcio", theirs)] {
        let out = command
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{who}: {stdout}\n{stderr}");
        let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{who}: {e}: {stdout}"));
        assert_eq!(last["counts"], json!({"A": 5}), "{who}: {stdout}\n{stderr}");
        assert_eq!(last["errors"], 0, "{who}: {stdout}");
    }
}

/// (type URL, name, status, version) of every row, sorted: the per-resource ACK view that
/// gRPC's CSDS and `xds-dump` both report.
fn ack_view(rows: &[serde_json::Value]) -> Vec<[String; 4]> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let mut view: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                text(&r["type"]),
                text(&r["name"]),
                text(&r["status"]),
                text(&r["version"]),
            ]
        })
        .collect();
    view.sort();
    view
}

/// The greeter file with a second route to a cluster every gRPC-style client must NACK
/// (`STATIC`: neither EDS, LOGICAL_DNS nor aggregate).
fn greeter_with_a_nacked_cluster() -> String {
    let mut file: serde_json::Value = serde_json::from_str(GREETER).unwrap();
    let resources = file["resources"].as_array_mut().unwrap();
    for resource in resources.iter_mut() {
        if resource["name"] == "greeter-routes" {
            let routes = resource["virtual_hosts"][0]["routes"]
                .as_array_mut()
                .unwrap();
            routes.insert(
                0,
                json!({"match": {"prefix": "/broken/"}, "route": {"cluster": "broken"}}),
            );
        }
    }
    resources.push(json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "broken",
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN"
    }));
    file.to_string()
}

/// grpcio's per-resource ACK view ([`ack_view`]) after resolving `target` (a name, or an
/// `xds:` URI) through the control plane `bootstrap` names.
async fn grpcio_ack_view(venv: &Path, bootstrap: &Path, target: &str) -> Vec<[String; 4]> {
    let out = Command::new(venv.join("bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../xds-client/tests/peers/grpcio_csds_dump.py"
        ))
        .args(["--targets", target, "--wait", "30"])
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run grpcio_csds_dump.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grpcio: {stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("grpcio: not JSON ({e}): {stderr}"));
    ack_view(&rows)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn grpcio_and_meshwork_reach_the_same_ack_view() {
    let venv = peers::venv();
    let dir = temp_dir("xds-serve-ack-view");
    let path = file(&dir, &greeter_with_a_nacked_cluster());
    let mut serve = Serve::start(&path).await;
    serve.loaded(5).await;

    let bootstrap = serve.bootstrap_file(&dir, "xds-serve-ack-view");
    let theirs = grpcio_ack_view(&venv, &bootstrap, "greeter:50051").await;

    // The view is what the comparison is about, so check it is the interesting one: four
    // resources ACKED at the file's version and the STATIC cluster NACKED.
    let statuses: Vec<(&str, &str)> = theirs
        .iter()
        .map(|[_, name, status, _]| (name.as_str(), status.as_str()))
        .collect();
    assert!(statuses.contains(&("broken", "NACKED")), "{theirs:?}");
    assert_eq!(
        statuses.iter().filter(|(_, s)| *s == "ACKED").count(),
        4,
        "{theirs:?}"
    );

    let (_, ours) = serve.dump_with("xds:///greeter:50051", None, "").await;
    assert_eq!(ack_view(&ours), theirs, "meshwork (SotW) vs grpcio");

    // Over delta the statuses are the same; a delta resource's version is its own (the
    // server's per-resource hash) where SotW shows the file's version.
    let delta_server = r#", "api_type": "DELTA_GRPC""#;
    let (_, ours) = serve
        .dump_with("xds:///greeter:50051", None, delta_server)
        .await;
    let statuses = |view: Vec<[String; 4]>| -> Vec<[String; 3]> {
        view.into_iter()
            .map(|[ty, name, status, _]| [ty, name, status])
            .collect()
    };
    let ours = ack_view(&ours);
    let file_version = theirs
        .iter()
        .find(|[_, _, status, _]| status == "ACKED")
        .map(|[.., version]| version.clone())
        .unwrap();
    assert_eq!(
        statuses(ours.clone()),
        statuses(theirs),
        "meshwork (delta) vs grpcio"
    );
    // Per-resource versions: the stream was delta, not SotW again.
    assert!(
        ours.iter().all(|[_, _, status, version]| {
            status != "ACKED" || (!version.is_empty() && *version != file_version)
        }),
        "{ours:?}"
    );
}

/// The greeter file and authority `a`'s resources for `xds://a/svc` (gRFC A47): an
/// `xdstp://a/` listener and route whose one route splits calls between the `xdstp://a/`
/// cluster `svc` and the file's old-style cluster `greeter`.
fn greeter_with_authority_a() -> String {
    let mut file: serde_json::Value = serde_json::from_str(GREETER).unwrap();
    let name = |ty: &str| format!("xdstp://a/envoy.config.{ty}/svc");
    let resources = file["resources"].as_array_mut().unwrap();
    resources.extend([
        json!({
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": name("listener.v3.Listener"),
            "api_listener": {"api_listener": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "rds": {"config_source": {"ads": {}}, "route_config_name": name("route.v3.RouteConfiguration")},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                }]
            }}
        }),
        json!({
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": name("route.v3.RouteConfiguration"),
            "virtual_hosts": [{"name": "svc", "domains": ["*"], "routes": [{
                "match": {"prefix": ""},
                "route": {"weighted_clusters": {"clusters": [
                    {"name": name("cluster.v3.Cluster"), "weight": 1},
                    {"name": "greeter", "weight": 1}
                ]}}
            }]}]
        }),
        // An xdstp cluster names its assignment (A47).
        json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": name("cluster.v3.Cluster"),
            "type": "EDS",
            "eds_cluster_config": {
                "eds_config": {"ads": {}},
                "service_name": name("endpoint.v3.ClusterLoadAssignment")
            },
            "lb_policy": "ROUND_ROBIN"
        }),
        json!({
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": name("endpoint.v3.ClusterLoadAssignment"),
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": 50052}
            }}}]}]
        }),
    ]);
    file.to_string()
}

/// Federation (gRFC A47) on one server: the bootstrap's authority `a` names the top-level
/// server again, and `xds://a/svc` resolves through `xdstp://a/` names down to an
/// old-style cluster. grpcio and meshwork reach the same per-resource view: the same
/// names (so the same `xdstp` listener name from the target), all ACKED at the file's
/// version.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn grpcio_and_meshwork_reach_the_same_ack_view_through_an_authority() {
    let venv = peers::venv();
    let dir = temp_dir("xds-serve-federation");
    let path = file(&dir, &greeter_with_authority_a());
    let mut serve = Serve::start(&path).await;
    let version = serve.loaded(8).await;

    let authorities = format!(
        r#""authorities": {{"a": {{"xds_servers": [{}]}}}}"#,
        serve.grpc_server_entry()
    );
    let bootstrap = serve.bootstrap_file_with(&dir, "xds-serve-federation", Some(&authorities));
    let theirs = grpcio_ack_view(&venv, &bootstrap, "xds://a/svc").await;
    let svc = |ty: &str| format!("xdstp://a/envoy.config.{ty}/svc");
    let mut expected: Vec<[String; 4]> = [
        ("listener.v3.Listener", svc("listener.v3.Listener")),
        (
            "route.v3.RouteConfiguration",
            svc("route.v3.RouteConfiguration"),
        ),
        ("cluster.v3.Cluster", svc("cluster.v3.Cluster")),
        ("cluster.v3.Cluster", "greeter".to_owned()),
        (
            "endpoint.v3.ClusterLoadAssignment",
            svc("endpoint.v3.ClusterLoadAssignment"),
        ),
        ("endpoint.v3.ClusterLoadAssignment", "greeter".to_owned()),
    ]
    .into_iter()
    .map(|(ty, name)| {
        [
            format!("type.googleapis.com/envoy.config.{ty}"),
            name,
            "ACKED".to_owned(),
            version.clone(),
        ]
    })
    .collect();
    expected.sort();
    assert_eq!(theirs, expected, "grpcio's view");

    let (code, ours) = serve.dump_with("xds://a/svc", Some(&authorities), "").await;
    assert_eq!(code, Some(0), "xds-dump: {ours:?}");
    assert_eq!(ack_view(&ours), theirs, "meshwork vs grpcio");
}
