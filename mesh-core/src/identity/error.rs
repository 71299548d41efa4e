//! Typed errors: [`VerifyError`] says why a peer (or our own SVID) was rejected,
//! [`IdentityError`] why identity material could not be loaded.

use std::path::PathBuf;
use std::sync::Arc;

use spiffe::{SpiffeId, TrustDomain};

/// Why a certificate chain was rejected as an X.509-SVID, or why a verified peer was not
/// authorized.
///
/// During a handshake it travels inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; use
/// [`VerifyError::from_rustls`] or [`VerifyError::from_io`] to get it back.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The peer sent no certificate.
    #[error("peer presented no certificate")]
    NoCertificate,
    /// The leaf certificate is not valid DER X.509.
    #[error("leaf certificate: malformed X.509: {reason}")]
    Malformed {
        /// What the parser said.
        reason: String,
    },
    /// The leaf certificate is a CA certificate (`basicConstraints: CA:TRUE`).
    #[error("leaf certificate: basicConstraints.cA is set; an SVID leaf must not be a CA")]
    CaAsLeaf,
    /// The leaf certificate does not allow `digitalSignature` (or has no key usage).
    #[error("leaf certificate: keyUsage must include digitalSignature")]
    MissingDigitalSignature,
    /// The leaf certificate may sign certificates or CRLs.
    #[error("leaf certificate: keyUsage must not include keyCertSign or cRLSign")]
    SigningKeyUsage,
    /// The leaf certificate has no URI SAN.
    #[error("leaf certificate: subjectAltName has no URI; an SVID has exactly one spiffe:// URI")]
    NoUriSan,
    /// The leaf certificate has more than one URI SAN.
    #[error("leaf certificate: subjectAltName has {count} URIs; an SVID has exactly one")]
    MultipleUriSans {
        /// How many URI SANs it has.
        count: usize,
    },
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("leaf certificate: subjectAltName URI {uri:?} is not a SPIFFE ID: {source}")]
    InvalidSpiffeId {
        /// The URI as found.
        uri: String,
        /// Why it is not a SPIFFE ID.
        #[source]
        source: Arc<spiffe::SpiffeIdError>,
    },
    /// The SPIFFE ID has no path; a leaf SVID must name a workload, not a trust domain.
    #[error("leaf certificate: SPIFFE ID {spiffe_id} has no path")]
    SpiffeIdWithoutPath {
        /// The ID.
        spiffe_id: SpiffeId,
    },
    /// We hold no trust bundle for the peer's trust domain.
    #[error("no trust bundle for trust domain {trust_domain} (peer {spiffe_id})")]
    UnknownTrustDomain {
        /// The peer's trust domain.
        trust_domain: TrustDomain,
        /// The peer's ID.
        spiffe_id: SpiffeId,
    },
    /// The chain does not lead to a root in the trust domain's bundle.
    #[error(
        "certificate chain of {spiffe_id} does not lead to a root of trust domain {trust_domain}"
    )]
    UntrustedRoot {
        /// The trust domain whose bundle was used.
        trust_domain: TrustDomain,
        /// The peer's ID.
        spiffe_id: SpiffeId,
    },
    /// A certificate in the chain has expired.
    #[error("certificate expired (not after {not_after} s since epoch, now {now})")]
    Expired {
        /// The certificate's `notAfter`, seconds since the Unix epoch.
        not_after: u64,
        /// The verification time.
        now: u64,
    },
    /// A certificate in the chain is not valid yet.
    #[error("certificate not valid yet (not before {not_before} s since epoch, now {now})")]
    NotYetValid {
        /// The certificate's `notBefore`, seconds since the Unix epoch.
        not_before: u64,
        /// The verification time.
        now: u64,
    },
    /// The handshake signature does not verify with the leaf certificate's public key: the
    /// peer does not hold the key that matches its certificate.
    #[error("handshake signature does not match the leaf certificate's key: {reason}")]
    BadSignature {
        /// What the signature check said.
        reason: String,
    },
    /// Another chain-building failure (bad signature in the chain, wrong extended key usage,
    /// unsupported algorithm, ...).
    #[error("certificate chain rejected: {reason}")]
    Chain {
        /// What webpki said.
        reason: String,
    },
    /// The peer is a valid SVID but the authorizer does not allow its ID.
    #[error("peer {spiffe_id} is not authorized: {policy}")]
    Unauthorized {
        /// The verified peer ID.
        spiffe_id: SpiffeId,
        /// The policy that refused it.
        policy: String,
    },
}

impl VerifyError {
    /// The `VerifyError` inside a rustls error, if our verifier produced it.
    pub fn from_rustls(err: &rustls::Error) -> Option<&VerifyError> {
        match err {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<VerifyError>()
            }
            _ => None,
        }
    }

    /// The `VerifyError` inside an I/O error from a `tokio-rustls` handshake, if any.
    pub fn from_io(err: &std::io::Error) -> Option<&VerifyError> {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(Self::from_rustls)
    }

    /// Wraps this error the way rustls reports verifier failures.
    pub fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(self),
        )))
    }
}

/// Why identity material (an SVID, a key, trust bundles) could not be loaded, or why a
/// source could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read (missing, unreadable).
    #[error("{field} ({}): cannot read: {source}", path.display())]
    Read {
        /// The configuration field that named the file (e.g. `certificate_file`).
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// PEM text could not be parsed.
    #[error("{field}: malformed PEM: {source}")]
    Pem {
        /// Where the PEM came from (a field name, `certificate_file`, or a description).
        field: String,
        /// The parser's error.
        #[source]
        source: Arc<rustls_pki_types::pem::Error>,
    },
    /// The PEM held no item of the expected kind.
    #[error("{field}: no {expected} found")]
    Missing {
        /// Where the PEM came from.
        field: String,
        /// What was expected (`CERTIFICATE`, `PRIVATE KEY`).
        expected: &'static str,
    },
    /// Our own certificate is not a valid X.509-SVID.
    #[error("{field}: not a valid X.509-SVID: {source}")]
    InvalidSvid {
        /// Where the certificate came from.
        field: String,
        /// Why it is invalid.
        #[source]
        source: VerifyError,
    },
    /// The private key does not belong to the certificate.
    #[error("{field}: private key does not match the certificate's public key")]
    KeyMismatch {
        /// Where the key came from.
        field: String,
    },
    /// The private key is of a kind the crypto provider cannot use.
    #[error("{field}: unusable private key: {source}")]
    UnsupportedKey {
        /// Where the key came from.
        field: String,
        /// The provider's error.
        #[source]
        source: rustls::Error,
    },
    /// A trust bundle is invalid.
    #[error("{field}: {reason}")]
    Bundle {
        /// The exact place, e.g.
        /// `spiffe_trust_bundle_map_file.trust_domains["example.org"].keys[0].x5c[0]`.
        field: String,
        /// What is wrong there.
        reason: String,
    },
    /// The Workload API client failed.
    #[error("workload API: {0}")]
    WorkloadApi(#[source] Arc<spiffe::X509SourceError>),
    /// The `fips` feature is on but the TLS configuration does not report FIPS mode.
    #[error("the fips feature is enabled but the TLS configuration is not in FIPS mode")]
    NotFips,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// xDS security configuration names a certificate provider instance the bootstrap does
    /// not define.
    #[error(
        "certificate provider instance {instance:?} is not in the bootstrap's certificate_providers"
    )]
    UnknownCertificateProvider {
        /// The instance name.
        instance: String,
    },
    /// The bootstrap defines the instance with a plugin meshwork does not implement.
    #[error(
        "certificate provider instance {instance:?} uses plugin {plugin:?}; meshwork implements file_watcher"
    )]
    UnsupportedCertificateProvider {
        /// The instance name.
        instance: String,
        /// Its plugin.
        plugin: String,
    },
    /// xDS security configuration uses an instance for material its configuration does
    /// not provide (a server identity from an instance without a certificate, roots from
    /// one without CA certificates).
    #[error("certificate provider instance {instance:?} provides no {missing}")]
    IncompleteCertificateProvider {
        /// The instance name.
        instance: String,
        /// What it lacks (`identity certificate`, `root certificates`).
        missing: &'static str,
    },
}
