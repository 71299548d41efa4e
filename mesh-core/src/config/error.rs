/// A hand-built configuration that cannot be used. Each variant names the field path, in the
/// same form as `meshwork-xds` errors (`virtual_hosts[0].routes[2].route.weighted_clusters`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field has a value that cannot be used.
    #[error("{path}: {reason}")]
    Invalid {
        /// The field path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights of a weighted cluster action sum to zero (or the list is empty).
    #[error("{path}: the cluster weights sum to zero")]
    ZeroTotalWeight {
        /// The path of the `weighted_clusters` field.
        path: String,
    },
    /// A hash policy meshwork cannot evaluate (gRPC ignores it when it comes from xDS; a
    /// hand-written config that asks for it is a mistake).
    #[error("{path}: unsupported hash policy {policy}")]
    UnsupportedHashPolicy {
        /// The path of the hash policy.
        path: String,
        /// Its kind, e.g. `source_ip`.
        policy: &'static str,
    },
}

impl ConfigError {
    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
