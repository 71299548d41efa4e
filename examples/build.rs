//! Copies envoy-types' protobuf descriptor set (`src/generated/types.bin` in its package,
//! which it ships but does not expose) into `OUT_DIR`, for `xds-serve`'s proto-JSON reader.
//!
//! The package is found through `cargo metadata` on this workspace (the resolved
//! `envoy-types` this crate depends on), so the path follows whatever version the lock file
//! pins, from the registry, a vendor directory or a git checkout alike.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DESCRIPTORS: &str = "src/generated/types.bin";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let manifest = env::var("CARGO_MANIFEST_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(&env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
                .join("Cargo.toml")
        });
    let envoy_types = envoy_types_dir(&manifest);
    let source = envoy_types.join(DESCRIPTORS);
    println!("cargo::rerun-if-changed={}", source.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_types.bin");
    if let Err(e) = fs::copy(&source, &out) {
        panic!(
            "xds-serve needs envoy-types' descriptor set at {}: {e}",
            source.display()
        );
    }
}

/// The directory of the `envoy-types` package that this crate depends on.
fn envoy_types_dir(manifest: &Path) -> PathBuf {
    // Offline first, for this platform: a build of every target of the workspace has
    // downloaded every package that lists. A build of this package alone on a fresh
    // machine (the README's quickstart) has not downloaded the other members'
    // dependencies, which `cargo metadata` resolves too: then it may download them, as the
    // outer build would.
    let output = metadata(manifest, true);
    let output = if output.status.success() {
        output
    } else {
        metadata(manifest, false)
    };
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    // Another envoy-types in the lock file is another path: look again.
    if let Some(root) = metadata["workspace_root"].as_str() {
        println!(
            "cargo::rerun-if-changed={}",
            Path::new(root).join("Cargo.lock").display()
        );
    }
    let this = env::var("CARGO_PKG_NAME").expect("CARGO_PKG_NAME");
    let packages = metadata["packages"].as_array().expect("packages");
    let nodes = metadata["resolve"]["nodes"].as_array().expect("resolve");
    let id_of = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name && p["source"].is_null())
            .and_then(|p| p["id"].as_str())
    };
    let this_id = id_of(&this).expect("this package in cargo metadata");
    let node = nodes
        .iter()
        .find(|n| n["id"] == this_id)
        .expect("this package in the resolve graph");
    let dep_id = node["deps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"] == "envoy_types")
        .and_then(|d| d["pkg"].as_str())
        .expect("an envoy-types dependency");
    let package = packages
        .iter()
        .find(|p| p["id"] == dep_id)
        .expect("envoy-types in cargo metadata");
    let manifest_path = package["manifest_path"].as_str().expect("manifest_path");
    Path::new(manifest_path)
        .parent()
        .expect("a manifest's directory")
        .to_owned()
}

/// `cargo metadata` of this workspace for the platform being built for (the packages of
/// other platforms need not be downloaded), with the lock file as it is.
fn metadata(manifest: &Path, offline: bool) -> std::process::Output {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let target = env::var("TARGET").expect("TARGET");
    let mut command = Command::new(cargo);
    command
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", &target])
        .arg("--manifest-path")
        .arg(manifest);
    if offline {
        command.arg("--offline");
    }
    command.output().expect("run cargo metadata")
}
