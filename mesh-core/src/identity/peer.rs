//! The verified identity of the peer, for the application.

use std::task::{Context, Poll};

use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, TrustDomain};

use super::svid::inspect_leaf;

/// The SPIFFE identity of a verified peer.
///
/// On a server, [`PeerIdentityLayer`] puts it into each request's extensions; on a client,
/// [`PeerIdentity::from_client_stream`] reads it from the connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    spiffe_id: SpiffeId,
}

impl PeerIdentity {
    /// Wraps an ID.
    pub fn new(spiffe_id: SpiffeId) -> Self {
        Self { spiffe_id }
    }

    /// The peer's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The peer's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.spiffe_id.trust_domain()
    }

    /// The identity in a peer chain (leaf first) that a [`SpiffeVerifier`](super::SpiffeVerifier)
    /// accepted during the handshake; `None` without certificates or an SVID leaf.
    pub fn from_certificates(chain: &[CertificateDer<'_>]) -> Option<Self> {
        let leaf = chain.first()?;
        inspect_leaf(leaf).ok().map(|l| Self::new(l.spiffe_id))
    }

    /// The server's identity on a client connection.
    pub fn from_client_stream<IO>(stream: &tokio_rustls::client::TlsStream<IO>) -> Option<Self> {
        Self::from_certificates(stream.get_ref().1.peer_certificates()?)
    }

    /// The client's identity on a server connection.
    pub fn from_server_stream<IO>(stream: &tokio_rustls::server::TlsStream<IO>) -> Option<Self> {
        Self::from_certificates(stream.get_ref().1.peer_certificates()?)
    }
}

/// A tower layer that adds the connection's [`PeerIdentity`] to every request's extensions.
///
/// Build one per accepted connection:
/// `PeerIdentityLayer::new(PeerIdentity::from_server_stream(&tls))`.
#[derive(Debug, Clone)]
pub struct PeerIdentityLayer {
    identity: Option<PeerIdentity>,
}

impl PeerIdentityLayer {
    /// Adds `identity` (when `Some`) to each request.
    pub fn new(identity: Option<PeerIdentity>) -> Self {
        Self { identity }
    }
}

impl<S> tower::Layer<S> for PeerIdentityLayer {
    type Service = AddPeerIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AddPeerIdentity {
            inner,
            identity: self.identity.clone(),
        }
    }
}

/// The service made by [`PeerIdentityLayer`].
#[derive(Debug, Clone)]
pub struct AddPeerIdentity<S> {
    inner: S,
    identity: Option<PeerIdentity>,
}

impl<S> AddPeerIdentity<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> tower::Service<http::Request<B>> for AddPeerIdentity<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(id) = &self.identity {
            req.extensions_mut().insert(id.clone());
        }
        self.inner.call(req)
    }
}
