//! SVID files on disk, laid out as Istio's agent writes them for a proxyless gRPC client
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`), and the bootstrap fragment whose
//! `file_watcher` certificate provider reads them (gRFC A29).

use std::path::{Path, PathBuf};

use meshwork_core::identity::testing::{Flaw, TestCa};

/// A fresh directory holding the SVID `spiffe://{trust domain}{path}` minted by `ca`, its
/// key and `ca`'s root, named as Istio's agent names them.
pub fn istio_dir(ca: &TestCa, path: &str) -> PathBuf {
    let dir = crate::temp_dir("svid");
    let minted = ca.mint(path, Flaw::None);
    write(&dir.join("cert-chain.pem"), &minted.cert_pem);
    write(&dir.join("key.pem"), &minted.key_pem);
    write(&dir.join("root-cert.pem"), ca.root_pem());
    dir
}

/// The bootstrap member `"certificate_providers"` (no braces around it): one instance,
/// `default`, a `file_watcher` over the files [`istio_dir`] wrote to `dir`, refreshed every
/// 900 s (no test waits for a refresh).
pub fn file_watcher_providers(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#""certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{
            "certificate_file": "{d}/cert-chain.pem", "private_key_file": "{d}/key.pem",
            "ca_certificate_file": "{d}/root-cert.pem", "refresh_interval": "900s"}}}}}}"#
    )
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_fragment_names_the_files_written() {
        let ca = TestCa::new("example.org");
        let dir = istio_dir(&ca, "/ns/default/sa/client");
        let json = format!("{{{}}}", file_watcher_providers(&dir));
        for file in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
            assert!(dir.join(file).is_file(), "{file}");
            assert!(
                json.contains(&dir.join(file).display().to_string()),
                "{json}"
            );
        }
        let chain = std::fs::read_to_string(dir.join("cert-chain.pem")).unwrap();
        assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
