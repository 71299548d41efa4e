//! Hostile clients for testing a server's [`ServerLimits`](super::ServerLimits) on loopback
//! (feature `testing`): connections that send nothing, TLS connections that stop after the
//! handshake, and a slowloris that trickles an HTTP/1 request head forever.
//!
//! ```no_run
//! # async fn f(addr: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! use meshwork_core::inbound::testing::{closed_within, silent};
//!
//! let flood = silent(addr, 32).await?;
//! // ... a real client's request succeeds here ...
//! for conn in flood {
//!     assert!(closed_within(conn, Duration::from_secs(5)).await);
//! }
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadHalf};
use tokio::net::TcpStream;

/// Opens `n` TCP connections to `addr` that never send a byte (each blocks a TLS handshake,
/// or an HTTP/1 request head on a plaintext server).
pub async fn silent(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(addr).await?);
    }
    Ok(conns)
}

/// Completes a TLS handshake with `addr` as `config` says (its client certificate and
/// ALPN), then sends nothing: with ALPN `h2`, an HTTP/2 connection that never sends its
/// preface.
pub async fn tls_silent(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

/// Starts a slowloris on `stream`: in a task, an HTTP/1.1 request head sent one byte every
/// `pace` and never finished. Returns the read half, for [`closed_within`]; the task ends
/// when a write fails (the server closed the connection).
pub fn slowloris<S>(stream: S, pace: Duration) -> ReadHalf<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(stream);
    tokio::spawn(async move {
        let head = b"GET / HTTP/1.1\r\nhost: slow\r\n";
        for byte in head.iter().chain(std::iter::repeat(&b'x')) {
            if write.write_all(&[*byte]).await.is_err() || write.flush().await.is_err() {
                return;
            }
            // Pacing the attack, not synchronising the test.
            tokio::time::sleep(pace).await;
        }
    });
    read
}

/// Whether the server closes `stream` (end of stream or an error, e.g. a reset) within
/// `bound`, discarding what it sends meanwhile.
pub async fn closed_within<R: AsyncRead + Unpin>(mut stream: R, bound: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
