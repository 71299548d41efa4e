//! The README's main command must keep working: run the demo binary and check its story.

use std::time::{Duration, Instant};

#[test]
fn demo_runs_the_whole_story_in_under_a_minute() {
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .expect("run demo");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    for expected in [
        // Who talks to whom: every backend saw the frontend's SVID.
        r#"saw callers ["spiffe://demo.local/ns/shop/sa/frontend"]"#,
        "200 calls at greeter-stable 90% / greeter-canary 10%",
        "greeter-stable 50% / greeter-canary 50%",
        // Ejected: no call reached greeter-a in the second batch.
        "next 100 calls:  greeter-a got 0 (ejected",
        "circuit breaker open: max_requests (8) reached",
        "refused: PermissionDenied",
        "ClusterLoadAssignment  greeter-stable   version 1   ACKED",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // Retries hid the flaky backend: the caller saw no error in section 4.
    let flaky = stdout
        .split("4. greeter-b turns flaky")
        .nth(1)
        .and_then(|s| s.lines().find(|l| l.contains("the caller saw")))
        .expect("section 4");
    assert!(flaky.ends_with("errors 0"), "{flaky}");

    // Section 9: a retried call's trace, Sent -> Attempt -> Recv by indentation.
    let traces = stdout.split("9. Traces").nth(1).expect("section 9");
    let trace_line = traces
        .lines()
        .find_map(|l| l.split("trace ").nth(1))
        .expect("a trace line");
    let id = trace_line.trim_end_matches(':');
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "trace id {id:?}"
    );
    let tree: Vec<(usize, &str)> = traces
        .lines()
        .filter(|l| l.contains(".helloworld.Greeter.SayHello"))
        .map(|l| {
            let name = l.trim_start();
            (l.len() - name.len(), name)
        })
        .collect();
    let under = |child: &str, parent: &str| {
        tree.iter().enumerate().any(|(i, (depth, name))| {
            name.starts_with(child)
                && tree[..i]
                    .iter()
                    .rev()
                    .find(|(d, _)| d < depth)
                    .is_some_and(|(_, p)| p.starts_with(parent))
        })
    };
    assert!(
        under("Attempt.", "Sent."),
        "an Attempt under a Sent:\n{traces}"
    );
    assert!(
        under("Recv.", "Attempt."),
        "a Recv under an Attempt:\n{traces}"
    );
    let attempts = tree
        .iter()
        .filter(|(_, n)| n.starts_with("Attempt."))
        .count();
    assert!(attempts >= 2, "a retried call:\n{traces}");
}
