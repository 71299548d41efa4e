//! Load balancing across a cluster's endpoints.
//!
//! [`Balancer`] is a `tower::Service<http::Request<B>>` for one cluster. It is given:
//!
//! - a [`BalancePolicy`] (from the cluster's `lb_policy` with
//!   [`BalancePolicy::from_lb_policy`], or written by hand);
//! - the endpoint set as a `tokio::sync::watch::Receiver<Arc<ClusterLoadAssignment>>`: the
//!   current value is used at once and every later value replaces the set (endpoints that stay
//!   keep their service, load estimate and outlier state). An update the balancer cannot use
//!   (a zero weight) is logged and ignored, and the previous set stays;
//! - a function `FnMut(SocketAddr) -> S` that makes the service for an endpoint (the adapters'
//!   connection pool plugs in here). Making it must be cheap; connecting belongs in the
//!   service's `poll_ready`.
//!
//! Endpoint services are kept in a [`tower::ready_cache::ReadyCache`]: `poll_ready` drives
//! connecting endpoints and says ready as soon as one usable endpoint is ready; `call` picks
//! among the ready ones with the request in hand, so picks can use the request's
//! [`RequestHash`] and [`AvoidEndpoints`]. An endpoint service that fails in `poll_ready` is
//! dropped until the next endpoint-set update lists it again.
//!
//! ## What a pick does
//!
//! 1. **Priority.** Each priority's health is `min(100, 1.4 × 100 × healthy / total)` (Envoy's
//!    overprovisioning factor 1.4); priority 0 takes as much traffic as its health allows and
//!    the rest spills to the next priorities, Envoy's priority-load computation. Traffic comes
//!    back as health returns. An endpoint counts as healthy when EDS says `HEALTHY` or
//!    `UNKNOWN` and outlier detection has not ejected it.
//! 2. **Locality** (all policies but ring hash): earliest-deadline-first weighted round robin
//!    over the localities, each weighted by its `load_balancing_weight` scaled by its health
//!    (`wrr_locality`).
//! 3. **Endpoint**, by policy:
//!    - [`BalancePolicy::P2cPeakEwma`], **the default**: two distinct random endpoints, the one
//!      with the lower cost wins, where cost is a peak-EWMA of its latency (decay 10 s, first
//!      guess 30 ms) times its requests in flight plus one; both are kept in atomics per
//!      endpoint;
//!    - [`BalancePolicy::RoundRobin`]: round robin; when endpoint weights differ, weighted
//!      (earliest deadline first, as Envoy does);
//!    - [`BalancePolicy::LeastRequest`] (gRFC A48): `choice_count` random endpoints (capped
//!      at 10), the fewest in flight wins;
//!    - [`BalancePolicy::RingHash`] (gRFC A42): one ring per priority over the healthy
//!      endpoints, built from xxHash64 of `"<ip:port>_<n>"` with `locality weight × endpoint
//!      weight` entries scaled between `min_ring_size` and `max_ring_size`; the request's
//!      [`RequestHash`] (or a random hash when there is none, as A42 says) finds the first
//!      entry clockwise, walking on past endpoints that cannot take the call. The hash also
//!      picks the priority, so a key sticks to one.
//!
//! Every policy skips endpoints that are unhealthy, ejected by outlier detection
//! ([`Balancer::with_outlier_detector`]) or not ready, and prefers endpoints not listed in the
//! request's [`AvoidEndpoints`] (a retry goes elsewhere when it can). No usable endpoint at all
//! fails the call at once with [`NoHealthyEndpoint`].
//!
//! The response carries [`ServedBy`] in its extensions; an endpoint's error comes back as an
//! [`EndpointError`] with its address. With a detector, every response feeds the endpoint's
//! [`EndpointStats`](crate::outlier::EndpointStats) (classified by
//! [`Outcome::from_response`](crate::outlier::Outcome::from_response)).
//!
//! Picks take no lock: the table is the service's own (`&mut self`), and what is shared
//! (load, ejection) is atomic. To share it, wrap it in `tower::buffer::Buffer` (the outbound
//! stack shares it behind a mutex instead, see [`crate::stack`]).

mod error;
mod future;
mod load;
mod ring;
mod table;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::StreamExt as _;
use meshwork_xds::resource::{ClusterLoadAssignment, LbPolicy};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tower::BoxError;
use tower::ready_cache::ReadyCache;

pub use self::error::{ConfigError, EndpointError, NoHealthyEndpoint};
pub use self::future::ResponseFuture;
use self::load::EndpointLoad;
use self::table::{PickInput, Shared, Table};
use crate::outlier::OutlierDetector;

/// The request hash ring hash uses: a request extension. The router computes it from the
/// route's hash policies (headers, channel id, source IP; terminal policies stop the chain);
/// ring hash picks a random hash for a request without one, and other policies ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHash(pub u64);

/// Endpoints a request should not go to if another can take it: a request extension. The
/// retry layer lists the endpoints of earlier attempts (from [`ServedBy`] and
/// [`EndpointError::address`]) so that a retry goes to a different endpoint when one exists;
/// when every usable endpoint is listed, the balancer picks among them anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AvoidEndpoints(pub Vec<SocketAddr>);

impl AvoidEndpoints {
    /// Whether `address` is listed.
    pub fn contains(&self, address: &SocketAddr) -> bool {
        self.0.contains(address)
    }

    /// Adds `address`.
    pub fn push(&mut self, address: SocketAddr) {
        if !self.contains(&address) {
            self.0.push(address);
        }
    }
}

/// The endpoint that served a response: a response extension the balancer sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServedBy(pub SocketAddr);

/// How a [`Balancer`] picks an endpoint (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BalancePolicy {
    /// Power of two choices over peak-EWMA latency × in-flight requests. The default.
    #[default]
    P2cPeakEwma,
    /// (Weighted) round robin.
    RoundRobin,
    /// Least request (gRFC A48).
    LeastRequest {
        /// Random endpoints compared per pick, 2 to 10.
        choice_count: u32,
    },
    /// Ring hash (gRFC A42).
    RingHash {
        /// Minimum ring size, at least 1.
        min_ring_size: u64,
        /// Maximum ring size, at least `min_ring_size` and at most 8M.
        max_ring_size: u64,
    },
}

/// The largest ring A42 allows.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

impl BalancePolicy {
    /// The policy for a cluster's `lb_policy`. `WRR_LOCALITY` is what every policy does across
    /// localities, so its child decides. `ROUND_ROBIN` (also what CDS means when it names no
    /// policy) is round robin; P2C has no xDS name and is the default for hand-written
    /// configuration. Pick-first is not supported.
    pub fn from_lb_policy(policy: &LbPolicy) -> Result<Self, ConfigError> {
        let p = match policy {
            LbPolicy::RoundRobin => BalancePolicy::RoundRobin,
            LbPolicy::LeastRequest { choice_count } => BalancePolicy::LeastRequest {
                choice_count: (*choice_count).min(10),
            },
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => BalancePolicy::RingHash {
                min_ring_size: *min_ring_size,
                max_ring_size: *max_ring_size,
            },
            LbPolicy::WrrLocality { child } => return Self::from_lb_policy(child),
            LbPolicy::PickFirst { .. } => {
                return Err(ConfigError::Unsupported {
                    field: "lb_policy".into(),
                    policy: "pick_first".into(),
                });
            }
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the parameters (for a hand-written policy).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            BalancePolicy::LeastRequest { choice_count } if !(2..=10).contains(&choice_count) => {
                Err(ConfigError::invalid(
                    "lb_policy.least_request.choice_count",
                    format!("{choice_count} is not between 2 and 10"),
                ))
            }
            BalancePolicy::RingHash {
                min_ring_size: 0, ..
            } => Err(ConfigError::invalid(
                "lb_policy.ring_hash.min_ring_size",
                "must not be zero",
            )),
            BalancePolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } if max_ring_size < min_ring_size || max_ring_size > MAX_RING_SIZE => {
                Err(ConfigError::invalid(
                    "lb_policy.ring_hash.max_ring_size",
                    format!(
                        "{max_ring_size} is not between min_ring_size ({min_ring_size}) and {MAX_RING_SIZE}"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Checks an endpoint set the way the balancer does before using it: every locality and
/// endpoint weight must be non-zero.
pub fn validate_endpoints(cla: &ClusterLoadAssignment) -> Result<(), ConfigError> {
    Table::build(cla, &BalancePolicy::RoundRobin, |_| {
        Arc::new(Shared {
            load: EndpointLoad::new(),
            outlier: None,
        })
    })
    .map(drop)
}

/// A load balancer over one cluster's endpoints (see the [module docs](self)).
pub struct Balancer<S, F, B> {
    policy: BalancePolicy,
    updates: Option<WatchStream<Arc<ClusterLoadAssignment>>>,
    new_endpoint: F,
    cache: ReadyCache<SocketAddr, S, http::Request<B>>,
    table: Table,
    shared: HashMap<SocketAddr, Arc<Shared>>,
    outlier: Option<OutlierDetector>,
    generation: u64,
    rng: SmallRng,
    last_error: Option<ConfigError>,
    // Endpoints called since their readiness was last checked. They stay in the ready set (a
    // call does not move them out, which would cost a trip through the cache's pending set)
    // but are not picked again until `poll_ready` has polled them: ready ones stay, the
    // others move to the pending set (or are dropped when they failed). Normally at most
    // one, as every call follows a `poll_ready`.
    called: Vec<Called>,
}

/// An endpoint called since its readiness was last checked, with where it was: its index in
/// the ready set and in the table's slots. Both are hints, checked against the address
/// before use (the ready set reorders when endpoints leave it; an update replaces the table).
#[derive(Debug, Clone, Copy)]
struct Called {
    address: SocketAddr,
    index: usize,
    slot: usize,
}

impl<S, F, B> fmt::Debug for Balancer<S, F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("policy", &self.policy)
            .field("endpoints", &self.table.slots.len())
            .field("ready", &self.cache.ready_len())
            .finish_non_exhaustive()
    }
}

impl<S, F, B> Balancer<S, F, B>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    F: FnMut(SocketAddr) -> S,
{
    /// A balancer following `endpoints`, making endpoint services with `new_endpoint`.
    pub fn new(
        policy: BalancePolicy,
        endpoints: watch::Receiver<Arc<ClusterLoadAssignment>>,
        new_endpoint: F,
    ) -> Self {
        let table = Table::empty(policy.clone());
        Self {
            policy,
            updates: Some(WatchStream::new(endpoints)),
            new_endpoint,
            cache: ReadyCache::default(),
            table,
            shared: HashMap::new(),
            outlier: None,
            generation: 0,
            rng: SmallRng::from_os_rng(),
            last_error: None,
            called: Vec::new(),
        }
    }

    /// Skips endpoints `detector` ejects, and feeds it every response.
    pub fn with_outlier_detector(mut self, detector: OutlierDetector) -> Self {
        self.generation = detector.generation();
        self.outlier = Some(detector);
        self
    }

    /// Seeds the random choices (P2C, least request, priorities), for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = SmallRng::seed_from_u64(seed);
        self
    }

    /// The error of the last endpoint-set update that was rejected, if the last one was.
    pub fn last_update_error(&self) -> Option<&ConfigError> {
        self.last_error.as_ref()
    }

    /// How many endpoints the current set has.
    pub fn endpoint_count(&self) -> usize {
        self.table.slots.len()
    }

    fn apply(&mut self, cla: &ClusterLoadAssignment) {
        let outlier = self.outlier.clone();
        let shared = &mut self.shared;
        let mut used = HashSet::new();
        let built = Table::build(cla, &self.policy, |addr| {
            used.insert(addr);
            shared
                .entry(addr)
                .or_insert_with(|| {
                    Arc::new(Shared {
                        load: EndpointLoad::new(),
                        outlier: outlier.as_ref().map(|o| o.endpoint(addr)),
                    })
                })
                .clone()
        });
        let table = match built {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(cluster = %cla.cluster_name, error = %e, "endpoint update rejected");
                self.last_error = Some(e);
                return;
            }
        };
        self.last_error = None;
        let gone: Vec<SocketAddr> = self
            .shared
            .keys()
            .filter(|a| !used.contains(*a))
            .copied()
            .collect();
        for a in gone {
            self.shared.remove(&a);
            self.cache.evict(&a);
        }
        for slot in &table.slots {
            let a = slot.address;
            if self.cache.get_ready(&a).is_none() && !self.cache.pending_contains(&a) {
                let svc = (self.new_endpoint)(a);
                self.cache.push(a, svc);
            }
        }
        if let Some(o) = &self.outlier {
            o.retain(&used);
        }
        self.table = table;
    }

    fn any_usable(&self) -> bool {
        self.table
            .slots
            .iter()
            .any(|s| s.healthy && !s.shared.ejected())
    }
}

impl<S, F, B, B2> tower::Service<http::Request<B>> for Balancer<S, F, B>
where
    S: tower::Service<http::Request<B>, Response = http::Response<B2>>,
    S::Error: Into<BoxError>,
    F: FnMut(SocketAddr) -> S,
{
    type Response = http::Response<B2>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // 0. Endpoints called since their last check: poll them where they are. One that is
        //    still ready is remembered, to spare step 4 a search.
        let mut still_ready = None;
        for c in self.called.drain(..) {
            let index = match self.cache.get_ready_index(c.index) {
                Some((a, _)) if *a == c.address => Some(c.index),
                _ => self.cache.get_ready(&c.address).map(|(i, _, _)| i),
            };
            let Some(index) = index else { continue };
            match self.cache.check_ready_index(cx, index) {
                Ok(true) => still_ready = Some(c),
                Ok(false) => {}
                Err(failed) => {
                    tracing::debug!(endpoint = %failed.0, error = %failed.1, "endpoint failed");
                }
            }
        }
        // `still_ready` may have moved in the ready set since (a later one left it, swapping
        // the last into its place); only whether it is there counts below.
        // 1. Endpoint-set updates. A closed channel keeps the last set.
        while let Some(updates) = &mut self.updates {
            match updates.poll_next_unpin(cx) {
                Poll::Ready(Some(cla)) => {
                    // The set (and the ready set) may change: forget the shortcut.
                    still_ready = None;
                    self.apply(&cla);
                }
                Poll::Ready(None) => self.updates = None,
                Poll::Pending => break,
            }
        }
        // 2. Ejections changed: recompute priority health.
        if let Some(o) = &self.outlier {
            let g = o.generation();
            if g != self.generation {
                self.generation = g;
                self.table.refresh_health();
            }
        }
        // 3. Drive endpoints that are not ready yet.
        loop {
            match self.cache.poll_pending(cx) {
                Poll::Ready(Ok(())) | Poll::Pending => break,
                Poll::Ready(Err(failed)) => {
                    tracing::debug!(endpoint = %failed.0, error = %failed.1, "endpoint failed");
                }
            }
        }
        // 4. Ready when a usable endpoint is ready; also when none could ever be (no
        //    endpoints, all unhealthy or ejected): then `call` fails fast instead of leaving
        //    the caller waiting.
        //    (`called` is empty here, so every endpoint in the ready set has been polled.) The
        //    endpoint of the last call, when it stayed ready and usable, answers at once: no
        //    update came since, so it is still in the ready set.
        let table = &self.table;
        let shortcut = still_ready.is_some_and(|c| {
            table
                .slots
                .get(c.slot)
                .is_some_and(|s| s.address == c.address && s.healthy && !s.shared.ejected())
        });
        let ready = shortcut || self.cache.iter_ready().any(|(a, _)| table.usable(a));
        if ready || !self.any_usable() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let hash = req.extensions().get::<RequestHash>().map(|h| h.0);
        let avoid = req.extensions().get::<AvoidEndpoints>();
        let cache = &self.cache;
        let called = &self.called;
        // The ready-set index of the last endpoint found ready, to spare a second search.
        let found = std::cell::Cell::new(None);
        let ready = |s: &table::Slot| {
            s.healthy
                && !s.shared.ejected()
                && !called.iter().any(|c| c.address == s.address)
                && match cache.get_ready(&s.address) {
                    Some((index, _, _)) => {
                        found.set(Some((s.address, index)));
                        true
                    }
                    None => false,
                }
        };
        let mut input = PickInput {
            hash,
            rng: &mut self.rng,
        };
        let mut picked = None;
        if let Some(avoid) = avoid.filter(|a| !a.0.is_empty()) {
            picked = self
                .table
                .pick(&mut input, |s| ready(s) && !avoid.contains(&s.address));
        }
        if picked.is_none() {
            picked = self.table.pick(&mut input, ready);
        }
        let Some(i) = picked else {
            return ResponseFuture::failed(NoHealthyEndpoint {
                known: self.table.slots.len(),
            });
        };
        let slot = &self.table.slots[i];
        let (address, shared) = (slot.address, slot.shared.clone());
        let index = match found.get() {
            Some((a, index)) if a == address => Some(index),
            _ => self.cache.get_ready(&address).map(|(index, _, _)| index),
        };
        match index.and_then(|index| Some((index, self.cache.get_ready_index_mut(index)?.1))) {
            Some((index, svc)) => {
                let future = svc.call(req);
                self.called.push(Called {
                    address,
                    index,
                    slot: i,
                });
                ResponseFuture::new(future, shared, address)
            }
            None => ResponseFuture::failed(NoHealthyEndpoint {
                known: self.table.slots.len(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
