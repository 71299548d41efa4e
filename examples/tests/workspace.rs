//! The workspace's shape is part of its contract: the fixed layout, the package names, the
//! shared settings, and the direction of dependencies (xds <- core <- grpc/http and
//! test-support <- examples/benches). These tests read `cargo metadata` and the manifests
//! and fail when any of it drifts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// (package, directory, publishable, layer). A package may depend only on packages of a
/// strictly lower layer.
const PACKAGES: &[(&str, &str, bool, u8)] = &[
    ("meshwork-xds", "xds-client", true, 0),
    ("meshwork-core", "mesh-core", true, 1),
    ("meshwork-grpc", "mesh-grpc", true, 2),
    ("meshwork-http", "mesh-http", true, 2),
    ("meshwork-examples", "examples", false, 3),
    ("meshwork-benches", "benches", false, 3),
    ("meshwork-test-support", "test-support", false, 2),
];

/// The one package every layer may take as a dev-dependency: cargo builds an integration
/// test against the same library the support crate links, so the loop is harmless there.
const TEST_SUPPORT: &str = "meshwork-test-support";

fn layer(name: &str) -> Option<u8> {
    PACKAGES.iter().find(|p| p.0 == name).map(|p| p.3)
}

/// Every edge `from -> to` between workspace packages that goes sideways or upwards.
fn direction_violations(edges: &[(String, String)]) -> Vec<String> {
    edges
        .iter()
        .filter_map(|(from, to)| {
            let (lf, lt) = (layer(from)?, layer(to)?);
            (lt >= lf).then(|| format!("{from} (layer {lf}) depends on {to} (layer {lt})"))
        })
        .collect()
}

fn workspace_edges(meta: &Value) -> Vec<(String, String)> {
    let mut edges = Vec::new();
    for pkg in meta["packages"].as_array().unwrap() {
        let from = pkg["name"].as_str().unwrap();
        for dep in pkg["dependencies"].as_array().unwrap() {
            let to = dep["name"].as_str().unwrap();
            if to == TEST_SUPPORT && dep["kind"] == "dev" {
                continue;
            }
            if layer(to).is_some() {
                edges.push((from.to_string(), to.to_string()));
            }
        }
    }
    edges
}

#[test]
fn fixed_layout_is_present() {
    let root = root();
    for path in [
        "Cargo.toml",
        "mesh-core",
        "mesh-grpc",
        "mesh-http",
        "xds-client",
        "examples",
        "benches",
        "CHANGELOG.md",
        "README.md",
        "LICENSE-APACHE",
        "LICENSE-MIT",
        "docs/architecture.md",
        ".ci/run",
        "scripts/test",
    ] {
        assert!(
            root.join(path).exists(),
            "{path} is missing from the workspace root"
        );
    }
}

#[test]
fn packages_are_exactly_the_seven_with_shared_settings() {
    let meta = metadata();
    let pkgs = meta["packages"].as_array().unwrap();
    let mut names: Vec<&str> = pkgs.iter().map(|p| p["name"].as_str().unwrap()).collect();
    names.sort();
    let mut want: Vec<&str> = PACKAGES.iter().map(|p| p.0).collect();
    want.sort();
    assert_eq!(names, want);

    let rust_versions: Vec<&Value> = pkgs.iter().map(|p| &p["rust_version"]).collect();
    assert!(rust_versions[0].is_string(), "rust-version must be set");
    assert!(
        rust_versions.iter().all(|v| *v == rust_versions[0]),
        "one rust-version for all: {rust_versions:?}"
    );

    for &(name, dir, publishable, _) in PACKAGES {
        let pkg = pkgs.iter().find(|p| p["name"] == name).unwrap();
        let manifest = PathBuf::from(pkg["manifest_path"].as_str().unwrap());
        assert_eq!(
            manifest,
            root().join(dir).join("Cargo.toml"),
            "{name} lives in {dir}/"
        );
        assert_eq!(pkg["edition"], "2024", "{name} edition");
        for field in ["license", "description", "repository"] {
            assert!(pkg[field].is_string(), "{name} needs `{field}`");
        }
        if publishable {
            assert!(pkg["publish"].is_null(), "{name} must be publishable");
            let readme = pkg["readme"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} needs a readme"));
            assert!(
                root().join(dir).join(readme).is_file(),
                "{name}: {readme} missing"
            );
        } else {
            assert_eq!(
                pkg["publish"],
                serde_json::json!([]),
                "{name} must have publish = false"
            );
        }
    }
}

#[test]
fn every_package_inherits_lints_and_dependencies_from_the_workspace() {
    let root_manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let lints = &root_manifest["workspace"]["lints"]["rust"];
    assert_eq!(lints["missing_docs"].as_str(), Some("warn"));
    assert_eq!(lints["unreachable_pub"].as_str(), Some("warn"));
    assert_eq!(lints["unsafe_code"].as_str(), Some("forbid"));

    for &(name, dir, _, _) in PACKAGES {
        let text = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
        let manifest: toml::Table = text.parse().unwrap();
        assert_eq!(
            manifest
                .get("lints")
                .and_then(|l| l.get("workspace"))
                .and_then(|w| w.as_bool()),
            Some(true),
            "{name} must say [lints] workspace = true"
        );
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for (dep, spec) in deps {
                let inherited = spec.get("workspace").and_then(|w| w.as_bool()) == Some(true);
                assert!(
                    inherited,
                    "{name}: [{section}] {dep} must come from [workspace.dependencies]"
                );
            }
        }
    }
}

#[test]
fn dependencies_point_down_the_layers() {
    let violations = direction_violations(&workspace_edges(&metadata()));
    assert!(
        violations.is_empty(),
        "dependency direction broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_direction_check_catches_upward_and_sideways_edges() {
    let edges = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert!(
        direction_violations(&edges(&[
            ("meshwork-core", "meshwork-xds"),
            ("meshwork-grpc", "meshwork-core")
        ]))
        .is_empty()
    );
    assert_eq!(
        direction_violations(&edges(&[("meshwork-xds", "meshwork-core")])).len(),
        1
    );
    assert_eq!(
        direction_violations(&edges(&[("meshwork-grpc", "meshwork-http")])).len(),
        1
    );
    assert_eq!(
        direction_violations(&edges(&[("meshwork-core", "meshwork-examples")])).len(),
        1
    );
    // An unrelated crate is not the check's business.
    assert!(direction_violations(&edges(&[("meshwork-xds", "tonic")])).is_empty());
}

#[test]
fn crypto_provider_features_are_offered_by_every_package() {
    let meta = metadata();
    for pkg in meta["packages"].as_array().unwrap() {
        let features: BTreeMap<String, Value> =
            serde_json::from_value(pkg["features"].clone()).unwrap();
        for f in ["ring", "aws-lc-rs", "fips"] {
            assert!(
                features.contains_key(f),
                "{} lacks the `{f}` feature",
                pkg["name"]
            );
        }
        assert_eq!(
            features["default"],
            serde_json::json!(["ring"]),
            "{} default feature",
            pkg["name"]
        );
    }
}
