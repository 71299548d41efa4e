//! The xDS client runtime: a hub task that holds the watchers and targets and routes each
//! resource to its authority's servers (gRFC A47), and one task per group of servers that
//! owns an [`AdsState`](crate::protocol::AdsState), drives it over an ADS stream,
//! reconnects with backoff, and falls back through the group's servers.
//!
//! Federation: old-style names go to the top-level `xds_servers`, `xdstp:` names to the
//! servers of their authority in the bootstrap's `authorities` (the top-level ones when it
//! lists none); authorities with the same server list share one group (one stream, one
//! fail-static file). An `xdstp:` name of an authority the bootstrap does not list is asked
//! of no server: its watchers get [`ResourceFailure::UnknownAuthority`] at once. A target's
//! walk reads every group's cache, so it may cross authorities.
//!
//! Server choice follows gRFC A71, within each group: its servers are tried in order. A
//! group moves on to the next server only while some watched resource has never been received — when every
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
//! ([`NotReady`]): the failures of the servers of a missing resource while none of them
//! is reachable, else the resources it still misses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, oneshot, watch};

use crate::bootstrap::{Bootstrap, XdsServer};
use crate::fail_static::{FailStatic, SnapshotError};
use crate::protocol::{ProtocolConfig, ResourceFailure, ResourceStatus};
use crate::resource::{Resource, ResourceType, canonical_name};
use crate::transport::{
    Backoff, CredentialsError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE, Dialer,
    TransportError,
};
use crate::watch::{TargetError, TargetState, XdsConfig};

mod group;
mod hub;
mod metrics;
mod not_ready;
mod server_watch;
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

/// How long an authority's own servers stay connected once none of their resources is
/// watched ([`XdsClientBuilder::idle_timeout`]).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds an [`XdsClient`] from a bootstrap, with overrides for what the bootstrap does not
/// say.
#[derive(Debug)]
pub struct XdsClientBuilder {
    bootstrap: Arc<Bootstrap>,
    servers: Vec<Dialer>,
    /// Each authority's servers (gRFC A47), by server list.
    authority_servers: HashMap<Vec<XdsServer>, Vec<Dialer>>,
    config: ProtocolConfig,
    /// Set by the builder, else each group of servers takes its primary's features.
    ignore_resource_deletion: Option<bool>,
    fail_on_data_errors: Option<bool>,
    backoff: Backoff,
    connect_timeout: Duration,
    max_message_size: usize,
    meter: Option<opentelemetry::metrics::Meter>,
    metrics_target: String,
    fail_static: Option<FailStatic>,
    idle_timeout: Duration,
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
        self.ignore_resource_deletion = Some(ignore);
        self
    }

    /// Drop a cached resource when an update of it is rejected (NACKed, or reported
    /// `PERMISSION_DENIED` by the server), so the calls that depend on it fail at once (the
    /// server feature `fail_on_data_errors`, gRFC A88). Default: the last good value stays in
    /// use.
    pub fn fail_on_data_errors(mut self, fail: bool) -> Self {
        self.fail_on_data_errors = Some(fail);
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

    /// How long an authority's own servers (gRFC A47: an authority whose `xds_servers`
    /// differ from the top-level ones) stay connected once none of their resources is
    /// watched any more: then the ADS stream closes, and opens again with the next watch.
    /// The top-level servers stay connected. Default: [`DEFAULT_IDLE_TIMEOUT`] (30 s), so a
    /// target that moves from one resource to another does not reconnect.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Start the client's task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(self) -> XdsClient {
        let (commands, rx) = mpsc::unbounded_channel();
        let (last_error_tx, last_error) = watch::channel(None);
        let meter = self.meter.unwrap_or_else(|| {
            opentelemetry::global::meter_with_scope(
                opentelemetry::InstrumentationScope::builder("meshwork")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            )
        });
        let factory = hub::GroupFactory {
            bootstrap: self.bootstrap.clone(),
            dialers: self.authority_servers,
            config: self.config,
            ignore_resource_deletion: self.ignore_resource_deletion,
            fail_on_data_errors: self.fail_on_data_errors,
            backoff: self.backoff,
            connect_timeout: self.connect_timeout,
            max_message_size: self.max_message_size,
            meter,
            metrics_target: self.metrics_target,
            fail_static: self.fail_static,
            idle_timeout: self.idle_timeout,
            last_error: Arc::new(last_error_tx),
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        let runtime = tokio::runtime::Handle::current();
        let (hub, top) = hub::Hub::new(factory, self.servers, rx);
        runtime.spawn(hub.run());
        XdsClient {
            commands,
            connection: top.connection.subscribe(),
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
        let mut authority_servers = HashMap::new();
        for name in bootstrap.authorities().keys() {
            let list = bootstrap.servers_for_authority(Some(name));
            if list != bootstrap.xds_servers() && !authority_servers.contains_key(list) {
                let dialers = list
                    .iter()
                    .map(Dialer::new)
                    .collect::<Result<Vec<_>, _>>()?;
                authority_servers.insert(list.to_vec(), dialers);
            }
        }
        Ok(XdsClientBuilder {
            bootstrap: Arc::new(bootstrap.clone()),
            servers,
            authority_servers,
            config: ProtocolConfig::new(bootstrap.node().to_proto()),
            ignore_resource_deletion: None,
            fail_on_data_errors: None,
            backoff: Backoff::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            meter: None,
            metrics_target: String::new(),
            fail_static: FailStatic::from_env(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        })
    }

    /// Start a client configured by `bootstrap` with the defaults.
    pub fn start(bootstrap: &Bootstrap) -> Result<Self, CredentialsError> {
        Ok(Self::builder(bootstrap)?.start())
    }

    /// Watch one resource. The watch sees the cached value at once if there is one.
    ///
    /// An `xdstp:` name (gRFC A47) is asked of its authority's servers, in its canonical
    /// form; one whose authority the bootstrap does not list is asked of none, and the
    /// watch is [`WatchState::Invalid`] with [`ResourceFailure::UnknownAuthority`].
    pub async fn watch(&self, resource_type: ResourceType, name: &str) -> ResourceWatch {
        let key = (resource_type, canonical_name(name).into_owned());
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
