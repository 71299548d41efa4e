//! SPIFFE workload identity and mTLS.
//!
//! - Types: [`SpiffeId`], [`TrustDomain`], [`X509Bundle`], [`X509BundleSet`] from the
//!   `spiffe` crate; our [`Svid`] (chain + key, ready for rustls) and [`TrustBundles`]
//!   (roots per trust domain, ready for chain building).
//! - Sources, behind [`SvidSource`]: [`StaticSource`] (in code),
//!   [`FileWatcherSource`] (the gRPC bootstrap's `file_watcher` certificate provider, what
//!   Istio's agent writes for proxyless gRPC) and [`WorkloadApiSource`] (the SPIFFE
//!   Workload API, what SPIRE serves).
//! - [`MtlsConfig`]: rustls client and server configurations whose certificate resolver and
//!   [`SpiffeVerifier`] read the source's current snapshot, so rotation applies to new
//!   handshakes with nothing rebuilt and no connection closed.
//! - [`Authorizer`]: which verified peers are allowed (exact ID, set, trust domain, or xDS
//!   SAN matchers).
//! - [`PeerIdentity`]: the verified peer, for the application ([`PeerIdentityLayer`] puts
//!   it into request extensions).
//!
//! Rejections are [`VerifyError`]s, carried through rustls as
//! `InvalidCertificate(CertificateError::Other(..))`; [`VerifyError::from_io`] gets them back
//! from a failed `tokio-rustls` handshake.

mod authorizer;
mod bundle;
mod error;
mod file_watcher;
mod peer;
mod providers;
mod source;
mod svid;
mod tls;
mod verifier;
mod workload_api;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use authorizer::Authorizer;
pub use bundle::TrustBundles;
pub use error::{IdentityError, VerifyError};
pub use file_watcher::FileWatcherSource;
pub use peer::{AddPeerIdentity, PeerIdentity, PeerIdentityLayer};
pub use providers::CertificateProviders;
pub use source::{IdentitySnapshot, SourceStatus, StaticSource, SvidSource};
pub use spiffe::{SpiffeId, TrustDomain, X509Bundle, X509BundleSet};
pub use svid::Svid;
pub(crate) use svid::leaf_not_after;
pub use tls::{ClientAuth, MtlsConfig};
pub use verifier::SpiffeVerifier;
pub use workload_api::WorkloadApiSource;
