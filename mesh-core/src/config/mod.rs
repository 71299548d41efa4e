//! The policy model: what the router, retry and timeout layers act on, and how a service
//! gets it — from an xDS control plane or written by hand.
//!
//! # The model is `meshwork_xds::resource`
//!
//! The validated xDS types ([`RouteConfiguration`], [`VirtualHost`], [`Route`],
//! [`RetryPolicy`], [`Cluster`], [`ClusterLoadAssignment`], …) are plain Rust with public
//! fields and no protobuf inside, so they *are* the policy model; this module re-exports the
//! ones the layers need. What it adds:
//!
//! - [`TargetConfig`]: a core-owned snapshot of one target (its route configuration, the
//!   virtual host chosen for it, if any, and its clusters), built from an xDS
//!   [`XdsConfig`] with [`TargetConfig::from_xds`] or by hand
//!   with [`StaticConfig`] — a service can use meshwork with no control plane at all.
//! - Publication as a [`ConfigReceiver`] (a `tokio::sync::watch::Receiver<Arc<TargetConfig>>`,
//!   see [`channel`]). Layers keep the last `Arc` they loaded and only look at the channel's
//!   version counter (one atomic load) per request, so the hot path takes no lock.
//!
//! ```
//! use meshwork_core::config::{self, StaticConfig};
//!
//! // Everything to the cluster "backend", on any authority.
//! let cfg = StaticConfig::new().route_all_to("backend").build().unwrap();
//! let (tx, rx) = config::channel(cfg);
//! assert!(rx.borrow().cluster_names().next().is_none());
//! # drop(tx);
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshwork_xds::watch::XdsConfig;

mod error;

pub use error::ConfigError;
pub use meshwork_xds::resource::{
    Cluster, ClusterLoadAssignment, ClusterSpecifier, ForwardAction, HashPolicy, HashPolicyKind,
    HeaderMatchKind, HeaderMatcher, MaxStreamDuration, PathMatch, QueryParameterMatcher, RetryOn,
    RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, SafeRegex, StringMatchKind,
    StringMatcher, UnsupportedAction, VirtualHost, WeightedCluster,
};
pub use meshwork_xds::watch::{
    ClusterChildren, ClusterConfig, ClusterError, ClusterState, EndpointsError,
};

pub use crate::status::GrpcCode;

/// A published target configuration: the hot path loads only the `Arc`.
pub type ConfigReceiver = tokio::sync::watch::Receiver<Arc<TargetConfig>>;

/// The sending half of a [`ConfigReceiver`]; `send(Arc::new(cfg))` publishes a new snapshot.
pub type ConfigSender = tokio::sync::watch::Sender<Arc<TargetConfig>>;

/// Publishes `initial` on a new watch channel.
pub fn channel(initial: TargetConfig) -> (ConfigSender, ConfigReceiver) {
    tokio::sync::watch::channel(Arc::new(initial))
}

/// Checks a retry policy used outside a route configuration, such as a layer's default:
/// the rules of [`RetryPolicy::validate`], with paths under `retry_policy`.
pub(crate) fn check_retry_policy(rp: &RetryPolicy) -> Result<(), ConfigError> {
    rp.validate()
        .map_err(|e| ConfigError::from(e).within("retry_policy"))
}

/// A complete, consistent configuration for one target: what a router needs to route a call.
///
/// Immutable once built; a new control-plane update is a new `TargetConfig` published whole,
/// so a request never sees half of one update and half of another.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    route_config: Arc<RouteConfiguration>,
    virtual_host: Option<usize>,
    clusters: BTreeMap<String, ClusterState>,
}

impl TargetConfig {
    /// The snapshot of an xDS target. The virtual host the xDS client chose for the target's
    /// authority is used for every request, as gRPC does (the request's own authority is not
    /// consulted). The config was validated by `meshwork-xds`, so this cannot fail.
    pub fn from_xds(cfg: &XdsConfig) -> Self {
        let chosen = cfg.virtual_host();
        let virtual_host = cfg
            .route_config
            .virtual_hosts
            .iter()
            .position(|vh| std::ptr::eq(vh, chosen));
        Self {
            route_config: cfg.route_config.clone(),
            virtual_host,
            clusters: cfg.clusters.clone(),
        }
    }

    /// The route configuration.
    pub fn route_config(&self) -> &RouteConfiguration {
        &self.route_config
    }

    /// The virtual host for a request: the pinned one (xDS targets), or else the best match
    /// for `authority` by [`RouteConfiguration::virtual_host_for`]. A request without an
    /// authority matches only a `*` domain.
    pub fn virtual_host_for(&self, authority: Option<&str>) -> Option<(usize, &VirtualHost)> {
        if let Some(i) = self.virtual_host {
            return self.route_config.virtual_hosts.get(i).map(|vh| (i, vh));
        }
        let vh = self
            .route_config
            .virtual_host_for(authority.unwrap_or(""))?;
        let i = self
            .route_config
            .virtual_hosts
            .iter()
            .position(|v| std::ptr::eq(v, vh))?;
        Some((i, vh))
    }

    /// The state of the cluster named `name`, when the config knows it.
    pub fn cluster(&self, name: &str) -> Option<&ClusterState> {
        self.clusters.get(name)
    }

    /// Every cluster of the config, by name.
    pub fn clusters(&self) -> &BTreeMap<String, ClusterState> {
        &self.clusters
    }

    /// The names of the clusters of the config, in order.
    pub fn cluster_names(&self) -> impl Iterator<Item = &str> {
        self.clusters.keys().map(String::as_str)
    }
}

/// Builds a [`TargetConfig`] by hand, with no control plane.
///
/// The routes and clusters are the same types xDS produces; [`StaticConfig::build`] refuses
/// a route configuration for the reasons `meshwork-xds` NACKs one
/// ([`RouteConfiguration::validate`]: a non-zero total weight, valid backoff intervals, …),
/// with errors that name the same field path. Virtual hosts are chosen per request by
/// authority.
///
/// Clusters need not be listed: a router reaches clusters by name through its
/// [`Clusters`](crate::route::Clusters) lookup; listing them here makes their policy (load
/// balancing, circuit breakers, endpoints) available to the layers that read it.
#[derive(Debug, Clone, Default)]
pub struct StaticConfig {
    name: String,
    virtual_hosts: Vec<VirtualHost>,
    clusters: BTreeMap<String, ClusterState>,
}

impl StaticConfig {
    /// An empty config (no virtual hosts, so every request fails to route until one is
    /// added). The route configuration is named `static`.
    pub fn new() -> Self {
        Self {
            name: "static".into(),
            ..Self::default()
        }
    }

    /// Names the route configuration (informational; default `static`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a virtual host (matched by domain, see [`RouteConfiguration::virtual_host_for`]).
    pub fn virtual_host(mut self, vh: VirtualHost) -> Self {
        self.virtual_hosts.push(vh);
        self
    }

    /// Adds a catch-all virtual host (`*`) with one route: every path to `cluster`, with no
    /// timeout or retry policy.
    pub fn route_all_to(self, cluster: impl Into<String>) -> Self {
        let route = Route {
            name: "default".into(),
            matcher: RouteMatch {
                path: PathMatch::Prefix(String::new()),
                case_sensitive: true,
                headers: Vec::new(),
                query_parameters: Vec::new(),
                runtime_fraction: None,
            },
            action: RouteAction::Forward(ForwardAction {
                clusters: ClusterSpecifier::Cluster(cluster.into()),
                timeout: None,
                max_stream_duration: None,
                retry_policy: None,
                hash_policies: Vec::new(),
            }),
            filter_overrides: Default::default(),
        };
        self.virtual_host(VirtualHost {
            name: "default".into(),
            domains: vec!["*".into()],
            routes: vec![route],
            retry_policy: None,
            filter_overrides: Default::default(),
        })
    }

    /// Adds (or replaces) a cluster's state.
    pub fn cluster(mut self, name: impl Into<String>, state: ClusterState) -> Self {
        self.clusters.insert(name.into(), state);
        self
    }

    /// Adds (or replaces) the cluster `name` with these endpoints, in one locality, each of
    /// weight 1: what an EDS cluster that sets nothing else decodes to ([`Cluster::eds`]:
    /// round robin, default circuit breakers, plaintext). For a cluster with TLS or another
    /// policy, see [`cluster_with_endpoints`](Self::cluster_with_endpoints).
    ///
    /// ```
    /// # use meshwork_core::config::StaticConfig;
    /// let addr = "127.0.0.1:50051".parse().unwrap();
    /// let config = StaticConfig::new()
    ///     .route_all_to("greeter")
    ///     .endpoints("greeter", [addr])
    ///     .build()
    ///     .unwrap();
    /// assert!(config.cluster("greeter").is_some());
    /// ```
    pub fn endpoints(
        self,
        name: impl Into<String>,
        addresses: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        self.cluster_with_endpoints(Cluster::eds(name), addresses)
    }

    /// Adds (or replaces) `cluster`, under its name, with these endpoints (one locality,
    /// weight 1 each).
    pub fn cluster_with_endpoints(
        self,
        cluster: Cluster,
        addresses: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        let addresses: Vec<SocketAddr> = addresses.into_iter().collect();
        let name = cluster.name.clone();
        let endpoints = ClusterLoadAssignment::from_addresses(name.clone(), &addresses);
        self.cluster(
            name,
            ClusterState::Ready(ClusterConfig {
                cluster: Arc::new(cluster),
                children: ClusterChildren::Endpoints(Ok(Arc::new(endpoints))),
            }),
        )
    }

    /// Checks the config and builds the snapshot.
    pub fn build(self) -> Result<TargetConfig, ConfigError> {
        let rc = RouteConfiguration {
            name: self.name,
            virtual_hosts: self.virtual_hosts,
            unsupported_fields: Vec::new(),
        };
        rc.validate()?;
        Ok(TargetConfig {
            route_config: Arc::new(rc),
            virtual_host: None,
            clusters: self.clusters,
        })
    }
}

/// Builds a snapshot from a hand-written [`RouteConfiguration`], with the checks of
/// [`StaticConfig::build`]; virtual hosts are chosen per request by authority.
impl TryFrom<RouteConfiguration> for TargetConfig {
    type Error = ConfigError;

    fn try_from(rc: RouteConfiguration) -> Result<Self, ConfigError> {
        rc.validate()?;
        Ok(TargetConfig {
            route_config: Arc::new(rc),
            virtual_host: None,
            clusters: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests;
