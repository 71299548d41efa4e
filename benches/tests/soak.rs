//! The soak harness's one-minute run is a test: every fault kind injected while calls run,
//! and every target of issue #15 read back from the harness's JSON, so a missed target
//! fails the test with the harness's own account of it.
//!
//! The run is real time (it is a soak); this test only starts the binary and reads what it
//! wrote. The rate is low to keep the CPU modest on a shared machine.

use std::process::Command;

use serde_json::Value;

/// Every fault kind the harness knows, as its table names them.
const FAULTS: [&str; 13] = [
    "svid-rotation",
    "ca-rotation: new root added",
    "ca-rotation: svids from new ca",
    "ca-rotation: old root removed",
    "endpoint-added",
    "endpoint-removed (drained)",
    "backend-killed (SIGKILL)",
    "endpoint-restarted (same addr)",
    "control-plane-killed",
    "control-plane-restarted (same)",
    "control-plane-restarted (moved)",
    "nacked-update",
    "cluster-deleted (in use)",
];

#[test]
fn one_minute_under_every_fault_meets_every_target() {
    let json = std::env::temp_dir().join(format!("meshwork-soak-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args(["--duration", "60s", "--rate", "40", "--concurrency", "16"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run the soak binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON ({e}), {}:\n{stdout}\n{stderr}", out.status));
    let _ = std::fs::remove_file(&json);
    let v: Value = serde_json::from_str(&text).unwrap();

    let missed: Vec<&Value> = v["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| t["ok"] != true)
        .collect();
    assert!(missed.is_empty(), "targets missed: {missed:#?}\n{stdout}");
    assert_eq!(v["passed"], true, "{stdout}");
    assert!(out.status.success(), "{}:\n{stdout}\n{stderr}", out.status);

    // The targets again, from the raw figures, so a harness that judged wrongly fails too.
    let faults = v["faults"].as_array().expect("faults");
    for name in FAULTS {
        let row = faults
            .iter()
            .find(|r| r["fault"] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {stdout}"));
        assert!(
            row["injected"].as_u64() >= Some(1),
            "{name} not injected: {row}"
        );
        assert_eq!(row["injections_failed"], 0, "{name}: {row}");
        assert_eq!(row["should_have_been_saved"], 0, "{name}: {row}");
        assert!(
            row["calls"].as_u64() > Some(0),
            "no calls during {name}: {row}"
        );
        if name == "nacked-update" || name == "cluster-deleted (in use)" {
            assert_eq!(row["visible"], true, "{name} not visible: {row}");
        }
    }
    let total = &v["total"];
    assert_eq!(total["should_have_been_saved"], 0, "{total}");
    assert_eq!(total["wrong_answers"], 0, "{total}");
    assert!(total["calls"].as_u64() > Some(1000), "{total}");
    // Only the deleted cluster's window may fail calls, and it must have: the deletion
    // reached the data path.
    assert_eq!(total["failed"], total["expected_failures"], "{total}");
    assert!(total["expected_failures"].as_u64() > Some(0), "{total}");
    assert!(v["rotations"].as_u64() >= Some(10), "{}", v["rotations"]);
    let drift = v["rss_mib"]["target_drift_pct"].as_f64().expect("drift");
    assert!(drift < 5.0, "RSS drift {drift} %");
    // The killed backend was serving a call when it died, so the kill tested retries.
    let killed = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["fault"] == "backend-killed (SIGKILL)")
        .expect("a kill");
    assert!(
        killed["note"]
            .as_str()
            .is_some_and(|n| !n.contains("serving 0 call")),
        "{killed}"
    );
    let per_backend = v["calls_per_backend"].as_object().expect("per backend");
    assert!(
        per_backend.len() >= 4,
        "calls spread over the backends: {per_backend:?}"
    );
}
