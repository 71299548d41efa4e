//! Static cluster states, as the xDS client would hand them to the router, for tests that
//! configure a client without a control plane.

use std::net::SocketAddr;
use std::sync::Arc;

use meshwork_core::config::{ClusterChildren, ClusterConfig, ClusterState};
use meshwork_xds::resource::{
    CertProviderInstance, Cluster, ClusterLoadAssignment, StringMatchKind, StringMatcher,
    UpstreamTls,
};

/// Cluster `c`, resolved: its endpoints are `addrs` (healthy, weight 1, one locality at
/// priority 0).
pub fn ready(c: Arc<Cluster>, addrs: &[SocketAddr]) -> ClusterState {
    let endpoints = ClusterLoadAssignment::from_addresses(c.name.clone(), addrs);
    ClusterState::Ready(ClusterConfig {
        cluster: c,
        children: ClusterChildren::Endpoints(Ok(Arc::new(endpoints))),
    })
}

/// Upstream mTLS as Istio configures it for proxyless gRPC: identity and roots from the
/// certificate provider instance `default`, and the server's SPIFFE ID one of `sans`
/// (exact, case-sensitive).
pub fn upstream_tls(sans: &[&str]) -> UpstreamTls {
    upstream_tls_matching(sans.iter().map(|san| StringMatchKind::Exact((*san).into())))
}

/// [`upstream_tls`] with any SAN matchers (case-sensitive): the server's SPIFFE ID must
/// match one of `kinds`.
pub fn upstream_tls_matching(kinds: impl IntoIterator<Item = StringMatchKind>) -> UpstreamTls {
    let instance = CertProviderInstance {
        instance_name: "default".into(),
        certificate_name: "default".into(),
    };
    UpstreamTls {
        identity: Some(instance.clone()),
        root: instance,
        san_matchers: kinds
            .into_iter()
            .map(|kind| StringMatcher {
                kind,
                ignore_case: false,
            })
            .collect(),
    }
}
