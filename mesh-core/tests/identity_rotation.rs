//! Rotation under steady load with the file watcher: both SVIDs, then the CA bundle, rotate
//! several times while clients keep calling; a broken file mid-rotation keeps the last good
//! SVID serving. Time is paused (tokio test-util), the handshakes are real rustls over
//! in-memory streams.

mod support;

use meshwork_test_support::temp_dir;
use support::call;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use meshwork_core::identity::testing::{Flaw, TestCa};
use meshwork_core::identity::{
    Authorizer, FileWatcherSource, IdentityError, MtlsConfig, SvidSource,
};
use meshwork_core::xds::bootstrap::FileWatcherConfig;
use rustls_pki_types::CertificateDer;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const REFRESH: Duration = Duration::from_secs(10);

struct Files {
    dir: PathBuf,
    name: &'static str,
}

impl Files {
    fn new(dir: &Path, name: &'static str) -> Self {
        Self {
            dir: dir.to_owned(),
            name,
        }
    }
    fn path(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{}-{what}", self.name))
    }
    fn config(&self) -> FileWatcherConfig {
        FileWatcherConfig::from_identity(self.path("cert.pem"), self.path("key.pem"))
            .with_spiffe_trust_bundle_map_file(self.path("bundle.json"))
            .with_refresh_interval(REFRESH)
    }
    /// Writes a file the way agents do: to a temporary name, then renamed into place.
    fn write(&self, what: &str, contents: &str) {
        let tmp = self.path(&format!("{what}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(tmp, self.path(what)).unwrap();
    }
    fn write_svid(&self, ca: &TestCa, path: &str) -> CertificateDer<'static> {
        let m = ca.mint(path, Flaw::None);
        self.write("cert.pem", &m.cert_pem);
        self.write("key.pem", &m.key_pem);
        m.chain().remove(0)
    }
    fn write_bundles(&self, cas: &[&TestCa]) {
        self.write("bundle.json", &TestCa::bundle_map_json(cas));
    }
}

#[tokio::test(start_paused = true)]
async fn file_watcher_rotation_under_load_drops_no_call() {
    let dir = temp_dir("identity-rotation");
    let server_files = Files::new(&dir, "server");
    let client_files = Files::new(&dir, "client");
    let mut ca = TestCa::new("example.org");
    let mut server_leaf = server_files.write_svid(&ca, "/ns/default/sa/server");
    client_files.write_svid(&ca, "/ns/default/sa/client");
    server_files.write_bundles(&[&ca]);
    client_files.write_bundles(&[&ca]);

    let server_source = Arc::new(FileWatcherSource::start(&server_files.config()).unwrap());
    let client_source = Arc::new(FileWatcherSource::start(&client_files.config()).unwrap());
    let acceptor = TlsAcceptor::from(Arc::new(
        MtlsConfig::new(server_source.clone())
            .authorizer(Authorizer::Exact(
                "spiffe://example.org/ns/default/sa/client".parse().unwrap(),
            ))
            .server_config()
            .unwrap(),
    ));
    let connector = TlsConnector::from(Arc::new(
        MtlsConfig::new(client_source.clone())
            .authorizer(Authorizer::MemberOf("example.org".parse().unwrap()))
            .client_config()
            .unwrap(),
    ));

    // Steady load: four clients calling every 200ms (paced in paused time) until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (connector, acceptor) = (connector.clone(), acceptor.clone());
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call(&connector, &acceptor).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        0
                    }
                };
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    // Waits one refresh interval (plus a beat) and checks that a new handshake presents
    // `expected` and that the server saw the client as the client.
    let settle_and_check = |expected: CertificateDer<'static>| {
        let (connector, acceptor) = (connector.clone(), acceptor.clone());
        async move {
            tokio::time::sleep(REFRESH + Duration::from_millis(100)).await;
            let (leaf, peer) = call(&connector, &acceptor).await.unwrap();
            assert_eq!(leaf, expected, "new handshakes present the new certificate");
            assert_eq!(peer.spiffe_id().path(), "/ns/default/sa/client");
        }
    };

    // 1. Both SVIDs rotate three times under the same CA.
    for _ in 0..3 {
        server_leaf = server_files.write_svid(&ca, "/ns/default/sa/server");
        client_files.write_svid(&ca, "/ns/default/sa/client");
        settle_and_check(server_leaf.clone()).await;
    }

    // 2. A broken file written mid-rotation: the last good SVID keeps serving, the error is
    //    reported.
    let mut status = server_source.status();
    status.mark_unchanged();
    server_files.write("cert.pem", "-----BEGIN CERTIFICATE-----\ntruncated");
    settle_and_check(server_leaf.clone()).await;
    assert!(status.has_changed().unwrap());
    let err = status
        .borrow_and_update()
        .last_error
        .clone()
        .expect("error reported");
    assert!(
        matches!(&err, IdentityError::Pem { field, .. } if field.starts_with("certificate_file")),
        "{err}"
    );
    // A certificate whose key is not rotated with it is refused too.
    let other = ca.mint("/ns/default/sa/server", Flaw::None);
    server_files.write("cert.pem", &other.cert_pem);
    settle_and_check(server_leaf.clone()).await;
    let err = status
        .borrow_and_update()
        .last_error
        .clone()
        .expect("error reported");
    assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
    // Repaired: the next refresh takes it and clears the error.
    server_leaf = server_files.write_svid(&ca, "/ns/default/sa/server");
    settle_and_check(server_leaf.clone()).await;
    assert!(status.borrow_and_update().last_error.is_none());

    // 3. The CA rotates twice: trust old+new, move SVIDs to the new CA, drop the old CA.
    for _ in 0..2 {
        let next = TestCa::new("example.org");
        server_files.write_bundles(&[&ca, &next]);
        client_files.write_bundles(&[&ca, &next]);
        settle_and_check(server_leaf.clone()).await;
        server_leaf = server_files.write_svid(&next, "/ns/default/sa/server");
        client_files.write_svid(&next, "/ns/default/sa/client");
        settle_and_check(server_leaf.clone()).await;
        server_files.write_bundles(&[&next]);
        client_files.write_bundles(&[&next]);
        settle_and_check(server_leaf.clone()).await;
        ca = next;
    }

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok > 1000, "steady load made only {ok} calls");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn file_watcher_start_reports_missing_and_malformed_files() {
    let dir = temp_dir("identity-startup");
    let files = Files::new(&dir, "w");
    let e = FileWatcherSource::start(&files.config()).unwrap_err();
    assert!(
        matches!(
            &e,
            IdentityError::Read {
                field: "spiffe_trust_bundle_map_file",
                ..
            }
        ),
        "{e}"
    );
    let ca = TestCa::new("example.org");
    files.write_bundles(&[&ca]);
    let e = FileWatcherSource::start(&files.config()).unwrap_err();
    assert!(
        matches!(
            &e,
            IdentityError::Read {
                field: "certificate_file",
                ..
            }
        ),
        "{e}"
    );
    files.write_svid(&ca, "/w");
    files.write(
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let e = FileWatcherSource::start(&files.config()).unwrap_err();
    assert!(e.to_string().starts_with("private_key_file ("), "{e}");
    files.write_svid(&ca, "/w");
    files.write("bundle.json", "{\"trust_domains\": 3}");
    let e = FileWatcherSource::start(&files.config()).unwrap_err();
    assert!(
        e.to_string()
            .contains("bundle.json).trust_domains: missing or not an object"),
        "{e}"
    );

    // A CA file instead of a bundle map: roots that apply to any trust domain.
    files.write("ca.pem", ca.root_pem());
    files.write_svid(&ca, "/w");
    let config = FileWatcherConfig::from_identity(files.path("cert.pem"), files.path("key.pem"))
        .with_ca_certificate_file(files.path("ca.pem"));
    let source = FileWatcherSource::start(&config).unwrap();
    let snap = source.snapshot();
    assert_eq!(snap.svid.as_ref().unwrap().spiffe_id().path(), "/w");
    assert!(
        snap.bundles
            .roots_for(&"any.org".parse().unwrap())
            .is_some()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
