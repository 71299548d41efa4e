//! The run's identities and their rotation: the client's SVID and roots in a
//! `StaticSource` (in process), the backends' in files they watch (rewritten atomically,
//! as a node agent does). A CA rotation goes as istiod's does: the new root joins every
//! bundle, then SVIDs are re-issued by the new CA, then the old root leaves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshwork_core::identity::testing::{Flaw, TestCa};
use meshwork_core::identity::{StaticSource, SvidSource as _, TrustBundles};

use crate::Error;
use crate::backend::{CA, CERT, KEY};

pub(crate) const TRUST_DOMAIN: &str = "soak.example";
const CLIENT_PATH: &str = "/ns/soak/sa/client";
const ECHO_PATH: &str = "/ns/soak/sa/echo";

/// The SPIFFE ID every backend serves as (one service account, as in Kubernetes).
pub(crate) fn echo_id() -> String {
    format!("spiffe://{TRUST_DOMAIN}{ECHO_PATH}")
}

/// The CAs, who signs, and where each side's identity goes.
pub(crate) struct Identities {
    /// Trusted roots, oldest first; the last one signs.
    trusted: Vec<TestCa>,
    client: Arc<StaticSource>,
    backend_dir: PathBuf,
    /// SVIDs issued so far (each rotation issues one per side).
    pub(crate) reissued: u32,
}

impl Identities {
    /// A first CA and first SVIDs, the backends' files written into `backend_dir`.
    pub(crate) fn new(backend_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(backend_dir)?;
        let mut me = Self {
            trusted: vec![TestCa::new(TRUST_DOMAIN)],
            client: Arc::new(StaticSource::new(None, TrustBundles::new())),
            backend_dir: backend_dir.to_owned(),
            reissued: 0,
        };
        me.publish_roots()?;
        me.reissue()?;
        me.reissued = 0;
        Ok(me)
    }

    /// The client's identity source.
    pub(crate) fn client(&self) -> Arc<StaticSource> {
        self.client.clone()
    }

    fn signer(&self) -> &TestCa {
        self.trusted
            .last()
            .expect("at least one CA is always trusted")
    }

    fn roots_pem(&self) -> String {
        self.trusted.iter().map(|ca| ca.root_pem()).collect()
    }

    fn bundles(&self) -> Result<TrustBundles, Error> {
        Ok(TrustBundles::from_pem_any_domain(
            self.roots_pem().as_bytes(),
            "soak roots",
        )?)
    }

    /// New SVIDs for the client and the backends from the signing CA.
    pub(crate) fn reissue(&mut self) -> Result<(), Error> {
        let backend = self.signer().mint(ECHO_PATH, Flaw::None);
        // Key first: a watcher that reads between the two writes sees a mismatched pair,
        // refuses it and keeps the old one until its next look.
        write_atomic(&self.backend_dir.join(KEY), &backend.key_pem)?;
        write_atomic(&self.backend_dir.join(CERT), &backend.cert_pem)?;
        let svid = self.signer().svid(CLIENT_PATH);
        self.client.set(Some(svid), self.bundles()?);
        self.reissued += 1;
        Ok(())
    }

    fn publish_roots(&self) -> Result<(), Error> {
        write_atomic(&self.backend_dir.join(CA), &self.roots_pem())?;
        // Only the roots change: the client keeps its SVID.
        let current = self.client.snapshot().svid.clone();
        self.client.set(current, self.bundles()?);
        Ok(())
    }

    /// CA rotation, step 1: a new root joins every bundle (the overlap period begins).
    pub(crate) fn add_root(&mut self) -> Result<(), Error> {
        self.trusted.push(TestCa::new(TRUST_DOMAIN));
        self.publish_roots()
    }

    /// CA rotation, step 3: only the signing root stays trusted.
    pub(crate) fn remove_old_roots(&mut self) -> Result<(), Error> {
        let keep = self.trusted.len() - 1;
        self.trusted.drain(..keep);
        self.publish_roots()
    }
}

/// Writes `path` whole or not at all: a temporary file renamed over it.
fn write_atomic(path: &Path, contents: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
