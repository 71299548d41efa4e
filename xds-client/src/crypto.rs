//! The rustls crypto provider, chosen once for the whole workspace by cargo feature.
//!
//! | feature      | provider                                   |
//! |--------------|--------------------------------------------|
//! | `ring`       | `ring` (the default)                       |
//! | `aws-lc-rs`  | `aws-lc-rs`                                |
//! | `fips`       | `aws-lc-rs` with its FIPS 140-3 module     |
//!
//! Cargo features are additive, so when several are enabled the strongest choice wins:
//! `fips`, then `aws-lc-rs`, then `ring`. Every meshwork crate forwards these features here,
//! so a service picks its provider once, on whichever meshwork crate it depends on.
//!
//! ```
//! let provider = meshwork_xds::crypto::provider();
//! assert!(!provider.cipher_suites.is_empty());
//! println!("TLS provider: {}", meshwork_xds::crypto::provider_name());
//! ```

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs", feature = "fips")))]
compile_error!(
    "meshwork needs a TLS crypto provider: enable the feature `ring`, `aws-lc-rs` or `fips`"
);

/// The crypto provider every meshwork TLS configuration is built with.
///
/// The same `Arc` is returned on every call.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(selected())).clone()
}

/// The name of the provider [`provider`] returns: `"ring"`, `"aws-lc-rs"` or `"aws-lc-rs-fips"`.
pub const fn provider_name() -> &'static str {
    if cfg!(feature = "fips") {
        "aws-lc-rs-fips"
    } else if cfg!(feature = "aws-lc-rs") {
        "aws-lc-rs"
    } else {
        "ring"
    }
}

/// Whether the selected provider is running in FIPS mode.
///
/// With the `fips` feature this is what the provider itself reports, so a service can refuse
/// to start when the module did not come up in FIPS mode.
pub fn is_fips() -> bool {
    provider().fips()
}

#[cfg(feature = "fips")]
fn selected() -> CryptoProvider {
    rustls::crypto::default_fips_provider()
}

#[cfg(all(feature = "aws-lc-rs", not(feature = "fips")))]
fn selected() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

#[cfg(all(feature = "ring", not(any(feature = "aws-lc-rs", feature = "fips"))))]
fn selected() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_is_shared_and_matches_the_features() {
        assert!(Arc::ptr_eq(&provider(), &provider()));
        assert_eq!(is_fips(), cfg!(feature = "fips"));
        assert!(!provider().kx_groups.is_empty());
    }
}
