//! The README's main command must keep working: run the demo binary and check its story.

#[test]
fn demo_runs_and_narrates_the_control_loop() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "greeter-stable 90% / greeter-canary 10%",
        "greeter-stable 50% / greeter-canary 50%",
        "greeter-canary: 127.0.0.1:50071, 127.0.0.1:50072",
        "ClusterLoadAssignment  greeter-canary       version 2   ACKED",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
