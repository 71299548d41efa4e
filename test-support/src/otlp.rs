//! A real OTLP/gRPC receiver for telemetry tests: oteltest's `GrpcSink` from the interop venv,
//! run by `mesh-core/tests/peers/otlp_sink.py`, and what it received, flattened.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The receiver's script, beside the first test that used it.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../mesh-core/tests/peers/otlp_sink.py"
);

/// The OTLP receiver, stopped (stdin closed, then killed) on drop.
#[derive(Debug)]
pub struct OtlpSink {
    child: Child,
    out: PathBuf,
    port: u16,
}

/// A span as received, with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its resource's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Its kind as protobuf JSON names it (`SPAN_KIND_SERVER`, ...).
    pub kind: String,
    /// The trace ID, as the receiver's JSON writes it.
    pub trace: String,
    /// The span ID, likewise.
    pub id: String,
    /// The parent span ID, empty for a root.
    pub parent: String,
    /// Its attributes, as strings.
    pub attrs: HashMap<String, String>,
}

/// A metric as received.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Its resource's `service.name`.
    pub service: String,
    /// The metric's name.
    pub name: String,
}

impl OtlpSink {
    /// Starts the receiver from `venv` (see [`peers::venv`](crate::peers::venv)) on a free
    /// loopback port, once it says it listens.
    ///
    /// # Panics
    /// When it does not start.
    pub fn start(venv: &Path) -> Self {
        let out = crate::temp_dir("otlp").join("received.jsonl");
        // A free port: the receiver takes the one it is given.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(venv.join("bin/python"))
            .arg(SCRIPT)
            .args(["--port", &port.to_string(), "--out"])
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OTLP sink");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the OTLP sink's first line");
        assert_eq!(line.trim(), "ready", "the OTLP sink did not start");
        Self { child, out, port }
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The export requests of `kind` ("traces", "metrics") received so far: each resource
    /// entry of `list` with its `service.name`, and its scope entries (either of `scopes`:
    /// oteltest's protobuf JSON names the scope lists by their pre-1.0 names).
    fn resources(&self, kind: &str, list: &str, scopes: [&str; 2]) -> Vec<(String, Value)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            if v["kind"] != kind {
                continue;
            }
            for r in v["request"][list].as_array().into_iter().flatten() {
                let service = attributes(&r["resource"]["attributes"])
                    .remove("service.name")
                    .unwrap_or_default();
                for scope in scopes.iter().filter_map(|k| r[*k].as_array()).flatten() {
                    out.push((service.clone(), scope.clone()));
                }
            }
        }
        out
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        let scopes = ["scopeSpans", "instrumentationLibrarySpans"];
        let mut spans = Vec::new();
        for (service, scope) in self.resources("traces", "resourceSpans", scopes) {
            for s in scope["spans"].as_array().into_iter().flatten() {
                let field = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                spans.push(Span {
                    service: service.clone(),
                    name: field("name"),
                    kind: field("kind"),
                    trace: field("traceId"),
                    id: field("spanId"),
                    parent: field("parentSpanId"),
                    attrs: attributes(&s["attributes"]),
                });
            }
        }
        spans
    }

    /// Every metric received so far.
    pub fn metrics(&self) -> Vec<Metric> {
        let scopes = ["scopeMetrics", "instrumentationLibraryMetrics"];
        let mut metrics = Vec::new();
        for (service, scope) in self.resources("metrics", "resourceMetrics", scopes) {
            for m in scope["metrics"].as_array().into_iter().flatten() {
                metrics.push(Metric {
                    service: service.clone(),
                    name: m["name"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
        metrics
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OTLP JSON attributes as strings (`intValue` is a string in protobuf JSON already).
fn attributes(list: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for kv in list.as_array().into_iter().flatten() {
        let v = &kv["value"];
        let value = ["stringValue", "intValue", "boolValue", "doubleValue"]
            .iter()
            .find_map(|k| v.get(*k))
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        out.insert(kv["key"].as_str().unwrap_or_default().to_owned(), value);
    }
    out
}
