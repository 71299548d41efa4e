//! The client's hub: one task holding the watchers and targets, counting who holds each
//! subscription, and routing each resource to the group of xDS servers of its authority
//! (gRFC A47 federation).
//!
//! Old-style names, and `xdstp:` names of an authority that lists no servers of its own,
//! go to the top-level `xds_servers`; an authority with servers goes to the group of that
//! server list, started on its first subscription. Authorities with the same list share a
//! group (one ADS stream, one fail-static file); different lists that share a server open a
//! stream each (grpc-go shares one per server). An `xdstp:` name whose authority the
//! bootstrap does not list is never asked of any server: its watchers fail at once with
//! [`ResourceFailure::UnknownAuthority`].
//!
//! A target's walk reads every group's cache under its lock, so one target may cross
//! authorities (an old-style Listener routing to an `xdstp:` Cluster).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, MutexGuard};

use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::group::{Group, GroupCommand, GroupSettings, GroupShared, Updates};
use super::metrics::{ClientTotals, XdsMetrics};
use super::{Command, NotReady, ResourceDump, WatchState};
use crate::bootstrap::{Bootstrap, XdsServer, xdstp_authority};
use crate::fail_static::{FailStatic, Persist, SaveReply};
use crate::protocol::{AdsState, ProtocolConfig, ResourceFailure, ResourceStatus};
use crate::resource::{Resource, ResourceType};
use crate::transport::{Backoff, Dialer, TransportError};
use crate::watch::{Cache, ResourceKey, TargetState, resolve};

/// Settings a group is started with, besides its servers.
pub(super) struct GroupFactory {
    pub(super) bootstrap: Arc<Bootstrap>,
    /// Each authority's server list, dialable.
    pub(super) dialers: HashMap<Vec<XdsServer>, Vec<Dialer>>,
    pub(super) config: ProtocolConfig,
    /// The builder's `ignore_resource_deletion`, if set: otherwise each group takes its
    /// primary server's feature.
    pub(super) ignore_resource_deletion: Option<bool>,
    /// The builder's `fail_on_data_errors`, if set (as above).
    pub(super) fail_on_data_errors: Option<bool>,
    pub(super) backoff: Backoff,
    pub(super) connect_timeout: std::time::Duration,
    pub(super) max_message_size: usize,
    pub(super) meter: opentelemetry::metrics::Meter,
    pub(super) metrics_target: String,
    pub(super) fail_static: Option<FailStatic>,
    /// How long an authority's own group stays connected with nothing watched.
    pub(super) idle_timeout: std::time::Duration,
    pub(super) last_error: Arc<watch::Sender<Option<TransportError>>>,
    /// Woken by a group that has new watcher states.
    pub(super) wake: Arc<Notify>,
}

struct GroupHandle {
    /// The xDS servers the group talks to (its key in [`Hub::by_servers`]).
    servers: Vec<XdsServer>,
    shared: Arc<GroupShared>,
    commands: mpsc::UnboundedSender<GroupCommand>,
}

struct Watcher {
    tx: watch::Sender<WatchState>,
    count: usize,
}

struct Target {
    /// The target's own key, shared with the [`Hub::dependents`] of what it needs.
    key: TargetKey,
    tx: watch::Sender<TargetState>,
    count: usize,
    needs: BTreeSet<ResourceKey>,
}

/// A target: its kind and name, shared between the target and the dependents index.
type TargetKey = Arc<(String, String)>;

pub(super) struct Hub {
    commands: mpsc::UnboundedReceiver<Command>,
    factory: GroupFactory,
    /// The groups started so far; the first is the top-level servers'.
    groups: Vec<GroupHandle>,
    by_servers: HashMap<Vec<XdsServer>, usize>,
    /// The group of each authority subscribed so far.
    by_authority: HashMap<String, usize>,
    watchers: HashMap<ResourceKey, Watcher>,
    targets: HashMap<(String, String), Target>,
    /// Holders of each subscription: resource watches and targets that need it.
    subscriptions: HashMap<ResourceKey, usize>,
    /// The targets that need each resource (the reverse of their `needs`), so that an
    /// update of U resources walks the targets it touches after U lookups, not U times
    /// every target (a client of 1,000 targets receiving a push of 1,000 clusters).
    dependents: HashMap<ResourceKey, HashSet<TargetKey>>,
    /// What the groups' metrics count together.
    metric_totals: Arc<ClientTotals>,
    /// Target walks so far.
    #[cfg(test)]
    pub(super) walks: usize,
}

/// Where a resource's name leads.
enum Route {
    /// To this group.
    Group(usize),
    /// To a listed authority none of whose resources was subscribed yet: nothing cached.
    NotStarted,
    /// To an authority the bootstrap does not list.
    Unknown(ResourceFailure),
}

/// The route of `name`: old-style names to the top-level group, `xdstp:` ones by authority.
fn route(bootstrap: &Bootstrap, by_authority: &HashMap<String, usize>, name: &str) -> Route {
    let Some(authority) = xdstp_authority(name) else {
        return Route::Group(0);
    };
    if let Some(&group) = by_authority.get(&authority) {
        return Route::Group(group);
    }
    if bootstrap.authorities().contains_key(&authority) {
        Route::NotStarted
    } else {
        Route::Unknown(ResourceFailure::UnknownAuthority {
            name: name.to_owned(),
            authority,
        })
    }
}

/// What a group's fail-static snapshot is bound to (its file name, and the check when it
/// is read): its servers' URIs, as [`FailStatic::path_for`] has the top-level servers'.
/// Another list of the bootstrap with the same URIs (the same server with other features,
/// credentials or API type) is another group, so the servers of such a list are named with
/// those too: two groups never read and write one file.
fn snapshot_servers(bootstrap: &Bootstrap, servers: &[XdsServer]) -> Vec<String> {
    let uris =
        |list: &[XdsServer]| -> Vec<String> { list.iter().map(|s| s.uri().to_owned()).collect() };
    let mine = uris(servers);
    let top = bootstrap.xds_servers();
    if servers == top {
        return mine;
    }
    let shared = std::iter::once(top)
        .chain(
            bootstrap
                .authorities()
                .keys()
                .map(|a| bootstrap.servers_for_authority(Some(a))),
        )
        .any(|list| list != servers && uris(list) == mine);
    if !shared {
        return mine;
    }
    servers
        .iter()
        .map(|s| {
            format!(
                "{} ({}, {}, [{}])",
                s.uri(),
                s.channel_credentials().type_name(),
                s.api_type().as_str(),
                s.server_features().join(",")
            )
        })
        .collect()
}

/// Every group's cache, locked, seen as one (for a walk, or a target's [`NotReady`]).
struct Federated<'a> {
    groups: Vec<MutexGuard<'a, AdsState>>,
    bootstrap: &'a Bootstrap,
    by_authority: &'a HashMap<String, usize>,
}

impl<'a> Federated<'a> {
    fn lock(
        groups: &'a [GroupHandle],
        bootstrap: &'a Bootstrap,
        by_authority: &'a HashMap<String, usize>,
    ) -> Self {
        // Always in the groups' order, and a group's task never holds its lock while it
        // waits for anything: no two lockers wait on each other.
        Self {
            groups: groups.iter().map(|g| g.shared.ads()).collect(),
            bootstrap,
            by_authority,
        }
    }

    fn route(&self, name: &str) -> Route {
        route(self.bootstrap, self.by_authority, name)
    }

    fn cache_of(&self, name: &str) -> Option<&AdsState> {
        match self.route(name) {
            Route::Group(group) => self.groups.get(group).map(|g| &**g),
            Route::NotStarted | Route::Unknown(_) => None,
        }
    }
}

impl Cache for Federated<'_> {
    fn get(&self, resource_type: ResourceType, name: &str) -> Option<&Resource> {
        self.cache_of(name)?.get(resource_type, name)
    }

    fn status(&self, resource_type: ResourceType, name: &str) -> Option<ResourceStatus> {
        match self.route(name) {
            Route::Unknown(_) => Some(ResourceStatus::Nacked),
            _ => self.cache_of(name)?.status(resource_type, name),
        }
    }

    fn failure(
        &self,
        resource_type: ResourceType,
        name: &str,
    ) -> Option<std::borrow::Cow<'_, ResourceFailure>> {
        match self.route(name) {
            Route::Unknown(failure) => Some(std::borrow::Cow::Owned(failure)),
            _ => Cache::failure(self.cache_of(name)?, resource_type, name),
        }
    }
}

impl Hub {
    /// A hub with the top-level servers' group started; the group's shared state is
    /// returned for the client's `connection()`.
    pub(super) fn new(
        factory: GroupFactory,
        top_dialers: Vec<Dialer>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> (Self, Arc<GroupShared>) {
        let mut hub = Self {
            commands,
            factory,
            groups: Vec::new(),
            by_servers: HashMap::new(),
            by_authority: HashMap::new(),
            watchers: HashMap::new(),
            targets: HashMap::new(),
            subscriptions: HashMap::new(),
            dependents: HashMap::new(),
            metric_totals: Arc::default(),
            #[cfg(test)]
            walks: 0,
        };
        let top = hub.factory.bootstrap.xds_servers().to_vec();
        let group = hub.start_group(top, top_dialers);
        (hub, group)
    }

    pub(super) async fn run(mut self) {
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    // Every handle is gone: the groups stop when their command senders drop.
                    None => return,
                },
                () = self.factory.wake.notified() => self.drain(),
            }
        }
    }

    /// Take every group's new watcher states and hand them on as one batch, so a target
    /// they touch in several groups is walked once.
    fn drain(&mut self) {
        let mut all = Vec::new();
        let bootstrap = &self.factory.bootstrap;
        for (group, handle) in self.groups.iter().enumerate() {
            let mut updates = handle.shared.take_updates();
            // A group caches what its servers send for a wildcard, other authorities'
            // names too; only the group a name routes to speaks for it.
            updates.retain(|(key, _)| {
                matches!(route(bootstrap, &self.by_authority, &key.1), Route::Group(g) if g == group)
            });
            all.append(&mut updates);
        }
        // Groups started by the walks below are taken on the next wake.
        if !all.is_empty() {
            self.on_updates(all);
        }
    }

    /// Start the group of `servers` (never empty: the bootstrap refuses an empty list);
    /// its index is the next one.
    fn start_group(&mut self, servers: Vec<XdsServer>, dialers: Vec<Dialer>) -> Arc<GroupShared> {
        let f = &self.factory;
        let mut config = f.config.clone();
        if let Some(primary) = servers.first() {
            config.ignore_resource_deletion = f
                .ignore_resource_deletion
                .unwrap_or(primary.ignore_resource_deletion());
            config.fail_on_data_errors = f
                .fail_on_data_errors
                .unwrap_or(primary.fail_on_data_errors());
        }
        let metrics = XdsMetrics::new(
            &f.meter,
            f.metrics_target.clone(),
            self.metric_totals.clone(),
        );
        let persist = f.fail_static.clone().map(|fail_static| {
            let uris = snapshot_servers(&f.bootstrap, &servers);
            let node_id = config.node.id.clone();
            Persist::start(fail_static, node_id, uris, metrics.snapshot_writes())
        });
        let shared = Arc::new(GroupShared::new(
            AdsState::new(config),
            dialers.len(),
            f.wake.clone(),
        ));
        let (commands, rx) = mpsc::unbounded_channel();
        let settings = GroupSettings {
            backoff: f.backoff,
            connect_timeout: f.connect_timeout,
            max_message_size: f.max_message_size,
            last_error: f.last_error.clone(),
            // The top-level servers' group (the first) stays connected: its connection is
            // the client's `connection()`.
            idle_timeout: (!self.groups.is_empty()).then_some(f.idle_timeout),
        };
        let group = Group::new(shared.clone(), dialers, persist, metrics, settings, rx);
        tokio::spawn(group.run());
        self.by_servers.insert(servers.clone(), self.groups.len());
        self.groups.push(GroupHandle {
            servers,
            shared: shared.clone(),
            commands,
        });
        shared
    }

    /// The group serving `name`, started if it was not.
    fn group_of(&mut self, name: &str) -> Result<usize, ResourceFailure> {
        let Some(authority) = xdstp_authority(name) else {
            return Ok(0);
        };
        if let Some(&group) = self.by_authority.get(&authority) {
            return Ok(group);
        }
        let unknown = || ResourceFailure::UnknownAuthority {
            name: name.to_owned(),
            authority: authority.clone(),
        };
        let servers = self
            .factory
            .bootstrap
            .servers_for_resource_name(name)
            .map_err(|_| unknown())?
            .to_vec();
        let group = match self.by_servers.get(&servers) {
            Some(&group) => group,
            None => {
                // The builder made dialers for every list the bootstrap has.
                let dialers = self
                    .factory
                    .dialers
                    .get(&servers)
                    .cloned()
                    .ok_or_else(unknown)?;
                self.start_group(servers, dialers);
                self.groups.len() - 1
            }
        };
        self.by_authority.insert(authority.clone(), group);
        Ok(group)
    }

    /// The watchers' new states from one group's step: each watcher told, then each
    /// target they touch walked once.
    fn on_updates(&mut self, updates: Updates) {
        let mut affected: Vec<TargetKey> = Vec::new();
        let mut queued: HashSet<TargetKey> = HashSet::new();
        for (key, state) in updates {
            for target in self.dependents.get(&key).into_iter().flatten() {
                if queued.insert(target.clone()) {
                    affected.push(target.clone());
                }
            }
            if let Some(w) = self.watchers.get(&key) {
                w.tx.send_replace(state);
            }
        }
        for target in affected {
            self.resolve_target(&target);
        }
    }

    fn acquire(&mut self, key: &ResourceKey) {
        let holders = self.subscriptions.entry(key.clone()).or_default();
        *holders += 1;
        if *holders > 1 {
            return;
        }
        match self.group_of(&key.1) {
            Ok(group) => {
                let _ = self.groups[group]
                    .commands
                    .send(GroupCommand::Subscribe(key.clone()));
            }
            Err(error) => {
                if let Some(w) = self.watchers.get(key) {
                    w.tx.send_replace(WatchState::Invalid {
                        last_good: None,
                        error,
                    });
                }
            }
        }
    }

    fn release(&mut self, key: &ResourceKey) {
        let Some(holders) = self.subscriptions.get_mut(key) else {
            return;
        };
        *holders -= 1;
        if *holders > 0 {
            return;
        }
        self.subscriptions.remove(key);
        let route = route(&self.factory.bootstrap, &self.by_authority, &key.1);
        if let Route::Group(group) = route {
            let _ = self.groups[group]
                .commands
                .send(GroupCommand::Unsubscribe(key.clone()));
        }
    }

    /// Walk a target's graph again, move its subscriptions to what the walk needed, and
    /// publish the new state if it changed.
    fn resolve_target(&mut self, key: &(String, String)) {
        #[cfg(test)]
        {
            self.walks += 1;
        }
        let resolution = {
            let cache = Federated::lock(&self.groups, &self.factory.bootstrap, &self.by_authority);
            resolve(&cache, &key.0, &key.1)
        };
        let Some(target) = self.targets.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut target.needs, resolution.needs.clone());
        let target_key = target.key.clone();
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
            self.dependents
                .entry(added.clone())
                .or_default()
                .insert(target_key.clone());
            self.acquire(added);
        }
        for removed in old.difference(&resolution.needs) {
            self.forget_dependent(removed, &target_key);
            self.release(removed);
        }
    }

    /// `target` no longer needs `key`.
    fn forget_dependent(&mut self, key: &ResourceKey, target: &TargetKey) {
        if let Some(targets) = self.dependents.get_mut(key) {
            targets.remove(target);
            if targets.is_empty() {
                self.dependents.remove(key);
            }
        }
    }

    /// Why a target is not complete: the resources it misses, and the failures of the
    /// servers they are asked of while those have no stream open (the top-level servers'
    /// when nothing is missing).
    fn not_ready(&self, key: &(String, String)) -> NotReady {
        let empty = BTreeSet::new();
        let needs = self.targets.get(key).map_or(&empty, |t| &t.needs);
        let cache = Federated::lock(&self.groups, &self.factory.bootstrap, &self.by_authority);
        let mut groups: Vec<usize> = Vec::new();
        for (t, name) in needs {
            if cache.get(*t, name).is_none()
                && let Route::Group(group) = cache.route(name)
                && !groups.contains(&group)
            {
                groups.push(group);
            }
        }
        if groups.is_empty() {
            groups.push(0);
        }
        let (errors, connecting) = groups
            .iter()
            .find_map(|&group| self.groups[group].shared.unreachable())
            .map_or((None, String::new()), |(errors, uri)| (Some(errors), uri));
        NotReady::new(&cache, errors, &connecting, needs)
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Watch(key, reply) => {
                // A target already holds the subscription: no Subscribe goes to the group
                // and no event comes, so the new watcher is handed what the cache holds
                // (as grpc-go's authority does for a watch of a resource it has).
                let held =
                    !self.watchers.contains_key(&key) && self.subscriptions.contains_key(&key);
                let initial = if held {
                    // What the groups handed over and the hub has not taken is no newer
                    // than their caches (a group may even have a response in its cache
                    // and its events not handed over yet): taken first, it cannot reach
                    // the new watcher after the cache's state.
                    self.drain();
                    self.cached_state(&key)
                } else {
                    WatchState::Pending
                };
                let w = self.watchers.entry(key.clone()).or_insert_with(|| Watcher {
                    tx: watch::channel(initial).0,
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
                    key: Arc::new(key.clone()),
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
                    if target.count == 0
                        && let Some(target) = self.targets.remove(&key)
                    {
                        for need in &target.needs {
                            self.forget_dependent(need, &target.key);
                            self.release(need);
                        }
                    }
                }
            }
            Command::NotReady(key, reply) => {
                let _ = reply.send(self.not_ready(&key));
            }
            Command::Dump(reply) => self.dump(reply),
            Command::SaveSnapshot(reply) => self.save(reply),
        }
    }

    /// A resource's state as its group's cache has it now, for a watcher that comes when
    /// the resource is already subscribed: the value (the last good one after a rejection),
    /// else why there is none.
    fn cached_state(&self, key: &ResourceKey) -> WatchState {
        let cache = Federated::lock(&self.groups, &self.factory.bootstrap, &self.by_authority);
        let (t, name) = (key.0, key.1.as_str());
        let value = cache.get(t, name).cloned();
        match cache.status(t, name) {
            Some(ResourceStatus::Nacked) => match cache.failure(t, name) {
                Some(error) => WatchState::Invalid {
                    last_good: value,
                    error: error.into_owned(),
                },
                None => value.map_or(WatchState::Pending, WatchState::Ready),
            },
            Some(ResourceStatus::DoesNotExist) if value.is_none() => WatchState::DoesNotExist,
            _ => value.map_or(WatchState::Pending, WatchState::Ready),
        }
    }

    /// Ask every group (the top-level servers' first) the question `ask` makes of a reply
    /// sender; the answers come in that order, each with its group's index.
    fn ask_groups<T>(
        &self,
        ask: impl Fn(oneshot::Sender<T>) -> GroupCommand,
    ) -> Vec<(usize, oneshot::Receiver<T>)> {
        self.groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let (tx, rx) = oneshot::channel();
                g.commands.send(ask(tx)).ok().map(|()| (i, rx))
            })
            .collect()
    }

    /// Every group's rows, the top-level servers' first; of each group, only the names its
    /// servers speak for. A group caches what its servers send for a wildcard, names of
    /// another authority (with servers of its own) too; as no watcher is handed those (see
    /// [`drain`](Self::drain)), no dump lists them: a name has one row, from its own
    /// servers' group.
    fn dump(&self, reply: oneshot::Sender<Vec<ResourceDump>>) {
        let parts = self.ask_groups(GroupCommand::Dump);
        let servers: Vec<Vec<XdsServer>> = self.groups.iter().map(|g| g.servers.clone()).collect();
        let bootstrap = self.factory.bootstrap.clone();
        tokio::spawn(async move {
            let mut rows = Vec::new();
            for (group, part) in parts {
                let own = servers.get(group).map_or(&[][..], Vec::as_slice);
                let part = part.await.unwrap_or_default();
                rows.extend(part.into_iter().filter(|row| {
                    bootstrap
                        .servers_for_resource_name(&row.name)
                        .is_ok_and(|theirs| theirs == own)
                }));
            }
            let _ = reply.send(rows);
        });
    }

    /// Every group writes its snapshot; the reply is the top-level group's file (or the
    /// first group's that wrote one), or the first error.
    fn save(&self, reply: SaveReply) {
        let parts = self.ask_groups(GroupCommand::Save);
        tokio::spawn(async move {
            let mut outcome = Ok(None);
            for (_, part) in parts {
                match part.await.unwrap_or(Ok(None)) {
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                    Ok(Some(path)) if matches!(outcome, Ok(None)) => outcome = Ok(Some(path)),
                    Ok(_) => {}
                }
            }
            let _ = reply.send(outcome);
        });
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::client::group::{now, watch_state};
    use crate::protocol::StreamId;
    use crate::server::build;

    const T: &str = "svc:80";

    /// A group driven by hand, on a stream it believes open: no task, no server.
    struct HandFed {
        shared: Arc<GroupShared>,
        commands: mpsc::UnboundedReceiver<GroupCommand>,
        sid: StreamId,
        /// The responses applied so far.
        version: u64,
    }

    impl HandFed {
        /// The group, and the hub's handle on it.
        fn new(config: ProtocolConfig, servers: Vec<XdsServer>) -> (Self, GroupHandle) {
            let mut ads = AdsState::new(config);
            let sid = ads.on_stream_open();
            let shared = Arc::new(GroupShared::new(ads, 1, Arc::new(Notify::new())));
            let (tx, commands) = mpsc::unbounded_channel();
            let handle = GroupHandle {
                servers,
                shared: shared.clone(),
                commands: tx,
            };
            let group = Self {
                shared,
                commands,
                sid,
                version: 0,
            };
            (group, handle)
        }

        /// What the group's task does first: take the hub's subscriptions, send the requests
        /// (so the state takes answers), and apply one response; its events are not handed
        /// over yet.
        fn apply(&mut self, t: ResourceType, resources: Vec<Any>) {
            self.version += 1;
            let mut ads = self.shared.ads();
            while let Ok(command) = self.commands.try_recv() {
                match command {
                    GroupCommand::Subscribe(key) => ads.subscribe(key.0, &key.1),
                    GroupCommand::Unsubscribe(key) => ads.unsubscribe(key.0, &key.1),
                    GroupCommand::Save(_) | GroupCommand::Dump(_) => {}
                }
            }
            while ads.poll_request(now()).is_some() {}
            let response = DiscoveryResponse {
                version_info: self.version.to_string(),
                resources,
                type_url: t.type_url().into(),
                nonce: format!("n{}", self.version),
                ..Default::default()
            };
            ads.on_response(self.sid, response, now());
        }

        /// The events the group's state has queued, as the group hands them over.
        fn events(&self) -> Updates {
            let mut ads = self.shared.ads();
            let mut updates = Vec::new();
            while let Some(event) = ads.poll_event() {
                updates.push(watch_state(&ads, event));
            }
            updates
        }

        /// Hand the queued events to the hub's pending states, as the group's task does.
        fn hand_over(&self) {
            self.shared.push_updates(self.events());
        }
    }

    /// A hub whose one group is driven by hand.
    struct Harness {
        hub: Hub,
        group: HandFed,
    }

    fn harness() -> Harness {
        let bootstrap = Bootstrap::from_json_str(
            r#"{"xds_servers": [{"server_uri": "localhost:1", "channel_creds": [{"type": "insecure"}]}],
                "node": {"id": "n"}}"#,
        )
        .unwrap();
        let (_commands, commands_rx) = mpsc::unbounded_channel();
        let (group, handle) = HandFed::new(
            ProtocolConfig::new(bootstrap.node().to_proto()),
            bootstrap.xds_servers().to_vec(),
        );
        let factory = GroupFactory {
            bootstrap: Arc::new(bootstrap),
            dialers: HashMap::new(),
            config: ProtocolConfig::new(Default::default()),
            ignore_resource_deletion: None,
            fail_on_data_errors: None,
            backoff: Backoff::default(),
            connect_timeout: std::time::Duration::from_secs(1),
            max_message_size: 1 << 22,
            meter: opentelemetry::global::meter("test"),
            metrics_target: String::new(),
            fail_static: None,
            idle_timeout: std::time::Duration::from_secs(30),
            last_error: Arc::new(watch::channel(None).0),
            wake: Arc::new(Notify::new()),
        };
        let hub = Hub {
            commands: commands_rx,
            factory,
            groups: vec![handle],
            by_servers: HashMap::new(),
            by_authority: HashMap::new(),
            watchers: HashMap::new(),
            targets: HashMap::new(),
            subscriptions: HashMap::new(),
            dependents: HashMap::new(),
            metric_totals: Arc::default(),
            walks: 0,
        };
        Harness { hub, group }
    }

    impl Harness {
        /// What the group's task does: apply one response and hand its events to the hub as
        /// one batch.
        fn respond(&mut self, t: ResourceType, resources: Vec<Any>) {
            self.group.apply(t, resources);
            let updates = self.group.events();
            self.hub.on_updates(updates);
        }

        /// Watches target `T`.
        fn watch_target(&mut self) -> watch::Receiver<TargetState> {
            let (tx, mut rx) = oneshot::channel();
            self.hub
                .command(Command::WatchTarget((T.into(), T.into()), tx));
            rx.try_recv().unwrap()
        }

        /// Watches target `T` and answers with its Listener, which names RouteConfiguration
        /// `rc`.
        fn watch_target_listening(&mut self) -> watch::Receiver<TargetState> {
            let target = self.watch_target();
            self.respond(
                ResourceType::Listener,
                vec![build::pack(&build::api_listener(T, "rc"))],
            );
            target
        }
    }

    /// What two groups hand over before the hub wakes is one batch: a target that needs
    /// resources of both is walked once per wake, not once per group.
    #[test]
    fn one_drain_walks_a_target_once_whatever_groups_it_crosses() {
        const C: &str = "xdstp://a/envoy.config.cluster.v3.Cluster/c";
        const E: &str = "xdstp://a/envoy.config.endpoint.v3.ClusterLoadAssignment/c";
        let mut h = harness();
        // Authority `a`'s group, fed by hand like the harness's (no servers: it dials none).
        let (mut a, handle) = HandFed::new(ProtocolConfig::new(Default::default()), Vec::new());
        h.hub.groups.push(handle);
        h.hub.by_authority.insert("a".into(), 1);
        let mut cluster = build::eds_cluster(C);
        if let Some(eds) = cluster.eds_cluster_config.as_mut() {
            eds.service_name = E.into();
        }
        let routes = |vh: &str| {
            vec![build::pack(&build::route_config(
                "rc",
                vec![build::virtual_host(vh, [T], vec![build::route_to("", C)])],
            ))]
        };
        let endpoints = |port: u16| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            vec![build::pack(&build::endpoints(E, &[addr]))]
        };

        let target = h.watch_target_listening();
        h.respond(ResourceType::RouteConfiguration, routes("vh1"));
        a.apply(ResourceType::Cluster, vec![build::pack(&cluster)]);
        a.hand_over();
        h.hub.drain();
        a.apply(ResourceType::ClusterLoadAssignment, endpoints(1));
        a.hand_over();
        h.hub.drain();
        assert!(
            matches!(&*target.borrow(), TargetState::Ready(_)),
            "{:?}",
            target.borrow()
        );

        // Both groups change before the hub wakes.
        h.group
            .apply(ResourceType::RouteConfiguration, routes("vh2"));
        h.group.hand_over();
        a.apply(ResourceType::ClusterLoadAssignment, endpoints(2));
        a.hand_over();
        let before = h.hub.walks;
        h.hub.drain();
        assert_eq!(h.hub.walks - before, 1, "walks for one wake");
        match &*target.borrow() {
            TargetState::Ready(config) => {
                assert_eq!(config.route_config.virtual_hosts[0].name, "vh2");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A watch that comes while a target holds the resource is handed the cache's state. A
    /// state the group handed over earlier, that the hub had not taken yet, is older: it
    /// must not reach the watcher after the cache's. (On a multi-threaded runtime the hub
    /// may read the cache between the group's applying a response and handing over its
    /// events.)
    #[test]
    fn a_new_watch_never_sees_a_state_older_than_the_one_it_was_handed() {
        let mut h = harness();
        let _target = h.watch_target();
        let listener = |rc: &str| vec![build::pack(&build::api_listener(T, rc))];
        h.group.apply(ResourceType::Listener, listener("rc1"));
        h.group.hand_over();
        h.group.apply(ResourceType::Listener, listener("rc2"));

        let (tx, mut rx) = oneshot::channel();
        h.hub
            .command(Command::Watch((ResourceType::Listener, T.into()), tx));
        let watch = rx.try_recv().unwrap();
        let handed = watch.borrow().resource().cloned();
        let newest = h.group.shared.ads().get(ResourceType::Listener, T).cloned();
        assert!(handed.is_some() && handed == newest, "{handed:?}");
        h.hub.drain();
        assert_eq!(watch.borrow().resource(), handed.as_ref(), "an older state");
        h.group.hand_over();
        h.hub.drain();
        assert_eq!(watch.borrow().resource(), handed.as_ref());
    }

    /// An update walks the targets that need what it changed and no other (found through
    /// the dependents index, not by asking every target); a resource a target stops
    /// needing, or a target that is gone, leaves the index.
    #[test]
    fn an_update_walks_only_the_targets_that_need_it() {
        let mut h = harness();
        let watch = |h: &mut Harness, name: &str| {
            let (tx, mut rx) = oneshot::channel();
            h.hub
                .command(Command::WatchTarget((name.into(), name.into()), tx));
            rx.try_recv().unwrap()
        };
        let _a = watch(&mut h, "a");
        let _b = watch(&mut h, "b");
        let listeners = |a: &str| {
            vec![
                build::pack(&build::api_listener("a", a)),
                build::pack(&build::api_listener("b", "rcb")),
            ]
        };
        h.respond(ResourceType::Listener, listeners("rca"));
        let routes = |name: &str| {
            vec![build::pack(&build::route_config(
                name,
                vec![build::virtual_host(
                    "vh",
                    ["a", "b"],
                    vec![build::route_to("", "c")],
                )],
            ))]
        };
        let before = h.hub.walks;
        h.respond(ResourceType::RouteConfiguration, routes("rca"));
        assert_eq!(h.hub.walks - before, 1, "only `a` needs rca");
        let rc = |name: &str| (ResourceType::RouteConfiguration, name.to_owned());
        let dependents = |h: &Harness, key: &ResourceKey| -> Vec<String> {
            let mut names: Vec<String> = h
                .hub
                .dependents
                .get(key)
                .into_iter()
                .flatten()
                .map(|t| t.0.clone())
                .collect();
            names.sort();
            names
        };
        assert_eq!(dependents(&h, &rc("rca")), ["a"]);
        assert_eq!(dependents(&h, &rc("rcb")), ["b"]);

        // `a` moves to rcb: rca has no dependent left, rcb has both.
        h.respond(ResourceType::Listener, listeners("rcb"));
        assert!(!h.hub.dependents.contains_key(&rc("rca")));
        assert_eq!(dependents(&h, &rc("rcb")), ["a", "b"]);
        let before = h.hub.walks;
        h.respond(ResourceType::RouteConfiguration, routes("rcb"));
        assert_eq!(h.hub.walks - before, 2, "both need rcb, each walked once");

        for name in ["a", "b"] {
            h.hub
                .command(Command::UnwatchTarget((name.into(), name.into())));
        }
        assert!(h.hub.dependents.is_empty(), "{:?}", h.hub.dependents.keys());
    }

    /// One CDS response that changes 5,000 clusters of a target walks the target once, not
    /// once per cluster (5,000 walks of a 5,000-cluster graph).
    #[test]
    fn one_response_walks_each_target_once() {
        let mut h = harness();
        let target = h.watch_target_listening();
        let routes = build::route_config(
            "rc",
            vec![build::virtual_host(
                "vh",
                [T],
                vec![build::route_to("", "root")],
            )],
        );
        h.respond(ResourceType::RouteConfiguration, vec![build::pack(&routes)]);
        let leaves: Vec<String> = (0..5000).map(|i| format!("c{i}")).collect();
        let root = build::pack(&build::aggregate_cluster("root", &leaves));
        h.respond(ResourceType::Cluster, vec![root.clone()]);

        let mut clusters = vec![root];
        clusters.extend(leaves.iter().map(|c| build::pack(&build::eds_cluster(c))));
        let before = h.hub.walks;
        let started = std::time::Instant::now();
        h.respond(ResourceType::Cluster, clusters);
        let took = started.elapsed();
        assert_eq!(h.hub.walks - before, 1, "walks for one CDS response");
        eprintln!("one CDS response of 5,001 clusters applied in {took:?}");
        // Every leaf's EDS is now wanted; the target is complete once they are answered.
        let endpoints = leaves
            .iter()
            .map(|c| build::pack(&build::endpoints(c, &["127.0.0.1:1".parse().unwrap()])))
            .collect();
        let before = h.hub.walks;
        h.respond(ResourceType::ClusterLoadAssignment, endpoints);
        assert_eq!(h.hub.walks - before, 1, "walks for one EDS response");
        match &*target.borrow() {
            TargetState::Ready(config) => assert_eq!(config.clusters.len(), 5001),
            other => panic!("{other:?}"),
        }
    }
}
