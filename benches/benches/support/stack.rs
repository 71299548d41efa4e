//! What the outbound stack measurements share (`benches/stack.rs` in time,
//! `benches/call_cost.rs` in allocations and instructions; the route also
//! `benches/retry.rs`): istiod's route and retry policy, and one target's config over them.

#![allow(dead_code)] // each bench uses its part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshwork_grpc::core::config::{
    self, Cluster, ClusterChildren, ClusterConfig, ClusterLoadAssignment, ClusterState,
    ConfigReceiver, RetryOn, RetryPolicy, StaticConfig, VirtualHost,
};

/// The mesh-default retry policy istiod puts on every route.
pub(crate) fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: RetryOn::UNAVAILABLE | RetryOn::CANCELLED | RetryOn::RESET,
        num_retries: 2,
        base_interval: Duration::from_millis(25),
        max_interval: Duration::from_millis(250),
        per_try_timeout: None,
        retriable_status_codes: Vec::new(),
        avoid_previous_hosts: true,
        host_selection_max_attempts: 5,
    }
}

/// A virtual host sending every request to the cluster `echo`, with a 10 s timeout and
/// istiod's retry policy, as istiod sends.
pub(crate) fn virtual_host() -> VirtualHost {
    let mut vh = StaticConfig::new()
        .route_all_to("echo")
        .build()
        .expect("valid")
        .route_config()
        .virtual_hosts[0]
        .clone();
    if let config::RouteAction::Forward(fa) = &mut vh.routes[0].action {
        fa.timeout = Some(Duration::from_secs(10));
        fa.retry_policy = Some(retry_policy());
    }
    vh
}

/// `n` endpoint addresses, `10.0.0.1:8080` up.
pub(crate) fn endpoint_addrs(n: u32) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i + 1), 8080)))
        .collect()
}

/// A config that never changes: every request to the cluster `echo` over `addrs` (round
/// robin, what CDS means with no policy), with a 10 s timeout and istiod's retry policy.
pub(crate) fn published(addrs: &[SocketAddr]) -> ConfigReceiver {
    let cfg = StaticConfig::new()
        .virtual_host(virtual_host())
        .cluster(
            "echo",
            ClusterState::Ready(ClusterConfig {
                cluster: Arc::new(Cluster::eds("echo")),
                children: ClusterChildren::Endpoints(Ok(Arc::new(
                    ClusterLoadAssignment::from_addresses("echo", addrs),
                ))),
            }),
        )
        .build()
        .expect("valid");
    let (tx, rx) = config::channel(cfg);
    std::mem::forget(tx); // the config never changes during a run
    rx
}
