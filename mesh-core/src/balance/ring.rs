//! The ring of ring-hash (gRFC A42): xxHash64 of `"<key>_<n>"`, sized from the weights, where
//! the key is the endpoint's address or, when the control plane sets one, its `hash_key`
//! (gRFC A76).

use std::fmt::Write as _;
use std::net::SocketAddr;

use xxhash_rust::xxh64::xxh64;

/// What places an endpoint on the ring.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RingKey<'a> {
    /// The endpoint's address, `ip:port` (A42).
    Address(SocketAddr),
    /// The `envoy.lb` `hash_key` metadata (A76).
    HashKey(&'a str),
}

impl std::fmt::Display for RingKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingKey::Address(a) => a.fmt(f),
            RingKey::HashKey(k) => f.write_str(k),
        }
    }
}

/// A sorted ring of `(hash, slot index)`.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    hashes: Vec<u64>,
    slots: Vec<u32>,
}

impl Ring {
    /// Builds the ring for `(key, weight, slot)` entries; weights must be non-zero.
    pub(crate) fn build(
        entries: &[(RingKey<'_>, u64, usize)],
        min_size: u64,
        max_size: u64,
    ) -> Self {
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
        let scale = ((min_norm * min_size as f64).ceil() / min_norm).min(max_size as f64);
        let size = scale.ceil() as usize;
        let mut hashes = Vec::with_capacity(size);
        let mut key = String::with_capacity(64);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(size);
        for &(ring_key, w, slot) in entries {
            target += scale * (w as f64 / sum);
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
        let mut slots = Vec::with_capacity(pairs.len());
        for (h, s) in pairs {
            hashes.push(h);
            slots.push(s);
        }
        Ring { hashes, slots }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The first usable slot at or after `hash` going clockwise.
    pub(crate) fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.hashes.len();
        if n == 0 {
            return None;
        }
        let start = self.hashes.partition_point(|&h| h < hash) % n;
        let first = self.slots[start] as usize;
        if usable(first) {
            return Some(first);
        }
        (1..n)
            .map(|k| self.slots[(start + k) % n] as usize)
            .find(|&s| s != first && usable(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn addrs(n: usize) -> Vec<(RingKey<'static>, u64, usize)> {
        (0..n)
            .map(|i| {
                let a: SocketAddr = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap();
                (RingKey::Address(a), 1, i)
            })
            .collect()
    }

    #[test]
    fn hash_keys_replace_addresses_on_the_ring() {
        // A76: entries are xxHash64("<hash_key>_<n>"), so the ring depends on the keys only.
        let keys: Vec<_> = ["alpha", "beta", "gamma"]
            .iter()
            .enumerate()
            .map(|(i, k)| (RingKey::HashKey(k), 1, i))
            .collect();
        let by_key = Ring::build(&keys, 64, 1024);
        assert!(by_key.hashes.contains(&xxh64(b"alpha_0", 0)));
        assert!(by_key.hashes.contains(&xxh64(b"gamma_21", 0)));
        let by_address = Ring::build(&addrs(3), 64, 1024);
        assert_ne!(by_key.hashes, by_address.hashes);
        assert!(by_address.hashes.contains(&xxh64(b"10.0.0.1:8080_0", 0)));
    }

    #[test]
    fn size_respects_min_and_max() {
        assert_eq!(Ring::build(&addrs(3), 1024, 8 << 20).len(), 1026); // ceil(1024/3)*3
        assert_eq!(Ring::build(&addrs(3), 16, 30).len(), 18);
        let mut weighted = addrs(2);
        weighted[0].1 = 1;
        weighted[1].1 = 1000;
        // The lightest endpoint needs one entry, so 1001 would do, but the cap is 500.
        assert_eq!(Ring::build(&weighted, 1, 500).len(), 500);
        assert_eq!(Ring::build(&[], 1024, 2048).len(), 0);
    }

    #[test]
    fn weights_shape_the_ring() {
        let mut e = addrs(2);
        e[1].1 = 3;
        let r = Ring::build(&e, 4000, 8 << 20);
        let ones = r.slots.iter().filter(|&&s| s == 1).count();
        assert_eq!(ones * 4, r.len() * 3);
    }

    /// The share of keys that move, and whether all of them moved to the new endpoint.
    fn moved(n: usize, min_ring_size: u64) -> (f64, bool) {
        let before = Ring::build(&addrs(n), min_ring_size, 8 << 20);
        let after = Ring::build(&addrs(n + 1), min_ring_size, 8 << 20);
        let mut rng = SmallRng::seed_from_u64(7);
        let keys = 100_000;
        let (mut moved, mut only_to_new) = (0, true);
        for _ in 0..keys {
            let h: u64 = rng.random();
            let a = before.pick(h, |_| true).unwrap();
            let b = after.pick(h, |_| true).unwrap();
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
    fn same_hash_same_endpoint_and_walks_past_unusable() {
        let r = Ring::build(&addrs(5), 64, 1024);
        let h = 0xdead_beef;
        let first = r.pick(h, |_| true).unwrap();
        assert_eq!(r.pick(h, |_| true), Some(first));
        let next = r.pick(h, |s| s != first).unwrap();
        assert_ne!(next, first);
        assert_eq!(r.pick(h, |_| false), None);
    }
}
