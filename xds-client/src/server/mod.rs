//! An in-process ADS snapshot server (Envoy xDS v3, SotW and delta), for tests, demos and
//! users' integration tests.
//!
//! [`XdsTestServer`] serves `StreamAggregatedResources` and `DeltaAggregatedResources` over
//! plain HTTP/2 from a [`Snapshot`] of resources, following the xDS protocol as
//! go-control-plane does, so that meshwork's client, Envoy and gRPC's own xDS clients can
//! all use it. On a SotW stream:
//!
//! - Per stream and type URL it keeps the subscribed names, the wildcard (legacy: an empty
//!   first request for LDS or CDS, kept while later requests stay empty; explicit: `"*"`,
//!   which may be mixed with names), and the last nonce sent. An empty list after names
//!   unsubscribes from everything.
//! - It responds to the first request of a type, to a request that adds to the
//!   subscription, and to a snapshot change that changes what a stream subscribes to. LDS
//!   and CDS responses carry every subscribed resource that exists (absence is deletion);
//!   RDS and EDS responses carry the subscribed resources that exist. A stream is never sent
//!   a response that would tell it nothing new.
//! - A request whose `response_nonce` is not the latest sent for its type is stale: it is
//!   recorded and otherwise ignored. ACKs and NACKs are recorded and answered with nothing.
//!   Nonces are unique per stream.
//!
//! A delta (incremental) stream keeps per type URL the subscription and the version of
//! every resource the client holds (a hash of the resource's bytes), and sends only what
//! changed: resources the stream gained or whose version changed, and in
//! `removed_resources` those deleted while it held them and subscribed names that do not
//! exist. It honours `initial_resource_versions` on a new stream, `"*"` and the legacy
//! wildcard, and nonces, ACKs and NACKs as SotW does.
//!
//! What clients can make it hold is bounded, on both kinds of stream: 1024 streams of each
//! kind, 32 type URLs and 16 MiB of subscribed names per stream (past that the stream ends
//! with `RESOURCE_EXHAUSTED`); a client that leaves more than 4096 responses, or more than
//! 64 MiB in more than one response, unread (it stopped reading while the snapshot kept
//! changing) has its stream ended with `RESOURCE_EXHAUSTED` and what was queued freed (it
//! is told when it reads again, reconnects and is sent the current state); the record of
//! requests, and apart of responses, is trimmed back to the newest 10,000 and 64 MiB once
//! it holds twice either.
//!
//! Everything it receives is recorded ([`XdsTestServer::requests`]) and can be awaited
//! without sleeping ([`XdsTestServer::wait_for`], [`wait_for_ack`], [`wait_for_nack`],
//! [`wait_for_streams`]); faults can be injected ([`close_all_streams`], [`push_raw`]).
//!
//! [`wait_for_ack`]: XdsTestServer::wait_for_ack
//! [`wait_for_nack`]: XdsTestServer::wait_for_nack
//! [`wait_for_streams`]: XdsTestServer::wait_for_streams
//! [`close_all_streams`]: XdsTestServer::close_all_streams
//! [`push_raw`]: XdsTestServer::push_raw

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinError, JoinHandle};
use tonic::transport::server::{Connected, TcpIncoming};
use tonic::{Request, Response, Status, Streaming};

pub mod build;
mod delta;
mod outbox;
mod record;
mod snapshot;
mod state;

pub use record::{RecordedRequest, RequestKind, SentResponse, Subscription};
pub use snapshot::Snapshot;

use state::State;

/// The type URLs of the four resource types a gRPC xDS client uses.
pub mod type_url {
    /// `envoy.config.listener.v3.Listener` (LDS).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    pub const ENDPOINTS: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
}

/// The name of a resource of one of the four [`type_url`]s, decoded from its `name` (or, for
/// endpoints, `cluster_name`) field; `None` for another type URL or bytes that do not decode.
pub fn resource_name(resource: &Any) -> Option<String> {
    let bytes = resource.value.as_slice();
    match resource.type_url.as_str() {
        type_url::LISTENER => Listener::decode(bytes).ok().map(|r| r.name),
        type_url::ROUTE => RouteConfiguration::decode(bytes).ok().map(|r| r.name),
        type_url::CLUSTER => Cluster::decode(bytes).ok().map(|r| r.name),
        type_url::ENDPOINTS => ClusterLoadAssignment::decode(bytes)
            .ok()
            .map(|r| r.cluster_name),
        _ => None,
    }
}

/// The error of [`XdsTestServer::shutdown`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The gRPC server failed.
    #[error("xDS test server: serving failed")]
    Serve(#[source] tonic::transport::Error),
    /// The server's task panicked or was cancelled.
    #[error("xDS test server: the server task did not finish")]
    Task(#[source] JoinError),
}

struct Shared {
    state: Mutex<State>,
    // Serialises `set_snapshot` and `update`, so that an edit cannot be lost, while the
    // caller's closure runs without the state lock (it may read the server).
    edits: Mutex<()>,
    // Bumped after every change of `state`; waiters re-check their condition on each bump.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic in a caller's closure: recover it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state and wakes every waiter.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        out
    }
}

/// An in-process ADS server that serves a [`Snapshot`]; see the [module docs](self).
///
/// Dropping it stops it: every open stream ends with `UNAVAILABLE`, the listener closes
/// and connections drain in the background. [`shutdown`](XdsTestServer::shutdown) does the
/// same and waits until every connection is closed, so the port can be bound again at once.
///
/// ```
/// use envoy_types::pb::envoy::config::cluster::v3::Cluster;
/// use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
/// use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
/// use meshwork_xds::server::{type_url, RequestKind, Snapshot, XdsTestServer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = XdsTestServer::start().await?;
/// server.set_snapshot(Snapshot::new().cluster(Cluster {
///     name: "backend".to_owned(),
///     ..Default::default()
/// }));
///
/// // Any ADS client will do; here, the raw tonic stub.
/// let mut client = AggregatedDiscoveryServiceClient::connect(server.uri()).await?;
/// let (requests, rx) = tokio::sync::mpsc::channel(4);
/// let mut responses = client
///     .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
///     .await?
///     .into_inner();
/// requests
///     .send(DiscoveryRequest {
///         type_url: type_url::CLUSTER.to_owned(),
///         ..Default::default() // no names: the legacy wildcard
///     })
///     .await?;
/// let response = responses.message().await?.expect("a response");
/// assert_eq!(response.version_info, "1");
/// assert_eq!(response.resources.len(), 1);
///
/// // ACK it, and wait until the server has seen the ACK.
/// requests
///     .send(DiscoveryRequest {
///         type_url: type_url::CLUSTER.to_owned(),
///         version_info: response.version_info.clone(),
///         response_nonce: response.nonce.clone(),
///         ..Default::default()
///     })
///     .await?;
/// let ack = server.wait_for_ack(type_url::CLUSTER, "1").await;
/// assert_eq!(ack.kind, RequestKind::Ack);
/// server.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct XdsTestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl fmt::Debug for XdsTestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsTestServer")
            .field("addr", &self.addr)
            .field("streams", &self.stream_count())
            .finish_non_exhaustive()
    }
}

impl XdsTestServer {
    /// Starts a server on `127.0.0.1` and a free port. Must run inside a Tokio runtime.
    pub async fn start() -> io::Result<Self> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a server on `addr` (with `SO_REUSEADDR`, so a test can restart a server on the
    /// port of one it shut down). Must run inside a Tokio runtime.
    pub async fn start_on(addr: SocketAddr) -> io::Result<Self> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // On Windows SO_REUSEADDR would let two listeners share a port; a closed
        // listener's port is free there anyway.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let local = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        Self::start_with_incoming(incoming, local).await
    }

    /// Starts a server on connections from `incoming` (plain TCP, TLS, in-memory pipes...);
    /// `addr` is what [`addr`](Self::addr) and [`uri`](Self::uri) report. Must run inside
    /// a Tokio runtime.
    pub async fn start_with_incoming<I, IO, IE>(incoming: I, addr: SocketAddr) -> io::Result<Self>
    where
        I: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            edits: Mutex::new(()),
            changed,
        });
        let service = AggregatedDiscoveryServiceServer::new(Ads {
            shared: shared.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    // Dropping the sender also stops the server.
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URI, `http://ADDR` (e.g. `http://127.0.0.1:15010`), for a bootstrap's
    /// `server_uri` or a tonic `Endpoint`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces every resource with those of `snapshot` and pushes the change to the streams
    /// it concerns.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        let _edit = self
            .shared
            .edits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.shared.with(|state| state.apply_snapshot(snapshot));
    }

    /// Edits the current snapshot in place (e.g. `|s| { s.insert_cluster(c); }`) and pushes
    /// the change to the streams it concerns. Edits are applied one at a time; `edit` may
    /// read the server but must not call `update` or `set_snapshot` (that would deadlock).
    pub fn update(&self, edit: impl FnOnce(&mut Snapshot)) {
        let _edit = self
            .shared
            .edits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut snapshot = self.snapshot();
        edit(&mut snapshot);
        self.shared.with(|state| state.apply_snapshot(snapshot));
    }

    /// The current snapshot, with the versions the server assigned.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.lock().snapshot().clone()
    }

    /// The current version of `type_url` (`"0"` while it never had a resource).
    pub fn version(&self, type_url: &str) -> String {
        self.shared.lock().version(type_url)
    }

    /// Every request received so far, in order (the newest 10 000 to 20 000 on a server
    /// that runs long).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.with_requests(<[RecordedRequest]>::to_vec)
    }

    /// Calls `read` with every request received so far, in order (as
    /// [`requests`](Self::requests) has them), without copying them: `read` runs under the
    /// server's lock, so it must be quick and must not call the server. For a long-running
    /// server whose record is large (an Envoy client sends its whole `Node` in every
    /// request), where a copy of the record on each look would cost the server's runtime
    /// milliseconds.
    pub fn with_requests<T>(&self, read: impl FnOnce(&[RecordedRequest]) -> T) -> T {
        read(self.shared.lock().requests())
    }

    /// Every response sent so far, in order (the newest 10 000 to 20 000 on a server that
    /// runs long).
    pub fn responses(&self) -> Vec<SentResponse> {
        self.shared.lock().responses().to_vec()
    }

    /// The number of open ADS streams.
    pub fn stream_count(&self) -> usize {
        self.shared.lock().stream_count()
    }

    /// The number of ADS streams ever opened (a reconnecting client opens a new one).
    pub fn total_streams(&self) -> u64 {
        self.shared.lock().total_streams()
    }

    /// The ids of the open streams, in the order they opened.
    pub fn stream_ids(&self) -> Vec<u64> {
        self.shared.lock().stream_ids()
    }

    /// What the open stream `stream_id` subscribes to for `type_url`; `None` if the stream
    /// is not open or has not requested the type.
    pub fn subscription(&self, stream_id: u64, type_url: &str) -> Option<Subscription> {
        self.shared.lock().subscription(stream_id, type_url)
    }

    /// Waits until `done` holds for the requests received so far; returns them.
    ///
    /// There is no timeout: wrap the call in `tokio::time::timeout` to bound it.
    pub async fn wait_for(
        &self,
        mut done: impl FnMut(&[RecordedRequest]) -> bool,
    ) -> Vec<RecordedRequest> {
        self.wait_until(|state| done(state.requests()).then(|| state.requests().to_vec()))
            .await
    }

    /// Waits for an ACK of `version` of `type_url` (on any stream); returns it.
    pub async fn wait_for_ack(&self, type_url: &str, version: &str) -> RecordedRequest {
        self.wait_until(|state| {
            state
                .requests()
                .iter()
                .find(|r| {
                    r.kind == RequestKind::Ack
                        && r.type_url() == type_url
                        && r.version_info() == version
                })
                .cloned()
        })
        .await
    }

    /// Waits for a NACK of `type_url` that no earlier call returned; returns the message of
    /// its `error_detail`. NACKs are handed out in the order they arrived, one per call.
    pub async fn wait_for_nack(&self, type_url: &str) -> String {
        self.wait_until(|state| {
            let taken = state.nacks_taken.get(type_url).copied().unwrap_or(0);
            let message = state
                .requests()
                .iter()
                .filter(|r| r.kind == RequestKind::Nack && r.type_url() == type_url)
                .nth(taken)
                .map(|r| r.error_message().unwrap_or_default().to_owned())?;
            state.nacks_taken.insert(type_url.to_owned(), taken + 1);
            Some(message)
        })
        .await
    }

    /// Waits until exactly `count` streams are open.
    pub async fn wait_for_streams(&self, count: usize) {
        self.wait_until(|state| (state.stream_count() == count).then_some(()))
            .await
    }

    async fn wait_until<T>(&self, mut check: impl FnMut(&mut State) -> Option<T>) -> T {
        let mut changed = self.shared.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let found = check(&mut self.shared.lock());
            if let Some(found) = found {
                return found;
            }
            if changed.changed().await.is_err() {
                // Unreachable: `self` keeps the sender alive.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Ends every open stream with `UNAVAILABLE`; the server keeps listening, so clients
    /// can reconnect. Returns how many streams were open.
    pub fn close_all_streams(&self) -> usize {
        self.shared.with(|state| {
            state.close_all(|| {
                Status::unavailable("stream closed by XdsTestServer::close_all_streams")
            })
        })
    }

    /// Sends `response` as it is on every open SotW stream, whatever the streams subscribe to
    /// (for malformed resources, unknown type URLs, duplicate names...). An empty `nonce` is
    /// replaced by a fresh one. The client's answer is classified against that nonce, and
    /// the next snapshot change resends the real state of `response.type_url`. Returns the
    /// number of streams it went to.
    pub fn push_raw(&self, response: DiscoveryResponse) -> usize {
        self.shared.with(|state| state.push_raw(&response))
    }

    /// Stops the server: ends every open stream with `UNAVAILABLE`, stops accepting, and
    /// waits until every connection is closed.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            task.await
                .map_err(ServerError::Task)?
                .map_err(ServerError::Serve)?;
        }
        Ok(())
    }

    fn begin_stop(&mut self) {
        self.shared.with(|state| {
            state.begin_shutdown();
            state.close_all(|| Status::unavailable("the xDS test server is shutting down"));
        });
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for XdsTestServer {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.begin_stop();
        }
    }
}

#[derive(Clone)]
struct Ads {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.serve(request, State::open_stream, State::handle_request)
    }

    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.serve(
            request,
            State::open_delta_stream,
            State::handle_delta_request,
        )
    }
}

/// How the state opens a stream whose responses are `T`s.
type Open<T> = fn(&mut State) -> Result<(u64, outbox::Inbox<T>, oneshot::Receiver<()>), Status>;

impl Ads {
    /// Opens a stream (SotW or delta) and feeds its requests to `handle` in a task.
    fn serve<M: Send + 'static, T>(
        &self,
        request: Request<Streaming<M>>,
        open: Open<T>,
        handle: fn(&mut State, u64, M) -> Result<(), Status>,
    ) -> Result<Response<ResponseStream<T>>, Status> {
        let (id, rx, closed) = self.shared.with(open)?;
        let guard = StreamGuard {
            shared: self.shared.clone(),
            id,
        };
        tokio::spawn(read_requests(
            self.shared.clone(),
            id,
            request.into_inner(),
            closed,
            handle,
        ));
        Ok(Response::new(ResponseStream { rx, _guard: guard }))
    }
}

/// Feeds one stream's requests to the state (through `handle`) until the client, the
/// server or an invalid request ends the stream.
async fn read_requests<M>(
    shared: Arc<Shared>,
    id: u64,
    mut inbound: Streaming<M>,
    mut closed: oneshot::Receiver<()>,
    handle: fn(&mut State, u64, M) -> Result<(), Status>,
) {
    loop {
        let message = tokio::select! {
            // The stream's state was dropped: the server closed it.
            _ = &mut closed => return,
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(request)) => {
                let open = shared.with(|state| match handle(state, id, request) {
                    Ok(()) => true,
                    Err(status) => {
                        state.end_stream(id, status);
                        false
                    }
                });
                if !open {
                    return;
                }
            }
            // The client half-closed or reset the stream: end ours (with OK) as well.
            Ok(None) | Err(_) => {
                shared.with(|state| state.remove_stream(id));
                return;
            }
        }
    }
}

/// One stream's responses (SotW or delta), as tonic sends them.
struct ResponseStream<T> {
    rx: outbox::Inbox<T>,
    _guard: StreamGuard,
}

impl<T> Stream for ResponseStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

/// Forgets the stream when tonic drops its responses (the client went away).
struct StreamGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared.with(|state| state.remove_stream(self.id));
    }
}

#[cfg(test)]
mod tests;
