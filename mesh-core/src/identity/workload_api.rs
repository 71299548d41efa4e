//! The SPIFFE Workload API (what SPIRE's agent serves), through `spiffe::X509Source`.

use std::sync::Arc;

use spiffe::X509Source;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::bundle::TrustBundles;
use super::error::IdentityError;
use super::source::{IdentitySnapshot, Publisher, SourceStatus, SvidSource};
use super::svid::Svid;

/// SVID and bundles streamed from the Workload API.
///
/// Each update of the underlying [`X509Source`] is converted once (key loaded into the
/// crypto provider, trust anchors derived) and published; handshakes only load the result.
/// An update that cannot be converted keeps the last good snapshot and is reported through
/// [`SvidSource::status`].
#[derive(Debug)]
pub struct WorkloadApiSource {
    publisher: Arc<Publisher>,
    source: X509Source,
    task: JoinHandle<()>,
}

impl Drop for WorkloadApiSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WorkloadApiSource {
    /// Connects to the endpoint in `SPIFFE_ENDPOINT_SOCKET` and waits for the first SVID.
    pub async fn connect() -> Result<Self, IdentityError> {
        let source = X509Source::new().await.map_err(wl)?;
        Self::from_x509_source(source)
    }

    /// Connects to `endpoint` (e.g. `unix:///run/spire/agent.sock`) and waits for the first
    /// SVID.
    pub async fn connect_to(endpoint: &str) -> Result<Self, IdentityError> {
        let source = X509Source::builder()
            .endpoint(endpoint)
            .build()
            .await
            .map_err(wl)?;
        Self::from_x509_source(source)
    }

    /// Wraps an already built source. Must be called within a tokio runtime.
    pub fn from_x509_source(source: X509Source) -> Result<Self, IdentityError> {
        let first = convert(&source)?;
        let publisher = Arc::new(Publisher::new(first));
        let task = tokio::spawn(follow(source.clone(), Arc::downgrade(&publisher)));
        Ok(Self {
            publisher,
            source,
            task,
        })
    }

    /// The underlying `spiffe` source (e.g. for JWT-less bundle queries or shutdown).
    pub fn x509_source(&self) -> &X509Source {
        &self.source
    }
}

fn wl(e: spiffe::X509SourceError) -> IdentityError {
    IdentityError::WorkloadApi(Arc::new(e))
}

fn convert(source: &X509Source) -> Result<IdentitySnapshot, IdentityError> {
    let svid = source.svid().map_err(wl)?;
    let bundles = source.bundle_set().map_err(wl)?;
    Ok(IdentitySnapshot {
        svid: Some(Svid::from_spiffe(&svid)?),
        bundles: TrustBundles::from_bundle_set(&bundles)?,
    })
}

async fn follow(source: X509Source, publisher: std::sync::Weak<Publisher>) {
    let mut updates = source.updated();
    loop {
        let changed = updates.changed().await;
        let Some(publisher) = publisher.upgrade() else {
            return;
        };
        if let Err(e) = changed {
            publisher.fail(wl(e));
            return;
        }
        match convert(&source) {
            Ok(snapshot) => publisher.publish(snapshot),
            Err(e) => publisher.fail(e),
        }
    }
}

impl SvidSource for WorkloadApiSource {
    fn snapshot(&self) -> Arc<IdentitySnapshot> {
        self.publisher.load()
    }

    fn status(&self) -> watch::Receiver<SourceStatus> {
        self.publisher.subscribe()
    }
}
