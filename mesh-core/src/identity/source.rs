//! The one trait every SVID source implements, and the snapshot it publishes.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::bundle::TrustBundles;
use super::error::IdentityError;
use super::svid::Svid;

/// What a source currently holds: our SVID (if it provides one) and the trust bundles.
///
/// Handshakes read one snapshot each, so a rotation never mixes an old key with a new
/// certificate.
#[derive(Debug, Clone, Default)]
pub struct IdentitySnapshot {
    /// Our SVID; `None` for a source that only provides roots.
    pub svid: Option<Svid>,
    /// The roots peers are verified against.
    pub bundles: TrustBundles,
}

/// How a source is doing: how many snapshots it has published and the last error it hit.
///
/// After an error the previous snapshot stays in use; `last_error` is cleared by the next
/// successful update.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    /// Snapshots published so far (the first is 1).
    pub generation: u64,
    /// The error of the last failed update, if the last update failed.
    pub last_error: Option<IdentityError>,
}

/// A source of SVIDs and trust bundles that may change over time: the Workload API
/// ([`WorkloadApiSource`](super::WorkloadApiSource)), watched files
/// ([`FileWatcherSource`](super::FileWatcherSource)) or values set in code
/// ([`StaticSource`](super::StaticSource)).
pub trait SvidSource: Send + Sync + fmt::Debug + 'static {
    /// The current snapshot. Cheap (an atomic load) and never blocks: called on every
    /// handshake.
    fn snapshot(&self) -> Arc<IdentitySnapshot>;

    /// A receiver that is marked changed on every published snapshot and every failed
    /// update.
    fn status(&self) -> watch::Receiver<SourceStatus>;
}

/// The shared state sources publish into: a lock-free current snapshot and a status watch.
#[derive(Debug)]
pub(crate) struct Publisher {
    current: ArcSwap<IdentitySnapshot>,
    status: watch::Sender<SourceStatus>,
}

impl Publisher {
    pub(crate) fn new(first: IdentitySnapshot) -> Self {
        let (status, _) = watch::channel(SourceStatus {
            generation: 1,
            last_error: None,
        });
        Self {
            current: ArcSwap::from_pointee(first),
            status,
        }
    }

    pub(crate) fn load(&self) -> Arc<IdentitySnapshot> {
        self.current.load_full()
    }

    pub(crate) fn publish(&self, next: IdentitySnapshot) {
        match &next.svid {
            Some(svid) => tracing::info!(
                spiffe_id = %svid.spiffe_id(),
                not_after = svid.not_after(),
                "SVID rotated"
            ),
            None => tracing::info!("identity updated (no SVID)"),
        }
        self.current.store(Arc::new(next));
        self.status.send_modify(|s| {
            s.generation += 1;
            s.last_error = None;
        });
    }

    pub(crate) fn fail(&self, error: IdentityError) {
        tracing::warn!(%error, "identity update failed; keeping the last good SVID and bundles");
        self.status.send_modify(|s| s.last_error = Some(error));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }
}

/// Identity material set in code: for tests and deployments without rotation (or with
/// rotation driven by the application through [`StaticSource::set`]).
#[derive(Debug)]
pub struct StaticSource {
    publisher: Publisher,
}

impl StaticSource {
    /// A source holding `svid` (or none) and `bundles`.
    pub fn new(svid: Option<Svid>, bundles: TrustBundles) -> Self {
        Self {
            publisher: Publisher::new(IdentitySnapshot { svid, bundles }),
        }
    }

    /// Replaces the SVID and bundles; new handshakes use them.
    pub fn set(&self, svid: Option<Svid>, bundles: TrustBundles) {
        self.publisher.publish(IdentitySnapshot { svid, bundles });
    }
}

impl SvidSource for StaticSource {
    fn snapshot(&self) -> Arc<IdentitySnapshot> {
        self.publisher.load()
    }

    fn status(&self) -> watch::Receiver<SourceStatus> {
        self.publisher.subscribe()
    }
}
