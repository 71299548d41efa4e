//! The bounded cache of an engine's resolved xDS targets.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::ResolveError;

/// Target name -> its resolved value. Lookups of known targets take no lock (an `ArcSwap`
/// load); a new target is inserted under a mutex, evicting one when the map is full, and
/// its `OnceCell` makes concurrent first calls share one resolution.
pub(super) struct TargetCache<V> {
    entries: ArcSwap<HashMap<String, Arc<Entry<V>>>>,
    insert: Mutex<()>,
    max: usize,
    negative_ttl: Duration,
    /// The origin of [`Entry::last_used`].
    epoch: Instant,
}

/// One target: its value once resolved, or its last failure.
struct Entry<V> {
    value: OnceCell<V>,
    /// The last failure, and until when it answers for the target.
    failed: Mutex<Option<(Instant, ResolveError)>>,
    /// When a call last asked for the target, in milliseconds since the cache's epoch.
    last_used: AtomicU64,
}

impl<V> Entry<V> {
    fn touch(&self, now: u64) {
        // At most one write per millisecond: a hot target's cache line is not bounced
        // between cores by every call.
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    fn failure(&self, now: Instant) -> Option<ResolveError> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed
            .as_ref()
            .filter(|(until, _)| now < *until)
            .map(|(_, e)| e.clone())
    }

    fn remember(&self, until: Instant, error: ResolveError) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some((until, error));
    }
}

impl<V: Clone> TargetCache<V> {
    /// A cache of at most `max` targets (at least one) that remembers a failure for
    /// `negative_ttl`.
    pub(super) fn new(max: usize, negative_ttl: Duration) -> Self {
        Self {
            entries: ArcSwap::from_pointee(HashMap::new()),
            insert: Mutex::new(()),
            max: max.max(1),
            negative_ttl,
            epoch: Instant::now(),
        }
    }

    /// The names of the targets kept now, sorted.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// The value of `target`, resolved with `resolve` on first use (or after its
    /// remembered failure expires).
    pub(super) async fn get_or_resolve<F, Fut>(
        &self,
        target: &str,
        resolve: F,
    ) -> Result<V, ResolveError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, ResolveError>>,
    {
        let entry = self.entry(target);
        if let Some(value) = entry.value.get() {
            return Ok(value.clone());
        }
        // A failed init leaves the cell empty for the next waiter, which then finds the
        // failure remembered rather than resolving again.
        entry
            .value
            .get_or_try_init(|| async {
                if let Some(error) = entry.failure(Instant::now()) {
                    return Err(error);
                }
                let resolved = resolve().await;
                if let Err(error) = &resolved
                    && !self.negative_ttl.is_zero()
                {
                    entry.remember(Instant::now() + self.negative_ttl, error.clone());
                }
                resolved
            })
            .await
            .cloned()
    }

    /// The entry of `target`, made (and another evicted, if the cache is full) on first use.
    fn entry(&self, target: &str) -> Arc<Entry<V>> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(entry) = self.entries.load().get(target) {
            entry.touch(now);
            return entry.clone();
        }
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let entries = self.entries.load();
        if let Some(entry) = entries.get(target) {
            entry.touch(now);
            return entry.clone();
        }
        let mut next = HashMap::clone(&entries);
        while next.len() >= self.max {
            // Targets without a value (failed, or resolving) go first: they cost only a
            // resolution to make again, and a flood of unknown targets then evicts itself.
            let victim = next
                .iter()
                .min_by_key(|(_, e)| (e.value.initialized(), e.last_used.load(Ordering::Relaxed)))
                .map(|(name, _)| name.clone());
            let Some(name) = victim else { break };
            next.remove(&name);
        }
        let entry = Arc::new(Entry {
            value: OnceCell::new(),
            failed: Mutex::new(None),
            last_used: AtomicU64::new(now),
        });
        next.insert(target.to_owned(), entry.clone());
        self.entries.store(Arc::new(next));
        entry
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn not_found(target: &str) -> ResolveError {
        ResolveError::NoXdsClient {
            target: target.to_owned(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_first_calls_share_one_resolution() {
        let cache = TargetCache::<u32>::new(8, Duration::from_secs(5));
        let runs = AtomicUsize::new(0);
        let resolve = || async {
            runs.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(7)
        };
        let (a, b, c) = tokio::join!(
            cache.get_or_resolve("xds:///a", resolve),
            cache.get_or_resolve("xds:///a", resolve),
            cache.get_or_resolve("xds:///a", resolve),
        );
        assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (7, 7, 7));
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        // Kept: a later call does not resolve again.
        assert_eq!(cache.get_or_resolve("xds:///a", resolve).await.unwrap(), 7);
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_answers_until_the_negative_ttl_passes() {
        let cache = TargetCache::<u32>::new(8, Duration::from_secs(5));
        let runs = AtomicUsize::new(0);
        let failing = || async {
            runs.fetch_add(1, Ordering::Relaxed);
            Err(not_found("xds:///x"))
        };
        assert!(cache.get_or_resolve("xds:///x", failing).await.is_err());
        tokio::time::advance(Duration::from_secs(4)).await;
        let again = cache.get_or_resolve("xds:///x", failing).await.unwrap_err();
        assert_eq!(again.target(), "xds:///x");
        assert_eq!(
            runs.load(Ordering::Relaxed),
            1,
            "remembered, not resolved again"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let ok = cache.get_or_resolve("xds:///x", || async { Ok(1) }).await;
        assert_eq!(ok.unwrap(), 1, "resolved again once the TTL passed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_ttl_remembers_no_failure() {
        let cache = TargetCache::<u32>::new(8, Duration::ZERO);
        let failing = || async { Err(not_found("xds:///x")) };
        assert!(cache.get_or_resolve("xds:///x", failing).await.is_err());
        let ok = cache.get_or_resolve("xds:///x", || async { Ok(2) }).await;
        assert_eq!(ok.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_evicts_unresolved_targets_first_then_the_least_recently_used() {
        let cache = TargetCache::<u32>::new(3, Duration::from_secs(5));
        let ok = || async { Ok(0) };
        cache.get_or_resolve("xds:///old", ok).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        cache.get_or_resolve("xds:///new", ok).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let failing = || async { Err(not_found("xds:///bad")) };
        assert!(cache.get_or_resolve("xds:///bad", failing).await.is_err());
        tokio::time::advance(Duration::from_millis(10)).await;
        // Full: the failed target goes first, though it was used last.
        cache.get_or_resolve("xds:///third", ok).await.unwrap();
        assert_eq!(cache.names(), ["xds:///new", "xds:///old", "xds:///third"]);
        tokio::time::advance(Duration::from_millis(10)).await;
        // `old` is used again; `new` is now the least recently used.
        cache.get_or_resolve("xds:///old", ok).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        cache.get_or_resolve("xds:///fourth", ok).await.unwrap();
        assert_eq!(
            cache.names(),
            ["xds:///fourth", "xds:///old", "xds:///third"]
        );
    }
}
