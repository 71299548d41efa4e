//! The pick table built from one endpoint set: priorities, their load split, localities and
//! the per-policy pickers. Built off the hot path (on an EDS update, and again when ejections
//! change) and then immutable: a pick takes `&self` and touches only atomics (round-robin
//! counters, the shared random source, the endpoints' load and ready flags, a ring's
//! once-cell).
//!
//! Ring hash keeps every endpoint of a priority on its ring, whatever its health, and passes
//! over the unusable ones at pick time (as gRFC A42's picker passes over failed
//! subchannels): a change of health alone leaves the ring as it is, and a new table whose
//! priority has the same endpoints and weights shares the previous table's ring. A ring is
//! made when its priority first takes traffic (see [`LazyRing`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshwork_xds::resource::ClusterLoadAssignment;
use rand::Rng;

use super::BalancePolicy;
use super::endpoint::Endpoint;
use super::error::BalancerConfigError;
use super::ring::{LazyRing, Reach, RingKey, RingPick, RingSpec};
use super::sched::{Schedule, SharedRng};

/// Envoy's default overprovisioning factor, in percent.
const OVERPROVISIONING: u64 = 140;
/// gRFC A48 caps `choice_count` at 10.
const MAX_CHOICE_COUNT: u32 = 10;

/// One endpoint in the table.
pub(crate) struct Slot<S> {
    pub(crate) address: SocketAddr,
    pub(crate) healthy: bool,
    pub(crate) endpoint: Arc<Endpoint<S>>,
}

impl<S> Clone for Slot<S> {
    fn clone(&self) -> Self {
        Self {
            address: self.address,
            healthy: self.healthy,
            endpoint: self.endpoint.clone(),
        }
    }
}

impl<S> Slot<S> {
    /// Healthy by EDS and not ejected: counts for priority health.
    pub(crate) fn usable(&self) -> bool {
        self.healthy && !self.endpoint.ejected()
    }
}

#[derive(Debug, Clone)]
struct Group {
    members: Vec<usize>,
    healthy: usize,
    weight: u32,
    /// Round robin over the members, weighted when their weights differ.
    rr: Schedule,
}

#[derive(Debug, Clone)]
struct Level {
    groups: Vec<Group>,
    /// Localities by effective weight.
    localities: Schedule,
    /// Where this priority's endpoints start in the table's slots (they are contiguous);
    /// the ring's indices are relative to it.
    base: usize,
    ring: Option<Arc<LazyRing>>,
    total: usize,
    healthy: usize,
}

/// What a pick decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    /// This slot takes the call.
    Slot(usize),
    /// Wait for the next publication, then pick again: ring hash's endpoint for the
    /// request's hash is connecting.
    Queue,
    /// Nothing ready.
    Nothing,
}

/// What a pick may use beyond the table.
pub(crate) struct PickInput<'a> {
    pub(crate) hash: Option<u64>,
    pub(crate) rng: &'a SharedRng,
}

/// The pick table.
pub(crate) struct Table<S> {
    pub(crate) slots: Vec<Slot<S>>,
    pub(crate) by_address: HashMap<SocketAddr, usize>,
    levels: Vec<Level>,
    /// Percent of the traffic per priority, summing to 100 (or empty).
    loads: Vec<u32>,
    policy: BalancePolicy,
}

impl<S> Clone for Table<S> {
    /// A copy sharing the endpoints and rings, whose counters continue from this one's.
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
            by_address: self.by_address.clone(),
            levels: self.levels.clone(),
            loads: self.loads.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S> Table<S> {
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
        endpoint: impl FnMut(SocketAddr) -> Arc<Endpoint<S>>,
    ) -> Result<Self, BalancerConfigError> {
        Self::build_after(None, cla, policy, endpoint)
    }

    /// Builds the table that follows `previous`: a priority whose ring would be made from
    /// the same endpoints, weights and sizes shares the ring of `previous`.
    pub(crate) fn build_after(
        previous: Option<&Table<S>>,
        cla: &ClusterLoadAssignment,
        policy: &BalancePolicy,
        mut endpoint: impl FnMut(SocketAddr) -> Arc<Endpoint<S>>,
    ) -> Result<Self, BalancerConfigError> {
        let priorities = cla.priority_count() as usize;
        let mut levels: Vec<Vec<usize>> = vec![Vec::new(); priorities];
        for (li, l) in cla.localities.iter().enumerate() {
            if l.weight == 0 {
                return Err(BalancerConfigError::invalid(
                    format!("localities[{li}].weight"),
                    "must not be zero",
                ));
            }
            if let Some(ei) = l.endpoints.iter().position(|e| e.weight == 0) {
                return Err(BalancerConfigError::invalid(
                    format!("localities[{li}].endpoints[{ei}].weight"),
                    "must not be zero",
                ));
            }
            levels[l.priority as usize].push(li);
        }
        let mut slots = Vec::new();
        let mut built = Vec::with_capacity(priorities);
        for (p, locs) in levels.into_iter().enumerate() {
            let base = slots.len();
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
                        endpoint: endpoint(e.address),
                    });
                    members.push(i);
                    if matches!(policy, BalancePolicy::RingHash { .. }) {
                        ring_entries.push((
                            match &e.hash_key {
                                Some(k) => RingKey::HashKey(k.as_str().into()),
                                None => RingKey::Address(e.address),
                            },
                            u64::from(l.weight) * u64::from(e.weight),
                        ));
                    }
                }
                let rr = if equal {
                    Schedule::new(&vec![1.0; l.endpoints.len()])
                } else {
                    Schedule::new(
                        &l.endpoints
                            .iter()
                            .map(|e| f64::from(e.weight))
                            .collect::<Vec<_>>(),
                    )
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
                } => {
                    let spec = RingSpec {
                        entries: ring_entries,
                        min_size: *min_ring_size,
                        max_size: *max_ring_size,
                    };
                    let same = previous
                        .and_then(|t| t.levels.get(p))
                        .and_then(|l| l.ring.as_ref())
                        .filter(|r| *r.spec() == spec);
                    Some(match same {
                        Some(r) => r.clone(),
                        None => Arc::new(LazyRing::new(spec)),
                    })
                }
                _ => None,
            };
            built.push(Level {
                groups,
                localities: Schedule::default(),
                base,
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

    /// Recomputes healthy counts, locality weights and the priority load split (after an
    /// update or a change in ejections), and makes the rings of the priorities that now take
    /// traffic (this runs on the driver, so picks rarely make one).
    pub(crate) fn refresh_health(&mut self) {
        let slots = &self.slots;
        let usable = |i: usize| slots[i].usable();
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
            level.localities = Schedule::new(&weights);
            health.push(if level.total == 0 {
                0
            } else {
                (OVERPROVISIONING * level.healthy as u64 / level.total as u64).min(100) as u32
            });
        }
        self.loads = priority_loads(&health);
        for (level, &load) in self.levels.iter().zip(&self.loads) {
            if let (Some(ring), true) = (&level.ring, load > 0) {
                ring.get();
            }
        }
    }

    /// Ring entries made so far, over every priority.
    #[cfg(test)]
    pub(crate) fn ring_entries_built(&self) -> usize {
        self.levels
            .iter()
            .filter_map(|l| l.ring.as_ref())
            .map(|r| r.built_len())
            .sum()
    }

    /// The percent of the traffic each priority gets.
    #[cfg(test)]
    pub(crate) fn loads(&self) -> &[u32] {
        &self.loads
    }

    /// Picks a slot for which `usable` holds (see [`choose`](Self::choose), where every
    /// other slot is absent).
    #[cfg(test)]
    pub(crate) fn pick(
        &self,
        input: &PickInput<'_>,
        usable: impl Fn(&Slot<S>) -> bool,
    ) -> Option<usize> {
        let state = |s: &Slot<S>| {
            if usable(s) {
                Reach::Ready
            } else {
                Reach::Absent
            }
        };
        match self.choose(input, state) {
            Choice::Slot(i) => Some(i),
            Choice::Queue | Choice::Nothing => None,
        }
    }

    /// Picks a ready slot: a priority by the load split (by the request hash for ring hash,
    /// so a key sticks), then the policy's pick within it; another priority if that one has
    /// nothing ready. Ring hash may queue instead: the endpoint a request's hash belongs to
    /// is connecting (gRFC A42).
    pub(crate) fn choose(
        &self,
        input: &PickInput<'_>,
        state: impl Fn(&Slot<S>) -> Reach,
    ) -> Choice {
        if self.levels.is_empty() {
            return Choice::Nothing;
        }
        let Table {
            slots,
            by_address: _,
            levels,
            loads,
            policy,
        } = self;
        let ok = |i: usize| state(&slots[i]) == Reach::Ready;
        let ring_hash = matches!(policy, BalancePolicy::RingHash { .. });
        let hash = if ring_hash {
            // A42: no hash means a random one.
            Some(input.hash.unwrap_or_else(|| input.rng.next_u64()))
        } else {
            None
        };
        let mut chosen = 0;
        if levels.len() > 1 {
            let r = match hash {
                Some(h) => (h % 100) as u32,
                None => input.rng.rng().random_range(0..100),
            };
            let mut acc = 0;
            for (p, &l) in loads.iter().enumerate() {
                acc += l;
                if r < acc {
                    chosen = p;
                    break;
                }
            }
        }
        let order = std::iter::once(chosen).chain((0..levels.len()).filter(|&p| p != chosen));
        for p in order {
            let level = &levels[p];
            let found = match &level.ring {
                Some(ring) => {
                    let base = level.base;
                    let ring_state = |i: usize| state(&slots[base + i]);
                    match ring.get().pick(
                        hash.unwrap_or_default(),
                        input.hash.is_some(),
                        ring_state,
                    ) {
                        RingPick::Slot(i) => Some(base + i),
                        RingPick::Queue => return Choice::Queue,
                        RingPick::Exhausted => None,
                    }
                }
                None => pick_in_level(slots, level, policy, input.rng, &ok),
            };
            if let Some(i) = found {
                return Choice::Slot(i);
            }
        }
        Choice::Nothing
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

fn pick_in_level<S>(
    slots: &[Slot<S>],
    level: &Level,
    policy: &BalancePolicy,
    shared_rng: &SharedRng,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    if let [only] = &level.groups[..] {
        return pick_in_group(slots, only, policy, shared_rng, ok);
    }
    for _ in 0..level.localities.len() {
        let Some(g) = level.localities.next(shared_rng) else {
            break;
        };
        if let Some(i) = pick_in_group(slots, &level.groups[g], policy, shared_rng, ok) {
            return Some(i);
        }
    }
    // Nothing through the weights (every locality unhealthy, or only not-yet-ready ones left):
    // take any locality that has something usable.
    level
        .groups
        .iter()
        .find_map(|g| pick_in_group(slots, g, policy, shared_rng, ok))
}

fn pick_in_group<S>(
    slots: &[Slot<S>],
    g: &Group,
    policy: &BalancePolicy,
    shared_rng: &SharedRng,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let m = &g.members;
    let rng = &mut shared_rng.rng();
    match policy {
        // Every member tried takes a fresh value of the counter, so members that cannot
        // take the call are passed over without doubling their neighbour's share.
        BalancePolicy::RoundRobin => {
            for _ in 0..g.rr.len() {
                let i = m[g.rr.next(shared_rng)?];
                if ok(i) {
                    return Some(i);
                }
            }
            None
        }
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
                    let (ca, cb) = (slots[a].endpoint.load.cost(), slots[b].endpoint.load.cost());
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
                let load = slots[i].endpoint.load.in_flight();
                if best.is_none_or(|(_, l)| load < l) {
                    best = Some((i, load));
                }
            }
            best.map(|b| b.0).or_else(|| scan(m, rng, ok))
        }
        // Ring hash picks from the level's ring, never here.
        BalancePolicy::RingHash { .. } => scan(m, rng, ok),
    }
}

/// Every member from a random start: the fallback when sampling found nothing usable.
fn scan(m: &[usize], rng: &mut impl Rng, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let n = m.len();
    let start = rng.random_range(0..n);
    (0..n).map(|k| m[(start + k) % n]).find(|&i| ok(i))
}

#[cfg(test)]
pub(crate) mod tests;
