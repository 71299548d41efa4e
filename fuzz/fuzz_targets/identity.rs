//! SPIFFE identity parsing and verification: PEM loading, SVID construction, trust bundles
//! (PEM and the gRFC A87 bundle map), peer identity extraction, and the `SpiffeVerifier`
//! over a fuzzed certificate chain against a fixed bundle (`fixtures/root.pem`).
//!
//! Input: a mode byte, then the mode's fields (`meshwork_fuzz::Reader` format).
//! - 0: `Svid::from_pem(cert, key)`;
//! - 1: `TrustBundles::from_pem_any_domain`;
//! - 2: `TrustBundles::from_spiffe_bundle_map`;
//! - 3..: a chain of DER certificates (leaf first) for `SpiffeVerifier::verify_chain`, as a
//!   server or client certificate, at a fixed time inside the fixtures' validity, and
//!   `PeerIdentity::from_certificates`.
//!
//! Invariants: no panic; a chain the verifier accepts is really signed by the bundle's root:
//! checked independently of webpki, by walking from the leaf through the given
//! intermediates with `ring` signature checks to a certificate the root's key signed; the
//! accepted ID is in the bundle's trust domain and equals the leaf's URI SAN; the fixed
//! time is within the leaf's validity.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use meshwork_core::identity::{
    Authorizer, PeerIdentity, SpiffeVerifier, StaticSource, Svid, TrustBundles,
};
use meshwork_fuzz::{ROOT_PEM, Reader, TRUST_DOMAIN, VERIFY_AT_UNIX};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// At most this many certificates in a fuzzed chain (webpki bounds path building itself).
const MAX_CHAIN: usize = 6;

struct Fixture {
    verifier: SpiffeVerifier,
    /// The root's SubjectPublicKeyInfo `subjectPublicKey` bits.
    root_key: Vec<u8>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let bundles = TrustBundles::from_pem_any_domain(ROOT_PEM.as_bytes(), "root.pem")
        .expect("the fixture root loads");
    let source = Arc::new(StaticSource::new(None, bundles));
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(ROOT_PEM.as_bytes())
        .map(|c: CertificateDer<'static>| c.to_vec())
        .expect("the fixture root is PEM");
    let (_, root) = X509Certificate::from_der(&der).expect("the fixture root parses");
    Fixture {
        verifier: SpiffeVerifier::new(source, Authorizer::Any),
        root_key: root.public_key().subject_public_key.data.to_vec(),
    }
});

/// Whether `cert` carries a valid signature by the key `public_key` (raw SPKI bits), by
/// ring and not webpki: the algorithms our crypto provider accepts for SVIDs.
fn signed_by(cert: &X509Certificate<'_>, public_key: &[u8]) -> bool {
    use ring::signature as sig;
    let algs: [&dyn sig::VerificationAlgorithm; 9] = [
        &sig::ECDSA_P256_SHA256_ASN1,
        &sig::ECDSA_P256_SHA384_ASN1,
        &sig::ECDSA_P384_SHA256_ASN1,
        &sig::ECDSA_P384_SHA384_ASN1,
        &sig::ED25519,
        &sig::RSA_PKCS1_2048_8192_SHA256,
        &sig::RSA_PKCS1_2048_8192_SHA384,
        &sig::RSA_PKCS1_2048_8192_SHA512,
        &sig::RSA_PSS_2048_8192_SHA256,
    ];
    let message = cert.tbs_certificate.as_ref();
    let signature = cert.signature_value.data.as_ref();
    algs.iter().any(|alg| {
        sig::UnparsedPublicKey::new(*alg, public_key)
            .verify(message, signature)
            .is_ok()
    })
}

/// Walks from the leaf through `intermediates` to a certificate the root signed.
fn chains_to_root(leaf: &[u8], intermediates: &[Vec<u8>], root_key: &[u8]) -> bool {
    let parsed: Vec<X509Certificate<'_>> = intermediates
        .iter()
        .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
        .collect();
    let Ok((_, mut current)) = X509Certificate::from_der(leaf) else {
        return false;
    };
    for _ in 0..=parsed.len() {
        if signed_by(&current, root_key) {
            return true;
        }
        let Some(issuer) = parsed
            .iter()
            .find(|i| signed_by(&current, &i.public_key().subject_public_key.data))
        else {
            return false;
        };
        current = issuer.clone();
    }
    false
}

fn verify(r: &mut Reader<'_>) {
    let as_server = r.bool();
    let mut chain: Vec<Vec<u8>> = Vec::new();
    while !r.is_empty() && chain.len() < MAX_CHAIN {
        chain.push(r.bytes().to_vec());
    }
    let Some((leaf, intermediates)) = chain.split_first() else {
        return;
    };
    let ee = CertificateDer::from(leaf.as_slice());
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let _ = PeerIdentity::from_certificates(std::slice::from_ref(&ee));
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(VERIFY_AT_UNIX));
    let fixture = &*FIXTURE;
    match fixture.verifier.verify_chain(&ee, &inter, now, as_server) {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(id) => {
            assert!(
                chains_to_root(leaf, intermediates, &fixture.root_key),
                "accepted {id} with a chain not signed by the bundle's root"
            );
            assert_eq!(id.trust_domain().to_string(), TRUST_DOMAIN);
            let (_, cert) = X509Certificate::from_der(leaf).expect("an accepted leaf parses");
            let validity = cert.validity();
            let at = i64::try_from(VERIFY_AT_UNIX).expect("fits");
            assert!(validity.not_before.timestamp() <= at && at <= validity.not_after.timestamp());
            let peer = PeerIdentity::from_certificates(&[ee]).expect("an accepted leaf is an SVID");
            assert_eq!(peer.spiffe_id(), &id);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    match r.u8() {
        0 => {
            let cert = r.bytes();
            let key = r.rest();
            if let Ok(svid) = Svid::from_pem(cert, key) {
                assert!(!svid.cert_chain().is_empty());
                let _ = svid.spiffe_id().to_string();
            }
        }
        1 => {
            let _ = TrustBundles::from_pem_any_domain(r.rest(), "fuzz");
        }
        2 => {
            if let Ok(bundles) = TrustBundles::from_spiffe_bundle_map(r.rest(), "fuzz") {
                let _ = bundles.to_bundle_set();
            }
        }
        _ => verify(&mut r),
    }
});
