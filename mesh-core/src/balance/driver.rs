//! The balancer's driver: one task per balancer that does everything off the hot path. It
//! follows the endpoint watch and builds pick tables, connects endpoints (drives their
//! services to readiness) and publishes their handles, reconnects with backoff those that
//! fail or that a call reports broken, and rebuilds the table's health when outlier
//! detection ejects or returns an endpoint.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt as _;
use futures_util::future::{AbortHandle, Abortable, abortable};
use futures_util::stream::FuturesUnordered;
use meshwork_xds::resource::ClusterLoadAssignment;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::WatchStream;
use tower::{BoxError, Service, ServiceExt as _};

use super::BalancePolicy;
use super::endpoint::{Endpoint, Handle};
use super::error::BalancerConfigError;
use super::sched::SharedRng;
use super::table::Table;
use crate::outlier::OutlierDetector;

/// What the driver publishes and every call reads.
pub(crate) struct Published<S> {
    pub(crate) snapshot: ArcSwap<Snapshot<S>>,
    /// Notified on every publication: a new snapshot or a newly connected endpoint. Only
    /// calls that found nothing ready wait on it.
    pub(crate) notify: Notify,
    pub(crate) rng: SharedRng,
}

/// One immutable view of the cluster: the pick table (whose endpoints carry their live
/// ready flag, handle, load and ejection) and the last update's error.
pub(crate) struct Snapshot<S> {
    pub(crate) table: Arc<Table<S>>,
    pub(crate) error: Option<BalancerConfigError>,
}

/// A call's report to the driver.
#[derive(Debug)]
pub(crate) enum Report {
    /// The handle `id` of the endpoint at `address` failed its readiness check: its
    /// connection is gone.
    Broken { address: SocketAddr, id: u64 },
}

/// Reconnect backoff (as gRPC's connection backoff): 1 s, × 1.6 per failure in a row, at
/// most 120 s, each ±20 % jitter.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(120);
/// A connection that served this long before it broke starts the backoff afresh.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// A connection attempt in progress, or the backoff before one.
type ConnectFuture<S> = Pin<Box<dyn Future<Output = (SocketAddr, u64, Attempt<S>)> + Send>>;

enum Attempt<S> {
    /// The backoff elapsed: make the service and connect now.
    Due,
    /// The service became ready, or failed.
    Done(Result<S, BoxError>),
}

struct Tracked<S> {
    endpoint: Arc<Endpoint<S>>,
    /// The current connection attempt: its token and the handle to abandon it.
    attempt: u64,
    abort: Option<AbortHandle>,
    failures: u32,
    connected_at: Option<Instant>,
}

pub(crate) struct Driver<S, F, R> {
    published: Arc<Published<S>>,
    policy: BalancePolicy,
    new_endpoint: F,
    outlier: Option<OutlierDetector>,
    generation: u64,
    endpoints: HashMap<SocketAddr, Tracked<S>>,
    connecting: FuturesUnordered<Abortable<ConnectFuture<S>>>,
    next_id: u64,
    jitter: SmallRng,
    _request: PhantomData<fn(R)>,
}

impl<S, F, R> Driver<S, F, R>
where
    S: Service<R> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    F: FnMut(SocketAddr) -> S + Send + 'static,
    R: 'static,
{
    pub(crate) fn new(
        published: Arc<Published<S>>,
        policy: BalancePolicy,
        new_endpoint: F,
        outlier: Option<OutlierDetector>,
    ) -> Self {
        Self {
            published,
            policy,
            new_endpoint,
            generation: outlier.as_ref().map_or(0, OutlierDetector::generation),
            outlier,
            endpoints: HashMap::new(),
            connecting: FuturesUnordered::new(),
            next_id: 0,
            jitter: SmallRng::from_os_rng(),
            _request: PhantomData,
        }
    }

    /// Follows `updates` and `reports` until every balancer handle is gone.
    pub(crate) async fn run(
        mut self,
        mut updates: WatchStream<Arc<ClusterLoadAssignment>>,
        mut reports: mpsc::UnboundedReceiver<Report>,
    ) {
        let mut following = true;
        loop {
            let outlier = self.outlier_changed();
            tokio::select! {
                report = reports.recv() => match report {
                    Some(r) => self.on_report(r),
                    // Every handle (and call in flight) is gone.
                    None => return,
                },
                update = updates.next(), if following => match update {
                    Some(cla) => self.apply(&cla),
                    // A closed channel keeps the last set.
                    None => following = false,
                },
                Some(done) = self.connecting.next(), if !self.connecting.is_empty() => {
                    match done {
                        Ok((address, attempt, Attempt::Done(result))) => {
                            self.on_connected(address, attempt, result);
                        }
                        Ok((address, attempt, Attempt::Due)) => {
                            if self.endpoints.get(&address).is_some_and(|t| t.attempt == attempt) {
                                self.connect(address, Duration::ZERO);
                            }
                        }
                        // Abandoned: the endpoint left or a newer attempt replaced it.
                        Err(_aborted) => {}
                    }
                }
                () = outlier => self.refresh_health(),
            }
        }
    }

    fn outlier_changed(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        match &self.outlier {
            Some(o) => Box::pin(o.changed(self.generation)),
            None => Box::pin(std::future::pending()),
        }
    }

    /// Applies an endpoint set: endpoints that stay keep their state and connection, new
    /// ones start connecting, removed ones are dropped (calls in flight on them finish on
    /// the handle they hold).
    pub(crate) fn apply(&mut self, cla: &ClusterLoadAssignment) {
        let mut used = HashSet::new();
        let mut created: HashMap<SocketAddr, Arc<Endpoint<S>>> = HashMap::new();
        let endpoints = &self.endpoints;
        let outlier = &self.outlier;
        let current = self.published.snapshot.load_full();
        let built = Table::build_after(Some(&current.table), cla, &self.policy, |address| {
            used.insert(address);
            if let Some(t) = endpoints.get(&address) {
                return t.endpoint.clone();
            }
            created
                .entry(address)
                .or_insert_with(|| {
                    Arc::new(Endpoint::new(outlier.as_ref().map(|o| o.endpoint(address))))
                })
                .clone()
        });
        let table = match built {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(cluster = %cla.cluster_name, error = %e, "endpoint update rejected");
                self.published.snapshot.store(Arc::new(Snapshot {
                    table: current.table.clone(),
                    error: Some(e),
                }));
                return;
            }
        };
        self.endpoints.retain(|address, t| {
            let keep = used.contains(address);
            if !keep {
                if let Some(a) = t.abort.take() {
                    a.abort();
                }
                t.endpoint.withdraw();
            }
            keep
        });
        if let Some(o) = &self.outlier {
            o.retain(&used);
        }
        // Publish the table before connecting, so that a call finds the new endpoints (and
        // waits for them) rather than failing for want of any.
        self.publish(table, None);
        for (address, endpoint) in created {
            self.endpoints.insert(
                address,
                Tracked {
                    endpoint,
                    attempt: 0,
                    abort: None,
                    failures: 0,
                    connected_at: None,
                },
            );
            self.connect(address, Duration::ZERO);
        }
    }

    fn publish(&mut self, table: Table<S>, error: Option<BalancerConfigError>) {
        self.published.snapshot.store(Arc::new(Snapshot {
            table: Arc::new(table),
            error,
        }));
        self.published.notify.notify_waiters();
    }

    /// Ejections changed: recompute priority health and locality weights.
    fn refresh_health(&mut self) {
        if let Some(o) = &self.outlier {
            self.generation = o.generation();
        }
        let current = self.published.snapshot.load_full();
        let mut table = Table::clone(&current.table);
        table.refresh_health();
        self.publish(table, current.error.clone());
    }

    /// Starts connecting `address`, after `delay` when it is not zero (the service is made
    /// when the attempt starts). A service that is ready at once is published at once.
    fn connect(&mut self, address: SocketAddr, delay: Duration) {
        let Some(tracked) = self.endpoints.get_mut(&address) else {
            return;
        };
        if let Some(a) = tracked.abort.take() {
            a.abort();
        }
        self.next_id += 1;
        let attempt = self.next_id;
        tracked.attempt = attempt;
        let future: ConnectFuture<S> = if delay.is_zero() {
            let mut service = (self.new_endpoint)(address);
            // Most services (a connection pool, an always-ready service) are ready at once:
            // publish them without a trip through the task.
            match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(())) => return self.on_connected(address, attempt, Ok(service)),
                Poll::Ready(Err(e)) => {
                    return self.on_connected(address, attempt, Err(e.into()));
                }
                Poll::Pending => {}
            }
            Box::pin(async move {
                let result = service.ready_oneshot().await.map_err(Into::into);
                (address, attempt, Attempt::Done(result))
            })
        } else {
            let due = Instant::now() + delay;
            Box::pin(async move {
                tokio::time::sleep_until(due).await;
                (address, attempt, Attempt::Due)
            })
        };
        let (future, abort) = abortable(future);
        if let Some(tracked) = self.endpoints.get_mut(&address) {
            tracked.abort = Some(abort);
        }
        self.connecting.push(future);
    }

    fn on_connected(&mut self, address: SocketAddr, attempt: u64, result: Result<S, BoxError>) {
        let Some(tracked) = self.endpoints.get_mut(&address) else {
            return;
        };
        if tracked.attempt != attempt {
            return;
        }
        tracked.abort = None;
        match result {
            Ok(service) => {
                self.next_id += 1;
                tracked.endpoint.publish(Handle {
                    id: self.next_id,
                    service,
                });
                tracked.connected_at = Some(Instant::now());
                self.published.notify.notify_waiters();
            }
            Err(error) => {
                tracked.failures = tracked.failures.saturating_add(1);
                let delay = backoff(tracked.failures, &mut self.jitter);
                tracing::debug!(endpoint = %address, %error, ?delay, "endpoint failed to connect");
                tracked.endpoint.fail(error);
                // Calls waiting for a connection may now fail at once.
                self.published.notify.notify_waiters();
                self.connect(address, delay);
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        let Report::Broken { address, id } = report;
        let Some(tracked) = self.endpoints.get_mut(&address) else {
            return;
        };
        if tracked.endpoint.handle_id() != Some(id) {
            // A late report about a connection already replaced: make sure the caller that
            // hid the endpoint did not hide the new one.
            tracked.endpoint.unhide();
            return;
        }
        tracked.endpoint.withdraw();
        if tracked
            .connected_at
            .is_some_and(|t| t.elapsed() >= HEALTHY_AFTER)
        {
            tracked.failures = 0;
        }
        let delay = backoff(tracked.failures, &mut self.jitter);
        tracked.failures = tracked.failures.saturating_add(1);
        tracing::debug!(endpoint = %address, ?delay, "endpoint connection lost; reconnecting");
        self.connect(address, delay);
    }
}

/// The wait before connection attempt number `failures + 1`: none after no failure, then
/// 1 s × 1.6^(failures − 1) up to 120 s, ±20 %.
fn backoff(failures: u32, rng: &mut SmallRng) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = 1.6f64.powi(failures.saturating_sub(1).min(32) as i32);
    let base = (BACKOFF_BASE.as_secs_f64() * exp).min(BACKOFF_MAX.as_secs_f64());
    Duration::from_secs_f64(base * rng.random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(backoff(0, &mut rng), Duration::ZERO);
        let first = backoff(1, &mut rng);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let third = backoff(3, &mut rng);
        assert!(third >= Duration::from_secs_f64(2.56 * 0.8), "{third:?}");
        assert!(backoff(100, &mut rng) <= Duration::from_secs(144));
    }
}
