//! A contestant's client: runs in its own child process of the harness, so the CPU time and
//! peak memory it reports are its own. Builds the contestant's channel, warms it up, runs
//! the closed-loop phase then the open-loop phase (and with `--churn` a churned phase,
//! before or after it as the round says, whose windows alternate between the harness
//! pushing EDS updates and quiet), and prints one JSON line of results. The churned
//! windows also keep a timeline (see [`timeline`]).
//!
//! The loops are the same for every contestant: they drive a [`Caller`], one checked call
//! per sequence number, which hides whether the call is gRPC or HTTP.

use std::future::Future;
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshwork_core::identity::{MtlsConfig, StaticSource, Svid, TrustBundles};
use meshwork_core::telemetry::Telemetry;
use meshwork_grpc::{MeshChannel, MeshChannelOptions};
use meshwork_xds::bootstrap::{Bootstrap, XdsServer};
use meshwork_xds::client::XdsClient;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::json;
use tonic::client::{Grpc, GrpcService};
use tower::Layer as _;

use crate::bare_tls::MtlsConnector;
use crate::echo::{self, CallError};
use crate::timeline::{self, UpdateLog};
use crate::traced_tonic::TracedLayer;
use crate::{Contestant, http_client, procfs};

/// A call that takes longer than this is an error (it would otherwise hold a phase open).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the harness tells a client process.
#[derive(Debug, Clone)]
pub(crate) struct ClientArgs {
    pub(crate) contestant: Contestant,
    /// The server (bare tonic) or the sidecar's listener (`envoy-sidecar`).
    pub(crate) addr: Option<SocketAddr>,
    /// The control plane (`meshwork`, `meshwork-via-envoy`).
    pub(crate) xds: Option<String>,
    /// The xDS target.
    pub(crate) target: Option<String>,
    /// PEM files: `ca.pem`, `client.pem`, `client-key.pem`.
    pub(crate) certs: PathBuf,
    /// The sidecar's process, whose CPU time and memory count for this contestant.
    pub(crate) sidecar_pid: Option<u32>,
    pub(crate) warmup: Duration,
    /// Each phase's length.
    pub(crate) phase: Duration,
    pub(crate) concurrency: usize,
    pub(crate) rate: u32,
    /// Run the churned phase (see [`churned_phase`] and [`churn_signal`]).
    pub(crate) churn: bool,
    /// Run the churned open-loop phase before the quiet one and start it with a churned
    /// window (alternated between rounds).
    pub(crate) churn_first: bool,
    /// The churned phase's windows (see [`churned_phase`]).
    pub(crate) churn_window: Duration,
}

pub(crate) type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One checked call: `Ok` only when the reply is the echo of this call's payload, with the
/// endpoint that answered when the client says (meshwork's `ServedBy`).
pub(crate) type CallFuture =
    Pin<Box<dyn Future<Output = std::result::Result<Option<SocketAddr>, String>> + Send>>;

/// Makes the call of a sequence number; cloned into every caller task. Every contestant
/// pays the same box per call, so it does not tilt the comparison.
pub(crate) type Caller = Arc<dyn Fn(u64) -> CallFuture + Send + Sync>;

/// `call` bounded by [`CALL_TIMEOUT`].
pub(crate) async fn timed(call: CallFuture) -> std::result::Result<Option<SocketAddr>, String> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer in {CALL_TIMEOUT:?}")))
}

/// A gRPC echo over `grpc`.
fn grpc_caller<T>(grpc: Grpc<T>) -> Caller
where
    T: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    Arc::new(move |seq| {
        let mut grpc = grpc.clone();
        Box::pin(async move {
            match echo::call(&mut grpc, seq).await {
                Ok(served_by) => Ok(served_by),
                Err(CallError::Status(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                Err(CallError::Mismatch) => Err("the echoed payload differs".into()),
            }
        })
    })
}

/// The child's `main`: prints one JSON line with the results.
pub(crate) fn main(args: ClientArgs) -> Result<()> {
    exit_with_parent();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        // The churned cluster's updates as this process applies them, on the xDS client
        // the contestant's channel uses.
        let xds = args.xds.is_some().then(|| xds_client(&args)).transpose()?;
        let updates = match (&xds, args.contestant.eds_cluster()) {
            (Some(xds), Some(cluster)) if args.churn => Some(UpdateLog::start(xds, cluster).await),
            _ => None,
        };
        let updates = updates.as_ref();
        match args.contestant {
            Contestant::TonicPlaintext | Contestant::EnvoySidecar => {
                let addr = args.addr.ok_or("--addr is required")?;
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect()
                    .await?;
                run(grpc_caller(Grpc::new(channel)), &args, updates).await
            }
            Contestant::TonicMtls => {
                let addr = args.addr.ok_or("--addr is required")?;
                let channel = tonic_mtls(addr, &args.certs).await?;
                run(grpc_caller(Grpc::new(channel)), &args, updates).await
            }
            Contestant::TonicMtlsTraced => {
                // tonic-mtls's channel under a tonic user's tracing layer, spans from the
                // same kind of provider as the meshwork contestants' (see `telemetry`).
                let addr = args.addr.ok_or("--addr is required")?;
                let channel = tonic_mtls(addr, &args.certs).await?;
                let traces = SdkTracerProvider::builder().build();
                let layer = TracedLayer::new(traces.tracer("loadtest"), &mtls_origin(addr)?);
                let out = run(grpc_caller(Grpc::new(layer.layer(channel))), &args, updates).await;
                drop(traces);
                out
            }
            Contestant::Meshwork | Contestant::MeshworkUntraced | Contestant::MeshworkViaEnvoy => {
                let client = xds.ok_or("--xds is required")?;
                let target = args.target.as_deref().ok_or("--target is required")?;
                let traces = SdkTracerProvider::builder().build();
                let mut options = MeshChannelOptions::new().telemetry(telemetry(
                    &traces,
                    args.contestant != Contestant::MeshworkUntraced,
                ));
                if args.contestant != Contestant::MeshworkViaEnvoy {
                    options = options.mtls(mesh_identity(&args.certs)?);
                }
                let channel = MeshChannel::from_xds(&client, target, options).await?;
                let out = run(grpc_caller(Grpc::new(channel)), &args, updates).await;
                drop(client);
                drop(traces);
                out
            }
            Contestant::HyperMtlsH1
            | Contestant::HyperMtlsH2
            | Contestant::MeshworkHttpH1
            | Contestant::MeshworkHttpH2
            | Contestant::EnvoySidecarHttp => {
                let (caller, keep) = http_client::caller(&args, xds).await?;
                let out = run(caller, &args, updates).await;
                drop(keep);
                out
            }
        }
    })?;
    println!("{out}");
    Ok(())
}

/// The xDS client of a meshwork contestant, on the harness's control plane.
pub(crate) fn xds_client(args: &ClientArgs) -> Result<XdsClient> {
    let xds = args.xds.as_deref().ok_or("--xds is required")?;
    let bootstrap = Bootstrap::builder()
        .node_id("meshwork-loadtest")
        .server(XdsServer::new(xds)?)
        .build()?;
    Ok(XdsClient::start(&bootstrap)?)
}

/// The telemetry of a meshwork contestant. Traced, as a traced service runs: the SDK's
/// provider with its default always-on sampler, every span recorded, but no exporter (the
/// cost of exporting belongs to the collector pipeline, not to the mesh). Untraced is the
/// service that installs no OpenTelemetry provider at all: the default global (no-op) ones.
pub(crate) fn telemetry(traces: &SdkTracerProvider, traced: bool) -> Telemetry {
    if traced {
        Telemetry::new(
            traces.tracer("meshwork"),
            &opentelemetry::global::meter("meshwork"),
        )
    } else {
        Telemetry::global()
    }
}

pub(crate) fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()).into())
}

/// The origin of the bare mTLS channel to `addr`. The scheme only names the :scheme
/// pseudo-header here: the connector does the TLS.
fn mtls_origin(addr: SocketAddr) -> Result<http::Uri> {
    Ok(format!("http://echo.mesh:{}", addr.port()).parse()?)
}

/// Bare tonic over rustls mTLS: tonic's channel over the bare mTLS connector (ALPN `h2`).
async fn tonic_mtls(addr: SocketAddr, certs: &Path) -> Result<tonic::transport::Channel> {
    let connector = MtlsConnector::new(addr, certs, b"h2")?;
    Ok(tonic::transport::Endpoint::from(mtls_origin(addr)?)
        .connect_with_connector(connector)
        .await?)
}

/// meshwork's identity: the client SVID and the CA as the `example.org` bundle.
pub(crate) fn mesh_identity(certs: &Path) -> Result<MtlsConfig> {
    let svid = Svid::from_pem(&read(certs, "client.pem")?, &read(certs, "client-key.pem")?)?;
    let bundles = TrustBundles::from_pem_any_domain(&read(certs, "ca.pem")?, "ca.pem")?;
    Ok(MtlsConfig::new(Arc::new(StaticSource::new(
        Some(svid),
        bundles,
    ))))
}

/// CPU seconds of this process plus the sidecar's.
fn cpu_now(sidecar: Option<u32>) -> f64 {
    let own = procfs::cpu_seconds("self").unwrap_or(f64::NAN);
    own + sidecar.map_or(0.0, |p| {
        procfs::cpu_seconds(&p.to_string()).unwrap_or(f64::NAN)
    })
}

/// Tells the harness `line` on stdout (the harness reads the child's stdout line by line;
/// the last line is the JSON result) and waits for its one-line answer on stdin. The
/// harness answers `churn-start` once the churn is running and `churn-stop` once it has
/// stopped and counted the client's ACKs, so a churned window is exactly the one measured.
async fn churn_signal(line: &'static str) -> Result<()> {
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(answer)
    })
    .await?
    .map_err(Into::into)
    .and_then(|answer| {
        if answer.trim() == "ok" {
            Ok(())
        } else {
            Err(format!("the harness answered {line:?} with {answer:?}").into())
        }
    })
}

/// Ends this process once the harness that started it is gone (it was reparented). A
/// harness killed by a signal skips `kill_on_drop`; without this its client would go on
/// calling a server that no longer exists, a closed loop of failures spinning a core until
/// its `--duration` ran out, under whatever is measured next.
fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    let watch = move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if std::os::unix::process::parent_id() != parent {
                // No message: the harness's end of stderr is gone too (`eprintln!` would
                // panic on the broken pipe and end only this thread).
                std::process::exit(3);
            }
        }
    };
    // Without the watcher the client still works; only an orphan would linger.
    let _ = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(watch);
}

/// The wall clock in milliseconds since the Unix epoch (0 before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One open-loop phase and the CPU seconds it took (client plus sidecar).
async fn open_phase(caller: &Caller, seq: &Arc<AtomicU64>, args: &ClientArgs) -> (Open, f64) {
    let cpu_before = cpu_now(args.sidecar_pid);
    let open = open_loop(caller, seq, args.rate, args.phase).await;
    (open, cpu_now(args.sidecar_pid) - cpu_before)
}

/// A call starting this soon after a churned window ended still counts as churned: what
/// the window's last update set going (a connection closing) may outlast it.
const SETTLE: Duration = Duration::from_millis(10);

/// The churned phase: one open loop twice a phase long whose windows of
/// `--churn-window` alternate between churned (the harness pushing EDS updates) and
/// quiet, starting with a churned one when `churn_first`. Its quiet windows are the
/// churned ones' comparison: the same process, the same minutes of the host, so a stall of
/// a busy host lands in either kind of window alike (two phases one after the other would
/// each get the stalls of their own seconds).
struct Churned {
    open: Open,
    /// The churned windows, microseconds from the open loop's start: from just before the
    /// harness was asked to start pushing until [`SETTLE`] after it had stopped and the
    /// client had ACKed the last update.
    windows: Vec<(u64, u64)>,
    /// CPU seconds of the whole phase, and of its churned windows.
    cpu: f64,
    churn_cpu: f64,
}

impl Churned {
    /// Whether a call that started `start_us` into the phase started in a churned window.
    fn is_churned(&self, start_us: u64) -> bool {
        let i = self.windows.partition_point(|w| w.0 <= start_us);
        i > 0 && start_us < self.windows[i - 1].1
    }

    /// The calls that started in churned windows, and the rest (see [`latencies`]).
    fn split(&self) -> (Vec<timeline::Call>, Vec<timeline::Call>) {
        self.open
            .calls
            .iter()
            .partition(|c| self.is_churned(c.start_us))
    }
}

/// The windows a churned phase is cut into, for `--churn-window` `asked` and phases of
/// `phase`: at most half a phase (the churned phase is two, so it has at least two windows
/// of each kind), at least 1 ms.
pub(crate) fn churn_window(asked: Duration, phase: Duration) -> Duration {
    asked.min(phase / 2).max(Duration::from_millis(1))
}

/// The latencies of `calls`.
fn latencies(calls: &[timeline::Call]) -> Vec<u64> {
    calls.iter().map(|c| c.latency_us).collect()
}

/// Runs the churned phase (see [`Churned`]): the open loop, and beside it the windows,
/// asking the harness to start and stop the churn at each churned one's edges.
async fn churned_phase(
    caller: &Caller,
    seq: &Arc<AtomicU64>,
    args: &ClientArgs,
) -> Result<Churned> {
    let total = args.phase * 2;
    let window = churn_window(args.churn_window, args.phase);
    let n = total.as_nanos().div_ceil(window.as_nanos()) as u32;
    let cpu_before = cpu_now(args.sidecar_pid);
    let start = Instant::now();
    let toggle = async {
        let (mut windows, mut churn_cpu) = (Vec::new(), 0.0);
        for i in 0..n {
            let end = tokio::time::Instant::from_std(start + (window * (i + 1)).min(total));
            if (i % 2 == 0) != args.churn_first {
                tokio::time::sleep_until(end).await;
                continue;
            }
            let cpu = cpu_now(args.sidecar_pid);
            let from = Instant::now();
            churn_signal("churn-start").await?;
            tokio::time::sleep_until(end).await;
            churn_signal("churn-stop").await?;
            windows.push((from, Instant::now() + SETTLE));
            churn_cpu += cpu_now(args.sidecar_pid) - cpu;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((windows, churn_cpu))
    };
    let (open, toggled) = tokio::join!(open_loop(caller, seq, args.rate, total), toggle);
    let cpu = cpu_now(args.sidecar_pid) - cpu_before;
    let (windows, churn_cpu) = toggled?;
    let us = |t: Instant| t.saturating_duration_since(open.start).as_micros() as u64;
    let windows = windows.into_iter().map(|(a, b)| (us(a), us(b))).collect();
    Ok(Churned {
        open,
        windows,
        cpu,
        churn_cpu,
    })
}

async fn run(
    caller: Caller,
    args: &ClientArgs,
    updates: Option<&UpdateLog>,
) -> Result<serde_json::Value> {
    let seq = Arc::new(AtomicU64::new(0));
    // One call first: a channel that cannot call at all fails the contestant loudly.
    timed(caller(seq.fetch_add(1, Ordering::Relaxed)))
        .await
        .map_err(|e| format!("first call: {e}"))?;
    let warmup = closed_loop(&caller, &seq, args.concurrency, args.warmup).await;

    let measured_from = unix_ms();
    let cpu_before = cpu_now(args.sidecar_pid);
    let closed = closed_loop(&caller, &seq, args.concurrency, args.phase).await;
    let closed_cpu = cpu_now(args.sidecar_pid) - cpu_before;
    let mut churned = None;
    if args.churn && args.churn_first {
        churned = Some(churned_phase(&caller, &seq, args).await?);
    }
    let (open, cpu) = open_phase(&caller, &seq, args).await;
    if args.churn && !args.churn_first {
        churned = Some(churned_phase(&caller, &seq, args).await?);
    }
    let measured_to = unix_ms();

    let client_rss = procfs::peak_rss_mib("self").unwrap_or(f64::NAN);
    let sidecar_rss = args.sidecar_pid.map_or(0.0, |p| {
        procfs::peak_rss_mib(&p.to_string()).unwrap_or(f64::NAN)
    });
    let pct = |q: f64| percentile(&open.latencies_us, q);
    let mut out = json!({
        "name": args.contestant.name(),
        "rps": closed.ok as f64 / closed.elapsed.as_secs_f64(),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "cpu_s_per_1k": cpu / (open.sent as f64 / 1000.0),
        // The same over the closed loop: the warm path, every worker busy (the open loop's
        // figure also pays a wake-up from idle per call).
        "closed_cpu_s_per_1k": closed_cpu / ((closed.ok + closed.errors) as f64 / 1000.0),
        "rss_mb": client_rss + sidecar_rss,
        "client_rss_mb": client_rss,
        "sidecar_rss_mb": sidecar_rss,
        "errors": closed.errors + open.errors,
        "first_error": closed.first_error.or(open.first_error),
        "warmup_calls": 1 + warmup.ok + warmup.errors,
        "closed_calls": closed.ok + closed.errors,
        "open_calls": open.sent,
        "pacer_late_p50_us": percentile(&open.pacer_late_us, 0.50),
        "pacer_late_p99_us": percentile(&open.pacer_late_us, 0.99),
        // When the measured phases ran (wall clock): `--side-by-side` contestants overlap.
        "measured_from_unix_ms": measured_from,
        "measured_to_unix_ms": measured_to,
    });
    if let Some(churned) = churned {
        let (churn_calls, quiet_calls) = churned.split();
        let (churn, quiet) = (latencies(&churn_calls), latencies(&quiet_calls));
        let p99 = percentile(&churn, 0.99);
        let quiet_p99 = percentile(&quiet, 0.99);
        let quiet_p90 = percentile(&quiet, 0.90);
        out["churn_p50_us"] = percentile(&churn, 0.50).into();
        out["churn_p99_us"] = p99.into();
        out["churn_p999_us"] = percentile(&churn, 0.999).into();
        out["churn_quiet_p50_us"] = percentile(&quiet, 0.50).into();
        out["churn_quiet_p99_us"] = quiet_p99.into();
        out["churn_quiet_p999_us"] = percentile(&quiet, 0.999).into();
        // The target's figure: the churned windows against the quiet ones between them.
        out["churn_p99_ratio"] = (p99 as f64 / quiet_p99.max(1) as f64).into();
        out["churn_calls"] = churn.len().into();
        out["churn_quiet_calls"] = quiet.len().into();
        out["churn_windows"] = churned.windows.len().into();
        // Every call's latency, for the harness to pool over the rounds (it takes them out
        // of the round's JSON).
        out[CHURN_LATENCIES] = churn.into();
        out[CHURN_QUIET_LATENCIES] = quiet.into();
        let per_1k = |cpu: f64, calls: usize| cpu / (calls.max(1) as f64 / 1000.0);
        out["churn_cpu_s_per_1k"] = per_1k(churned.churn_cpu, churn_calls.len()).into();
        out["churn_quiet_cpu_s_per_1k"] =
            per_1k(churned.cpu - churned.churn_cpu, quiet_calls.len()).into();
        out["churn_errors"] = churned.open.errors.into();
        out["churn_first"] = args.churn_first.into();
        if out["first_error"].is_null() {
            out["first_error"] = churned.open.first_error.clone().into();
        }
        if let Some(updates) = updates {
            let applied = updates.since(churned.open.start);
            let quiet = timeline::Quiet {
                p90_us: quiet_p90,
                p99_us: quiet_p99,
            };
            out["churn_timeline"] = timeline::summarize(&churn_calls, &applied, quiet);
        }
        out["errors"] = (closed.errors + open.errors + churned.open.errors).into();
    }
    Ok(out)
}

/// The key of the churned windows' latencies in a client's JSON.
pub(crate) const CHURN_LATENCIES: &str = "churn_latencies_us";
/// The key of the churned phase's quiet windows' latencies in a client's JSON.
pub(crate) const CHURN_QUIET_LATENCIES: &str = "churn_quiet_latencies_us";

/// The `q` quantile (nearest rank) of unsorted samples, or 0 with none.
pub(crate) fn percentile(samples: &[u64], q: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

struct Closed {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    first_error: Option<String>,
}

/// `concurrency` callers, each starting its next call when the last one ends, for `time`.
async fn closed_loop(
    caller: &Caller,
    seq: &Arc<AtomicU64>,
    concurrency: usize,
    time: Duration,
) -> Closed {
    let start = Instant::now();
    let deadline = start + time;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let caller = caller.clone();
        let seq = seq.clone();
        tasks.spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            while Instant::now() < deadline {
                match timed(caller(seq.fetch_add(1, Ordering::Relaxed))).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (ok, errors, first_error)
        });
    }
    let mut out = Closed {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        first_error: None,
    };
    while let Some(r) = tasks.join_next().await {
        let (ok, errors, first_error) = r.unwrap_or((0, 1, Some("a caller panicked".into())));
        out.ok += ok;
        out.errors += errors;
        out.first_error = out.first_error.or(first_error);
    }
    out.elapsed = start.elapsed();
    out
}

struct Open {
    sent: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    pacer_late_us: Vec<u64>,
    first_error: Option<String>,
    /// The phase's start: call `i` was due `1 ms + i × interval` after it.
    start: Instant,
    /// Each successful call's intended start (from `start`), latency and serving endpoint.
    calls: Vec<timeline::Call>,
}

/// Calls at a fixed `rate` for `time`, each started at its intended time whatever the
/// previous calls are doing, and timed from that intended time: a stall delays every call
/// behind it and they all count (no coordinated omission). A dedicated thread paces the
/// sends with the OS's sleep, which is finer than tokio's 1 ms timer wheel; how late it
/// woke is recorded too (`pacer_late_*`), as the harness's own noise floor.
async fn open_loop(caller: &Caller, seq: &Arc<AtomicU64>, rate: u32, time: Duration) -> Open {
    let n = (time.as_secs_f64() * f64::from(rate)).round() as u64;
    let interval = Duration::from_secs(1) / rate.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = tokio::runtime::Handle::current();
    let caller = caller.clone();
    let seq = seq.clone();
    let phase_start = Instant::now();
    let pacer = std::thread::spawn(move || {
        let start = phase_start + Duration::from_millis(1);
        let mut late = Vec::with_capacity(n as usize);
        for i in 0..n {
            let intended = start + interval * i as u32;
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            late.push(intended.elapsed().as_micros() as u64);
            let tx = tx.clone();
            let call = caller(seq.fetch_add(1, Ordering::Relaxed));
            handle.spawn(async move {
                let r = timed(call).await;
                let _ = tx.send((i, r.map(|by| (intended.elapsed().as_micros() as u64, by))));
            });
        }
        late
    });
    let mut out = Open {
        sent: n,
        errors: 0,
        latencies_us: Vec::with_capacity(n as usize),
        pacer_late_us: Vec::new(),
        first_error: None,
        start: phase_start,
        calls: Vec::with_capacity(n as usize),
    };
    let due_us = |i: u64| (Duration::from_millis(1) + interval * i as u32).as_micros() as u64;
    // Every call ends within CALL_TIMEOUT of being sent, so this waits at most that long
    // after the last send.
    for _ in 0..n {
        match rx.recv().await {
            Some((i, Ok((us, served_by)))) => {
                out.latencies_us.push(us);
                out.calls.push(timeline::Call {
                    start_us: due_us(i),
                    latency_us: us,
                    served_by,
                });
            }
            Some((_, Err(e))) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    out.errors += n - out.latencies_us.len() as u64 - out.errors;
    out.pacer_late_us = tokio::task::spawn_blocking(move || pacer.join().unwrap_or_default())
        .await
        .unwrap_or_default();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn churned(starts_and_latencies: &[(u64, u64)], windows: Vec<(u64, u64)>) -> Churned {
        let calls: Vec<timeline::Call> = starts_and_latencies
            .iter()
            .map(|&(start_us, latency_us)| timeline::Call {
                start_us,
                latency_us,
                served_by: None,
            })
            .collect();
        Churned {
            open: Open {
                sent: calls.len() as u64,
                errors: 0,
                latencies_us: calls.iter().map(|c| c.latency_us).collect(),
                pacer_late_us: Vec::new(),
                first_error: None,
                start: Instant::now(),
                calls,
            },
            windows,
            cpu: 0.0,
            churn_cpu: 0.0,
        }
    }

    #[test]
    fn a_churned_phase_has_at_least_two_windows_of_each_kind() {
        let ms = Duration::from_millis;
        assert_eq!(churn_window(ms(1_000), ms(5_000)), ms(1_000));
        // The test's 0.4 s runs: phases of 0.2 s, windows of 0.1 s.
        assert_eq!(churn_window(ms(1_000), ms(200)), ms(100));
        assert_eq!(churn_window(Duration::ZERO, ms(200)), ms(1));
    }

    #[test]
    fn calls_are_split_by_the_window_they_started_in() {
        let c = churned(
            &[
                (0, 1),
                (999, 2),
                (1_000, 3),
                (1_500, 4),
                (2_000, 5),
                (3_000, 6),
                (3_100, 7),
            ],
            vec![(1_000, 2_000), (3_000, 3_050)],
        );
        assert!(!c.is_churned(999));
        assert!(c.is_churned(1_000) && c.is_churned(1_999));
        assert!(!c.is_churned(2_000) && !c.is_churned(3_050));
        let (churn, quiet) = c.split();
        assert_eq!(
            (latencies(&churn), latencies(&quiet)),
            (vec![3, 4, 6], vec![1, 2, 5, 7])
        );
        let none = churned(&[(5, 1)], Vec::new());
        let (churn, quiet) = none.split();
        assert!(churn.is_empty());
        assert_eq!(latencies(&quiet), vec![1]);
    }
}
