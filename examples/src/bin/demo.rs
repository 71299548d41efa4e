//! The README's main command: `cargo run --release -p meshwork-examples --bin demo`.
//!
//! With no outside services, it starts an embedded ADS control plane (meshwork-xds's test
//! server), an embedded CA that issues SPIFFE SVIDs, three `helloworld.Greeter` backends
//! served over SPIFFE mTLS with an authorization policy, and a client whose `MeshChannel`
//! follows `xds:///greeter`. Then it narrates what the mesh does: who talks to whom, the load
//! spread, a 90/10 canary shifted live to 50/50, a flaky backend hidden by retries, a failing
//! backend ejected and returning, the circuit breaker shedding load, an unauthorised caller
//! refused, a server whose listener, mTLS and authorization come from the control plane
//! (changed live: a caller denied and allowed again, STRICT mTLS to PERMISSIVE and back, the
//! Listener deleted and sent again), and the client's view of every xDS resource.
//!
//! Every call is traced (OpenTelemetry), each simulated service (the frontend, the backends of
//! greeter-stable and greeter-canary, the intruder) under its own `service.name`: with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans and metrics are exported over OTLP/gRPC;
//! otherwise spans are kept in memory and the demo ends by printing the trace of one retried
//! call (`Sent` -> `Attempt`s -> `Recv`), naming the service of each span.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers,
};
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, Route, RouteConfiguration, route};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{MtlsConfig, StaticSource};
use meshwork_examples::greeter::{Behaviour, Greeter};
use meshwork_examples::helloworld::HelloRequest;
use meshwork_examples::helloworld::greeter_client::GreeterClient;
use meshwork_examples::inbound::{Inbound, LISTENER_NAME_TEMPLATE, MtlsMode};
use meshwork_examples::otel::{Pipelines, ServiceSpan, Sink};
use meshwork_examples::tally::Tally;
use meshwork_grpc::core::inbound::{AuthorizationPolicy, Principal, Rule};
use meshwork_grpc::core::telemetry::Telemetry;
use meshwork_grpc::{MeshChannel, MeshChannelOptions, MeshServer};
use meshwork_xds::bootstrap::Bootstrap;
use meshwork_xds::client::XdsClient;
use meshwork_xds::server::{Snapshot, XdsTestServer, build, type_url};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::SpanData;
use tokio::sync::mpsc::UnboundedReceiver;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The meshwork demo: a service mesh inside the process, no sidecar.
///
/// With no outside services, it starts an embedded xDS control plane, a CA that issues
/// SPIFFE SVIDs, three helloworld.Greeter backends behind SPIFFE mTLS and an authorization
/// policy, and a client following xds:///greeter; then it narrates what the mesh does: the
/// load spread, a canary shifted live, retries, ejection, circuit breaking, an unauthorised
/// caller refused, a server driven by the control plane (its RBAC and mTLS mode changed
/// live), the config dump and the trace of one retried call. It has no options of its own.
#[derive(Debug, clap::Parser)]
#[command(
    name = "demo",
    version,
    after_help = "\
Environment:
  OTEL_EXPORTER_OTLP_ENDPOINT  export the traces and metrics over OTLP/gRPC to this
                               endpoint (the exporter reads the other OTEL_EXPORTER_OTLP_*
                               variables too); unset, the spans are kept in memory and the
                               demo ends by printing one retried call's trace"
)]
struct Cli {}

const TARGET: &str = "greeter";
const TRUST_DOMAIN: &str = "demo.local";
const FRONTEND: &str = "/ns/shop/sa/frontend";
const GREETER: &str = "/ns/shop/sa/greeter";
const INTRUDER: &str = "/ns/shop/sa/intruder";
/// The xDS-driven server's target, and the one of its plaintext door.
const XDS_TARGET: &str = "greeter-xds";
const PLAINTEXT_TARGET: &str = "greeter-xds-plaintext";
/// The address whose connections take the plaintext chain in PERMISSIVE mode.
const PLAINTEXT_DOOR: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

fn id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}{path}")
}

/// The route: `stable`/`canary` percent between the two clusters, retrying UNAVAILABLE
/// twice (a retry goes to another endpoint when there is one).
fn routes(stable: u32, canary: u32) -> RouteConfiguration {
    let mut route: Route = build::route_weighted(
        "",
        &[("greeter-stable", stable), ("greeter-canary", canary)],
    );
    if let Some(route::Action::Route(action)) = &mut route.action {
        action.retry_policy = Some(RetryPolicy {
            retry_on: "unavailable".into(),
            num_retries: Some(UInt32Value { value: 2 }),
            ..Default::default()
        });
    }
    build::route_config(
        "greeter-routes",
        vec![build::virtual_host("greeter", [TARGET], vec![route])],
    )
}

/// An EDS cluster over SPIFFE mTLS that expects the greeters' SVID.
fn mtls_cluster(name: &str) -> Cluster {
    build::with_upstream_tls(build::eds_cluster(name), "default", &[&id(GREETER)])
}

/// The stable cluster also has outlier detection (3 consecutive failures eject an endpoint
/// for 2 s, at most half of them) and a circuit breaker (8 requests in flight).
fn stable_cluster() -> Cluster {
    let mut cluster = mtls_cluster("greeter-stable");
    let secs = |seconds| Some(PbDuration { seconds, nanos: 0 });
    cluster.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 3 }),
        interval: secs(1),
        base_ejection_time: secs(2),
        max_ejection_percent: Some(UInt32Value { value: 50 }),
        ..Default::default()
    });
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_requests: Some(UInt32Value { value: 8 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    cluster
}

/// Starts a greeter backend over mTLS with the greeters' SVID; only the frontend may call.
async fn backend(
    ca: &TestCa,
    greeter: &Greeter,
    telemetry: Telemetry,
) -> Result<SocketAddr, Error> {
    let identity = MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid(GREETER)),
        ca.bundles(),
    )));
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any().principal(Principal::Id(id(FRONTEND).parse()?)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = MeshServer::new(identity)
        .telemetry(telemetry)
        .policy(policy)
        .add_service(greeter.service());
    tokio::spawn(server.serve(listener));
    Ok(addr)
}

/// Writes the SVID of `spiffe_path`, its key and the roots into `dir` as Istio's agent
/// would, and a bootstrap for node `node` whose `default` certificate provider watches them
/// and whose server Listeners are named as istiod names them.
fn write_bootstrap(
    dir: &Path,
    ca: &TestCa,
    spiffe_path: &str,
    node: &str,
    xds_uri: &str,
) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir)?;
    let minted = ca.mint(spiffe_path, meshwork_core::identity::testing::Flaw::None);
    std::fs::write(dir.join("cert-chain.pem"), &minted.cert_pem)?;
    std::fs::write(dir.join("key.pem"), &minted.key_pem)?;
    std::fs::write(dir.join("root-cert.pem"), ca.root_pem())?;
    let d = dir.display();
    let json = format!(
        r#"{{
  "xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}],
                    "server_features": ["xds_v3"]}}],
  "node": {{"id": "{node}"}},
  "server_listener_resource_name_template": "{LISTENER_NAME_TEMPLATE}",
  "certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{
      "certificate_file": "{d}/cert-chain.pem", "private_key_file": "{d}/key.pem",
      "ca_certificate_file": "{d}/root-cert.pem", "refresh_interval": "600s"}}}}}}
}}"#,
        xds_uri.trim_start_matches("http://")
    );
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, json)?;
    Ok(path)
}

/// One call's outcome: the reply, or the status code and message.
async fn outcome(client: &GreeterClient<MeshChannel>) -> String {
    let tally = calls(client, 1).await;
    tally
        .counts
        .keys()
        .next()
        .map(|backend| format!("answered by {backend}"))
        .or_else(|| tally.error_samples.first().cloned())
        .unwrap_or_default()
}

/// Calls until the outcome starts with `expected` (the server follows its Listener within
/// milliseconds), for at most 5 s; the last outcome either way.
async fn outcome_becomes(client: &GreeterClient<MeshChannel>, expected: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = outcome(client).await;
        if got.starts_with(expected) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The callers of section 8, one per simulated service.
struct Callers {
    frontend: GreeterClient<MeshChannel>,
    intruder: GreeterClient<MeshChannel>,
    plaintext: GreeterClient<MeshChannel>,
}

impl Callers {
    async fn print(&self, expect_frontend: &str, expect_plaintext: &str) {
        let frontend = outcome_becomes(&self.frontend, expect_frontend).await;
        let plaintext = outcome_becomes(&self.plaintext, expect_plaintext).await;
        println!("     frontend (mTLS):  {frontend}");
        println!("     intruder (mTLS):  {}", outcome(&self.intruder).await);
        println!("     legacy (plaintext): {plaintext}");
    }
}

/// Section 8: a server whose listener, mTLS and authorization come from the control plane
/// (gRFC A36, A29, A41), and the control plane changing them live.
async fn xds_server(
    ca: &TestCa,
    dir: &Path,
    control_plane: &XdsTestServer,
    frontend: (&XdsClient, Telemetry),
    intruder: (MtlsConfig, Telemetry),
    otel: &mut Pipelines,
) -> Result<(), Error> {
    let d = Greeter::new("greeter-d");
    // All addresses: connections to 127.0.0.2 take the plaintext chain in PERMISSIVE mode.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let address = listener.local_addr()?;
    let port = address.port();
    let bootstrap = Bootstrap::from_file(write_bootstrap(
        &dir.join("greeter-d"),
        ca,
        GREETER,
        "greeter-d.shop",
        &control_plane.uri(),
    )?)?;
    let mut inbound = Inbound {
        name: bootstrap.server_listener_resource_name(address)?,
        address,
        mode: MtlsMode::Strict,
        deny: vec![id(INTRUDER)],
        allow: vec![id(FRONTEND)],
        plaintext_address: PLAINTEXT_DOOR,
    };
    let mtls_to: SocketAddr = ([127, 0, 0, 1], port).into();
    let plaintext_to = SocketAddr::new(PLAINTEXT_DOOR, port);
    control_plane.update(|s| {
        s.insert_listener(inbound.listener());
        for (name, cluster, to) in [
            (XDS_TARGET, mtls_cluster(XDS_TARGET), mtls_to),
            (
                PLAINTEXT_TARGET,
                build::eds_cluster(PLAINTEXT_TARGET),
                plaintext_to,
            ),
        ] {
            let routes = format!("{name}-routes");
            s.insert_listener(build::api_listener(name, &routes));
            s.insert_route(build::route_config(
                &routes,
                vec![build::virtual_host(
                    name,
                    [name],
                    vec![build::route_to("", name)],
                )],
            ));
            s.insert_cluster(cluster);
            s.insert_endpoints(build::endpoints(name, &[to]));
        }
    });

    let (states_tx, mut states) = tokio::sync::mpsc::unbounded_channel();
    let server = MeshServer::from_xds(&XdsClient::builder(&bootstrap)?.start())
        .telemetry(otel.service("greeter-xds", d.id())?)
        .on_serving_state(move |state| {
            let _ = states_tx.send(state.to_string());
        })
        .add_service(d.service());
    tokio::spawn(server.serve(listener));
    println!(
        "\n8. The control plane drives a server too (gRFC A36, A29, A41): greeter-d listens on {address}"
    );
    println!(
        "   and takes its filter chains, mTLS and RBAC from Listener {:?}",
        inbound.name
    );
    // Each state the server reports, until one starts with `expected` (at most 10 s).
    let states_until = async |states: &mut UnboundedReceiver<String>, expected: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(state)) = tokio::time::timeout_at(deadline, states.recv()).await {
            println!("   greeter-d serving state: {state}");
            if state.starts_with(expected) {
                break;
            }
        }
    };
    states_until(&mut states, "serving").await;
    let (frontend_client, frontend_telemetry) = frontend;
    let channel = async |target: &str, options: MeshChannelOptions| {
        MeshChannel::from_xds(frontend_client, &format!("xds:///{target}"), options)
            .await
            .map(GreeterClient::new)
    };
    let callers = Callers {
        frontend: channel(
            XDS_TARGET,
            MeshChannelOptions::new().telemetry(frontend_telemetry),
        )
        .await?,
        intruder: channel(
            XDS_TARGET,
            MeshChannelOptions::new()
                .mtls(intruder.0)
                .telemetry(intruder.1),
        )
        .await?,
        plaintext: channel(
            PLAINTEXT_TARGET,
            MeshChannelOptions::new().telemetry(otel.service("legacy", "legacy-1")?),
        )
        .await?,
    };
    let answered = format!("answered by {}", d.id());
    println!(
        "   STRICT mTLS; RBAC: DENY {}, then ALLOW {}:",
        id(INTRUDER),
        id(FRONTEND)
    );
    callers.print(&answered, "Unavailable").await;

    inbound.deny.push(id(FRONTEND));
    control_plane.update(|s| {
        s.insert_listener(inbound.listener());
    });
    println!(
        "   the control plane adds {} to the DENY policy:",
        id(FRONTEND)
    );
    println!(
        "     frontend (mTLS):  {}",
        outcome_becomes(&callers.frontend, "PermissionDenied").await
    );
    inbound.deny.pop();
    control_plane.update(|s| {
        s.insert_listener(inbound.listener());
    });
    println!("   and takes it out again:");
    println!(
        "     frontend (mTLS):  {}",
        outcome_becomes(&callers.frontend, &answered).await
    );

    inbound.mode = MtlsMode::Permissive;
    control_plane.update(|s| {
        s.insert_listener(inbound.listener());
    });
    println!(
        "   PERMISSIVE: a plaintext chain beside the mTLS one, for connections to {PLAINTEXT_DOOR}"
    );
    println!("   (a gRPC server chooses its chain before any byte arrives, by address):");
    callers.print(&answered, &answered).await;
    inbound.mode = MtlsMode::Strict;
    control_plane.update(|s| {
        s.insert_listener(inbound.listener());
    });
    println!("   back to STRICT; the plaintext chain's connections drain:");
    callers.print(&answered, "Unavailable").await;

    control_plane.update(|s| {
        s.remove(type_url::LISTENER, &inbound.name);
    });
    println!("   the control plane deletes the Listener:");
    states_until(&mut states, "not serving").await;
    println!(
        "     frontend (mTLS):  {}",
        outcome_becomes(&callers.frontend, "Unavailable").await
    );
    control_plane.update(|s| {
        s.insert_listener(inbound.listener());
    });
    println!("   and sends it again:");
    states_until(&mut states, "serving").await;
    println!(
        "     frontend (mTLS):  {}",
        outcome_becomes(&callers.frontend, &answered).await
    );
    Ok(())
}

/// `n` calls one after another.
async fn calls(client: &GreeterClient<MeshChannel>, n: u32) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        let mut client = client.clone();
        match client
            .say_hello(HelloRequest {
                name: "demo".into(),
            })
            .await
        {
            Ok(r) => tally.reply(&r.into_inner().message),
            Err(s) => tally.error(format!("{:?}: {}", s.code(), s.message())),
        }
    }
    tally
}

/// `n` calls all at once.
async fn concurrent_calls(client: &GreeterClient<MeshChannel>, n: u32) -> Tally {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut client = client.clone();
        tasks.spawn(async move {
            client
                .say_hello(HelloRequest {
                    name: "demo".into(),
                })
                .await
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(r)) => tally.reply(&r.into_inner().message),
            Ok(Err(s)) => tally.error(format!("{:?}: {}", s.code(), s.message())),
            Err(e) => tally.error(e.to_string()),
        }
    }
    tally
}

fn spread(t: &Tally) -> String {
    let mut parts: Vec<String> = t.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    parts.push(format!("errors {}", t.errors));
    parts.join(", ")
}

fn calls_to(g: &Greeter) -> u64 {
    g.calls().0
}

/// Section 10 (in memory) or the exporters' final flush (OTLP).
async fn finish_telemetry(otel: Pipelines) -> Result<(), Error> {
    match otel.sink() {
        Sink::Otlp => {
            // The SDK's flush blocks: off the runtime's threads.
            match tokio::task::spawn_blocking(move || otel.shutdown()).await? {
                Ok(()) => println!(
                    "\n10. Traces and metrics were exported over OTLP, each service under its own service.name."
                ),
                // The demo's story does not depend on the collector being there.
                Err(e) => println!("\n10. Exporting over OTLP failed: {e}: {}", chain(&e)),
            }
        }
        Sink::Memory => {
            let spans = otel.spans()?;
            print_traces(&spans);
        }
    }
    Ok(())
}

/// The causes below an error, for one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    causes.join(": ")
}

/// The spans of a run, by parent.
struct Tree<'a> {
    children: HashMap<(TraceId, SpanId), Vec<&'a ServiceSpan>>,
}

impl<'a> Tree<'a> {
    fn new(spans: &'a [ServiceSpan]) -> Self {
        let mut children: HashMap<(TraceId, SpanId), Vec<&'a ServiceSpan>> = HashMap::new();
        for s in spans {
            children
                .entry((s.span.span_context.trace_id(), s.span.parent_span_id))
                .or_default()
                .push(s);
        }
        for list in children.values_mut() {
            list.sort_by_key(|s| s.span.start_time);
        }
        Self { children }
    }

    fn kids(&self, s: &SpanData) -> &[&'a ServiceSpan] {
        self.children
            .get(&(s.span_context.trace_id(), s.span_context.span_id()))
            .map_or(&[], Vec::as_slice)
    }

    fn print(&self, s: &ServiceSpan, depth: usize) {
        let span = &s.span;
        let status = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "rpc.grpc.status_code")
            .map(|kv| format!(", grpc-status {}", kv.value))
            .unwrap_or_default();
        let took = span
            .end_time
            .duration_since(span.start_time)
            .unwrap_or_default();
        println!(
            "   {:indent$}{} ({:?}{status}, {took:.1?}) service {} ({})",
            "",
            span.name,
            span.span_kind,
            s.service,
            s.instance,
            indent = 2 * depth + 2
        );
        for child in self.kids(span) {
            self.print(child, depth + 1);
        }
    }
}

/// Section 10: how much was traced, by which service, and the tree of one retried call.
fn print_traces(spans: &[ServiceSpan]) {
    let tree = Tree::new(spans);
    let traces: std::collections::HashSet<TraceId> = spans
        .iter()
        .map(|s| s.span.span_context.trace_id())
        .collect();
    let mut by_service: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in spans {
        *by_service.entry(s.service.as_str()).or_default() += 1;
    }
    println!(
        "\n10. Traces (OpenTelemetry, kept in memory; set OTEL_EXPORTER_OTLP_ENDPOINT to export):"
    );
    println!("   {} traces, {} spans", traces.len(), spans.len());
    let services: Vec<String> = by_service
        .iter()
        .map(|(service, n)| format!("{service} {n}"))
        .collect();
    println!("   spans by service.name: {}", services.join(", "));
    // A call whose first attempt failed and whose every attempt reached a server.
    let retried = spans
        .iter()
        .filter(|s| s.span.name.starts_with("Sent."))
        .find(|s| {
            let attempts = tree.kids(&s.span);
            attempts.len() >= 2 && attempts.iter().all(|a| !tree.kids(&a.span).is_empty())
        });
    let Some(call) = retried else {
        println!("   (no retried call was traced)");
        return;
    };
    println!(
        "   a retried call, trace {}:",
        call.span.span_context.trace_id()
    );
    tree.print(call, 0);
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    Cli::parse();
    let started = Instant::now();
    // Each simulated service records through its own pipeline (its own service.name).
    let mut otel = Pipelines::new(Sink::from_env());
    println!("meshwork demo: a service mesh inside the process, no sidecar");
    println!(
        "  TLS provider: {} (fips mode: {})",
        meshwork_core::crypto::provider_name(),
        meshwork_core::crypto::is_fips()
    );

    // The mesh's pieces: a CA, three backends, a control plane.
    let ca = TestCa::new(TRUST_DOMAIN);
    let (a, b, c) = (
        Greeter::new("greeter-a"),
        Greeter::new("greeter-b"),
        Greeter::new("greeter-c"),
    );
    let (addr_a, addr_b, addr_c) = (
        backend(&ca, &a, otel.service("greeter-stable", a.id())?).await?,
        backend(&ca, &b, otel.service("greeter-stable", b.id())?).await?,
        backend(&ca, &c, otel.service("greeter-canary", c.id())?).await?,
    );
    let control_plane = XdsTestServer::start().await?;
    control_plane.set_snapshot(
        Snapshot::new()
            .listener(build::api_listener(TARGET, "greeter-routes"))
            .route(routes(90, 10))
            .cluster(stable_cluster())
            .cluster(mtls_cluster("greeter-canary"))
            .endpoints(build::endpoints("greeter-stable", &[addr_a, addr_b]))
            .endpoints(build::endpoints("greeter-canary", &[addr_c])),
    );
    let dir = std::env::temp_dir().join(format!("meshwork-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bootstrap = Bootstrap::from_file(write_bootstrap(
        &dir.join("frontend"),
        &ca,
        FRONTEND,
        "frontend-1.shop",
        &control_plane.uri(),
    )?)?;
    println!(
        "\n1. The mesh: a control plane on {}, a CA for trust domain {TRUST_DOMAIN},",
        control_plane.uri()
    );
    println!(
        "   greeter-stable = greeter-a {addr_a}, greeter-b {addr_b}; greeter-canary = greeter-c {addr_c}"
    );

    let client = XdsClient::builder(&bootstrap)?.start();
    let frontend_telemetry = otel.service("frontend", "frontend-1")?;
    let t0 = Instant::now();
    let channel = MeshChannel::from_xds(
        &client,
        &format!("xds:///{TARGET}"),
        MeshChannelOptions::new().telemetry(frontend_telemetry.clone()),
    )
    .await?;
    let greeter = GreeterClient::new(channel);
    println!(
        "   the frontend's MeshChannel resolved xds:///{TARGET} (listener, routes, 2 clusters, endpoints) in {:?}",
        t0.elapsed()
    );

    let tally = calls(&greeter, 200).await;
    println!("\n2. Who talks to whom (SPIFFE mTLS both ways, no sidecar):");
    for g in [&a, &b, &c] {
        println!(
            "   {} ({}) saw callers {:?}",
            g.id(),
            id(GREETER),
            g.callers()
        );
    }
    println!(
        "   200 calls at greeter-stable 90% / greeter-canary 10%: {}",
        spread(&tally)
    );

    control_plane.update(|s| {
        s.insert_route(routes(50, 50));
    });
    // The client follows the change within milliseconds; call until the spread shows it.
    let mut tally = calls(&greeter, 200).await;
    for _ in 0..20 {
        if tally.counts.get("greeter-c").copied().unwrap_or(0) > 60 {
            break;
        }
        tally = calls(&greeter, 200).await;
    }
    println!(
        "\n3. The control plane shifts the canary live to greeter-stable 50% / greeter-canary 50%:"
    );
    println!("   200 calls: {}", spread(&tally));

    b.set_behaviour(Behaviour::Flaky);
    let failed_before = b.calls().1;
    let tally = calls(&greeter, 300).await;
    println!("\n4. greeter-b turns flaky (fails one call in three with UNAVAILABLE):");
    println!(
        "   greeter-b failed {} calls on purpose; the route retries UNAVAILABLE on another endpoint;",
        b.calls().1 - failed_before
    );
    println!("   the caller saw: {}", spread(&tally));
    b.set_behaviour(Behaviour::Healthy);

    a.set_behaviour(Behaviour::Failing);
    let before = calls_to(&a);
    let first = calls(&greeter, 100).await;
    let during_ejection = calls_to(&a);
    let second = calls(&greeter, 100).await;
    let after_second = calls_to(&a);
    println!(
        "\n5. greeter-a starts failing every call; outlier detection (3 consecutive failures) ejects it:"
    );
    println!(
        "   first 100 calls: greeter-a got {} (the caller saw: {})",
        during_ejection - before,
        spread(&first)
    );
    println!(
        "   next 100 calls:  greeter-a got {} (ejected; the caller saw: {})",
        after_second - during_ejection,
        spread(&second)
    );
    a.set_behaviour(Behaviour::Healthy);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let back = calls(&greeter, 100).await;
    println!(
        "   greeter-a recovers; after its 2 s ejection it is back: {}",
        spread(&back)
    );

    a.set_delay(Duration::from_millis(300));
    b.set_delay(Duration::from_millis(300));
    c.set_delay(Duration::from_millis(300));
    let burst = concurrent_calls(&greeter, 60).await;
    a.set_delay(Duration::ZERO);
    b.set_delay(Duration::ZERO);
    c.set_delay(Duration::ZERO);
    println!("\n6. The backends slow down to 300 ms and 60 calls arrive at once; greeter-stable's");
    println!(
        "   circuit breaker (8 requests in flight) sheds the excess at once instead of queueing:"
    );
    println!(
        "   answered {}, shed with UNAVAILABLE {}",
        burst.counts.values().sum::<u64>(),
        burst.errors
    );
    if let Some(sample) = burst.error_samples.first() {
        println!("   e.g. {sample}");
    }

    let intruder_identity = MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid(INTRUDER)),
        ca.bundles(),
    )));
    let intruder_telemetry = otel.service("intruder", "intruder-1")?;
    let intruder = GreeterClient::new(
        MeshChannel::from_xds(
            &client,
            &format!("xds:///{TARGET}"),
            MeshChannelOptions::new()
                .mtls(intruder_identity.clone())
                .telemetry(intruder_telemetry.clone()),
        )
        .await?,
    );
    let refused = calls(&intruder, 1).await;
    println!(
        "\n7. {} calls with a valid SVID from the same CA, but the backends' policy",
        id(INTRUDER)
    );
    println!("   allows only {}:", id(FRONTEND));
    println!(
        "   refused: {}",
        refused
            .error_samples
            .first()
            .map_or("not refused!", String::as_str)
    );

    xds_server(
        &ca,
        &dir,
        &control_plane,
        (&client, frontend_telemetry),
        (intruder_identity, intruder_telemetry),
        &mut otel,
    )
    .await?;

    println!(
        "\n9. The frontend's view of every xDS resource (the config dump, as xds-dump prints it):"
    );
    for row in client.dump().await {
        let kind = row.type_url.rsplit('.').next().unwrap_or(row.type_url);
        println!(
            "   {:<22} {:<16} version {:<3} {}",
            kind,
            row.name,
            row.version.as_deref().unwrap_or("-"),
            row.status
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    finish_telemetry(otel).await?;
    println!("\ndone in {:.1?}", started.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["demo"]).is_ok());
        assert!(Cli::try_parse_from(["demo", "--fast"]).is_err());
    }
}
