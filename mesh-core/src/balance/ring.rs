//! The ring of ring-hash (gRFC A42): xxHash64 of `"<key>_<n>"`, sized from the weights, where
//! the key is the endpoint's address or, when the control plane sets one, its `hash_key`
//! (gRFC A76). A priority's ring is described by a [`RingSpec`] when its table is built and
//! made only when a pick first needs it ([`LazyRing`]); a table whose priority has the same
//! spec as the previous table's shares the ring already made.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;

use xxhash_rust::xxh64::xxh64;

/// What places an endpoint on the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RingKey {
    /// The endpoint's address, `ip:port` (A42).
    Address(SocketAddr),
    /// The `envoy.lb` `hash_key` metadata (A76).
    HashKey(Box<str>),
}

impl std::fmt::Display for RingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingKey::Address(a) => a.fmt(f),
            RingKey::HashKey(k) => f.write_str(k),
        }
    }
}

/// Everything a ring is made from: the endpoints of one priority in table order, each with
/// its key and weight (locality weight × endpoint weight, non-zero), and the size bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RingSpec {
    pub(crate) entries: Vec<(RingKey, u64)>,
    pub(crate) min_size: u64,
    pub(crate) max_size: u64,
}

/// A ring made on first use: the driver makes the rings of the priorities that take traffic
/// before it publishes a table; a pick that falls over to another priority makes that one's.
#[derive(Debug)]
pub(crate) struct LazyRing {
    spec: RingSpec,
    ring: OnceLock<Ring>,
}

impl LazyRing {
    pub(crate) fn new(spec: RingSpec) -> Self {
        Self {
            spec,
            ring: OnceLock::new(),
        }
    }

    pub(crate) fn spec(&self) -> &RingSpec {
        &self.spec
    }

    /// The ring, made now if it was not yet.
    pub(crate) fn get(&self) -> &Ring {
        self.ring.get_or_init(|| Ring::build(&self.spec))
    }

    /// Entries made so far (0 before first use).
    #[cfg(test)]
    pub(crate) fn built_len(&self) -> usize {
        self.ring.get().map_or(0, Ring::len)
    }
}

/// The state of an endpoint as a ring pick sees it (A42's subchannel states; endpoints here
/// connect as soon as they are known, so there is no IDLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Connected.
    Ready,
    /// Connecting for the first time since it was known or last connected.
    Connecting,
    /// Its last connection attempt failed (A42's sticky TRANSIENT_FAILURE); the driver
    /// retries it after its backoff.
    Failing,
    /// Not a candidate at all: unhealthy by EDS, ejected, or avoided. The pick acts as if the
    /// endpoint were not on the ring.
    Absent,
}

/// What a ring pick decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RingPick {
    /// Send the call to this endpoint (index in the ring's priority).
    Slot(usize),
    /// Wait: the endpoint the key belongs to is connecting.
    Queue,
    /// No endpoint of this ring is ready and none the key waits for is connecting.
    Exhausted,
}

/// A sorted ring of `(hash, endpoint index within the priority)`.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    hashes: Vec<u64>,
    slots: Vec<u32>,
}

impl Ring {
    /// Builds the ring for a spec whose weights are non-zero.
    pub(crate) fn build(spec: &RingSpec) -> Self {
        let entries = &spec.entries;
        let sum: f64 = entries.iter().map(|e| e.1 as f64).sum();
        if entries.is_empty() || sum <= 0.0 {
            return Ring::default();
        }
        let min_norm = entries
            .iter()
            .map(|e| e.1 as f64 / sum)
            .fold(f64::INFINITY, f64::min);
        // A42: enough entries that the lightest endpoint gets a whole number of them, at least
        // `min_size` and at most `max_size`.
        let scale = ((min_norm * spec.min_size as f64).ceil() / min_norm).min(spec.max_size as f64);
        let size = scale.ceil() as usize;
        let mut key = String::with_capacity(64);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(size);
        for (slot, (ring_key, w)) in entries.iter().enumerate() {
            target += scale * (*w as f64 / sum);
            let mut n = 0u64;
            while current < target && pairs.len() < size {
                key.clear();
                let _ = write!(key, "{ring_key}_{n}");
                pairs.push((xxh64(key.as_bytes(), 0), slot as u32));
                n += 1;
                current += 1.0;
            }
        }
        pairs.sort_unstable();
        let (hashes, slots) = pairs.into_iter().unzip();
        Ring { hashes, slots }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The pick for `hash` (gRFC A42's picker), given each endpoint's state:
    ///
    /// - the first endpoint clockwise from the hash decides: ready, it takes the call;
    ///   connecting, the call waits for it (`Queue`), so that a key's first call lands where
    ///   its next ones will;
    /// - failing, the next distinct endpoint decides the same way;
    /// - both failing, the first ready endpoint further on takes the call, if any.
    ///
    /// Absent endpoints are passed over as if they were not on the ring. With a random hash
    /// (`sticky` false: the request had none), nothing waits: the first ready endpoint from
    /// the hash takes the call (gRFC A76).
    pub(crate) fn pick(&self, hash: u64, sticky: bool, state: impl Fn(usize) -> Reach) -> RingPick {
        let n = self.hashes.len();
        if n == 0 {
            return RingPick::Exhausted;
        }
        let start = self.hashes.partition_point(|&h| h < hash) % n;
        let (mut failing, mut first) = (0u8, u32::MAX);
        for k in 0..n {
            let slot = self.slots[(start + k) % n];
            if slot == first {
                continue;
            }
            match state(slot as usize) {
                Reach::Ready => return RingPick::Slot(slot as usize),
                Reach::Connecting if sticky && failing < 2 => return RingPick::Queue,
                Reach::Failing if failing == 0 => {
                    first = slot;
                    failing = 1;
                }
                Reach::Failing => failing = 2,
                Reach::Connecting | Reach::Absent => {}
            }
        }
        RingPick::Exhausted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn spec(entries: Vec<(RingKey, u64)>, min_size: u64, max_size: u64) -> RingSpec {
        RingSpec {
            entries,
            min_size,
            max_size,
        }
    }

    fn addrs(n: usize) -> Vec<(RingKey, u64)> {
        (0..n)
            .map(|i| {
                let a: SocketAddr = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap();
                (RingKey::Address(a), 1)
            })
            .collect()
    }

    fn ring(n: usize, min_size: u64, max_size: u64) -> Ring {
        Ring::build(&spec(addrs(n), min_size, max_size))
    }

    fn any(r: &Ring, h: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        match r.pick(h, true, |s| {
            if usable(s) {
                Reach::Ready
            } else {
                Reach::Absent
            }
        }) {
            RingPick::Slot(s) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn hash_keys_replace_addresses_on_the_ring() {
        // A76: entries are xxHash64("<hash_key>_<n>"), so the ring depends on the keys only.
        let keys: Vec<_> = ["alpha", "beta", "gamma"]
            .iter()
            .map(|k| (RingKey::HashKey((*k).into()), 1))
            .collect();
        let by_key = Ring::build(&spec(keys, 64, 1024));
        assert!(by_key.hashes.contains(&xxh64(b"alpha_0", 0)));
        assert!(by_key.hashes.contains(&xxh64(b"gamma_21", 0)));
        let by_address = ring(3, 64, 1024);
        assert_ne!(by_key.hashes, by_address.hashes);
        assert!(by_address.hashes.contains(&xxh64(b"10.0.0.1:8080_0", 0)));
    }

    #[test]
    fn size_respects_min_and_max() {
        assert_eq!(ring(3, 1024, 8 << 20).len(), 1026); // ceil(1024/3)*3
        assert_eq!(ring(3, 16, 30).len(), 18);
        let mut weighted = addrs(2);
        weighted[0].1 = 1;
        weighted[1].1 = 1000;
        // The lightest endpoint needs one entry, so 1001 would do, but the cap is 500.
        assert_eq!(Ring::build(&spec(weighted, 1, 500)).len(), 500);
        assert_eq!(ring(0, 1024, 2048).len(), 0);
    }

    #[test]
    fn a_lazy_ring_is_made_once_on_first_use() {
        let lazy = LazyRing::new(spec(addrs(3), 64, 1024));
        assert_eq!(lazy.built_len(), 0);
        let first: *const Ring = lazy.get();
        assert_eq!(lazy.built_len(), 66);
        assert!(std::ptr::eq(first, lazy.get()));
    }

    #[test]
    fn weights_shape_the_ring() {
        let mut e = addrs(2);
        e[1].1 = 3;
        let r = Ring::build(&spec(e, 4000, 8 << 20));
        let ones = r.slots.iter().filter(|&&s| s == 1).count();
        assert_eq!(ones * 4, r.len() * 3);
    }

    /// The share of keys that move, and whether all of them moved to the new endpoint.
    fn moved(n: usize, min_ring_size: u64) -> (f64, bool) {
        let before = ring(n, min_ring_size, 8 << 20);
        let after = ring(n + 1, min_ring_size, 8 << 20);
        let mut rng = SmallRng::seed_from_u64(7);
        let keys = 100_000;
        let (mut moved, mut only_to_new) = (0, true);
        for _ in 0..keys {
            let h: u64 = rng.random();
            let a = any(&before, h, |_| true).unwrap();
            let b = any(&after, h, |_| true).unwrap();
            if a != b {
                only_to_new &= b == n;
                moved += 1;
            }
        }
        (moved as f64 / keys as f64, only_to_new)
    }

    #[test]
    fn adding_one_endpoint_moves_about_one_in_n_keys() {
        // 100 entries per endpoint before and after (ceil(10000/100) = ceil(10000/101)): only
        // the new endpoint's arcs move, about 1/(N+1) of the keys.
        let (share, only_to_new) = moved(100, 10_000);
        assert!(only_to_new);
        assert!((share - 1.0 / 101.0).abs() < 0.005, "moved {share}");
        // With A42's default sizing the entries per endpoint shrink as N grows (52 → 49 for
        // 20 → 21 endpoints at 1024), which moves some more keys, still well under 2/N.
        let (share, _) = moved(20, 1024);
        assert!(
            share > 1.0 / 21.0 - 0.01 && share < 2.0 / 20.0,
            "moved {share}"
        );
    }

    #[test]
    fn same_hash_same_endpoint_and_walks_past_absent_ones() {
        let r = ring(5, 64, 1024);
        let h = 0xdead_beef;
        let first = any(&r, h, |_| true).unwrap();
        assert_eq!(any(&r, h, |_| true), Some(first));
        let next = any(&r, h, |s| s != first).unwrap();
        assert_ne!(next, first);
        assert_eq!(any(&r, h, |_| false), None);
    }

    /// The distinct endpoints clockwise from `h`, in order.
    fn order(r: &Ring, h: u64) -> Vec<usize> {
        let start = r.hashes.partition_point(|&x| x < h) % r.len();
        let mut seen = Vec::new();
        for k in 0..r.len() {
            let s = r.slots[(start + k) % r.len()] as usize;
            if !seen.contains(&s) {
                seen.push(s);
            }
        }
        seen
    }

    #[test]
    fn the_pick_follows_a42s_picker_rules() {
        use Reach::*;
        let r = ring(5, 64, 1024);
        let h = 0x1234_5678_9abc_def0;
        let o = order(&r, h);
        let pick =
            |states: &[Reach]| r.pick(h, true, |s| states[o.iter().position(|&x| x == s).unwrap()]);
        // The first endpoint decides when it is ready or connecting.
        assert_eq!(
            pick(&[Ready, Ready, Ready, Ready, Ready]),
            RingPick::Slot(o[0])
        );
        assert_eq!(
            pick(&[Connecting, Ready, Ready, Ready, Ready]),
            RingPick::Queue
        );
        // Failing: the second distinct endpoint decides the same way.
        assert_eq!(
            pick(&[Failing, Ready, Ready, Ready, Ready]),
            RingPick::Slot(o[1])
        );
        assert_eq!(
            pick(&[Failing, Connecting, Ready, Ready, Ready]),
            RingPick::Queue
        );
        // Both failing: the first ready one further on, past connecting ones.
        assert_eq!(
            pick(&[Failing, Failing, Connecting, Failing, Ready]),
            RingPick::Slot(o[4])
        );
        assert_eq!(
            pick(&[Failing, Failing, Connecting, Failing, Failing]),
            RingPick::Exhausted
        );
        // Absent endpoints are not on the ring: the next one is first.
        assert_eq!(
            pick(&[Absent, Connecting, Ready, Ready, Ready]),
            RingPick::Queue
        );
        assert_eq!(
            pick(&[Absent, Failing, Absent, Failing, Ready]),
            RingPick::Slot(o[4])
        );
        // Without a request hash nothing waits: the first ready one.
        let random = r.pick(h, false, |s| if s == o[0] { Connecting } else { Ready });
        assert_eq!(random, RingPick::Slot(o[1]));
    }
}
