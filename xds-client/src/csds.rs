//! CSDS, the Client Status Discovery Service (gRFC A40): the xDS client's view of every
//! resource, served as `envoy.service.status.v3.ClientStatusDiscoveryService` so that the
//! tools that read a proxyless gRPC process (`grpcdebug`, `istioctl x
//! proxy-status`-style clients, any CSDS client) read a meshwork process the same way.
//!
//! The service answers from [`XdsClient::dump`]: one `ClientConfig` per client, with the
//! client's `node` and a `GenericXdsConfig` per resource (type URL, name, the version of the
//! response that last delivered a valid value, that value as the server sent it
//! (`xds_config`), when its status last changed, its `client_status` and, for a NACKed
//! resource, the rejection in `error_state`). Like
//! grpc-go's, it rejects a request with `node_matchers` (`INVALID_ARGUMENT`): a process has
//! one node per client, so there is nothing to match (A40, "Node matching").
//!
//! ```no_run
//! use meshwork_xds::bootstrap::Bootstrap;
//! use meshwork_xds::client::XdsClient;
//! use meshwork_xds::csds::CsdsService;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = XdsClient::start(&Bootstrap::from_env()?)?;
//! // Usually on an admin port of its own, in plaintext on loopback.
//! tonic::transport::Server::builder()
//!     .add_service(CsdsService::new(client).into_server())
//!     .serve("127.0.0.1:9901".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse,
};
use envoy_types::pb::google::protobuf::Timestamp;
use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::client::{ResourceDump, XdsClient};
use crate::protocol::ResourceStatus;

/// The CSDS service over one or more [`XdsClient`]s. It holds a handle to each, so a client
/// it serves keeps running while the service exists.
#[derive(Debug, Clone)]
pub struct CsdsService {
    /// Each client with its `client_scope` (empty for the first).
    clients: Arc<[(String, XdsClient)]>,
}

impl CsdsService {
    /// The service over `client`, whose `ClientConfig` has an empty `client_scope`.
    pub fn new(client: XdsClient) -> Self {
        Self {
            clients: Arc::new([(String::new(), client)]),
        }
    }

    /// Also serve `client`, as a `ClientConfig` of its own whose `client_scope` is `scope`
    /// (gRPC names a channel's client by its target, e.g. `xds:///greeter:50051`, and a
    /// server's `#server`; gRFC A71).
    pub fn with_client(self, scope: impl Into<String>, client: XdsClient) -> Self {
        let mut clients = self.clients.to_vec();
        clients.push((scope.into(), client));
        Self {
            clients: clients.into(),
        }
    }

    /// The tonic service to mount on a server
    /// (`tonic::transport::Server::builder().add_service(..)`).
    pub fn into_server(self) -> ClientStatusDiscoveryServiceServer<Self> {
        ClientStatusDiscoveryServiceServer::new(self)
    }

    async fn respond(&self, request: &ClientStatusRequest) -> Result<ClientStatusResponse, Status> {
        if !request.node_matchers.is_empty() {
            // The matchers are not echoed: a caller chooses their size.
            return Err(Status::invalid_argument(format!(
                "node_matchers are not supported (gRFC A40); the request has {}",
                request.node_matchers.len()
            )));
        }
        let mut config = Vec::with_capacity(self.clients.len());
        for (scope, client) in self.clients.iter() {
            config.push(ClientConfig {
                node: Some(client.bootstrap().node().to_proto()),
                generic_xds_configs: client.dump().await.into_iter().map(generic).collect(),
                client_scope: scope.clone(),
                ..ClientConfig::default()
            });
        }
        Ok(ClientStatusResponse { config })
    }
}

/// One resource as CSDS shows it.
fn generic(row: ResourceDump) -> GenericXdsConfig {
    let last_updated = row.last_updated.and_then(timestamp);
    let error_state = match (row.status, row.error) {
        (ResourceStatus::Nacked, Some(details)) => Some(UpdateFailureState {
            last_update_attempt: last_updated,
            details,
            ..UpdateFailureState::default()
        }),
        _ => None,
    };
    GenericXdsConfig {
        type_url: row.type_url.to_owned(),
        name: row.name,
        version_info: row.version.unwrap_or_default(),
        xds_config: row.resource,
        last_updated,
        config_status: 0,
        client_status: client_status(row.status) as i32,
        error_state,
        // A value from the fail-static snapshot was loaded from a file at start, not sent by
        // a control plane: what the field means for Envoy's static resources.
        is_static_resource: row.from_snapshot,
    }
}

fn client_status(status: ResourceStatus) -> ClientResourceStatus {
    match status {
        ResourceStatus::Requested => ClientResourceStatus::Requested,
        ResourceStatus::Acked => ClientResourceStatus::Acked,
        ResourceStatus::Nacked => ClientResourceStatus::Nacked,
        ResourceStatus::DoesNotExist => ClientResourceStatus::DoesNotExist,
    }
}

/// Seconds since the Unix epoch as a protobuf `Timestamp`; `None` for what is not a time.
fn timestamp(secs: f64) -> Option<Timestamp> {
    if !secs.is_finite() || secs < 0.0 || secs >= i64::MAX as f64 {
        return None;
    }
    let seconds = secs.trunc();
    let nanos = ((secs - seconds) * 1e9) as i32;
    Some(Timestamp {
        seconds: seconds as i64,
        nanos: nanos.clamp(0, 999_999_999),
    })
}

/// The response stream of `StreamClientStatus`.
type ResponseStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for CsdsService {
    type StreamClientStatusStream = ResponseStream;

    /// One response per request, in order (A40). The next request is read only once the
    /// previous response was taken by the transport, so a caller that streams requests
    /// without reading the responses stalls on HTTP/2 flow control instead of making the
    /// server queue dumps.
    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let state = (self.clone(), request.into_inner());
        let responses = futures_util::stream::unfold(Some(state), |state| async move {
            let (service, mut requests) = state?;
            let answer = match requests.message().await {
                Ok(None) => return None,
                Ok(Some(request)) => service.respond(&request).await,
                Err(status) => Err(status),
            };
            // An error ends the stream, as in grpc-go.
            let next = answer.is_ok().then_some((service, requests));
            Some((answer, next))
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        self.respond(request.get_ref()).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_split_into_seconds_and_nanos_and_nonsense_is_dropped() {
        let t = timestamp(1_700_000_000.25).unwrap();
        assert_eq!(t.seconds, 1_700_000_000);
        assert!((t.nanos - 250_000_000).abs() < 1_000, "{}", t.nanos);
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e300] {
            assert_eq!(timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_a_nacked_resource_carries_an_error_state() {
        let row = |status, error: Option<&str>| ResourceDump {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            name: "a".into(),
            version: Some("3".into()),
            status,
            error: error.map(str::to_owned),
            transport_error: None,
            last_updated: Some(10.5),
            unsupported_fields: Vec::new(),
            from_snapshot: false,
            resource: None,
        };
        let nacked = generic(row(ResourceStatus::Nacked, Some("bad cluster")));
        assert_eq!(nacked.client_status, ClientResourceStatus::Nacked as i32);
        assert_eq!(nacked.version_info, "3");
        let error = nacked.error_state.unwrap();
        assert_eq!(error.details, "bad cluster");
        assert_eq!(error.last_update_attempt.unwrap().seconds, 10);
        let acked = generic(row(ResourceStatus::Acked, None));
        assert_eq!(acked.client_status, ClientResourceStatus::Acked as i32);
        assert!(acked.error_state.is_none());
        assert!(!acked.is_static_resource);
        let seeded = generic(ResourceDump {
            from_snapshot: true,
            ..row(ResourceStatus::Acked, None)
        });
        assert!(
            seeded.is_static_resource,
            "a value from the snapshot is marked"
        );
    }
}
