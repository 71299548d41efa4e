use meshwork_xds::resource::ValidationError;

/// A hand-built configuration that cannot be used: it breaks a rule an xDS resource is
/// NACKed for. Each variant names the field path, in the same form and with the same words
/// as `meshwork-xds` errors (`virtual_hosts[0].routes[2].route.weighted_clusters`).
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
}

impl ConfigError {
    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The same error for a value found at `prefix` (`retry_policy`) rather than at the root.
    pub(crate) fn within(self, prefix: &str) -> Self {
        match self {
            ConfigError::Invalid { path, reason } => ConfigError::Invalid {
                path: format!("{prefix}.{path}"),
                reason,
            },
            ConfigError::ZeroTotalWeight { path } => ConfigError::ZeroTotalWeight {
                path: format!("{prefix}.{path}"),
            },
        }
    }
}

impl From<ValidationError> for ConfigError {
    fn from(e: ValidationError) -> Self {
        match e {
            ValidationError::ZeroTotalWeight { path } => ConfigError::ZeroTotalWeight { path },
            ValidationError::Invalid { path, reason } => ConfigError::Invalid { path, reason },
            other => ConfigError::invalid(other.path(), other.reason()),
        }
    }
}
