//! Following a target's dependency graph (gRFC A74): Listener -> RouteConfiguration ->
//! Clusters (through aggregates) -> Endpoints, and publishing only complete, consistent
//! snapshots.
//!
//! [`resolve`] is a pure function of the cache: it walks the graph from a listener and
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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::protocol::{AdsState, ResourceStatus};
use crate::resource::{
    Cluster, ClusterKind, ClusterLoadAssignment, ClusterSpecifier, Listener, Resource,
    ResourceType, RouteAction, RouteConfiguration, RouteSource, VirtualHost,
};

/// How deep aggregate clusters may nest (gRPC's limit).
const MAX_AGGREGATE_DEPTH: usize = 16;

/// A resource key: its type and name.
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
    Error(String),
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
    Endpoints(Result<Arc<ClusterLoadAssignment>, String>),
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
        /// Why.
        error: String,
    },
    /// The route configuration does not exist.
    #[error("route configuration {0} does not exist")]
    RouteConfigDoesNotExist(String),
    /// The route configuration was rejected and there is no last good value.
    #[error("route configuration {name} is invalid: {error}")]
    RouteConfigInvalid {
        /// The route configuration's name.
        name: String,
        /// Why.
        error: String,
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
    Invalid(String),
}

fn lookup<'a>(ads: &'a AdsState, t: ResourceType, name: &str) -> Lookup<'a> {
    match (ads.get(t, name), ads.status(t, name)) {
        (Some(r), _) => Lookup::Found(r),
        (None, Some(ResourceStatus::DoesNotExist)) => Lookup::DoesNotExist,
        (None, Some(ResourceStatus::Nacked)) => {
            let error = ads
                .resources()
                .find(|v| v.resource_type == t && v.name == name)
                .and_then(|v| v.error.map(|e| e.to_string()))
                .unwrap_or_else(|| "invalid".into());
            Lookup::Invalid(error)
        }
        _ => Lookup::Pending,
    }
}

/// Walk the graph of `listener` for `authority` through the cache of `ads`.
pub fn resolve(ads: &AdsState, listener: &str, authority: &str) -> Resolution {
    let mut needs = BTreeSet::new();
    let state = walk(ads, listener, authority, &mut needs);
    Resolution { state, needs }
}

fn walk(
    ads: &AdsState,
    listener_name: &str,
    authority: &str,
    needs: &mut BTreeSet<ResourceKey>,
) -> Result<Option<XdsConfig>, TargetError> {
    needs.insert((ResourceType::Listener, listener_name.to_string()));
    let listener = match lookup(ads, ResourceType::Listener, listener_name) {
        Lookup::Pending => return Ok(None),
        Lookup::DoesNotExist => {
            return Err(TargetError::ListenerDoesNotExist(listener_name.to_string()));
        }
        Lookup::Invalid(error) => {
            return Err(TargetError::ListenerInvalid {
                name: listener_name.to_string(),
                error,
            });
        }
        Lookup::Found(Resource::Listener(l)) => l.clone(),
        Lookup::Found(_) => return Ok(None),
    };
    let route_config = match &listener.route {
        RouteSource::Inline(rc) => rc.clone(),
        RouteSource::Rds { route_config_name } => {
            needs.insert((ResourceType::RouteConfiguration, route_config_name.clone()));
            match lookup(ads, ResourceType::RouteConfiguration, route_config_name) {
                Lookup::Pending => return Ok(None),
                Lookup::DoesNotExist => {
                    return Err(TargetError::RouteConfigDoesNotExist(
                        route_config_name.clone(),
                    ));
                }
                Lookup::Invalid(error) => {
                    let name = route_config_name.clone();
                    return Err(TargetError::RouteConfigInvalid { name, error });
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

    let mut clusters = BTreeMap::new();
    let mut complete = true;
    for root in roots {
        let mut stack = Vec::new();
        complete &= walk_cluster(ads, root, 0, &mut stack, &mut clusters, needs);
    }
    if !complete {
        return Ok(None);
    }
    Ok(Some(XdsConfig {
        listener,
        route_config,
        virtual_host,
        clusters,
    }))
}

/// Add `name` and everything below it to `out`. False if something is still pending.
fn walk_cluster(
    ads: &AdsState,
    name: &str,
    depth: usize,
    stack: &mut Vec<String>,
    out: &mut BTreeMap<String, ClusterState>,
    needs: &mut BTreeSet<ResourceKey>,
) -> bool {
    if out.contains_key(name) {
        return true;
    }
    needs.insert((ResourceType::Cluster, name.to_string()));
    let cluster = match lookup(ads, ResourceType::Cluster, name) {
        Lookup::Pending => return false,
        Lookup::DoesNotExist => {
            let error = format!("cluster {name} does not exist");
            out.insert(name.to_string(), ClusterState::Error(error));
            return true;
        }
        Lookup::Invalid(error) => {
            out.insert(
                name.to_string(),
                ClusterState::Error(format!("cluster {name}: {error}")),
            );
            return true;
        }
        Lookup::Found(Resource::Cluster(c)) => c.clone(),
        Lookup::Found(_) => return false,
    };
    let children = match &cluster.kind {
        ClusterKind::Eds { service_name } => {
            let eds_name = service_name.as_deref().unwrap_or(name);
            needs.insert((ResourceType::ClusterLoadAssignment, eds_name.to_string()));
            match lookup(ads, ResourceType::ClusterLoadAssignment, eds_name) {
                Lookup::Pending => return false,
                Lookup::DoesNotExist => {
                    ClusterChildren::Endpoints(Err(format!("endpoints {eds_name} do not exist")))
                }
                Lookup::Invalid(error) => {
                    ClusterChildren::Endpoints(Err(format!("endpoints {eds_name}: {error}")))
                }
                Lookup::Found(Resource::ClusterLoadAssignment(cla)) => {
                    ClusterChildren::Endpoints(Ok(cla.clone()))
                }
                Lookup::Found(_) => return false,
            }
        }
        ClusterKind::LogicalDns { .. } => ClusterChildren::LogicalDns,
        ClusterKind::Aggregate { clusters: children } => {
            if depth >= MAX_AGGREGATE_DEPTH {
                out.insert(
                    name.to_string(),
                    ClusterState::Error(format!(
                        "aggregate cluster {name} nests deeper than {MAX_AGGREGATE_DEPTH}"
                    )),
                );
                return true;
            }
            if stack.iter().any(|s| s == name) {
                out.insert(
                    name.to_string(),
                    ClusterState::Error(format!("aggregate cluster {name} is part of a cycle")),
                );
                return true;
            }
            stack.push(name.to_string());
            let mut complete = true;
            let mut leaves = Vec::new();
            for child in children {
                complete &= walk_cluster(ads, child, depth + 1, stack, out, needs);
                collect_leaves(child, out, &mut leaves);
            }
            stack.pop();
            if !complete {
                return false;
            }
            ClusterChildren::Aggregate(leaves)
        }
    };
    out.insert(
        name.to_string(),
        ClusterState::Ready(ClusterConfig { cluster, children }),
    );
    true
}

/// Append the leaf (non-aggregate) clusters under `name`, depth-first, without repeats.
fn collect_leaves(name: &str, out: &BTreeMap<String, ClusterState>, leaves: &mut Vec<String>) {
    match out.get(name) {
        Some(ClusterState::Ready(ClusterConfig {
            children: ClusterChildren::Aggregate(sub),
            ..
        })) => {
            for leaf in sub {
                if !leaves.contains(leaf) {
                    leaves.push(leaf.clone());
                }
            }
        }
        Some(_) if !leaves.iter().any(|l| l == name) => leaves.push(name.to_string()),
        _ => {}
    }
}
