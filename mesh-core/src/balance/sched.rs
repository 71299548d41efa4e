//! Lock-free building blocks of a pick: a seedable random source and a weighted round-robin
//! schedule, both a single atomic counter that any number of callers advance at once.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore;

/// A random source shared by every caller: a SplitMix64 sequence on one atomic counter.
/// Each draw is one `fetch_add`, so concurrent picks never wait for each other; seeded, a
/// single caller sees a reproducible sequence.
#[derive(Debug)]
pub(crate) struct SharedRng {
    state: AtomicU64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SharedRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    pub(crate) fn from_os_rng() -> Self {
        use rand::SeedableRng as _;
        Self::new(rand::rngs::SmallRng::from_os_rng().next_u64())
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A `rand` view of this source, for `random_range` and friends.
    pub(crate) fn rng(&self) -> RngRef<'_> {
        RngRef(self)
    }
}

/// [`SharedRng`] as a `rand::RngCore`.
#[derive(Debug)]
pub(crate) struct RngRef<'a>(&'a SharedRng);

impl RngCore for RngRef<'_> {
    fn next_u32(&mut self) -> u32 {
        (self.0.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.0.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// The largest scaled weight of the stride scheduler (gRPC's `kMaxWeight`).
const MAX_WEIGHT: u64 = u16::MAX as u64;
/// Beyond this ratio of the largest weight to the mean, the stride scheduler would skip more
/// than 15 of 16 sequence numbers; a weighted random pick is used instead.
const MAX_SKEW: f64 = 16.0;

/// Which of `n` entries comes next, in proportion to their weights, for callers on any
/// thread at once. Entries with a zero weight never come.
///
/// - All weights equal: plain round robin on one atomic counter.
/// - Otherwise gRPC's static stride scheduler (gRFC A58): the counter's value splits into an
///   entry (value mod n) and a generation (value / n), and the entry is taken in
///   `weight / max_weight` of the generations, spread evenly; a skipped value costs one more
///   `fetch_add`. Over `65535 × n` values every entry comes exactly in proportion to its
///   weight (scaled to 16 bits).
/// - When one weight dwarfs the mean (more than 16×), a weighted random pick (binary search
///   over the cumulative weights) instead, so a pick never spins.
#[derive(Debug)]
pub(crate) struct Schedule {
    kind: Kind,
    live: usize,
    seq: AtomicU64,
}

#[derive(Debug, Clone)]
enum Kind {
    /// The indices of the entries with a non-zero weight, all equal.
    Uniform(Vec<u32>),
    /// Weights scaled so the largest is `MAX_WEIGHT`; zero for entries never taken.
    Stride(Vec<u16>),
    /// Cumulative weights.
    Random(Vec<f64>),
}

impl Clone for Schedule {
    /// A schedule that continues where this one is.
    fn clone(&self) -> Self {
        Self {
            kind: self.kind.clone(),
            live: self.live,
            seq: AtomicU64::new(self.seq.load(Ordering::Relaxed)),
        }
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Schedule {
    pub(crate) fn new(weights: &[f64]) -> Self {
        let live: Vec<u32> = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0.0)
            .map(|(i, _)| i as u32)
            .collect();
        let max = weights.iter().copied().fold(0.0f64, f64::max);
        let equal = live.iter().all(|&i| weights[i as usize] == max);
        let sum: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        let kind = if equal {
            Kind::Uniform(live.clone())
        } else if max * weights.len() as f64 / sum > MAX_SKEW {
            let mut acc = 0.0;
            Kind::Random(
                weights
                    .iter()
                    .map(|&w| {
                        acc += w.max(0.0);
                        acc
                    })
                    .collect(),
            )
        } else {
            Kind::Stride(
                weights
                    .iter()
                    .map(|&w| {
                        if w > 0.0 {
                            ((w / max * MAX_WEIGHT as f64).round() as u16).max(1)
                        } else {
                            0
                        }
                    })
                    .collect(),
            )
        };
        Self {
            kind,
            live: live.len(),
            seq: AtomicU64::new(0),
        }
    }

    /// How many entries can come (non-zero weights).
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The next entry, or none when every weight is zero.
    pub(crate) fn next(&self, rng: &SharedRng) -> Option<usize> {
        if self.live == 0 {
            return None;
        }
        match &self.kind {
            Kind::Uniform(live) => {
                let s = self.seq.fetch_add(1, Ordering::Relaxed);
                Some(live[(s % live.len() as u64) as usize] as usize)
            }
            Kind::Stride(weights) => {
                let n = weights.len() as u64;
                // The mean weight is at least 1/16 of the largest, so this ends after 16
                // values on average; the bound is only a guard.
                for _ in 0..64 * MAX_SKEW as usize {
                    let s = self.seq.fetch_add(1, Ordering::Relaxed);
                    let (index, generation) = (s % n, s / n);
                    let w = u64::from(weights[index as usize]);
                    // The offset by index keeps equal weights from skipping together.
                    let m = (w * (generation % MAX_WEIGHT) + index % MAX_WEIGHT * (MAX_WEIGHT / 2))
                        % MAX_WEIGHT;
                    if w > 0 && m >= MAX_WEIGHT - w {
                        return Some(index as usize);
                    }
                }
                weights
                    .iter()
                    .position(|&w| u64::from(w) == MAX_WEIGHT)
                    .or(Some(0))
            }
            Kind::Random(cumulative) => {
                let total = *cumulative.last()?;
                let x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
                let i = cumulative.partition_point(|&c| c <= x);
                Some(i.min(cumulative.len() - 1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &Schedule, n: usize, picks: usize) -> Vec<usize> {
        let rng = SharedRng::new(1);
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[s.next(&rng).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn uniform_is_plain_round_robin_skipping_zero_weights() {
        let s = Schedule::new(&[1.0, 0.0, 1.0]);
        let rng = SharedRng::new(0);
        let seq: Vec<_> = (0..4).map(|_| s.next(&rng).unwrap()).collect();
        assert_eq!(seq, vec![0, 2, 0, 2]);
        assert_eq!(s.len(), 2);
        assert_eq!(Schedule::new(&[0.0, 0.0]).next(&rng), None);
        assert_eq!(Schedule::default().next(&rng), None);
    }

    #[test]
    fn stride_is_proportional_to_weights() {
        let s = Schedule::new(&[1.0, 3.0, 0.0, 2.0]);
        assert!(matches!(s.kind, Kind::Stride(_)));
        let c = counts(&s, 4, 60_000);
        assert_eq!(c[2], 0);
        for (i, w) in [(0, 1.0), (1, 3.0), (3, 2.0)] {
            let share = c[i] as f64 / 60_000.0;
            assert!((share - w / 6.0).abs() < 0.01, "{c:?}");
        }
    }

    #[test]
    fn skewed_weights_pick_at_random_in_proportion() {
        let mut w = vec![1.0; 99];
        w.push(1000.0);
        let s = Schedule::new(&w);
        assert!(matches!(s.kind, Kind::Random(_)));
        let c = counts(&s, 100, 100_000);
        let heavy = c[99] as f64 / 100_000.0;
        assert!((heavy - 1000.0 / 1099.0).abs() < 0.01, "{heavy}");
        assert!(c[..99].iter().all(|&n| n > 0));
    }

    #[test]
    fn a_clone_continues_the_sequence() {
        let s = Schedule::new(&[1.0, 1.0, 1.0]);
        let rng = SharedRng::new(0);
        assert_eq!(s.next(&rng), Some(0));
        let c = s.clone();
        assert_eq!(c.next(&rng), Some(1));
    }

    #[test]
    fn seeded_rng_is_reproducible() {
        let (a, b) = (SharedRng::new(7), SharedRng::new(7));
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }
}
