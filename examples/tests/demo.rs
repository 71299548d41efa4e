//! The README's main command must keep working: run the demo binary and check its story,
//! and its OTLP export to a real receiver.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use meshwork_test_support::otlp::{OtlpSink, Span};

#[test]
fn demo_runs_the_whole_story_in_under_a_minute() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
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
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| {
            l.trim_start()
                .starts_with("ClusterLoadAssignment  greeter-stable ")
                && l.ends_with("ACKED")
        }),
        "greeter-stable's endpoints ACKED:\n{stdout}"
    );

    // Section 8: the control plane drives greeter-d's listener, mTLS and RBAC, and changes
    // them live; each step's outcomes, in the story's order.
    let xds = stdout
        .split("8. The control plane drives a server too")
        .nth(1)
        .and_then(|s| s.split("\n9. ").next())
        .expect("section 8");
    let mut rest = xds;
    for expected in [
        "Listener \"xds.istio.io/grpc/lds/inbound/0.0.0.0:",
        "greeter-d serving state: serving",
        "STRICT mTLS",
        "frontend (mTLS):  answered by greeter-d",
        "intruder (mTLS):  PermissionDenied",
        "legacy (plaintext): Unavailable",
        "adds spiffe://demo.local/ns/shop/sa/frontend to the DENY policy",
        "frontend (mTLS):  PermissionDenied",
        "takes it out again",
        "frontend (mTLS):  answered by greeter-d",
        "PERMISSIVE",
        "frontend (mTLS):  answered by greeter-d",
        "intruder (mTLS):  PermissionDenied",
        "legacy (plaintext): answered by greeter-d",
        "back to STRICT",
        "frontend (mTLS):  answered by greeter-d",
        "legacy (plaintext): Unavailable",
        "deletes the Listener",
        "greeter-d serving state: not serving: Listener",
        "does not exist",
        "frontend (mTLS):  Unavailable",
        "sends it again",
        "greeter-d serving state: serving",
        "frontend (mTLS):  answered by greeter-d",
    ] {
        let at = rest
            .find(expected)
            .unwrap_or_else(|| panic!("missing {expected:?} (in order) in section 8:\n{xds}"));
        rest = &rest[at + expected.len()..];
    }
    // Retries hid the flaky backend: the caller saw no error in section 4.
    let flaky = stdout
        .split("4. greeter-b turns flaky")
        .nth(1)
        .and_then(|s| s.lines().find(|l| l.contains("the caller saw")))
        .expect("section 4");
    assert!(flaky.ends_with("errors 0"), "{flaky}");

    // Section 10: a retried call's trace, Sent -> Attempt -> Recv by indentation.
    let traces = stdout.split("10. Traces").nth(1).expect("section 10");
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

    // Each simulated service records under its own service.name: the client's spans are the
    // frontend's, the server's the backend's that answered.
    let by_service = traces
        .lines()
        .find_map(|l| l.trim().strip_prefix("spans by service.name: "))
        .expect("spans by service");
    let services: BTreeSet<&str> = by_service
        .split(", ")
        .filter_map(|s| s.rsplit_once(' ').map(|(name, _)| name))
        .collect();
    assert!(
        services.len() >= 2 && services.contains("frontend"),
        "{by_service}"
    );
    fn service_of(name: &str) -> &str {
        name.rsplit_once(" service ")
            .and_then(|(_, s)| s.split(' ').next())
            .unwrap_or_else(|| panic!("no service in {name:?}"))
    }
    for (_, name) in &tree {
        let service = service_of(name);
        if name.starts_with("Recv.") {
            assert!(
                ["greeter-stable", "greeter-canary"].contains(&service),
                "{name}"
            );
        } else {
            assert_eq!(service, "frontend", "{name}");
        }
    }
    assert!(
        tree.iter().any(|(_, n)| n.starts_with("Recv.")),
        "a Recv span:\n{traces}"
    );
}

#[test]
#[ignore = "needs the interop venv: scripts/test provides it (MESHWORK_PEERS_VENV)"]
fn demo_exports_each_service_under_its_own_name_over_otlp() {
    let sink = OtlpSink::start(&meshwork_test_support::peers::venv());
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", sink.port()),
        )
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}");
    assert!(
        stdout.contains("10. Traces and metrics were exported over OTLP"),
        "{stdout}"
    );

    let spans = sink.spans();
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for expected in [
        "frontend",
        "greeter-stable",
        "greeter-canary",
        "intruder",
        "greeter-xds",
        "legacy",
    ] {
        assert!(services.contains(expected), "{services:?}");
    }
    // The hop between services: a backend's Recv span is the child of a frontend's Attempt.
    let by_id: HashMap<(&str, &str), &Span> = spans
        .iter()
        .map(|s| ((s.trace.as_str(), s.id.as_str()), s))
        .collect();
    let hop = spans.iter().any(|s| {
        s.name.starts_with("Recv.")
            && s.service.starts_with("greeter-")
            && by_id
                .get(&(s.trace.as_str(), s.parent.as_str()))
                .is_some_and(|p| p.name.starts_with("Attempt.") && p.service == "frontend")
    });
    assert!(hop, "no frontend Attempt -> greeter Recv across services");

    let metrics: BTreeSet<String> = sink.metrics().into_iter().map(|m| m.service).collect();
    assert!(
        metrics.contains("frontend") && metrics.contains("greeter-stable"),
        "{metrics:?}"
    );
}
