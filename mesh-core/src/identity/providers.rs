//! The bootstrap's certificate provider instances (gRFC A29), started on first use.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use meshwork_xds::bootstrap::{Bootstrap, CertificateProviderConfig};
use meshwork_xds::resource::{DownstreamTls, UpstreamTls};
use tokio::sync::watch;

use super::error::IdentityError;
use super::file_watcher::FileWatcherSource;
use super::source::{IdentitySnapshot, SourceStatus, SvidSource};
use super::tls::{ClientAuth, MtlsConfig};

/// The certificate provider instances a bootstrap defines, by name, each started (a
/// [`FileWatcherSource`]) the first time xDS security configuration refers to it and shared
/// by every cluster that does.
///
/// A cluster's `UpstreamTlsContext` names one instance for our identity and one for the
/// roots (Istio: `default` and `ROOTCA`, often the same instance);
/// [`for_upstream`](Self::for_upstream) gives the source that combines them, and
/// [`for_downstream`](Self::for_downstream) a server's TLS from a filter chain's
/// `DownstreamTlsContext`. Starting an
/// instance loads its files at once, so a missing or malformed file is an error there and
/// then; later rotations that fail keep the last good material (see [`FileWatcherSource`]).
/// A failed start is not cached: the next use tries again.
pub struct CertificateProviders {
    configs: BTreeMap<String, CertificateProviderConfig>,
    started: Mutex<HashMap<String, Arc<dyn SvidSource>>>,
}

impl fmt::Debug for CertificateProviders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateProviders")
            .field("instances", &self.configs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CertificateProviders {
    /// The instances of `bootstrap`'s `certificate_providers`; none is started yet.
    pub fn from_bootstrap(bootstrap: &Bootstrap) -> Self {
        Self {
            configs: bootstrap.certificate_providers().clone(),
            started: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the bootstrap defines any instance.
    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    /// The instance named `name`, started if it was not. Must be called within a tokio
    /// runtime (the file watcher is a task).
    pub fn instance(&self, name: &str) -> Result<Arc<dyn SvidSource>, IdentityError> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(source) = started.get(name) {
            return Ok(source.clone());
        }
        let config =
            self.configs
                .get(name)
                .ok_or_else(|| IdentityError::UnknownCertificateProvider {
                    instance: name.to_owned(),
                })?;
        let file_watcher = config.as_file_watcher().ok_or_else(|| {
            IdentityError::UnsupportedCertificateProvider {
                instance: name.to_owned(),
                plugin: config.plugin_name().to_owned(),
            }
        })?;
        let source: Arc<dyn SvidSource> = Arc::new(FileWatcherSource::start(file_watcher)?);
        started.insert(name.to_owned(), source.clone());
        Ok(source)
    }

    /// The source for a cluster's upstream TLS: our SVID from its identity instance (none
    /// when it names none: TLS without a client certificate) and the roots from its root
    /// instance.
    pub fn for_upstream(&self, tls: &UpstreamTls) -> Result<Arc<dyn SvidSource>, IdentityError> {
        let roots = self.instance(&tls.root.instance_name)?;
        match &tls.identity {
            Some(id) if id.instance_name == tls.root.instance_name => Ok(roots),
            Some(id) => Ok(Arc::new(Combined {
                identity: Some(self.instance(&id.instance_name)?),
                roots,
            })),
            None => Ok(Arc::new(Combined {
                identity: None,
                roots,
            })),
        }
    }
}

impl CertificateProviders {
    /// A server's TLS from a filter chain's `DownstreamTlsContext` (gRFC A29): it presents
    /// the identity instance's SVID and, with a root instance, verifies client SVIDs
    /// against its bundles, requiring one when `require_client_certificate` is set and
    /// accepting a client without one otherwise ([`ClientAuth`]); without a root instance
    /// clients are not asked for a certificate. Any verified client is allowed
    /// ([`Authorizer::Any`](super::Authorizer::Any)): the chain's RBAC filters authorize.
    ///
    /// The instances must provide what they are used for, else
    /// [`IdentityError::IncompleteCertificateProvider`]: every handshake would fail.
    /// Rotation needs nothing more: each handshake reads the instances' current material.
    pub fn for_downstream(&self, tls: &DownstreamTls) -> Result<MtlsConfig, IdentityError> {
        let identity = self.instance(&tls.identity.instance_name)?;
        if identity.snapshot().svid.is_none() {
            return Err(IdentityError::IncompleteCertificateProvider {
                instance: tls.identity.instance_name.clone(),
                missing: "identity certificate",
            });
        }
        let Some(root) = &tls.root else {
            return Ok(MtlsConfig::new(identity).client_auth(ClientAuth::None));
        };
        let roots = self.instance(&root.instance_name)?;
        if roots.snapshot().bundles.is_empty() {
            return Err(IdentityError::IncompleteCertificateProvider {
                instance: root.instance_name.clone(),
                missing: "root certificates",
            });
        }
        let source = if root.instance_name == tls.identity.instance_name {
            roots
        } else {
            Arc::new(Combined {
                identity: Some(identity),
                roots,
            })
        };
        let client_auth = if tls.require_client_certificate {
            ClientAuth::Required
        } else {
            ClientAuth::Optional
        };
        Ok(MtlsConfig::new(source).client_auth(client_auth))
    }
}

/// Our SVID from one source and the roots from another.
#[derive(Debug)]
struct Combined {
    identity: Option<Arc<dyn SvidSource>>,
    roots: Arc<dyn SvidSource>,
}

impl SvidSource for Combined {
    fn snapshot(&self) -> Arc<IdentitySnapshot> {
        let roots = self.roots.snapshot();
        Arc::new(IdentitySnapshot {
            svid: self
                .identity
                .as_ref()
                .and_then(|s| s.snapshot().svid.clone()),
            bundles: roots.bundles.clone(),
        })
    }

    fn status(&self) -> watch::Receiver<SourceStatus> {
        // The identity's status when there is one (it rotates most often), else the roots'.
        self.identity.as_ref().unwrap_or(&self.roots).status()
    }
}

#[cfg(test)]
mod tests {
    use meshwork_xds::resource::CertProviderInstance;

    use super::*;
    use crate::identity::testing::TestCa;

    fn instance(name: &str, cert: &str) -> CertProviderInstance {
        CertProviderInstance {
            instance_name: name.into(),
            certificate_name: cert.into(),
        }
    }

    /// A bootstrap with an identity-only instance, a roots-only instance, one with both, and
    /// one of an unknown plugin, over files in a fresh directory.
    fn setup(ca: &TestCa) -> (std::path::PathBuf, Bootstrap) {
        let dir = std::env::temp_dir().join(format!(
            "meshwork-providers-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let minted = ca.mint(
            "/ns/default/sa/client",
            crate::identity::testing::Flaw::None,
        );
        std::fs::write(dir.join("cert.pem"), &minted.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &minted.key_pem).unwrap();
        std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
        let d = dir.display();
        let json = format!(
            r#"{{
              "xds_servers": [{{"server_uri": "localhost:1", "channel_creds": [{{"type": "insecure"}}]}}],
              "node": {{"id": "n"}},
              "certificate_providers": {{
                "identity": {{"plugin_name": "file_watcher", "config": {{
                    "certificate_file": "{d}/cert.pem", "private_key_file": "{d}/key.pem"}}}},
                "roots": {{"plugin_name": "file_watcher", "config": {{
                    "ca_certificate_file": "{d}/root.pem"}}}},
                "both": {{"plugin_name": "file_watcher", "config": {{
                    "certificate_file": "{d}/cert.pem", "private_key_file": "{d}/key.pem",
                    "ca_certificate_file": "{d}/root.pem"}}}},
                "broken": {{"plugin_name": "file_watcher", "config": {{
                    "ca_certificate_file": "{d}/missing.pem"}}}},
                "vault": {{"plugin_name": "vault", "config": {{}}}}
              }}
            }}"#
        );
        (dir, Bootstrap::from_json_str(&json).unwrap())
    }

    #[tokio::test]
    async fn instances_are_started_once_and_combined_per_cluster() {
        let ca = TestCa::new("example.org");
        let (dir, bootstrap) = setup(&ca);
        let providers = CertificateProviders::from_bootstrap(&bootstrap);

        let both = providers.instance("both").unwrap();
        assert!(Arc::ptr_eq(&both, &providers.instance("both").unwrap()));

        // Istio's shape: one instance for both.
        let same = UpstreamTls {
            identity: Some(instance("both", "default")),
            root: instance("both", "ROOTCA"),
            san_matchers: vec![],
        };
        assert!(Arc::ptr_eq(&providers.for_upstream(&same).unwrap(), &both));

        // Identity and roots from different instances.
        let split = UpstreamTls {
            identity: Some(instance("identity", "default")),
            root: instance("roots", "ROOTCA"),
            san_matchers: vec![],
        };
        let snap = providers.for_upstream(&split).unwrap().snapshot();
        assert_eq!(
            snap.svid.as_ref().unwrap().spiffe_id().to_string(),
            "spiffe://example.org/ns/default/sa/client"
        );
        assert!(
            !snap.bundles.is_empty(),
            "roots come from the roots instance"
        );

        // TLS without a client certificate.
        let one_way = UpstreamTls {
            identity: None,
            root: instance("roots", "ROOTCA"),
            san_matchers: vec![],
        };
        assert!(
            providers
                .for_upstream(&one_way)
                .unwrap()
                .snapshot()
                .svid
                .is_none()
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// One handshake over loopback TCP plus a one-byte echo; the server's result is the
    /// client identity it saw, the client's whether the echo came back (in TLS 1.3 a client
    /// learns that the server refused its certificate only when it reads).
    async fn handshake(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
    ) -> (
        Result<Option<crate::identity::PeerIdentity>, std::io::Error>,
        Result<(), std::io::Error>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (c, s) =
            super::super::tests::handshake_over(c.unwrap(), s.unwrap().0, client, server).await;
        (s, c.map(drop))
    }

    /// What a server makes of a client.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        /// The handshake succeeds and the server saw the client's SVID.
        Verified,
        /// The handshake succeeds without a client identity.
        Anonymous,
        /// The server refuses the client's certificate (chain to an unknown root).
        Untrusted,
        /// The server refuses a client without a certificate.
        NoCertificate,
    }

    /// A29's three server modes, each against a client with a good SVID, one from another
    /// CA of the same trust domain, and one without a certificate.
    #[tokio::test]
    async fn downstream_tls_requires_accepts_or_skips_client_certificates() {
        use crate::identity::testing::Flaw;
        use crate::identity::{MtlsConfig, StaticSource, VerifyError};
        use Outcome::*;

        let ca = TestCa::new("example.org");
        let stranger = TestCa::new("example.org");
        let (dir, bootstrap) = setup(&ca);
        let providers = CertificateProviders::from_bootstrap(&bootstrap);
        let client = |svid: Option<crate::identity::Svid>| {
            MtlsConfig::new(Arc::new(StaticSource::new(svid, ca.bundles())))
                .client_config()
                .unwrap()
        };
        let clients = || {
            [
                ("good", client(Some(ca.svid("/ns/default/sa/good")))),
                (
                    "other CA",
                    client(Some(
                        stranger
                            .mint("/ns/default/sa/good", Flaw::None)
                            .svid()
                            .unwrap(),
                    )),
                ),
                ("no certificate", client(None)),
            ]
        };
        let tls = |identity: &str, root: Option<&str>, required| DownstreamTls {
            identity: instance(identity, "default"),
            root: root.map(|r| instance(r, "ROOTCA")),
            require_client_certificate: required,
        };
        let modes = [
            // Istio's shape: identity and roots from one instance.
            (
                "required",
                tls("both", Some("both"), true),
                [Verified, Untrusted, NoCertificate],
            ),
            // Roots from their own instance; a certificate sent is still verified.
            (
                "optional",
                tls("identity", Some("roots"), false),
                [Verified, Untrusted, Anonymous],
            ),
            ("none", tls("identity", None, false), [Anonymous; 3]),
        ];
        for (mode, tls, outcomes) in modes {
            let config = providers.for_downstream(&tls).unwrap();
            for ((who, client), want) in clients().into_iter().zip(outcomes) {
                let (s, c) = handshake(config.server_config().unwrap(), client).await;
                let got = match &s {
                    Ok(Some(peer)) => {
                        assert_eq!(
                            peer.spiffe_id().to_string(),
                            "spiffe://example.org/ns/default/sa/good"
                        );
                        Verified
                    }
                    Ok(None) => Anonymous,
                    Err(e) => match VerifyError::from_io(e) {
                        Some(VerifyError::UntrustedRoot { .. }) => Untrusted,
                        _ if matches!(
                            e.get_ref().and_then(|e| e.downcast_ref()),
                            Some(rustls::Error::NoCertificatesPresented)
                        ) =>
                        {
                            NoCertificate
                        }
                        _ => panic!("{mode}, {who}: {e}"),
                    },
                };
                assert_eq!(got, want, "{mode}, {who}: {s:?}");
                assert_eq!(c.is_ok(), s.is_ok(), "{mode}, {who}: the client saw {c:?}");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A server configuration built once follows its instance's rotated roots: the
    /// verifier reads the current bundles at each handshake.
    #[tokio::test]
    async fn downstream_tls_follows_rotated_roots_without_a_rebuild() {
        use crate::identity::{MtlsConfig, StaticSource};

        let ca = TestCa::new("example.org");
        let next = TestCa::new("example.org");
        let (dir, _) = setup(&ca);
        let d = dir.display();
        let bootstrap = Bootstrap::from_json_str(&format!(
            r#"{{
              "xds_servers": [{{"server_uri": "localhost:1", "channel_creds": [{{"type": "insecure"}}]}}],
              "node": {{"id": "n"}},
              "certificate_providers": {{
                "fast": {{"plugin_name": "file_watcher", "config": {{
                    "certificate_file": "{d}/cert.pem", "private_key_file": "{d}/key.pem",
                    "ca_certificate_file": "{d}/root.pem", "refresh_interval": "0.010s"}}}}
              }}
            }}"#
        ))
        .unwrap();
        let providers = CertificateProviders::from_bootstrap(&bootstrap);
        let server = providers
            .for_downstream(&DownstreamTls {
                identity: instance("fast", "default"),
                root: Some(instance("fast", "ROOTCA")),
                require_client_certificate: true,
            })
            .unwrap()
            .server_config()
            .unwrap();
        // Clients trust the server's certificate, which does not change.
        let client = |of: &TestCa| {
            MtlsConfig::new(Arc::new(StaticSource::new(
                Some(of.svid("/ns/default/sa/caller")),
                ca.bundles(),
            )))
            .client_config()
            .unwrap()
        };
        handshake(server.clone(), client(&ca)).await.0.unwrap();
        handshake(server.clone(), client(&next))
            .await
            .0
            .unwrap_err();

        let mut status = providers.instance("fast").unwrap().status();
        let first = status.borrow_and_update().generation;
        // Renamed into place so the watcher never reads half a file.
        std::fs::write(dir.join("root.pem.new"), next.root_pem()).unwrap();
        std::fs::rename(dir.join("root.pem.new"), dir.join("root.pem")).unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            status.wait_for(|s| s.generation > first),
        )
        .await
        .expect("the watcher publishes the new roots")
        .unwrap();

        handshake(server.clone(), client(&next)).await.0.unwrap();
        handshake(server, client(&ca)).await.0.unwrap_err();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn downstream_tls_needs_instances_that_provide_what_they_are_used_for() {
        let ca = TestCa::new("example.org");
        let (dir, bootstrap) = setup(&ca);
        let providers = CertificateProviders::from_bootstrap(&bootstrap);
        let tls = |identity: &str, root: Option<&str>| DownstreamTls {
            identity: instance(identity, "default"),
            root: root.map(|r| instance(r, "ROOTCA")),
            require_client_certificate: root.is_some(),
        };
        assert!(matches!(
            providers.for_downstream(&tls("roots", None)),
            Err(IdentityError::IncompleteCertificateProvider { instance, missing: "identity certificate" })
                if instance == "roots"
        ));
        assert!(matches!(
            providers.for_downstream(&tls("both", Some("identity"))),
            Err(IdentityError::IncompleteCertificateProvider { instance, missing: "root certificates" })
                if instance == "identity"
        ));
        assert!(matches!(
            providers.for_downstream(&tls("both", Some("nope"))),
            Err(IdentityError::UnknownCertificateProvider { instance }) if instance == "nope"
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn unknown_unsupported_and_broken_instances_are_typed_errors() {
        let ca = TestCa::new("example.org");
        let (dir, bootstrap) = setup(&ca);
        let providers = CertificateProviders::from_bootstrap(&bootstrap);
        assert!(matches!(
            providers.instance("nope"),
            Err(IdentityError::UnknownCertificateProvider { instance }) if instance == "nope"
        ));
        assert!(matches!(
            providers.instance("vault"),
            Err(IdentityError::UnsupportedCertificateProvider { plugin, .. }) if plugin == "vault"
        ));
        assert!(matches!(
            providers.instance("broken"),
            Err(IdentityError::Read { .. })
        ));
        // A failure is not cached: once the file exists, the instance starts.
        std::fs::write(dir.join("missing.pem"), ca.root_pem()).unwrap();
        providers.instance("broken").unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
