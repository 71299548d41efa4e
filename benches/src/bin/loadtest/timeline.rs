//! The churned windows' timeline, in the client process: each call's intended start, latency
//! and serving endpoint, and the client's own view of each EDS update (when its xDS client
//! applied it), so that the calls slower than the quiet windows' p99 can be placed against
//! the updates. An update is an `add` (the second endpoint joins), a `remove` (it leaves)
//! or a `weight` (both stay, their localities' weights swap: `--churn-kind weight`).
//!
//! The update times come from a watch of the cluster's `ClusterLoadAssignment` on the same
//! xDS client the channel uses: it sees each update when the client's hub hands it to its
//! watchers, the moment the balancer's endpoint watch gets it too (the balancer's driver
//! then rebuilds its table on its own task, so the table follows within a wake-up).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use meshwork_xds::client::{WatchState, XdsClient};
use meshwork_xds::resource::{ClusterLoadAssignment, Resource, ResourceType};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// A slow call starting this soon after an update counts as near it.
pub(crate) const NEAR: Duration = Duration::from_millis(5);
/// At most this many slow calls are listed one by one in the JSON (the counts cover all).
const MAX_LISTED: usize = 200;
/// Upper edges (ms) of the buckets of "time since the latest update" of the slow calls; the
/// last bucket is open.
const SINCE_BUCKETS_MS: [u64; 7] = [1, 2, 5, 10, 20, 50, 100];

/// What an update changed, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum UpdateKind {
    /// An endpoint joined.
    Add,
    /// An endpoint left.
    Remove,
    /// The same endpoints, other weights.
    Weight,
}

pub(crate) const KINDS: [UpdateKind; 3] = [UpdateKind::Add, UpdateKind::Remove, UpdateKind::Weight];

impl UpdateKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            UpdateKind::Add => "add",
            UpdateKind::Remove => "remove",
            UpdateKind::Weight => "weight",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        KINDS.into_iter().find(|k| k.name() == name)
    }
}

/// One update the client applied: when, its kind, and the endpoint it added (for `add`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Update {
    /// Microseconds from the phase's start (negative: before it).
    pub(crate) at_us: i64,
    pub(crate) kind: UpdateKind,
    pub(crate) added: Option<SocketAddr>,
}

/// One call of the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Call {
    /// Its intended start, microseconds from the phase's start.
    pub(crate) start_us: u64,
    pub(crate) latency_us: u64,
    /// The endpoint that answered, when the client says (meshwork's `ServedBy`).
    pub(crate) served_by: Option<SocketAddr>,
}

type Seen = Vec<(Instant, BTreeMap<SocketAddr, u32>)>;

/// The updates one cluster's assignment went through in this process, with when.
pub(crate) struct UpdateLog {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl UpdateLog {
    /// Starts watching `cluster`'s endpoints on `client`.
    pub(crate) async fn start(client: &XdsClient, cluster: &str) -> Self {
        let mut watch = client
            .watch(ResourceType::ClusterLoadAssignment, cluster)
            .await;
        let seen = Arc::new(Mutex::new(Seen::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(state) = watch.changed().await {
                let at = Instant::now();
                if let WatchState::Ready(Resource::ClusterLoadAssignment(cla)) = state {
                    let weights = weights(&cla);
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((at, weights));
                }
            }
        });
        Self { seen, task }
    }

    /// The updates seen from `from` − 1 s on (so the calls at the start of the phase have
    /// the update before them), timed from `from`.
    pub(crate) fn since(&self, from: Instant) -> Vec<Update> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (i, (at, weights)) in seen.iter().enumerate() {
            // The first assignment this watch saw changed nothing under the calls.
            let Some((_, before)) = i.checked_sub(1).map(|p| &seen[p]) else {
                continue;
            };
            if *at + Duration::from_secs(1) < from {
                continue;
            }
            let (kind, added) = change(before, weights);
            let at_us = if *at >= from {
                (*at - from).as_micros() as i64
            } else {
                -((from - *at).as_micros() as i64)
            };
            out.push(Update { at_us, kind, added });
        }
        out
    }
}

impl Drop for UpdateLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the assignment going from `before` to `now` (endpoint weights) changed, and the
/// endpoint it added.
fn change(
    before: &BTreeMap<SocketAddr, u32>,
    now: &BTreeMap<SocketAddr, u32>,
) -> (UpdateKind, Option<SocketAddr>) {
    if let Some(added) = now.keys().find(|a| !before.contains_key(a)) {
        (UpdateKind::Add, Some(*added))
    } else if before.keys().any(|a| !now.contains_key(a)) {
        (UpdateKind::Remove, None)
    } else {
        (UpdateKind::Weight, None)
    }
}

/// Each endpoint's effective weight (locality weight × endpoint weight).
fn weights(cla: &ClusterLoadAssignment) -> BTreeMap<SocketAddr, u32> {
    let mut out = BTreeMap::new();
    for l in &cla.localities {
        for e in &l.endpoints {
            out.insert(e.address, l.weight.saturating_mul(e.weight));
        }
    }
    out
}

/// The `q` quantile (nearest rank) of sorted samples.
fn quantile(sorted: &[u64], q: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].into()
}

fn quantiles(mut v: Vec<u64>) -> Value {
    v.sort_unstable();
    json!({"p10": quantile(&v, 0.1), "p50": quantile(&v, 0.5), "p90": quantile(&v, 0.9)})
}

fn since_bucket(us: u64) -> usize {
    SINCE_BUCKETS_MS
        .iter()
        .position(|&ms| us < ms * 1000)
        .unwrap_or(SINCE_BUCKETS_MS.len())
}

fn since_buckets(since_us: &[u64]) -> Vec<u64> {
    let mut counts = vec![0u64; SINCE_BUCKETS_MS.len() + 1];
    for &us in since_us {
        counts[since_bucket(us)] += 1;
    }
    counts
}

/// Where a slow call sits against the updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Started within [`NEAR`] after an update.
    After,
    /// An update came while it was in flight (and it did not start just after one).
    During,
    Elsewhere,
}

/// One slow call, placed.
struct Slow {
    call: Call,
    prev: Option<(u64, UpdateKind)>,
    next: Option<(u64, UpdateKind)>,
    place: Place,
    /// Served by the endpoint the update before it added, as its n-th call since (1-based).
    on_added: Option<usize>,
}

/// The quiet windows' figures the churned calls are held against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quiet {
    pub(crate) p90_us: u64,
    /// A call slower than this is slow.
    pub(crate) p99_us: u64,
}

/// The latency profile of every call by the kind of the update before it and the time since
/// (the buckets of [`SINCE_BUCKETS_MS`]): per bucket `[calls, mean µs, over the quiet p90,
/// over the quiet p99]`. An even spread puts 10 % of a bucket's calls over the p90 and 1 %
/// over the p99; a bucket right after an update that holds more shows what the update did.
fn profile(placed: &[(Call, Option<(u64, UpdateKind)>)], quiet: Quiet) -> Value {
    let mut out = serde_json::Map::new();
    for kind in KINDS {
        let mut rows = vec![[0u64; 4]; SINCE_BUCKETS_MS.len() + 1];
        for (c, prev) in placed {
            let Some((since, _)) = prev.filter(|p| p.1 == kind) else {
                continue;
            };
            let row = &mut rows[since_bucket(since)];
            row[0] += 1;
            row[1] += c.latency_us;
            row[2] += u64::from(c.latency_us > quiet.p90_us);
            row[3] += u64::from(c.latency_us > quiet.p99_us);
        }
        for row in &mut rows {
            row[1] = row[1].checked_div(row[0]).unwrap_or(0);
        }
        out.insert(kind.name().into(), json!(rows));
    }
    out.into()
}

/// The timeline's summary (the client's `churn_timeline`): the calls slower than the quiet
/// phase's p99, where they sit against the updates, by kind; and every call's latency by
/// the time since the update before it ([`profile`]). Updates after the last call ended
/// (the harness's restoring one) are left out.
pub(crate) fn summarize(calls: &[Call], updates: &[Update], quiet: Quiet) -> Value {
    let threshold_us = quiet.p99_us;
    let end = calls
        .iter()
        .map(|c| c.start_us + c.latency_us)
        .max()
        .unwrap_or(0) as i64;
    let mut updates: Vec<Update> = updates.iter().filter(|u| u.at_us <= end).copied().collect();
    updates.sort_by_key(|u| u.at_us);
    let near = NEAR.as_micros() as u64;
    // Calls in start order, to count each call's rank on a newly added endpoint.
    let mut order: Vec<&Call> = calls.iter().collect();
    order.sort_by_key(|c| c.start_us);
    let mut rank_on_added: BTreeMap<usize, usize> = BTreeMap::new();
    let mut slow = Vec::new();
    let mut placed = Vec::with_capacity(calls.len());
    let mut all_near = 0u64;
    for c in order {
        let start = c.start_us as i64;
        let i = updates.partition_point(|u| u.at_us <= start);
        let prev = i
            .checked_sub(1)
            .map(|p| ((start - updates[p].at_us) as u64, p));
        let next = updates.get(i).map(|u| ((u.at_us - start) as u64, u.kind));
        if prev.is_some_and(|(since, _)| since <= near) {
            all_near += 1;
        }
        let mut on_added = None;
        if let Some((_, p)) = prev
            && updates[p].added.is_some()
            && updates[p].added == c.served_by
        {
            let n = rank_on_added.entry(p).or_default();
            *n += 1;
            on_added = Some(*n);
        }
        placed.push((*c, prev.map(|(since, p)| (since, updates[p].kind))));
        if c.latency_us <= threshold_us {
            continue;
        }
        let place = if prev.is_some_and(|(since, _)| since <= near) {
            Place::After
        } else if next.is_some_and(|(until, _)| until < c.latency_us) {
            Place::During
        } else {
            Place::Elsewhere
        };
        slow.push(Slow {
            call: *c,
            prev: prev.map(|(since, p)| (since, updates[p].kind)),
            next,
            place,
            on_added,
        });
    }
    let count = |p: Place| slow.iter().filter(|s| s.place == p).count();
    let mut by_kind = serde_json::Map::new();
    for kind in KINDS {
        let since: Vec<u64> = slow
            .iter()
            .filter_map(|s| s.prev.filter(|p| p.1 == kind).map(|p| p.0))
            .collect();
        let until: Vec<u64> = slow
            .iter()
            .filter_map(|s| s.next.filter(|n| n.1 == kind).map(|n| n.0))
            .collect();
        let after = slow
            .iter()
            .filter(|s| s.place == Place::After && s.prev.is_some_and(|p| p.1 == kind))
            .count();
        by_kind.insert(
            kind.name().into(),
            json!({
                "updates": updates.iter().filter(|u| u.kind == kind).count(),
                "slow_after": since.len(),
                "slow_within_5ms_after": after,
                "since_us": quantiles(since.clone()),
                "since_buckets": since_buckets(&since),
                "until_us": quantiles(until),
            }),
        );
    }
    let listed: Vec<Value> = slow
        .iter()
        .take(MAX_LISTED)
        .map(|s| {
            json!([
                s.call.start_us,
                s.call.latency_us,
                s.prev.map(|p| p.0),
                s.prev.map(|p| p.1.name()),
                s.next.map(|n| n.0),
                s.on_added,
            ])
        })
        .collect();
    json!({
        "slow_threshold_us": threshold_us,
        "calls": calls.len(),
        // How many calls said which endpoint answered (0: the client does not say).
        "calls_served_by_known": calls.iter().filter(|c| c.served_by.is_some()).count(),
        "slow_calls": slow.len(),
        "slow_within_5ms_after": count(Place::After),
        "slow_update_during_call": count(Place::During),
        "slow_elsewhere": count(Place::Elsewhere),
        "slow_on_added_endpoint": slow.iter().filter(|s| s.on_added.is_some()).count(),
        "slow_first_3_on_added_endpoint": slow.iter().filter(|s| s.on_added.is_some_and(|n| n <= 3)).count(),
        "calls_within_5ms_after": all_near,
        "since_bucket_edges_ms": SINCE_BUCKETS_MS,
        "by_kind": by_kind,
        "quiet_p90_us": quiet.p90_us,
        "profile": profile(&placed, quiet),
        // [start_us, latency_us, since_us, prev_kind, until_us, n-th call on the endpoint
        // the update before it added].
        "slow": listed,
    })
}

/// Several rounds' timelines as one: counts summed, the per-kind distributions of the
/// listed slow calls pooled.
pub(crate) fn pool(rounds: &[&Value]) -> Value {
    let sum = |key: &str| rounds.iter().filter_map(|r| r[key].as_u64()).sum::<u64>();
    let mut by_kind = serde_json::Map::new();
    for kind in KINDS {
        let k = kind.name();
        let sum_kind = |key: &str| {
            rounds
                .iter()
                .filter_map(|r| r["by_kind"][k][key].as_u64())
                .sum::<u64>()
        };
        let since: Vec<u64> = rounds
            .iter()
            .filter_map(|r| r["slow"].as_array())
            .flatten()
            .filter(|s| s[3].as_str().and_then(UpdateKind::from_name) == Some(kind))
            .filter_map(|s| s[2].as_u64())
            .collect();
        by_kind.insert(
            k.into(),
            json!({
                "updates": sum_kind("updates"),
                "slow_after": sum_kind("slow_after"),
                "slow_within_5ms_after": sum_kind("slow_within_5ms_after"),
                "since_us": quantiles(since.clone()),
                "since_buckets": since_buckets(&since),
            }),
        );
    }
    let mut profile = serde_json::Map::new();
    for kind in KINDS {
        let k = kind.name();
        let mut rows = vec![[0u64; 4]; SINCE_BUCKETS_MS.len() + 1];
        for r in rounds {
            let Some(theirs) = r["profile"][k].as_array() else {
                continue;
            };
            for (row, their) in rows.iter_mut().zip(theirs) {
                let n = their[0].as_u64().unwrap_or(0);
                // Means pool weighted by their counts.
                row[1] += their[1].as_u64().unwrap_or(0) * n;
                row[0] += n;
                row[2] += their[2].as_u64().unwrap_or(0);
                row[3] += their[3].as_u64().unwrap_or(0);
            }
        }
        for row in &mut rows {
            row[1] = row[1].checked_div(row[0]).unwrap_or(0);
        }
        profile.insert(k.into(), json!(rows));
    }
    json!({
        "rounds": rounds.len(),
        "calls": sum("calls"),
        "calls_served_by_known": sum("calls_served_by_known"),
        "slow_calls": sum("slow_calls"),
        "slow_within_5ms_after": sum("slow_within_5ms_after"),
        "slow_update_during_call": sum("slow_update_during_call"),
        "slow_elsewhere": sum("slow_elsewhere"),
        "slow_on_added_endpoint": sum("slow_on_added_endpoint"),
        "slow_first_3_on_added_endpoint": sum("slow_first_3_on_added_endpoint"),
        "calls_within_5ms_after": sum("calls_within_5ms_after"),
        "since_bucket_edges_ms": SINCE_BUCKETS_MS,
        "by_kind": by_kind,
        "profile": profile,
    })
}

/// One line: where a contestant's slow churned calls sit against the updates.
pub(crate) fn line(name: &str, t: &Value) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let slow = n(&t["slow_calls"]);
    let mut kinds = Vec::new();
    for kind in KINDS {
        let k = &t["by_kind"][kind.name()];
        if n(&k["updates"]) == 0 && n(&k["slow_after"]) == 0 {
            continue;
        }
        let p50 = k["since_us"]["p50"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |us| format!("{:.1}", us as f64 / 1000.0));
        // Every call's latency just after an update against well after it.
        let rows = |range: std::ops::Range<usize>| {
            let table = t["profile"][kind.name()].as_array();
            let (mut calls, mut total, mut over) = (0, 0, 0);
            for row in table
                .into_iter()
                .flatten()
                .skip(range.start)
                .take(range.len())
            {
                calls += n(&row[0]);
                total += n(&row[0]) * n(&row[1]);
                over += n(&row[2]);
            }
            format!(
                "mean {} µs, {:.0} % over the quiet p90",
                total.checked_div(calls).unwrap_or(0),
                pct(over, calls)
            )
        };
        kinds.push(format!(
            "{} ({} updates): {} slow after, {} within 5 ms, median {p50} ms after; calls \
             0-2 ms after: {}; 20-100 ms after: {}",
            kind.name(),
            n(&k["updates"]),
            n(&k["slow_after"]),
            n(&k["slow_within_5ms_after"]),
            rows(0..2),
            rows(5..7),
        ));
    }
    format!(
        "{name}: {slow} calls slower than the quiet p99 of {} calls; {} ({:.0} %) started \
         within 5 ms after an update (all calls: {:.1} %), {} had one land in flight, {} \
         elsewhere; {} on the endpoint just added ({} among its first 3 calls); {}",
        n(&t["calls"]),
        n(&t["slow_within_5ms_after"]),
        pct(n(&t["slow_within_5ms_after"]), slow),
        pct(n(&t["calls_within_5ms_after"]), n(&t["calls"])),
        n(&t["slow_update_during_call"]),
        n(&t["slow_elsewhere"]),
        n(&t["slow_on_added_endpoint"]),
        n(&t["slow_first_3_on_added_endpoint"]),
        kinds.join("; "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn an_update_is_an_add_a_remove_or_a_weight_change() {
        let one = BTreeMap::from([(a(1), 1)]);
        let both = BTreeMap::from([(a(1), 1), (a(2), 1)]);
        let swapped = BTreeMap::from([(a(1), 4), (a(2), 1)]);
        assert_eq!(change(&one, &both), (UpdateKind::Add, Some(a(2))));
        assert_eq!(change(&both, &one), (UpdateKind::Remove, None));
        assert_eq!(change(&both, &swapped), (UpdateKind::Weight, None));
    }

    #[test]
    fn slow_calls_are_placed_against_the_updates() {
        let updates = [
            Update {
                at_us: 10_000,
                kind: UpdateKind::Add,
                added: Some(a(2)),
            },
            Update {
                at_us: 110_000,
                kind: UpdateKind::Remove,
                added: None,
            },
            // After the last call ended: left out.
            Update {
                at_us: 500_000,
                kind: UpdateKind::Weight,
                added: None,
            },
        ];
        let call = |start_us, latency_us, port| Call {
            start_us,
            latency_us,
            served_by: Some(a(port)),
        };
        let calls = [
            // Before any update, slow: elsewhere, no previous update.
            call(1_000, 900, 1),
            // 1 ms after the add, the first call on the added endpoint, slow.
            call(11_000, 2_000, 2),
            // 3 ms after, fast, the second on it.
            call(13_000, 100, 2),
            // 50 ms after the add, slow, on the base: elsewhere.
            call(60_000, 800, 1),
            // Started 0.2 ms before the remove and slow: the remove came in flight.
            call(109_800, 700, 1),
            // 4 ms after the remove, slow.
            call(114_000, 600, 1),
        ];
        let t = summarize(
            &calls,
            &updates,
            Quiet {
                p90_us: 300,
                p99_us: 500,
            },
        );
        assert_eq!(t["calls"], 6);
        assert_eq!(t["calls_served_by_known"], 6);
        assert_eq!(t["slow_calls"], 5);
        assert_eq!(t["slow_within_5ms_after"], 2);
        assert_eq!(t["slow_update_during_call"], 1);
        assert_eq!(t["slow_elsewhere"], 2);
        assert_eq!(t["slow_on_added_endpoint"], 1);
        assert_eq!(t["slow_first_3_on_added_endpoint"], 1);
        assert_eq!(t["calls_within_5ms_after"], 3);
        let add = &t["by_kind"]["add"];
        assert_eq!(add["updates"], 1);
        assert_eq!(add["slow_after"], 3);
        assert_eq!(add["slow_within_5ms_after"], 1);
        assert_eq!(add["since_us"]["p10"], 1_000);
        assert_eq!(add["since_us"]["p90"], 99_800);
        assert_eq!(add["since_buckets"][1], 1, "{add}");
        assert_eq!(t["by_kind"]["remove"]["until_us"]["p50"], 50_000);
        assert_eq!(t["by_kind"]["weight"]["slow_after"], 0);
        assert_eq!(t["by_kind"]["weight"]["updates"], 0, "after the last call");
        assert_eq!(t["slow"].as_array().unwrap().len(), 5);
        assert_eq!(
            t["slow"][1],
            json!([11_000, 2_000, 1_000, "add", 99_000, 1])
        );

        // After the add: 1-2 ms, one call of 2,000 µs, over both; 2-5 ms, one of 100 µs;
        // 50-100 ms, two (800 and 700 µs), both over both.
        assert_eq!(
            t["profile"]["add"],
            json!([
                [0, 0, 0, 0],
                [1, 2000, 1, 1],
                [1, 100, 0, 0],
                [0, 0, 0, 0],
                [0, 0, 0, 0],
                [0, 0, 0, 0],
                [2, 750, 2, 2],
                [0, 0, 0, 0]
            ])
        );
        assert_eq!(t["profile"]["remove"][2], json!([1, 600, 1, 1]));

        let pooled = pool(&[&t, &t]);
        assert_eq!(pooled["profile"]["add"][1], json!([2, 2000, 2, 2]));
        assert_eq!(pooled["slow_calls"], 10);
        assert_eq!(pooled["by_kind"]["add"]["slow_after"], 6);
        assert_eq!(pooled["by_kind"]["add"]["since_us"]["p50"], 50_000);
        let line = line("meshwork", &pooled);
        assert!(line.contains("10 calls slower"), "{line}");
        assert!(line.contains("add (2 updates)"), "{line}");
        assert!(
            line.contains("0-2 ms after: mean 2000 µs, 100 % over the quiet p90"),
            "{line}"
        );
    }
}
