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
use meshwork_core::xds::resource::{Cluster, UpstreamProtocol};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::BoxError;

use crate::Body;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The HTTP version spoken to a cluster's endpoints, from the cluster's
/// [`UpstreamProtocol`] (Envoy's `HttpProtocolOptions`, or the deprecated
/// `http2_protocol_options`):
///
/// | the cluster says | over TLS (ALPN offered) | in plaintext |
/// |---|---|---|
/// | HTTP/2 | `h2` | HTTP/2 with prior knowledge ("h2c") |
/// | HTTP/1.1 | `http/1.1` | HTTP/1.1 |
/// | auto, downstream or nothing | `h2`, `http/1.1`: the server chooses | HTTP/1.1 |
///
/// [`MeshClientOptions::http2_prior_knowledge`](crate::MeshClientOptions::http2_prior_knowledge)
/// makes every cluster HTTP/2. "Downstream" (use the caller's version) is taken as auto: an
/// in-process client has no downstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 in plaintext; ALPN `h2`, `http/1.1` over TLS.
    Negotiate,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

impl Protocol {
    pub(crate) fn for_cluster(cluster: &Cluster, http2_prior_knowledge: bool) -> Self {
        if http2_prior_knowledge {
            return Protocol::Http2;
        }
        match cluster.protocol {
            UpstreamProtocol::Http2 => Protocol::Http2,
            UpstreamProtocol::Http1 => Protocol::Http1,
            _ => Protocol::Negotiate,
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Negotiate => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
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
