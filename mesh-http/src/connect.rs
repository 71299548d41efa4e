//! Endpoint connections: one pooled hyper client per endpoint, dialled by
//! [`meshwork_core::upstream::Dialer`] (TCP, with SPIFFE mTLS when the cluster asks for TLS),
//! speaking HTTP/2 or HTTP/1.1 (see [`Protocol`]).
//!
//! Everything the outbound stack needs from this module is [`Endpoint::new`], called by the
//! stack's `Connect` seam; the rest is private to keep the seam easy to adapt.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::retry::RetryBody;
use meshwork_core::upstream::{ConnectError, Dialer, UpstreamIdentity, UpstreamStream};
use meshwork_core::xds::resource::Cluster;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::BoxError;

use crate::Body;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The HTTP version spoken to a cluster's endpoints.
///
/// Over TLS the server chooses by ALPN among what we offer: `h2` and `http/1.1`, or only
/// `h2` when the cluster asks for HTTP/2. In plaintext there is no negotiation: HTTP/1.1,
/// unless the cluster asks for HTTP/2 (then HTTP/2 with prior knowledge, "h2c").
///
/// A cluster asks for HTTP/2 when its CDS resource sets `http2_protocol_options`, or when
/// the client is told to ([`MeshClientOptions::http2_prior_knowledge`](crate::MeshClientOptions::http2_prior_knowledge)).
/// `typed_extension_protocol_options` (Envoy's newer `HttpProtocolOptions`) is not decoded
/// by meshwork-xds yet, so it does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 in plaintext; ALPN `h2`, `http/1.1` over TLS.
    Negotiate,
    /// HTTP/2 only.
    Http2,
}

impl Protocol {
    pub(crate) fn for_cluster(cluster: &Cluster, http2_prior_knowledge: bool) -> Self {
        // meshwork-xds lists `http2_protocol_options` among the cluster's set-but-unused
        // fields; for an HTTP client it is the cluster saying "speak HTTP/2".
        let cluster_says_h2 = cluster
            .unsupported_fields
            .iter()
            .any(|f| f == "http2_protocol_options");
        if cluster_says_h2 || http2_prior_knowledge {
            Protocol::Http2
        } else {
            Protocol::Negotiate
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Negotiate => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocol::Http2 => vec![b"h2".to_vec()],
        }
    }
}

/// hyper-util's connector for one endpoint: dials it, whatever URI hyper asks for.
#[derive(Clone)]
struct Connector(Dialer);

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = BoxFuture<Result<TokioIo<Conn>, ConnectError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let dialer = self.0.clone();
        Box::pin(async move { dialer.dial().await.map(|s| TokioIo::new(Conn(s))) })
    }
}

/// A connection to an endpoint, telling hyper-util whether ALPN chose HTTP/2.
struct Conn(UpstreamStream);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        if self.0.alpn_protocol() == Some(b"h2") {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// One endpoint: a pooled hyper client whose connections all go to the endpoint's address.
/// Clones share the pool, so the endpoint can be a cloneable handle if the stack wants one.
#[derive(Clone)]
pub(crate) struct Endpoint {
    client: Client<Connector, RetryBody<Body>>,
}

impl Endpoint {
    pub(crate) fn new(
        cluster: &Cluster,
        address: SocketAddr,
        identity: &UpstreamIdentity,
        http2_prior_knowledge: bool,
    ) -> Self {
        let protocol = Protocol::for_cluster(cluster, http2_prior_knowledge);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(protocol == Protocol::Http2)
            .build(Connector(Dialer::new(
                cluster,
                address,
                identity,
                protocol.alpn(),
            )));
        Self { client }
    }
}

impl tower::Service<http::Request<RetryBody<Body>>> for Endpoint {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<RetryBody<Body>>) -> Self::Future {
        // The URI is absolute (`MeshClient` makes it so): hyper pools by its authority, sends
        // it as `Host` / `:authority`, and the dialer ignores it.
        let fut = self.client.request(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
