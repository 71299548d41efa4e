//! The router: picks a route for each request from the current [`TargetConfig`] and hands
//! the request to the chosen cluster's service.
//!
//! Per request, [`Router`]:
//! 1. loads the current config `Arc` (one atomic load of the watch channel's version; the
//!    channel's lock is taken only when a new config was published);
//! 2. picks the virtual host: the one the xDS client chose for the target, or for a static
//!    config the best match for the request's authority (URI authority, else `host`);
//! 3. matches the virtual host's routes in order — path prefix / exact / regex (with the
//!    route's case sensitivity), headers (exact, prefix, suffix, contains, regex, range,
//!    present, string matchers, `invert`), query parameters, runtime fraction — and the
//!    first match wins. A gRPC method `/pkg.Service/Method` is a path, so service and method
//!    are matched by prefix (`/pkg.Service/`) and exact path ([`GrpcMethod`] parses it);
//! 4. picks the cluster: the route's one, a weighted choice, or the one named by a header;
//! 5. computes the request hash from the route's hash policies (gRFC A42) and, when one
//!    was produced, inserts it as the balancer's
//!    [`RequestHash`] for ring hash;
//! 6. inserts a [`RoutePolicy`] (route, cluster, timeout, retry and hash policy) into the
//!    request's extensions and calls the cluster's service.
//!
//! A request no route matches fails with [`RouteError::NoRoute`] (404 / UNIMPLEMENTED, as
//! gRPC does); a route whose action is unsupported fails with UNAVAILABLE. Errors are
//! returned boxed ([`BoxError`]); downcast to [`RouteError`].
//!
//! # Reaching clusters
//!
//! Clusters are found through the [`Clusters`] trait: `name -> Option<Service>`. It is
//! implemented for `HashMap<String, S>` and `BTreeMap<String, S>` of cloneable services, for
//! `Arc<T>`, and for closures through [`clusters_fn`]. The service returned is called once:
//! at once when it is ready (a cluster's stack of the engine always is), else driven to
//! readiness with [`tower::util::Oneshot`] and then called. Readiness and backpressure
//! belong to each cluster's stack (balancer, circuit breaker), not to the router, whose
//! `poll_ready` is always ready.
//!
//! # Randomness
//!
//! Weighted clusters and runtime fractions draw from an injectable RNG (`R`, default
//! [`SmallRng`] seeded from the OS). Clones of a router get their own
//! streams, seeded in turn from the router they were cloned from when a clone first draws
//! (a fixed seed makes a router and its clones deterministic when the clones first draw in
//! a fixed order, as one task's do).
//!
//! ```
//! use std::collections::HashMap;
//! use meshwork_core::config::{self, StaticConfig};
//! use meshwork_core::route::Router;
//! use tower::{Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cfg = StaticConfig::new().route_all_to("backend").build().unwrap();
//! let (_tx, rx) = config::channel(cfg);
//! let backend = service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new("hello"))
//! });
//! let clusters = HashMap::from([("backend".to_string(), backend)]);
//! let mut router = Router::new(rx, clusters);
//! let rsp = router.ready().await.unwrap()
//!     .call(http::Request::get("http://svc/x").body(()).unwrap()).await.unwrap();
//! assert_eq!(*rsp.body(), "hello");
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use tower::{BoxError, Service};

use crate::config::{
    ClusterSpecifier, ClusterState, ConfigReceiver, ForwardAction, HashPolicy, MaxStreamDuration,
    PathMatch, RetryPolicy, Route, RouteAction, RouteMatch, TargetConfig, VirtualHost,
};
use crate::extensions::RequestHash;

mod error;
mod future;
mod matching;

pub(crate) use matching::{authority, header_value_matches, joined_header_value, route_matches};

pub use error::RouteError;
pub use future::ResponseFuture;
use matching::{ClusterChoice, Selection};

/// Finds the service of a cluster by name: the seam between the router and the per-cluster
/// stacks (timeout, retry, breaker, balancer).
///
/// `get` is called once per request, on the hot path: it should be a map lookup and a cheap
/// clone (an `Arc` or a channel handle). `None` fails the request with
/// [`RouteError::ClusterNotFound`].
pub trait Clusters<Req> {
    /// The service of one cluster.
    type Service: Service<Req>;

    /// The service of the cluster `name`, if there is one.
    fn get(&self, name: &str) -> Option<Self::Service>;
}

impl<Req, S: Service<Req> + Clone> Clusters<Req> for HashMap<String, S> {
    type Service = S;
    fn get(&self, name: &str) -> Option<S> {
        HashMap::get(self, name).cloned()
    }
}

impl<Req, S: Service<Req> + Clone> Clusters<Req> for BTreeMap<String, S> {
    type Service = S;
    fn get(&self, name: &str) -> Option<S> {
        BTreeMap::get(self, name).cloned()
    }
}

impl<Req, T: Clusters<Req>> Clusters<Req> for Arc<T> {
    type Service = T::Service;
    fn get(&self, name: &str) -> Option<T::Service> {
        (**self).get(name)
    }
}

/// A [`Clusters`] lookup made from a closure; see [`clusters_fn`].
#[derive(Clone)]
pub struct ClustersFn<F>(F);

impl<F> fmt::Debug for ClustersFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClustersFn")
    }
}

/// A [`Clusters`] lookup that calls `f(name)`.
pub fn clusters_fn<F>(f: F) -> ClustersFn<F> {
    ClustersFn(f)
}

impl<Req, S: Service<Req>, F: Fn(&str) -> Option<S>> Clusters<Req> for ClustersFn<F> {
    type Service = S;
    fn get(&self, name: &str) -> Option<S> {
        (self.0)(name)
    }
}

/// A gRPC method, parsed from a request path `/package.Service/Method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcMethod<'a> {
    /// The fully qualified service, e.g. `helloworld.Greeter`.
    pub service: &'a str,
    /// The method, e.g. `SayHello`.
    pub method: &'a str,
}

impl<'a> GrpcMethod<'a> {
    /// Parses a path; `None` unless it is `/service/method` with both parts non-empty.
    pub fn from_path(path: &'a str) -> Option<Self> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        (!service.is_empty() && !method.is_empty() && !method.contains('/'))
            .then_some(GrpcMethod { service, method })
    }
}

/// The route a request took, inserted by the [`Router`] into the request's extensions for
/// the timeout and retry layers below it to read (the retry layer takes it out: the
/// attempts below it do not carry it, so the timeout layer goes above the retry layer).
///
/// It holds the config snapshot the request was routed with, so the policy stays consistent
/// for the whole call even if a new config is published meanwhile. Cloning is an `Arc` bump.
#[derive(Clone)]
pub struct RoutePolicy {
    config: Arc<TargetConfig>,
    virtual_host: usize,
    route: usize,
    cluster: ClusterChoice,
    hash: Option<u64>,
}

impl RoutePolicy {
    /// A policy for one forwarding action, with no router: for using the timeout and retry
    /// layers on their own (insert it into a request's extensions; the timeout layer above
    /// the retry layer, which takes the policy out of the request). Fails like
    /// [`StaticConfig::build`](crate::config::StaticConfig::build) on a bad action, and on a
    /// `cluster_header` action (there is no request to read the header from).
    pub fn from_action(action: ForwardAction) -> Result<Self, crate::config::ConfigError> {
        if let ClusterSpecifier::ClusterHeader(_) = action.clusters {
            return Err(crate::config::ConfigError::invalid(
                "virtual_hosts[0].routes[0].route.cluster_header",
                "a route policy needs a cluster name, not a header",
            ));
        }
        let route = Route {
            name: String::new(),
            matcher: RouteMatch {
                path: PathMatch::Prefix(String::new()),
                case_sensitive: true,
                headers: Vec::new(),
                query_parameters: Vec::new(),
                runtime_fraction: None,
            },
            action: RouteAction::Forward(action),
            filter_overrides: Default::default(),
        };
        let config = crate::config::StaticConfig::new()
            .virtual_host(VirtualHost {
                name: String::new(),
                domains: vec!["*".into()],
                routes: vec![route],
                retry_policy: None,
                filter_overrides: Default::default(),
            })
            .build()?;
        Ok(RoutePolicy {
            config: Arc::new(config),
            virtual_host: 0,
            route: 0,
            cluster: ClusterChoice::Index(0),
            hash: None,
        })
    }

    /// The config snapshot the request was routed with.
    pub fn config(&self) -> &Arc<TargetConfig> {
        &self.config
    }

    /// The virtual host.
    pub fn virtual_host(&self) -> &VirtualHost {
        &self.config.route_config().virtual_hosts[self.virtual_host]
    }

    /// The route.
    pub fn route(&self) -> &Route {
        &self.virtual_host().routes[self.route]
    }

    /// The route's forwarding action.
    pub fn action(&self) -> &ForwardAction {
        match &self.route().action {
            RouteAction::Forward(fa) => fa,
            // The router only builds policies for forwarding routes.
            _ => unreachable!("a RoutePolicy is only built for a forwarding route"),
        }
    }

    /// The cluster the request goes to.
    pub fn cluster(&self) -> &str {
        match (&self.cluster, &self.action().clusters) {
            (ClusterChoice::Header(v), _) => v.to_str().unwrap_or_default(),
            (ClusterChoice::Index(_), ClusterSpecifier::Cluster(name)) => name,
            (ClusterChoice::Index(i), ClusterSpecifier::Weighted(list)) => &list[*i].name,
            (ClusterChoice::Index(_), ClusterSpecifier::ClusterHeader(_)) => "",
        }
    }

    /// The route timeout (`None`: no timeout).
    pub fn timeout(&self) -> Option<Duration> {
        self.action().timeout
    }

    /// The route's gRFC A31 stream duration limits.
    pub fn max_stream_duration(&self) -> Option<&MaxStreamDuration> {
        self.action().max_stream_duration.as_ref()
    }

    /// The retry policy: the route's, else the virtual host's (a route's policy replaces
    /// its virtual host's, as in Envoy). Configs from xDS already carry the virtual host's
    /// policy on each route; hand-written ones may set it on the virtual host only.
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.action()
            .retry_policy
            .as_ref()
            .or(self.virtual_host().retry_policy.as_ref())
    }

    /// The route's hash policies.
    pub fn hash_policies(&self) -> &[HashPolicy] {
        &self.action().hash_policies
    }

    /// The request hash the hash policies produced (gRFC A42), for a ring-hash balancer;
    /// `None` when none produced one (the balancer then picks at random).
    pub fn request_hash(&self) -> Option<u64> {
        self.hash
    }

    /// Sets the request hash (for tests and for callers that hash by other means).
    pub fn set_request_hash(&mut self, hash: Option<u64>) {
        self.hash = hash;
    }
}

impl fmt::Debug for RoutePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutePolicy")
            .field("route", &self.route().name)
            .field("cluster", &self.cluster())
            .field("request_hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Routes requests to clusters; see the [module docs](self).
pub struct Router<C> {
    config: ConfigReceiver,
    current: Arc<TargetConfig>,
    clusters: C,
    /// Seeded from `shared` on the first random choice (a weighted cluster, a runtime
    /// fraction), not when the router is cloned: a channel cloned per call whose routes
    /// choose nothing at random then costs no seeding and no write to the shared seed.
    rng: Option<SmallRng>,
    // Seeds for the RNGs of clones, and the channel id of the channel-id hash policy:
    // shared by a router and its clones.
    shared: Arc<Shared>,
}

struct Shared {
    next_seed: AtomicU64,
    channel_id: u64,
}

/// A router's RNG, seeded when first drawn from.
struct LazyRng<'a> {
    rng: &'a mut Option<SmallRng>,
    shared: &'a Shared,
}

impl LazyRng<'_> {
    fn get(&mut self) -> &mut SmallRng {
        let shared = self.shared;
        self.rng.get_or_insert_with(|| {
            SmallRng::seed_from_u64(shared.next_seed.fetch_add(1, Ordering::Relaxed))
        })
    }
}

impl RngCore for LazyRng<'_> {
    fn next_u32(&mut self) -> u32 {
        self.get().next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.get().next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.get().fill_bytes(dst);
    }
}

impl<C> Router<C> {
    /// A router over the configs published on `config`, reaching clusters through
    /// `clusters`, with its random choices (weighted clusters, fractions) seeded from the OS.
    pub fn new(config: ConfigReceiver, clusters: C) -> Self {
        let mut seed = SmallRng::from_os_rng();
        Self::with_seed(config, clusters, seed.next_u64()).channel_id(seed.next_u64())
    }

    /// A router whose random choices follow from `seed`: the same requests in the same
    /// order choose the same clusters, which makes weighted splits reproducible in tests.
    /// Its clones draw their own seeds from it, each at its first random choice.
    pub fn with_seed(config: ConfigReceiver, clusters: C, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let current = config.borrow().clone();
        let shared = Arc::new(Shared {
            next_seed: AtomicU64::new(rng.next_u64()),
            channel_id: rng.next_u64(),
        });
        Self {
            config,
            current,
            clusters,
            rng: Some(rng),
            shared,
        }
    }
}

impl<C> Router<C> {
    /// Sets the channel id hashed by the channel-id hash policy (default: random per router
    /// and shared by its clones).
    pub fn channel_id(mut self, id: u64) -> Self {
        let next_seed = self.shared.next_seed.load(Ordering::Relaxed);
        self.shared = Arc::new(Shared {
            next_seed: AtomicU64::new(next_seed),
            channel_id: id,
        });
        self
    }

    /// The cluster lookup.
    pub fn get_ref(&self) -> &C {
        &self.clusters
    }

    /// The cluster lookup, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.clusters
    }

    /// The cluster lookup, consuming the router.
    pub fn into_inner(self) -> C {
        self.clusters
    }

    /// The config snapshot the next request will be routed with (after a refresh).
    pub fn current_config(&mut self) -> &Arc<TargetConfig> {
        self.refresh();
        &self.current
    }

    /// Routes `req` without calling anything: the route, cluster and hash this router
    /// would choose for it now (its random choices advance as a call's would: a call routes
    /// through this). For tests, benchmarks and tools.
    ///
    /// # Errors
    /// [`RouteError`] when no virtual host or route matches.
    pub fn route<B>(&mut self, req: &http::Request<B>) -> Result<RoutePolicy, RouteError> {
        self.refresh();
        let mut rng = LazyRng {
            rng: &mut self.rng,
            shared: &self.shared,
        };
        route(&self.current, req, &mut rng, self.shared.channel_id)
    }

    fn refresh(&mut self) {
        // `has_changed` reads the channel's version atomically; the channel's lock is taken
        // only when there is something new. A closed channel keeps the last config.
        if self.config.has_changed().unwrap_or(false) {
            self.current = self.config.borrow_and_update().clone();
        }
    }
}

impl<C: Clone> Clone for Router<C> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            current: self.current.clone(),
            clusters: self.clusters.clone(),
            rng: None,
            shared: self.shared.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Router<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.current.route_config().name)
            .field("clusters", &self.clusters)
            .finish_non_exhaustive()
    }
}

impl<C, B> Service<http::Request<B>> for Router<C>
where
    C: Clusters<http::Request<B>>,
    <C::Service as Service<http::Request<B>>>::Error: Into<BoxError>,
{
    type Response = <C::Service as Service<http::Request<B>>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<C::Service, http::Request<B>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let policy = match self.route(&req) {
            Ok(p) => p,
            Err(e) => return ResponseFuture::failed(e),
        };
        let cluster = policy.cluster();
        if let Some(ClusterState::Error(reason)) = policy.config.cluster(cluster) {
            return ResponseFuture::failed(RouteError::ClusterUnavailable {
                cluster: cluster.to_owned(),
                reason: Box::new(reason.clone()),
            });
        }
        let Some(svc) = self.clusters.get(cluster) else {
            return ResponseFuture::failed(RouteError::ClusterNotFound {
                cluster: cluster.to_owned(),
            });
        };
        if let Some(hash) = policy.request_hash() {
            req.extensions_mut().insert(RequestHash::new(hash));
        }
        req.extensions_mut().insert(policy);
        ResponseFuture::call(svc, req)
    }
}

/// Routes one request against `cfg` without calling anything: the route, cluster and hash
/// the [`Router`] would choose.
pub(crate) fn route<B>(
    cfg: &Arc<TargetConfig>,
    req: &http::Request<B>,
    rng: &mut impl RngCore,
    channel_id: u64,
) -> Result<RoutePolicy, RouteError> {
    let Selection {
        virtual_host,
        route,
        cluster,
    } = matching::select(cfg, req, rng)?;
    let mut policy = RoutePolicy {
        config: cfg.clone(),
        virtual_host,
        route,
        cluster,
        hash: None,
    };
    let policies = policy.hash_policies();
    if !policies.is_empty() {
        policy.hash = matching::request_hash(policies, req.headers(), channel_id);
    }
    Ok(policy)
}

#[cfg(test)]
mod tests;
