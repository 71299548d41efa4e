//! The TLS call meshwork-core's identity integration tests share; what every package's tests
//! share is in the `meshwork-test-support` crate.
#![allow(dead_code, unreachable_pub)]

use meshwork_core::identity::PeerIdentity;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// One call: handshake + echo over an in-memory stream; returns the server leaf the client
/// saw and the client identity the server saw.
pub async fn call(
    connector: &TlsConnector,
    acceptor: &TlsAcceptor,
) -> Result<(CertificateDer<'static>, PeerIdentity), String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server = async {
        let mut tls = acceptor
            .accept(s)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer = PeerIdentity::from_server_stream(&tls).ok_or("server: no peer identity")?;
        let mut b = [0u8; 4];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        tls.write_all(&b).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let client = async {
        let name = ServerName::try_from("server.mesh").unwrap();
        let mut tls = connector
            .connect(name, c)
            .await
            .map_err(|e| format!("client: {e}"))?;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned();
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 4];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        assert_eq!(&b, b"ping");
        Ok::<_, String>(leaf)
    };
    let (leaf, peer) = tokio::join!(client, server);
    Ok((leaf?, peer?))
}
