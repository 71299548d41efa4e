//! Load balancing across a cluster's endpoints.
//!
//! [`Balancer`] is a `tower::Service<http::Request<B>>` for one cluster, and a cheap handle:
//! its clones share everything. It is built ([`Balancer::new`], or [`Balancer::builder`]
//! for outlier detection and a seed) within a tokio runtime from:
//!
//! - a [`BalancePolicy`] (from the cluster's `lb_policy` with
//!   [`BalancePolicy::from_lb_policy`], or written by hand);
//! - the endpoint set as a `tokio::sync::watch::Receiver<Arc<ClusterLoadAssignment>>`: the
//!   current value is used at once and every later value replaces the set (endpoints that stay
//!   keep their connection, load estimate and outlier state). An update the balancer cannot
//!   use (a zero weight) is logged and ignored, and the previous set stays;
//! - a function `FnMut(SocketAddr) -> S` that makes the service for an endpoint (the adapters'
//!   connectors plug in here). Making it must be cheap; connecting belongs in the service's
//!   `poll_ready`. Once ready, `S` is a **handle**: calls clone it, so it must be cheap to
//!   clone and its clones must share one connection (or pool), as a multiplexed HTTP/2
//!   connection's sender does.
//!
//! ## Off the hot path: the driver
//!
//! Building the balancer spawns its driver task (gRPC's picker model). The driver follows the
//! endpoint watch and builds, per endpoint set, an immutable pick table (priorities, their
//! load split, localities, rings), which it publishes through an `ArcSwap`. It drives each
//! endpoint's service to readiness and then publishes it as the endpoint's handle; endpoints
//! whose service is ready at once (a pool, an always-ready service) are usable as soon as the
//! balancer is built. An endpoint whose readiness fails is reconnected (a new service from the
//! function) after a backoff: 1 s, × 1.6 per failure in a row, at most 120 s, ±20 % jitter. The
//! driver also rebuilds the table's health when outlier detection ejects or returns an
//! endpoint, and ends with the last handle and call.
//!
//! ## On the hot path: a call
//!
//! `poll_ready` is always ready. `call` loads the current table (no lock), picks with the
//! request in hand, so picks can use the request's [`RequestHash`] and [`AvoidEndpoints`],
//! using only atomics (round-robin counters, a shared random source, each endpoint's load,
//! ready flag and ejection), clones the picked endpoint's handle, checks the clone's
//! readiness and, ready (a multiplexed connection is, at once), calls it there: the call's
//! future carries the endpoint's future, and only a call that waits (for an endpoint, or for
//! the handle's readiness, checked again with the call's waker at the first poll) keeps its
//! request, in a box of its own. When the check fails (the connection is gone) the endpoint
//! is hidden, reported to the driver for reconnection, and the call picks again (up to 3
//! times, then it fails with that endpoint's [`EndpointError`]).
//!
//! When endpoints are healthy but none is connected yet, the call waits for the driver's next
//! publication (a `tokio::sync::Notify`; only this path waits on it) and picks again, as
//! long as its timeout allows. When connecting fails for every one of them (gRPC's sticky
//! TRANSIENT_FAILURE: from a failed attempt until a connection is made), the call fails at
//! once with an [`EndpointError`] whose source, [`ConnectFailed`], carries the last
//! connection error. No usable endpoint at all (none known, all unhealthy or ejected) fails
//! the call at once with [`NoHealthyEndpoint`].
//!
//! ## What a pick does
//!
//! 1. **Priority.** Each priority's health is `min(100, 1.4 × 100 × healthy / total)` (Envoy's
//!    overprovisioning factor 1.4); priority 0 takes as much traffic as its health allows and
//!    the rest spills to the next priorities, Envoy's priority-load computation. Traffic comes
//!    back as health returns. An endpoint counts as healthy when EDS says `HEALTHY` or
//!    `UNKNOWN` and outlier detection has not ejected it.
//! 2. **Locality** (all policies but ring hash): weighted round robin over the localities,
//!    each weighted by its `load_balancing_weight` scaled by its health (`wrr_locality`).
//! 3. **Endpoint**, by policy:
//!    - [`BalancePolicy::P2cPeakEwma`] (`BalancePolicy`'s default for a balancer built by
//!      hand; for xDS clusters, meshwork's A52 custom policy [`LbPolicy::PeakEwma`] or the
//!      stack's `default_balancer` for clusters that name none, which are otherwise round
//!      robin as in gRPC and Envoy): two distinct random endpoints, the one
//!      with the lower cost wins, where cost is a peak-EWMA of its latency (decay 10 s, first
//!      guess 30 ms) times its requests in flight plus one; both are kept in atomics per
//!      endpoint, shared by every caller;
//!    - [`BalancePolicy::RoundRobin`]: round robin on one atomic counter per locality, so
//!      concurrent callers share one rotation; when endpoint weights differ, weighted;
//!    - [`BalancePolicy::LeastRequest`] (gRFC A48): `choice_count` random endpoints (capped
//!      at 10), the fewest in flight wins;
//!    - [`BalancePolicy::RingHash`] (gRFC A42): one ring per priority over all its
//!      endpoints, built from xxHash64 of `"<ip:port>_<n>"` with `locality weight × endpoint
//!      weight` entries scaled between `min_ring_size` and `max_ring_size`, both capped at
//!      [`BalancerBuilder::ring_size_cap`] (default [`DEFAULT_RING_SIZE_CAP`], 4096, as gRPC);
//!      the request's [`RequestHash`] (or a random hash when there is none, as A42 says)
//!      finds the first entry clockwise. A42's picker decides from there: the endpoint found
//!      takes the call when connected; while it is connecting the call **waits** for it, so
//!      a key's first call lands where its next ones will; when it is failing to connect,
//!      the next distinct endpoint decides the same way, and when that one fails too, the
//!      first connected endpoint further on takes the call. Unhealthy, ejected and (first)
//!      avoided endpoints are passed over as if they were not on the ring; a call without a
//!      request hash never waits (gRFC A76). The hash also picks the priority, so a key
//!      sticks to one. A ring is made when its priority first takes traffic, and a new
//!      endpoint set keeps the ring of a priority whose endpoints and weights did not change
//!      (health alone does not change a ring).
//!
//! Weighted round robin (localities, and endpoints of unequal weight) is gRPC's static stride
//! scheduler (gRFC A58) on one atomic sequence: every entry comes in proportion to its weight,
//! spread evenly; when one weight is over 16 times the mean, a weighted random pick instead.
//! The random choices come from one SplitMix64 sequence on an atomic counter, which
//! [`BalancerBuilder::seed`] makes reproducible.
//!
//! Every policy skips endpoints that are unhealthy, ejected by outlier detection
//! ([`BalancerBuilder::outlier_detector`]) or not connected, and prefers endpoints not listed
//! in the request's [`AvoidEndpoints`] (a retry goes elsewhere when it can).
//!
//! The response carries [`ServedBy`] in its extensions; an endpoint's error comes back as an
//! [`EndpointError`] with its address. With a detector, every response feeds the endpoint's
//! [`EndpointStats`](crate::outlier::EndpointStats) (classified by
//! [`Outcome::from_response`](crate::outlier::Outcome::from_response)).

mod driver;
mod endpoint;
mod error;
mod future;
mod load;
mod ring;
mod sched;
mod table;

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use meshwork_xds::resource::{ClusterLoadAssignment, LbPolicy};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::WatchStream;
use tower::BoxError;

use self::driver::{Driver, Published, Report, Snapshot};
use self::endpoint::Endpoint;
pub use self::error::{BalancerConfigError, ConnectFailed, EndpointError, NoHealthyEndpoint};
pub use self::future::ResponseFuture;
use self::future::{InFlight, Picked};
use self::ring::Reach;
use self::sched::SharedRng;
use self::table::{Choice, PickInput, Slot, Table};
pub use crate::extensions::{AvoidEndpoints, RequestHash, ServedBy};
use crate::outlier::OutlierDetector;

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
    /// Ring hash (gRFC A42). Both sizes are capped by the balancer's
    /// [`ring_size_cap`](BalancerBuilder::ring_size_cap) (default 4096).
    RingHash {
        /// Minimum ring size, at least 1.
        min_ring_size: u64,
        /// Maximum ring size, at least `min_ring_size` and at most 8M.
        max_ring_size: u64,
    },
}

/// The largest ring A42 allows.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// The default cap on a ring's size: a cluster asking for more entries gets this many. gRPC's
/// default (gRFC A42's ring size cap: C-core's `grpc.lb.ring_hash.ring_size_cap`, grpc-go's
/// `GRPC_RING_HASH_CAP`), so that a control plane asking for 8M entries costs 48 KiB of ring
/// per priority rather than 96 MiB.
pub const DEFAULT_RING_SIZE_CAP: u64 = 4096;

impl BalancePolicy {
    /// The policy for a cluster's `lb_policy`. `WRR_LOCALITY` is what every policy does across
    /// localities, so its child decides. A cluster that names no policy
    /// ([`LbPolicy::Unspecified`]) is round robin here, as in gRPC and Envoy (the stack's
    /// [`ClientOptions::default_balancer`](crate::client::ClientOptions::default_balancer) can
    /// choose otherwise); P2C peak-EWMA is meshwork's A52 custom policy
    /// ([`LbPolicy::PeakEwma`]). Pick-first is not supported.
    pub fn from_lb_policy(policy: &LbPolicy) -> Result<Self, BalancerConfigError> {
        let p = match policy {
            LbPolicy::Unspecified | LbPolicy::RoundRobin => BalancePolicy::RoundRobin,
            LbPolicy::PeakEwma => BalancePolicy::P2cPeakEwma,
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
                return Err(BalancerConfigError::Unsupported {
                    field: "lb_policy".into(),
                    policy: "pick_first".into(),
                });
            }
            // A policy a newer meshwork-xds decodes and this balancer does not know.
            other => {
                return Err(BalancerConfigError::Unsupported {
                    field: "lb_policy".into(),
                    policy: format!("{other:?}"),
                });
            }
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the parameters (for a hand-written policy).
    pub fn validate(&self) -> Result<(), BalancerConfigError> {
        match *self {
            BalancePolicy::LeastRequest { choice_count } if !(2..=10).contains(&choice_count) => {
                Err(BalancerConfigError::invalid(
                    "lb_policy.least_request.choice_count",
                    format!("{choice_count} is not between 2 and 10"),
                ))
            }
            BalancePolicy::RingHash {
                min_ring_size: 0, ..
            } => Err(BalancerConfigError::invalid(
                "lb_policy.ring_hash.min_ring_size",
                "must not be zero",
            )),
            BalancePolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } if max_ring_size < min_ring_size || max_ring_size > MAX_RING_SIZE => {
                Err(BalancerConfigError::invalid(
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
pub fn validate_endpoints(cla: &ClusterLoadAssignment) -> Result<(), BalancerConfigError> {
    Table::<()>::build(cla, &BalancePolicy::RoundRobin, |_| {
        Arc::new(Endpoint::new(None))
    })
    .map(drop)
}

/// A load balancer over one cluster's endpoints (see the [module docs](self)): a cheap
/// handle to the cluster's published pick table. Clones share the table, the endpoints'
/// connections and state, and the driver task; the driver ends with the last clone (and the
/// last call in flight).
pub struct Balancer<S, B> {
    inner: Arc<Inner<S>>,
    _request: PhantomData<fn(B)>,
}

/// What the clones of one balancer share.
pub(crate) struct Inner<S> {
    published: Arc<Published<S>>,
    // Only handles and calls hold senders: the driver stops when the last one goes.
    reports: mpsc::UnboundedSender<Report>,
}

impl<S, B> Clone for Balancer<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _request: PhantomData,
        }
    }
}

impl<S, B> fmt::Debug for Balancer<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("endpoints", &self.endpoint_count())
            .field("ready", &self.ready_count())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Balancer`]: [`Balancer::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct BalancerBuilder {
    policy: BalancePolicy,
    outlier: Option<OutlierDetector>,
    seed: Option<u64>,
    ring_size_cap: u64,
}

impl BalancerBuilder {
    /// A builder for a balancer with `policy`, no outlier detection, seeded from the OS, and
    /// rings capped at [`DEFAULT_RING_SIZE_CAP`].
    pub fn new(policy: BalancePolicy) -> Self {
        Self {
            policy,
            outlier: None,
            seed: None,
            ring_size_cap: DEFAULT_RING_SIZE_CAP,
        }
    }

    /// Caps ring hash's `min_ring_size` and `max_ring_size` at `cap` entries, whatever the
    /// policy asks for (as gRPC's ring size cap does); `cap` is taken between 1 and
    /// [`MAX_RING_SIZE`]. A ring costs 12 bytes an entry. Default: [`DEFAULT_RING_SIZE_CAP`]
    /// (4096, gRPC's default). A larger ring spreads keys more evenly over endpoints of
    /// very different weights or over more than a few hundred endpoints; with more endpoints
    /// than entries, some endpoints get no entry (and no keys), as in gRPC and Envoy.
    pub fn ring_size_cap(mut self, cap: u64) -> Self {
        self.ring_size_cap = cap.clamp(1, MAX_RING_SIZE);
        self
    }

    /// Skips endpoints `detector` ejects, and feeds it every response (default: no
    /// detector).
    pub fn outlier_detector(mut self, detector: OutlierDetector) -> Self {
        self.outlier = Some(detector);
        self
    }

    /// Seeds the random choices (P2C, least request, priorities, ring hash without a
    /// request hash), for reproducible tests (default: seeded from the OS).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The balancer, following `endpoints` and making endpoint services with
    /// `new_endpoint`. Endpoints of the current set whose service is ready at once are
    /// usable at once; the rest connect on the driver task this spawns, so it must be
    /// called within a tokio runtime.
    pub fn build<S, B, F>(
        self,
        endpoints: watch::Receiver<Arc<ClusterLoadAssignment>>,
        new_endpoint: F,
    ) -> Balancer<S, B>
    where
        S: tower::Service<http::Request<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        F: FnMut(SocketAddr) -> S + Send + 'static,
        B: 'static,
    {
        let policy = match self.policy {
            BalancePolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => BalancePolicy::RingHash {
                min_ring_size: min_ring_size.min(self.ring_size_cap),
                max_ring_size: max_ring_size.min(self.ring_size_cap),
            },
            p => p,
        };
        let published = Arc::new(Published {
            snapshot: ArcSwap::from_pointee(Snapshot {
                table: Arc::new(Table::empty(policy.clone())),
                error: None,
            }),
            notify: Notify::new(),
            rng: self
                .seed
                .map_or_else(SharedRng::from_os_rng, SharedRng::new),
        });
        let mut driver: Driver<S, F, http::Request<B>> =
            Driver::new(published.clone(), policy, new_endpoint, self.outlier);
        let mut endpoints = endpoints;
        let first = endpoints.borrow_and_update().clone();
        driver.apply(&first);
        let (reports, received) = mpsc::unbounded_channel();
        tokio::spawn(driver.run(WatchStream::from_changes(endpoints), received));
        Balancer {
            inner: Arc::new(Inner { published, reports }),
            _request: PhantomData,
        }
    }
}

impl<S, B> Balancer<S, B>
where
    S: tower::Service<http::Request<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    B: 'static,
{
    /// A balancer following `endpoints`, making endpoint services with `new_endpoint`, with
    /// no outlier detection: `Balancer::builder(policy).build(endpoints, new_endpoint)`.
    /// Must be called within a tokio runtime.
    pub fn new<F>(
        policy: BalancePolicy,
        endpoints: watch::Receiver<Arc<ClusterLoadAssignment>>,
        new_endpoint: F,
    ) -> Self
    where
        F: FnMut(SocketAddr) -> S + Send + 'static,
    {
        BalancerBuilder::new(policy).build(endpoints, new_endpoint)
    }
}

impl Balancer<(), ()> {
    /// A builder for a balancer with `policy` (the same as [`BalancerBuilder::new`]); its
    /// [`build`](BalancerBuilder::build) decides the endpoint service and request types.
    pub fn builder(policy: BalancePolicy) -> BalancerBuilder {
        BalancerBuilder::new(policy)
    }
}

impl<S, B> Balancer<S, B> {
    /// The error of the last endpoint-set update that was rejected, if the last one was.
    pub fn last_update_error(&self) -> Option<BalancerConfigError> {
        self.inner.published.snapshot.load().error.clone()
    }

    /// How many endpoints the current set has.
    pub fn endpoint_count(&self) -> usize {
        self.inner.published.snapshot.load().table.slots.len()
    }

    /// How many endpoints of the current set have a connected (ready) service.
    pub fn ready_count(&self) -> usize {
        let snapshot = self.inner.published.snapshot.load();
        snapshot
            .table
            .slots
            .iter()
            .filter(|s| s.endpoint.is_ready())
            .count()
    }
}

/// The outcome of one pick.
pub(crate) enum Pick<S> {
    Found(Picked<S>),
    /// Some endpoint could take the call once connected.
    NotReady,
    /// No endpoint is connected and every usable one is failing to connect.
    Failing(EndpointError),
    /// No endpoint is healthy and not ejected.
    Unusable {
        known: usize,
    },
}

impl<S: Clone> Inner<S> {
    /// Picks a ready endpoint from the current snapshot: a load, then the table's pick over
    /// atomics, then a clone of the endpoint's handle. No lock.
    pub(crate) fn pick(&self, hash: Option<u64>, avoid: Option<&AvoidEndpoints>) -> Pick<S> {
        let snapshot = self.published.snapshot.load();
        let table = &*snapshot.table;
        let input = PickInput {
            hash,
            rng: &self.published.rng,
        };
        let state = |s: &Slot<S>| {
            if !s.healthy || s.endpoint.ejected() {
                Reach::Absent
            } else if s.endpoint.is_ready() {
                Reach::Ready
            } else if s.endpoint.is_failing() {
                Reach::Failing
            } else {
                Reach::Connecting
            }
        };
        // A handle withdrawn between the flag check and its load makes another pick; twice
        // in a row is already unlikely.
        for _ in 0..3 {
            let mut picked = Choice::Nothing;
            if let Some(avoid) = avoid.filter(|a| !a.is_empty()) {
                let elsewhere = |s: &Slot<S>| {
                    if avoid.contains(&s.address) {
                        Reach::Absent
                    } else {
                        state(s)
                    }
                };
                picked = table.choose(&input, elsewhere);
            }
            // Avoiding the endpoints listed found none ready: any ready one will do.
            if !matches!(picked, Choice::Slot(_)) {
                picked = table.choose(&input, state);
            }
            let i = match picked {
                Choice::Slot(i) => i,
                Choice::Queue => return Pick::NotReady,
                Choice::Nothing => break,
            };
            let slot = &table.slots[i];
            if let Some((id, service)) = slot.endpoint.handle() {
                return Pick::Found(Picked {
                    in_flight: InFlight::new(slot.endpoint.clone(), slot.address, id),
                    service,
                });
            }
        }
        // Nothing ready: wait if some usable endpoint is connecting, fail at once with a
        // connection error if every one is failing to connect.
        let mut failing = None;
        for slot in table.slots.iter().filter(|s| s.usable()) {
            match slot.endpoint.failure() {
                None => return Pick::NotReady,
                Some(error) => {
                    failing.get_or_insert((slot.address, error));
                }
            }
        }
        match failing {
            Some((address, error)) => Pick::Failing(EndpointError {
                address,
                source: Box::new(ConnectFailed { source: error }),
            }),
            None => Pick::Unusable {
                known: table.slots.len(),
            },
        }
    }

    /// A call found the handle `id` of `address` broken: hide it from picks now, and let
    /// the driver reconnect it.
    pub(crate) fn report_broken(&self, address: SocketAddr, id: u64) {
        let snapshot = self.published.snapshot.load();
        if let Some(&i) = snapshot.table.by_address.get(&address) {
            snapshot.table.slots[i].endpoint.hide(id);
        }
        // The driver is gone only when every handle is, and this call holds one.
        let _ = self.reports.send(Report::Broken { address, id });
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for Balancer<S, B>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    /// Always ready: readiness is per endpoint and checked by the call, which waits when no
    /// endpoint is ready yet.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let hash = req.extensions().get::<RequestHash>().map(|h| h.value());
        let pick = self
            .inner
            .pick(hash, req.extensions().get::<AvoidEndpoints>());
        ResponseFuture::new(pick, req, &self.inner)
    }
}

#[cfg(test)]
mod tests;
