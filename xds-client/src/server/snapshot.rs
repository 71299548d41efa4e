//! The resources an [`XdsTestServer`](super::XdsTestServer) serves.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::type_url;

/// A complete set of resources: per type URL, a version string and the resources by name.
///
/// A snapshot is a plain value: build one with the consuming builders ([`listener`],
/// [`route`], [`cluster`], [`endpoints`], [`raw`]) or edit one in place with the `insert_*`
/// and [`remove`] methods, then hand it to
/// [`XdsTestServer::set_snapshot`](super::XdsTestServer::set_snapshot) or edit the
/// server's own copy with [`XdsTestServer::update`](super::XdsTestServer::update).
///
/// Versions are normally left to the server: when a snapshot is applied, every type whose
/// resources changed gets the next number of that type's counter (`"1"`, `"2"`, ...), and a
/// type whose resources did not change keeps its version. A type that never had a resource
/// is at version `"0"`. [`set_version`] names a version explicitly; the server uses it when
/// that type's resources changed and the name differs from the current one.
///
/// [`listener`]: Snapshot::listener
/// [`route`]: Snapshot::route
/// [`cluster`]: Snapshot::cluster
/// [`endpoints`]: Snapshot::endpoints
/// [`raw`]: Snapshot::raw
/// [`remove`]: Snapshot::remove
/// [`set_version`]: Snapshot::set_version
///
/// ```
/// use envoy_types::pb::envoy::config::cluster::v3::Cluster;
/// use meshwork_xds::server::{Snapshot, type_url};
///
/// let snapshot = Snapshot::new().cluster(Cluster {
///     name: "backend".to_owned(),
///     ..Default::default()
/// });
/// assert!(snapshot.get(type_url::CLUSTER, "backend").is_some());
/// assert_eq!(snapshot.names(type_url::CLUSTER).collect::<Vec<_>>(), ["backend"]);
/// // No version until a server applies the snapshot.
/// assert_eq!(snapshot.version(type_url::CLUSTER), None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    types: BTreeMap<String, TypeResources>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TypeResources {
    pub(crate) version: Option<String>,
    pub(crate) resources: BTreeMap<String, Any>,
}

impl Snapshot {
    /// An empty snapshot: no resources of any type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a `Listener`, named by its `name`.
    pub fn listener(mut self, listener: Listener) -> Self {
        self.insert_listener(listener);
        self
    }

    /// Adds (or replaces) a `RouteConfiguration`, named by its `name`.
    pub fn route(mut self, route: RouteConfiguration) -> Self {
        self.insert_route(route);
        self
    }

    /// Adds (or replaces) a `Cluster`, named by its `name`.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.insert_cluster(cluster);
        self
    }

    /// Adds (or replaces) a `ClusterLoadAssignment`, named by its `cluster_name`.
    pub fn endpoints(mut self, endpoints: ClusterLoadAssignment) -> Self {
        self.insert_endpoints(endpoints);
        self
    }

    /// Adds (or replaces) the resource `name` of `type_url` with `resource` exactly as
    /// given: the `Any` may hold another type URL or bytes that do not decode, which is what
    /// tests of malformed input need.
    pub fn raw(
        mut self,
        type_url: impl Into<String>,
        name: impl Into<String>,
        resource: Any,
    ) -> Self {
        self.insert_raw(type_url, name, resource);
        self
    }

    /// Sets the version string of `type_url` (see the type's documentation for when the
    /// server uses it).
    pub fn with_version(mut self, type_url: impl Into<String>, version: impl Into<String>) -> Self {
        self.set_version(type_url, version);
        self
    }

    /// Inserts a `Listener`, named by its `name`; returns the resource it replaced.
    pub fn insert_listener(&mut self, listener: Listener) -> Option<Any> {
        let name = listener.name.clone();
        self.insert_raw(
            type_url::LISTENER,
            name,
            pack(type_url::LISTENER, &listener),
        )
    }

    /// Inserts a `RouteConfiguration`, named by its `name`; returns the resource it replaced.
    pub fn insert_route(&mut self, route: RouteConfiguration) -> Option<Any> {
        let name = route.name.clone();
        self.insert_raw(type_url::ROUTE, name, pack(type_url::ROUTE, &route))
    }

    /// Inserts a `Cluster`, named by its `name`; returns the resource it replaced.
    pub fn insert_cluster(&mut self, cluster: Cluster) -> Option<Any> {
        let name = cluster.name.clone();
        self.insert_raw(type_url::CLUSTER, name, pack(type_url::CLUSTER, &cluster))
    }

    /// Inserts a `ClusterLoadAssignment`, named by its `cluster_name`; returns the resource
    /// it replaced.
    pub fn insert_endpoints(&mut self, endpoints: ClusterLoadAssignment) -> Option<Any> {
        let name = endpoints.cluster_name.clone();
        self.insert_raw(
            type_url::ENDPOINTS,
            name,
            pack(type_url::ENDPOINTS, &endpoints),
        )
    }

    /// Inserts `resource` as `name` of `type_url`, unchecked; returns the resource it
    /// replaced.
    pub fn insert_raw(
        &mut self,
        type_url: impl Into<String>,
        name: impl Into<String>,
        resource: Any,
    ) -> Option<Any> {
        self.types
            .entry(type_url.into())
            .or_default()
            .resources
            .insert(name.into(), resource)
    }

    /// Removes the resource `name` of `type_url`; returns it if it was there.
    pub fn remove(&mut self, type_url: &str, name: &str) -> Option<Any> {
        self.types.get_mut(type_url)?.resources.remove(name)
    }

    /// Removes every resource of `type_url` (its version stays).
    pub fn clear_type(&mut self, type_url: &str) {
        if let Some(entry) = self.types.get_mut(type_url) {
            entry.resources.clear();
        }
    }

    /// Sets the version string of `type_url`.
    pub fn set_version(&mut self, type_url: impl Into<String>, version: impl Into<String>) {
        self.types.entry(type_url.into()).or_default().version = Some(version.into());
    }

    /// The version of `type_url`: `None` until a server applied the snapshot (or
    /// [`set_version`](Snapshot::set_version) named one).
    pub fn version(&self, type_url: &str) -> Option<&str> {
        self.types.get(type_url)?.version.as_deref()
    }

    /// The resource `name` of `type_url`.
    pub fn get(&self, type_url: &str, name: &str) -> Option<&Any> {
        self.types.get(type_url)?.resources.get(name)
    }

    /// The names of the resources of `type_url`, in order.
    pub fn names<'a>(&'a self, type_url: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.types
            .get(type_url)
            .into_iter()
            .flat_map(|entry| entry.resources.keys().map(String::as_str))
    }

    /// The type URLs that have at least one resource, in order.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> + '_ {
        self.types
            .iter()
            .filter(|(_, entry)| !entry.resources.is_empty())
            .map(|(type_url, _)| type_url.as_str())
    }

    /// The number of resources of all types.
    pub fn len(&self) -> usize {
        self.types.values().map(|entry| entry.resources.len()).sum()
    }

    /// Whether the snapshot holds no resource at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, Any>> {
        self.types.get(type_url).map(|entry| &entry.resources)
    }

    pub(crate) fn types(&self) -> &BTreeMap<String, TypeResources> {
        &self.types
    }

    pub(crate) fn types_mut(&mut self) -> &mut BTreeMap<String, TypeResources> {
        &mut self.types
    }
}

/// Encodes `message` as an `Any` of `type_url`.
pub(crate) fn pack(type_url: &str, message: &impl Message) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_name_resources_by_their_name_fields() {
        let snapshot = Snapshot::new()
            .listener(Listener {
                name: "l".into(),
                ..Default::default()
            })
            .route(RouteConfiguration {
                name: "r".into(),
                ..Default::default()
            })
            .cluster(Cluster {
                name: "c".into(),
                ..Default::default()
            })
            .endpoints(ClusterLoadAssignment {
                cluster_name: "e".into(),
                ..Default::default()
            });
        for (url, name) in [
            (type_url::LISTENER, "l"),
            (type_url::ROUTE, "r"),
            (type_url::CLUSTER, "c"),
            (type_url::ENDPOINTS, "e"),
        ] {
            let any = snapshot.get(url, name).expect("resource present");
            assert_eq!(any.type_url, url);
        }
        assert_eq!(snapshot.len(), 4);
        let cluster = snapshot.get(type_url::CLUSTER, "c").unwrap();
        let decoded = Cluster::decode(cluster.value.as_slice()).unwrap();
        assert_eq!(decoded.name, "c");
    }

    #[test]
    fn raw_keeps_malformed_content_and_insert_replaces() {
        let bad = Any {
            type_url: "type.googleapis.com/not.a.Type".into(),
            value: vec![0xff, 0xff],
        };
        let mut snapshot = Snapshot::new().raw(type_url::LISTENER, "x", bad.clone());
        assert_eq!(snapshot.get(type_url::LISTENER, "x"), Some(&bad));
        let old = snapshot.insert_listener(Listener {
            name: "x".into(),
            ..Default::default()
        });
        assert_eq!(old, Some(bad));
        assert!(snapshot.remove(type_url::LISTENER, "x").is_some());
        assert!(snapshot.is_empty());
        assert_eq!(snapshot.type_urls().count(), 0);
        assert_eq!(snapshot.remove(type_url::LISTENER, "x"), None);
        assert_eq!(snapshot.remove("no-such-type", "x"), None);
    }

    #[test]
    fn versions_are_unset_until_named() {
        let mut snapshot = Snapshot::new().with_version(type_url::CLUSTER, "v7");
        assert_eq!(snapshot.version(type_url::CLUSTER), Some("v7"));
        assert_eq!(snapshot.version(type_url::LISTENER), None);
        snapshot.clear_type(type_url::CLUSTER);
        assert_eq!(snapshot.version(type_url::CLUSTER), Some("v7"));
        assert_eq!(snapshot.names(type_url::CLUSTER).count(), 0);
    }
}
