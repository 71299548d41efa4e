//! Shared pieces of meshwork-xds's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// The interop venv `scripts/test` builds (`MESHWORK_PEERS_VENV`). Without it a test is
/// skipped locally, but fails under CI (where `CI` is set), so CI can never pass a peer test
/// by not running it.
pub fn peers_venv(test: &str) -> Option<PathBuf> {
    match std::env::var_os("MESHWORK_PEERS_VENV") {
        Some(venv) => Some(PathBuf::from(venv)),
        None if std::env::var_os("CI").is_some() => {
            panic!("{test}: MESHWORK_PEERS_VENV is not set under CI; run scripts/test")
        }
        None => {
            eprintln!("{test}: skipped, MESHWORK_PEERS_VENV is not set (scripts/test sets it)");
            None
        }
    }
}

/// Fail a test that waits longer than `secs` instead of hanging CI.
pub async fn within<T>(secs: u64, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s"))
}
