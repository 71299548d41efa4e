//! What one EDS update costs the client, end to end (issue #16, the churn target): an
//! `XdsTestServer` in a child process (this binary again) pushes updates of the one cluster
//! a resolved target routes to, and the client process's CPU time (the sum of its threads'
//! run time, `/proc/self/task/*/schedstat`, in nanoseconds) and its context switches are
//! counted over a run of updates, less the same wall time with none.
//!
//! The client is the engine both adapters use (`client::Engine::resolve`) with an
//! in-memory connector, so what is counted is the update's whole path through the client —
//! the ADS stream's decode and ACK, the xDS client's cache, the target's walk, its config,
//! the cluster set, the balancer's new pick table — without any TLS handshake. Two kinds of
//! update, as the load harness's `--churn-kind`:
//!
//! - `weight`: two endpoints in localities of their own whose weights swap;
//! - `endpoint`: a second endpoint added, then removed (a connection made and dropped: here
//!   an in-memory service).
//!
//! Each update is pushed once the client ACKed the one before and a gap has passed, so
//! updates are not coalesced and each crosses the whole path alone, as at a churn rate of
//! tens per second.
//!
//! Run: `cargo bench -p meshwork-benches --bench update_cost [-- UPDATES [GAP_MS]]`
//! (default 500 updates, 4 ms apart).

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use http_body_util::Full;
use meshwork_benches::child_server::{self, ChildServer};
use meshwork_benches::xds_fixtures::two_localities;
use meshwork_grpc::core::client::{ClientOptions, Engine};
use meshwork_grpc::core::config::Cluster;
use meshwork_grpc::core::retry::RetryBody;
use meshwork_grpc::core::telemetry::Telemetry;
use meshwork_xds::client::XdsClient;
use meshwork_xds::server::{Snapshot, build, type_url};
use tower::service_fn;

/// Set in the child process that serves the cluster.
const SERVER_ROLE: &str = "MESHWORK_UPDATE_COST_SERVE";
const TARGET: &str = "echo";
const CLUSTER: &str = "echo-cluster";
/// How long the child waits for each ACK before giving up on it.
const ACK_WAIT: Duration = Duration::from_secs(5);

fn base() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

fn extra() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], 9))
}

/// `base` and `extra`, each in a locality of its own with these weights.
fn weighted(base_weight: u32, extra_weight: u32) -> ClusterLoadAssignment {
    two_localities(CLUSTER, [base(), extra()], [base_weight, extra_weight])
}

/// Update number `n` of a run of `kind`.
fn nth(kind: &str, n: u64) -> ClusterLoadAssignment {
    match (kind, n % 2) {
        ("weight", 0) => weighted(1, 4),
        ("weight", _) => weighted(4, 1),
        ("endpoint", 0) => build::endpoints(CLUSTER, &[base(), extra()]),
        ("endpoint", _) => build::endpoints(CLUSTER, &[base()]),
        _ => panic!("the kinds are weight and endpoint, not {kind}"),
    }
}

fn main() {
    if std::env::var_os(SERVER_ROLE).is_some() {
        serve();
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let updates: u64 = args.first().map_or(500, |a| a.parse().expect("UPDATES"));
    let gap_ms: u64 = args.get(1).map_or(4, |a| a.parse().expect("GAP_MS"));
    measure(updates, gap_ms);
}

/// The child process: serve the target, then run the updates each line of stdin asks for
/// (`KIND COUNT GAP_MS`), answering `done ACKED` after each run; stop when stdin closes.
fn serve() {
    let mut snapshot = Snapshot::new();
    snapshot.insert_listener(build::api_listener(TARGET, TARGET));
    snapshot.insert_route(build::route_config(
        TARGET,
        vec![build::virtual_host(
            "vh",
            [TARGET],
            vec![build::route_to("", CLUSTER)],
        )],
    ));
    snapshot.insert_cluster(build::eds_cluster(CLUSTER));
    snapshot.insert_endpoints(weighted(1, 1));
    child_server::serve(snapshot, |server| async move {
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = lines.recv().await {
            let mut words = line.split_whitespace();
            let kind = words.next().expect("a kind").to_owned();
            let count: u64 = words.next().expect("a count").parse().expect("a count");
            let gap =
                Duration::from_millis(words.next().expect("a gap").parse().expect("a gap in ms"));
            let mut acked = 0;
            for n in 0..count {
                server.update(|s| {
                    s.insert_endpoints(nth(&kind, n));
                });
                let version = server.version(type_url::ENDPOINTS);
                if tokio::time::timeout(
                    ACK_WAIT,
                    server.wait_for_ack(type_url::ENDPOINTS, &version),
                )
                .await
                .is_ok()
                {
                    acked += 1;
                }
                tokio::time::sleep(gap).await;
            }
            println!("done {acked}");
            std::io::stdout().flush().expect("stdout");
        }
        drop(server);
    });
}

/// This process's threads' run time so far, and their context switches (voluntary and
/// not).
fn process_counters() -> (Duration, u64) {
    let mut run = Duration::ZERO;
    let mut switches = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (run, switches);
    };
    for task in tasks.flatten() {
        let path = task.path();
        if let Ok(stat) = std::fs::read_to_string(path.join("schedstat"))
            && let Some(ns) = stat.split_whitespace().next().and_then(|n| n.parse().ok())
        {
            run += Duration::from_nanos(ns);
        }
        if let Ok(status) = std::fs::read_to_string(path.join("status")) {
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (run, switches)
}

fn measure(updates: u64, gap_ms: u64) {
    let mut server = ChildServer::spawn(SERVER_ROLE, "1");
    let mut line = String::new();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (engine, _outbound) = runtime.block_on(async {
        let bootstrap = server.bootstrap("update-cost-bench");
        let client = XdsClient::builder(&bootstrap)
            .expect("a client")
            .without_fail_static()
            .start();
        let engine = Engine::new(
            ClientOptions::new().telemetry(Telemetry::disabled()),
            Some(client),
            |_upstream| {
                |_c: &Arc<Cluster>, _a: SocketAddr| {
                    service_fn(|_req: http::Request<RetryBody<Full<Bytes>>>| async {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                    })
                }
            },
        );
        let outbound = engine
            .resolve(&format!("xds:///{TARGET}"))
            .await
            .expect("the target resolves");
        (engine, outbound)
    });

    let mut run = |kind: &str, count: u64| -> (Duration, u64, Duration, u64) {
        let (cpu0, switches0) = process_counters();
        let started = Instant::now();
        writeln!(server.to_child, "{kind} {count} {gap_ms}").expect("to the server");
        line.clear();
        server
            .from_child
            .read_line(&mut line)
            .expect("the server's answer");
        let elapsed = started.elapsed();
        let (cpu1, switches1) = process_counters();
        let acked: u64 = line
            .trim()
            .strip_prefix("done ")
            .and_then(|n| n.parse().ok())
            .expect("done ACKED");
        (cpu1 - cpu0, switches1 - switches0, elapsed, acked)
    };
    let idle = |wall: Duration| -> (Duration, u64) {
        let (cpu0, switches0) = process_counters();
        std::thread::sleep(wall);
        let (cpu1, switches1) = process_counters();
        (cpu1 - cpu0, switches1 - switches0)
    };

    println!(
        "update_cost: {updates} updates per kind, each pushed {gap_ms} ms after the ACK of \
         the one before; client CPU and context switches per update, less an idle run of the \
         same wall time"
    );
    let mut seen = HashSet::new();
    for kind in ["weight", "endpoint", "weight", "endpoint"] {
        let warm = seen.insert(kind);
        if warm {
            run(kind, 50);
        }
        let (cpu, switches, wall, acked) = run(kind, updates);
        let (idle_cpu, idle_switches) = idle(wall);
        let per = |total: f64, base: f64| (total - base) / updates as f64;
        println!(
            "update_cost: {kind:<8} {:>7.1} us CPU/update ({:>6.1} idle), {:>5.1} context \
             switches/update ({:.1} idle), {acked}/{updates} ACKed, {:.2} s",
            per(cpu.as_secs_f64() * 1e6, idle_cpu.as_secs_f64() * 1e6),
            idle_cpu.as_secs_f64() * 1e6 / updates as f64,
            per(switches as f64, idle_switches as f64),
            idle_switches as f64 / updates as f64,
            wall.as_secs_f64(),
        );
    }
    server.stop();
    drop(engine);
    drop(runtime);
}
