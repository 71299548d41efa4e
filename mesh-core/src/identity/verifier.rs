//! The SPIFFE peer verifier (X.509-SVID spec) as rustls client and server verifiers.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::authorizer::Authorizer;
use super::error::VerifyError;
use super::source::SvidSource;
use super::svid::{LeafInfo, inspect_leaf};

/// Verifies peers' X.509-SVIDs against the *current* bundles of a source, then applies an
/// [`Authorizer`].
///
/// The checks, in order: the leaf is an SVID leaf (not a CA, `digitalSignature`, exactly one
/// `spiffe://` URI SAN with a path); a bundle exists for the ID's trust domain; the chain
/// leads to one of that bundle's roots, every certificate within its validity period and
/// with the right extended key usage if it has one; the authorizer allows the ID. The host
/// name the client dialed is not checked: SPIFFE identity replaces it.
#[derive(Clone)]
pub struct SpiffeVerifier {
    source: Arc<dyn SvidSource>,
    authorizer: Authorizer,
    provider: Arc<CryptoProvider>,
    client_auth_mandatory: bool,
}

impl fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeVerifier")
            .field("source", &self.source)
            .field("authorizer", &self.authorizer)
            .field("client_auth_mandatory", &self.client_auth_mandatory)
            .finish_non_exhaustive()
    }
}

/// Which side of the connection the verified peer is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerRole {
    Server,
    Client,
}

impl SpiffeVerifier {
    /// A verifier reading bundles from `source` and allowing peers by `authorizer`. As a
    /// client certificate verifier it demands a certificate.
    pub fn new(source: Arc<dyn SvidSource>, authorizer: Authorizer) -> Self {
        Self {
            source,
            authorizer,
            provider: crate::crypto::provider(),
            client_auth_mandatory: true,
        }
    }

    /// Whether, as a client certificate verifier, it demands a certificate; when not, a
    /// client may send none, and one it sends is still verified.
    pub(crate) fn require_client_certificate(mut self, required: bool) -> Self {
        self.client_auth_mandatory = required;
        self
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// Verifies a peer chain (leaf first) at time `now`, as a server certificate when
    /// `as_server` is true and as a client certificate otherwise, and returns the peer's
    /// SPIFFE ID.
    pub fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        as_server: bool,
    ) -> Result<spiffe::SpiffeId, VerifyError> {
        let role = if as_server {
            PeerRole::Server
        } else {
            PeerRole::Client
        };
        self.verify(end_entity, intermediates, now, role)
            .map(|l| l.spiffe_id)
    }

    pub(crate) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
    ) -> Result<LeafInfo, VerifyError> {
        let leaf = inspect_leaf(end_entity)?;
        let snapshot = self.source.snapshot();
        let td = leaf.spiffe_id.trust_domain();
        let anchors =
            snapshot
                .bundles
                .anchors_for(td)
                .ok_or_else(|| VerifyError::UnknownTrustDomain {
                    trust_domain: td.clone(),
                    spiffe_id: leaf.spiffe_id.clone(),
                })?;
        let ee =
            webpki::EndEntityCert::try_from(end_entity).map_err(|e| VerifyError::Malformed {
                reason: e.to_string(),
            })?;
        let usage = match role {
            PeerRole::Server => webpki::KeyUsage::server_auth(),
            PeerRole::Client => webpki::KeyUsage::client_auth(),
        };
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| map_webpki(e, &leaf))?;
        self.authorizer.check(&leaf)?;
        Ok(leaf)
    }

    fn verify_signature(
        &self,
        result: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        result.map_err(|e| match e {
            rustls::Error::InvalidCertificate(
                ref ce @ (rustls::CertificateError::BadSignature
                | rustls::CertificateError::BadEncoding),
            ) => VerifyError::BadSignature {
                reason: format!("{ce:?}"),
            }
            .into_rustls(),
            other => other,
        })
    }
}

fn map_webpki(e: webpki::Error, leaf: &LeafInfo) -> VerifyError {
    match e {
        webpki::Error::CertExpired { time, not_after } => VerifyError::Expired {
            not_after: not_after.as_secs(),
            now: time.as_secs(),
        },
        webpki::Error::CertNotValidYet { time, not_before } => VerifyError::NotYetValid {
            not_before: not_before.as_secs(),
            now: time.as_secs(),
        },
        // A chain whose issuer names match a trusted root but whose signatures do not verify
        // (another CA with the same name) is as untrusted as one naming an unknown issuer.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            VerifyError::UntrustedRoot {
                trust_domain: leaf.spiffe_id.trust_domain().clone(),
                spiffe_id: leaf.spiffe_id.clone(),
            }
        }
        webpki::Error::CaUsedAsEndEntity => VerifyError::CaAsLeaf,
        other => VerifyError::Chain {
            reason: other.to_string(),
        },
    }
}

/// The signature checks both verifier roles share: the handshake signature under the
/// provider's algorithms.
type VerifySignature = fn(
    &[u8],
    &CertificateDer<'_>,
    &DigitallySignedStruct,
    &rustls::crypto::WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error>;

impl SpiffeVerifier {
    fn signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        verify: VerifySignature,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(verify(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        ))
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, PeerRole::Server)
            .map(|_| ServerCertVerified::assertion())
            .map_err(VerifyError::into_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss, rustls::crypto::verify_tls12_signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss, rustls::crypto::verify_tls13_signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.client_auth_mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // SPIFFE peers pick their SVID by trust domain, not by CA names.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, PeerRole::Client)
            .map(|_| ClientCertVerified::assertion())
            .map_err(VerifyError::into_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss, rustls::crypto::verify_tls12_signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss, rustls::crypto::verify_tls13_signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}
