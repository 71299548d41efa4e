//! What meshwork's integration tests share, in one place instead of a copy per package:
//!
//! - [`peers`]: where the interop peers (grpcio, Envoy, rust-control-plane, protoc) are.
//!   A test that needs one is `#[ignore]`d, so a plain `cargo test` reports it as ignored
//!   rather than as passed; `scripts/test` provides the peers and runs the ignored tests too,
//!   and there a missing peer fails the test with what to set.
//! - [`within`]: a bound on a wait, so that a bug fails a test instead of hanging it.
//! - [`temp_dir`]: a fresh directory per call.
//! - `certs` and `cluster` (feature `core`): SVID files as Istio's agent writes them and
//!   the bootstrap fragment that reads them; static cluster states.
//! - `backend` (feature `backend`): a loopback HTTP/2 server that numbers its connections
//!   and can hold a request, serving a handler the test gives it.
//! - `envoy` (feature `envoy`): Envoy started from a test's bootstrap, killed on drop,
//!   with the admin reads a test needs (a listener's bound port, counters).
//! - `xds` (feature `xds`): xDS clients, a control plane that never answers, snapshots.
//! - `otlp` (feature `otlp`): a real OTLP/gRPC receiver and the spans and metrics it got.
//! - [`refused_addr`]: an address where connecting is refused.
//!
//! Not published: it is a dev-dependency of the workspace's packages only.
#![forbid(unsafe_code)]

#[cfg(feature = "backend")]
pub mod backend;
#[cfg(feature = "core")]
pub mod certs;
#[cfg(feature = "core")]
pub mod cluster;
#[cfg(feature = "envoy")]
pub mod envoy;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod peers;
#[cfg(feature = "xds")]
pub mod xds;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `future`'s output, or a panic naming the bound when it takes longer than `secs`.
///
/// Not a sleep: the wait ends as soon as `future` does. Under paused time (`start_paused`)
/// the bound is virtual time, as every timer is.
pub async fn within<T>(secs: u64, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s"))
}

/// A new, empty directory `meshwork-{name}-{pid}-{n}` under the system's temp dir.
///
/// Unique per call within a process (tests of one binary run in parallel) and across
/// processes (the pid), so no test sees another's files. Left behind on purpose: a failed
/// test's files are what one reads next.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("meshwork-{name}-{}-{n}", std::process::id()));
    // A directory left by an earlier process with the same pid must not leak into this test.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// A loopback address nothing listens on: bound, then closed, so connecting to it is
/// refused (until something binds it again, as a test may on purpose).
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"));
    listener.local_addr().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_are_fresh_and_distinct() {
        let a = temp_dir("support-test");
        let b = temp_dir("support-test");
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
        assert_eq!(std::fs::read_dir(&a).unwrap().count(), 0);
    }

    #[test]
    fn a_refused_addr_refuses() {
        let addr = refused_addr();
        let err = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test(start_paused = true)]
    async fn within_returns_the_output_in_time() {
        assert_eq!(within(1, async { 7 }).await, 7);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 5s")]
    async fn within_fails_a_wait_that_never_ends() {
        within(5, std::future::pending::<()>()).await;
    }
}
