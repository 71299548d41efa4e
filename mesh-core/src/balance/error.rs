//! The balancer's errors.

use std::net::SocketAddr;

use tower::BoxError;

/// A policy or an endpoint set the balancer cannot use. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BalancerConfigError {
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

impl BalancerConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        BalancerConfigError::Invalid {
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

/// A call to an endpoint failed; the source is the endpoint service's error (or, when every
/// usable endpoint is failing to connect, [`ConnectFailed`] with the last connection error).
/// Carries the address so that a retry can avoid it.
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

/// No endpoint is connected and connecting to every usable one is failing: the call fails at
/// once (as gRPC fails calls in TRANSIENT_FAILURE) with the endpoint's last connection error
/// as the source. The endpoints keep reconnecting with backoff. Comes as the source of an
/// [`EndpointError`].
#[derive(Debug, Clone)]
pub struct ConnectFailed {
    pub(crate) source: std::sync::Arc<BoxError>,
}

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connecting to the endpoint failed")
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.source)
    }
}

impl ConnectFailed {
    /// The last connection error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &**self.source
    }
}
