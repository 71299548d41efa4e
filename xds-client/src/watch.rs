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
        complete &= walk_cluster(ads, root, 0, &mut stack, &mut clusters, needs) != Walk::Pending;
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

/// Add `name` and everything below it to `out`.
fn walk_cluster(
    ads: &AdsState,
    name: &str,
    depth: usize,
    stack: &mut Vec<String>,
    out: &mut BTreeMap<String, ClusterState>,
    needs: &mut BTreeSet<ResourceKey>,
) -> Walk {
    if stack.iter().any(|s| s == name) {
        return Walk::Cycle;
    }
    if out.contains_key(name) {
        return Walk::Done;
    }
    needs.insert((ResourceType::Cluster, name.to_string()));
    let cluster = match lookup(ads, ResourceType::Cluster, name) {
        Lookup::Pending => return Walk::Pending,
        Lookup::DoesNotExist => {
            let error = format!("cluster {name} does not exist");
            out.insert(name.to_string(), ClusterState::Error(error));
            return Walk::Done;
        }
        Lookup::Invalid(error) => {
            out.insert(
                name.to_string(),
                ClusterState::Error(format!("cluster {name}: {error}")),
            );
            return Walk::Done;
        }
        Lookup::Found(Resource::Cluster(c)) => c.clone(),
        Lookup::Found(_) => return Walk::Pending,
    };
    let children = match &cluster.kind {
        ClusterKind::Eds { service_name } => {
            let eds_name = service_name.as_deref().unwrap_or(name);
            needs.insert((ResourceType::ClusterLoadAssignment, eds_name.to_string()));
            match lookup(ads, ResourceType::ClusterLoadAssignment, eds_name) {
                Lookup::Pending => return Walk::Pending,
                Lookup::DoesNotExist => {
                    ClusterChildren::Endpoints(Err(format!("endpoints {eds_name} do not exist")))
                }
                Lookup::Invalid(error) => {
                    ClusterChildren::Endpoints(Err(format!("endpoints {eds_name}: {error}")))
                }
                Lookup::Found(Resource::ClusterLoadAssignment(cla)) => {
                    ClusterChildren::Endpoints(Ok(cla.clone()))
                }
                Lookup::Found(_) => return Walk::Pending,
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
                return Walk::Done;
            }
            stack.push(name.to_string());
            let mut walk = Walk::Done;
            let mut leaves = Vec::new();
            for child in children {
                match walk_cluster(ads, child, depth + 1, stack, out, needs) {
                    Walk::Cycle => walk = Walk::Cycle,
                    Walk::Pending if walk == Walk::Done => walk = Walk::Pending,
                    _ => {}
                }
                collect_leaves(child, out, &mut leaves);
            }
            stack.pop();
            match walk {
                Walk::Pending => return Walk::Pending,
                Walk::Cycle => {
                    let error = format!("aggregate cluster {name} is part of a cycle");
                    out.insert(name.to_string(), ClusterState::Error(error));
                    return Walk::Cycle;
                }
                Walk::Done => ClusterChildren::Aggregate(leaves),
            }
        }
    };
    out.insert(
        name.to_string(),
        ClusterState::Ready(ClusterConfig { cluster, children }),
    );
    Walk::Done
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

#[cfg(all(test, feature = "server"))]
mod tests {
    use std::time::{Duration, Instant};

    use envoy_types::pb::envoy::config::cluster::v3::{Cluster as PbCluster, cluster};
    use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateConfig;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::protocol::ProtocolConfig;
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
            let mut ads = AdsState::new(ProtocolConfig::new(Default::default()));
            let stream = ads.on_stream_open();
            let mut now = Instant::now();
            let mut version = 0;
            // What each type's last answered request named: answer a request only when its
            // names change, as a server does (an ACK is not answered).
            let mut answered: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for _round in 0..100 {
                let resolution = resolve(&ads, listener, authority);
                let mut asked = false;
                for (t, name) in &resolution.needs {
                    if ads.status(*t, name).is_none() {
                        ads.subscribe(*t, name);
                        asked = true;
                    }
                }
                while let Some(request) = ads.poll_request(now) {
                    version += 1;
                    let t = ResourceType::from_type_url(&request.type_url).unwrap();
                    let resources = request
                        .resource_names
                        .iter()
                        .filter_map(|n| self.0.get(&(t, n.clone())).cloned())
                        .collect();
                    if answered.get(&request.type_url) != Some(&request.resource_names) {
                        answered.insert(request.type_url.clone(), request.resource_names.clone());
                        ads.on_response(
                            stream,
                            DiscoveryResponse {
                                version_info: version.to_string(),
                                resources,
                                type_url: request.type_url.clone(),
                                nonce: format!("n{version}"),
                                ..Default::default()
                            },
                            now,
                        );
                    }
                }
                while ads.poll_event().is_some() {}
                if !asked {
                    if resolution.state.as_ref().is_ok_and(|s| s.is_none())
                        && ads.poll_timeout().is_some()
                    {
                        now += Duration::from_secs(16);
                        ads.handle_timeout(now);
                        continue;
                    }
                    return resolution;
                }
            }
            panic!("the resolution did not settle in 100 rounds");
        }
    }

    fn aggregate(name: &str, children: &[&str]) -> PbCluster {
        PbCluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(
                cluster::CustomClusterType {
                    name: "envoy.clusters.aggregate".into(),
                    typed_config: Some(build::pack(&AggregateConfig {
                        clusters: children.iter().map(|c| c.to_string()).collect(),
                    })),
                },
            )),
            ..Default::default()
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
                aggregate("agg", &["a", "inner", "b"]),
                aggregate("inner", &["c", "a"]),
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
                aggregate("x", &["y"]),
                aggregate("y", &["x", "a"]),
                build::eds_cluster("a"),
            ],
            &["a"],
        );
        let r = w.settle(T, T);
        let c = config(&r);
        for name in ["x", "y"] {
            match &c.clusters[name] {
                ClusterState::Error(e) => assert!(e.contains("cycle"), "{e}"),
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
            .map(|w| aggregate(&w[0], &[w[1].as_str()]))
            .collect();
        clusters.push(build::eds_cluster(names.last().unwrap()));
        let w = world("n0", &clusters, &[names.last().unwrap()]);
        let r = w.settle(T, T);
        let deepest = format!("n{MAX_AGGREGATE_DEPTH}");
        match &config(&r).clusters[&deepest] {
            ClusterState::Error(e) => assert!(e.contains("deeper"), "{e}"),
            other => panic!("{other:?}"),
        }
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
                assert!(e.contains("do not exist"), "{e}");
            }
            other => panic!("{other:?}"),
        }
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
