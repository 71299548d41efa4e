//! A test certificate authority (rcgen) that mints X.509-SVIDs, good ones and deliberately
//! broken ones, for our tests and users' tests. Enabled by the `testing` feature.
//!
//! ```
//! use meshwork_core::identity::testing::{Flaw, TestCa};
//!
//! let ca = TestCa::new("example.org");
//! let good = ca.mint("/ns/default/sa/client", Flaw::None);
//! let svid = good.svid().unwrap();
//! assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/ns/default/sa/client");
//! assert!(ca.mint("/x", Flaw::CaFlag).svid().is_err());
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use spiffe::TrustDomain;
use time::{Duration, OffsetDateTime};

use super::bundle::TrustBundles;
use super::error::IdentityError;
use super::svid::Svid;

/// What is wrong with a minted SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flaw {
    /// Nothing: a valid SVID (valid from an hour ago for a day).
    None,
    /// Expired a day ago.
    Expired,
    /// Valid only from tomorrow.
    NotYetValid,
    /// The leaf has `basicConstraints: CA:TRUE` (and may sign certificates).
    CaFlag,
    /// The leaf has no URI SAN (a DNS SAN only).
    NoUriSan,
    /// The leaf has two `spiffe://` URI SANs.
    TwoUriSans,
    /// The leaf's key usage lacks `digitalSignature`.
    NoDigitalSignature,
}

/// A self-signed root for one trust domain that mints SVIDs.
pub struct TestCa {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    root_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A minted certificate and key, as PEM and DER.
#[derive(Debug, Clone)]
pub struct MintedSvid {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl MintedSvid {
    /// The certificate chain (the leaf) as DER.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap_or_default()
    }

    /// The private key as DER.
    ///
    /// # Panics
    /// Never for a minted key (it is valid PKCS#8 PEM); only if `key_pem` was edited.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("a minted key is valid PEM")
    }

    /// Loads it as our [`Svid`] (fails for flawed ones, as it should).
    pub fn svid(&self) -> Result<Svid, IdentityError> {
        Svid::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }
}

impl TestCa {
    /// A new root CA (ECDSA P-256) for `trust_domain`.
    ///
    /// # Panics
    /// If `trust_domain` is not a valid trust domain name, or key generation fails.
    pub fn new(trust_domain: &str) -> Self {
        let trust_domain = TrustDomain::new(trust_domain).expect("valid trust domain");
        let key = KeyPair::generate().expect("key generation");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("meshwork test CA {trust_domain}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            trust_domain.id_string().try_into().expect("IA5 URI"),
        )];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(365);
        let cert = params.self_signed(&key).expect("self-signed root");
        let root = cert.der().clone();
        let root_pem = cert.pem();
        Self {
            trust_domain,
            issuer: Issuer::new(params, key),
            root,
            root_pem,
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate (DER).
    pub fn root(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// The root certificate (PEM), as a `ca_certificate_file` holds it.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Bundles holding this CA's root for its trust domain.
    pub fn bundles(&self) -> TrustBundles {
        TrustBundles::new()
            .with_domain(self.trust_domain.clone(), vec![self.root()])
            .expect("a minted root is a valid trust anchor")
    }

    /// A SPIFFE trust bundle map (gRFC A87 JSON) holding the roots of `cas`.
    pub fn bundle_map_json(cas: &[&TestCa]) -> String {
        use base64::Engine as _;
        let mut domains = serde_json::Map::new();
        for ca in cas {
            let entry = domains
                .entry(ca.trust_domain.to_string())
                .or_insert_with(|| serde_json::json!({"spiffe_sequence": 1, "keys": []}));
            if let Some(keys) = entry.get_mut("keys").and_then(|k| k.as_array_mut()) {
                keys.push(serde_json::json!({
                    "use": "x509-svid",
                    "kty": "EC",
                    "crv": "P-256",
                    "x5c": [base64::engine::general_purpose::STANDARD.encode(&ca.root)],
                }));
            }
        }
        serde_json::json!({ "trust_domains": domains }).to_string()
    }

    /// Mints an SVID for `spiffe://<trust domain><path>` with the given flaw.
    ///
    /// # Panics
    /// If `path` does not make a valid URI, or signing fails.
    pub fn mint(&self, path: &str, flaw: Flaw) -> MintedSvid {
        self.mint_with_dns_names(path, flaw, &[])
    }

    /// [`TestCa::mint`] with DNS SANs added after the SPIFFE ID (for comparisons with
    /// host-name verification; an SVID may carry DNS SANs besides its one URI).
    ///
    /// # Panics
    /// As [`TestCa::mint`], or if a name is not a valid DNS name.
    pub fn mint_with_dns_names(&self, path: &str, flaw: Flaw, dns_names: &[&str]) -> MintedSvid {
        self.mint_validity(path, flaw, dns_names, None)
    }

    fn mint_validity(
        &self,
        path: &str,
        flaw: Flaw,
        dns_names: &[&str],
        until: Option<OffsetDateTime>,
    ) -> MintedSvid {
        let key = KeyPair::generate().expect("key generation");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let id = format!("{}{path}", self.trust_domain.id_string());
        let uri = |s: &str| SanType::URI(s.try_into().expect("IA5 URI"));
        params.subject_alt_names = match flaw {
            Flaw::NoUriSan => vec![SanType::DnsName("workload.test".try_into().expect("dns"))],
            Flaw::TwoUriSans => vec![uri(&id), uri(&format!("{id}-twin"))],
            _ => vec![uri(&id)],
        };
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into().expect("DNS name")));
        }
        params.is_ca = match flaw {
            Flaw::CaFlag => IsCa::Ca(BasicConstraints::Unconstrained),
            _ => IsCa::ExplicitNoCa,
        };
        params.key_usages = match flaw {
            Flaw::NoDigitalSignature => vec![KeyUsagePurpose::KeyEncipherment],
            Flaw::CaFlag => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ],
            _ => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        let (from, to) = match flaw {
            Flaw::Expired => (now - Duration::days(2), now - Duration::days(1)),
            Flaw::NotYetValid => (now + Duration::days(1), now + Duration::days(2)),
            _ => (now - Duration::hours(1), now + Duration::days(1)),
        };
        params.not_before = from;
        params.not_after = until.unwrap_or(to);
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        MintedSvid {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Mints a valid SVID for `spiffe://<trust domain><path>` that expires `valid_for`
    /// from now (valid since an hour ago), for tests of what happens at expiry.
    ///
    /// # Panics
    /// As [`TestCa::mint`].
    pub fn svid_valid_for(&self, path: &str, valid_for: std::time::Duration) -> Svid {
        let until = OffsetDateTime::now_utc() + valid_for;
        self.mint_validity(path, Flaw::None, &[], Some(until))
            .svid()
            .expect("a minted SVID is valid")
    }

    /// Mints a valid SVID for `spiffe://<trust domain><path>`.
    pub fn svid(&self, path: &str) -> Svid {
        self.mint(path, Flaw::None)
            .svid()
            .expect("a minted SVID is valid")
    }
}
