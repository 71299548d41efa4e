//! The outbound stack: everything between a client call and an endpoint connection.
//!
//! The client [`Engine`](crate::client::Engine) assembles it per target, from the target's
//! [`ConfigReceiver`], below the call's telemetry layer:
//!
//! ```text
//! Router ─> per cluster: Timeout ─> Retry ─> Attempt ─> CircuitBreaker ─> Balancer
//!                                                                       └─> endpoint handles
//! ```
//!
//! [`Attempt`](crate::telemetry::Attempt) (an OpenTelemetry span and metrics per attempt, and
//! the W3C trace headers) sits below the retry layer, so every retry is an attempt of its own;
//! the retry layer copies the request's extensions onto every attempt (all but the router's
//! `RoutePolicy`, which it takes out), which is how the call span of a
//! [`Call`](crate::telemetry::Call) above the router becomes the attempts' parent.
//! The breaker, the outlier detector and the retry layer count their decisions through the
//! cluster's [`ClusterMetrics`](crate::telemetry::ClusterMetrics).
//!
//! The endpoint services are made by a user-supplied [`Connect`] (the adapters' connectors
//! plug in here; tests use closures).
//!
//! # Clusters across config updates
//!
//! Per-cluster stacks live in a `ClusterSet` and persist across config updates. A task
//! spawned on the current tokio runtime follows the config channel (for a target the
//! [`Engine`](crate::client::Engine) resolves through xDS, the task that publishes its
//! configs applies each one itself, right after publishing it, one task hop fewer per
//! update) and, for each new config:
//!
//! - a cluster whose `Cluster` resource is unchanged keeps its stack: its balancer, its
//!   connections, its breaker counters and its outlier state. A new endpoint set is sent on
//!   that cluster's own endpoint watch, so an EDS change touches only that balancer, and a
//!   route change touches no cluster at all;
//! - a cluster whose `Cluster` resource changed (policy, breakers, TLS, …) is rebuilt;
//! - a cluster no longer in the config is dropped (calls in flight finish on the handles
//!   they hold);
//! - a new cluster is built.
//!
//! A request routed with a config the task has not applied yet (the router saw it first)
//! applies it on the spot, under the set's lock, when its cluster is missing; lookups of
//! known clusters take no lock (an [`ArcSwap`] load and an `Arc` clone).
//!
//! # Sharing clusters between targets
//!
//! A `ClusterSet` follows one target's config. Sets made `with_shared` one `SharedClusters`
//! registry share the stacks of the clusters they have in common (same name, same `Cluster`
//! resource), as Envoy shares a cluster among its listeners: an
//! [`Engine`](crate::client::Engine) makes a set per target (meshwork-http's `MeshClient` a
//! target per host name) and shares its clusters this way, so two names of one service get
//! one balancer, one connection pool, one breaker and one
//! outlier detector. A shared cluster is built by the first set that needs it (with that
//! set's connector and telemetry, so its attempt metrics carry that target) and dropped
//! with the last one that routes to it. Its endpoints follow one set at a time (the one
//! that built it, then whichever set claims it once that one stops routing to it): every
//! set's config comes from the same xDS cache, but in its own time, and a set that applied
//! an update late would otherwise send the older endpoints again.
//!
//! # Sharing the balancer
//!
//! Every layer is cloned per call and shares its state through atomics, the balancer
//! included: a [`Balancer`] is a handle to its cluster's published pick table, kept by a
//! driver task off the calls' path (see [`crate::balance`]). A call loads the table, picks
//! with atomics and calls a clone of the endpoint's handle: no lock and no task hop. A call
//! waits in its own future only when no endpoint is connected yet, until the driver publishes
//! one. This replaced a mutex around a balancer that owned a `ReadyCache`, itself the
//! replacement of a `tower::buffer::Buffer` worker task.
//!
//! # Cluster kinds
//!
//! EDS clusters (and hand-written clusters with endpoints) are supported. Aggregate and
//! LOGICAL_DNS clusters are not yet: calls routed to them fail with
//! [`StackError::UnsupportedCluster`]. A cluster whose endpoints have not arrived (or are in
//! error) gets a balancer with no endpoints, so calls fail fast with
//! [`NoHealthyEndpoint`](crate::balance::NoHealthyEndpoint) until they arrive. When a
//! cluster's endpoints later turn into an error (the EDS resource was removed), the last
//! endpoint set keeps serving.
//!
//! A route to a cluster the config does not list at all (a hand-written config that names a
//! cluster without adding it) fails with
//! [`RouteError::ClusterNotFound`](crate::route::RouteError::ClusterNotFound); such
//! requests take the set's lock to check for a newer config first.
//!
//! # Errors
//!
//! Every layer's error comes back boxed; [`error_codes`] maps any of them (walking the source
//! chain) to the gRPC code and HTTP status an adapter should answer with.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;
use http_body::Body;
use tokio::sync::{oneshot, watch};
use tower::{BoxError, Service, ServiceBuilder};

use crate::balance::{BalancePolicy, Balancer};
use crate::breaker::CircuitBreakerLayer;
use crate::config::{ClusterChildren, ClusterLoadAssignment, ClusterState, ConfigReceiver};
use crate::outlier::OutlierDetector;
use crate::retry::{RetryBody, RetryLayer};
use crate::route::Clusters;
#[cfg(test)]
use crate::route::Router;
use crate::telemetry::{AttemptLayer, Telemetry, TelemetryBody};
use crate::timeout::{TimeoutBody, TimeoutLayer};
use crate::xds::resource::{Cluster, ClusterKind, LbPolicy};

pub use crate::errors::{StackError, error_codes};

/// Makes the service for one endpoint of a cluster: the seam where an adapter's connection
/// pool plugs in.
///
/// Called when an endpoint appears in a cluster's endpoint set, and again to reconnect it
/// after its service failed; making the service must be cheap, connecting belongs in the
/// service's `poll_ready`, which the balancer's driver task drives (off the calls' path).
/// Once ready, the service is a *handle* that every call clones, checks with `poll_ready`
/// (a failure there means the connection is gone: the call picks another endpoint and the
/// driver reconnects this one with backoff) and calls: so it must be cheap to clone and
/// share one connection (or pool) among its clones, as a multiplexed HTTP/2 connection's
/// sender does. The cluster is passed so that a connector can honour its transport
/// settings (TLS, SAN matchers, connect timeout). Implemented for closures
/// `Fn(&Arc<Cluster>, SocketAddr) -> S`.
pub trait Connect<B>: Clone + Send + Sync + 'static {
    /// The endpoint service: a cheaply cloneable handle.
    type Service: Service<http::Request<RetryBody<B>>> + Clone + Send + Sync + 'static;

    /// The service for `address`, an endpoint of `cluster`.
    fn connect(&self, cluster: &Arc<Cluster>, address: SocketAddr) -> Self::Service;
}

impl<B, F, S> Connect<B> for F
where
    F: Fn(&Arc<Cluster>, SocketAddr) -> S + Clone + Send + Sync + 'static,
    S: Service<http::Request<RetryBody<B>>> + Clone + Send + Sync + 'static,
{
    type Service = S;

    fn connect(&self, cluster: &Arc<Cluster>, address: SocketAddr) -> S {
        self(cluster, address)
    }
}

/// What one cluster's stack answers.
type ClusterResponse<RB> = http::Response<TimeoutBody<TelemetryBody<RB>>>;

/// The future of one call to a cluster's stack.
pub(crate) type ClusterFuture<RB> =
    Pin<Box<dyn Future<Output = Result<ClusterResponse<RB>, BoxError>> + Send>>;

/// One cluster's stack (Timeout -> Retry -> Attempt -> CircuitBreaker -> Balancer) as the
/// router calls it: through a shared reference, each call readying and calling its own
/// clone of the stack and boxing the future (a boxed service cloned per call would box the
/// clone too).
trait ClusterCall<B, RB>: Send + Sync {
    fn call(&self, req: http::Request<B>) -> ClusterFuture<RB>;
}

impl<S, B, RB> ClusterCall<B, RB> for S
where
    S: Service<http::Request<B>, Response = ClusterResponse<RB>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: 'static,
{
    fn call(&self, req: http::Request<B>) -> ClusterFuture<RB> {
        let mut stack = self.clone();
        // Every layer of a cluster's stack is ready at once (the balancer waits for an
        // endpoint inside its future), so the clone is called here and only its future is
        // boxed; driving the clone through a oneshot would carry it, and move the whole
        // future through the oneshot's states, for nothing. A stack that is not ready
        // (none here) is driven by a oneshot, which polls it again with the call's waker.
        match stack.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Box::pin(Service::call(&mut stack, req)),
            Poll::Ready(Err(e)) => Box::pin(async move { Err(e) }),
            Poll::Pending => Box::pin(tower::ServiceExt::oneshot(stack, req)),
        }
    }
}

/// The service of one cluster, as the [`Router`](crate::route::Router)'s [`Clusters`]
/// lookup hands it out: a shared handle, always ready (each call readies its own clone of
/// the stack).
pub(crate) struct ClusterService<B, RB> {
    stack: Arc<dyn ClusterCall<B, RB>>,
}

impl<B, RB> ClusterService<B, RB> {
    fn new<S>(stack: S) -> Self
    where
        S: ClusterCall<B, RB> + 'static,
    {
        Self {
            stack: Arc::new(stack),
        }
    }
}

impl<B, RB> Clone for ClusterService<B, RB> {
    fn clone(&self) -> Self {
        Self {
            stack: self.stack.clone(),
        }
    }
}

impl<B, RB> Service<http::Request<B>> for ClusterService<B, RB> {
    type Response = ClusterResponse<RB>;
    type Error = BoxError;
    type Future = ClusterFuture<RB>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> ClusterFuture<RB> {
        self.stack.call(req)
    }
}

/// The outbound stack: a [`Router`] over a [`ClusterSet`].
#[cfg(test)]
pub(crate) type OutboundStack<B, RB> = Router<ClusterSet<B, RB>>;

/// Settings of the per-cluster stacks. Traffic policy comes from the config itself (limits
/// from the cluster's circuit breakers, policies from routes and clusters).
#[derive(Debug, Clone, Default)]
pub(crate) struct StackOptions {
    telemetry: Option<Telemetry>,
    balancing: Balancing,
}

/// The balancer settings the application chooses for every cluster.
#[derive(Debug, Clone, Default)]
struct Balancing {
    ring_size_cap: Option<u64>,
    /// For clusters that name no policy ([`LbPolicy::Unspecified`]); round robin if unset.
    unspecified: Option<BalancePolicy>,
}

impl StackOptions {
    /// Records attempt spans and metrics, and the traffic layers' counters, through
    /// `telemetry`. Default: [`Telemetry::global`], taken once when the stack is built.
    pub(crate) fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Caps every ring-hash cluster's ring at `cap` entries, whatever its CDS resource asks
    /// for (gRPC's ring size cap). Default:
    /// [`DEFAULT_RING_SIZE_CAP`](crate::balance::DEFAULT_RING_SIZE_CAP) (4096, gRPC's
    /// default); see [`BalancerBuilder::ring_size_cap`](crate::balance::BalancerBuilder::ring_size_cap).
    pub(crate) fn ring_size_cap(mut self, cap: u64) -> Self {
        self.balancing.ring_size_cap = Some(cap);
        self
    }

    /// The balancer for clusters that name no load-balancing policy
    /// ([`LbPolicy::Unspecified`]: what Istio sends for a service without a
    /// `DestinationRule`, and what a hand-written [`Cluster::eds`] has). Default: round robin,
    /// as gRPC and Envoy balance such clusters; [`BalancePolicy::P2cPeakEwma`] is Linkerd's
    /// choice (latency-aware, and it avoids a slow endpoint). A cluster that names a policy
    /// gets that policy whatever this says.
    ///
    /// # Errors
    /// [`BalancerConfigError`](crate::balance::BalancerConfigError) when the policy's parameters are out of
    /// range ([`BalancePolicy::validate`]).
    pub(crate) fn default_balancer(
        mut self,
        policy: BalancePolicy,
    ) -> Result<Self, crate::balance::BalancerConfigError> {
        policy.validate()?;
        self.balancing.unspecified = Some(policy);
        Ok(self)
    }
}

/// Builds the outbound stack over `config`, making endpoint services with `connect`.
///
/// Must be called within a tokio runtime: it spawns the task that follows the config (it
/// ends when the last clone of the stack is dropped) and, per cluster with outlier
/// detection, the sweeper.
#[cfg(test)]
pub(crate) fn outbound<B, RB, C>(
    config: ConfigReceiver,
    connect: C,
    options: StackOptions,
) -> OutboundStack<B, RB>
where
    C: Connect<B>,
    C::Service: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>>,
    <C::Service as Service<http::Request<RetryBody<B>>>>::Error: Into<BoxError>,
    <C::Service as Service<http::Request<RetryBody<B>>>>::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Body + Send + 'static,
{
    let set = ClusterSet::new(config.clone(), connect, options);
    Router::new(config, set)
}

type Builder<B, RB> =
    dyn Fn(&Arc<Cluster>, Option<Arc<ClusterLoadAssignment>>) -> Built<B, RB> + Send + Sync;

struct Built<B, RB> {
    service: ClusterService<B, RB>,
    endpoints: Option<watch::Sender<Arc<ClusterLoadAssignment>>>,
}

/// One cluster's stack, kept while a [`ClusterSet`] (or several, through
/// [`SharedClusters`]) routes to it.
struct Entry<B, RB> {
    cluster: Arc<Cluster>,
    service: ClusterService<B, RB>,
    endpoints: Option<watch::Sender<Arc<ClusterLoadAssignment>>>,
    /// The set whose endpoint updates the cluster follows (see [`Entry::update`]).
    feeder: Mutex<Option<u64>>,
}

/// Numbers the sets, to tell a shared cluster's feeder from the others.
static NEXT_SET_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<B, RB> Entry<B, RB> {
    fn new(cluster: &Arc<Cluster>, built: Built<B, RB>, set: u64) -> Self {
        Self {
            cluster: cluster.clone(),
            service: built.service,
            endpoints: built.endpoints,
            feeder: Mutex::new(Some(set)),
        }
    }

    /// Sends `set`'s endpoint set to the cluster's balancer, if it is new. A shared cluster
    /// follows one set's updates at a time (the one that built it, then whichever claims it
    /// after that one lets go): every set's config comes from the same xDS cache, but in
    /// its own time, and a set that applies an update late would otherwise send the older
    /// endpoints again after a newer set.
    fn update(&self, cla: Option<Arc<ClusterLoadAssignment>>, set: u64) {
        let Some(cla) = cla else {
            return;
        };
        {
            let mut feeder = self.feeder.lock().unwrap_or_else(|e| e.into_inner());
            match *feeder {
                Some(other) if other != set => return,
                _ => *feeder = Some(set),
            }
        }
        if let Some(tx) = &self.endpoints {
            tx.send_if_modified(|cur| {
                if Arc::ptr_eq(cur, &cla) || **cur == *cla {
                    false
                } else {
                    *cur = cla;
                    true
                }
            });
        }
    }

    /// `set` no longer routes to this cluster: another set may feed it from now on.
    fn release(&self, set: u64) {
        let mut feeder = self.feeder.lock().unwrap_or_else(|e| e.into_inner());
        if *feeder == Some(set) {
            *feeder = None;
        }
    }
}

/// Cluster stacks shared by several [`ClusterSet`]s, as Envoy shares a cluster among its
/// listeners: a cluster that more than one target routes to (two host names of one
/// service, in an HTTP client) gets one stack, with one balancer, one set of connections,
/// one breaker and one outlier detector, instead of one per target.
///
/// The first set to need a cluster builds it, with its own connector and telemetry; the
/// others reuse it while their `Cluster` resource is the same (a set whose resource differs
/// builds its own, which later sets then share). A cluster is dropped with the last set
/// that routes to it. Cheap to clone.
pub(crate) struct SharedClusters<B, RB> {
    entries: Arc<Mutex<Registry<B, RB>>>,
}

/// Cluster name -> its stacks, one per distinct `Cluster` resource in use (while targets
/// move from one version of a cluster to the next, both may be live), each alive while some
/// set holds it.
type Registry<B, RB> = HashMap<String, Vec<std::sync::Weak<Entry<B, RB>>>>;

impl<B, RB> SharedClusters<B, RB> {
    /// An empty registry.
    pub(crate) fn new() -> Self {
        Self {
            entries: Arc::default(),
        }
    }

    /// The names of the clusters alive in the registry, sorted.
    pub(crate) fn cluster_names(&self) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = entries
            .iter()
            .filter(|(_, stacks)| stacks.iter().any(|e| e.strong_count() > 0))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// The stack of `cluster`: the registry's if it has one for the same resource, else one
    /// made by `build` (and registered).
    fn get_or_build(
        &self,
        cluster: &Arc<Cluster>,
        cla: Option<Arc<ClusterLoadAssignment>>,
        build: &Builder<B, RB>,
        set: u64,
    ) -> Arc<Entry<B, RB>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let stacks = entries.entry(cluster.name.clone()).or_default();
        stacks.retain(|e| e.strong_count() > 0);
        if let Some(entry) = stacks
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|e| *e.cluster == **cluster)
        {
            entry.update(cla, set);
            return entry;
        }
        let entry = Arc::new(Entry::new(cluster, build(cluster, cla), set));
        stacks.push(Arc::downgrade(&entry));
        entries.retain(|_, stacks| stacks.iter().any(|e| e.strong_count() > 0));
        entry
    }
}

impl<B, RB> Default for SharedClusters<B, RB> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, RB> Clone for SharedClusters<B, RB> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
        }
    }
}

impl<B, RB> fmt::Debug for SharedClusters<B, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedClusters")
            .field("clusters", &self.cluster_names())
            .finish()
    }
}

struct State<B, RB> {
    config: ConfigReceiver,
    entries: HashMap<String, Arc<Entry<B, RB>>>,
}

struct Inner<B, RB> {
    services: ArcSwap<HashMap<String, ClusterService<B, RB>>>,
    state: Mutex<State<B, RB>>,
    build: Box<Builder<B, RB>>,
    shared: Option<SharedClusters<B, RB>>,
    /// This set's number, as a shared cluster's feeder.
    id: u64,
    // Dropped with the last handle: ends the task that follows the config.
    _shutdown: oneshot::Sender<()>,
}

/// Applies the latest config published to a set made [`with_shared`](ClusterSet::with_shared),
/// if it is new (as its own task would); does nothing once the set is gone. A set made with
/// [`Applier::Publisher`] depends on it.
pub(crate) type ApplyConfig = Box<dyn Fn() + Send + Sync>;

/// Who applies a set's new configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applier {
    /// A task of the set's own, woken by the config channel.
    OwnTask,
    /// The publisher, through the set's [`ApplyConfig`], right after it publishes.
    Publisher,
}

/// The per-cluster stacks of one target, kept in step with its config (see the
/// [module docs](self)). Cheap to clone; the [`Router`]'s [`Clusters`] lookup.
pub(crate) struct ClusterSet<B, RB> {
    inner: Arc<Inner<B, RB>>,
}

impl<B, RB> Clone for ClusterSet<B, RB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B, RB> fmt::Debug for ClusterSet<B, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSet")
            .field("clusters", &self.cluster_names())
            .finish()
    }
}

impl<B, RB> ClusterSet<B, RB> {
    /// The cluster stacks for the configs on `config`; see [`outbound`]. Must be called
    /// within a tokio runtime.
    #[cfg(test)]
    pub(crate) fn new<C>(config: ConfigReceiver, connect: C, options: StackOptions) -> Self
    where
        C: Connect<B>,
        C::Service: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>>,
        <C::Service as Service<http::Request<RetryBody<B>>>>::Error: Into<BoxError>,
        <C::Service as Service<http::Request<RetryBody<B>>>>::Future: Send + 'static,
        B: Body + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
        RB: Body + Send + 'static,
    {
        Self::build(config, connect, options, None, Applier::OwnTask)
    }

    /// Like [`new`](Self::new), with the cluster stacks taken from (and put in) `shared`, so
    /// that sets for several targets share the clusters they have in common; and the set's
    /// [`ApplyConfig`]. With [`Applier::Publisher`] the set has no task of its own following
    /// the config: whoever publishes on `config` calls that after each publish (so an xDS
    /// update reaches the balancers without a hop through another task).
    pub(crate) fn with_shared<C>(
        config: ConfigReceiver,
        connect: C,
        options: StackOptions,
        shared: SharedClusters<B, RB>,
        applier: Applier,
    ) -> (Self, ApplyConfig)
    where
        C: Connect<B>,
        C::Service: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>>,
        <C::Service as Service<http::Request<RetryBody<B>>>>::Error: Into<BoxError>,
        <C::Service as Service<http::Request<RetryBody<B>>>>::Future: Send + 'static,
        B: Body + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
        RB: Body + Send + 'static,
    {
        let set = Self::build(config, connect, options, Some(shared), applier);
        let weak = Arc::downgrade(&set.inner);
        let apply: ApplyConfig = Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.sync(false);
            }
        });
        (set, apply)
    }

    fn build<C>(
        config: ConfigReceiver,
        connect: C,
        options: StackOptions,
        shared: Option<SharedClusters<B, RB>>,
        applier: Applier,
    ) -> Self
    where
        C: Connect<B>,
        C::Service: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>>,
        <C::Service as Service<http::Request<RetryBody<B>>>>::Error: Into<BoxError>,
        <C::Service as Service<http::Request<RetryBody<B>>>>::Future: Send + 'static,
        B: Body + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
        RB: Body + Send + 'static,
    {
        let telemetry = options.telemetry.unwrap_or_else(Telemetry::global);
        let balancing = options.balancing;
        let build: Box<Builder<B, RB>> = Box::new(move |cluster, cla| {
            build_cluster(cluster, cla, &connect, &telemetry, &balancing)
        });
        let (shutdown, mut stopped) = oneshot::channel::<()>();
        let mut follow = config.clone();
        let inner = Arc::new(Inner {
            services: ArcSwap::from_pointee(HashMap::new()),
            state: Mutex::new(State {
                config,
                entries: HashMap::new(),
            }),
            build,
            shared,
            id: NEXT_SET_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            _shutdown: shutdown,
        });
        inner.sync(true);
        if applier == Applier::Publisher {
            return Self { inner };
        }
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = follow.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = &mut stopped => return,
                }
                match weak.upgrade() {
                    Some(inner) => inner.sync(false),
                    None => return,
                }
            }
        });
        Self { inner }
    }

    /// The names of the clusters that have a stack now, sorted.
    pub(crate) fn cluster_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.services.load().keys().cloned().collect();
        names.sort();
        names
    }
}

impl<B, RB> Inner<B, RB> {
    /// Applies the latest config if it is new (or `force`).
    fn sync(&self, force: bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !force && !st.config.has_changed().unwrap_or(false) {
            return;
        }
        let cfg = st.config.borrow_and_update().clone();
        let mut old = std::mem::take(&mut st.entries);
        let mut next = HashMap::new();
        for (name, state) in cfg.clusters() {
            let ClusterState::Ready(cc) = state else {
                // The router fails calls to a cluster in error; nothing to build.
                continue;
            };
            let cla = match &cc.children {
                ClusterChildren::Endpoints(Ok(cla)) => Some(cla.clone()),
                _ => None,
            };
            let entry = match old.remove(name) {
                Some(entry) if *entry.cluster == *cc.cluster => {
                    entry.update(cla, self.id);
                    entry
                }
                replaced => {
                    if let Some(entry) = replaced {
                        entry.release(self.id);
                    }
                    match &self.shared {
                        Some(shared) => {
                            shared.get_or_build(&cc.cluster, cla, &*self.build, self.id)
                        }
                        None => Arc::new(Entry::new(
                            &cc.cluster,
                            (self.build)(&cc.cluster, cla),
                            self.id,
                        )),
                    }
                }
            };
            next.insert(name.clone(), entry);
        }
        for entry in old.values() {
            entry.release(self.id);
        }
        let services = next
            .iter()
            .map(|(k, e)| (k.clone(), e.service.clone()))
            .collect();
        self.services.store(Arc::new(services));
        st.entries = next;
        // `old` now holds the removed clusters: dropping it drops their handles, and each
        // balancer ends with its last handle.
        drop(old);
    }
}

impl<B, RB> Drop for Inner<B, RB> {
    fn drop(&mut self) {
        // Shared clusters this set fed can be fed by the sets still using them.
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for entry in st.entries.values() {
            entry.release(self.id);
        }
    }
}

impl<B, RB> Clusters<http::Request<B>> for ClusterSet<B, RB> {
    type Service = ClusterService<B, RB>;

    fn get(&self, name: &str) -> Option<Self::Service> {
        if let Some(svc) = HashMap::get(&self.inner.services.load(), name) {
            return Some(svc.clone());
        }
        // The router may have seen a config the follower task has not applied yet.
        self.inner.sync(false);
        HashMap::get(&self.inner.services.load(), name).cloned()
    }
}

fn empty_assignment(name: &str) -> Arc<ClusterLoadAssignment> {
    Arc::new(ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        localities: Vec::new(),
        drop_overloads: Vec::new(),
        unsupported_fields: Vec::new(),
    })
}

fn failing<B, RB>(err: StackError) -> Built<B, RB>
where
    B: Send + 'static,
    RB: Body + Send + 'static,
{
    let service = tower::service_fn(move |_req: http::Request<B>| {
        let err = err.clone();
        async move { Err::<http::Response<TimeoutBody<TelemetryBody<RB>>>, BoxError>(Box::new(err)) }
    });
    Built {
        service: ClusterService::new(service),
        endpoints: None,
    }
}

fn build_cluster<B, RB, C>(
    cluster: &Arc<Cluster>,
    cla: Option<Arc<ClusterLoadAssignment>>,
    connect: &C,
    telemetry: &Telemetry,
    balancing: &Balancing,
) -> Built<B, RB>
where
    C: Connect<B>,
    C::Service: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>>,
    <C::Service as Service<http::Request<RetryBody<B>>>>::Error: Into<BoxError>,
    <C::Service as Service<http::Request<RetryBody<B>>>>::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Body + Send + 'static,
{
    let kind = match &cluster.kind {
        ClusterKind::Eds { .. } => None,
        ClusterKind::Aggregate { .. } => Some("aggregate"),
        ClusterKind::LogicalDns { .. } => Some("logical_dns"),
    };
    if let Some(kind) = kind {
        return failing(StackError::UnsupportedCluster {
            cluster: cluster.name.clone(),
            kind,
        });
    }
    let policy = match (&cluster.lb_policy, &balancing.unspecified) {
        (LbPolicy::Unspecified, Some(chosen)) => Ok(chosen.clone()),
        (named, _) => BalancePolicy::from_lb_policy(named),
    };
    let policy = match policy {
        Ok(p) => p,
        Err(source) => {
            return failing(StackError::Balancer {
                cluster: cluster.name.clone(),
                source: Arc::new(source),
            });
        }
    };
    let (tx, rx) = watch::channel(cla.unwrap_or_else(|| empty_assignment(&cluster.name)));
    let connect = connect.clone();
    let for_endpoints = cluster.clone();
    let new_endpoint = move |addr: SocketAddr| connect.connect(&for_endpoints, addr);
    let metrics = telemetry.mesh().cluster(&cluster.name);
    let mut balancer = Balancer::builder(policy);
    if let Some(cap) = balancing.ring_size_cap {
        balancer = balancer.ring_size_cap(cap);
    }
    if let Some(od) = &cluster.outlier_detection {
        let detector = OutlierDetector::with_metrics(od.clone(), metrics.clone());
        detector.spawn_sweeper();
        balancer = balancer.outlier_detector(detector);
    }
    // Read top-down: a call meets the layers in this order.
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::new())
        .map_err(Into::<BoxError>::into)
        .layer(RetryLayer::new().metrics(metrics.clone()))
        .layer(AttemptLayer::new(telemetry.clone()))
        .layer(CircuitBreakerLayer::new(cluster.circuit_breakers).metrics(metrics))
        .service(balancer.build(rx, new_endpoint));
    Built {
        service: ClusterService::new(service),
        endpoints: Some(tx),
    }
}

#[cfg(test)]
mod tests;
