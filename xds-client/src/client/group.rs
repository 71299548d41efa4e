//! One group of xDS servers: the servers a set of authorities share, in fallback order
//! (gRFC A47). Its task owns the ADS stream to them — connect, fall back and return (gRFC
//! A71), reconnect with backoff, the fail-static snapshot — and the [`AdsState`] of the
//! resources named for those authorities. The hub ([`super::hub`]) subscribes through it
//! and reads the cache under its lock to walk targets; the group sends it each watcher's
//! new state, one batch per response (or timer, or the commands queued), so one response
//! walks each target it touches once; what the hub has not taken yet is kept as the latest
//! state per resource (bounded by the resources the group knows).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;

use super::metrics::XdsMetrics;
use super::{Connection, NotReady, ResourceDump, WatchState};
use crate::fail_static::{Loaded, Persist, Retired, SaveReply, SnapshotError};
use crate::protocol::{AdsState, ResourceStatus, XdsEvent};
use crate::resource::canonical_name;
use crate::transport::{
    AdsRequests, AdsResponse, AdsResponses, Backoff, Dialer, TransportError, ads_channel,
    open_stream,
};
use crate::watch::ResourceKey;

/// What the hub asks of a group.
#[derive(Debug)]
pub(super) enum GroupCommand {
    /// The first holder of this resource came.
    Subscribe(ResourceKey),
    /// Its last holder went.
    Unsubscribe(ResourceKey),
    /// Write the group's fail-static snapshot now.
    Save(SaveReply),
    /// The group's rows of the config dump.
    Dump(oneshot::Sender<Vec<ResourceDump>>),
}

/// New watcher states, in the order their resources first changed.
pub(super) type Updates = Vec<(ResourceKey, WatchState)>;

/// The watcher states a group has for the hub and the hub has not taken yet: the latest
/// per resource, so what waits is bounded by the resources the group knows, however fast
/// its server pushes and however long the hub takes to walk.
#[derive(Debug, Default)]
struct Pending {
    order: Vec<ResourceKey>,
    states: HashMap<ResourceKey, WatchState>,
}

/// What the hub and a group's task share.
#[derive(Debug)]
pub(super) struct GroupShared {
    /// The group's cache and protocol state: the group drives it, the hub reads it to walk.
    pub(super) ads: Mutex<AdsState>,
    transport: Mutex<TransportView>,
    /// New watcher states for the hub.
    pending: Mutex<Pending>,
    /// Wakes the hub when `pending` gains some (shared by every group).
    wake: Arc<Notify>,
    /// Which of the group's servers has a stream open.
    pub(super) connection: watch::Sender<Connection>,
}

#[derive(Debug, Default)]
struct TransportView {
    /// Each server's latest failure since a stream to it last opened.
    server_errors: Vec<Option<TransportError>>,
    /// The server of the current (or last) attempt.
    server_uri: String,
}

impl GroupShared {
    pub(super) fn new(ads: AdsState, servers: usize, wake: Arc<Notify>) -> Self {
        Self {
            ads: Mutex::new(ads),
            pending: Mutex::new(Pending::default()),
            wake,
            transport: Mutex::new(TransportView {
                server_errors: vec![None; servers],
                server_uri: String::new(),
            }),
            connection: watch::channel(Connection::Disconnected).0,
        }
    }

    /// The cache, locked. Never held across an await, nor while the hub walks.
    pub(super) fn ads(&self) -> MutexGuard<'_, AdsState> {
        // A panic while locked leaves nothing half-written that a reader could trip on:
        // every AdsState method completes its own invariants before it returns.
        self.ads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hand the hub new watcher states, and wake it.
    pub(super) fn push_updates(&self, updates: Updates) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let pending = &mut *pending;
            for (key, state) in updates {
                if pending.states.insert(key.clone(), state).is_none() {
                    pending.order.push(key);
                }
            }
        }
        self.wake.notify_one();
    }

    /// The watcher states the group has for the hub, each resource's latest.
    pub(super) fn take_updates(&self) -> Updates {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut states = std::mem::take(&mut pending.states);
        std::mem::take(&mut pending.order)
            .into_iter()
            .filter_map(|key| states.remove(&key).map(|state| (key, state)))
            .collect()
    }

    fn transport(&self) -> MutexGuard<'_, TransportView> {
        self.transport
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// While no stream is open: the servers' latest failures and the server being tried.
    pub(super) fn unreachable(&self) -> Option<(Vec<TransportError>, String)> {
        if !matches!(*self.connection.borrow(), Connection::Disconnected) {
            return None;
        }
        let transport = self.transport();
        let errors = transport.server_errors.iter().flatten().cloned().collect();
        Some((errors, transport.server_uri.clone()))
    }
}

/// What a group's task needs besides its servers: the client's settings.
pub(super) struct GroupSettings {
    pub(super) backoff: Backoff,
    pub(super) connect_timeout: Duration,
    pub(super) max_message_size: usize,
    pub(super) last_error: Arc<watch::Sender<Option<TransportError>>>,
    /// Close the stream once nothing has been watched for this long (an authority's own
    /// group); `None` to stay connected (the top-level group).
    pub(super) idle_timeout: Option<Duration>,
}

pub(super) struct Group {
    shared: Arc<GroupShared>,
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
    /// Whether any server has answered since the group started.
    answered: bool,
    servers: Vec<Dialer>,
    backoff: Backoff,
    connect_timeout: Duration,
    max_message_size: usize,
    last_error: Arc<watch::Sender<Option<TransportError>>>,
    commands: mpsc::UnboundedReceiver<GroupCommand>,
    metrics: XdsMetrics,
    /// The server of the current (or last) stream, for the metrics' `grpc.xds.server`.
    server_uri: String,
    /// The stream's request channel was full while the protocol had requests to send:
    /// they wait in the protocol core until the transport takes one.
    blocked: bool,
    /// See [`GroupSettings::idle_timeout`].
    idle_timeout: Option<Duration>,
    /// Since when nothing is watched (only tracked with an `idle_timeout`).
    idle_since: Option<TokioInstant>,
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
    /// Nothing was watched for the idle timeout: closed until something is.
    Idle,
    /// The hub is gone: every handle of the client is.
    Shutdown,
}

pub(super) fn now() -> Instant {
    TokioInstant::now().into_std()
}

/// `delay` from now. Delays are clamped ([`Backoff`]), but a panic here would end the
/// group's task without a word, so an overflow waits a day instead.
fn after(delay: Duration) -> TokioInstant {
    let now = TokioInstant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(24 * 60 * 60))
}

/// Sends what `next` yields on `tx` while `tx` has room, taking the next request only once a
/// slot is reserved for it. True if it stopped because the channel was full.
fn drain<T>(tx: &mpsc::Sender<T>, mut next: impl FnMut() -> Option<T>) -> bool {
    loop {
        let permit = match tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return true,
            Err(mpsc::error::TrySendError::Closed(())) => return false,
        };
        match next() {
            Some(request) => permit.send(request),
            None => return false,
        }
    }
}

/// The watchers' state after one protocol event, and the resource it is about. A rejected
/// update keeps the last good value (`cache` is the group's, locked).
pub(super) fn watch_state(cache: &AdsState, event: XdsEvent) -> (ResourceKey, WatchState) {
    match event {
        XdsEvent::Changed(resource) => (
            (
                resource.resource_type(),
                canonical_name(resource.name()).into_owned(),
            ),
            WatchState::Ready(resource),
        ),
        XdsEvent::Invalid {
            resource_type,
            name,
            error,
        } => {
            let last_good = cache.get(resource_type, &name).cloned();
            (
                (resource_type, name),
                WatchState::Invalid { last_good, error },
            )
        }
        XdsEvent::DoesNotExist {
            resource_type,
            name,
        } => ((resource_type, name), WatchState::DoesNotExist),
    }
}

impl Group {
    /// A group over `servers` (in fallback order) sharing `shared` with the hub; `persist`
    /// is its fail-static snapshot, if configured.
    pub(super) fn new(
        shared: Arc<GroupShared>,
        servers: Vec<Dialer>,
        persist: Option<Persist>,
        metrics: XdsMetrics,
        settings: GroupSettings,
        commands: mpsc::UnboundedReceiver<GroupCommand>,
    ) -> Self {
        Self {
            shared,
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
            servers,
            backoff: settings.backoff.clamped(),
            connect_timeout: settings.connect_timeout,
            max_message_size: settings.max_message_size,
            last_error: settings.last_error,
            commands,
            metrics,
            server_uri: String::new(),
            blocked: false,
            idle_timeout: settings.idle_timeout,
            idle_since: None,
        }
    }

    /// Whether the group has nothing watched and may close its stream for it.
    fn is_idle(&self) -> bool {
        self.idle_timeout.is_some() && !self.ads().has_subscriptions()
    }

    /// Notes, after the hub's commands, whether the group has become idle or busy again.
    fn track_idle(&mut self) {
        if self.is_idle() {
            self.idle_since.get_or_insert_with(TokioInstant::now);
        } else {
            self.idle_since = None;
        }
    }

    /// When an idle group closes its stream.
    fn idle_close_at(&self) -> Option<TokioInstant> {
        Some(self.idle_since? + self.idle_timeout?)
    }

    /// Serve commands until something is watched again. False on shutdown.
    async fn wait_until_watched(&mut self) -> bool {
        while self.is_idle() {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd, None),
                    None => return false,
                },
                _ = sleep_until_opt(self.save_at) => self.save(),
            }
        }
        true
    }

    fn ads(&self) -> MutexGuard<'_, AdsState> {
        self.shared.ads()
    }

    pub(super) async fn run(mut self) {
        self.run_streams().await;
        self.finish();
    }

    /// Connect, fall back, reconnect, until every handle is gone.
    async fn run_streams(&mut self) {
        let mut delays = self.backoff.delays();
        let mut server = 0;
        loop {
            // An authority's group connects for its watches (the first comes with its
            // start), and again for the next one after it went idle.
            if !self.wait_until_watched().await {
                return;
            }
            let (tx, rx) = ads_channel(self.servers[server].is_delta());
            let sid = if self.servers[server].is_delta() {
                self.ads().on_delta_stream_connecting()
            } else {
                self.ads().on_stream_connecting()
            };
            self.flush(&tx);
            let address = self.servers[server].clone();
            let uri = address.uri().to_string();
            self.server_uri.clone_from(&uri);
            self.shared.transport().server_uri.clone_from(&uri);
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
                    self.ads().on_stream_connected(sid, now());
                    match self.serve(open_stream(channel, rx, limit), &tx).await {
                        None => StreamEnd::Shutdown,
                        Some(Err(status)) => {
                            self.failed(server, TransportError::stream(&uri, status, limit));
                            self.metrics.server_failure(&uri);
                            StreamEnd::Closed { answered: false }
                        }
                        Some(Ok(responses)) => {
                            tracing::info!(server = %uri, "ADS stream open");
                            if let Some(error) =
                                self.shared.transport().server_errors.get_mut(server)
                            {
                                *error = None;
                            }
                            self.shared.connection.send_replace(Connection::Connected {
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
            self.ads().on_stream_closed(sid);
            self.shared
                .connection
                .send_replace(Connection::Disconnected);
            match end {
                StreamEnd::Shutdown => return,
                StreamEnd::Idle => {
                    tracing::info!(server = %self.server_uri, "nothing of this xDS server's is watched: its ADS stream is closed until something is");
                    delays = self.backoff.delays();
                    server = 0;
                    continue;
                }
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
                    if next < self.servers.len() && self.ads().has_missing_resources() {
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
        let taken = self.ads().seed(loaded.seeds, now());
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
            && !self.ads().has_missing_resources()
        {
            tracing::debug!("fail-static snapshot not needed: the xDS server answered");
            self.startup = Startup::Done;
        }
    }

    /// The does-not-exist timers due now fire. A control plane that holds the requests
    /// without a word (go-control-plane without a snapshot for the node) is one that fails
    /// too: if no server has answered anything, the snapshot is served.
    fn on_timeout(&mut self) {
        self.ads().handle_timeout(now());
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
        if persist.save(&self.ads(), &self.retired, at, None) {
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
        if let Some(slot) = self.shared.transport().server_errors.get_mut(server) {
            *slot = Some(error.clone());
        }
        self.last_error.send_replace(Some(error));
    }

    /// The servers' latest failures while no ADS stream is open; `None` while one is.
    fn unreachable(&self) -> Option<Vec<TransportError>> {
        self.shared.unreachable().map(|(errors, _)| errors)
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
            let timer = self.ads().poll_timeout().map(TokioInstant::from_std);
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
                open = tx.writable(), if self.blocked => self.on_writable(tx, open),
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
            let timer = self.ads().poll_timeout().map(TokioInstant::from_std);
            let idle_at = self.idle_close_at();
            tokio::select! {
                msg = responses.message() => match msg {
                    Ok(Some(response)) => {
                        answered = true;
                        self.answered = true;
                        // Decoded before the state is locked: the hub's walks and the
                        // client's reads lock it too, and a large push takes milliseconds
                        // to decode.
                        let decoded = match response {
                            AdsResponse::Sotw(r) => AdsState::decode_response(r),
                            AdsResponse::Delta(r) => {
                                let held = self.ads().heartbeats(&r);
                                AdsState::decode_delta_response(r, &held)
                            }
                        };
                        self.ads().on_decoded_response(sid, decoded, now());
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
                open = tx.writable(), if self.blocked => self.on_writable(tx, open),
                _ = sleep_until_opt(self.save_at) => self.save(),
                loaded = read_done(&mut self.startup) => self.on_snapshot_read(loaded),
                _ = sleep_until_opt(idle_at) => {
                    if self.is_idle() {
                        return StreamEnd::Idle;
                    }
                    self.idle_since = None;
                }
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
            if self.answered {
                let mut ads = self.ads();
                if ads.has_pooled_seeds() && !ads.has_missing_resources() {
                    ads.drop_pooled_seeds();
                }
            }
        }
    }

    /// Hand the protocol's requests to the stream while its channel has room. The rest
    /// stay in the protocol core (`blocked`), built only when the channel takes them, so a
    /// server that stops reading holds a bounded number of them.
    fn flush(&mut self, tx: &AdsRequests) {
        let now = now();
        let full = match tx {
            AdsRequests::Sotw(tx) => drain(tx, || self.ads().poll_request(now)),
            AdsRequests::Delta(tx) => drain(tx, || self.ads().poll_delta_request(now)),
        };
        self.blocked = full && self.ads().has_request();
    }

    /// The channel had no room for the requests waiting: it has now, or the stream is gone.
    fn on_writable(&mut self, tx: &AdsRequests, open: bool) {
        if open {
            self.flush(tx);
        } else {
            self.blocked = false;
        }
    }

    /// Hand the protocol's events to the hub, one batch (so one walk of each target they
    /// touch), after recording them in the metrics.
    fn deliver(&mut self) {
        let mut updates = Vec::new();
        let any = {
            let mut guard = self.shared.ads();
            let ads = &mut *guard;
            while let Some(event) = ads.poll_event() {
                match &event {
                    XdsEvent::Changed(resource) => {
                        if !ads.is_from_snapshot(resource.resource_type(), resource.name()) {
                            self.metrics
                                .valid(&self.server_uri, resource.resource_type());
                        }
                        self.metrics
                            .accepted(resource.resource_type(), resource.name());
                    }
                    XdsEvent::Invalid {
                        resource_type,
                        name,
                        error,
                    } => self
                        .metrics
                        .invalid(&self.server_uri, *resource_type, name, error, now()),
                    XdsEvent::DoesNotExist { .. } => {}
                }
                updates.push(watch_state(ads, event));
            }
            let any = !updates.is_empty();
            if any || self.metrics.serving_snapshot() {
                self.metrics.cache(ads.resources());
            }
            any
        };
        if any {
            self.shared.push_updates(updates);
        }
    }

    fn subscribe(&mut self, key: &ResourceKey) {
        if let Some(old) = self.retired.remove(key) {
            self.retired_bytes -= old.size();
        }
        self.ads().subscribe(key.0, &key.1);
    }

    fn unsubscribe(&mut self, key: &ResourceKey) {
        self.retire(key);
        self.ads().unsubscribe(key.0, &key.1);
    }

    /// Keep a server's value of a resource no longer watched for the next snapshots: a
    /// process that drops its watches while it shuts down still writes their config.
    fn retire(&mut self, key: &ResourceKey) {
        let Some(persist) = self.persist.as_ref().filter(|p| !p.is_read_only()) else {
            return;
        };
        let max_bytes = persist.max_bytes();
        let kept = {
            let ads = self.ads();
            match ads.view(key.0, &key.1) {
                Some(view) if !view.from_snapshot => match (view.raw, view.version) {
                    (Some(raw), Some(version)) => Some(Retired {
                        raw: raw.clone(),
                        version: version.to_owned(),
                        at: now(),
                    }),
                    _ => None,
                },
                _ => None,
            }
        };
        let Some(kept) = kept else {
            return;
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

    /// Apply `cmd` and every command already queued behind it, then send what they changed
    /// once: a walk hands its subscriptions over one command each, and a request per
    /// command would name every resource of its type subscribed so far (quadratic in the
    /// walk's width, on the wire and in the server's answers).
    fn command(&mut self, cmd: GroupCommand, tx: Option<&AdsRequests>) {
        self.apply(cmd);
        while let Ok(cmd) = self.commands.try_recv() {
            self.apply(cmd);
        }
        self.track_idle();
        self.deliver();
        if let Some(tx) = tx {
            self.flush(tx);
        }
    }

    fn apply(&mut self, cmd: GroupCommand) {
        match cmd {
            GroupCommand::Subscribe(key) => self.subscribe(&key),
            GroupCommand::Unsubscribe(key) => self.unsubscribe(&key),
            GroupCommand::Dump(reply) => {
                let _ = reply.send(self.dump());
            }
            GroupCommand::Save(reply) => match self.persist.as_ref().filter(|_| self.answered) {
                Some(persist) => {
                    if persist.save(&self.shared.ads(), &self.retired, now(), Some(reply)) {
                        self.save_at = None;
                        self.last_save = Some(TokioInstant::now());
                    }
                }
                None => {
                    let _ = reply.send(Ok(None));
                }
            },
        }
    }

    /// The group's rows of the client's config dump.
    fn dump(&self) -> Vec<ResourceDump> {
        let (now_std, now_wall) = (now(), SystemTime::now());
        let transport_error = self
            .unreachable()
            .and_then(|errors| NotReady::transport_error(&errors));
        self.ads()
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
