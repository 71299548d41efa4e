//! Reaching an xDS server: dialing (TCP, unix socket, TLS), the ADS stream, and the
//! reconnect backoff. Public are the errors of this part, [`TransportError`] and
//! [`CredentialsError`]; the rest is the client's.
//!
//! Rules, each bounding what a hostile or broken server can cost the client:
//! - **Connect deadline** (20 s by default, gRPC's minimum connect timeout
//!   from its connection-backoff spec): dialing, the TLS handshake and the first bytes of
//!   the server's HTTP/2 connection (the SETTINGS frame every server sends first) must all
//!   happen within it. hyper's handshake returns before the server has said anything, so
//!   without waiting for those bytes a server that accepts TCP and stays silent would hold
//!   the client, and gRFC A71 fallback, forever. A server that is up at HTTP/2 but never
//!   answers on the stream is left to the does-not-exist timers (gRFC A57), as in gRPC.
//! - **Message limit** (4 MiB by default, the limit gRPC's xDS clients
//!   run with: they leave the channel's default receive limit in place, gRFC A70): a
//!   response whose gRPC length prefix announces more is refused from its 5-byte header,
//!   before anything is reserved or buffered (tonic checks the prefix against the limit
//!   before it reserves), the stream fails, and the client backs off and reconnects while
//!   its cache keeps serving.
//! - **Backoff** (1 s growing to 60 s, with jitter): the only reconnects that do not wait are the move to the
//!   next server in a fallback round and the move back to a primary that a probe found up;
//!   every other one waits a step. A stream that got a response resets the backoff but
//!   still waits its first step (grpc core's XdsClient; grpc-go reconnects at once), so a
//!   server that answers and then closes every stream sees at most one stream per first
//!   step, not a spin. A stream that ended on a response over the message limit does not
//!   reset it, whatever came before: the server will send that response again, and it is
//!   failing as surely as one that cannot be reached (for fallback too).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use backon::BackoffBuilder;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::bootstrap::{ApiType, ChannelCredentials, ServerAddress, TlsCredentials, XdsServer};
// The path `client::not_ready` names it by.
pub(crate) use crate::error_chain::ErrorChain;

/// How long dialing a server, its TLS handshake and the start of its HTTP/2 connection may
/// take before the attempt counts as failed: gRPC's 20 s minimum connect timeout.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The largest ADS response accepted by default: 4 MiB, gRPC's default receive limit, which
/// gRPC's own xDS clients keep for their xDS channel (gRFC A70). Raise it with
/// [`XdsClientBuilder::max_message_size`](crate::client::XdsClientBuilder::max_message_size)
/// for a control plane that sends larger responses.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Why the client could not reach an xDS server, or lost its ADS stream. The latest one is
/// [`XdsClient::last_error`](crate::client::XdsClient::last_error). Its `source()` is the
/// underlying connect error or the stream's gRPC status, when there is one.
#[derive(Debug, Clone)]
pub struct TransportError {
    uri: String,
    kind: ErrorKind,
}

#[derive(Debug, Clone)]
enum ErrorKind {
    Connect(Arc<tonic::transport::Error>),
    ConnectTimeout(Duration),
    /// The connection closed before the server said anything.
    Silent,
    Stream(tonic::Status),
    MessageTooLarge {
        limit: usize,
        status: tonic::Status,
    },
    Closed,
}

impl TransportError {
    fn new(uri: &str, kind: ErrorKind) -> Self {
        Self {
            uri: uri.to_string(),
            kind,
        }
    }

    /// The server's URI as configured.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The server did not start its HTTP/2 connection within the connect deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::ConnectTimeout(_))
    }

    /// The server announced a response larger than the message limit.
    pub fn is_message_too_large(&self) -> bool {
        matches!(self.kind, ErrorKind::MessageTooLarge { .. })
    }

    /// The server could not be reached (dial, TLS, HTTP/2 or the deadline), as opposed to
    /// an ADS stream that was open and then failed.
    pub fn is_connect(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Connect(_) | ErrorKind::ConnectTimeout(_) | ErrorKind::Silent
        )
    }

    /// Classify the status an ADS stream failed with.
    pub(crate) fn stream(uri: &str, status: tonic::Status, limit: usize) -> Self {
        // tonic's decoder refuses an oversized length prefix with OUT_OF_RANGE and a text
        // naming the limit; it gives nothing more structural. Matching its decode-side text
        // and our own limit keeps out its encode-side twin (a request of ours too large) and
        // a server's OUT_OF_RANGE. hostile_server.rs's oversized-response test drives tonic's
        // real decoder, so a rewording in a tonic upgrade fails it.
        let too_large = status.code() == tonic::Code::OutOfRange
            && status
                .message()
                .starts_with("Error, decoded message length too large")
            && status
                .message()
                .ends_with(&format!("the limit is: {limit} bytes"));
        let kind = if too_large {
            ErrorKind::MessageTooLarge { limit, status }
        } else {
            ErrorKind::Stream(status)
        };
        Self::new(uri, kind)
    }

    /// The server ended the stream without an error.
    pub(crate) fn closed(uri: &str) -> Self {
        Self::new(uri, ErrorKind::Closed)
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = &self.uri;
        match &self.kind {
            ErrorKind::Connect(_) => write!(f, "xDS server {uri}: cannot connect"),
            ErrorKind::ConnectTimeout(t) => write!(
                f,
                "xDS server {uri}: no HTTP/2 connection within the {t:?} connect deadline"
            ),
            ErrorKind::Silent => write!(
                f,
                "xDS server {uri}: the connection closed before the server said anything"
            ),
            ErrorKind::Stream(_) => write!(f, "xDS server {uri}: the ADS stream failed"),
            ErrorKind::MessageTooLarge { limit, .. } => write!(
                f,
                "xDS server {uri}: a response is larger than the {limit}-byte message limit"
            ),
            ErrorKind::Closed => write!(f, "xDS server {uri}: the server closed the ADS stream"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Connect(e) => Some(&**e),
            ErrorKind::Stream(status) | ErrorKind::MessageTooLarge { status, .. } => Some(status),
            ErrorKind::ConnectTimeout(_) | ErrorKind::Silent | ErrorKind::Closed => None,
        }
    }
}

/// How to dial one configured xDS server: its address and, for `tls` channel credentials,
/// the rustls config built from the credential files.
#[derive(Clone)]
pub(crate) struct Dialer {
    address: ServerAddress,
    tls: Option<Arc<rustls::ClientConfig>>,
    uri: String,
    delta: bool,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("uri", &self.uri)
            .field("tls", &self.tls.is_some())
            .field("delta", &self.delta)
            .finish()
    }
}

/// Why a server's channel credentials could not be turned into a TLS config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// A credential file could not be read or held no usable PEM.
    #[error("xDS server {uri}: cannot load {what} from {path}: {source}")]
    File {
        /// The server's URI.
        uri: String,
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// `tls` credentials without `ca_certificate_file`: the platform's roots are not
    /// available to meshwork yet.
    #[error(
        "xDS server {uri}: tls channel credentials need ca_certificate_file (platform roots are not supported yet)"
    )]
    NoRoots {
        /// The server's URI.
        uri: String,
    },
    /// rustls refused the certificates or key.
    #[error("xDS server {uri}: {source}")]
    Rustls {
        /// The server's URI.
        uri: String,
        /// The underlying error.
        #[source]
        source: rustls::Error,
    },
}

impl Dialer {
    /// Prepare to dial `server`, loading its TLS credential files now so a bad file is
    /// reported at start-up rather than at the first connection.
    pub(crate) fn new(server: &XdsServer) -> Result<Self, CredentialsError> {
        let uri = server.uri().to_string();
        let tls = match server.channel_credentials() {
            ChannelCredentials::Tls(creds) => Some(Arc::new(tls_config(&uri, creds)?)),
            _ => None,
        };
        Ok(Self {
            address: server.address().clone(),
            tls,
            uri,
            delta: server.api_type() == ApiType::DeltaGrpc,
        })
    }

    /// Whether the server speaks delta ADS (`api_type: DELTA_GRPC`).
    pub(crate) fn is_delta(&self) -> bool {
        self.delta
    }

    /// The URI as configured.
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// Open an HTTP/2 channel to the server: dial, TLS, and the server's first HTTP/2
    /// bytes, all within `timeout`.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Channel, TransportError> {
        let err = |kind| TransportError::new(&self.uri, kind);
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address.authority()))
            .map_err(|e| err(ErrorKind::Connect(Arc::new(e))))?
            .connect_timeout(timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let address = self.address.clone();
        let tls = self.tls.clone();
        let (heard_tx, mut heard) = watch::channel(Hearing::Pending);
        let heard_tx = Arc::new(heard_tx);
        let attempt = async move {
            let channel = endpoint
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    dial_io(address.clone(), tls.clone(), heard_tx.clone())
                }))
                .await
                .map_err(|e| ErrorKind::Connect(Arc::new(e)))?;
            // hyper's handshake completes without a word from the server; its first bytes
            // (the SETTINGS frame that opens every HTTP/2 server connection) show it is up.
            // The connector (and so the sender) lives as long as the channel: the IO itself
            // reports a connection that ended before the server spoke.
            let hearing = *heard
                .wait_for(|h| *h != Hearing::Pending)
                .await
                .map_err(|_| ErrorKind::Silent)?;
            match hearing {
                Hearing::Heard => Ok(channel),
                Hearing::Pending | Hearing::Closed => Err(ErrorKind::Silent),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result.map_err(err),
            Err(_) => Err(err(ErrorKind::ConnectTimeout(timeout))),
        }
    }
}

fn tls_config(uri: &str, creds: &TlsCredentials) -> Result<rustls::ClientConfig, CredentialsError> {
    let file_err = |what, path: &Path| {
        let (uri, path) = (uri.to_string(), path.to_path_buf());
        move |source| CredentialsError::File {
            uri,
            what,
            path,
            source,
        }
    };
    let rustls_err = |source| CredentialsError::Rustls {
        uri: uri.to_string(),
        source,
    };
    let ca = creds
        .ca_certificate_file()
        .ok_or_else(|| CredentialsError::NoRoots {
            uri: uri.to_string(),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(file_err("CA certificates", ca))? {
        roots
            .add(cert.map_err(file_err("CA certificates", ca))?)
            .map_err(rustls_err)?;
    }
    if roots.is_empty() {
        let no_pem = rustls_pki_types::pem::Error::NoItemsFound;
        return Err(file_err("CA certificates", ca)(no_pem));
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::crypto::provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_root_certificates(roots);
    let mut config = match (creds.certificate_file(), creds.private_key_file()) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(file_err("certificate chain", cert))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(file_err("certificate chain", cert))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(file_err("private key", key))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(rustls_err)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

type BoxIo = Box<dyn IoStream>;
trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> IoStream for T {}

/// What a new connection has had from the server so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hearing {
    /// Nothing yet.
    Pending,
    /// Its first bytes.
    Heard,
    /// Its end (EOF, a read error, or the connection dropped) before any byte.
    Closed,
}

/// The connection's IO, which reports the first bytes read from the server, or its end
/// before them.
struct Heard {
    io: BoxIo,
    heard: Option<Arc<watch::Sender<Hearing>>>,
}

impl Heard {
    fn report(&mut self, hearing: Hearing) {
        if let Some(heard) = self.heard.take() {
            // Only the first connection's news counts: a later one the channel makes on its
            // own must not overwrite it.
            heard.send_if_modified(|h| {
                let first = *h == Hearing::Pending;
                if first {
                    *h = hearing;
                }
                first
            });
        }
    }
}

impl Drop for Heard {
    fn drop(&mut self) {
        self.report(Hearing::Closed);
    }
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.report(Hearing::Heard),
            // A read that fills nothing into a buffer with room is the end of the stream.
            Poll::Ready(Ok(())) if buf.remaining() > 0 => self.report(Hearing::Closed),
            Poll::Ready(Err(_)) => self.report(Hearing::Closed),
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn dial_io(
    address: ServerAddress,
    tls: Option<Arc<rustls::ClientConfig>>,
    heard: Arc<watch::Sender<Hearing>>,
) -> Result<TokioIo<Heard>, std::io::Error> {
    let heard = Some(heard);
    let (io, host): (BoxIo, String) = match address {
        ServerAddress::Tcp { host, port } => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            (Box::new(tcp), host)
        }
        #[cfg(unix)]
        ServerAddress::Unix { path } => (
            Box::new(tokio::net::UnixStream::connect(path).await?),
            "localhost".into(),
        ),
        #[cfg(not(unix))]
        ServerAddress::Unix { .. } => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "unix sockets",
            ));
        }
    };
    let Some(tls) = tls else {
        return Ok(TokioIo::new(Heard { io, heard }));
    };
    let name = ServerName::try_from(host)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, io)
        .await?;
    Ok(TokioIo::new(Heard {
        io: Box::new(stream),
        heard,
    }))
}

/// How many requests a stream's channel holds before the transport takes them. The rest
/// wait in the protocol core, which keeps at most a few per type (ACKs and NACKs coalesce,
/// requests are built when sent): a server that sends responses but stops reading its
/// stream costs the client a bounded amount of memory, not a request per response.
pub(crate) const REQUEST_QUEUE: usize = 4;

/// The request half of an ADS stream, SotW or delta: a bounded channel.
#[derive(Debug)]
pub(crate) enum AdsRequests {
    /// `StreamAggregatedResources`.
    Sotw(mpsc::Sender<DiscoveryRequest>),
    /// `DeltaAggregatedResources`.
    Delta(mpsc::Sender<DeltaDiscoveryRequest>),
}

impl AdsRequests {
    /// Waits until the channel has room for a request; `false` if the stream is gone.
    pub(crate) async fn writable(&self) -> bool {
        match self {
            AdsRequests::Sotw(tx) => tx.reserve().await.is_ok(),
            AdsRequests::Delta(tx) => tx.reserve().await.is_ok(),
        }
    }
}

/// What [`open_stream`] sends: the receiving end of [`AdsRequests`].
#[derive(Debug)]
pub(crate) enum PendingRequests {
    Sotw(mpsc::Receiver<DiscoveryRequest>),
    Delta(mpsc::Receiver<DeltaDiscoveryRequest>),
}

/// A channel for the requests of a new stream, of the kind the server speaks.
pub(crate) fn ads_channel(delta: bool) -> (AdsRequests, PendingRequests) {
    if delta {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        (AdsRequests::Delta(tx), PendingRequests::Delta(rx))
    } else {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        (AdsRequests::Sotw(tx), PendingRequests::Sotw(rx))
    }
}

/// The response half of an open ADS stream.
pub(crate) enum AdsResponses {
    Sotw(tonic::Streaming<DiscoveryResponse>),
    Delta(tonic::Streaming<DeltaDiscoveryResponse>),
}

/// One response of an ADS stream.
pub(crate) enum AdsResponse {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

impl AdsResponses {
    /// The next response; `None` when the server ended the stream.
    pub(crate) async fn message(&mut self) -> Result<Option<AdsResponse>, tonic::Status> {
        Ok(match self {
            AdsResponses::Sotw(s) => s.message().await?.map(AdsResponse::Sotw),
            AdsResponses::Delta(s) => s.message().await?.map(AdsResponse::Delta),
        })
    }
}

/// Open `StreamAggregatedResources` (or `DeltaAggregatedResources`, for delta requests) on
/// a channel, sending what `requests` carries. Queue the first requests before awaiting
/// this, so the server sees them with the stream. A response announcing more than
/// `max_message_size` bytes fails the stream.
pub(crate) async fn open_stream(
    channel: Channel,
    requests: PendingRequests,
    max_message_size: usize,
) -> Result<AdsResponses, tonic::Status> {
    // Requests are ours: the names of one type, which come from the user's watches and from
    // one full-state response (each under the limit), an ACK's version and nonce, and a
    // NACK text bounded by MAX_NACK_DETAIL. The encoding limit is a backstop with room to
    // spare, so a bug that bloats a request fails the stream instead of sending it. (A
    // delta reconnect's `initial_resource_versions` holds names and versions of what one
    // server sent, each response under the limit.)
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(max_message_size)
        .max_encoding_message_size(
            max_message_size
                .max(DEFAULT_MAX_MESSAGE_SIZE)
                .saturating_mul(4),
        );
    Ok(match requests {
        PendingRequests::Sotw(rx) => AdsResponses::Sotw(
            client
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await?
                .into_inner(),
        ),
        PendingRequests::Delta(rx) => AdsResponses::Delta(
            client
                .delta_aggregated_resources(ReceiverStream::new(rx))
                .await?
                .into_inner(),
        ),
    })
}

/// Reconnect delays: exponential from `min` by 1.6x up to `max`, and each delay gets up to
/// 100% random jitter on top (backon's jitter), so a delay `d` is drawn from `[d, 2d)` and
/// clients that lost the same server do not come back in lockstep.
///
/// The fields are kept in range when used: `min` is at least 100 ms, so a server that
/// answers and closes every stream sees at most ten streams a second, never a spin; `max`
/// is at most 60 s, so with jitter no delay exceeds gRPC's 120 s cap (its connection-backoff
/// spec's `MAX_BACKOFF`), and at least `min`.
// Hidden: public only so that integration tests reconnect in milliseconds (through
// `XdsClientBuilder::backoff`); gRPC's xDS clients do not let users tune this either.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay (at least 100 ms).
    pub min: Duration,
    /// The largest delay before jitter (between `min` and 60 s).
    pub max: Duration,
}

/// The least first delay a [`Backoff`] uses.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The largest delay before jitter a [`Backoff`] uses: 120 s with jitter (gRPC's cap).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Default for Backoff {
    /// 1 s growing to 60 s before jitter, so no delay exceeds gRPC's 120 s cap.
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delays in force: `min` and `max` clamped as the type's docs say.
    pub(crate) fn clamped(&self) -> Self {
        let min = self.min.clamp(MIN_BACKOFF, MAX_BACKOFF);
        Self {
            min,
            max: self.max.clamp(min, MAX_BACKOFF),
        }
    }

    pub(crate) fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let Self { min, max } = self.clamped();
        backon::ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(1.6)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts and at once closes every connection fails the connect at
    /// once, as one that closed before saying anything, not after the 20 s deadline (which
    /// would hold back gRFC A71's fallback).
    #[tokio::test]
    async fn a_server_that_closes_at_once_fails_the_connect_fast() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let _accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                drop(tcp);
            }
        });
        let dialer = Dialer::new(&XdsServer::new(uri).unwrap()).unwrap();
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            dialer.connect(DEFAULT_CONNECT_TIMEOUT),
        )
        .await
        .expect("the connect waited for its deadline");
        let error = result.expect_err("nobody is there");
        assert!(
            matches!(error.kind, ErrorKind::Silent),
            "{}",
            ErrorChain(&error)
        );
        assert!(error.is_connect() && !error.is_timeout());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    /// Only tonic's decode-side refusal under our limit is a message too large.
    #[test]
    fn message_too_large_is_the_decoders_refusal_of_our_limit() {
        let status = |m: &str| tonic::Status::out_of_range(m.to_string());
        let decoded = "Error, decoded message length too large: found 4294967280 bytes, \
                       the limit is: 4194304 bytes";
        let encoded = "Error, encoded message length too large: found 9 bytes, the limit is: \
                       4194304 bytes";
        let too_large = |s| TransportError::stream("x", s, 4194304).is_message_too_large();
        assert!(too_large(status(decoded)));
        assert!(!too_large(status(encoded)), "a request of ours");
        assert!(
            !too_large(status("message length too large")),
            "a server's own"
        );
        assert!(!too_large(tonic::Status::internal(decoded)));
        assert!(
            !TransportError::stream("x", status(decoded), 16).is_message_too_large(),
            "not our limit"
        );
    }

    /// A zero `min` would let a server that answers and closes make the client spin; a
    /// huge `max` would overflow `Instant + delay` and kill the client's task.
    #[test]
    fn backoff_fields_are_kept_in_range() {
        let zero = Backoff {
            min: Duration::ZERO,
            max: Duration::ZERO,
        };
        for d in zero.delays().take(20) {
            assert!(d >= MIN_BACKOFF && d < 2 * MIN_BACKOFF, "{d:?}");
        }
        let huge = Backoff {
            min: Duration::MAX,
            max: Duration::MAX,
        };
        let now = tokio::time::Instant::now();
        for d in huge.delays().take(20) {
            assert!(d >= MAX_BACKOFF && d < 2 * MAX_BACKOFF, "{d:?}");
            assert!(now.checked_add(d).is_some());
        }
        let inverted = Backoff {
            min: Duration::from_secs(5),
            max: Duration::from_secs(1),
        }
        .clamped();
        assert_eq!(inverted.max, Duration::from_secs(5));
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<Duration> = b.delays().take(12).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200));
        // 100ms * 1.6^5 is past the cap: from there every delay is in [max, 2 max).
        for d in &delays[5..] {
            assert!(*d >= b.max && *d < 2 * b.max, "{delays:?}");
        }
        let distinct: std::collections::BTreeSet<_> = delays[5..].iter().collect();
        assert!(
            distinct.len() > 1,
            "jitter varies the capped delays: {delays:?}"
        );
    }
}
