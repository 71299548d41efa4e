//! [`XdsInboundLayer`]: the per-request part of an xDS-driven server.

use std::sync::Arc;
use std::task::{Context, Poll};

use rand::SeedableRng as _;
use rand::rngs::SmallRng;

use super::decide::XdsRefusal;
use super::slot::ChainSlot;
use crate::inbound::policy::is_grpc;
use crate::inbound::{ConnectionInfo, InboundFuture};

/// Applies the served xDS Listener's HTTP configuration to each request: the filter
/// chain's routes (A36: a request must match a route with `non_forwarding_action`, else it
/// fails with `UNAVAILABLE`) and its RBAC filters (A41: `PERMISSION_DENIED`), with the
/// route's `RBACPerRoute` overrides. The chain's configuration is read per request, so an
/// RDS or RBAC change applies to the next request on every connection.
///
/// A refused request never reaches the service: gRPC requests (by content type) get a
/// trailers-only response with `grpc-status` 14 or 7, others `503` or `403`, each with the
/// [`XdsRefusal`] in the response's extensions. Requests of connections that no xDS chain
/// accepted (a server without xDS) pass unchanged. Place it outside the code's
/// [`InboundLayer`](crate::inbound::InboundLayer): both must allow a request.
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
#[derive(Debug, Clone)]
pub struct XdsInbound<S> {
    inner: S,
    /// For routes matched on a runtime fraction.
    rng: SmallRng,
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ext = req.extensions();
        if let (Some(chain), Some(connection)) =
            (ext.get::<Arc<ChainSlot>>(), ext.get::<ConnectionInfo>())
            && let Err(refusal) = chain.http().decide(&req, connection, &mut self.rng)
        {
            tracing::debug!(
                %refusal,
                chain = chain.name(),
                path = req.uri().path(),
                peer = ?connection.peer().map(|p| p.spiffe_id().to_string()),
                "request refused by the xDS configuration"
            );
            return InboundFuture::denied(refused(is_grpc(req.headers()), refusal));
        }
        InboundFuture::inner(self.inner.call(req))
    }
}

fn refused<RB: Default>(grpc: bool, refusal: XdsRefusal) -> http::Response<RB> {
    let mut response = http::Response::new(RB::default());
    let denial = refusal.is_denial();
    if grpc {
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        let status = if denial { "7" } else { "14" };
        headers.insert("grpc-status", http::HeaderValue::from_static(status));
        // Names from the control plane may hold anything; grpc-message takes printable
        // ASCII without '%' unescaped, so anything else is dropped rather than sent raw.
        let message: String = format!("meshwork: {refusal}")
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '%' || *c == ' ')
            .take(512)
            .collect();
        if let Ok(value) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
    } else if denial {
        *response.status_mut() = http::StatusCode::FORBIDDEN;
    } else {
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    }
    response.extensions_mut().insert(refusal);
    response
}
