//! Following a target's dependency graph (gRFC A74): Listener -> RouteConfiguration ->
//! Clusters (through aggregates) -> Endpoints, and publishing only complete, consistent
//! snapshots.
//!
//! The walk is a pure function of the cache: it goes through the graph from a listener and
//! returns either a complete [`XdsConfig`] or "still waiting", plus the set of resources the
//! walk needed. The client subscribes to exactly that set, and re-resolves a target only
//! when one of the resources in its set changes — so an EDS update for one cluster touches
//! only the targets that route to that cluster.
//!
//! What counts as complete (A74): every resource in the graph has been received or is known
//! not to exist. A missing or invalid *cluster* does not hold back the config: that cluster
//! carries its error (calls routed to it fail) while the rest of the config is used. A
//! missing listener or route configuration, or no virtual host for the authority, is an
//! error for the whole target.
//!
//! The walk runs on the client's task for every change of a resource a target needs, so its
//! cost is bounded by the graph, not by what a control plane makes of it: a walk enters each
//! cluster once, whatever became of it, and its aggregate work has a cap (16 384 edges and
//! leaf names, a long name counting once per 256 bytes; aggregates past it are errors of
//! their own), which bounds the leaf names the config holds to a few MiB.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::protocol::{AdsState, ResourceFailure, ResourceStatus};
use crate::resource::{
    Cluster, ClusterKind, ClusterLoadAssignment, ClusterSpecifier, Listener, Resource,
    ResourceType, RouteAction, RouteConfiguration, RouteSource, VirtualHost, canonical_name,
};

/// How deep aggregate clusters may nest (gRPC's limit).
const MAX_AGGREGATE_DEPTH: usize = 16;

/// How much aggregate work one walk of a target may do: aggregate-to-child edges followed
/// plus leaf names copied into aggregates' priority lists, a name costing one unit plus one
/// per [`NAME_BYTES_PER_UNIT`] of its bytes. Memoised, a walk is linear in the graph's
/// size, but a flattened list can still be as long as the number of distinct leaves for
/// every aggregate (quadratic), and each aggregate owns a copy of its leaves' names: the
/// budget bounds the bytes copied as well as the count. gRPC sets no limit. This one leaves room for
/// thousands of real aggregates per target (gRFC A37's have a few children each) and keeps
/// a hostile graph to tens of milliseconds of the client's task in a debug build.
/// Aggregates met after it is spent are errors of their own, so the rest of the target
/// keeps working.
const MAX_AGGREGATE_WORK: usize = 1 << 14;

/// Leaf-name bytes that cost one more unit of [`MAX_AGGREGATE_WORK`] when copied: a walk
/// copies at most about 4 MiB of names into aggregates' lists (16 384 x 256), and names of
/// ordinary length (xdstp names included) cost one unit as before.
const NAME_BYTES_PER_UNIT: usize = 256;

/// What copying `name` into an aggregate's leaf list costs of [`MAX_AGGREGATE_WORK`].
fn copy_cost(name: &str) -> usize {
    1 + name.len() / NAME_BYTES_PER_UNIT
}
/// A resource key: its type and name.
#[doc(hidden)]
pub type ResourceKey = (ResourceType, String);

/// A complete, consistent configuration for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsConfig {
    /// The target's listener.
    pub listener: Arc<Listener>,
    /// Its route configuration (from RDS, or inline in the listener).
    pub route_config: Arc<RouteConfiguration>,
    virtual_host: usize,
    /// Every cluster reachable from the virtual host's routes, aggregate children included.
    pub clusters: BTreeMap<String, ClusterState>,
}

impl XdsConfig {
    /// The virtual host that matched the target's authority.
    pub fn virtual_host(&self) -> &VirtualHost {
        &self.route_config.virtual_hosts[self.virtual_host]
    }
}

/// One cluster of a snapshot.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClusterState {
    /// The cluster and what it resolves to.
    Ready(ClusterConfig),
    /// The cluster cannot be used; calls routed to it fail with this reason.
    Error(ClusterError),
}

/// Why a cluster of a snapshot cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The control plane says the cluster does not exist.
    #[error("cluster {name} does not exist")]
    DoesNotExist {
        /// The cluster's name.
        name: String,
    },
    /// The cluster was rejected (NACKed) and there is no last good value.
    #[error("cluster {name}: {error}")]
    Invalid {
        /// The cluster's name.
        name: String,
        /// Why it was rejected: our validation error (the NACK's reason) or the control
        /// plane's.
        #[source]
        error: ResourceFailure,
    },
    /// An aggregate cluster nests other aggregates more than `max` deep (gRFC A37).
    #[error("aggregate cluster {name} nests deeper than {max}")]
    TooDeep {
        /// The aggregate cluster's name.
        name: String,
        /// The depth limit.
        max: usize,
    },
    /// The target's aggregate graph needs more than `max` units of work (edges followed
    /// plus leaf-name bytes copied) to walk.
    #[error(
        "aggregate cluster {name}: the target's aggregate graph is larger than {max} edges and leaves"
    )]
    TooLarge {
        /// The aggregate cluster's name.
        name: String,
        /// The work limit.
        max: usize,
    },
    /// An aggregate cluster reaches itself.
    #[error("aggregate cluster {name} is part of a cycle")]
    Cycle {
        /// The aggregate cluster's name.
        name: String,
    },
}

/// Why an EDS cluster has no endpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointsError {
    /// The control plane says the assignment does not exist.
    #[error("endpoints {name} do not exist")]
    DoesNotExist {
        /// The assignment's (EDS service) name.
        name: String,
    },
    /// The assignment was rejected (NACKed) and there is no last good value.
    #[error("endpoints {name}: {error}")]
    Invalid {
        /// The assignment's name.
        name: String,
        /// Why it was rejected: our validation error (the NACK's reason) or the control
        /// plane's.
        #[source]
        error: ResourceFailure,
    },
}

/// A usable cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The cluster resource.
    pub cluster: Arc<Cluster>,
    /// What it resolves to.
    pub children: ClusterChildren,
}

/// What a cluster resolves to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClusterChildren {
    /// An EDS cluster's endpoints; `Err` if the assignment does not exist or is invalid with
    /// no last good value.
    Endpoints(Result<Arc<ClusterLoadAssignment>, EndpointsError>),
    /// An aggregate cluster's leaf clusters in priority order (depth-first, deduplicated).
    Aggregate(Vec<String>),
    /// A LOGICAL_DNS cluster: resolved by the data plane.
    LogicalDns,
}

/// Why a target has no usable config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The listener does not exist.
    #[error("listener {0} does not exist")]
    ListenerDoesNotExist(String),
    /// The listener was rejected and there is no last good value.
    #[error("listener {name} is invalid: {error}")]
    ListenerInvalid {
        /// The listener's name.
        name: String,
        /// Why it was rejected: our validation error (the NACK's reason) or the control
        /// plane's.
        #[source]
        error: ResourceFailure,
    },
    /// The listener is a server-side one (no `api_listener`), which a client cannot use to
    /// reach a target; grpc-go fails the channel the same way.
    #[error("listener {0} is a server listener, not an API listener")]
    NotApiListener(String),
    /// The route configuration does not exist.
    #[error("route configuration {0} does not exist")]
    RouteConfigDoesNotExist(String),
    /// The route configuration was rejected and there is no last good value.
    #[error("route configuration {name} is invalid: {error}")]
    RouteConfigInvalid {
        /// The route configuration's name.
        name: String,
        /// Why it was rejected: our validation error (the NACK's reason) or the control
        /// plane's.
        #[source]
        error: ResourceFailure,
    },
    /// No virtual host matches the authority.
    #[error("no virtual host in route configuration {route_config} matches {authority}")]
    NoVirtualHost {
        /// The route configuration searched.
        route_config: String,
        /// The authority looked up.
        authority: String,
    },
}

/// What a target currently resolves to.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub enum TargetState {
    /// Some resource in the graph has not been received yet.
    #[default]
    Pending,
    /// A complete config.
    Ready(Arc<XdsConfig>),
    /// The target cannot be used.
    Error(TargetError),
}

/// The outcome of a walk, and every resource it looked at.
#[doc(hidden)]
#[derive(Debug)]
pub struct Resolution {
    /// The target's state by this walk.
    pub state: Result<Option<XdsConfig>, TargetError>,
    /// The resources the walk needed (subscribe to these).
    pub needs: BTreeSet<ResourceKey>,
}

enum Lookup<'a> {
    Pending,
    Found(&'a Resource),
    DoesNotExist,
    /// Rejected, with no last good value.
    Invalid(Cow<'a, ResourceFailure>),
}

/// Where a walk reads the resources it needs: one [`AdsState`], or the caches of each
/// group of xDS servers the client talks to (gRFC A47 federation). Names are given in their
/// canonical form.
// Hidden with `resolve`.
#[doc(hidden)]
pub trait Cache {
    /// The value to use: the current one, or the last good one after a rejection.
    fn get(&self, resource_type: ResourceType, name: &str) -> Option<&Resource>;
    /// The resource's status, if the cache knows of it.
    fn status(&self, resource_type: ResourceType, name: &str) -> Option<ResourceStatus>;
    /// Why its latest value was rejected, while NACKED.
    fn failure(&self, resource_type: ResourceType, name: &str) -> Option<Cow<'_, ResourceFailure>>;
}

impl Cache for AdsState {
    fn get(&self, resource_type: ResourceType, name: &str) -> Option<&Resource> {
        AdsState::get(self, resource_type, name)
    }

    fn status(&self, resource_type: ResourceType, name: &str) -> Option<ResourceStatus> {
        AdsState::status(self, resource_type, name)
    }

    fn failure(&self, resource_type: ResourceType, name: &str) -> Option<Cow<'_, ResourceFailure>> {
        AdsState::failure(self, resource_type, name).map(Cow::Borrowed)
    }
}

fn lookup<'a>(cache: &'a dyn Cache, t: ResourceType, name: &str) -> Lookup<'a> {
    let name = &*canonical_name(name);
    match (cache.get(t, name), cache.status(t, name)) {
        (Some(r), _) => Lookup::Found(r),
        (None, Some(ResourceStatus::DoesNotExist)) => Lookup::DoesNotExist,
        (None, Some(ResourceStatus::Nacked)) => match cache.failure(t, name) {
            Some(failure) => Lookup::Invalid(failure),
            // A NACKED resource always has its failure; without one there is nothing to
            // report, and waiting is the safe reading.
            None => Lookup::Pending,
        },
        _ => Lookup::Pending,
    }
}

/// Note that the walk needs `name`, in its canonical form (the cache's key).
fn need(needs: &mut BTreeSet<ResourceKey>, resource_type: ResourceType, name: &str) {
    needs.insert((resource_type, canonical_name(name).into_owned()));
}

/// Walk the graph of `listener` for `authority` through the cache of `ads`.
// Hidden: the client's own step, public only for meshwork-core's tests that route real
// xDS resources through a sans-io `AdsState` (tests/route_xds.rs).
#[doc(hidden)]
pub fn resolve(ads: &dyn Cache, listener: &str, authority: &str) -> Resolution {
    let mut needs = BTreeSet::new();
    let state = walk(ads, listener, authority, &mut needs);
    Resolution { state, needs }
}

fn walk(
    ads: &dyn Cache,
    listener_name: &str,
    authority: &str,
    needs: &mut BTreeSet<ResourceKey>,
) -> Result<Option<XdsConfig>, TargetError> {
    need(needs, ResourceType::Listener, listener_name);
    let listener = match lookup(ads, ResourceType::Listener, listener_name) {
        Lookup::Pending => return Ok(None),
        Lookup::DoesNotExist => {
            return Err(TargetError::ListenerDoesNotExist(listener_name.to_string()));
        }
        Lookup::Invalid(failure) => {
            return Err(TargetError::ListenerInvalid {
                name: listener_name.to_string(),
                error: failure.into_owned(),
            });
        }
        Lookup::Found(Resource::Listener(l)) => l.clone(),
        Lookup::Found(Resource::ServerListener(_)) => {
            return Err(TargetError::NotApiListener(listener_name.to_string()));
        }
        Lookup::Found(_) => return Ok(None),
    };
    let route_config = match &listener.route {
        RouteSource::Inline(rc) => rc.clone(),
        RouteSource::Rds { route_config_name } => {
            need(needs, ResourceType::RouteConfiguration, route_config_name);
            match lookup(ads, ResourceType::RouteConfiguration, route_config_name) {
                Lookup::Pending => return Ok(None),
                Lookup::DoesNotExist => {
                    return Err(TargetError::RouteConfigDoesNotExist(
                        route_config_name.clone(),
                    ));
                }
                Lookup::Invalid(failure) => {
                    return Err(TargetError::RouteConfigInvalid {
                        name: route_config_name.clone(),
                        error: failure.into_owned(),
                    });
                }
                Lookup::Found(Resource::RouteConfiguration(rc)) => rc.clone(),
                Lookup::Found(_) => return Ok(None),
            }
        }
    };
    let Some(virtual_host) = route_config.virtual_host_for(authority).and_then(|vh| {
        route_config
            .virtual_hosts
            .iter()
            .position(|v| std::ptr::eq(v, vh))
    }) else {
        return Err(TargetError::NoVirtualHost {
            route_config: route_config.name.clone(),
            authority: authority.to_string(),
        });
    };

    let mut roots: BTreeSet<&str> = BTreeSet::new();
    for route in &route_config.virtual_hosts[virtual_host].routes {
        if let RouteAction::Forward(action) = &route.action {
            match &action.clusters {
                ClusterSpecifier::Cluster(name) => {
                    roots.insert(name);
                }
                ClusterSpecifier::Weighted(list) => {
                    roots.extend(list.iter().map(|w| w.name.as_str()))
                }
                // Named per request by a header: nothing to subscribe to ahead of time.
                ClusterSpecifier::ClusterHeader(_) => {}
            }
        }
    }

    let mut walker = ClusterWalker {
        ads,
        needs,
        out: BTreeMap::new(),
        marks: HashMap::new(),
        leaves: HashMap::new(),
        work: 0,
    };
    let mut complete = true;
    for root in roots {
        complete &= walker.visit(root, 0) != Walk::Pending;
    }
    if !complete {
        return Ok(None);
    }
    let clusters = walker.into_clusters();
    Ok(Some(XdsConfig {
        listener,
        route_config,
        virtual_host,
        clusters,
    }))
}

/// How a cluster's walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// `out` has the cluster and everything below it.
    Done,
    /// Something below it has not arrived yet.
    Pending,
    /// It reaches an aggregate cluster that is still being walked: every aggregate on the
    /// way back up is an error (gRPC rejects aggregate graphs with cycles).
    Cycle,
}

/// What one walk knows of a cluster it has entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// An aggregate whose children are being walked: reaching it again is a cycle.
    OnStack,
    /// Something below it has not arrived yet.
    Pending,
    /// In `out`.
    Done,
}

/// One walk of a target's clusters. Every cluster is entered at most once per walk,
/// whatever its outcome (`marks`), so a DAG of aggregates costs what its distinct clusters
/// and edges cost, not what its paths cost; and the aggregate part of the walk is capped
/// by [`MAX_AGGREGATE_WORK`].
struct ClusterWalker<'a, 'n> {
    ads: &'a dyn Cache,
    needs: &'n mut BTreeSet<ResourceKey>,
    out: BTreeMap<String, ClusterState>,
    marks: HashMap<&'a str, Mark>,
    /// The leaf lists of the usable aggregates so far, borrowed from the cache (flattening a
    /// parent copies no strings), with what copying each list costs.
    leaves: HashMap<&'a str, (Vec<&'a str>, usize)>,
    /// Aggregate edges followed plus leaf names copied so far (see [`copy_cost`]).
    work: usize,
}

impl<'a> ClusterWalker<'a, '_> {
    fn into_clusters(self) -> BTreeMap<String, ClusterState> {
        self.out
    }

    fn finish(&mut self, name: &'a str, state: ClusterState) -> Walk {
        self.out.insert(name.to_string(), state);
        self.marks.insert(name, Mark::Done);
        Walk::Done
    }

    /// Add `name` and everything below it to `out`. A cluster met again ends as it ended the
    /// first time (the first visit in depth-first order decides, also where the depth limit
    /// falls), so the walk never descends twice into one subgraph.
    fn visit(&mut self, name: &'a str, depth: usize) -> Walk {
        match self.marks.get(name) {
            Some(Mark::OnStack) => return Walk::Cycle,
            Some(Mark::Pending) => return Walk::Pending,
            Some(Mark::Done) => return Walk::Done,
            None => {}
        }
        need(self.needs, ResourceType::Cluster, name);
        let cluster = match lookup(self.ads, ResourceType::Cluster, name) {
            Lookup::Pending => return self.pending(name),
            Lookup::DoesNotExist => {
                let error = ClusterError::DoesNotExist {
                    name: name.to_owned(),
                };
                return self.finish(name, ClusterState::Error(error));
            }
            Lookup::Invalid(failure) => {
                let error = ClusterError::Invalid {
                    name: name.to_owned(),
                    error: failure.into_owned(),
                };
                return self.finish(name, ClusterState::Error(error));
            }
            Lookup::Found(Resource::Cluster(c)) => c,
            Lookup::Found(_) => return self.pending(name),
        };
        let children = match &cluster.kind {
            ClusterKind::Eds { service_name } => {
                let eds_name = service_name.as_deref().unwrap_or(name);
                need(self.needs, ResourceType::ClusterLoadAssignment, eds_name);
                match lookup(self.ads, ResourceType::ClusterLoadAssignment, eds_name) {
                    Lookup::Pending => return self.pending(name),
                    Lookup::DoesNotExist => {
                        ClusterChildren::Endpoints(Err(EndpointsError::DoesNotExist {
                            name: eds_name.to_owned(),
                        }))
                    }
                    Lookup::Invalid(failure) => {
                        ClusterChildren::Endpoints(Err(EndpointsError::Invalid {
                            name: eds_name.to_owned(),
                            error: failure.into_owned(),
                        }))
                    }
                    Lookup::Found(Resource::ClusterLoadAssignment(cla)) => {
                        ClusterChildren::Endpoints(Ok(cla.clone()))
                    }
                    Lookup::Found(_) => return self.pending(name),
                }
            }
            ClusterKind::LogicalDns { .. } => ClusterChildren::LogicalDns,
            ClusterKind::Aggregate { clusters: children } => {
                if depth >= MAX_AGGREGATE_DEPTH {
                    let error = ClusterError::TooDeep {
                        name: name.to_owned(),
                        max: MAX_AGGREGATE_DEPTH,
                    };
                    return self.finish(name, ClusterState::Error(error));
                }
                match self.aggregate(name, children, depth) {
                    Ok(leaves) => ClusterChildren::Aggregate(leaves),
                    Err(walk) => return walk,
                }
            }
        };
        let state = ClusterState::Ready(ClusterConfig {
            cluster: cluster.clone(),
            children,
        });
        self.finish(name, state)
    }

    fn pending(&mut self, name: &'a str) -> Walk {
        self.marks.insert(name, Mark::Pending);
        Walk::Pending
    }

    /// Walk an aggregate's children and flatten their leaves (depth-first, without
    /// repeats); `Err` is how the aggregate's own walk ended when it has no leaf list.
    fn aggregate(
        &mut self,
        name: &'a str,
        children: &'a [String],
        depth: usize,
    ) -> Result<Vec<String>, Walk> {
        self.marks.insert(name, Mark::OnStack);
        let mut walk = Walk::Done;
        let mut leaves: Vec<&'a str> = Vec::new();
        let mut cost = 0;
        let mut seen = HashSet::new();
        let mut too_large = false;
        for child in children {
            self.work += 1;
            if self.work > MAX_AGGREGATE_WORK {
                too_large = true;
                break;
            }
            match self.visit(child, depth + 1) {
                Walk::Cycle => walk = Walk::Cycle,
                Walk::Pending if walk == Walk::Done => walk = Walk::Pending,
                _ => {}
            }
            if walk != Walk::Done {
                // Only a complete aggregate has a leaf list: keep walking for `needs`.
                continue;
            }
            match self.leaves.get(child.as_str()) {
                // A usable aggregate: its leaves in its priority order.
                Some((sub, sub_cost)) => {
                    self.work += *sub_cost;
                    if self.work > MAX_AGGREGATE_WORK {
                        too_large = true;
                        break;
                    }
                    for &leaf in sub {
                        if seen.insert(leaf) {
                            leaves.push(leaf);
                            cost += copy_cost(leaf);
                        }
                    }
                }
                // Anything else that is done (an EDS or DNS cluster, an error) is a leaf; the
                // edge paid its first unit.
                None => {
                    self.work += copy_cost(child) - 1;
                    if self.work > MAX_AGGREGATE_WORK {
                        too_large = true;
                        break;
                    }
                    if seen.insert(child) {
                        leaves.push(child);
                        cost += copy_cost(child);
                    }
                }
            }
        }
        if too_large {
            let error = ClusterError::TooLarge {
                name: name.to_owned(),
                max: MAX_AGGREGATE_WORK,
            };
            self.finish(name, ClusterState::Error(error));
            return Err(Walk::Done);
        }
        match walk {
            Walk::Pending => Err(self.pending(name)),
            Walk::Cycle => {
                let error = ClusterError::Cycle {
                    name: name.to_owned(),
                };
                self.finish(name, ClusterState::Error(error));
                Err(Walk::Cycle)
            }
            Walk::Done => {
                let owned = leaves.iter().map(|leaf| leaf.to_string()).collect();
                self.leaves.insert(name, (leaves, cost));
                Ok(owned)
            }
        }
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use std::time::{Duration, Instant};

    use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::protocol::{ProtocolConfig, StreamId};
    use crate::server::build;

    /// A control plane in a map: (type, name) -> Any.
    #[derive(Default)]
    struct World(BTreeMap<ResourceKey, Any>);

    impl World {
        fn put<M: prost::Message + prost::Name>(&mut self, t: ResourceType, name: &str, m: &M) {
            self.0.insert((t, name.to_string()), build::pack(m));
        }

        /// Subscribe to what `resolve` needs and answer from the map, until nothing changes;
        /// then let the does-not-exist timers fire for what the map lacks.
        fn settle(&self, listener: &str, authority: &str) -> Resolution {
            Feed::new().run(self, listener, authority, true)
        }
    }

    /// A client's cache fed from a [`World`], as a server would.
    struct Feed {
        ads: AdsState,
        stream: StreamId,
        now: Instant,
        version: u64,
        /// What each type's last answered request named: answer a request only when its
        /// names change, as a server does (an ACK is not answered).
        answered: BTreeMap<String, Vec<String>>,
    }

    impl Feed {
        fn new() -> Self {
            let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
            let stream = ads.on_stream_open();
            Self {
                ads,
                stream,
                now: Instant::now(),
                version: 0,
                answered: BTreeMap::new(),
            }
        }

        /// Send what `world` has of `names`.
        fn respond(&mut self, world: &World, t: ResourceType, names: &[String]) {
            self.version += 1;
            let resources = names
                .iter()
                .filter_map(|n| world.0.get(&(t, n.clone())).cloned())
                .collect();
            let response = DiscoveryResponse {
                version_info: self.version.to_string(),
                resources,
                type_url: t.type_url().into(),
                nonce: format!("n{}", self.version),
                ..Default::default()
            };
            self.ads.on_response(self.stream, response, self.now);
            while self.ads.poll_event().is_some() {}
        }

        /// Send what `world` has now of every subscribed resource of type `t`.
        fn push(&mut self, world: &World, t: ResourceType) {
            let names: Vec<String> = self
                .ads
                .resources()
                .filter(|v| v.resource_type == t && v.subscribed)
                .map(|v| v.name.to_string())
                .collect();
            self.respond(world, t, &names);
        }

        /// Resolve, subscribe and answer until nothing changes; with `fire_timers`, then
        /// let the does-not-exist timers fire for what the world lacks.
        fn run(
            &mut self,
            world: &World,
            listener: &str,
            authority: &str,
            fire_timers: bool,
        ) -> Resolution {
            for _round in 0..100 {
                let resolution = resolve(&self.ads, listener, authority);
                let mut asked = false;
                for (t, name) in &resolution.needs {
                    if self.ads.status(*t, name).is_none() {
                        self.ads.subscribe(*t, name);
                        asked = true;
                    }
                }
                while let Some(request) = self.ads.poll_request(self.now) {
                    let t = ResourceType::from_type_url(&request.type_url).unwrap();
                    if self.answered.get(&request.type_url) != Some(&request.resource_names) {
                        self.answered
                            .insert(request.type_url.clone(), request.resource_names.clone());
                        self.respond(world, t, &request.resource_names);
                    }
                }
                if !asked {
                    if fire_timers
                        && resolution.state.as_ref().is_ok_and(|s| s.is_none())
                        && self.ads.poll_timeout().is_some()
                    {
                        self.now += Duration::from_secs(16);
                        self.ads.handle_timeout(self.now);
                        continue;
                    }
                    return resolution;
                }
            }
            panic!("the resolution did not settle in 100 rounds");
        }
    }

    const T: &str = "svc:80";

    /// Listener -> routes -> `root`, plus the given clusters; EDS endpoints for `with_endpoints`.
    fn world(root: &str, clusters: &[PbCluster], with_endpoints: &[&str]) -> World {
        let mut w = World::default();
        w.put(ResourceType::Listener, T, &build::api_listener(T, "rc"));
        w.put(
            ResourceType::RouteConfiguration,
            "rc",
            &build::route_config(
                "rc",
                vec![build::virtual_host(
                    "vh",
                    [T],
                    vec![build::route_to("", root)],
                )],
            ),
        );
        for c in clusters {
            w.put(ResourceType::Cluster, &c.name, c);
        }
        for e in with_endpoints {
            w.put(
                ResourceType::ClusterLoadAssignment,
                e,
                &build::endpoints(e, &["127.0.0.1:1".parse().unwrap()]),
            );
        }
        w
    }

    fn config(r: &Resolution) -> &XdsConfig {
        r.state.as_ref().unwrap().as_ref().expect("complete")
    }

    #[test]
    fn aggregate_clusters_resolve_to_their_leaves_depth_first() {
        let w = world(
            "agg",
            &[
                build::aggregate_cluster("agg", &["a", "inner", "b"]),
                build::aggregate_cluster("inner", &["c", "a"]),
                build::eds_cluster("a"),
                build::eds_cluster("b"),
                build::eds_cluster("c"),
            ],
            &["a", "b", "c"],
        );
        let r = w.settle(T, T);
        let c = config(&r);
        match &c.clusters["agg"] {
            ClusterState::Ready(ClusterConfig {
                children: ClusterChildren::Aggregate(leaves),
                ..
            }) => {
                assert_eq!(leaves, &["a", "c", "b"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.clusters.len(), 5);
        assert_eq!(
            r.needs.len(),
            2 + 5 + 3,
            "L, R, five clusters, three EDS: {:?}",
            r.needs
        );
    }

    #[test]
    fn aggregate_cycles_are_errors_not_hangs() {
        let w = world(
            "x",
            &[
                build::aggregate_cluster("x", &["y"]),
                build::aggregate_cluster("y", &["x", "a"]),
                build::eds_cluster("a"),
            ],
            &["a"],
        );
        let r = w.settle(T, T);
        let c = config(&r);
        for name in ["x", "y"] {
            match &c.clusters[name] {
                ClusterState::Error(e) => assert!(matches!(e, ClusterError::Cycle { .. }), "{e}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(c.clusters["a"], ClusterState::Ready(_)));
    }

    #[test]
    fn aggregate_depth_is_limited() {
        let names: Vec<String> = (0..=MAX_AGGREGATE_DEPTH + 1)
            .map(|i| format!("n{i}"))
            .collect();
        let mut clusters: Vec<PbCluster> = names
            .windows(2)
            .map(|w| build::aggregate_cluster(&w[0], &[w[1].as_str()]))
            .collect();
        clusters.push(build::eds_cluster(names.last().unwrap()));
        let w = world("n0", &clusters, &[names.last().unwrap()]);
        let r = w.settle(T, T);
        let deepest = format!("n{MAX_AGGREGATE_DEPTH}");
        match &config(&r).clusters[&deepest] {
            ClusterState::Error(e) => assert!(e.to_string().contains("deeper"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    /// A root aggregate over `depth` layers of `width` aggregates, each over every cluster
    /// of the next layer, the last layer over `width` EDS leaves: `width * depth + 1`
    /// aggregates and `width ^ (depth + 1)` root-to-leaf paths.
    fn layered_dag(width: usize, depth: usize) -> (Vec<PbCluster>, Vec<String>) {
        let layer = |d: usize| -> Vec<String> {
            (0..width)
                .map(|i| {
                    if d == depth {
                        format!("leaf{i}")
                    } else {
                        format!("agg{d}-{i}")
                    }
                })
                .collect()
        };
        let first = layer(0);
        let mut clusters = vec![build::aggregate_cluster(
            "root",
            &first.iter().map(String::as_str).collect::<Vec<_>>(),
        )];
        for d in 0..depth {
            let next = layer(d + 1);
            let next: Vec<&str> = next.iter().map(String::as_str).collect();
            clusters.extend(
                layer(d)
                    .iter()
                    .map(|name| build::aggregate_cluster(name, &next)),
            );
        }
        (clusters, layer(depth))
    }

    /// Run `f` on its own thread and fail if it takes longer than `limit` (the thread is left
    /// behind: a walk cannot be interrupted).
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(limit) {
            Ok(value) => value,
            Err(e) => panic!("not done within {limit:?}: {e}"),
        }
    }

    #[test]
    fn aggregate_dag_with_missing_leaves_is_walked_once_per_cluster() {
        // 3^15 (14 million) paths from the root to each missing leaf: a walk that descends
        // once per path does not finish.
        let (width, depth) = (3, 14);
        let (aggregates, leaves) = layered_dag(width, depth);
        let timings = within(Duration::from_secs(20), move || {
            let mut w = world("root", &aggregates, &[]);
            let mut feed = Feed::new();
            let started = Instant::now();
            let r = feed.run(&w, T, T, false);
            let pending = started.elapsed();
            assert!(matches!(r.state, Ok(None)), "leaves missing: {:?}", r.state);
            for leaf in &leaves {
                assert!(r.needs.contains(&(ResourceType::Cluster, leaf.to_string())));
            }
            assert_eq!(r.needs.len(), 2 + 1 + width * depth + width);

            for leaf in &leaves {
                w.put(ResourceType::Cluster, leaf, &build::eds_cluster(leaf));
                w.put(
                    ResourceType::ClusterLoadAssignment,
                    leaf,
                    &build::endpoints(leaf, &["127.0.0.1:1".parse().unwrap()]),
                );
            }
            feed.push(&w, ResourceType::Cluster);
            let started = Instant::now();
            let r = feed.run(&w, T, T, false);
            let ready = started.elapsed();
            let c = config(&r);
            assert_eq!(c.clusters.len(), 1 + width * depth + width);
            match &c.clusters["root"] {
                ClusterState::Ready(ClusterConfig {
                    children: ClusterChildren::Aggregate(l),
                    ..
                }) => assert_eq!(l, &leaves),
                other => panic!("{other:?}"),
            }
            let started = Instant::now();
            let _ = resolve(&feed.ads, T, T);
            (pending, ready, started.elapsed())
        });
        println!(
            "width {width}, depth {depth}: settled pending in {:?}, ready in {:?}; one walk {:?}",
            timings.0, timings.1, timings.2
        );
    }

    #[test]
    fn aggregate_work_is_bounded_and_what_exceeds_it_is_an_error_of_its_own() {
        // 300 aggregates over the same 300 leaves: 90 000 edges and as many leaf copies.
        let n = 300;
        let leaves: Vec<String> = (0..n).map(|i| format!("leaf{i}")).collect();
        let leaf_refs: Vec<&str> = leaves.iter().map(String::as_str).collect();
        let aggs: Vec<String> = (0..n).map(|i| format!("agg{i}")).collect();
        let agg_refs: Vec<&str> = aggs.iter().map(String::as_str).collect();
        let mut clusters = vec![build::aggregate_cluster("root", &agg_refs)];
        clusters.extend(aggs.iter().map(|a| build::aggregate_cluster(a, &leaf_refs)));
        clusters.extend(leaves.iter().map(|l| build::eds_cluster(l)));
        let w = world("root", &clusters, &leaf_refs);
        let (r, one_walk) = within(Duration::from_secs(20), move || {
            let mut feed = Feed::new();
            let r = feed.run(&w, T, T, true);
            let started = Instant::now();
            let _ = resolve(&feed.ads, T, T);
            (r, started.elapsed())
        });
        println!("a walk that spends the whole aggregate budget: {one_walk:?}");
        let c = config(&r);
        match &c.clusters["agg0"] {
            ClusterState::Ready(ClusterConfig {
                children: ClusterChildren::Aggregate(l),
                ..
            }) => assert_eq!(l, &leaves),
            other => panic!("{other:?}"),
        }
        let too_large = |name: &str| matches!(&c.clusters.get(name), Some(ClusterState::Error(e)) if e.to_string().contains("larger than"));
        assert!(too_large("root"), "the root ran out too");
        assert_eq!(
            aggs.iter().filter(|a| too_large(a)).count(),
            1,
            "the aggregate that ran out"
        );
        assert!(!c.clusters.contains_key("agg299"));
        assert!(
            !r.needs
                .contains(&(ResourceType::Cluster, "agg299".to_string())),
            "what the budget did not reach is not subscribed"
        );
    }

    /// Each aggregate owns a copy of its leaves' names, so the budget counts their bytes: a
    /// 1 MiB leaf name under one aggregate under 200 others (a few MiB on the wire, and
    /// well within the count budget) must not become 200 MiB of copies in one config.
    #[test]
    fn aggregate_work_counts_the_bytes_of_leaf_names() {
        let long = "l".repeat(1 << 20);
        let outer: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
        let outer_refs: Vec<&str> = outer.iter().map(String::as_str).collect();
        let mut clusters = vec![
            build::aggregate_cluster("root", &outer_refs),
            build::aggregate_cluster("b", &[long.as_str()]),
            build::eds_cluster(&long),
        ];
        clusters.extend(outer.iter().map(|c| build::aggregate_cluster(c, &["b"])));
        let w = world("root", &clusters, &[long.as_str()]);
        let r = w.settle(T, T);
        let c = config(&r);
        let held: usize = c
            .clusters
            .values()
            .map(|state| match state {
                ClusterState::Ready(ClusterConfig {
                    children: ClusterChildren::Aggregate(leaves),
                    ..
                }) => leaves.iter().map(String::len).sum(),
                _ => 0,
            })
            .sum();
        assert!(
            held < 64 << 20,
            "{} MiB of leaf names held by the config",
            held >> 20
        );
        let too_large = |name: &str| matches!(&c.clusters.get(name), Some(ClusterState::Error(e)) if e.to_string().contains("larger than"));
        assert!(too_large("root"), "the root ran out");
        assert!(
            matches!(&c.clusters["b"], ClusterState::Ready(_)),
            "what fits is served"
        );
    }

    #[test]
    fn missing_endpoints_are_an_error_of_their_cluster() {
        let w = world("a", &[build::eds_cluster("a")], &[]);
        let r = w.settle(T, T);
        match &config(&r).clusters["a"] {
            ClusterState::Ready(ClusterConfig {
                children: ClusterChildren::Endpoints(Err(e)),
                ..
            }) => {
                assert!(matches!(e, EndpointsError::DoesNotExist { .. }), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A rejected resource with no last good value carries the typed failure it was NACKed
    /// for, as its error's source, with the text the NACK sent.
    #[test]
    fn rejected_resources_carry_their_typed_failure() {
        let reason = |e: &dyn std::error::Error| {
            let failure = e.source().expect("the failure is the source");
            let failure = failure.downcast_ref::<ResourceFailure>().expect("typed");
            assert!(
                matches!(failure, ResourceFailure::Validation(_)),
                "{failure:?}"
            );
            assert!(e.to_string().ends_with(&failure.to_string()), "{e}");
            failure.to_string()
        };

        let mut no_eds_config = build::eds_cluster("bad");
        no_eds_config.eds_cluster_config = None;
        let mut w = world(
            "agg",
            &[
                build::aggregate_cluster("agg", &["bad", "good"]),
                no_eds_config,
                build::eds_cluster("good"),
            ],
            &[],
        );
        let mut no_address = build::endpoints("good", &["127.0.0.1:1".parse().unwrap()]);
        no_address.endpoints[0].lb_endpoints[0].host_identifier = None;
        w.put(ResourceType::ClusterLoadAssignment, "good", &no_address);
        let r = w.settle(T, T);
        match &config(&r).clusters["bad"] {
            ClusterState::Error(e @ ClusterError::Invalid { name, .. }) => {
                assert_eq!(name, "bad");
                assert!(reason(e).contains("eds_cluster_config"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        match &config(&r).clusters["good"] {
            ClusterState::Ready(ClusterConfig {
                children: ClusterChildren::Endpoints(Err(e @ EndpointsError::Invalid { name, .. })),
                ..
            }) => {
                assert_eq!(name, "good");
                reason(e);
            }
            other => panic!("{other:?}"),
        }

        let mut w = World::default();
        w.put(
            ResourceType::Listener,
            T,
            &envoy_types::pb::envoy::config::listener::v3::Listener {
                name: T.into(),
                ..Default::default()
            },
        );
        let e = w.settle(T, T).state.unwrap_err();
        assert!(matches!(e, TargetError::ListenerInvalid { .. }), "{e}");
        // Without an api_listener it is validated as a server listener, which needs one.
        assert!(reason(&e).contains("address"), "{e}");

        let mut w = World::default();
        w.put(ResourceType::Listener, T, &build::api_listener(T, "rc"));
        let mut no_match = build::route_to("", "a");
        no_match.r#match = None;
        w.put(
            ResourceType::RouteConfiguration,
            "rc",
            &build::route_config("rc", vec![build::virtual_host("vh", [T], vec![no_match])]),
        );
        let e = w.settle(T, T).state.unwrap_err();
        assert!(matches!(e, TargetError::RouteConfigInvalid { .. }), "{e}");
        assert!(reason(&e).contains("match"), "{e}");
    }

    /// A target's listener name naming a server listener is an error of the target, not a
    /// wait for an API listener that will never come.
    #[test]
    fn a_server_listener_is_not_a_target() {
        use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
        let mut l = build::api_listener(T, "rc");
        let hcm = l.api_listener.take().and_then(|a| a.api_listener);
        l.address = Some(build::socket_address("127.0.0.1:7070".parse().unwrap()));
        l.default_filter_chain = Some(listener_pb::FilterChain {
            filters: vec![listener_pb::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: hcm.map(listener_pb::filter::ConfigType::TypedConfig),
            }],
            ..Default::default()
        });
        let mut w = World::default();
        w.put(ResourceType::Listener, T, &l);
        let r = w.settle(T, T);
        assert_eq!(r.state, Err(TargetError::NotApiListener(T.into())));
        assert!(
            !r.needs
                .iter()
                .any(|(t, _)| *t == ResourceType::RouteConfiguration),
            "a server listener's RDS names are not the target's: {:?}",
            r.needs
        );
    }

    #[test]
    fn eds_service_name_and_inline_routes() {
        let mut w = World::default();
        let rc = build::route_config(
            "inline",
            vec![build::virtual_host(
                "vh",
                ["*"],
                vec![build::route_to("", "a")],
            )],
        );
        w.put(
            ResourceType::Listener,
            T,
            &build::api_listener_inline(T, rc),
        );
        let mut a = build::eds_cluster("a");
        a.eds_cluster_config.as_mut().unwrap().service_name = "a-endpoints".into();
        w.put(ResourceType::Cluster, "a", &a);
        w.put(
            ResourceType::ClusterLoadAssignment,
            "a-endpoints",
            &build::endpoints("a-endpoints", &["127.0.0.1:1".parse().unwrap()]),
        );
        let r = w.settle(T, "anything");
        assert!(
            !r.needs
                .iter()
                .any(|(t, _)| *t == ResourceType::RouteConfiguration),
            "inline: no RDS"
        );
        assert!(
            r.needs
                .contains(&(ResourceType::ClusterLoadAssignment, "a-endpoints".into()))
        );
        assert!(matches!(
            &config(&r).clusters["a"],
            ClusterState::Ready(ClusterConfig {
                children: ClusterChildren::Endpoints(Ok(_)),
                ..
            })
        ));
    }

    #[test]
    fn missing_listener_and_route_config_fail_the_target() {
        let r = World::default().settle(T, T);
        assert_eq!(
            r.state.unwrap_err(),
            TargetError::ListenerDoesNotExist(T.into())
        );
        let mut w = World::default();
        w.put(ResourceType::Listener, T, &build::api_listener(T, "rc"));
        let r = w.settle(T, T);
        assert_eq!(
            r.state.unwrap_err(),
            TargetError::RouteConfigDoesNotExist("rc".into())
        );
    }

    #[test]
    fn pending_until_every_resource_is_known() {
        let w = world("a", &[build::eds_cluster("a")], &["a"]);
        let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
        ads.on_stream_open();
        let r = resolve(&ads, T, T);
        assert!(matches!(r.state, Ok(None)));
        assert_eq!(r.needs.len(), 1, "only the listener is known to be needed");
        let _ = w;
    }
}
