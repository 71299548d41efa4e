//! The load harness runs end to end in a short version, so it cannot rot: every contestant
//! (the Envoy ones when Envoy is installed; under `CI` a missing Envoy fails the run), the
//! JSON shape, and zero errors.

use std::process::Command;

use serde_json::Value;

const NAMES: [&str; 6] = [
    "tonic-plaintext",
    "tonic-mtls",
    "meshwork",
    "meshwork-untraced",
    "envoy-sidecar",
    "meshwork-via-envoy",
];

#[test]
fn short_run_of_every_contestant() {
    let json = std::env::temp_dir().join(format!("meshwork-loadtest-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--duration", "400ms", "--rounds", "1", "--warmup", "100ms"])
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
            ["envoy-sidecar", "meshwork-via-envoy"].contains(&s["name"].as_str().unwrap()),
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
    }
    assert!(stdout.contains("ratios to tonic-mtls"), "{stdout}");
}
