//! The pick table built from one endpoint set: priorities, their load split, localities and
//! the per-policy pickers. Built off the hot path (on an EDS update) and refreshed when
//! ejections change; a pick touches only `&mut self` and atomics.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use meshwork_xds::resource::ClusterLoadAssignment;
use rand::Rng;
use rand::rngs::SmallRng;

use super::BalancePolicy;
use super::error::ConfigError;
use super::load::EndpointLoad;
use super::ring::{Ring, RingKey};
use crate::outlier::EndpointStats;

/// Envoy's default overprovisioning factor, in percent.
const OVERPROVISIONING: u64 = 140;
/// gRFC A48 caps `choice_count` at 10.
const MAX_CHOICE_COUNT: u32 = 10;

/// State of one endpoint that outlives endpoint-set updates.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) load: EndpointLoad,
    pub(crate) outlier: Option<Arc<EndpointStats>>,
}

impl Shared {
    pub(crate) fn ejected(&self) -> bool {
        self.outlier.as_ref().is_some_and(|o| o.is_ejected())
    }
}

/// One endpoint in the table.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) address: SocketAddr,
    pub(crate) healthy: bool,
    pub(crate) shared: Arc<Shared>,
}

/// Earliest-deadline-first weighted round robin (as Envoy does it): O(log n) per pick.
#[derive(Debug, Default)]
pub(crate) struct Edf {
    heap: BinaryHeap<Reverse<EdfEntry>>,
    weights: Vec<f64>,
    seq: u64,
}

#[derive(Debug)]
struct EdfEntry {
    deadline: f64,
    seq: u64,
    index: usize,
}

impl PartialEq for EdfEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for EdfEntry {}
impl PartialOrd for EdfEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for EdfEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.deadline
            .total_cmp(&other.deadline)
            .then(self.seq.cmp(&other.seq))
    }
}

impl Edf {
    /// Entries with a zero weight are never picked.
    pub(crate) fn new(weights: Vec<f64>) -> Self {
        let mut heap = BinaryHeap::with_capacity(weights.len());
        for (index, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                heap.push(Reverse(EdfEntry {
                    deadline: 1.0 / w,
                    seq: index as u64,
                    index,
                }));
            }
        }
        let seq = weights.len() as u64;
        Self { heap, weights, seq }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn next(&mut self) -> Option<usize> {
        let Reverse(mut e) = self.heap.pop()?;
        let index = e.index;
        e.deadline += 1.0 / self.weights[index];
        e.seq = self.seq;
        self.seq += 1;
        self.heap.push(Reverse(e));
        Some(index)
    }
}

#[derive(Debug)]
enum RoundRobin {
    /// All weights equal: a counter, O(1).
    Plain(usize),
    /// Endpoint weights differ.
    Weighted(Edf),
}

#[derive(Debug)]
struct Group {
    members: Vec<usize>,
    healthy: usize,
    weight: u32,
    rr: RoundRobin,
}

#[derive(Debug)]
struct Level {
    groups: Vec<Group>,
    /// Localities by effective weight.
    edf: Edf,
    ring: Option<Ring>,
    total: usize,
    healthy: usize,
}

/// What a pick may use beyond the table.
pub(crate) struct PickInput<'a> {
    pub(crate) hash: Option<u64>,
    pub(crate) rng: &'a mut SmallRng,
}

/// The pick table.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) slots: Vec<Slot>,
    pub(crate) by_address: HashMap<SocketAddr, usize>,
    levels: Vec<Level>,
    /// Percent of the traffic per priority, summing to 100 (or empty).
    loads: Vec<u32>,
    policy: BalancePolicy,
}

impl Table {
    pub(crate) fn empty(policy: BalancePolicy) -> Self {
        Table {
            slots: Vec::new(),
            by_address: HashMap::new(),
            levels: Vec::new(),
            loads: Vec::new(),
            policy,
        }
    }

    /// Builds the table, rejecting what no balancer can use (zero weights).
    pub(crate) fn build(
        cla: &ClusterLoadAssignment,
        policy: &BalancePolicy,
        mut shared: impl FnMut(SocketAddr) -> Arc<Shared>,
    ) -> Result<Self, ConfigError> {
        let priorities = cla.priority_count() as usize;
        let mut levels: Vec<Vec<usize>> = vec![Vec::new(); priorities];
        for (li, l) in cla.localities.iter().enumerate() {
            if l.weight == 0 {
                return Err(ConfigError::invalid(
                    format!("localities[{li}].weight"),
                    "must not be zero",
                ));
            }
            if let Some(ei) = l.endpoints.iter().position(|e| e.weight == 0) {
                return Err(ConfigError::invalid(
                    format!("localities[{li}].endpoints[{ei}].weight"),
                    "must not be zero",
                ));
            }
            levels[l.priority as usize].push(li);
        }
        let mut slots = Vec::new();
        let mut built = Vec::with_capacity(priorities);
        for locs in levels {
            let mut groups = Vec::with_capacity(locs.len());
            let mut ring_entries = Vec::new();
            for li in locs {
                let l = &cla.localities[li];
                let mut members = Vec::with_capacity(l.endpoints.len());
                let equal = l.endpoints.windows(2).all(|w| w[0].weight == w[1].weight);
                for e in &l.endpoints {
                    let i = slots.len();
                    slots.push(Slot {
                        address: e.address,
                        healthy: e.health.is_usable(),
                        shared: shared(e.address),
                    });
                    members.push(i);
                    if e.health.is_usable() {
                        ring_entries.push((
                            match &e.hash_key {
                                Some(k) => RingKey::HashKey(k),
                                None => RingKey::Address(e.address),
                            },
                            u64::from(l.weight) * u64::from(e.weight),
                            i,
                        ));
                    }
                }
                let rr = if equal {
                    RoundRobin::Plain(0)
                } else {
                    RoundRobin::Weighted(Edf::new(
                        l.endpoints.iter().map(|e| f64::from(e.weight)).collect(),
                    ))
                };
                groups.push(Group {
                    members,
                    healthy: 0,
                    weight: l.weight,
                    rr,
                });
            }
            let ring = match policy {
                BalancePolicy::RingHash {
                    min_ring_size,
                    max_ring_size,
                } => Some(Ring::build(&ring_entries, *min_ring_size, *max_ring_size)),
                _ => None,
            };
            built.push(Level {
                groups,
                edf: Edf::default(),
                ring,
                total: 0,
                healthy: 0,
            });
        }
        let by_address = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.address, i))
            .collect();
        let mut table = Table {
            slots,
            by_address,
            levels: built,
            loads: Vec::new(),
            policy: policy.clone(),
        };
        table.refresh_health();
        Ok(table)
    }

    /// Whether the slot at `address` is healthy and not ejected.
    pub(crate) fn usable(&self, address: &SocketAddr) -> bool {
        self.by_address
            .get(address)
            .is_some_and(|&i| self.slots[i].healthy && !self.slots[i].shared.ejected())
    }

    /// Recomputes healthy counts, locality weights and the priority load split (after an
    /// update or a change in ejections).
    pub(crate) fn refresh_health(&mut self) {
        let slots = &self.slots;
        let usable = |i: usize| slots[i].healthy && !slots[i].shared.ejected();
        let mut health = Vec::with_capacity(self.levels.len());
        for level in &mut self.levels {
            level.total = 0;
            level.healthy = 0;
            let mut weights = Vec::with_capacity(level.groups.len());
            for g in &mut level.groups {
                g.healthy = g.members.iter().filter(|&&i| usable(i)).count();
                level.total += g.members.len();
                level.healthy += g.healthy;
                // Envoy's locality weighting: a locality's weight scales with its health
                // (overprovisioned), so a half-dead locality does not get its full share.
                let avail = if g.members.is_empty() {
                    0.0
                } else {
                    (OVERPROVISIONING as f64 * g.healthy as f64 / g.members.len() as f64 / 100.0)
                        .min(1.0)
                };
                weights.push(f64::from(g.weight) * avail);
            }
            level.edf = Edf::new(weights);
            health.push(if level.total == 0 {
                0
            } else {
                (OVERPROVISIONING * level.healthy as u64 / level.total as u64).min(100) as u32
            });
        }
        self.loads = priority_loads(&health);
    }

    /// The percent of the traffic each priority gets.
    #[cfg(test)]
    pub(crate) fn loads(&self) -> &[u32] {
        &self.loads
    }

    /// Picks a slot for which `usable` holds: a priority by the load split (by the request
    /// hash for ring hash, so a key sticks), then the policy's pick within it; another
    /// priority if that one has nothing usable.
    pub(crate) fn pick(
        &mut self,
        input: &mut PickInput<'_>,
        usable: impl Fn(&Slot) -> bool,
    ) -> Option<usize> {
        if self.levels.is_empty() {
            return None;
        }
        let Table {
            slots,
            by_address: _,
            levels,
            loads,
            policy,
        } = self;
        let ok = |i: usize| usable(&slots[i]);
        let ring_hash = matches!(policy, BalancePolicy::RingHash { .. });
        let hash = if ring_hash {
            // A42: no hash means a random one.
            Some(input.hash.unwrap_or_else(|| input.rng.random()))
        } else {
            None
        };
        let r = match hash {
            Some(h) => (h % 100) as u32,
            None => input.rng.random_range(0..100),
        };
        let mut chosen = 0;
        let mut acc = 0;
        for (p, &l) in loads.iter().enumerate() {
            acc += l;
            if r < acc {
                chosen = p;
                break;
            }
        }
        let order = std::iter::once(chosen).chain((0..levels.len()).filter(|&p| p != chosen));
        for p in order {
            let level = &mut levels[p];
            let found = match (&*policy, &level.ring) {
                (BalancePolicy::RingHash { .. }, Some(ring)) => {
                    ring.pick(hash.unwrap_or_default(), ok)
                }
                _ => pick_in_level(slots, level, policy, input.rng, &ok),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

/// Envoy's priority load: health is `min(100, 1.4 × healthy / total)` per priority; each
/// priority takes what its health allows of what the ones above left, normalised when the
/// total health is under 100. With no health anywhere, everything goes to priority 0.
pub(crate) fn priority_loads(health: &[u32]) -> Vec<u32> {
    if health.is_empty() {
        return Vec::new();
    }
    let total: u32 = health.iter().sum::<u32>().min(100);
    let mut loads = vec![0; health.len()];
    if total == 0 {
        loads[0] = 100;
        return loads;
    }
    let mut remaining = 100u32;
    for (p, &h) in health.iter().enumerate() {
        let l = (h * 100 / total).min(remaining);
        loads[p] = l;
        remaining -= l;
    }
    if remaining > 0 {
        // Rounding left-overs go to the first priority with any health.
        if let Some(p) = health.iter().position(|&h| h > 0) {
            loads[p] += remaining;
        }
    }
    loads
}

fn pick_in_level(
    slots: &[Slot],
    level: &mut Level,
    policy: &BalancePolicy,
    rng: &mut SmallRng,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    for _ in 0..level.edf.len() {
        let Some(g) = level.edf.next() else { break };
        if let Some(i) = pick_in_group(slots, &mut level.groups[g], policy, rng, ok) {
            return Some(i);
        }
    }
    // Nothing through the weights (every locality unhealthy, or only not-yet-ready ones left):
    // take any locality that has something usable.
    level
        .groups
        .iter_mut()
        .find_map(|g| pick_in_group(slots, g, policy, rng, ok))
}

fn pick_in_group(
    slots: &[Slot],
    g: &mut Group,
    policy: &BalancePolicy,
    rng: &mut SmallRng,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let m = &g.members;
    match policy {
        BalancePolicy::RoundRobin => match &mut g.rr {
            RoundRobin::Plain(next) => {
                for _ in 0..n {
                    let i = m[*next % n];
                    *next = (*next + 1) % n;
                    if ok(i) {
                        return Some(i);
                    }
                }
                None
            }
            RoundRobin::Weighted(edf) => {
                for _ in 0..edf.len() {
                    let i = m[edf.next()?];
                    if ok(i) {
                        return Some(i);
                    }
                }
                None
            }
        },
        BalancePolicy::P2cPeakEwma => {
            if n == 1 {
                return ok(m[0]).then_some(m[0]);
            }
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (m[a], m[b]);
            match (ok(a), ok(b)) {
                (true, true) => {
                    let (ca, cb) = (slots[a].shared.load.cost(), slots[b].shared.load.cost());
                    Some(if ca <= cb { a } else { b })
                }
                (true, false) => Some(a),
                (false, true) => Some(b),
                (false, false) => scan(m, rng, ok),
            }
        }
        BalancePolicy::LeastRequest { choice_count } => {
            let k = (*choice_count).clamp(2, MAX_CHOICE_COUNT);
            let mut best: Option<(usize, u32)> = None;
            for _ in 0..k {
                let i = m[rng.random_range(0..n)];
                if !ok(i) {
                    continue;
                }
                let load = slots[i].shared.load.in_flight();
                if best.is_none_or(|(_, l)| load < l) {
                    best = Some((i, load));
                }
            }
            best.map(|b| b.0).or_else(|| scan(m, rng, ok))
        }
        // Ring hash picks from the level's ring; this is only reached with an empty ring.
        BalancePolicy::RingHash { .. } => scan(m, rng, ok),
    }
}

/// Every member from a random start: the fallback when sampling found nothing usable.
fn scan(m: &[usize], rng: &mut SmallRng, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let n = m.len();
    let start = rng.random_range(0..n);
    (0..n).map(|k| m[(start + k) % n]).find(|&i| ok(i))
}

#[cfg(test)]
pub(crate) mod tests;
