//! The control plane: meshwork-xds's ADS test server with Istio-shaped resources (an
//! api_listener naming RDS, a route with istiod's default retry policy, an EDS cluster
//! with SPIFFE mTLS upstream and least request, the endpoints). It runs on a runtime of its
//! own, so killing it drops every task and socket at once, as a crashed istiod would.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, Route, retry_policy, route};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use meshwork_xds::server::{Snapshot, XdsTestServer, build, type_url};
use tokio::runtime::Runtime;

use crate::Error;

/// The xDS target the client calls (its Listener's name without the scheme).
pub(crate) const LISTENER: &str = "echo.soak:50051";
/// The cluster of the echo service, the one the NACK and the deletion hit.
pub(crate) const CLUSTER: &str = "echo";
const ROUTES: &str = "echo-routes";

/// How long the client may take to answer a change (it may be reconnecting with backoff).
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(20);

/// The conditions of istiod's default retry policy.
pub(crate) const ISTIO_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// istiod's default retry policy with `retry_on`: retried twice, on another host.
fn with_retries(mut route: Route, retry_on: &str) -> Route {
    if let Some(route::Action::Route(action)) = &mut route.action {
        action.retry_policy = Some(RetryPolicy {
            retry_on: retry_on.into(),
            num_retries: Some(UInt32Value { value: 2 }),
            retry_host_predicate: vec![retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    Any {
                        type_url: "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate".into(),
                        value: Vec::new(),
                    },
                )),
            }],
            host_selection_retry_max_attempts: 5,
            ..Default::default()
        });
    }
    route
}

/// The echo cluster as istiod sends it: EDS, least request, SPIFFE mTLS to `server_id`.
pub(crate) fn cluster(server_id: &str) -> Cluster {
    let mut c = build::with_upstream_tls(build::eds_cluster(CLUSTER), "default", &[server_id]);
    c.lb_policy = cluster::LbPolicy::LeastRequest as i32;
    c
}

/// A cluster the client must NACK: MAGLEV is a policy gRPC does not implement.
pub(crate) fn unsupported_cluster(server_id: &str) -> Cluster {
    let mut c = cluster(server_id);
    c.lb_policy = cluster::LbPolicy::Maglev as i32;
    c
}

/// The whole config with the echo service on `endpoints`, the route retrying on
/// `retry_on` (empty: no retry policy).
pub(crate) fn snapshot(server_id: &str, endpoints: &[SocketAddr], retry_on: &str) -> Snapshot {
    let route = build::route_to("", CLUSTER);
    let route = if retry_on.is_empty() {
        route
    } else {
        with_retries(route, retry_on)
    };
    Snapshot::new()
        .listener(build::api_listener(LISTENER, ROUTES))
        .route(build::route_config(
            ROUTES,
            vec![build::virtual_host("echo", [LISTENER], vec![route])],
        ))
        .cluster(cluster(server_id))
        .endpoints(build::endpoints(CLUSTER, endpoints))
}

/// The ADS server and the runtime it runs on; `None` while killed.
pub(crate) struct ControlPlane {
    addr: SocketAddr,
    running: Option<(Runtime, XdsTestServer)>,
}

impl ControlPlane {
    /// Starts on `addr` (port 0: any) serving `snapshot`.
    pub(crate) async fn start(addr: SocketAddr, snapshot: Snapshot) -> Result<Self, Error> {
        let mut me = Self {
            addr,
            running: None,
        };
        me.restart(snapshot).await?;
        Ok(me)
    }

    /// Where it listens (the same port across restarts).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The running server.
    pub(crate) fn server(&self) -> Result<&XdsTestServer, Error> {
        self.running
            .as_ref()
            .map(|(_, s)| s)
            .ok_or_else(|| "the control plane is down".into())
    }

    /// Kills it: its runtime stops and drops every stream and socket without a goodbye.
    pub(crate) async fn kill(&mut self) -> Result<(), Error> {
        if let Some((rt, server)) = self.running.take() {
            // The runtime first: the server's own drop would end the streams gracefully.
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(5)))
                .await?;
            drop(server);
        }
        Ok(())
    }

    /// Starts it again on the same port with `snapshot` (killing a running one first).
    pub(crate) async fn restart(&mut self, snapshot: Snapshot) -> Result<(), Error> {
        self.kill().await?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("soak-control-plane")
            .enable_all()
            .build()?;
        let server = rt.spawn(XdsTestServer::start_on(self.addr)).await??;
        server.set_snapshot(snapshot);
        self.addr = server.addr();
        self.running = Some((rt, server));
        Ok(())
    }

    /// Edits the config and waits until the client ACKs the new version of `type_url`.
    pub(crate) async fn update_and_wait(
        &self,
        type_url: &str,
        edit: impl FnOnce(&mut Snapshot),
    ) -> Result<(), Error> {
        let server = self.server()?;
        server.update(edit);
        self.wait_ack(type_url).await
    }

    /// Waits until the client ACKs the current version of `type_url`.
    pub(crate) async fn wait_ack(&self, type_url: &str) -> Result<(), Error> {
        let server = self.server()?;
        let version = server.version(type_url);
        tokio::time::timeout(ACK_TIMEOUT, server.wait_for_ack(type_url, &version))
            .await
            .map_err(|_| format!("no ACK of {type_url} version {version} in {ACK_TIMEOUT:?}"))?;
        Ok(())
    }

    /// Waits for the client's next NACK of `type_url`; its error message.
    pub(crate) async fn wait_nack(&self, type_url: &str) -> Result<String, Error> {
        let server = self.server()?;
        Ok(
            tokio::time::timeout(ACK_TIMEOUT, server.wait_for_nack(type_url))
                .await
                .map_err(|_| format!("no NACK of {type_url} in {ACK_TIMEOUT:?}"))?,
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed on the harness's own runtime.
        if let Some((rt, _server)) = self.running.take() {
            rt.shutdown_background();
        }
    }
}

/// The type URLs, for the callers.
pub(crate) use type_url::{CLUSTER as CDS, ENDPOINTS as EDS};
