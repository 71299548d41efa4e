//! Fail-static: the last good xDS configuration, kept on disk so that a process restarting
//! while its control plane is unreachable serves what it served before instead of nothing.
//!
//! Opt-in: a directory named in code ([`XdsClientBuilder::fail_static`]) or by the
//! environment variable [`SNAPSHOT_DIR_ENV`] (`MESHWORK_XDS_SNAPSHOT_DIR`), which
//! [`XdsClient::builder`] reads. Then:
//!
//! - After a server's response the client writes every valid cached resource, with its
//!   version, to one file per node id and server list in that directory: 1 s after a
//!   change, at most once per [`FailStatic::write_interval`] (30 s) while changes keep
//!   coming, and at once on [`XdsClient::save_snapshot`] (for a graceful shutdown).
//!   Versioned, checksummed, written to a temporary file and renamed, never more than
//!   [`FailStatic::max_bytes`]. Nothing is written before a server has answered, nor
//!   while values of a snapshot are in use in a type no server has answered (the file
//!   would present an old configuration as new).
//! - On start, the file is read and checked in the background and the outcome reported
//!   at once (`meshwork.xds.snapshot.loads{outcome}`: `ok` or why not; logged, at info
//!   when there is none yet, at warn when it is refused). The client serves from it when
//!   every server it would try failed (gRFC A71's order, each within the connect
//!   timeout), or when a does-not-exist timer fires before any server answered (a control
//!   plane that holds the requests without a word): each resource ACKED with its old
//!   version and marked `from_snapshot` in [`XdsClient::dump`], in CSDS
//!   (`is_static_resource`: loaded from a file at start, not sent by a control plane) and
//!   in the metric `meshwork.xds.snapshot.resources`. It keeps trying the servers; a
//!   server's answers for a type replace that type's snapshot values
//!   ([`AdsState::seed`](crate::protocol::AdsState::seed) says how).
//! - A snapshot that is missing, unreadable, untrusted (a symbolic link, another owner,
//!   writable by others: unix only), truncated, corrupt, of another format, of another
//!   node or server list, older than [`FailStatic::max_age`], or holding a resource that no
//!   longer validates is not used: the reason is a typed [`SnapshotError`]. Never a
//!   panic; a refused snapshot leaves the client as it would be without one.
//!
//! Give the snapshot a directory of its own (e.g. a subdirectory of a Kubernetes
//! `emptyDir` volume, whose mount point is world-writable): meshwork creates it with mode
//! 0700, and refuses a directory others could write.
//!
//! [`XdsClientBuilder::fail_static`]: crate::client::XdsClientBuilder::fail_static
//! [`XdsClient::builder`]: crate::client::XdsClient::builder
//! [`XdsClient::dump`]: crate::client::XdsClient::dump
//! [`XdsClient::save_snapshot`]: crate::client::XdsClient::save_snapshot

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::google::protobuf::Any;
use opentelemetry::metrics::Counter;
use opentelemetry::{KeyValue, StringValue};
use tokio::sync::{Notify, oneshot};

use crate::bootstrap::Bootstrap;
use crate::protocol::{AdsState, Seed};
use crate::resource::{self, ResourceError, ResourceErrorKind, ResourceType};
use crate::watch::ResourceKey;

mod file;
mod trust;

#[doc(hidden)]
pub use file::fuzzing;
pub use file::{CorruptReason, SnapshotError};
use file::{Expected, SnapshotFile, SnapshotRecord};

/// The environment variable naming the snapshot directory when code does not.
pub const SNAPSHOT_DIR_ENV: &str = "MESHWORK_XDS_SNAPSHOT_DIR";

/// The default [`FailStatic::max_age`]: a day.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// The default [`FailStatic::max_bytes`]: 64 MiB.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// How long after a change the snapshot is written: changes within it are written once.
pub(crate) const WRITE_DELAY: Duration = Duration::from_secs(1);

/// The default [`FailStatic::write_interval`]: 30 s.
pub const DEFAULT_WRITE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a resource the client stopped watching stays in the snapshots written after:
/// a process that drops its watches while shutting down (then writes) keeps their
/// configuration for its restart, and one that stopped needing a resource loses it after
/// this.
pub(crate) const RETIRED_FOR: Duration = Duration::from_secs(10 * 60);

/// How long [`XdsClient::save_snapshot`](crate::client::XdsClient::save_snapshot) waits for
/// the write (a hung disk must not hang a graceful shutdown).
pub(crate) const SAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the worker waits for the snapshot read at start when every server has failed:
/// a file on a hung mount must not keep the client from trying its servers again.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how the xDS client keeps its fail-static snapshot.
///
/// ```
/// use std::time::Duration;
/// use meshwork_xds::fail_static::FailStatic;
///
/// let fail_static = FailStatic::new("/var/lib/my-service/xds").max_age(Duration::from_secs(3600));
/// assert_eq!(fail_static.dir(), std::path::Path::new("/var/lib/my-service/xds"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailStatic {
    dir: PathBuf,
    max_age: Duration,
    max_bytes: usize,
    write_interval: Duration,
    read_only: bool,
}

impl FailStatic {
    /// Keep the snapshot in `dir` (created, mode 0700, at the first write if missing).
    /// Several clients may share a directory: each node id and server list has its own
    /// file. Two clients with the same bootstrap in one process would overwrite each
    /// other's; share one [`XdsClient`](crate::client::XdsClient) instead.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
            write_interval: DEFAULT_WRITE_INTERVAL,
            read_only: false,
        }
    }

    /// The directory named by [`SNAPSHOT_DIR_ENV`], if it is set and not empty.
    pub fn from_env() -> Option<Self> {
        Self::from_env_with(|name| std::env::var_os(name))
    }

    /// [`from_env`](Self::from_env) with the environment read through `lookup`.
    pub fn from_env_with<F>(lookup: F) -> Option<Self>
    where
        F: FnOnce(&str) -> Option<std::ffi::OsString>,
    {
        lookup(SNAPSHOT_DIR_ENV)
            .filter(|dir| !dir.is_empty())
            .map(Self::new)
    }

    /// The oldest snapshot used on start (default a day, [`DEFAULT_MAX_AGE`]): an older
    /// one is refused as [`SnapshotError::Stale`]. Serving from a snapshot has no age
    /// limit once started: the client keeps it until a server answers.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The largest snapshot written or read (default 64 MiB, [`DEFAULT_MAX_BYTES`]). A
    /// configuration that would need more is not written (the older file stays) and
    /// counted in `meshwork.xds.snapshot.writes` as `too_large`.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The least time between two periodic writes (default 30 s,
    /// [`DEFAULT_WRITE_INTERVAL`]): a configuration that keeps changing is written at this
    /// pace, a change after a quiet period 1 s after it. A restart loses at most this much of
    /// the latest changes; [`XdsClient::save_snapshot`](crate::client::XdsClient::save_snapshot)
    /// writes at once (for a graceful shutdown).
    pub fn write_interval(mut self, interval: Duration) -> Self {
        self.write_interval = interval;
        self
    }

    /// Serve the snapshot but never write it: for tools that run with a service's
    /// bootstrap and directory (`xds-dump`), whose view of one target must not replace the
    /// service's whole configuration.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a client started from `bootstrap` reads and writes.
    pub fn path_for(&self, bootstrap: &Bootstrap) -> PathBuf {
        let servers = server_uris(bootstrap);
        self.dir
            .join(file::file_name(&bootstrap.node().to_proto().id, &servers))
    }
}

/// The server URIs a snapshot is bound to, in the bootstrap's order.
pub(crate) fn server_uris(bootstrap: &Bootstrap) -> Vec<String> {
    bootstrap
        .xds_servers()
        .iter()
        .map(|server| server.uri().to_owned())
        .collect()
}

/// A snapshot read and checked, ready to seed.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// Its resources, validated.
    pub(crate) seeds: Vec<Seed>,
    /// When it was written.
    pub(crate) written_at: SystemTime,
    /// Its file.
    pub(crate) path: PathBuf,
}

/// A resource the client stopped watching, kept for the next writes ([`RETIRED_FOR`]).
#[derive(Debug)]
pub(crate) struct Retired {
    /// Its value as a server sent it.
    pub(crate) raw: Any,
    /// Its version.
    pub(crate) version: String,
    /// When the client stopped watching it.
    pub(crate) at: Instant,
}

impl Retired {
    /// About the bytes it takes in a snapshot (and in memory).
    pub(crate) fn size(&self) -> usize {
        self.raw.value.len() + self.raw.type_url.len() + self.version.len()
    }
}

/// What [`XdsClient::save_snapshot`](crate::client::XdsClient::save_snapshot) waits on.
pub(crate) type SaveReply = oneshot::Sender<Result<Option<PathBuf>, SnapshotError>>;

/// The writer's mailbox: one slot, so a writer slower than the changes (a stalled disk)
/// holds one pending snapshot, not a queue of them.
#[derive(Default)]
struct Mailbox {
    pending: Option<SnapshotFile>,
    /// Who waits for the pending snapshot (or a newer one) to be written.
    replies: Vec<SaveReply>,
    /// The client is gone: write what is pending, then stop.
    closed: bool,
}

struct Shared {
    mailbox: Mutex<Mailbox>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Mailbox> {
        // A poisoned lock only means a panic elsewhere; the mailbox is still consistent.
        self.mailbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The snapshot machinery of one client: what it is bound to, and the writer's mailbox.
pub(crate) struct Persist {
    config: Arc<FailStatic>,
    node_id: Arc<str>,
    servers: Arc<[String]>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Persist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persist")
            .field("config", &self.config)
            .field("node_id", &self.node_id)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

impl Drop for Persist {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl Persist {
    /// Start the writer task for a client of `node_id` on `servers`.
    pub(crate) fn start(
        config: FailStatic,
        node_id: String,
        servers: Vec<String>,
        writes: SnapshotCounter,
    ) -> Self {
        let config = Arc::new(config);
        let shared = Arc::new(Shared {
            mailbox: Mutex::new(Mailbox::default()),
            wake: Notify::new(),
        });
        if !config.read_only {
            tokio::spawn(write_loop(config.clone(), shared.clone(), writes));
        }
        Self {
            config,
            node_id: node_id.into(),
            servers: servers.into(),
            shared,
        }
    }

    /// The least time between two periodic writes.
    pub(crate) fn write_interval(&self) -> Duration {
        self.config.write_interval
    }

    /// Whether the snapshot is only read.
    pub(crate) fn is_read_only(&self) -> bool {
        self.config.read_only
    }

    /// The largest snapshot written: what is kept for writes is bounded by it too.
    pub(crate) fn max_bytes(&self) -> usize {
        self.config.max_bytes
    }

    /// Read and check the snapshot on a blocking thread: the resources to seed, or why not.
    pub(crate) fn load(&self) -> tokio::task::JoinHandle<Result<Loaded, SnapshotError>> {
        let (config, node_id, servers) = (
            self.config.clone(),
            self.node_id.clone(),
            self.servers.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let expected = Expected {
                node_id: &node_id,
                servers: &servers,
                max_age: config.max_age,
                now: SystemTime::now(),
                max_bytes: config.max_bytes,
            };
            let snapshot = file::read(&config.dir, &expected)?;
            let written_at = snapshot.written_at;
            Ok(Loaded {
                seeds: seeds(snapshot)?,
                written_at,
                path: config.dir.join(file::file_name(&node_id, &servers)),
            })
        })
    }

    /// Hand the cache's valid resources, and those `retired` within [`RETIRED_FOR`] of
    /// `now`, to the writer, unless values of a snapshot are in use or pooled in a type no
    /// server has answered (writing would make an old configuration look new, or leave out
    /// what a restart needs) or the snapshot is read-only: then `reply` hears `Ok(None)`.
    /// A seeded value a server rejected an update of is written as any last good value.
    /// Returns whether it did.
    pub(crate) fn save(
        &self,
        ads: &AdsState,
        retired: &HashMap<ResourceKey, Retired>,
        now: Instant,
        reply: Option<SaveReply>,
    ) -> bool {
        let nothing = |reply: Option<SaveReply>| {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(None));
            }
            false
        };
        if self.config.read_only || ads.holds_unanswered_snapshot_values() {
            return nothing(reply);
        }
        let mut records = Vec::new();
        for view in ads.resources() {
            if let (Some(raw), Some(version)) = (view.raw, view.version) {
                records.push(record(view.resource_type, view.name, version, raw));
            }
        }
        for ((resource_type, name), kept) in retired {
            let fresh = now.saturating_duration_since(kept.at) < RETIRED_FOR;
            if fresh && ads.get(*resource_type, name).is_none() {
                records.push(record(*resource_type, name, &kept.version, &kept.raw));
            }
        }
        let snapshot = SnapshotFile {
            node_id: self.node_id.to_string(),
            servers: self.servers.to_vec(),
            written_at: SystemTime::now(),
            records,
        };
        let mut mailbox = self.shared.lock();
        mailbox.pending = Some(snapshot);
        mailbox.replies.extend(reply);
        drop(mailbox);
        self.shared.wake.notify_one();
        true
    }
}

fn record(resource_type: ResourceType, name: &str, version: &str, raw: &Any) -> SnapshotRecord {
    SnapshotRecord {
        type_url: resource_type.type_url().to_owned(),
        name: name.to_owned(),
        version: version.to_owned(),
        resource: raw.clone(),
    }
}

/// Validate every record as a response's resource would be: one that fails refuses the
/// whole snapshot, since half a configuration could route where the whole would not.
fn seeds(snapshot: SnapshotFile) -> Result<Vec<Seed>, SnapshotError> {
    snapshot
        .records
        .into_iter()
        .map(|record| {
            let invalid = |source| SnapshotError::Invalid {
                type_url: record.type_url.clone(),
                name: record.name.clone(),
                source,
            };
            let error = |path: &str, reason: String| {
                let kind = ResourceErrorKind::invalid(path, reason);
                ResourceError::new(Some(record.name.clone()), kind)
            };
            let Some(resource_type) = ResourceType::from_type_url(&record.type_url) else {
                let reason = "not a resource type of xDS".to_owned();
                return Err(invalid(Box::new(error("type_url", reason))));
            };
            let value = resource::decode(resource_type, &record.resource)
                .map_err(|e| invalid(Box::new(e)))?;
            if value.name() != record.name {
                let reason = format!("the resource is named {:?}", value.name());
                return Err(invalid(Box::new(error("name", reason))));
            }
            Ok(Seed {
                value,
                raw: record.resource,
                version: record.version,
            })
        })
        .collect()
}

/// Write the newest snapshot handed over, one write at a time, until the client is gone
/// and what it handed over last is written. A failure is logged at warn when it is new
/// (the first, or another kind than the last), at debug while it repeats.
async fn write_loop(config: Arc<FailStatic>, shared: Arc<Shared>, writes: SnapshotCounter) {
    let mut last_failure: Option<&'static str> = None;
    loop {
        let (snapshot, replies, closed) = {
            let mut mailbox = shared.lock();
            (
                mailbox.pending.take(),
                std::mem::take(&mut mailbox.replies),
                mailbox.closed,
            )
        };
        let Some(snapshot) = snapshot else {
            if closed {
                return;
            }
            shared.wake.notified().await;
            continue;
        };
        let resources = snapshot.records.len();
        let path = config
            .dir
            .join(file::file_name(&snapshot.node_id, &snapshot.servers));
        let job = config.clone();
        let written =
            tokio::task::spawn_blocking(move || file::write(&job.dir, &snapshot, job.max_bytes))
                .await
                .unwrap_or_else(|join| {
                    Err(SnapshotError::Io {
                        path: path.clone(),
                        source: std::io::Error::other(join.to_string()),
                    })
                });
        let outcome = match written {
            Ok(bytes) => {
                tracing::debug!(resources, bytes, path = %path.display(), "xDS fail-static snapshot written");
                if last_failure.take().is_some() {
                    tracing::info!(path = %path.display(), "xDS fail-static snapshot written again");
                }
                writes.record("ok");
                Ok(Some(path))
            }
            Err(error) => {
                let kind = error.kind();
                if last_failure != Some(kind) {
                    tracing::warn!(error = %crate::ErrorChain(&error), "xDS fail-static snapshot not written");
                } else {
                    tracing::debug!(error = %crate::ErrorChain(&error), "xDS fail-static snapshot not written");
                }
                last_failure = Some(kind);
                writes.record(kind);
                Err(error)
            }
        };
        let mut replies = replies.into_iter();
        if let Some(first) = replies.next() {
            // The error is not Clone: the first waiter gets it, the others its text.
            let shared_outcome = outcome
                .as_ref()
                .map(Clone::clone)
                .map_err(|e| (e.kind(), crate::ErrorChain(e).to_string()));
            let _ = first.send(outcome);
            for reply in replies {
                let _ = reply.send(
                    shared_outcome
                        .clone()
                        .map_err(|(_, text)| SnapshotError::Io {
                            path: config.dir.clone(),
                            source: std::io::Error::other(text),
                        }),
                );
            }
        }
    }
}

/// Counts the fail-static snapshot's writes (`meshwork.xds.snapshot.writes`) from the
/// writer task.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotCounter {
    counter: Counter<u64>,
    target: StringValue,
}

impl SnapshotCounter {
    /// Counts on `counter` for the client of `grpc.target` `target`.
    pub(crate) fn new(counter: Counter<u64>, target: StringValue) -> Self {
        Self { counter, target }
    }

    /// Counts one write: `ok`, or the failure's kind.
    pub(crate) fn record(&self, outcome: &'static str) {
        self.counter.add(
            1,
            &[
                KeyValue::new("grpc.target", self.target.clone()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }
}

#[cfg(test)]
mod outage_tests;
#[cfg(test)]
mod rejection_tests;
