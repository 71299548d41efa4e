//! rustls client and server configurations whose certificate resolvers and verifiers read
//! the current snapshot of an [`SvidSource`].

use std::fmt;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use super::authorizer::Authorizer;
use super::error::IdentityError;
use super::source::SvidSource;
use super::verifier::SpiffeVerifier;

/// Builds rustls configurations for SPIFFE mTLS from an [`SvidSource`].
///
/// Both sides present the source's current SVID and verify the peer with a
/// [`SpiffeVerifier`] over the current bundles (a server asks clients for one as
/// [`ClientAuth`] says), so a rotation applies to the next handshake without rebuilding
/// anything; connections already up are left alone. Session resumption is off: a resumed
/// session would skip both the new certificate and the new bundles.
///
/// ```
/// use std::sync::Arc;
/// use meshwork_core::identity::{Authorizer, MtlsConfig, StaticSource, TrustBundles};
///
/// let source = Arc::new(StaticSource::new(None, TrustBundles::new()));
/// let client = MtlsConfig::new(source)
///     .authorizer(Authorizer::MemberOf("example.org".parse().unwrap()))
///     .alpn_protocols(vec![b"h2".to_vec()])
///     .client_config()
///     .unwrap();
/// assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
/// ```
#[derive(Clone)]
pub struct MtlsConfig {
    source: Arc<dyn SvidSource>,
    authorizer: Authorizer,
    client_auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
}

/// Whether a [`server_config`](MtlsConfig::server_config) asks clients for a certificate.
///
/// These are the three server modes of gRFC A29's `DownstreamTlsContext`: with roots and
/// `require_client_certificate`, with roots alone, and without roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// Every client presents an SVID, verified and authorized (mTLS). The default.
    #[default]
    Required,
    /// Clients are asked for an SVID but may send none; one that is sent is verified and
    /// authorized like a required one, and a bad one fails the handshake.
    Optional,
    /// Clients are not asked for a certificate: server-authenticated TLS only.
    None,
}

impl fmt::Debug for MtlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MtlsConfig")
            .field("source", &self.source)
            .field("authorizer", &self.authorizer)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl MtlsConfig {
    /// Configurations over `source`; the default authorizer is [`Authorizer::Any`], client
    /// certificates are [`ClientAuth::Required`] and no ALPN protocols are offered.
    pub fn new(source: Arc<dyn SvidSource>) -> Self {
        Self {
            source,
            authorizer: Authorizer::Any,
            client_auth: ClientAuth::Required,
            alpn: Vec::new(),
        }
    }

    /// Sets whether the server configuration asks clients for a certificate; the client
    /// configuration is unaffected.
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// Sets which verified peers are allowed.
    pub fn authorizer(mut self, authorizer: Authorizer) -> Self {
        self.authorizer = authorizer;
        self
    }

    /// Sets the ALPN protocols (e.g. `h2`).
    pub fn alpn_protocols(mut self, alpn: Vec<Vec<u8>>) -> Self {
        self.alpn = alpn;
        self
    }

    /// The verifier these configurations use. As a client certificate verifier it
    /// demands a certificate unless client certificates are [`ClientAuth::Optional`].
    pub fn verifier(&self) -> SpiffeVerifier {
        SpiffeVerifier::new(self.source.clone(), self.authorizer.clone())
            .require_client_certificate(self.client_auth != ClientAuth::Optional)
    }

    /// A client configuration: presents our SVID (if the source has one) and verifies the
    /// server's.
    pub fn client_config(&self) -> Result<ClientConfig, IdentityError> {
        let mut config = ClientConfig::builder_with_provider(crate::crypto::provider())
            .with_safe_default_protocol_versions()
            .map_err(IdentityError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self.verifier()))
            .with_client_cert_resolver(Arc::new(CurrentSvid(self.source.clone())));
        config.alpn_protocols = self.alpn.clone();
        config.resumption = rustls::client::Resumption::disabled();
        check_fips(config.fips())?;
        Ok(config)
    }

    /// A server configuration: presents our SVID and, as [`ClientAuth`] says, requires,
    /// accepts or does not ask for a client SVID, verifying any it receives.
    pub fn server_config(&self) -> Result<ServerConfig, IdentityError> {
        let builder = ServerConfig::builder_with_provider(crate::crypto::provider())
            .with_safe_default_protocol_versions()
            .map_err(IdentityError::Tls)?;
        let builder = match self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required | ClientAuth::Optional => {
                builder.with_client_cert_verifier(Arc::new(self.verifier()))
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(CurrentSvid(self.source.clone())));
        config.alpn_protocols = self.alpn.clone();
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        check_fips(config.fips())?;
        Ok(config)
    }
}

/// With the `fips` feature, refuses a configuration that does not report FIPS mode.
fn check_fips(fips: bool) -> Result<(), IdentityError> {
    if cfg!(feature = "fips") && !fips {
        return Err(IdentityError::NotFips);
    }
    Ok(())
}

/// A certificate resolver that returns the source's current SVID.
#[derive(Debug)]
struct CurrentSvid(Arc<dyn SvidSource>);

impl CurrentSvid {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .snapshot()
            .svid
            .as_ref()
            .map(|s| s.certified_key().clone())
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}
