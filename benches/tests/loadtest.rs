//! The load harness runs end to end in a short version, so it cannot rot: every contestant
//! (the Envoy ones when Envoy is installed; under `CI` a missing Envoy fails the run), the
//! JSON shape, zero errors, and `--churn`: every update the harness pushed was ACKed by the
//! meshwork contestants' clients while their churned phase's churned windows ran, and the
//! endpoint it added answered calls; the client's timeline of the churned phase saw the
//! updates, of the kind `--churn-kind` asks for.

use std::process::Command;

use serde_json::Value;

const NAMES: [&str; 12] = [
    "tonic-plaintext",
    "tonic-mtls",
    "tonic-mtls-traced",
    "meshwork",
    "meshwork-untraced",
    "envoy-sidecar",
    "meshwork-via-envoy",
    "hyper-mtls-h2",
    "meshwork-http-h2",
    "hyper-mtls-h1",
    "meshwork-http-h1",
    "envoy-sidecar-http",
];

const ENVOY: [&str; 3] = ["envoy-sidecar", "meshwork-via-envoy", "envoy-sidecar-http"];

/// The contestants whose endpoints come from the harness's control plane, so take
/// `--churn` (envoy-sidecar's through its sidecar's ADS).
const CHURNED: [&str; 6] = [
    "meshwork",
    "meshwork-untraced",
    "envoy-sidecar",
    "meshwork-via-envoy",
    "meshwork-http-h2",
    "meshwork-http-h1",
];

/// Runs the harness for 0.4 s per contestant with `args`; its JSON and stdout.
fn run(name: &str, args: &[&str]) -> (Value, String) {
    let json = std::env::temp_dir().join(format!(
        "meshwork-loadtest-{name}-{}.json",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--duration", "400ms", "--rounds", "1", "--warmup", "100ms"])
        .args(args)
        .args([
            "--concurrency",
            "4",
            "--rate",
            "200",
            "--envoy-concurrency",
            "1",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run the loadtest binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadtest failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    (v, stdout.into_owned())
}

#[test]
fn short_run_of_every_contestant_with_churn() {
    // 5 updates/s in the churned phase's two churned windows of 0.1 s (a quarter of its
    // 0.4 s): in each the second endpoint is added at once and stays until the window
    // ends, so the client has time to connect it and send it calls.
    let (v, stdout) = run("all", &["--churn", "5"]);

    let contestants = v["contestants"].as_array().expect("contestants");
    let skipped = v["skipped"].as_array().expect("skipped");
    if std::env::var_os("CI").is_some() {
        assert!(
            skipped.is_empty(),
            "nothing may be skipped under CI: {skipped:?}"
        );
    }
    let mut seen: Vec<&str> = contestants
        .iter()
        .chain(skipped)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    seen.sort();
    let mut all = NAMES.to_vec();
    all.sort();
    assert_eq!(seen, all, "every contestant is reported, run or skipped");
    for s in skipped {
        assert!(
            ENVOY.contains(&s["name"].as_str().unwrap()),
            "only the Envoy contestants may be skipped: {s}"
        );
    }

    for c in contestants {
        let name = c["name"].as_str().unwrap();
        assert_eq!(c["errors"].as_u64(), Some(0), "{name} had errors: {c}");
        for key in [
            "rps",
            "p50_us",
            "p99_us",
            "p999_us",
            "cpu_s_per_1k",
            "rss_mb",
        ] {
            let x = c[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: {key} is not a number: {c}"));
            assert!(x.is_finite() && x >= 0.0, "{name}: {key} = {x}");
        }
        assert!(c["rps"].as_f64().unwrap() > 0.0, "{name}: no calls: {c}");
        assert!(c["rss_mb"].as_f64().unwrap() > 0.0, "{name}: {c}");
        assert!(
            c["p50_us"].as_f64() <= c["p99_us"].as_f64()
                && c["p99_us"].as_f64() <= c["p999_us"].as_f64(),
            "{name}: percentiles out of order: {c}"
        );
        if CHURNED.contains(&name) {
            // A churn that silently did nothing shows here.
            let pushed = c["churn_pushed"].as_u64().unwrap_or(0);
            assert!(
                pushed >= 2,
                "{name}: the churn pushed {pushed} updates: {c}"
            );
            assert_eq!(
                c["churn_acked"].as_u64(),
                Some(pushed),
                "{name}: every update pushed is ACKed: {c}"
            );
            assert_eq!(c["churn_errors"].as_u64(), Some(0), "{name}: {c}");
            // The client used the change: the added endpoint answered calls (not counted
            // behind meshwork-via-envoy's sidecar).
            if name != "meshwork-via-envoy" {
                let second = c["churn_second_endpoint_calls"].as_u64().unwrap_or(0);
                assert!(second > 0, "{name}: the added endpoint got no call: {c}");
            }
            assert!(c["churn_p99_us"].as_f64().unwrap() > 0.0, "{name}: {c}");
            // The churned phase's quiet windows, the churned ones' comparison.
            assert!(
                c["churn_quiet_p99_us"].as_f64().unwrap() > 0.0,
                "{name}: {c}"
            );
            for key in ["churn_p99_ratio", "churn_pooled_p99_ratio"] {
                let ratio = c[key].as_f64().unwrap();
                assert!(ratio.is_finite() && ratio > 0.0, "{name}: {key}: {c}");
            }
            // Pooled by the harness, not kept in the rounds' JSON.
            let round = &v["rounds"][name][0];
            assert!(
                round["churn_windows"].as_u64() >= Some(2),
                "{name}: {round}"
            );
            assert!(round.get("churn_latencies_us").is_none(), "{name}: {round}");
            if name == "envoy-sidecar" {
                // The client process has no xDS client to see the updates with.
                assert!(c.get("churn_timeline").is_none(), "{name}: {c}");
                continue;
            }
            // The first update adds the second endpoint; no weight changes.
            let t = timeline(c);
            assert!(
                t["by_kind"]["add"]["updates"].as_u64() >= Some(1),
                "{name}: {t}"
            );
            assert_eq!(t["by_kind"]["weight"]["updates"], 0, "{name}: {t}");
        } else {
            assert!(
                c.get("churn_p99_us").is_none(),
                "{name} takes no churn: {c}"
            );
        }
    }
    assert!(stdout.contains("ratios to tonic-mtls"), "{stdout}");
    assert!(
        stdout.contains("meshwork vs tonic-mtls-traced throughput"),
        "{stdout}"
    );
    assert!(stdout.contains("HTTP ratios"), "{stdout}");
    assert!(
        stdout.contains("under EDS churn, the churned phase's quiet / churned windows"),
        "{stdout}"
    );
}

/// The client's timeline of its churned phase: every field there, and the counts of slow
/// calls adding up.
fn timeline(c: &Value) -> &Value {
    let t = &c["churn_timeline"];
    let n = |key: &str| {
        t[key]
            .as_u64()
            .unwrap_or_else(|| panic!("churn_timeline.{key} is not a count: {c}"))
    };
    assert_eq!(
        n("slow_within_5ms_after") + n("slow_update_during_call") + n("slow_elsewhere"),
        n("slow_calls"),
        "{t}"
    );
    assert!(n("calls") > 0, "{t}");
    // meshwork's balancer says which endpoint answered each call.
    assert_eq!(n("calls_served_by_known"), n("calls"), "{t}");
    for key in [
        "slow_on_added_endpoint",
        "slow_first_3_on_added_endpoint",
        "calls_within_5ms_after",
    ] {
        n(key);
    }
    for kind in ["add", "remove", "weight"] {
        let k = &t["by_kind"][kind];
        for key in ["updates", "slow_after", "slow_within_5ms_after"] {
            assert!(k[key].is_u64(), "{kind}.{key}: {t}");
        }
        assert!(k["since_us"].is_object(), "{t}");
    }
    t
}

/// `--churn-kind weight`: the same two endpoints throughout, only their localities' weights
/// change, and the client's timeline sees weight changes only.
#[test]
fn short_run_with_weight_churn() {
    let (v, stdout) = run(
        "weight",
        &[
            "--only",
            "meshwork",
            "--churn",
            "5",
            "--churn-kind",
            "weight",
        ],
    );
    assert_eq!(v["settings"]["churn_kind"], "weight", "{v}");
    let c = &v["contestants"][0];
    assert_eq!(c["name"], "meshwork", "{v}");
    assert_eq!(c["errors"].as_u64(), Some(0), "{c}");
    let pushed = c["churn_pushed"].as_u64().unwrap_or(0);
    assert!(pushed >= 2, "{c}");
    assert_eq!(c["churn_acked"].as_u64(), Some(pushed), "{c}");
    assert!(
        c["churn_second_endpoint_calls"].as_u64() > Some(0),
        "both endpoints take calls: {c}"
    );
    let t = timeline(c);
    assert!(t["by_kind"]["weight"]["updates"].as_u64() >= Some(1), "{t}");
    for kind in ["add", "remove"] {
        assert_eq!(t["by_kind"][kind]["updates"], 0, "{kind}: {t}");
    }
    assert!(stdout.contains("slow calls under churn"), "{stdout}");
    assert!(stdout.contains("meshwork: "), "{stdout}");
}

/// Without `--churn` (the default), no contestant runs a churned phase.
#[test]
fn short_run_without_churn() {
    let (v, stdout) = run("quiet", &["--only", "meshwork,meshwork-http-h2"]);
    let contestants = v["contestants"].as_array().expect("contestants");
    assert_eq!(contestants.len(), 2, "{v}");
    for c in contestants {
        assert_eq!(c["errors"].as_u64(), Some(0), "{c}");
        assert!(c.get("churn_p99_us").is_none(), "{c}");
    }
    assert!(!stdout.contains("EDS churn"), "{stdout}");
}

#[test]
fn side_by_side_runs_the_contestants_at_the_same_time() {
    let (v, stdout) = run(
        "side-by-side",
        &[
            "--only",
            "tonic-mtls,meshwork-untraced",
            "--side-by-side",
            "--rounds",
            "2",
        ],
    );
    assert_eq!(v["settings"]["side_by_side"], Value::Bool(true), "{v}");
    assert!(stdout.contains("side by side"), "{stdout}");
    let contestants = v["contestants"].as_array().expect("contestants");
    assert_eq!(contestants.len(), 2, "{v}");
    for c in contestants {
        assert_eq!(c["errors"].as_u64(), Some(0), "{c}");
        let name = c["name"].as_str().expect("name");
        let rounds = v["rounds"][name].as_array().expect("rounds");
        assert_eq!(rounds.len(), 2, "both rounds of {name}: {v}");
        for r in rounds {
            assert!(r["closed_calls"].as_u64() > Some(0), "{r}");
            assert!(r["closed_cpu_s_per_1k"].as_f64() > Some(0.0), "{r}");
        }
    }
    // Each round's two measured spans overlap: they ran at the same time.
    let span = |name: &str, round: usize| {
        let r = &v["rounds"][name][round];
        let (from, to) = (
            r["measured_from_unix_ms"].as_u64(),
            r["measured_to_unix_ms"].as_u64(),
        );
        (from.expect("from"), to.expect("to"))
    };
    for round in 0..2 {
        let (a, b) = (span("tonic-mtls", round), span("meshwork-untraced", round));
        assert!(
            a.0 < b.1 && b.0 < a.1,
            "round {round}: {a:?} and {b:?} do not overlap"
        );
    }

    // With churn, one contestant's cluster would change under the other's phases.
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--side-by-side", "--churn", "5"])
        .output()
        .expect("run the loadtest binary");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--side-by-side runs without --churn"),
        "{stderr}"
    );
}

/// The direct children of process `pid` (Linux).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_client_whose_harness_is_killed_exits() {
    let mut harness = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--only", "tonic-mtls", "--duration", "60s", "--rounds", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run the loadtest binary");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let client = loop {
        if let Some(&c) = children(harness.id()).first() {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no client process started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // A signal, as `kill` or `pkill` sends it: the harness's `kill_on_drop` never runs.
    let status = Command::new("kill")
        .args(["-TERM", &harness.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _ = harness.wait();
    let proc_dir = format!("/proc/{client}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&proc_dir).exists() {
        // Reaped by init once it exits; a zombie has no command line left.
        let cmdline = std::fs::read(format!("{proc_dir}/cmdline")).unwrap_or_default();
        if cmdline.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client {client} outlived its harness by 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
