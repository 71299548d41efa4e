//! Our own X.509-SVID (certificate chain + private key, ready for rustls) and the leaf checks
//! of the X.509-SVID specification shared with peer verification.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use spiffe::SpiffeId;
use x509_parser::extensions::GeneralName;

use super::error::{IdentityError, VerifyError};

/// What the X.509-SVID leaf checks learned about a certificate.
#[derive(Debug, Clone)]
pub(crate) struct LeafInfo {
    pub(crate) spiffe_id: SpiffeId,
    /// Every SAN as a string (URI, DNS, email, IP), for xDS SAN matchers (gRFC A29).
    pub(crate) sans: Vec<String>,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

/// Checks `der` as an X.509-SVID leaf: parseable, not a CA, keyUsage with digitalSignature
/// and without keyCertSign/cRLSign, exactly one URI SAN that is a SPIFFE ID with a path.
/// The chain, validity period and trust domain are checked by the verifier.
pub(crate) fn inspect_leaf(der: &[u8]) -> Result<LeafInfo, VerifyError> {
    let malformed = |e: &dyn fmt::Display| VerifyError::Malformed {
        reason: e.to_string(),
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| malformed(&e))?;
    if let Some(bc) = cert.basic_constraints().map_err(|e| malformed(&e))?
        && bc.value.ca
    {
        return Err(VerifyError::CaAsLeaf);
    }
    match cert.key_usage().map_err(|e| malformed(&e))? {
        None => return Err(VerifyError::MissingDigitalSignature),
        Some(ku) if !ku.value.digital_signature() => {
            return Err(VerifyError::MissingDigitalSignature);
        }
        Some(ku) if ku.value.key_cert_sign() || ku.value.crl_sign() => {
            return Err(VerifyError::SigningKeyUsage);
        }
        Some(_) => {}
    }
    let mut uris = Vec::new();
    let mut sans = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(|e| malformed(&e))? {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => {
                    uris.push(*u);
                    sans.push((*u).to_owned());
                }
                GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                GeneralName::RFC822Name(e) => sans.push((*e).to_owned()),
                GeneralName::IPAddress(ip) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*ip) {
                        sans.push(IpAddr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*ip) {
                        sans.push(IpAddr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let uri = match uris.as_slice() {
        [] => return Err(VerifyError::NoUriSan),
        [one] => *one,
        many => return Err(VerifyError::MultipleUriSans { count: many.len() }),
    };
    let spiffe_id = SpiffeId::new(uri).map_err(|e| VerifyError::InvalidSpiffeId {
        uri: uri.to_owned(),
        source: Arc::new(e),
    })?;
    if spiffe_id.path().is_empty() {
        return Err(VerifyError::SpiffeIdWithoutPath { spiffe_id });
    }
    Ok(LeafInfo {
        spiffe_id,
        sans,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// When a peer's leaf certificate expires; `None` when it does not parse.
pub(crate) fn leaf_not_after(der: &[u8]) -> Option<std::time::SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    let secs = u64::try_from(secs).unwrap_or(0);
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// Our X.509-SVID: a SPIFFE ID, its certificate chain (leaf first) and private key, loaded
/// into the crypto provider so handshakes can sign with it.
///
/// Built only through checks: the leaf is a valid X.509-SVID leaf and the key matches the
/// leaf's public key. The validity period is not checked here (a source may hold an SVID
/// that expires; peers reject it).
#[derive(Clone)]
pub struct Svid {
    spiffe_id: SpiffeId,
    certified: Arc<CertifiedKey>,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.certified.cert.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// Builds an SVID from a DER chain (leaf first) and a private key (PKCS#8, PKCS#1 or
    /// SEC1). `field` names where they came from, for error messages.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        field: &str,
    ) -> Result<Self, IdentityError> {
        Self::from_der_fields(chain, key, field, field)
    }

    /// [`Svid::from_der`] with separate names for the certificate's and the key's origin.
    pub(crate) fn from_der_fields(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        field: &str,
        key_field: &str,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or_else(|| IdentityError::Missing {
            field: field.to_owned(),
            expected: "CERTIFICATE",
        })?;
        let info = inspect_leaf(leaf).map_err(|source| IdentityError::InvalidSvid {
            field: field.to_owned(),
            source,
        })?;
        let provider = crate::crypto::provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| IdentityError::UnsupportedKey {
                field: key_field.to_owned(),
                source,
            })?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                // The provider cannot derive the public key; the handshake will tell.
            }
            Err(_) => {
                return Err(IdentityError::KeyMismatch {
                    field: key_field.to_owned(),
                });
            }
        }
        Ok(Self {
            spiffe_id: info.spiffe_id,
            certified: Arc::new(certified),
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// Builds an SVID from PEM text: `cert_pem` holds the chain (leaf first), `key_pem`
    /// the private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        let chain = certs_from_pem(cert_pem, "certificate")?;
        let key = key_from_pem(key_pem, "private key")?;
        Self::from_der(chain, key, "certificate")
    }

    /// Converts an SVID from the `spiffe` crate (e.g. from the Workload API).
    pub fn from_spiffe(svid: &spiffe::X509Svid) -> Result<Self, IdentityError> {
        let chain = svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(svid.private_key().as_bytes().to_vec().into());
        Self::from_der(chain, key, "workload API SVID")
    }

    /// The SVID's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The certificate chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The leaf's `notBefore`, seconds since the Unix epoch.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// The leaf's `notAfter`, seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The rustls certified key handshakes sign with.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

/// Parses every `CERTIFICATE` in `pem`; `field` names the source in errors.
pub(crate) fn certs_from_pem(
    pem: &[u8],
    field: &str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            field: field.to_owned(),
            source: Arc::new(e),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Missing {
            field: field.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    // Reject bytes that are PEM-shaped but not X.509, here rather than at first use.
    for (i, c) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(c) {
            return Err(IdentityError::Bundle {
                field: format!("{field}[{i}]"),
                reason: format!("malformed X.509: {e}"),
            });
        }
    }
    Ok(certs)
}

/// Parses the first private key in `pem`; `field` names the source in errors.
pub(crate) fn key_from_pem(
    pem: &[u8],
    field: &str,
) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => IdentityError::Missing {
            field: field.to_owned(),
            expected: "PRIVATE KEY",
        },
        e => IdentityError::Pem {
            field: field.to_owned(),
            source: Arc::new(e),
        },
    })
}
