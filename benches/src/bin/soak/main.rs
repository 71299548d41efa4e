//! The soak harness (issue #15): a client at steady load through a `MeshChannel` to
//! several backends over SPIFFE mTLS, configured by an ADS server, while a schedule injects
//! faults (identity and CA rotation, endpoint churn, a backend killed hard, the control
//! plane killed and restarted, an update that must be NACKed, a cluster deleted in use).
//! It counts what callers lost per fault kind, samples memory, file descriptors and tasks,
//! and exits non-zero when a target is missed. See `benches/README.md`, "Soak".
//!
//! ```text
//! cargo run --release -p meshwork-benches --bin soak -- [--duration 10m] [--json FILE]
//!     [--rate 200] [--concurrency 64] [--backends 3] [--work 50ms] [--retry-on C]
//! ```
//!
//! Backends are child processes (this binary with `--backend`) so a kill is a SIGKILL;
//! the control plane and the client run in this process, each on its own runtime.
#![forbid(unsafe_code)]

mod backend;
mod control_plane;
mod echo;
mod identity;
mod load;
mod report;
mod sample;
mod schedule;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshwork_benches::args::parse_duration;
use meshwork_xds::bootstrap::Bootstrap;
use meshwork_xds::protocol::ResourceStatus;
use meshwork_xds::server::build;

use crate::backend::Backend;
use crate::control_plane::{CDS, CLUSTER, ControlPlane, EDS};
use crate::identity::Identities;
use crate::load::{Load, LoadSettings};
use crate::report::{EventRecord, Visibility};
use crate::schedule::Fault;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long a removed or moved endpoint keeps serving after the client ACKed its removal,
/// as a terminating pod does (Istio drains before the kill).
const DRAIN: Duration = Duration::from_secs(1);
/// How long the cluster stays deleted, so calls meet the deletion.
const DELETED_FOR: Duration = Duration::from_secs(1);
/// After the cluster is back and ACKed, failures still count as the deletion's for this
/// long: the channel rebuilds the cluster's balancer and connections.
const RESTORE_GRACE: Duration = Duration::from_secs(1);

/// A backend about to be killed is asked this often whether it is serving a call.
const VICTIM_POLL: Duration = Duration::from_millis(20);
const VICTIM_POLLS: usize = 100;

/// What an injection reports.
#[derive(Debug, Default)]
struct Injected {
    /// For a fault that must be visible: what the dump and the metrics showed.
    visible: Option<Visibility>,
    note: Option<String>,
}

impl Injected {
    fn visible(v: Visibility) -> Self {
        Self {
            visible: Some(v),
            note: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    duration: Duration,
    rate: u32,
    concurrency: usize,
    backends: usize,
    work: Duration,
    retry_on: String,
    json: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(600),
            rate: 200,
            concurrency: 64,
            backends: 3,
            work: Duration::from_millis(50),
            retry_on: control_plane::ISTIO_RETRY_ON.into(),
            json: None,
        }
    }
}

impl Settings {
    /// Unmeasured time before the first fault: connections up, allocator warm.
    fn warmup(&self) -> Duration {
        (self.duration / 10).clamp(Duration::from_secs(5), Duration::from_secs(30))
    }

    /// Fault-free time at the end, so the last fault's effects are counted.
    fn tail(&self) -> Duration {
        (self.duration / 12).clamp(Duration::from_secs(5), Duration::from_secs(15))
    }
}

const USAGE: &str = "\
usage: soak [--duration 10m] [--json FILE] [--rate 200] [--concurrency 64] [--backends 3]
            [--work 50ms] [--retry-on CONDITIONS]

  --duration D     the whole run (at least 40s): warm-up, faults, a fault-free tail
  --rate R         calls per second (idempotent unary calls, every reply checked)
  --concurrency N  calls in flight at most; a call that would exceed it is not sent and
                   counted as shed (the harness's limit, not the mesh's)
  --backends N     backends at the start (at least 3)
  --work D         how long a backend takes per call (so calls are in flight when one dies)
  --retry-on C     the route's retry_on (default istiod's: connect-failure,refused-stream,
                   unavailable,cancelled,retriable-status-codes; empty: no retry policy,
                   a check of the harness itself, whose failures must then show as unsaved)
  --json FILE      also write everything as JSON

Exit status: 0 when every target is met, 1 when one is missed, 2 when the harness failed.";

enum Mode {
    Harness(Settings),
    Backend(backend::ChildArgs),
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Mode, Error> {
    let mut s = Settings::default();
    let (mut name, mut listen, mut certs) = (None, None, None);
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| Error::from(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--duration" => s.duration = parse_duration(&value()?)?,
            "--rate" => s.rate = value()?.parse()?,
            "--concurrency" => s.concurrency = value()?.parse()?,
            "--backends" => s.backends = value()?.parse()?,
            "--work" => s.work = parse_duration(&value()?)?,
            "--retry-on" => s.retry_on = value()?,
            "--json" => s.json = Some(value()?.into()),
            // A backend child's flags (not for people).
            "--backend" => name = Some(value()?),
            "--listen" => listen = Some(value()?.parse()?),
            "--certs" => certs = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}").into()),
        }
    }
    if let Some(name) = name {
        return Ok(Mode::Backend(backend::ChildArgs {
            name,
            listen: listen.ok_or("--listen is required")?,
            certs: certs.ok_or("--certs is required")?,
            work: s.work,
        }));
    }
    if s.duration < Duration::from_secs(40) {
        return Err("--duration must be at least 40s (one cycle of every fault)".into());
    }
    if s.rate == 0 || s.concurrency == 0 || s.backends < 3 {
        return Err("--rate and --concurrency must be at least 1, --backends at least 3".into());
    }
    Ok(Mode::Harness(s))
}

fn main() {
    let code = match parse_args(std::env::args().skip(1)) {
        Ok(Mode::Backend(args)) => match backend::child_main(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("soak backend: {e}");
                2
            }
        },
        Ok(Mode::Harness(settings)) => match harness(&settings) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("soak: {e}");
                2
            }
        },
        Err(e) => {
            eprintln!("soak: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// Runs the soak; whether every target was met.
fn harness(settings: &Settings) -> Result<bool, Error> {
    // The harness's runtime: the schedule, the sampler, the backends' processes. The
    // client and the control plane have runtimes of their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("soak-harness")
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("meshwork-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out = rt.block_on(run(settings, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Everything the faults act on.
struct World {
    certs: PathBuf,
    work: Duration,
    retry_on: String,
    ids: Identities,
    cp: ControlPlane,
    /// Backends in EDS and running.
    live: Vec<Backend>,
    /// The backend killed hard: still in EDS, not running.
    killed: Option<(String, SocketAddr)>,
    started: usize,
    victims: usize,
    server_id: String,
    load: Load,
}

async fn run(settings: &Settings, dir: &Path) -> Result<bool, Error> {
    let certs = dir.join("backend");
    let ids = Identities::new(&certs)?;
    let server_id = identity::echo_id();
    let mut live = Vec::new();
    for i in 0..settings.backends {
        live.push(Backend::start(&format!("b{}", i + 1), any_port(), &certs, settings.work).await?);
    }
    let addrs: Vec<_> = live.iter().map(|b| b.addr).collect();
    let cp = ControlPlane::start(
        any_port(),
        control_plane::snapshot(&server_id, &addrs, &settings.retry_on),
    )
    .await?;
    let bootstrap_path = dir.join("bootstrap.json");
    std::fs::write(
        &bootstrap_path,
        serde_json::json!({
            "xds_servers": [{
                "server_uri": cp.addr().to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": "soak-client", "cluster": "soak"},
        })
        .to_string(),
    )?;
    let bootstrap = Bootstrap::from_file(&bootstrap_path)?;

    let warmup = settings.warmup();
    let plan = schedule::plan(settings.duration, warmup, settings.tail());
    let load = Load::start(
        bootstrap,
        ids.client(),
        format!("xds:///{}", control_plane::LISTENER),
        LoadSettings {
            rate: settings.rate,
            concurrency: settings.concurrency,
            events: plan.events.len(),
            expected_id: server_id.clone(),
        },
    )
    .await?;
    let start = Instant::now();
    let probe = load.probe();
    let (samples, sampler) = sample::every_second(start, probe.clone());
    println!("{}", meshwork_benches::procfs::machine_line());
    println!(
        "soak: {:?}, {} req/s (at most {} in flight), {} backends, warm-up {warmup:?}, {} \
         fault(s) every {:?} ({} cycle(s))",
        settings.duration,
        settings.rate,
        settings.concurrency,
        settings.backends,
        plan.events.len(),
        plan.slot,
        plan.cycles,
    );

    let mut world = World {
        certs,
        work: settings.work,
        retry_on: settings.retry_on.clone(),
        ids,
        cp,
        live,
        killed: None,
        started: settings.backends,
        victims: 0,
        server_id,
        load,
    };
    tokio::time::sleep_until((start + warmup).into()).await;
    let warm = sample::take(start, &probe);
    let mut events = Vec::with_capacity(plan.events.len());
    for (i, (at, fault)) in plan.events.iter().enumerate() {
        tokio::time::sleep_until((start + *at).into()).await;
        world.load.tally.begin(i);
        let began = start.elapsed();
        let in_flight = probe.tasks().1;
        let out = world.inject(*fault).await;
        let record = EventRecord {
            fault: *fault,
            planned: *at,
            began,
            took: start.elapsed() - began,
            in_flight,
            visible: out.as_ref().ok().and_then(|i| i.visible.clone()),
            note: out.as_ref().ok().and_then(|i| i.note.clone()),
            error: out.err().map(|e| e.to_string()),
        };
        eprintln!("{}", record.line());
        events.push(record);
    }
    tokio::time::sleep_until((start + settings.duration).max(Instant::now()).into()).await;
    let last = sample::take(start, &probe);
    world.load.stop_calls().await;
    sampler.abort();
    let samples = samples
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();

    let report = report::Report::build(report::Inputs {
        settings: report::SettingsOut {
            duration: settings.duration,
            rate: settings.rate,
            concurrency: settings.concurrency,
            backends: settings.backends,
            warmup,
            slot: plan.slot,
            cycles: plan.cycles,
        },
        elapsed: start.elapsed(),
        events,
        buckets: world.load.tally.buckets(),
        shed: world
            .load
            .tally
            .shed
            .load(std::sync::atomic::Ordering::Relaxed),
        backends: world.load.tally.backends(),
        warm,
        last,
        samples,
        rotations: world.ids.reissued,
    });
    world.shutdown().await;
    report.print();
    if let Some(path) = &settings.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
        println!("wrote {}", path.display());
    }
    Ok(report.passed())
}

fn any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

impl World {
    /// The endpoints in EDS: every running backend, and the killed one until it is back.
    fn addrs(&self) -> Vec<SocketAddr> {
        self.live
            .iter()
            .map(|b| b.addr)
            .chain(self.killed.as_ref().map(|(_, a)| *a))
            .collect()
    }

    /// Takes a running backend out of the list, a different one each time.
    fn take_victim(&mut self) -> Result<Backend, Error> {
        if self.live.is_empty() {
            return Err("no running backend".into());
        }
        let i = self.victims % self.live.len();
        self.victims += 1;
        Ok(self.live.remove(i))
    }

    fn next_name(&mut self) -> String {
        self.started += 1;
        format!("b{}", self.started)
    }

    async fn publish_endpoints(&self) -> Result<(), Error> {
        let cla = build::endpoints(CLUSTER, &self.addrs());
        self.cp
            .update_and_wait(EDS, |s| {
                s.insert_endpoints(cla);
            })
            .await
    }

    async fn restart_control_plane(&mut self) -> Result<(), Error> {
        let snapshot = control_plane::snapshot(&self.server_id, &self.addrs(), &self.retry_on);
        self.cp.restart(snapshot).await?;
        // The client reconnects with backoff and re-subscribes; its ACK of the endpoints
        // is the last of its four.
        self.cp.wait_ack(EDS).await
    }

    /// Injects `fault`.
    async fn inject(&mut self, fault: Fault) -> Result<Injected, Error> {
        match fault {
            Fault::SvidRotation | Fault::CaReissue => self.ids.reissue()?,
            Fault::CaNewRoot => self.ids.add_root()?,
            Fault::CaOldRootRemoved => self.ids.remove_old_roots()?,
            Fault::EndpointAdded => {
                let name = self.next_name();
                self.live
                    .push(Backend::start(&name, any_port(), &self.certs, self.work).await?);
                self.publish_endpoints().await?;
            }
            Fault::EndpointRemoved => {
                let gone = self.live.pop().ok_or("no backend to remove")?;
                self.publish_endpoints().await?;
                tokio::time::sleep(DRAIN).await;
                gone.kill().await?;
            }
            Fault::BackendKilled => {
                let mut victim = self.take_victim()?;
                self.killed = Some((victim.name.clone(), victim.addr));
                // A kill that hits no call tests nothing: wait (a little) until the victim
                // is serving some, as it would be under real load.
                let mut serving = 0;
                for _ in 0..VICTIM_POLLS {
                    serving = victim.in_flight().await?;
                    if serving > 0 {
                        break;
                    }
                    tokio::time::sleep(VICTIM_POLL).await;
                }
                let note = Some(format!("{} was serving {serving} call(s)", victim.name));
                victim.kill().await?;
                return Ok(Injected {
                    note,
                    ..Injected::default()
                });
            }
            Fault::EndpointRestarted => {
                let (name, addr) = self.killed.take().ok_or("no backend was killed")?;
                match Backend::start(&name, addr, &self.certs, self.work).await {
                    Ok(b) => self.live.push(b),
                    Err(e) => {
                        self.killed = Some((name, addr));
                        return Err(e);
                    }
                }
            }
            Fault::ControlPlaneKilled => self.cp.kill().await?,
            Fault::ControlPlaneRestartedSame => self.restart_control_plane().await?,
            Fault::ControlPlaneRestartedChanged => {
                // One backend moves: its replacement starts on a new address, the control
                // plane comes back with it in place of the old one, and the old one drains.
                let old = self.take_victim()?;
                let name = self.next_name();
                self.live
                    .push(Backend::start(&name, any_port(), &self.certs, self.work).await?);
                let restarted = self.restart_control_plane().await;
                tokio::time::sleep(DRAIN).await;
                old.kill().await?;
                restarted?;
            }
            Fault::Nack => return self.nack().await.map(Injected::visible),
            Fault::ClusterDeleted => {
                self.load.tally.expect_failures(true);
                let out = self.delete_cluster().await;
                // Restored whatever happened, so the rest of the run has its cluster.
                let good = control_plane::cluster(&self.server_id);
                let restored = self
                    .cp
                    .update_and_wait(CDS, |s| {
                        s.insert_cluster(good);
                    })
                    .await;
                tokio::time::sleep(RESTORE_GRACE).await;
                self.load.tally.expect_failures(false);
                restored?;
                return out.map(Injected::visible);
            }
        }
        Ok(Injected::default())
    }

    async fn metric_points(&self) -> Result<Vec<load::Point>, Error> {
        let metrics = self.load.metrics.clone();
        tokio::task::spawn_blocking(move || metrics.points()).await?
    }

    /// The status and error the client's dump gives the echo cluster.
    async fn cluster_in_dump(&self) -> Option<(ResourceStatus, Option<String>)> {
        self.load
            .xds
            .dump()
            .await
            .into_iter()
            .find(|r| r.type_url == CDS && r.name == CLUSTER)
            .map(|r| (r.status, r.error))
    }

    /// Sends a cluster the client must NACK, checks the NACK shows, then sends the fix.
    async fn nack(&mut self) -> Result<Visibility, Error> {
        let invalid = |points: &[load::Point]| {
            load::sum(
                points,
                "grpc.xds_client.resource_updates_invalid",
                &[("grpc.xds.resource_type", CDS)],
            )
        };
        let before = invalid(&self.metric_points().await?);
        let bad = control_plane::unsupported_cluster(&self.server_id);
        self.cp.server()?.update(|s| {
            s.insert_cluster(bad);
        });
        let nacked = self.cp.wait_nack(CDS).await;
        let dump = self.cluster_in_dump().await;
        let after = invalid(&self.metric_points().await?);
        let good = control_plane::cluster(&self.server_id);
        self.cp
            .update_and_wait(CDS, |s| {
                s.insert_cluster(good);
            })
            .await?;
        let nack = nacked?;
        let in_dump = matches!(&dump, Some((ResourceStatus::Nacked, Some(e))) if !e.is_empty());
        Ok(Visibility {
            dump: in_dump,
            metrics: after > before,
            detail: format!(
                "NACK {nack:?}; dump {dump:?}; resource_updates_invalid (CDS) {before} -> {after}"
            ),
        })
    }

    /// Deletes the cluster in use, checks the deletion shows, holds it a moment.
    async fn delete_cluster(&mut self) -> Result<Visibility, Error> {
        self.cp
            .update_and_wait(CDS, |s| {
                s.remove(CDS, CLUSTER);
            })
            .await?;
        let dump = self.cluster_in_dump().await;
        let points = self.metric_points().await?;
        let gauge = load::sum(
            &points,
            "grpc.xds_client.resources",
            &[
                ("grpc.xds.resource_type", CDS),
                ("grpc.xds.cache_state", "does_not_exist"),
            ],
        );
        tokio::time::sleep(DELETED_FOR).await;
        Ok(Visibility {
            dump: matches!(dump, Some((ResourceStatus::DoesNotExist, _))),
            metrics: gauge >= 1,
            detail: format!(
                "dump {dump:?}; resources{{cache_state=does_not_exist, CDS}} = {gauge}"
            ),
        })
    }

    async fn shutdown(self) {
        for b in self.live {
            let _ = b.kill().await;
        }
        let mut cp = self.cp;
        let _ = cp.kill().await;
        self.load.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Mode, Error> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        let Ok(Mode::Harness(s)) = parse(&["--duration", "60s", "--retry-on", ""]) else {
            panic!("harness mode");
        };
        assert_eq!(s.duration, Duration::from_secs(60));
        assert_eq!(s.retry_on, "");
        assert_eq!(s.warmup(), Duration::from_secs(6));
        assert_eq!(s.tail(), Duration::from_secs(5));
        let Ok(Mode::Backend(b)) = parse(&[
            "--backend",
            "b1",
            "--listen",
            "127.0.0.1:0",
            "--certs",
            "/x",
            "--work",
            "5ms",
        ]) else {
            panic!("backend mode");
        };
        assert_eq!((b.name.as_str(), b.work), ("b1", Duration::from_millis(5)));
        assert!(
            parse(&["--duration", "10s"]).is_err(),
            "shorter than a cycle"
        );
        assert!(parse(&["--backends", "2"]).is_err());
        assert!(parse(&["--backend", "b1"]).is_err(), "--listen missing");
        assert!(parse(&["--rate"]).is_err());
    }
}
