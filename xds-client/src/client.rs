//! The xDS client runtime: one tokio task that owns the [`AdsState`], drives it over an ADS
//! stream, reconnects with backoff, falls back through the configured servers, and fans
//! resource updates out to watchers.
//!
//! Server choice follows gRFC A71: the servers are tried in order. The client moves on to
//! the next server only while some watched resource has never been received — when every
//! watched resource is cached it keeps retrying the current server with backoff, so a
//! control-plane restart cannot swap the config. While it runs on a fallback server it
//! probes the primary at each backoff step, and moves back as soon as the primary answers.
//! Through all of it the cache keeps serving: nothing a watcher has is withdrawn because a
//! server went away. Each server is spoken to in its bootstrap `api_type`: SotW, or delta
//! for `"DELTA_GRPC"`, so a primary and its fallback may differ.
//!
//! A server that cannot be reached within the connect deadline, or whose HTTP/2 connection
//! never starts, counts as failed for fallback like a refused connection; every reconnect,
//! including one after a stream that got responses, waits its backoff step (the rules are
//! in [`transport`](crate::transport)). The latest failure is
//! [`XdsClient::last_error`], besides a warning in the log and A78's
//! `grpc.xds_client.server_failure`. A target not ready by its deadline says why
//! ([`NotReady`]): the servers' failures while none is reachable, else the resources it
//! still misses.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;

use crate::bootstrap::Bootstrap;
use crate::fail_static::{FailStatic, Loaded, Persist, Retired, SnapshotError};
use crate::protocol::{AdsState, ProtocolConfig, ResourceFailure, ResourceStatus, XdsEvent};
use crate::resource::{Resource, ResourceType};
use crate::transport::{
    AdsRequests, AdsResponse, AdsResponses, Backoff, CredentialsError, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE, Dialer, TransportError, ads_channel, open_stream,
};
use crate::watch::{ResourceKey, TargetError, TargetState, XdsConfig, resolve};

mod metrics;
mod not_ready;
mod server_watch;
use metrics::XdsMetrics;
pub use not_ready::{MissingResource, NotReady};
pub use server_watch::{RouteUnavailable, ServerConfig, ServerState, ServerWatch};

/// What a watcher currently knows of one resource.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum WatchState {
    /// Nothing received yet.
    #[default]
    Pending,
    /// The current valid value.
    Ready(Resource),
    /// The latest value was rejected; `last_good` is still the one to use (`None` when there
    /// was none, or when the server's `fail_on_data_errors` feature dropped it).
    Invalid {
        /// The last valid value, if there ever was one.
        last_good: Option<Resource>,
        /// Why the latest value was rejected.
        error: ResourceFailure,
    },
    /// The resource does not exist (deleted, reported missing, or timed out).
    DoesNotExist,
}

impl WatchState {
    /// The value to use now, if any: the current one, or the last good one after a
    /// rejected update.
    pub fn resource(&self) -> Option<&Resource> {
        match self {
            Self::Ready(r) => Some(r),
            Self::Invalid { last_good, .. } => last_good.as_ref(),
            Self::Pending | Self::DoesNotExist => None,
        }
    }
}

/// A live subscription to one resource. Dropping it unsubscribes (when it was the last
/// watcher of that resource).
#[derive(Debug)]
pub struct ResourceWatch {
    key: (ResourceType, String),
    rx: watch::Receiver<WatchState>,
    commands: mpsc::UnboundedSender<Command>,
}

impl ResourceWatch {
    /// The current state.
    pub fn current(&self) -> WatchState {
        self.rx.borrow().clone()
    }

    /// Wait for the next change, then return the new state. `None` once the client stopped.
    pub async fn changed(&mut self) -> Option<WatchState> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Wait until the state is no longer [`WatchState::Pending`].
    pub async fn settled(&mut self) -> Option<WatchState> {
        let state = self
            .rx
            .wait_for(|s| !matches!(s, WatchState::Pending))
            .await
            .ok()?;
        Some(state.clone())
    }
}

impl Drop for ResourceWatch {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unwatch(self.key.clone()));
    }
}

/// A live watch of one target's complete config (gRFC A74). Dropping it releases the
/// target's subscriptions.
#[derive(Debug)]
pub struct TargetWatch {
    key: (String, String),
    rx: watch::Receiver<TargetState>,
    commands: mpsc::UnboundedSender<Command>,
}

/// Why [`TargetWatch::ready`] returned no config.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadyError {
    /// The target resolved to an error (it does not exist, or is invalid).
    #[error(transparent)]
    Target(#[from] TargetError),
    /// No complete config arrived within the deadline; `cause` says why: the xDS servers
    /// could not be reached, or which resources are missing.
    #[error("no complete xDS config for {listener} within {timeout:?}: {cause}")]
    Timeout {
        /// The listener watched.
        listener: String,
        /// How long we waited.
        timeout: Duration,
        /// Why the config was not complete.
        #[source]
        cause: NotReady,
    },
    /// The client stopped.
    #[error("the xDS client stopped")]
    Stopped,
}

impl TargetWatch {
    /// The current state.
    pub fn current(&self) -> TargetState {
        self.rx.borrow().clone()
    }

    /// Wait for the next change, then return the new state. `None` once the client stopped.
    pub async fn changed(&mut self) -> Option<TargetState> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Wait, at most `timeout`, for the first complete config or an error. After the
    /// timeout, the error says why the config is not complete ([`NotReady`]).
    pub async fn ready(&mut self, timeout: Duration) -> Result<Arc<XdsConfig>, ReadyError> {
        // The state is read out before the next await: its borrow of the watch is not Send.
        let settled = match tokio::time::timeout(
            timeout,
            self.rx.wait_for(|s| !matches!(s, TargetState::Pending)),
        )
        .await
        {
            Err(_) => None,
            Ok(Err(_)) => Some(Err(ReadyError::Stopped)),
            Ok(Ok(state)) => Some(match &*state {
                TargetState::Ready(config) => Ok(config.clone()),
                TargetState::Error(e) => Err(e.clone().into()),
                TargetState::Pending => unreachable!("waited for a settled state"),
            }),
        };
        if let Some(settled) = settled {
            return settled;
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::NotReady(self.key.clone(), tx));
        match rx.await {
            Ok(cause) => Err(ReadyError::Timeout {
                listener: self.key.0.clone(),
                timeout,
                cause,
            }),
            Err(_) => Err(ReadyError::Stopped),
        }
    }
}

/// Adapters await [`TargetWatch::ready`] inside tasks and boxed `Send` futures.
const _: () = {
    fn send<T: Send>(_: T) {}
    #[allow(dead_code)]
    fn ready_is_send(watch: &mut TargetWatch) {
        send(watch.ready(Duration::ZERO));
    }
};

impl Drop for TargetWatch {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::UnwatchTarget(self.key.clone()));
    }
}

/// One row of the client's config dump: its view of one resource (the CSDS shape).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResourceDump {
    /// The resource's type URL.
    #[serde(rename = "type")]
    pub type_url: &'static str,
    /// The resource's name.
    pub name: String,
    /// The version of the response that last delivered a valid value.
    pub version: Option<String>,
    /// REQUESTED, ACKED, NACKED or DOES_NOT_EXIST.
    pub status: ResourceStatus,
    /// Why the last value was rejected, if it was.
    pub error: Option<String>,
    /// For a resource requested and never answered while no xDS server has an ADS stream
    /// open: each server's latest failure, with its cause (connection refused, a TLS
    /// alert, ...). Not a CSDS field (CSDS's `error_state` is for NACKs only); left out of
    /// the JSON when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport_error: Option<String>,
    /// When the status last changed, as seconds since the Unix epoch.
    pub last_updated: Option<f64>,
    /// Fields set in the resource that meshwork does not implement yet.
    pub unsupported_fields: Vec<String>,
    /// The value came from the fail-static snapshot of an earlier run
    /// ([`fail_static`](crate::fail_static)) and no server has replaced it yet. Left out of
    /// the JSON when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_snapshot: bool,
    /// The valid value in use, as the server sent it (CSDS's `xds_config`). Not in the JSON:
    /// the fields above say what it means to meshwork.
    #[serde(skip)]
    pub resource: Option<Any>,
}

/// Which server the client is talking to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Connection {
    /// No stream is open.
    Disconnected,
    /// A stream is open to the server at this index of the configured list.
    Connected {
        /// The index in the configured server list (0 is the primary).
        server: usize,
        /// The server's URI.
        uri: String,
    },
}

/// Builds an [`XdsClient`] from a bootstrap, with overrides for what the bootstrap does not
/// say.
#[derive(Debug)]
pub struct XdsClientBuilder {
    bootstrap: Arc<Bootstrap>,
    servers: Vec<Dialer>,
    config: ProtocolConfig,
    backoff: Backoff,
    connect_timeout: Duration,
    max_message_size: usize,
    meter: Option<opentelemetry::metrics::Meter>,
    metrics_target: String,
    fail_static: Option<FailStatic>,
}

impl XdsClientBuilder {
    /// Keep the last good configuration on disk and serve from it when a restart finds
    /// every server unreachable ([`fail_static`](crate::fail_static) says how). Default:
    /// the directory named by `MESHWORK_XDS_SNAPSHOT_DIR`, if set; otherwise off.
    pub fn fail_static(mut self, fail_static: FailStatic) -> Self {
        self.fail_static = Some(fail_static);
        self
    }

    /// No fail-static snapshot, even if `MESHWORK_XDS_SNAPSHOT_DIR` names a directory.
    pub fn without_fail_static(mut self) -> Self {
        self.fail_static = None;
        self
    }

    /// The meter for the client's metrics (gRFC A78: `grpc.xds_client.connected`,
    /// `.server_failure`, `.resource_updates_valid`, `.resource_updates_invalid`,
    /// `.resources`). Default: OpenTelemetry's global meter as it is when the client starts
    /// (a no-op until the application installs a provider).
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// The `grpc.target` attribute of the client's metrics (gRFC A78 uses the channel
    /// target, or `#server` for a server's client). Default: empty.
    pub fn metrics_target(mut self, target: impl Into<String>) -> Self {
        self.metrics_target = target.into();
        self
    }

    /// The resource-does-not-exist timeout (default 15 s, gRFC A57).
    pub fn does_not_exist_timeout(mut self, timeout: Duration) -> Self {
        self.config.does_not_exist_timeout = timeout;
        self
    }

    /// Keep LDS/CDS resources that the server leaves out (the server feature
    /// `ignore_resource_deletion`, gRFC A53). Default: deletions are honoured.
    pub fn ignore_resource_deletion(mut self, ignore: bool) -> Self {
        self.config.ignore_resource_deletion = ignore;
        self
    }

    /// Drop a cached resource when an update of it is rejected (NACKed, or reported
    /// `PERMISSION_DENIED` by the server), so the calls that depend on it fail at once (the
    /// server feature `fail_on_data_errors`, gRFC A88). Default: the last good value stays in
    /// use.
    pub fn fail_on_data_errors(mut self, fail: bool) -> Self {
        self.config.fail_on_data_errors = fail;
        self
    }

    /// Reconnect backoff (default: 1 s growing by 1.6x to 60 s, plus up to 100% jitter;
    /// `min` is raised to 100 ms and `max` kept within `min..=60 s`). A stream that got a
    /// response resets it, unless it ended on a response over the message limit, and the
    /// reconnect still waits its first step.
    // Hidden with `Backoff`: for tests that must reconnect fast.
    #[doc(hidden)]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long reaching a server may take: dialing, TLS, and the first bytes of its HTTP/2
    /// connection. A server that misses it counts as unreachable, and the client moves on
    /// to the next server when it may fall back (gRFC A71). Default: 20 s, gRPC's minimum
    /// connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest ADS response accepted, in bytes. A response announcing more is refused
    /// from its length prefix, before any of it is buffered; the stream fails and the
    /// client reconnects with backoff while its cache keeps serving. Default: 4 MiB, the
    /// limit of gRPC's xDS clients (gRFC A70); raise it
    /// for a control plane that sends larger responses.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Start the client's task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(self) -> XdsClient {
        let (commands, rx) = mpsc::unbounded_channel();
        let (connection_tx, connection) = watch::channel(Connection::Disconnected);
        let (last_error_tx, last_error) = watch::channel(None);
        let meter = self.meter.unwrap_or_else(|| {
            opentelemetry::global::meter_with_scope(
                opentelemetry::InstrumentationScope::builder("meshwork")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            )
        });
        let server_errors = vec![None; self.servers.len()];
        let metrics = XdsMetrics::new(&meter, self.metrics_target);
        let persist = self.fail_static.map(|config| {
            let servers = crate::fail_static::server_uris(&self.bootstrap);
            let node_id = self.config.node.id.clone();
            Persist::start(config, node_id, servers, metrics.snapshot_writes())
        });
        let worker = Worker {
            metrics,
            startup: match &persist {
                // Read while the first server is tried, for when none answers.
                Some(persist) => Startup::Reading(persist.load()),
                None => Startup::Done,
            },
            persist,
            save_at: None,
            last_save: None,
            retired: HashMap::new(),
            retired_bytes: 0,
            silence: false,
            answered: false,
            server_uri: String::new(),
            ads: AdsState::new(self.config),
            servers: self.servers,
            backoff: self.backoff.clamped(),
            connect_timeout: self.connect_timeout,
            max_message_size: self.max_message_size,
            last_error: last_error_tx,
            server_errors,
            commands: rx,
            watchers: HashMap::new(),
            targets: HashMap::new(),
            subscriptions: HashMap::new(),
            connection: connection_tx,
            #[cfg(test)]
            walks: 0,
        };
        let runtime = tokio::runtime::Handle::current();
        runtime.spawn(worker.run());
        XdsClient {
            commands,
            connection,
            last_error,
            bootstrap: self.bootstrap,
            runtime,
        }
    }
}

/// A handle to the xDS client task; cheap to clone. The task stops when the last handle and
/// the last watch are dropped.
#[derive(Debug, Clone)]
pub struct XdsClient {
    commands: mpsc::UnboundedSender<Command>,
    connection: watch::Receiver<Connection>,
    last_error: watch::Receiver<Option<TransportError>>,
    bootstrap: Arc<Bootstrap>,
    /// Where the client runs, for the tasks of its server watches.
    runtime: tokio::runtime::Handle,
}

#[derive(Debug)]
enum Command {
    Watch(
        (ResourceType, String),
        oneshot::Sender<watch::Receiver<WatchState>>,
    ),
    Unwatch((ResourceType, String)),
    WatchTarget(
        (String, String),
        oneshot::Sender<watch::Receiver<TargetState>>,
    ),
    UnwatchTarget((String, String)),
    /// Why the target is not complete.
    NotReady((String, String), oneshot::Sender<NotReady>),
    /// Write the fail-static snapshot now.
    SaveSnapshot(crate::fail_static::SaveReply),
    Dump(oneshot::Sender<Vec<ResourceDump>>),
}

impl XdsClient {
    /// A builder for a client configured by `bootstrap`: its top-level `xds_servers` in
    /// fallback order, its node, and the primary server's `ignore_resource_deletion` and
    /// `fail_on_data_errors` features. Fails if a server's TLS credential files cannot be loaded.
    pub fn builder(bootstrap: &Bootstrap) -> Result<XdsClientBuilder, CredentialsError> {
        let servers = bootstrap
            .xds_servers()
            .iter()
            .map(Dialer::new)
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = ProtocolConfig::new(bootstrap.node().to_proto());
        config.ignore_resource_deletion = bootstrap.xds_servers()[0].ignore_resource_deletion();
        config.fail_on_data_errors = bootstrap.xds_servers()[0].fail_on_data_errors();
        Ok(XdsClientBuilder {
            bootstrap: Arc::new(bootstrap.clone()),
            servers,
            config,
            backoff: Backoff::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            meter: None,
            metrics_target: String::new(),
            fail_static: FailStatic::from_env(),
        })
    }

    /// Start a client configured by `bootstrap` with the defaults.
    pub fn start(bootstrap: &Bootstrap) -> Result<Self, CredentialsError> {
        Ok(Self::builder(bootstrap)?.start())
    }

    /// Watch one resource. The watch sees the cached value at once if there is one.
    pub async fn watch(&self, resource_type: ResourceType, name: &str) -> ResourceWatch {
        let key = (resource_type, name.to_string());
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Watch(key.clone(), tx));
        // Made before the wait, so that a caller that gives up waiting (the future dropped)
        // unsubscribes: the worker counts the subscription as soon as it reads the command.
        let mut watch = ResourceWatch {
            key,
            rx: watch::channel(WatchState::Pending).1,
            commands: self.commands.clone(),
        };
        // If the task is gone the watch stays Pending forever, which `changed` reports.
        if let Ok(rx) = rx.await {
            watch.rx = rx;
        }
        watch
    }

    /// Watch the complete config of the listener `listener`, choosing the virtual host by
    /// `authority` (for `xds:///greeter:50051`, both are `greeter:50051`).
    pub async fn watch_target(&self, listener: &str, authority: &str) -> TargetWatch {
        let key = (listener.to_string(), authority.to_string());
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::WatchTarget(key.clone(), tx));
        // As in `watch`: a dropped future releases the target.
        let mut target = TargetWatch {
            key,
            rx: watch::channel(TargetState::Pending).1,
            commands: self.commands.clone(),
        };
        if let Ok(rx) = rx.await {
            target.rx = rx;
        }
        target
    }

    /// The client's view of every resource it knows of.
    pub async fn dump(&self) -> Vec<ResourceDump> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Dump(tx));
        rx.await.unwrap_or_default()
    }

    /// The bootstrap this client was built from (for listener name templates and
    /// authorities: [`Bootstrap::listener_resource_name_for`]).
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    /// Which server the client is connected to, as a watch.
    pub fn connection(&self) -> watch::Receiver<Connection> {
        self.connection.clone()
    }

    /// Write the fail-static snapshot ([`fail_static`](crate::fail_static)) now, without
    /// waiting for the next periodic write, and wait until it is on disk: for a graceful
    /// shutdown, or a short-lived process. The file's path, or `None` when no snapshot is
    /// configured or values from a snapshot are still in use (nothing new to write).
    ///
    /// Nothing is written before a server has answered (the file on disk is then the best
    /// configuration there is). The wait is bounded: a write that does not finish within
    /// 10 s (a hung disk) is [`SnapshotError::TimedOut`], and may still finish later.
    pub async fn save_snapshot(&self) -> Result<Option<std::path::PathBuf>, SnapshotError> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::SaveSnapshot(tx)).is_err() {
            return Ok(None);
        }
        let after = crate::fail_static::SAVE_TIMEOUT;
        match tokio::time::timeout(after, rx).await {
            Ok(reply) => reply.unwrap_or(Ok(None)),
            Err(_) => Err(SnapshotError::TimedOut { after }),
        }
    }

    /// The latest failure to reach a server or to keep an ADS stream, if there was one. It
    /// stays until the next failure: a later healthy stream does not clear it.
    pub fn last_error(&self) -> Option<TransportError> {
        self.last_error.borrow().clone()
    }
}

struct Watcher {
    tx: watch::Sender<WatchState>,
    count: usize,
}

struct Target {
    tx: watch::Sender<TargetState>,
    count: usize,
    needs: BTreeSet<ResourceKey>,
}

struct Worker {
    ads: AdsState,
    /// The fail-static snapshot, when configured.
    persist: Option<Persist>,
    /// The snapshot read at start, until it is served or no longer needed.
    startup: Startup,
    /// When to hand the cache to the snapshot writer (a change is pending).
    save_at: Option<TokioInstant>,
    /// When the cache was last handed to the writer.
    last_save: Option<TokioInstant>,
    /// Resources no longer watched, kept in the snapshots written for a while
    /// ([`RETIRED_FOR`](crate::fail_static::RETIRED_FOR)).
    retired: HashMap<ResourceKey, Retired>,
    /// The bytes `retired` holds (bounded by the snapshot's `max_bytes`).
    retired_bytes: usize,
    /// A does-not-exist timer fired before any server answered: serve the snapshot as
    /// soon as it is read.
    silence: bool,
    /// Whether any server has answered since the client started.
    answered: bool,
    servers: Vec<Dialer>,
    backoff: Backoff,
    connect_timeout: Duration,
    max_message_size: usize,
    last_error: watch::Sender<Option<TransportError>>,
    /// Each server's latest failure since a stream to it last opened.
    server_errors: Vec<Option<TransportError>>,
    commands: mpsc::UnboundedReceiver<Command>,
    watchers: HashMap<ResourceKey, Watcher>,
    targets: HashMap<(String, String), Target>,
    /// Holders of each subscription: resource watches and targets that need it.
    subscriptions: HashMap<ResourceKey, usize>,
    connection: watch::Sender<Connection>,
    metrics: XdsMetrics,
    /// The server of the current (or last) stream, for the metrics' `grpc.xds.server`.
    server_uri: String,
    /// Target walks so far.
    #[cfg(test)]
    walks: usize,
}

/// The fail-static snapshot read at start.
enum Startup {
    /// Being read and checked on a blocking thread.
    Reading(tokio::task::JoinHandle<Result<Loaded, SnapshotError>>),
    /// Read and valid, kept until it is served or every watched resource has a server's
    /// answer.
    Ready(Loaded),
    /// Served, refused, not needed, or not configured.
    Done,
}

/// Why a stream ended.
enum StreamEnd {
    /// The server closed it or it broke; `answered` says whether any response came and
    /// the stream did not end on one too large to take (which resets the backoff).
    Closed { answered: bool },
    /// A higher-priority server is reachable again.
    SwitchTo(usize),
    /// Every handle is gone.
    Shutdown,
}

fn now() -> Instant {
    TokioInstant::now().into_std()
}

/// `delay` from now. Delays are clamped ([`Backoff`]), but a panic here would end the
/// client's task without a word, so an overflow waits a day instead.
fn after(delay: Duration) -> TokioInstant {
    let now = TokioInstant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(24 * 60 * 60))
}

impl Worker {
    async fn run(mut self) {
        self.run_streams().await;
        self.finish();
    }

    /// Connect, fall back, reconnect, until every handle is gone.
    async fn run_streams(&mut self) {
        let mut delays = self.backoff.delays();
        let mut server = 0;
        loop {
            let (tx, rx) = ads_channel(self.servers[server].is_delta());
            let sid = if self.servers[server].is_delta() {
                self.ads.on_delta_stream_connecting()
            } else {
                self.ads.on_stream_connecting()
            };
            self.flush(&tx);
            let address = self.servers[server].clone();
            let uri = address.uri().to_string();
            self.server_uri.clone_from(&uri);
            let (connect_timeout, limit) = (self.connect_timeout, self.max_message_size);
            let end = match self.serve(address.connect(connect_timeout), &tx).await {
                None => StreamEnd::Shutdown,
                Some(Err(error)) => {
                    self.failed(server, error);
                    self.metrics.server_failure(&uri);
                    StreamEnd::Closed { answered: false }
                }
                Some(Ok(channel)) => {
                    // The requests queued so far go out now: their timers start (gRFC A57).
                    self.ads.on_stream_connected(sid, now());
                    match self.serve(open_stream(channel, rx, limit), &tx).await {
                        None => StreamEnd::Shutdown,
                        Some(Err(status)) => {
                            self.failed(server, TransportError::stream(&uri, status, limit));
                            self.metrics.server_failure(&uri);
                            StreamEnd::Closed { answered: false }
                        }
                        Some(Ok(responses)) => {
                            tracing::info!(server = %uri, "ADS stream open");
                            if let Some(error) = self.server_errors.get_mut(server) {
                                *error = None;
                            }
                            self.connection.send_replace(Connection::Connected {
                                server,
                                uri: uri.clone(),
                            });
                            self.metrics.connected(&uri, true);
                            let end = self.stream(sid, &tx, responses, server).await;
                            self.metrics.connected(&uri, false);
                            if matches!(end, StreamEnd::Closed { answered: false }) {
                                self.metrics.server_failure(&uri);
                            }
                            end
                        }
                    }
                }
            };
            self.ads.on_stream_closed(sid);
            self.connection.send_replace(Connection::Disconnected);
            match end {
                StreamEnd::Shutdown => return,
                StreamEnd::SwitchTo(primary) => {
                    tracing::info!(server = %self.servers[primary].uri(), "moving back to a higher-priority xDS server");
                    server = primary;
                    delays = self.backoff.delays();
                    continue;
                }
                StreamEnd::Closed { answered: true } => {
                    // A server that answered was healthy: the backoff starts over, primary
                    // first, but the reconnect still waits its first step (grpc core's
                    // XdsClient), so a server that answers and closes cannot make us spin.
                    delays = self.backoff.delays();
                    server = 0;
                }
                StreamEnd::Closed { answered: false } => {
                    // Fall back only while something watched was never received (gRFC A71).
                    let next = server + 1;
                    if next < self.servers.len() && self.ads.has_missing_resources() {
                        server = next;
                        continue;
                    }
                    server = 0;
                }
            }
            // Every server it would try failed: serve what the snapshot has for the types no
            // server answered (all of them, unless one answered in part and died).
            if matches!(self.startup, Startup::Reading(_))
                && let Startup::Reading(mut load) =
                    std::mem::replace(&mut self.startup, Startup::Done)
            {
                let bounded = tokio::time::timeout(crate::fail_static::READ_TIMEOUT, &mut load);
                match self.serve(bounded, &tx).await {
                    None => return,
                    Some(Ok(loaded)) => self.snapshot_read(loaded),
                    Some(Err(_)) => {
                        tracing::warn!(
                            "the fail-static snapshot is still being read after {:?}: trying the servers again first",
                            crate::fail_static::READ_TIMEOUT
                        );
                        self.startup = Startup::Reading(load);
                    }
                }
            }
            self.serve_snapshot();
            let delay = delays.next().unwrap_or(self.backoff.max);
            if !self.idle(delay).await {
                return;
            }
        }
    }

    /// Take the snapshot's read once it is done, and say how it went (log and
    /// `meshwork.xds.snapshot.loads`), served or not: a broken snapshot is reported at start,
    /// not on the day it is needed.
    fn poll_snapshot(&mut self) {
        use futures_util::FutureExt as _;
        if let Startup::Reading(load) = &mut self.startup
            && load.is_finished()
            && let Some(loaded) = load.now_or_never()
        {
            self.snapshot_read(loaded);
        }
    }

    fn snapshot_read(
        &mut self,
        loaded: Result<Result<Loaded, SnapshotError>, tokio::task::JoinError>,
    ) {
        self.startup = match loaded {
            Ok(Ok(loaded)) => {
                let age = SystemTime::now()
                    .duration_since(loaded.written_at)
                    .unwrap_or_default();
                tracing::info!(
                    resources = loaded.seeds.len(),
                    age_secs = age.as_secs(),
                    path = %loaded.path.display(),
                    "fail-static snapshot read: served if no xDS server answers"
                );
                self.metrics.snapshot_loaded("ok");
                Startup::Ready(loaded)
            }
            Ok(Err(error @ SnapshotError::Missing { .. })) => {
                tracing::info!(error = %crate::ErrorChain(&error), "no fail-static snapshot to serve");
                self.metrics.snapshot_loaded(error.kind());
                Startup::Done
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %crate::ErrorChain(&error), "fail-static snapshot refused");
                self.metrics.snapshot_loaded(error.kind());
                Startup::Done
            }
            Err(error) => {
                tracing::warn!(%error, "reading the fail-static snapshot failed");
                self.metrics.snapshot_loaded("panic");
                Startup::Done
            }
        };
        // Once every watched resource has a server's answer the snapshot is not needed.
        self.release_snapshot();
    }

    /// Serve the snapshot, if it was read and is still wanted.
    fn serve_snapshot(&mut self) {
        if !matches!(self.startup, Startup::Ready(_)) {
            return;
        }
        let Startup::Ready(loaded) = std::mem::replace(&mut self.startup, Startup::Done) else {
            return;
        };
        let age = SystemTime::now()
            .duration_since(loaded.written_at)
            .unwrap_or_default();
        let path = loaded.path.display().to_string();
        let taken = self.ads.seed(loaded.seeds, now());
        if taken == 0 {
            tracing::debug!(%path, "fail-static snapshot not served: servers answered every type it has");
            return;
        }
        tracing::warn!(
            resources = taken,
            age_secs = age.as_secs(),
            %path,
            "xDS servers unreachable or silent: serving the fail-static snapshot until one answers"
        );
        self.metrics.snapshot_loaded("served");
        self.deliver();
    }

    /// Drop the snapshot read at start once a server has answered and every watched
    /// resource has a server's value: it is no longer needed (and its memory is freed).
    fn release_snapshot(&mut self) {
        if matches!(self.startup, Startup::Ready(_))
            && self.answered
            && !self.ads.has_missing_resources()
        {
            tracing::debug!("fail-static snapshot not needed: the xDS server answered");
            self.startup = Startup::Done;
        }
    }

    /// The does-not-exist timers due now fire. A control plane that holds the requests
    /// without a word (go-control-plane without a snapshot for the node) is one that fails
    /// too: if no server has answered anything, the snapshot is served.
    fn on_timeout(&mut self) {
        self.ads.handle_timeout(now());
        if !self.answered {
            self.silence = true;
            self.poll_snapshot();
            self.serve_snapshot();
        }
    }

    /// The snapshot's read finished (a `select!` branch, so its outcome is reported at once
    /// and a silent control plane's snapshot is served even if the read outlasted the
    /// timers).
    fn on_snapshot_read(
        &mut self,
        loaded: Result<Result<Loaded, SnapshotError>, tokio::task::JoinError>,
    ) {
        self.snapshot_read(loaded);
        if self.silence && !self.answered {
            self.serve_snapshot();
        }
    }

    /// A response arrived: the snapshot is written after it (1 s after a quiet period, at
    /// most once per write interval while changes keep coming).
    fn schedule_save(&mut self) {
        let Some(persist) = self.persist.as_ref().filter(|p| !p.is_read_only()) else {
            return;
        };
        if self.save_at.is_none() {
            let soon = after(crate::fail_static::WRITE_DELAY);
            let paced = self
                .last_save
                .and_then(|last| last.checked_add(persist.write_interval()));
            self.save_at = Some(paced.map_or(soon, |paced| paced.max(soon)));
        }
    }

    /// Hand the cache to the snapshot writer, or try again at the write pace while values
    /// of a snapshot are in use in a type no server has answered. Nothing is written
    /// before a server has answered: the file on disk is then the best configuration there
    /// is, and what the client holds is at most that file's.
    fn save(&mut self) {
        self.save_at = None;
        if self.persist.is_none() || !self.answered {
            return;
        }
        let at = now();
        self.prune_retired(at);
        let Some(persist) = &self.persist else {
            return;
        };
        if persist.save(&self.ads, &self.retired, at, None) {
            self.last_save = Some(TokioInstant::now());
        } else if !persist.is_read_only() {
            self.save_at = Some(after(persist.write_interval()));
        }
    }

    /// Forget the retired resources older than [`RETIRED_FOR`](crate::fail_static::RETIRED_FOR).
    fn prune_retired(&mut self, at: Instant) {
        let mut bytes = 0;
        self.retired.retain(|_, kept| {
            let fresh = at.saturating_duration_since(kept.at) < crate::fail_static::RETIRED_FOR;
            bytes += if fresh { kept.size() } else { 0 };
            fresh
        });
        self.retired_bytes = bytes;
    }

    /// The client is stopping: a change not yet handed to the snapshot writer goes now.
    fn finish(&mut self) {
        if self.save_at.is_some() {
            self.save();
        }
    }

    /// Record and log why the server at `server` could not be reached or its stream ended.
    fn failed(&mut self, server: usize, error: TransportError) {
        tracing::warn!(server = %error.uri(), error = %crate::ErrorChain(&error), "xDS server failed");
        if let Some(slot) = self.server_errors.get_mut(server) {
            *slot = Some(error.clone());
        }
        self.last_error.send_replace(Some(error));
    }

    /// The servers' latest failures while no ADS stream is open; `None` while one is.
    fn unreachable(&self) -> Option<Vec<TransportError>> {
        matches!(*self.connection.borrow(), Connection::Disconnected)
            .then(|| self.server_errors.iter().flatten().cloned().collect())
    }

    /// Drive `attempt` while serving commands and the does-not-exist timers. `None` on
    /// shutdown.
    async fn serve<F: std::future::Future>(
        &mut self,
        attempt: F,
        tx: &AdsRequests,
    ) -> Option<F::Output> {
        tokio::pin!(attempt);
        loop {
            let timer = self.ads.poll_timeout().map(TokioInstant::from_std);
            tokio::select! {
                r = &mut attempt => return Some(r),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd, Some(tx)),
                    None => return None,
                },
                _ = sleep_until_opt(timer) => {
                    self.on_timeout();
                    self.deliver();
                    self.flush(tx);
                }
                _ = sleep_until_opt(self.save_at) => self.save(),
                loaded = read_done(&mut self.startup) => self.on_snapshot_read(loaded),
            }
        }
    }

    /// Wait out a backoff delay while still serving commands. False on shutdown.
    async fn idle(&mut self, delay: Duration) -> bool {
        let until = after(delay);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd, None),
                    None => return false,
                },
                _ = sleep_until_opt(self.save_at) => self.save(),
            }
        }
    }

    async fn stream(
        &mut self,
        sid: crate::protocol::StreamId,
        tx: &AdsRequests,
        mut responses: AdsResponses,
        server: usize,
    ) -> StreamEnd {
        let mut answered = false;
        // On a fallback server, probe the primary in the background at backoff intervals.
        let mut probe_delays = self.backoff.delays();
        let mut probe_at = after(probe_delays.next().unwrap_or(self.backoff.max));
        let mut probe: Option<tokio::task::JoinHandle<bool>> = None;
        loop {
            let timer = self.ads.poll_timeout().map(TokioInstant::from_std);
            tokio::select! {
                msg = responses.message() => match msg {
                    Ok(Some(response)) => {
                        answered = true;
                        self.answered = true;
                        match response {
                            AdsResponse::Sotw(r) => self.ads.on_response(sid, r, now()),
                            AdsResponse::Delta(r) => self.ads.on_delta_response(sid, r, now()),
                        }
                        self.schedule_save();
                    }
                    Ok(None) => {
                        self.failed(server, TransportError::closed(&self.server_uri));
                        return StreamEnd::Closed { answered };
                    }
                    Err(status) => {
                        let error = TransportError::stream(&self.server_uri, status, self.max_message_size);
                        // The server will send the same oversized response on the next stream:
                        // the responses before it do not make the server healthy, or the
                        // backoff would start over on every stream and the client reconnect
                        // at its first step forever.
                        let answered = answered && !error.is_message_too_large();
                        self.failed(server, error);
                        return StreamEnd::Closed { answered };
                    }
                },
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd, Some(tx)),
                    None => return StreamEnd::Shutdown,
                },
                _ = sleep_until_opt(timer) => self.on_timeout(),
                _ = sleep_until_opt(self.save_at) => self.save(),
                loaded = read_done(&mut self.startup) => self.on_snapshot_read(loaded),
                _ = tokio::time::sleep_until(probe_at), if server > 0 && probe.is_none() => {
                    let primary = self.servers[0].clone();
                    let timeout = self.connect_timeout;
                    probe = Some(tokio::spawn(async move { primary.connect(timeout).await.is_ok() }));
                }
                reachable = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                    probe = None;
                    if reachable.unwrap_or(false) {
                        return StreamEnd::SwitchTo(0);
                    }
                    probe_at = after(probe_delays.next().unwrap_or(self.backoff.max));
                }
            }
            self.deliver();
            self.flush(tx);
            if !matches!(self.startup, Startup::Done) {
                self.poll_snapshot();
                self.release_snapshot();
            }
            // Settled on a server's answers: the values of a snapshot waiting for a
            // subscription are not needed (and would keep the next writes back).
            if self.answered && self.ads.has_pooled_seeds() && !self.ads.has_missing_resources() {
                self.ads.drop_pooled_seeds();
            }
        }
    }

    fn flush(&mut self, tx: &AdsRequests) {
        let now = now();
        match tx {
            AdsRequests::Sotw(tx) => {
                while let Some(request) = self.ads.poll_request(now) {
                    if tx.send(request).is_err() {
                        return;
                    }
                }
            }
            AdsRequests::Delta(tx) => {
                while let Some(request) = self.ads.poll_delta_request(now) {
                    if tx.send(request).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Hand the protocol's events to the resource watchers, in order, then walk each target
    /// they touched once. Walking per event would cost a CDS push of E clusters E walks of
    /// the whole graph for every target routing to them.
    fn deliver(&mut self) {
        let mut any = false;
        // A walk's subscriptions can raise events of their own (a cached resource newly
        // needed), so the two steps run until neither has anything left.
        loop {
            let mut affected: Vec<(String, String)> = Vec::new();
            let mut queued: HashSet<(String, String)> = HashSet::new();
            while let Some(event) = self.ads.poll_event() {
                any = true;
                let key = self.publish(event);
                for (target, t) in &self.targets {
                    if t.needs.contains(&key) && queued.insert(target.clone()) {
                        affected.push(target.clone());
                    }
                }
            }
            if affected.is_empty() {
                break;
            }
            for target in affected {
                self.resolve_target(&target);
            }
        }
        if any || self.metrics.serving_snapshot() {
            self.metrics.cache(self.ads.resources());
        }
    }

    /// Record one event in the metrics and send it to its resource's watchers; returns the
    /// resource it is about.
    fn publish(&mut self, event: XdsEvent) -> ResourceKey {
        let (key, state) = match event {
            XdsEvent::Changed(resource) => {
                if !self
                    .ads
                    .is_from_snapshot(resource.resource_type(), resource.name())
                {
                    self.metrics
                        .valid(&self.server_uri, resource.resource_type());
                }
                self.metrics
                    .accepted(resource.resource_type(), resource.name());
                (
                    (resource.resource_type(), resource.name().to_string()),
                    WatchState::Ready(resource),
                )
            }
            XdsEvent::Invalid {
                resource_type,
                name,
                error,
            } => {
                self.metrics
                    .invalid(&self.server_uri, resource_type, &name, &error, now());
                let last_good = self.ads.get(resource_type, &name).cloned();
                (
                    (resource_type, name),
                    WatchState::Invalid { last_good, error },
                )
            }
            XdsEvent::DoesNotExist {
                resource_type,
                name,
            } => ((resource_type, name), WatchState::DoesNotExist),
        };
        if let Some(w) = self.watchers.get(&key) {
            w.tx.send_replace(state);
        }
        key
    }

    fn acquire(&mut self, key: &ResourceKey) {
        let holders = self.subscriptions.entry(key.clone()).or_default();
        *holders += 1;
        if *holders == 1 {
            if let Some(old) = self.retired.remove(key) {
                self.retired_bytes -= old.size();
            }
            self.ads.subscribe(key.0, &key.1);
        }
    }

    fn release(&mut self, key: &ResourceKey) {
        if let Some(holders) = self.subscriptions.get_mut(key) {
            *holders -= 1;
            if *holders == 0 {
                self.subscriptions.remove(key);
                self.retire(key);
                self.ads.unsubscribe(key.0, &key.1);
            }
        }
    }

    /// Keep a server's value of a resource no longer watched for the next snapshots: a
    /// process that drops its watches while it shuts down still writes their config.
    fn retire(&mut self, key: &ResourceKey) {
        let Some(persist) = self.persist.as_ref().filter(|p| !p.is_read_only()) else {
            return;
        };
        let max_bytes = persist.max_bytes();
        let Some(view) = self.ads.view(key.0, &key.1) else {
            return;
        };
        if view.from_snapshot {
            return;
        }
        if let (Some(raw), Some(version)) = (view.raw, view.version) {
            let kept = Retired {
                raw: raw.clone(),
                version: version.to_owned(),
                at: now(),
            };
            // What is kept for writes is bounded by what a write may hold.
            if self.retired_bytes + kept.size() > max_bytes {
                self.prune_retired(now());
                if self.retired_bytes + kept.size() > max_bytes {
                    return;
                }
            }
            self.retired_bytes += kept.size();
            if let Some(old) = self.retired.insert(key.clone(), kept) {
                self.retired_bytes -= old.size();
            }
        }
    }

    /// Walk a target's graph again, move its subscriptions to what the walk needed, and
    /// publish the new state if it changed.
    fn resolve_target(&mut self, key: &(String, String)) {
        #[cfg(test)]
        {
            self.walks += 1;
        }
        let resolution = resolve(&self.ads, &key.0, &key.1);
        let Some(target) = self.targets.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut target.needs, resolution.needs.clone());
        let state = match resolution.state {
            Ok(Some(config)) => {
                let unchanged =
                    matches!(&*target.tx.borrow(), TargetState::Ready(c) if **c == config);
                (!unchanged).then(|| TargetState::Ready(Arc::new(config)))
            }
            // While a new dependency is on its way, the last complete config keeps serving.
            Ok(None) => matches!(&*target.tx.borrow(), TargetState::Error(_))
                .then_some(TargetState::Pending),
            Err(error) => Some(TargetState::Error(error)),
        };
        if let Some(state) = state {
            target.tx.send_if_modified(|current| {
                let modified = *current != state;
                *current = state;
                modified
            });
        }
        for added in resolution.needs.difference(&old) {
            self.acquire(added);
        }
        for removed in old.difference(&resolution.needs) {
            self.release(removed);
        }
    }

    fn command(&mut self, cmd: Command, tx: Option<&AdsRequests>) {
        match cmd {
            Command::Watch(key, reply) => {
                let w = self.watchers.entry(key.clone()).or_insert_with(|| Watcher {
                    tx: watch::channel(WatchState::Pending).0,
                    count: 0,
                });
                w.count += 1;
                let _ = reply.send(w.tx.subscribe());
                self.acquire(&key);
            }
            Command::Unwatch(key) => {
                if let Some(w) = self.watchers.get_mut(&key) {
                    w.count -= 1;
                    if w.count == 0 {
                        self.watchers.remove(&key);
                    }
                    self.release(&key);
                }
            }
            Command::WatchTarget(key, reply) => {
                let target = self.targets.entry(key.clone()).or_insert_with(|| Target {
                    tx: watch::channel(TargetState::Pending).0,
                    count: 0,
                    needs: BTreeSet::new(),
                });
                target.count += 1;
                let _ = reply.send(target.tx.subscribe());
                if target.count == 1 {
                    self.resolve_target(&key);
                }
            }
            Command::UnwatchTarget(key) => {
                if let Some(target) = self.targets.get_mut(&key) {
                    target.count -= 1;
                    if target.count == 0 {
                        let target = self.targets.remove(&key).expect("present");
                        for need in &target.needs {
                            self.release(need);
                        }
                    }
                }
            }
            Command::NotReady(key, reply) => {
                let needs = self.targets.get(&key).map(|t| &t.needs);
                let cause = NotReady::new(
                    &self.ads,
                    self.unreachable(),
                    &self.server_uri,
                    needs.unwrap_or(&BTreeSet::new()),
                );
                let _ = reply.send(cause);
            }
            Command::Dump(reply) => {
                let _ = reply.send(self.dump());
            }
            Command::SaveSnapshot(reply) => match self.persist.as_ref().filter(|_| self.answered) {
                Some(persist) => {
                    if persist.save(&self.ads, &self.retired, now(), Some(reply)) {
                        self.save_at = None;
                        self.last_save = Some(TokioInstant::now());
                    }
                }
                None => {
                    let _ = reply.send(Ok(None));
                }
            },
        }
        self.deliver();
        if let Some(tx) = tx {
            self.flush(tx);
        }
    }

    fn dump(&self) -> Vec<ResourceDump> {
        let (now_std, now_wall) = (now(), SystemTime::now());
        let transport_error = self
            .unreachable()
            .and_then(|errors| NotReady::transport_error(&errors));
        self.ads
            .resources()
            .map(|view| ResourceDump {
                type_url: view.resource_type.type_url(),
                name: view.name.to_string(),
                version: view.version.map(str::to_string),
                status: view.status,
                error: view.error.map(|e| e.to_string()),
                transport_error: (view.status == ResourceStatus::Requested && view.value.is_none())
                    .then(|| transport_error.clone())
                    .flatten(),
                last_updated: view.last_updated.and_then(|t| {
                    let wall = now_wall.checked_sub(now_std.saturating_duration_since(t))?;
                    Some(
                        wall.duration_since(SystemTime::UNIX_EPOCH)
                            .ok()?
                            .as_secs_f64(),
                    )
                }),
                unsupported_fields: view
                    .value
                    .map(|v| v.unsupported_fields().to_vec())
                    .unwrap_or_default(),
                from_snapshot: view.from_snapshot,
                resource: view.raw.cloned(),
            })
            .collect()
    }
}

/// The outcome of the snapshot's read once it is done; pending while there is none.
async fn read_done(
    startup: &mut Startup,
) -> Result<Result<Loaded, SnapshotError>, tokio::task::JoinError> {
    match startup {
        Startup::Reading(load) => load.await,
        _ => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster as PbCluster, cluster};
    use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateConfig;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::bootstrap::Node;
    use crate::protocol::StreamId;
    use crate::server::build;

    const T: &str = "svc:80";

    /// A worker with no server, fed by hand on a stream it believes open.
    fn worker() -> (Worker, StreamId) {
        let (_commands, rx) = mpsc::unbounded_channel();
        let mut ads = AdsState::new(ProtocolConfig::new(Node::default().to_proto()));
        let sid = ads.on_stream_open();
        let worker = Worker {
            metrics: XdsMetrics::new(&opentelemetry::global::meter("test"), String::new()),
            persist: None,
            startup: Startup::Done,
            save_at: None,
            last_save: None,
            retired: HashMap::new(),
            retired_bytes: 0,
            silence: false,
            answered: false,
            server_uri: String::new(),
            ads,
            servers: Vec::new(),
            backoff: Backoff::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            last_error: watch::channel(None).0,
            server_errors: Vec::new(),
            commands: rx,
            watchers: HashMap::new(),
            targets: HashMap::new(),
            subscriptions: HashMap::new(),
            connection: watch::channel(Connection::Disconnected).0,
            walks: 0,
        };
        (worker, sid)
    }

    /// Send the worker's pending requests (so it takes answers), then one response.
    fn respond(w: &mut Worker, sid: StreamId, t: ResourceType, resources: Vec<Any>) {
        while w.ads.poll_request(now()).is_some() {}
        let response = DiscoveryResponse {
            version_info: "1".into(),
            resources,
            type_url: t.type_url().into(),
            nonce: "n".into(),
            ..Default::default()
        };
        w.ads.on_response(sid, response, now());
        w.deliver();
    }

    fn aggregate(name: &str, children: &[String]) -> PbCluster {
        PbCluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(
                cluster::CustomClusterType {
                    name: "envoy.clusters.aggregate".into(),
                    typed_config: Some(build::pack(&AggregateConfig {
                        clusters: children.to_vec(),
                    })),
                },
            )),
            ..Default::default()
        }
    }

    /// One CDS response that changes 5,000 clusters of a target walks the target once, not
    /// once per cluster (5,000 walks of a 5,000-cluster graph).
    #[test]
    fn one_response_walks_each_target_once() {
        let (mut w, sid) = worker();
        let (tx, mut rx) = oneshot::channel();
        w.command(Command::WatchTarget((T.into(), T.into()), tx), None);
        let target = rx.try_recv().unwrap();
        respond(
            &mut w,
            sid,
            ResourceType::Listener,
            vec![build::pack(&build::api_listener(T, "rc"))],
        );
        let routes = build::route_config(
            "rc",
            vec![build::virtual_host(
                "vh",
                [T],
                vec![build::route_to("", "root")],
            )],
        );
        respond(
            &mut w,
            sid,
            ResourceType::RouteConfiguration,
            vec![build::pack(&routes)],
        );
        let leaves: Vec<String> = (0..5000).map(|i| format!("c{i}")).collect();
        let root = build::pack(&aggregate("root", &leaves));
        respond(&mut w, sid, ResourceType::Cluster, vec![root.clone()]);

        let mut clusters = vec![root];
        clusters.extend(leaves.iter().map(|c| build::pack(&build::eds_cluster(c))));
        let before = w.walks;
        let started = std::time::Instant::now();
        respond(&mut w, sid, ResourceType::Cluster, clusters);
        let took = started.elapsed();
        assert_eq!(w.walks - before, 1, "walks for one CDS response");
        eprintln!("one CDS response of 5,001 clusters applied in {took:?}");
        // Every leaf's EDS is now wanted; the target is complete once they are answered.
        let endpoints = leaves
            .iter()
            .map(|c| build::pack(&build::endpoints(c, &["127.0.0.1:1".parse().unwrap()])))
            .collect();
        let before = w.walks;
        respond(&mut w, sid, ResourceType::ClusterLoadAssignment, endpoints);
        assert_eq!(w.walks - before, 1, "walks for one EDS response");
        match &*target.borrow() {
            TargetState::Ready(config) => assert_eq!(config.clusters.len(), 5001),
            other => panic!("{other:?}"),
        }
    }
}
