//! Real rustls handshakes over in-memory streams: every rejection reason, checked by type.

use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::testing::{Flaw, TestCa};
use super::*;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn source(svid: Option<Svid>, bundles: TrustBundles) -> Arc<dyn SvidSource> {
    Arc::new(StaticSource::new(svid, bundles))
}

/// Runs one handshake plus a one-byte echo over an in-memory pipe; returns the client's and
/// server's results with the identities each side saw.
async fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> (
    Result<Option<PeerIdentity>, std::io::Error>,
    Result<Option<PeerIdentity>, std::io::Error>,
) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    handshake_over(c, s, client, server).await
}

/// [`handshake`] over the two ends `c` (the client's) and `s` of a connection.
pub(super) async fn handshake_over<IO>(
    c: IO,
    s: IO,
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> (
    Result<Option<PeerIdentity>, std::io::Error>,
    Result<Option<PeerIdentity>, std::io::Error>,
)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(Arc::new(client));
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server = async move {
        let mut tls = acceptor.accept(s).await?;
        let peer = PeerIdentity::from_server_stream(&tls);
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        tls.write_all(&b).await?;
        tls.flush().await?;
        Ok(peer)
    };
    let client = async move {
        let name = ServerName::try_from("ignored.example").unwrap();
        let mut tls = connector.connect(name, c).await?;
        let peer = PeerIdentity::from_client_stream(&tls);
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        Ok(peer)
    };
    tokio::join!(client, server)
}

struct Pair {
    ca: TestCa,
    server: Arc<dyn SvidSource>,
}

fn pair() -> Pair {
    let ca = TestCa::new("example.org");
    let server = source(Some(ca.svid("/ns/default/sa/server")), ca.bundles());
    Pair { ca, server }
}

fn server_config(p: &Pair, authorizer: Authorizer) -> rustls::ServerConfig {
    MtlsConfig::new(p.server.clone())
        .authorizer(authorizer)
        .server_config()
        .unwrap()
}

/// A client presenting `minted` directly (no load checks), trusting `p.ca`.
fn client_with_raw(
    p: &Pair,
    chain_and_key: Arc<rustls::sign::CertifiedKey>,
) -> rustls::ClientConfig {
    #[derive(Debug)]
    struct Raw(Arc<rustls::sign::CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Raw {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let v = SpiffeVerifier::new(source(None, p.ca.bundles()), Authorizer::Any);
    rustls::ClientConfig::builder_with_provider(crate::crypto::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(v))
        .with_client_cert_resolver(Arc::new(Raw(chain_and_key)))
}

fn certified(minted: &testing::MintedSvid) -> Arc<rustls::sign::CertifiedKey> {
    let key = crate::crypto::provider()
        .key_provider
        .load_private_key(minted.key())
        .unwrap();
    Arc::new(rustls::sign::CertifiedKey::new(minted.chain(), key))
}

/// The server's verdict on a client presenting `minted` as is.
async fn server_verdict(p: &Pair, minted: &testing::MintedSvid) -> VerifyError {
    let (client, server) = handshake(
        client_with_raw(p, certified(minted)),
        server_config(p, Authorizer::Any),
    )
    .await;
    assert!(client.is_err(), "client should see the handshake fail");
    let err = server.expect_err("server must reject");
    VerifyError::from_io(&err)
        .unwrap_or_else(|| panic!("not a VerifyError: {err:?}"))
        .clone()
}

#[tokio::test]
async fn good_svids_handshake_and_both_sides_see_the_peer() {
    let p = pair();
    let client = MtlsConfig::new(source(
        Some(p.ca.svid("/ns/default/sa/client")),
        p.ca.bundles(),
    ))
    .authorizer(Authorizer::Exact(id(
        "spiffe://example.org/ns/default/sa/server",
    )))
    .client_config()
    .unwrap();
    let (c, s) = handshake(
        client,
        server_config(&p, Authorizer::MemberOf("example.org".parse().unwrap())),
    )
    .await;
    assert_eq!(
        c.unwrap().unwrap().spiffe_id(),
        &id("spiffe://example.org/ns/default/sa/server")
    );
    assert_eq!(
        s.unwrap().unwrap().spiffe_id(),
        &id("spiffe://example.org/ns/default/sa/client")
    );
}

#[tokio::test]
async fn rejects_expired_and_not_yet_valid() {
    let p = pair();
    let e = server_verdict(&p, &p.ca.mint("/c", Flaw::Expired)).await;
    assert!(
        matches!(e, VerifyError::Expired { not_after, now } if not_after < now),
        "{e}"
    );
    let e = server_verdict(&p, &p.ca.mint("/c", Flaw::NotYetValid)).await;
    assert!(
        matches!(e, VerifyError::NotYetValid { not_before, now } if not_before > now),
        "{e}"
    );
}

#[tokio::test]
async fn rejects_structural_flaws() {
    let p = pair();
    let e = server_verdict(&p, &p.ca.mint("/c", Flaw::NoUriSan)).await;
    assert!(matches!(e, VerifyError::NoUriSan), "{e}");
    let e = server_verdict(&p, &p.ca.mint("/c", Flaw::TwoUriSans)).await;
    assert!(
        matches!(e, VerifyError::MultipleUriSans { count: 2 }),
        "{e}"
    );
    let e = server_verdict(&p, &p.ca.mint("/c", Flaw::CaFlag)).await;
    assert!(matches!(e, VerifyError::CaAsLeaf), "{e}");
    let e = server_verdict(&p, &p.ca.mint("/c", Flaw::NoDigitalSignature)).await;
    assert!(matches!(e, VerifyError::MissingDigitalSignature), "{e}");
}

#[tokio::test]
async fn rejects_wrong_trust_domain_and_untrusted_root() {
    let p = pair();
    let other = TestCa::new("other.org");
    let e = server_verdict(&p, &other.mint("/c", Flaw::None)).await;
    assert!(
        matches!(&e, VerifyError::UnknownTrustDomain { trust_domain, .. } if trust_domain.as_str() == "other.org"),
        "{e}"
    );
    // Same trust domain name, different root: the chain leads nowhere we trust.
    let impostor = TestCa::new("example.org");
    let e = server_verdict(&p, &impostor.mint("/c", Flaw::None)).await;
    assert!(matches!(e, VerifyError::UntrustedRoot { .. }), "{e}");
    assert!(e.to_string().contains("spiffe://example.org/c"), "{e}");
}

#[tokio::test]
async fn rejects_a_key_that_does_not_match_the_certificate() {
    let p = pair();
    let a = p.ca.mint("/c", Flaw::None);
    let b = p.ca.mint("/c", Flaw::None);
    let key = crate::crypto::provider()
        .key_provider
        .load_private_key(b.key())
        .unwrap();
    let mismatched = Arc::new(rustls::sign::CertifiedKey::new(a.chain(), key));
    let (client, server) = handshake(
        client_with_raw(&p, mismatched),
        server_config(&p, Authorizer::Any),
    )
    .await;
    assert!(client.is_err());
    let err = server.unwrap_err();
    let e = VerifyError::from_io(&err).unwrap_or_else(|| panic!("{err:?}"));
    assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");
    // Loading such a pair is refused before any handshake.
    let e = Svid::from_der(a.chain(), b.key(), "certificate_file").unwrap_err();
    assert!(matches!(e, IdentityError::KeyMismatch { .. }), "{e}");
}

#[tokio::test]
async fn client_rejects_a_server_the_authorizer_does_not_allow() {
    let p = pair();
    let client = MtlsConfig::new(source(Some(p.ca.svid("/client")), p.ca.bundles()))
        .authorizer(Authorizer::one_of([id(
            "spiffe://example.org/ns/default/sa/other",
        )]))
        .client_config()
        .unwrap();
    let (c, _s) = handshake(client, server_config(&p, Authorizer::Any)).await;
    let err = c.unwrap_err();
    let e = VerifyError::from_io(&err).unwrap_or_else(|| panic!("{err:?}"));
    assert!(
        matches!(e, VerifyError::Unauthorized { spiffe_id, .. } if spiffe_id.path() == "/ns/default/sa/server"),
        "{e}"
    );
}

#[tokio::test]
async fn federation_uses_the_bundle_of_the_peer_trust_domain() {
    let p = pair();
    let partner = TestCa::new("partner.org");
    let bundles = TrustBundles::from_spiffe_bundle_map(
        TestCa::bundle_map_json(&[&p.ca, &partner]).as_bytes(),
        "map",
    )
    .unwrap();
    let server = source(Some(p.ca.svid("/server")), bundles);
    let server = MtlsConfig::new(server).server_config().unwrap();
    let client = MtlsConfig::new(source(Some(partner.svid("/client")), p.ca.bundles()))
        .client_config()
        .unwrap();
    let (c, s) = handshake(client, server).await;
    c.unwrap();
    assert_eq!(s.unwrap().unwrap().trust_domain().as_str(), "partner.org");
}

#[test]
fn authorizer_san_matchers_follow_grfc_a29() {
    use meshwork_xds::resource::{SafeRegex, StringMatchKind, StringMatcher};
    let leaf = svid::inspect_leaf(&TestCa::new("td.io").mint("/ns/a/sa/b", Flaw::None).chain()[0])
        .unwrap();
    let m = |kind| StringMatcher {
        kind,
        ignore_case: false,
    };
    let allow = |ms: Vec<StringMatcher>| Authorizer::SanMatchers(ms).check(&leaf).is_ok();
    assert!(allow(vec![]));
    assert!(allow(vec![m(StringMatchKind::Exact(
        "spiffe://td.io/ns/a/sa/b".into()
    ))]));
    assert!(allow(vec![m(StringMatchKind::Prefix(
        "spiffe://td.io/ns/a/".into()
    ))]));
    assert!(allow(vec![m(StringMatchKind::Suffix("/sa/b".into()))]));
    assert!(allow(vec![m(StringMatchKind::Contains("/ns/a/".into()))]));
    assert!(allow(vec![m(StringMatchKind::Regex(
        SafeRegex::full_match(r"spiffe://td\.io/ns/[a-z]+/sa/b").unwrap()
    ))]));
    assert!(!allow(vec![m(StringMatchKind::Regex(
        SafeRegex::full_match(r"td\.io").unwrap()
    ))]));
    assert!(!allow(vec![m(StringMatchKind::Exact(
        "spiffe://td.io/ns/a/sa/c".into()
    ))]));
    let e = Authorizer::MemberOf("other.io".parse().unwrap())
        .check(&leaf)
        .unwrap_err();
    assert!(e.to_string().contains("trust domain other.io"), "{e}");
}

#[test]
fn authorizer_all_of_needs_every_one_and_names_the_first_refusal() {
    use meshwork_xds::resource::{StringMatchKind, StringMatcher};
    let leaf = svid::inspect_leaf(&TestCa::new("td.io").mint("/ns/a/sa/b", Flaw::None).chain()[0])
        .unwrap();
    let any_san = Authorizer::SanMatchers(vec![]);
    let exact_san = |id: &str| {
        Authorizer::SanMatchers(vec![StringMatcher {
            kind: StringMatchKind::Exact(id.into()),
            ignore_case: false,
        }])
    };
    let pinned = Authorizer::MemberOf("other.io".parse().unwrap());
    // An empty SAN list allows anyone; the pin still refuses, and the error names it.
    let e = Authorizer::AllOf(vec![pinned.clone(), any_san.clone()])
        .check(&leaf)
        .unwrap_err();
    assert!(e.to_string().contains("trust domain other.io"), "{e}");
    let e = Authorizer::AllOf(vec![pinned, exact_san("spiffe://td.io/ns/a/sa/b")])
        .check(&leaf)
        .unwrap_err();
    assert!(e.to_string().contains("trust domain other.io"), "{e}");
    let pinned = Authorizer::MemberOf("td.io".parse().unwrap());
    assert!(
        Authorizer::AllOf(vec![pinned.clone(), any_san])
            .check(&leaf)
            .is_ok()
    );
    assert!(
        Authorizer::AllOf(vec![pinned, exact_san("spiffe://td.io/ns/a/sa/c")])
            .check(&leaf)
            .is_err()
    );
    assert!(Authorizer::AllOf(vec![]).check(&leaf).is_ok());
}

#[test]
fn loading_rejects_malformed_pem_and_invalid_svids() {
    let ca = TestCa::new("example.org");
    let good = ca.mint("/w", Flaw::None);
    let e = Svid::from_pem(
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        good.key_pem.as_bytes(),
    )
    .unwrap_err();
    assert!(matches!(e, IdentityError::Pem { .. }), "{e}");
    let e = Svid::from_pem(b"no pem here", good.key_pem.as_bytes()).unwrap_err();
    assert!(
        matches!(
            e,
            IdentityError::Missing {
                expected: "CERTIFICATE",
                ..
            }
        ),
        "{e}"
    );
    let e = Svid::from_pem(good.cert_pem.as_bytes(), b"").unwrap_err();
    assert!(
        matches!(
            e,
            IdentityError::Missing {
                expected: "PRIVATE KEY",
                ..
            }
        ),
        "{e}"
    );
    let e = ca.mint("/w", Flaw::TwoUriSans).svid().unwrap_err();
    assert!(
        matches!(
            &e,
            IdentityError::InvalidSvid {
                source: VerifyError::MultipleUriSans { count: 2 },
                ..
            }
        ),
        "{e}"
    );
    let e = TrustBundles::from_spiffe_bundle_map(
        br#"{"trust_domains": {"example.org": {"keys": [{"use": "x509-svid", "x5c": ["not base64!"]}]}}}"#,
        "spiffe_trust_bundle_map_file",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string().split(": invalid base64").next().unwrap(),
        r#"spiffe_trust_bundle_map_file.trust_domains["example.org"].keys[0].x5c[0]"#
    );
    let e = TrustBundles::from_spiffe_bundle_map(
        br#"{"trust_domains": {"Bad Domain": {"keys": []}}}"#,
        "m",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(r#"m.trust_domains["Bad Domain"]: invalid trust domain"#),
        "{e}"
    );
}

#[test]
fn the_bundle_map_skips_jwt_keys_and_round_trips_to_spiffe_types() {
    let a = TestCa::new("a.org");
    let json = TestCa::bundle_map_json(&[&a]).replace(
        r#""keys":["#,
        r#""keys":[{"use":"jwt-svid","kty":"EC","kid":"k"},"#,
    );
    let b = TrustBundles::from_spiffe_bundle_map(json.as_bytes(), "m").unwrap();
    let set = b.to_bundle_set();
    let bundle = set.get(a.trust_domain()).unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    assert_eq!(bundle.authorities()[0].as_bytes(), a.root().as_ref());
    assert!(b.anchors_for(&"b.org".parse().unwrap()).is_none());
}

#[test]
fn configs_report_fips_mode_exactly_when_the_fips_feature_is_on() {
    let p = pair();
    let config = MtlsConfig::new(p.server.clone());
    assert_eq!(
        config.server_config().unwrap().fips(),
        cfg!(feature = "fips")
    );
    assert_eq!(
        config.client_config().unwrap().fips(),
        cfg!(feature = "fips")
    );
}

#[tokio::test]
async fn the_layer_puts_the_handshake_peer_into_request_extensions() {
    use std::task::{Context, Poll};
    use tower::{Layer, Service};

    /// Answers with the peer identity found in the request.
    struct Echo;
    impl Service<http::Request<()>> for Echo {
        type Response = Option<PeerIdentity>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(req.extensions().get::<PeerIdentity>().cloned()))
        }
    }

    let p = pair();
    let client = MtlsConfig::new(source(Some(p.ca.svid("/ns/app/sa/caller")), p.ca.bundles()))
        .client_config()
        .unwrap();
    let (_, server_peer) = handshake(client, server_config(&p, Authorizer::Any)).await;
    let peer = server_peer.unwrap();
    let mut svc = PeerIdentityLayer::new(peer).layer(Echo);
    let seen = svc.call(http::Request::new(())).await.unwrap().unwrap();
    assert_eq!(
        seen.spiffe_id(),
        &id("spiffe://example.org/ns/app/sa/caller")
    );
    let mut anonymous = PeerIdentityLayer::new(None).layer(Echo);
    assert!(
        anonymous
            .call(http::Request::new(()))
            .await
            .unwrap()
            .is_none()
    );
}
