//! The results: a table per fault kind, the resource samples, the targets, and the same as
//! JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::load::Bucket;
use crate::sample::Sample;
use crate::schedule::{self, Fault};

/// RSS may grow at most this much after the warm-up.
const MAX_RSS_DRIFT_PCT: f64 = 5.0;
/// Rotations a run must do, whatever its length.
const MIN_ROTATIONS: u32 = 10;

/// What the dump and the metrics showed of a NACK or a deletion.
#[derive(Debug, Clone)]
pub(crate) struct Visibility {
    pub(crate) dump: bool,
    pub(crate) metrics: bool,
    pub(crate) detail: String,
}

/// One injected fault.
#[derive(Debug, Clone)]
pub(crate) struct EventRecord {
    pub(crate) fault: Fault,
    pub(crate) planned: Duration,
    pub(crate) began: Duration,
    pub(crate) took: Duration,
    /// The client's calls in flight when it was injected.
    pub(crate) in_flight: usize,
    pub(crate) visible: Option<Visibility>,
    /// What the injection saw (e.g. how many calls a killed backend was serving).
    pub(crate) note: Option<String>,
    /// The injection itself failed (the harness could not do it).
    pub(crate) error: Option<String>,
}

impl EventRecord {
    /// A progress line.
    pub(crate) fn line(&self) -> String {
        let mut s = format!(
            "[{:7.1}s] {} ({:.0} ms, {} calls in flight)",
            self.began.as_secs_f64(),
            self.fault.name(),
            self.took.as_secs_f64() * 1000.0,
            self.in_flight
        );
        if let Some(v) = &self.visible {
            s += &format!(" dump={} metrics={}", v.dump, v.metrics);
        }
        if let Some(n) = &self.note {
            s += &format!(" {n}");
        }
        if let Some(e) = &self.error {
            s += &format!(" FAILED: {e}");
        }
        s
    }

    fn json(&self) -> Value {
        json!({
            "fault": self.fault.name(),
            "planned_s": self.planned.as_secs_f64(),
            "began_s": self.began.as_secs_f64(),
            "took_s": self.took.as_secs_f64(),
            "calls_in_flight": self.in_flight,
            "visible": self.visible.as_ref().map(|v| json!({
                "dump": v.dump, "metrics": v.metrics, "detail": v.detail,
            })),
            "note": self.note,
            "error": self.error,
        })
    }
}

/// The run's settings, as reported.
#[derive(Debug, Clone)]
pub(crate) struct SettingsOut {
    pub(crate) duration: Duration,
    pub(crate) rate: u32,
    pub(crate) concurrency: usize,
    pub(crate) backends: usize,
    pub(crate) warmup: Duration,
    pub(crate) slot: Duration,
    pub(crate) cycles: usize,
}

/// Everything the report is made of.
pub(crate) struct Inputs {
    pub(crate) settings: SettingsOut,
    pub(crate) elapsed: Duration,
    pub(crate) events: Vec<EventRecord>,
    /// Bucket 0: before the first fault; bucket i + 1: event i.
    pub(crate) buckets: Vec<Bucket>,
    pub(crate) shed: u64,
    pub(crate) backends: BTreeMap<String, u64>,
    pub(crate) warm: Sample,
    pub(crate) last: Sample,
    pub(crate) samples: Vec<Sample>,
    pub(crate) rotations: u32,
}

/// One row of the table.
#[derive(Debug, Clone, Default)]
struct Row {
    name: String,
    injected: usize,
    failed_injections: usize,
    calls: u64,
    failed: u64,
    expected: u64,
    unsaved: u64,
    wrong: u64,
    /// `None`: the kind need not show; else whether every event of it showed.
    visible: Option<bool>,
    errors: Vec<String>,
}

impl Row {
    fn add(&mut self, b: &Bucket) {
        self.calls += b.calls;
        self.failed += b.failed;
        self.expected += b.expected;
        self.unsaved += b.unsaved;
        self.wrong += b.wrong;
        for e in &b.errors {
            if self.errors.len() < 3 && !self.errors.contains(e) {
                self.errors.push(e.clone());
            }
        }
    }

    fn json(&self) -> Value {
        json!({
            "fault": self.name,
            "injected": self.injected,
            "injections_failed": self.failed_injections,
            "calls": self.calls,
            "failed": self.failed,
            "expected_failures": self.expected,
            "should_have_been_saved": self.unsaved,
            "wrong_answers": self.wrong,
            "visible": self.visible,
            "errors": self.errors,
        })
    }
}

/// One target and whether it was met.
#[derive(Debug, Clone)]
struct Target {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// The whole report.
pub(crate) struct Report {
    inputs: Inputs,
    rows: Vec<Row>,
    total: Row,
    targets: Vec<Target>,
}

fn pct(from: f64, to: f64) -> f64 {
    (to - from) / from * 100.0
}

impl Inputs {
    /// RSS when the second cycle began, in a run of several: by then every fault kind has
    /// run once and made its first-time allocations (arenas grown to their working size,
    /// new threads' stacks, code paged in: a heaptrack of the harness showed the live heap
    /// flat from cycle to cycle while RSS rose through the first), so the target's drift
    /// counts from there; in a one-cycle run, from the warm-up's end.
    fn rss_after_first_cycle(&self) -> Option<f64> {
        let second = self.events.get(schedule::CYCLE.len())?.began;
        self.samples
            .iter()
            .find(|s| s.t >= second)
            .map(|s| s.rss_mib)
    }
}

impl Report {
    /// Aggregates the buckets per fault kind and judges the targets.
    pub(crate) fn build(inputs: Inputs) -> Self {
        let mut steady = Row {
            name: "none (before the first fault)".into(),
            ..Row::default()
        };
        if let Some(b) = inputs.buckets.first() {
            steady.add(b);
        }
        let mut rows: Vec<Row> = Fault::ALL
            .iter()
            .map(|f| Row {
                name: f.name().into(),
                visible: f.must_be_visible().then_some(true),
                ..Row::default()
            })
            .collect();
        for (i, e) in inputs.events.iter().enumerate() {
            let k = Fault::ALL.iter().position(|f| *f == e.fault).unwrap_or(0);
            let row = &mut rows[k];
            row.injected += 1;
            if e.error.is_some() {
                row.failed_injections += 1;
            }
            if let Some(b) = inputs.buckets.get(i + 1) {
                row.add(b);
            }
            if e.fault.must_be_visible() {
                let shown = e.visible.as_ref().is_some_and(|v| v.dump && v.metrics);
                row.visible = Some(row.visible.unwrap_or(true) && shown);
            }
        }
        rows.insert(0, steady);
        let mut total = Row {
            name: "total".into(),
            ..Row::default()
        };
        for r in &rows {
            total.calls += r.calls;
            total.failed += r.failed;
            total.expected += r.expected;
            total.unsaved += r.unsaved;
            total.wrong += r.wrong;
            total.injected += r.injected;
            total.failed_injections += r.failed_injections;
        }

        let (warm, last) = (inputs.warm, inputs.last);
        let (reference, since) = match inputs.rss_after_first_cycle() {
            Some(rss) => (rss, "the second cycle's start"),
            None => (warm.rss_mib, "the warm-up's end"),
        };
        let drift = pct(reference, last.rss_mib);
        let fd_max = inputs.samples.iter().map(|s| s.fds).max().unwrap_or(0);
        let task_max = inputs
            .samples
            .iter()
            .map(|s| s.mesh_tasks())
            .max()
            .unwrap_or(0);
        // A few connections or tasks may be mid-handshake at either sample.
        let fd_slack = 4;
        let task_slack = (warm.mesh_tasks() / 10).max(4);
        let rotations = schedule::rotations(
            inputs
                .events
                .iter()
                .filter(|e| e.error.is_none())
                .map(|e| e.fault),
        );
        let missing: Vec<&str> = rows[1..]
            .iter()
            .filter(|r| r.injected == r.failed_injections)
            .map(|r| r.name.as_str())
            .collect();
        let not_shown: Vec<String> = inputs
            .events
            .iter()
            .filter(|e| e.fault.must_be_visible())
            .filter(|e| !e.visible.as_ref().is_some_and(|v| v.dump && v.metrics))
            .map(|e| format!("{} at {:.1}s", e.fault.name(), e.began.as_secs_f64()))
            .collect();
        let targets = vec![
            Target {
                name: "no failed call that retries or failover could have saved",
                ok: total.unsaved == 0,
                detail: format!(
                    "{} should have been saved ({} wrong answers)",
                    total.unsaved, total.wrong
                ),
            },
            Target {
                name: "RSS drift after warm-up under 5 %",
                ok: drift.is_finite() && drift < MAX_RSS_DRIFT_PCT,
                detail: format!(
                    "{reference:.1} MiB at {since} -> {:.1} MiB ({drift:+.1} %; {:+.1} % from the warm-up's end)",
                    last.rss_mib,
                    pct(warm.rss_mib, last.rss_mib)
                ),
            },
            Target {
                name: "no fd growth",
                ok: last.fds <= warm.fds + fd_slack,
                detail: format!(
                    "{} after warm-up, {} at the end, {fd_max} at most (slack {fd_slack})",
                    warm.fds, last.fds
                ),
            },
            Target {
                name: "no task growth",
                ok: last.mesh_tasks() <= warm.mesh_tasks() + task_slack,
                detail: format!(
                    "{} after warm-up, {} at the end, {task_max} at most, calls in flight \
                     not counted (slack {task_slack})",
                    warm.mesh_tasks(),
                    last.mesh_tasks()
                ),
            },
            Target {
                name: "every NACK and deletion visible in the config dump and metrics",
                ok: not_shown.is_empty(),
                detail: if not_shown.is_empty() {
                    "all".into()
                } else {
                    format!("not shown: {}", not_shown.join(", "))
                },
            },
            Target {
                name: "at least 10 identity rotations",
                ok: rotations >= MIN_ROTATIONS as usize,
                detail: format!(
                    "{rotations} (SVID re-issues and whole CA rotations; {} SVID sets issued)",
                    inputs.rotations
                ),
            },
            Target {
                name: "every fault kind injected, every injection done",
                ok: missing.is_empty() && total.failed_injections == 0,
                detail: format!(
                    "{} injections failed; never injected: {missing:?}",
                    total.failed_injections
                ),
            },
        ];
        Self {
            inputs,
            rows,
            total,
            targets,
        }
    }

    /// Whether every target was met.
    pub(crate) fn passed(&self) -> bool {
        self.targets.iter().all(|t| t.ok)
    }

    /// Prints the table, the samples' summary and the targets.
    pub(crate) fn print(&self) {
        println!(
            "\n{:<34} {:>8} {:>8} {:>7} {:>9} {:>7} {:>8}",
            "fault", "injected", "calls", "failed", "expected", "unsaved", "visible"
        );
        for r in self.rows.iter().chain([&self.total]) {
            let visible = match r.visible {
                None => "-",
                Some(true) => "yes",
                Some(false) => "NO",
            };
            println!(
                "{:<34} {:>8} {:>8} {:>7} {:>9} {:>7} {:>8}",
                r.name, r.injected, r.calls, r.failed, r.expected, r.unsaved, visible
            );
        }
        println!(
            "(calls: ended while that fault was the latest; expected: the config said they \
             must fail (cluster deleted); unsaved: should have been saved by a retry or \
             failover)"
        );
        for r in &self.rows {
            for e in &r.errors {
                println!("  {}: {e}", r.name);
            }
        }
        let i = &self.inputs;
        println!(
            "calls answered per backend: {}; shed by the harness's concurrency limit: {}",
            i.backends
                .iter()
                .map(|(b, n)| format!("{b}={n}"))
                .collect::<Vec<_>>()
                .join(" "),
            i.shed
        );
        let max = |f: fn(&Sample) -> f64| i.samples.iter().map(f).fold(f64::NAN, f64::max);
        if let Some(rss) = i.rss_after_first_cycle() {
            println!(
                "RSS after the first cycle {rss:.1} MiB, drift from there {:+.1} %",
                pct(rss, i.last.rss_mib)
            );
        }
        println!(
            "RSS MiB warm-up/end/max {:.1}/{:.1}/{:.1}; fds {}/{}/{}; mesh tasks {}/{}/{}",
            i.warm.rss_mib,
            i.last.rss_mib,
            max(|s| s.rss_mib),
            i.warm.fds,
            i.last.fds,
            max(|s| s.fds as f64),
            i.warm.mesh_tasks(),
            i.last.mesh_tasks(),
            max(|s| s.mesh_tasks() as f64),
        );
        println!();
        for t in &self.targets {
            println!(
                "{} {}: {}",
                if t.ok { "ok    " } else { "MISSED" },
                t.name,
                t.detail
            );
        }
    }

    /// Everything, as JSON.
    pub(crate) fn json(&self) -> Value {
        let i = &self.inputs;
        let s = &i.settings;
        let sample = |x: &Sample| {
            json!({
                "t_s": x.t.as_secs_f64(),
                "rss_mib": x.rss_mib,
                "fds": x.fds,
                "tasks": x.tasks,
                "calls_in_flight": x.inflight,
                "mesh_tasks": x.mesh_tasks(),
            })
        };
        let fds: Vec<usize> = i.samples.iter().map(|x| x.fds).collect();
        let tasks: Vec<usize> = i.samples.iter().map(|x| x.mesh_tasks()).collect();
        json!({
            "passed": self.passed(),
            "machine": meshwork_benches::procfs::machine_line(),
            "settings": {
                "duration_s": s.duration.as_secs_f64(),
                "rate": s.rate,
                "concurrency": s.concurrency,
                "backends": s.backends,
                "warmup_s": s.warmup.as_secs_f64(),
                "slot_s": s.slot.as_secs_f64(),
                "cycles": s.cycles,
            },
            "elapsed_s": i.elapsed.as_secs_f64(),
            "faults": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
            "total": self.total.json(),
            "targets": self.targets.iter().map(|t| json!({
                "name": t.name, "ok": t.ok, "detail": t.detail,
            })).collect::<Vec<_>>(),
            "rotations": schedule::rotations(
                i.events.iter().filter(|e| e.error.is_none()).map(|e| e.fault)
            ),
            "rss_mib": {
                "warmup_end": i.warm.rss_mib,
                "end": i.last.rss_mib,
                "drift_pct": pct(i.warm.rss_mib, i.last.rss_mib),
                "target_drift_pct": pct(
                    i.rss_after_first_cycle().unwrap_or(i.warm.rss_mib),
                    i.last.rss_mib
                ),
                "after_first_cycle": i.rss_after_first_cycle(),
                "drift_after_first_cycle_pct":
                    i.rss_after_first_cycle().map(|r| pct(r, i.last.rss_mib)),
                "max": i.samples.iter().map(|x| x.rss_mib).fold(f64::NAN, f64::max),
            },
            "fds": {
                "first": fds.first(), "warmup_end": i.warm.fds, "last": i.last.fds,
                "max": fds.iter().max(),
            },
            "mesh_tasks": {
                "first": tasks.first(), "warmup_end": i.warm.mesh_tasks(),
                "last": i.last.mesh_tasks(), "max": tasks.iter().max(),
            },
            "shed": i.shed,
            "calls_per_backend": i.backends,
            "events": i.events.iter().map(EventRecord::json).collect::<Vec<_>>(),
            "samples": i.samples.iter().map(sample).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rss_mib: f64, fds: usize, tasks: usize) -> Sample {
        Sample {
            t: Duration::ZERO,
            rss_mib,
            fds,
            tasks,
            inflight: 0,
        }
    }

    /// A run of one cycle's faults where every call of every event succeeded, with the
    /// given buckets changed.
    fn inputs(edit: impl FnOnce(&mut Vec<Bucket>, &mut Vec<EventRecord>)) -> Inputs {
        let plan = schedule::plan(
            Duration::from_secs(60),
            Duration::from_secs(6),
            Duration::from_secs(5),
        );
        let mut events: Vec<EventRecord> = plan
            .events
            .iter()
            .map(|(at, f)| EventRecord {
                fault: *f,
                planned: *at,
                began: *at,
                took: Duration::ZERO,
                in_flight: 1,
                visible: f.must_be_visible().then(|| Visibility {
                    dump: true,
                    metrics: true,
                    detail: String::new(),
                }),
                note: None,
                error: None,
            })
            .collect();
        let mut buckets = vec![
            Bucket {
                calls: 10,
                ..Bucket::default()
            };
            events.len() + 1
        ];
        edit(&mut buckets, &mut events);
        Inputs {
            settings: SettingsOut {
                duration: Duration::from_secs(60),
                rate: 10,
                concurrency: 1,
                backends: 3,
                warmup: Duration::from_secs(6),
                slot: plan.slot,
                cycles: 1,
            },
            elapsed: Duration::from_secs(60),
            events,
            buckets,
            shed: 0,
            backends: BTreeMap::new(),
            warm: sample(100.0, 30, 20),
            last: sample(102.0, 30, 20),
            samples: vec![sample(100.0, 30, 20)],
            rotations: 12,
        }
    }

    fn missed(r: &Report) -> Vec<&'static str> {
        r.targets.iter().filter(|t| !t.ok).map(|t| t.name).collect()
    }

    #[test]
    fn a_clean_run_passes() {
        let r = Report::build(inputs(|_, _| {}));
        assert!(r.passed(), "{:?}", missed(&r));
        assert_eq!(r.total.calls, 270);
    }

    #[test]
    fn each_target_can_be_missed() {
        let unsaved = Report::build(inputs(|b, _| {
            b[7].failed = 1;
            b[7].unsaved = 1;
        }));
        assert_eq!(
            missed(&unsaved),
            ["no failed call that retries or failover could have saved"]
        );
        // Expected failures (the deleted cluster's) miss nothing.
        let expected = Report::build(inputs(|b, _| {
            b[20].failed = 5;
            b[20].expected = 5;
        }));
        assert!(expected.passed());
        let mut grown = inputs(|_, _| {});
        grown.last = sample(106.0, 40, 40);
        assert_eq!(
            missed(&Report::build(grown)),
            [
                "RSS drift after warm-up under 5 %",
                "no fd growth",
                "no task growth"
            ]
        );
        let hidden = Report::build(inputs(|_, e| {
            let nack = e.iter_mut().find(|e| e.fault == Fault::Nack).unwrap();
            nack.visible.as_mut().unwrap().metrics = false;
        }));
        assert_eq!(
            missed(&hidden),
            ["every NACK and deletion visible in the config dump and metrics"]
        );
        let failed = Report::build(inputs(|_, e| {
            for e in e.iter_mut().filter(|e| e.fault == Fault::BackendKilled) {
                e.error = Some("could not".into());
            }
        }));
        assert_eq!(
            missed(&failed),
            ["every fault kind injected, every injection done"]
        );
    }
}
