//! Reaching the control plane the ways a bootstrap can say: TLS channel credentials (with
//! and without a client certificate, and with the wrong CA), a unix socket, and credential
//! files that cannot be loaded.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use meshwork_test_support::xds::one_cluster;
use meshwork_xds::bootstrap::{
    Bootstrap, ChannelCredentials, FileWatcherConfig, TlsCredentials, XdsServer,
};
use meshwork_xds::client::{ReadyError, XdsClient};
use meshwork_xds::server::{Snapshot, XdsTestServer};
use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tonic::transport::server::Connected;

const TARGET: &str = "greeter:50051";

fn snapshot() -> Snapshot {
    one_cluster(TARGET, "c", "127.0.0.1:1".parse().unwrap())
}

fn dir(name: &str) -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Self {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A leaf for `san` (an IP or DNS name): (cert PEM, key PEM, cert DER, key DER).
    fn leaf(
        &self,
        san: &str,
    ) -> (
        String,
        String,
        CertificateDer<'static>,
        PrivatePkcs8KeyDer<'static>,
    ) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![san.to_string()])
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        (
            cert.pem(),
            key.serialize_pem(),
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        )
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }
}

/// tonic needs `Connected` on what it serves; TLS streams get it through this wrapper.
struct Tls(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl Connected for Tls {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Our test server behind a rustls acceptor; `client_ca` makes it require client certs.
async fn tls_server(pki: &Pki, client_ca: Option<CertificateDer<'static>>) -> XdsTestServer {
    let (_, _, cert, key) = pki.leaf("127.0.0.1");
    let builder = rustls::ServerConfig::builder_with_provider(meshwork_xds::crypto::provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                meshwork_xds::crypto::provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(vec![cert, pki.ca_der()], key.into())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
        .then(move |tcp| {
            let acceptor = acceptor.clone();
            async move { acceptor.accept(tcp?).await.map(Tls) }
        })
        // A failed handshake must not stop the server; drop that connection.
        .filter_map(|r| async move { r.ok().map(Ok::<_, std::io::Error>) });
    let server = XdsTestServer::start_with_incoming(Box::pin(incoming), addr)
        .await
        .unwrap();
    server.set_snapshot(snapshot());
    server
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

fn tls_client(server: &XdsTestServer, creds: TlsCredentials) -> XdsClient {
    let bootstrap = Bootstrap::builder()
        .server(
            XdsServer::new(format!("127.0.0.1:{}", server.addr().port()))
                .unwrap()
                .with_channel_credentials(ChannelCredentials::Tls(creds)),
        )
        .node_id("tls-test")
        .build()
        .unwrap();
    XdsClient::start(&bootstrap).unwrap()
}

#[tokio::test]
async fn tls_channel_credentials_with_a_client_certificate() {
    let pki = Pki::new("xds-ca");
    let server = tls_server(&pki, Some(pki.ca_der())).await;
    let d = dir("tls-mtls");
    let ca = write(&d, "ca.pem", &pki.ca.pem());
    let (cert_pem, key_pem, _, _) = pki.leaf("client.example");
    let cert = write(&d, "cert.pem", &cert_pem);
    let key = write(&d, "key.pem", &key_pem);
    let files = FileWatcherConfig::from_identity(cert, key).with_ca_certificate_file(ca);
    let client = tls_client(&server, TlsCredentials::from_files(files));
    let config = client
        .watch_target(TARGET, TARGET)
        .await
        .ready(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(config.clusters.len(), 1);
}

#[tokio::test]
async fn tls_without_a_client_certificate() {
    let pki = Pki::new("xds-ca");
    let server = tls_server(&pki, None).await;
    let d = dir("tls-server-only");
    let ca = write(&d, "ca.pem", &pki.ca.pem());
    let client = tls_client(
        &server,
        TlsCredentials::from_files(FileWatcherConfig::from_ca_certificate_file(ca)),
    );
    client
        .watch_target(TARGET, TARGET)
        .await
        .ready(Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused() {
    let server = tls_server(&Pki::new("the-servers-ca"), None).await;
    let d = dir("tls-wrong-ca");
    let ca = write(&d, "ca.pem", &Pki::new("our-ca").ca.pem());
    let client = tls_client(
        &server,
        TlsCredentials::from_files(FileWatcherConfig::from_ca_certificate_file(ca)),
    );
    let err = client
        .watch_target(TARGET, TARGET)
        .await
        .ready(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, ReadyError::Timeout { .. }), "{err}");
    assert_eq!(
        server.total_streams(),
        0,
        "no ADS stream over an unverified connection"
    );
}

#[tokio::test]
async fn unreadable_credential_files_are_reported_at_start() {
    let d = dir("tls-missing");
    let missing = d.join("nope.pem");
    let bootstrap = Bootstrap::builder()
        .server(
            XdsServer::new("127.0.0.1:1")
                .unwrap()
                .with_channel_credentials(ChannelCredentials::Tls(TlsCredentials::from_files(
                    FileWatcherConfig::from_ca_certificate_file(&missing),
                ))),
        )
        .node_id("x")
        .build()
        .unwrap();
    let err = XdsClient::builder(&bootstrap).unwrap_err().to_string();
    assert!(
        err.contains("CA certificates") && err.contains("nope.pem"),
        "{err}"
    );

    let garbage = write(&d, "garbage.pem", "not a certificate");
    let bootstrap = Bootstrap::builder()
        .server(
            XdsServer::new("127.0.0.1:1")
                .unwrap()
                .with_channel_credentials(ChannelCredentials::Tls(TlsCredentials::from_files(
                    FileWatcherConfig::from_ca_certificate_file(&garbage),
                ))),
        )
        .node_id("x")
        .build()
        .unwrap();
    let err = XdsClient::builder(&bootstrap).unwrap_err().to_string();
    assert!(err.contains("garbage.pem"), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn unix_socket_server_uri() {
    let d = dir("uds");
    let path = d.join("xds.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let server = XdsTestServer::start_with_incoming(incoming, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    server.set_snapshot(snapshot());
    let bootstrap = Bootstrap::builder()
        .server(XdsServer::new(format!("unix://{}", path.display())).unwrap())
        .node_id("uds-test")
        .build()
        .unwrap();
    let client = XdsClient::start(&bootstrap).unwrap();
    client
        .watch_target(TARGET, TARGET)
        .await
        .ready(Duration::from_secs(10))
        .await
        .unwrap();
}
