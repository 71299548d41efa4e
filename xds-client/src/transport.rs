//! Reaching an xDS server: dialing (TCP, unix socket, TLS), the ADS stream, and the
//! reconnect backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::bootstrap::{ChannelCredentials, ServerAddress, TlsCredentials, XdsServer};

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How to dial one configured xDS server: its address and, for `tls` channel credentials,
/// the rustls config built from the credential files.
#[derive(Clone)]
pub(crate) struct Dialer {
    address: ServerAddress,
    tls: Option<Arc<rustls::ClientConfig>>,
    uri: String,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("uri", &self.uri)
            .field("tls", &self.tls.is_some())
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
        })
    }

    /// The URI as configured.
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// Open an HTTP/2 channel to the server.
    pub(crate) async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address.authority()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let address = self.address.clone();
        let tls = self.tls.clone();
        endpoint
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                dial_io(address.clone(), tls.clone())
            }))
            .await
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

async fn dial_io(
    address: ServerAddress,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<TokioIo<BoxIo>, std::io::Error> {
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
        return Ok(TokioIo::new(io));
    };
    let name = ServerName::try_from(host)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, io)
        .await?;
    Ok(TokioIo::new(Box::new(stream)))
}

/// Open `StreamAggregatedResources` on a channel, sending what `requests` carries. Queue
/// the first requests before awaiting this, so the server sees them with the stream.
pub(crate) async fn open_stream(
    channel: Channel,
    requests: mpsc::UnboundedReceiver<DiscoveryRequest>,
) -> Result<tonic::Streaming<DiscoveryResponse>, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    Ok(client
        .stream_aggregated_resources(UnboundedReceiverStream::new(requests))
        .await?
        .into_inner())
}

/// Reconnect delays: exponential from `min` by 1.6x up to `max`, and each delay gets up to
/// 100% random jitter on top (backon's jitter), so a delay `d` is drawn from `[d, 2d)` and
/// clients that lost the same server do not come back in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The largest delay.
    pub max: Duration,
}

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
    pub(crate) fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(1.6)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
