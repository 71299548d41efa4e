//! The balancer's errors.

use std::net::SocketAddr;

use tower::BoxError;

/// A policy or an endpoint set the balancer cannot use. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field has a value the balancer rejects.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field path, e.g. `localities[1].endpoints[0].weight`.
        field: String,
        /// Why.
        reason: String,
    },
    /// A policy the balancer does not implement.
    #[error("{field}: unsupported load-balancing policy {policy}")]
    Unsupported {
        /// The field path.
        field: String,
        /// The policy.
        policy: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// No endpoint could take the call: none is known, healthy, not ejected and ready. Adapters
/// map it to `UNAVAILABLE` / 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no healthy upstream: {known} endpoints known, none healthy, not ejected and ready")]
pub struct NoHealthyEndpoint {
    pub(crate) known: usize,
}

impl NoHealthyEndpoint {
    /// How many endpoints the balancer knew of.
    pub fn known(&self) -> usize {
        self.known
    }
}

/// A call to an endpoint failed; the source is the endpoint service's error. Carries the
/// address so that a retry can avoid it.
#[derive(Debug, thiserror::Error)]
#[error("endpoint {address} failed")]
pub struct EndpointError {
    pub(crate) address: SocketAddr,
    #[source]
    pub(crate) source: BoxError,
}

impl EndpointError {
    /// The endpoint that failed.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The endpoint service's error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}
