//! [`XdsInboundLayer`]: the per-request part of an xDS-driven server.

use std::borrow::Cow;
use std::task::{Context, Poll};

use rand::SeedableRng as _;
use rand::rngs::SmallRng;

use super::decide::XdsRefusal;
use super::slot::ChainSlot;
use crate::inbound::layer::{refusal as refusal_response, set_path};
use crate::inbound::policy::is_grpc;
use crate::inbound::{ConnectionInfo, InboundFuture, PathError, normalize_path};

/// Applies the served xDS Listener's HTTP configuration to each request: the filter
/// chain's routes (A36: a request must match a route with `non_forwarding_action`, else it
/// fails with `UNAVAILABLE`) and its RBAC filters (A41: `PERMISSION_DENIED`), with the
/// route's `RBACPerRoute` overrides. The chain's configuration is read per request, so an
/// RDS or RBAC change applies to the next request on every connection.
///
/// Routes and RBAC judge the path in the normal form of
/// [`normalize_path`](crate::inbound::normalize_path), and the service receives that path,
/// so a path spelled with escapes, `//` or `..` cannot match one rule and execute another; a
/// path without a normal form, and a request with more than one `Host` header, are refused
/// (`INTERNAL` / `400`).
///
/// A refused request never reaches the service: gRPC requests (by content type) get a
/// trailers-only response with its `grpc-status`, others the HTTP status, each with the
/// [`XdsRefusal`] in the response's extensions. It fails closed: a request whose connection
/// no xDS filter chain accepted (the layer outside an xDS server's connection loop) is
/// refused. Place it outside the code's [`InboundLayer`](crate::inbound::InboundLayer):
/// both must allow a request.
#[derive(Debug, Clone, Default)]
pub struct XdsInboundLayer {
    _private: (),
}

impl XdsInboundLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> tower::Layer<S> for XdsInboundLayer {
    type Service = XdsInbound<S>;

    fn layer(&self, inner: S) -> Self::Service {
        XdsInbound {
            inner,
            rng: SmallRng::from_os_rng(),
        }
    }
}

/// The service made by [`XdsInboundLayer`].
#[derive(Debug)]
pub struct XdsInbound<S> {
    inner: S,
    /// For routes matched on a runtime fraction.
    rng: SmallRng,
}

impl<S: Clone> Clone for XdsInbound<S> {
    fn clone(&self) -> Self {
        // Each clone (one per connection) draws its own numbers.
        Self {
            inner: self.inner.clone(),
            rng: SmallRng::from_os_rng(),
        }
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for XdsInbound<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Default,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = InboundFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Err(refusal) = self.judge(&mut req) {
            let connection = req.extensions().get::<ConnectionInfo>();
            tracing::debug!(
                refusal = %meshwork_xds::ErrorChain(&refusal),
                chain = connection
                    .and_then(|c| c.chain())
                    .and_then(|c| c.as_any().downcast_ref::<ChainSlot>())
                    .map(|c| c.name()),
                path = req.uri().path(),
                peer = ?connection.and_then(|c| c.peer()).map(|p| p.spiffe_id().to_string()),
                "request refused by the xDS configuration"
            );
            return InboundFuture::denied(refused(is_grpc(req.headers()), refusal));
        }
        InboundFuture::inner(self.inner.call(req))
    }
}

impl<S> XdsInbound<S> {
    /// Normalises `req`'s path and judges it; `Ok` leaves the request as the service is to
    /// see it.
    fn judge<B>(&mut self, req: &mut http::Request<B>) -> Result<(), XdsRefusal> {
        let Some(connection) = req.extensions().get::<ConnectionInfo>() else {
            return Err(XdsRefusal::NoFilterChain);
        };
        let Some(chain) = connection.chain().cloned() else {
            return Err(XdsRefusal::NoFilterChain);
        };
        let Some(chain) = chain.as_any().downcast_ref::<ChainSlot>() else {
            return Err(XdsRefusal::NoFilterChain);
        };
        let http = chain.http();
        if req
            .headers()
            .get_all(http::header::HOST)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(XdsRefusal::MultipleHosts);
        }
        let normal = match normalize_path(req.uri().path()) {
            Ok(Cow::Owned(path)) => Some(path),
            Ok(Cow::Borrowed(_)) => None,
            Err(error) => return Err(XdsRefusal::InvalidPath(error)),
        };
        if let Some(path) = normal {
            set_path(req, &path).map_err(|_| XdsRefusal::InvalidPath(PathError::NotOriginForm))?;
        }
        let connection = req
            .extensions()
            .get::<ConnectionInfo>()
            .ok_or(XdsRefusal::NoFilterChain)?;
        http.decide(req, connection, &mut self.rng)
    }
}

fn refused<RB: Default>(grpc: bool, refusal: XdsRefusal) -> http::Response<RB> {
    let (grpc_status, http_status) = refusal.statuses();
    let message = http::HeaderValue::from_static(refusal.caller_message());
    refusal_response(grpc, grpc_status, Some(message), http_status, refusal)
}
