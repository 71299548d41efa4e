//! Trust bundles: the root certificates of each trust domain, ready for chain building.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde_json::Value;
use spiffe::{TrustDomain, X509Bundle, X509BundleSet};

use super::error::IdentityError;
use super::svid::certs_from_pem;

/// The roots of one trust domain, with their webpki trust anchors derived once.
#[derive(Clone)]
struct Roots {
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl Roots {
    fn new(certs: Vec<CertificateDer<'static>>, field: &str) -> Result<Self, IdentityError> {
        let anchors = certs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| IdentityError::Bundle {
                        field: format!("{field}[{i}]"),
                        reason: format!("not usable as a root certificate: {e}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { certs, anchors })
    }
}

/// The trust bundles peers are verified against: roots per SPIFFE trust domain (federation),
/// and optionally roots that apply to any trust domain without its own bundle.
///
/// The second form is what a plain `ca_certificate_file` gives (Istio's single mesh root):
/// a peer of any trust domain is accepted if its chain leads to one of those roots.
#[derive(Clone, Default)]
pub struct TrustBundles {
    domains: HashMap<TrustDomain, Roots>,
    any_domain: Option<Roots>,
}

impl fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (td, roots) in &self.domains {
            m.entry(&td.as_str(), &roots.certs.len());
        }
        if let Some(any) = &self.any_domain {
            m.entry(&"*", &any.certs.len());
        }
        m.finish()
    }
}

impl TrustBundles {
    /// No bundles: every peer is rejected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the roots of `trust_domain`.
    pub fn with_domain(
        mut self,
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let field = format!("trust_domains[{:?}]", trust_domain.as_str());
        self.domains
            .insert(trust_domain, Roots::new(roots, &field)?);
        Ok(self)
    }

    /// Sets roots that apply to every trust domain without a bundle of its own.
    pub fn with_any_domain(
        mut self,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        self.any_domain = Some(Roots::new(roots, "roots")?);
        Ok(self)
    }

    /// Roots from PEM text that apply to every trust domain (a `ca_certificate_file`).
    pub fn from_pem_any_domain(pem: &[u8], field: &str) -> Result<Self, IdentityError> {
        let certs = certs_from_pem(pem, field)?;
        let roots = Roots::new(certs, field)?;
        Ok(Self {
            domains: HashMap::new(),
            any_domain: Some(roots),
        })
    }

    /// Converts a bundle set from the `spiffe` crate (e.g. from the Workload API).
    pub fn from_bundle_set(set: &X509BundleSet) -> Result<Self, IdentityError> {
        let mut out = Self::new();
        for (td, bundle) in set.iter() {
            let certs = bundle
                .authorities()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect();
            out = out.with_domain(td.clone(), certs)?;
        }
        Ok(out)
    }

    /// Parses a SPIFFE trust bundle map (gRFC A87):
    /// `{"trust_domains": {"<td>": {"keys": [{"use": "x509-svid", "x5c": ["<base64 DER>"]}]}}}`.
    /// Keys whose `use` is not `x509-svid` (JWT keys) are skipped. `field` prefixes error
    /// paths (e.g. `spiffe_trust_bundle_map_file`).
    pub fn from_spiffe_bundle_map(json: &[u8], field: &str) -> Result<Self, IdentityError> {
        let err = |path: String, reason: String| IdentityError::Bundle {
            field: path,
            reason,
        };
        let root: Value = serde_json::from_slice(json)
            .map_err(|e| err(field.to_owned(), format!("invalid JSON: {e}")))?;
        let domains = root
            .get("trust_domains")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                err(
                    format!("{field}.trust_domains"),
                    "missing or not an object".into(),
                )
            })?;
        let mut out = Self::new();
        for (name, bundle) in domains {
            let dpath = format!("{field}.trust_domains[{name:?}]");
            let td = TrustDomain::new(name)
                .map_err(|e| err(dpath.clone(), format!("invalid trust domain: {e}")))?;
            let keys = bundle
                .get("keys")
                .and_then(Value::as_array)
                .ok_or_else(|| err(format!("{dpath}.keys"), "missing or not an array".into()))?;
            let mut certs = Vec::new();
            for (k, key) in keys.iter().enumerate() {
                let kpath = format!("{dpath}.keys[{k}]");
                if key.get("use").and_then(Value::as_str) != Some("x509-svid") {
                    continue;
                }
                let x5c = key
                    .get("x5c")
                    .and_then(Value::as_array)
                    .ok_or_else(|| err(format!("{kpath}.x5c"), "missing or not an array".into()))?;
                if x5c.len() != 1 {
                    return Err(err(
                        format!("{kpath}.x5c"),
                        format!("must hold exactly one certificate, has {}", x5c.len()),
                    ));
                }
                let b64 = x5c[0]
                    .as_str()
                    .ok_or_else(|| err(format!("{kpath}.x5c[0]"), "not a string".into()))?;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| err(format!("{kpath}.x5c[0]"), format!("invalid base64: {e}")))?;
                if let Err(e) = x509_parser::parse_x509_certificate(&der) {
                    return Err(err(
                        format!("{kpath}.x5c[0]"),
                        format!("malformed X.509: {e}"),
                    ));
                }
                certs.push(CertificateDer::from(der));
            }
            let roots = Roots::new(certs, &format!("{dpath}.keys"))?;
            out.domains.insert(td, roots);
        }
        Ok(out)
    }

    /// The trust anchors a peer of `trust_domain` must chain to, if we have any.
    pub(crate) fn anchors_for(
        &self,
        trust_domain: &TrustDomain,
    ) -> Option<&[TrustAnchor<'static>]> {
        self.domains
            .get(trust_domain)
            .or(self.any_domain.as_ref())
            .map(|r| r.anchors.as_slice())
            .filter(|a| !a.is_empty())
    }

    /// The root certificates of `trust_domain` (its own, or the any-domain roots).
    pub fn roots_for(&self, trust_domain: &TrustDomain) -> Option<&[CertificateDer<'static>]> {
        self.domains
            .get(trust_domain)
            .or(self.any_domain.as_ref())
            .map(|r| r.certs.as_slice())
    }

    /// The per-trust-domain bundles as `spiffe` types (any-domain roots are not included).
    pub fn to_bundle_set(&self) -> X509BundleSet {
        let mut set = X509BundleSet::new();
        for (td, roots) in &self.domains {
            let mut bundle = X509Bundle::new(td.clone());
            for c in &roots.certs {
                // Parsed when loaded, so this cannot fail.
                let _ = bundle.add_authority(c);
            }
            set.add_bundle(bundle);
        }
        set
    }

    /// Whether no roots at all are configured.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.any_domain.is_none()
    }
}
