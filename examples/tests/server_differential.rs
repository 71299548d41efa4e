//! Differential test of xDS-enabled servers (gRFC A36, A29, A41) against gRPC's reference
//! one: grpcio's `grpc.server(..., xds=True)` with `xds_server_credentials`, and
//! (once it serves from xDS) meshwork's `greeter-server --xds`, take their listener, mTLS and
//! RBAC from the same ADS server (our `XdsTestServer`) holding the same Istio-shaped inbound
//! resources, and the same callers call them. Every call's outcome (OK, PERMISSION_DENIED,
//! UNAVAILABLE, ...) is checked against a table written from A36 and A41, so the test fails
//! when either server differs from the gRFCs, and therefore when they differ from each other.
//!
//! Each call is made by gRPC's reference xDS client (`grpcio_greeter_client.py`) and, when
//! it calls SayHello (all it can call), by meshwork's `greeter-client`, both resolving an `xds:///` target whose cluster points at the
//! server under test: in plaintext (a caller without any certificate), or with xDS-managed
//! mTLS (gRFC A29: an `UpstreamTlsContext` with the caller's SVID from its bootstrap's
//! `file_watcher` provider, and the server's SVID as SAN), or with TLS and no certificate.
//! Each row of the table names the scenario, the caller, the client, the server, the method,
//! the headers, the expected outcome and the one seen.
//!
//! Needs the interop venv (`MESHWORK_PEERS_VENV`, made by `scripts/test`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use meshwork_core::identity::testing::TestCa;
use meshwork_test_support::{peers, temp_dir, within};
use meshwork_xds::bootstrap::Bootstrap;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use prost::Message as _;
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

/// Istio's `server_listener_resource_name_template`.
const INBOUND_TEMPLATE: &str = "xds.istio.io/grpc/lds/inbound/%s";
const TRUST_DOMAIN: &str = "example.org";
/// The servers' SVID path (`spiffe://example.org/ns/default/sa/greeter`).
const SERVER_SVID: &str = "/ns/default/sa/greeter";
/// How long a caller's outcome may take to become the expected one after the control plane
/// changed (xDS propagation, the server's new filter chains).
const SETTLE: u64 = 45;

/// The server implementations under test: one column each in the outcome table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    /// gRPC's reference xDS-enabled server (grpcio, C-core).
    Grpcio,
    /// meshwork's `greeter-server --xds`.
    Meshwork,
}

/// A running xDS-enabled server of one kind.
struct Server {
    kind: ServerKind,
    /// The address it listens on, which names its Listener.
    addr: SocketAddr,
    /// Its Listener resource's name: the template expanded with `addr`.
    listener: String,
    child: tokio::process::Child,
    /// Its stderr (grpcio logs its serving state there).
    log: PathBuf,
}

impl Server {
    /// Fails the test at once, with the server's log, if the server has exited: its callers
    /// would only see connections refused until the deadline.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "the {:?} server exited ({status}); its log {}:\n{}",
                self.kind,
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl ServerKind {
    fn id(self) -> &'static str {
        match self {
            ServerKind::Grpcio => "G",
            ServerKind::Meshwork => "M",
        }
    }

    /// Starts the server with `bootstrap`, or `None` (with a message) when this kind cannot
    /// serve from xDS yet.
    async fn start(self, venv: &Path, bootstrap: &Path, log: &Path) -> Option<Server> {
        let mut command = match self {
            ServerKind::Grpcio => {
                let script = peer_script("grpcio_xds_greeter_server.py");
                let mut c = tokio::process::Command::new(venv.join("bin/python"));
                // grpcio's xDS server does not take port 0: it would ask for the Listener
                // `...127.0.0.1:0` and never tell its port.
                let port = free_port();
                c.arg(script)
                    .args(["--id", self.id(), "--port", &port.to_string()]);
                c
            }
            ServerKind::Meshwork => {
                let bin = env!("CARGO_BIN_EXE_greeter-server");
                if !serves_from_xds(bin).await {
                    eprintln!(
                        "SKIPPED the meshwork column: greeter-server has no --xds flag yet \
                         (MeshServer::from_xds, issue #14)"
                    );
                    return None;
                }
                let mut c = tokio::process::Command::new(bin);
                c.args(["--xds", "--port", "0", "--id", self.id()]);
                c
            }
        };
        let stderr = std::fs::File::create(log).unwrap();
        let mut child = command
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {self:?} server: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = within(30, lines.next_line())
            .await
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "the {self:?} server exited before listening: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected line from the {self:?} server: {line}"))
            .parse()
            .unwrap();
        let listener = Bootstrap::from_file(bootstrap)
            .unwrap()
            .server_listener_resource_name(addr)
            .unwrap();
        Some(Server {
            kind: self,
            addr,
            listener,
            child,
            log: log.to_owned(),
        })
    }
}

/// Whether `greeter-server` has the `--xds` flag.
async fn serves_from_xds(bin: &str) -> bool {
    let help = within(
        30,
        tokio::process::Command::new(bin)
            .arg("--help")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    String::from_utf8_lossy(&help.stdout).contains("--xds")
}

fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// A loopback port that is free now, below the ephemeral range (32768-60999 on Linux), so
/// that no outgoing connection takes it between this check and the server binding it.
fn free_port() -> u16 {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 20000..32000")
}

/// What a call ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    PermissionDenied,
    /// UNAVAILABLE: refused, reset or failed handshake, not serving, or a route whose action
    /// is not `non_forwarding_action` (A36).
    Unavailable,
    /// The call passed RBAC but the server has no such method (no row expects it: see
    /// [`AGAIN`]).
    Unimplemented,
    /// Anything else, or calls of one run that did not all end alike.
    Other(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("OK"),
            Outcome::PermissionDenied => f.write_str("PERMISSION_DENIED"),
            Outcome::Unavailable => f.write_str("UNAVAILABLE"),
            Outcome::Unimplemented => f.write_str("UNIMPLEMENTED"),
            Outcome::Other(s) => f.write_str(s),
        }
    }
}

/// Who calls: a caller's identity decides its client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Plaintext: no TLS, no certificate.
    NoCert,
    /// TLS that verifies the server but presents no certificate of its own.
    TlsNoCert,
    /// `spiffe://example.org/ns/default/sa/client`: the exact principal the policies allow.
    Client,
    /// `spiffe://example.org/ns/team/sa/worker`: allowed by regex only.
    Team,
    /// `spiffe://example.org/ns/default/sa/other`: allowed by no policy.
    Outsider,
}

impl Caller {
    const WITH_CERT: [Caller; 3] = [Caller::Client, Caller::Team, Caller::Outsider];

    fn svid_path(self) -> &'static str {
        match self {
            Caller::NoCert | Caller::TlsNoCert => "",
            Caller::Client => "/ns/default/sa/client",
            Caller::Team => "/ns/team/sa/worker",
            Caller::Outsider => "/ns/default/sa/other",
        }
    }
}

/// The client implementation a caller uses: a column of the table besides the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// gRPC's reference xDS client (grpcio): `grpcio_greeter_client.py`.
    Grpcio,
    /// meshwork's `greeter-client`.
    Meshwork,
}

/// One row of the table: a call and the outcome A36 / A41 prescribe.
struct Row {
    caller: Caller,
    method: &'static str,
    headers: &'static [&'static str],
    expect: Outcome,
}

const fn row(
    caller: Caller,
    method: &'static str,
    headers: &'static [&'static str],
    expect: Outcome,
) -> Row {
    Row {
        caller,
        method,
        headers,
        expect,
    }
}

/// The world the servers and callers share.
struct Mesh {
    xds: XdsTestServer,
    python: PathBuf,
    /// A caller's bootstrap: its SVID in the `default` provider.
    bootstraps: BTreeMap<&'static str, PathBuf>,
    /// The client-side resources that lead callers to each server.
    base: Snapshot,
    table: Vec<String>,
}

impl Mesh {
    /// The `xds:///` target through which `caller` reaches `server`: a cluster in plaintext,
    /// with TLS and no client certificate, or with mTLS, the server's SVID as SAN either way.
    fn target(server: &Server, caller: Caller) -> String {
        let transport = match caller {
            Caller::NoCert => "plain",
            Caller::TlsNoCert => "tls",
            _ => "mtls",
        };
        format!("{transport}-{}", server.kind.id())
    }

    fn add_targets(&mut self, server: &Server) {
        let san = format!("spiffe://{TRUST_DOMAIN}{SERVER_SVID}");
        for caller in [Caller::NoCert, Caller::TlsNoCert, Caller::Client] {
            let target = Self::target(server, caller);
            let cluster = build::eds_cluster(&target);
            let cluster = match caller {
                Caller::NoCert => cluster,
                Caller::TlsNoCert => {
                    without_identity(build::with_upstream_tls(cluster, "default", &[&san]))
                }
                _ => build::with_upstream_tls(cluster, "default", &[&san]),
            };
            let routes = format!("{target}-routes");
            self.base = std::mem::take(&mut self.base)
                .listener(build::api_listener(&target, &routes))
                .route(build::route_config(
                    &routes,
                    vec![build::virtual_host(
                        &target,
                        [target.as_str()],
                        vec![build::route_to("", &target)],
                    )],
                ))
                .cluster(cluster)
                .endpoints(build::endpoints(&target, &[server.addr]));
        }
    }

    /// Serves the client-side resources and, for each server, `inbound` built for it (no
    /// Listener for a server when `None`).
    fn publish(&self, servers: &[Server], inbound: Option<&dyn Fn(&Server) -> Listener>) {
        let mut snapshot = self.base.clone();
        if let Some(inbound) = inbound {
            for server in servers {
                snapshot = snapshot.listener(inbound(server));
            }
        }
        self.xds.set_snapshot(snapshot);
    }

    /// One call by `row.caller` to `server` through `client`: its outcome, and the error's
    /// message; `None` when `client` cannot make this call.
    async fn call(&self, server: &Server, row: &Row, client: Client) -> Option<(Outcome, String)> {
        let bootstrap = match row.caller {
            // Any bootstrap: their clusters present no certificate.
            Caller::NoCert | Caller::TlsNoCert => &self.bootstraps[Caller::Client.svid_path()],
            c => &self.bootstraps[c.svid_path()],
        };
        let target = format!("xds:///{}", Self::target(server, row.caller));
        let mut command = match client {
            Client::Grpcio => {
                let mut c = tokio::process::Command::new(&self.python);
                c.arg(peer_script("grpcio_greeter_client.py"))
                    .args(["--target", &target, "--calls", "1", "--timeout", "5"])
                    .args(["--mtls", "--method", row.method]);
                c
            }
            // greeter-client calls SayHello only.
            Client::Meshwork if row.method != SAY_HELLO => return None,
            Client::Meshwork => {
                let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_greeter-client"));
                c.args(["--target", &target, "--calls", "1", "--wait-secs", "5"]);
                c
            }
        };
        for h in row.headers {
            command.args(["--header", h]);
        }
        let out = within(
            30,
            command
                .env("GRPC_XDS_BOOTSTRAP", bootstrap)
                .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            // greeter-client fails when the target's xDS config is incomplete.
            assert_eq!(
                client,
                Client::Meshwork,
                "grpcio client failed: {stdout}\n{stderr}"
            );
            return Some((
                Outcome::Other("no channel".into()),
                stderr.trim().to_owned(),
            ));
        }
        Some(match client {
            Client::Grpcio => grpcio_outcome(server, &stdout),
            Client::Meshwork => meshwork_outcome(server, &stdout),
        })
    }

    /// Calls until every row's outcome is the expected one on every server, in order, each
    /// within [`SETTLE`] seconds (the config may still be on its way), and records them.
    async fn expect(&mut self, scenario: &str, servers: &mut [Server], rows: &[Row]) {
        for server in servers {
            for (row, client) in rows
                .iter()
                .flat_map(|row| [(row, Client::Grpcio), (row, Client::Meshwork)])
            {
                let deadline = Instant::now() + Duration::from_secs(SETTLE);
                let (got, message) = loop {
                    server.assert_running();
                    let Some((got, message)) = self.call(server, row, client).await else {
                        break (None, String::new());
                    };
                    if got == row.expect || Instant::now() >= deadline {
                        break (Some(got), message);
                    }
                };
                let Some(got) = got else { continue };
                let line = format!(
                    "{scenario:<31} {:<9} {:<8} {:<8} {:<13} {:<18} {:?}: {got} {message}",
                    format!("{:?}", row.caller),
                    format!("{client:?}"),
                    format!("{:?}", server.kind),
                    row.method,
                    row.headers.join(","),
                    row.expect,
                );
                eprintln!("{line}");
                self.table.push(line);
                assert_eq!(
                    got,
                    row.expect,
                    "{scenario}: {:?} calling {} through {client:?} on the {:?} server with \
                     {:?}\n{}",
                    row.caller,
                    row.method,
                    server.kind,
                    row.headers,
                    self.table.join("\n")
                );
            }
        }
    }
}

/// `cluster` (with an `UpstreamTlsContext`) verifying the server but presenting no client
/// certificate: its TLS context without `tls_certificate_provider_instance`.
fn without_identity(mut cluster: Cluster) -> Cluster {
    let socket = cluster.transport_socket.as_mut().expect("a TLS cluster");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &mut socket.config_type else {
        panic!("a typed TLS context: {socket:?}")
    };
    let mut context = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    context
        .common_tls_context
        .as_mut()
        .unwrap()
        .tls_certificate_provider_instance = None;
    *any = build::pack(&context);
    cluster
}

/// The outcome grpcio_greeter_client.py printed (one JSON line).
fn grpcio_outcome(server: &Server, stdout: &str) -> (Outcome, String) {
    let line = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let statuses = v["statuses"].as_object().unwrap();
    let outcome = match statuses.keys().map(String::as_str).collect::<Vec<_>>()[..] {
        ["OK"] => {
            let counts = v["counts"].as_object().unwrap();
            assert!(
                counts.contains_key(server.kind.id()),
                "the wrong server answered: {line}"
            );
            Outcome::Ok
        }
        ["PERMISSION_DENIED"] => Outcome::PermissionDenied,
        ["UNAVAILABLE"] => Outcome::Unavailable,
        ["UNIMPLEMENTED"] => Outcome::Unimplemented,
        _ => Outcome::Other(line.to_owned()),
    };
    (outcome, v["samples"].to_string())
}

/// The outcome greeter-client printed: a line `ID: 1 (100.0%)` per backend, `errors: N`,
/// then one line per distinct error, `Code: message` (tonic's code names).
fn meshwork_outcome(server: &Server, stdout: &str) -> (Outcome, String) {
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    let answered = lines.iter().any(|l| {
        l.strip_prefix(server.kind.id())
            .is_some_and(|r| r.starts_with(": "))
    });
    let errors = lines
        .iter()
        .find_map(|l| l.strip_prefix("errors:"))
        .map(str::trim);
    let samples: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with("errors:"))
        .skip(1)
        .copied()
        .collect();
    let outcome = match (answered, errors, &samples[..]) {
        (true, Some("0"), []) => Outcome::Ok,
        (false, Some("1"), [sample]) => match sample.split(':').next().unwrap_or_default() {
            "PermissionDenied" => Outcome::PermissionDenied,
            "Unavailable" => Outcome::Unavailable,
            "Unimplemented" => Outcome::Unimplemented,
            code => Outcome::Other(code.to_owned()),
        },
        _ => Outcome::Other(stdout.to_owned()),
    };
    (outcome, samples.join("; "))
}

/// The inbound route configuration istiod sends: every path to the application.
fn inbound_routes(server: &Server, routes: Vec<Route>) -> RouteConfiguration {
    let port = server.addr.port();
    build::route_config(
        &format!("inbound|{port}||"),
        vec![build::virtual_host(
            &format!("inbound|http|{port}"),
            ["*"],
            routes,
        )],
    )
}

fn listener(server: &Server, chain: FilterChain) -> Listener {
    build::server_listener(&server.listener, server.addr, vec![chain], None)
}

fn plaintext(server: &Server, filters: Vec<HttpFilter>) -> Listener {
    let routes = inbound_routes(server, vec![build::non_forwarding_route("/")]);
    listener(
        server,
        build::plaintext_chain(
            "inbound-plaintext",
            build::server_hcm_inline(routes, filters),
        ),
    )
}

/// Istio's STRICT PeerAuthentication: client certificates required.
fn strict(server: &Server, filters: Vec<HttpFilter>) -> Listener {
    let routes = inbound_routes(server, vec![build::non_forwarding_route("/")]);
    listener(
        server,
        build::mtls_chain(
            "inbound-mtls",
            build::server_hcm_inline(routes, filters),
            "default",
            true,
        ),
    )
}

fn spiffe(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}{path}")
}

/// ALLOW the principals `exact` (by exact SPIFFE ID) and `regex` (by safe_regex), any
/// request.
fn allow_principals(exact: &[&str], regex: &[&str]) -> HttpFilter {
    let principals = exact
        .iter()
        .map(|p| build::principal_name(build::exact(p)))
        .chain(
            regex
                .iter()
                .map(|r| build::principal_name(build::safe_regex(r))),
        )
        .collect();
    build::rbac_filter(
        Action::Allow,
        [(
            "ns[default]-policy[greeter]-rule[0]",
            build::rbac_policy(vec![build::permission_any()], principals),
        )],
    )
}

const SAY_HELLO: &str = "SayHello";
/// A method the servers do not have. Only calls RBAC refuses or A36 fails use it: grpcio
/// 1.85's xDS-enabled server aborts (a C-core CHECK in pipe.h) on a call to a method it
/// does not serve, where its plain server answers UNIMPLEMENTED.
const AGAIN: &str = "SayHelloAgain";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn xds_servers_agree_with_grpcio_and_the_grfcs() {
    use Caller::*;
    use Outcome::*;

    let venv = peers::venv();
    let dir = temp_dir("server-differential");
    let ca = TestCa::new(TRUST_DOMAIN);
    let xds = XdsTestServer::start().await.unwrap();
    let xds_addr = xds.uri().trim_start_matches("http://").to_owned();

    // A bootstrap per identity; a caller's SVID, or the servers' (which also carries
    // Istio's server Listener template), in the `default` file_watcher provider.
    let bootstrap = |svid_path: &str, node: &str| {
        let files = meshwork_test_support::certs::istio_dir(&ca, svid_path);
        let path = files.join("bootstrap.json");
        let json = format!(
            r#"{{
  "xds_servers": [{{"server_uri": "{xds_addr}", "channel_creds": [{{"type": "insecure"}}],
                    "server_features": ["xds_v3"]}}],
  "node": {{"id": "{node}", "locality": {{}}}},
  "server_listener_resource_name_template": "{INBOUND_TEMPLATE}",
  {}
}}"#,
            meshwork_test_support::certs::file_watcher_providers(&files)
        );
        std::fs::write(&path, json).unwrap();
        path
    };
    let server_bootstrap = bootstrap(
        SERVER_SVID,
        "sidecar~127.0.0.1~greeter.default~cluster.local",
    );
    let mut mesh = Mesh {
        xds,
        python: venv.join("bin/python"),
        bootstraps: Caller::WITH_CERT
            .iter()
            .map(|c| (c.svid_path(), bootstrap(c.svid_path(), "caller")))
            .collect(),
        base: Snapshot::new(),
        table: Vec::new(),
    };

    let mut servers = Vec::new();
    for kind in [ServerKind::Grpcio, ServerKind::Meshwork] {
        let log = dir.join(format!("{kind:?}.log"));
        if let Some(server) = kind.start(&venv, &server_bootstrap, &log).await {
            eprintln!("{kind:?} server on {} (log {})", server.addr, log.display());
            mesh.add_targets(&server);
            servers.push(server);
        }
    }

    // (0) No Listener yet: not serving (A36).
    mesh.publish(&servers, None);
    mesh.expect(
        "(0) no Listener yet",
        &mut servers,
        &[
            row(NoCert, SAY_HELLO, &[], Unavailable),
            row(Client, SAY_HELLO, &[], Unavailable),
        ],
    )
    .await;

    // (a) Plaintext chain, RBAC on a header and a path: alice may call SayHello, anyone with
    // x-role: ops may call anything.
    let header_and_path = |s: &Server| {
        plaintext(
            s,
            vec![build::rbac_filter(
                Action::Allow,
                [
                    (
                        "ns[default]-policy[alice]-rule[0]",
                        build::rbac_policy(
                            vec![build::permission_url_path(build::exact(
                                "/helloworld.Greeter/SayHello",
                            ))],
                            vec![build::principal_header("x-user", "alice")],
                        ),
                    ),
                    (
                        "ns[default]-policy[ops]-rule[0]",
                        build::rbac_policy(
                            vec![build::permission_header("x-role", "ops")],
                            vec![build::principal_any()],
                        ),
                    ),
                ],
            )],
        )
    };
    mesh.publish(&servers, Some(&header_and_path));
    mesh.expect(
        "(a) plaintext, header+path",
        &mut servers,
        &[
            row(NoCert, SAY_HELLO, &["x-user:alice"], Ok),
            row(NoCert, SAY_HELLO, &["x-user:bob"], PermissionDenied),
            row(NoCert, SAY_HELLO, &[], PermissionDenied),
            row(NoCert, AGAIN, &["x-user:alice"], PermissionDenied),
            row(NoCert, SAY_HELLO, &["x-role:ops"], Ok),
            // A plaintext chain takes no TLS: a caller offering its certificate fails.
            row(Client, SAY_HELLO, &["x-user:alice"], Unavailable),
        ],
    )
    .await;

    // (b) STRICT mTLS, RBAC on SPIFFE principals, exact and by regex.
    let principals = |s: &Server| {
        strict(
            s,
            vec![allow_principals(
                &[&spiffe(Client.svid_path())],
                &["spiffe://example\\.org/ns/team/sa/.*"],
            )],
        )
    };
    mesh.publish(&servers, Some(&principals));
    mesh.expect(
        "(b) STRICT mTLS, principals",
        &mut servers,
        &[
            row(Client, SAY_HELLO, &[], Ok),
            row(Team, SAY_HELLO, &[], Ok),
            row(Outsider, SAY_HELLO, &[], PermissionDenied),
            row(NoCert, SAY_HELLO, &[], Unavailable),
            row(TlsNoCert, SAY_HELLO, &[], Unavailable),
        ],
    )
    .await;

    // (b') TLS with client certificates optional (require_client_certificate false): a
    // caller without one gets through the handshake, and has no principal for RBAC (A41).
    let optional = |s: &Server| {
        let routes = inbound_routes(s, vec![build::non_forwarding_route("/")]);
        listener(
            s,
            build::mtls_chain(
                "inbound-tls",
                build::server_hcm_inline(
                    routes,
                    vec![allow_principals(&[&spiffe(Client.svid_path())], &[])],
                ),
                "default",
                false,
            ),
        )
    };
    mesh.publish(&servers, Some(&optional));
    mesh.expect(
        "(b') TLS, client cert optional",
        &mut servers,
        &[
            row(Client, SAY_HELLO, &[], Ok),
            row(TlsNoCert, SAY_HELLO, &[], PermissionDenied),
            row(Outsider, SAY_HELLO, &[], PermissionDenied),
            row(NoCert, SAY_HELLO, &[], Unavailable),
        ],
    )
    .await;

    // (c) Istio's order: the DENY filter, then the ALLOW one. DENY wins for team callers
    // and for anyone sending x-user: mallory, though ALLOW admits every SVID.
    let deny_then_allow = |s: &Server| {
        strict(
            s,
            vec![
                build::rbac_filter(
                    Action::Deny,
                    [
                        (
                            "ns[default]-policy[deny-team]-rule[0]",
                            build::rbac_policy(
                                vec![build::permission_any()],
                                vec![build::principal_name(build::safe_regex(
                                    "spiffe://example\\.org/ns/team/.*",
                                ))],
                            ),
                        ),
                        (
                            "ns[default]-policy[deny-mallory]-rule[0]",
                            build::rbac_policy(
                                vec![build::permission_header("x-user", "mallory")],
                                vec![build::principal_any()],
                            ),
                        ),
                    ],
                ),
                allow_principals(&[], &["spiffe://example\\.org/.*"]),
            ],
        )
    };
    mesh.publish(&servers, Some(&deny_then_allow));
    mesh.expect(
        "(c) DENY then ALLOW",
        &mut servers,
        &[
            row(Client, SAY_HELLO, &[], Ok),
            row(Outsider, SAY_HELLO, &[], Ok),
            row(Team, SAY_HELLO, &[], PermissionDenied),
            row(Client, SAY_HELLO, &["x-user:mallory"], PermissionDenied),
        ],
    )
    .await;

    // (d) A route whose action is not non_forwarding_action fails its calls (A36); the
    // others are served.
    let forwarding_route = |s: &Server| {
        let routes = inbound_routes(
            s,
            vec![
                build::route_to("/helloworld.Greeter/SayHelloAgain", "elsewhere"),
                build::non_forwarding_route("/"),
            ],
        );
        listener(
            s,
            build::plaintext_chain(
                "inbound-plaintext",
                build::server_hcm_inline(routes, vec![]),
            ),
        )
    };
    mesh.publish(&servers, Some(&forwarding_route));
    mesh.expect(
        "(d) forwarding route",
        &mut servers,
        &[
            row(NoCert, SAY_HELLO, &[], Ok),
            row(NoCert, AGAIN, &[], Unavailable),
        ],
    )
    .await;

    // (e) The policy changes live, nothing restarts: allowed, denied, allowed again.
    mesh.publish(&servers, Some(&principals));
    mesh.expect(
        "(e) live: allowed",
        &mut servers,
        &[row(Client, SAY_HELLO, &[], Ok)],
    )
    .await;
    let only_other = |s: &Server| {
        strict(
            s,
            vec![allow_principals(&[&spiffe(Outsider.svid_path())], &[])],
        )
    };
    mesh.publish(&servers, Some(&only_other));
    mesh.expect(
        "(e) live: denied",
        &mut servers,
        &[
            row(Client, SAY_HELLO, &[], PermissionDenied),
            row(Outsider, SAY_HELLO, &[], Ok),
        ],
    )
    .await;
    mesh.publish(&servers, Some(&principals));
    mesh.expect(
        "(e) live: allowed again",
        &mut servers,
        &[row(Client, SAY_HELLO, &[], Ok)],
    )
    .await;

    // (f) The Listener is deleted: the server stops serving (A36), and serves again once
    // it is back.
    mesh.publish(&servers, None);
    mesh.expect(
        "(f) Listener deleted",
        &mut servers,
        &[
            row(Client, SAY_HELLO, &[], Unavailable),
            row(NoCert, SAY_HELLO, &[], Unavailable),
        ],
    )
    .await;
    mesh.publish(&servers, Some(&principals));
    mesh.expect(
        "(f) Listener back",
        &mut servers,
        &[row(Client, SAY_HELLO, &[], Ok)],
    )
    .await;
}
