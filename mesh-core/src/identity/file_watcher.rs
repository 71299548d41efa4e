//! The gRPC bootstrap's `file_watcher` certificate provider: PEM files (and a SPIFFE bundle
//! map) re-read every `refresh_interval`.

use std::path::Path;
use std::sync::Arc;

use meshwork_xds::bootstrap::FileWatcherConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::bundle::TrustBundles;
use super::error::IdentityError;
use super::source::{IdentitySnapshot, Publisher, SourceStatus, SvidSource};
use super::svid::{Svid, certs_from_pem, key_from_pem};

/// SVID and bundles from files, as Istio's agent writes them for proxyless gRPC, re-read
/// every `refresh_interval` (tokio time, so tests can pause it).
///
/// - `certificate_file` + `private_key_file`: our SVID (chain, leaf first; the key must
///   match the leaf, or the update is refused);
/// - `spiffe_trust_bundle_map_file` (gRFC A87): roots per trust domain; when set,
///   `ca_certificate_file` is ignored, as in gRPC;
/// - otherwise `ca_certificate_file`: roots that apply to every trust domain.
///
/// An update that fails (a missing, half-written or mismatched file) keeps the last good
/// snapshot serving and is reported through [`SvidSource::status`] and a `tracing` warning.
/// Files are re-parsed only when their bytes change. The watcher task stops when the
/// source is dropped.
#[derive(Debug)]
pub struct FileWatcherSource {
    publisher: Arc<Publisher>,
    task: JoinHandle<()>,
}

impl Drop for FileWatcherSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The raw bytes of the watched files, to skip re-parsing unchanged ones.
#[derive(Debug, Default, PartialEq, Eq)]
struct Contents {
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    ca: Option<Vec<u8>>,
    bundle_map: Option<Vec<u8>>,
}

impl FileWatcherSource {
    /// Loads the files once (failing if they are unusable) and starts watching them. Must be
    /// called within a tokio runtime.
    pub fn start(config: &FileWatcherConfig) -> Result<Self, IdentityError> {
        let contents = read_all(config)?;
        let first = parse(config, &contents)?;
        let publisher = Arc::new(Publisher::new(first));
        let task = tokio::spawn(watch_files(
            config.clone(),
            contents,
            Arc::downgrade(&publisher),
        ));
        Ok(Self { publisher, task })
    }

    /// Reads and parses the files once, without watching: what one refresh would load.
    pub fn load_once(config: &FileWatcherConfig) -> Result<IdentitySnapshot, IdentityError> {
        parse(config, &read_all(config)?)
    }
}

impl SvidSource for FileWatcherSource {
    fn snapshot(&self) -> Arc<IdentitySnapshot> {
        self.publisher.load()
    }

    fn status(&self) -> watch::Receiver<SourceStatus> {
        self.publisher.subscribe()
    }
}

async fn watch_files(
    config: FileWatcherConfig,
    mut last: Contents,
    publisher: std::sync::Weak<Publisher>,
) {
    let mut tick = tokio::time::interval(config.refresh_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(publisher) = publisher.upgrade() else {
            return;
        };
        // The files are small; reading them inline is cheaper than a blocking-pool hop.
        match read_all(&config) {
            Ok(contents) if contents == last => {}
            Ok(contents) => match parse(&config, &contents) {
                Ok(snapshot) => {
                    tracing::debug!(
                        spiffe_id = ?snapshot.svid.as_ref().map(|s| s.spiffe_id().to_string()),
                        "identity files changed; new handshakes use them"
                    );
                    publisher.publish(snapshot);
                    last = contents;
                }
                Err(e) => publisher.fail(e),
            },
            Err(e) => publisher.fail(e),
        }
    }
}

fn read(field: &'static str, path: Option<&Path>) -> Result<Option<Vec<u8>>, IdentityError> {
    path.map(|p| {
        std::fs::read(p).map_err(|e| IdentityError::Read {
            field,
            path: p.to_owned(),
            source: Arc::new(e),
        })
    })
    .transpose()
}

fn read_all(config: &FileWatcherConfig) -> Result<Contents, IdentityError> {
    let bundle_map = read(
        "spiffe_trust_bundle_map_file",
        config.spiffe_trust_bundle_map_file(),
    )?;
    let ca = if bundle_map.is_some() {
        None
    } else {
        read("ca_certificate_file", config.ca_certificate_file())?
    };
    Ok(Contents {
        cert: read("certificate_file", config.certificate_file())?,
        key: read("private_key_file", config.private_key_file())?,
        ca,
        bundle_map,
    })
}

fn parse(config: &FileWatcherConfig, c: &Contents) -> Result<IdentitySnapshot, IdentityError> {
    let field = |name: &str, p: Option<&Path>| match p {
        Some(p) => format!("{name} ({})", p.display()),
        None => name.to_owned(),
    };
    let svid = match (&c.cert, &c.key) {
        (Some(cert), Some(key)) => {
            let cert_field = field("certificate_file", config.certificate_file());
            let chain = certs_from_pem(cert, &cert_field)?;
            let key_field = field("private_key_file", config.private_key_file());
            let key = key_from_pem(key, &key_field)?;
            Some(Svid::from_der_fields(chain, key, &cert_field, &key_field)?)
        }
        _ => None,
    };
    let bundles = if let Some(map) = &c.bundle_map {
        TrustBundles::from_spiffe_bundle_map(
            map,
            &field(
                "spiffe_trust_bundle_map_file",
                config.spiffe_trust_bundle_map_file(),
            ),
        )?
    } else if let Some(ca) = &c.ca {
        TrustBundles::from_pem_any_domain(
            ca,
            &field("ca_certificate_file", config.ca_certificate_file()),
        )?
    } else {
        TrustBundles::new()
    };
    Ok(IdentitySnapshot { svid, bundles })
}
