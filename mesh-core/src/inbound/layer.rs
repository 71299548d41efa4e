//! [`InboundLayer`]: the per-request part of the inbound stack.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use spiffe::SpiffeId;

use super::acceptor::ConnectionInfo;
use super::policy::{
    AuthorizationPolicy, Decision, DenyReason, PathError, RequestAttributes, is_grpc,
};
use crate::identity::PeerIdentity;

/// The per-request inbound layer: gives handlers the caller's [`PeerIdentity`] and enforces
/// an [`AuthorizationPolicy`].
///
/// For each request it:
/// 1. reads the [`ConnectionInfo`] the server put into the request's extensions (a
///    [`PeerIdentity`] already there is used when there is none) and inserts the caller's
///    [`PeerIdentity`] for handlers (`request.extensions().get::<PeerIdentity>()`);
/// 2. with a policy, normalises the request's path
///    ([`normalize_path`](super::normalize_path)) and decides on it
///    ([`AuthorizationPolicy::evaluate`]); an allowed request reaches the service with its
///    path replaced by the normal form (query kept), so the service executes exactly what
///    the policy judged. A denied request never reaches the service: a gRPC request (by its
///    content type) gets a trailers-only response with `grpc-status: 7`
///    (PERMISSION_DENIED), any other request `403 Forbidden`; a request whose path cannot be
///    normalised gets `grpc-status: 13` (INTERNAL) or `400 Bad Request` instead, as Envoy
///    answers a path it rejects. Each has an empty body and an [`AuthorizationDenied`] in
///    the response's extensions. Denials are logged at debug level.
///
/// Without a policy every request passes unchanged (the TLS handshake already verified the
/// caller).
#[derive(Debug, Clone, Default)]
pub struct InboundLayer {
    policy: Option<Arc<AuthorizationPolicy>>,
}

impl InboundLayer {
    /// A layer enforcing `policy` (none: allow every request).
    pub fn new(policy: Option<AuthorizationPolicy>) -> Self {
        Self {
            policy: policy.map(Arc::new),
        }
    }
}

impl<S> tower::Layer<S> for InboundLayer {
    type Service = Inbound<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Inbound {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service made by [`InboundLayer`].
#[derive(Debug, Clone)]
pub struct Inbound<S> {
    inner: S,
    policy: Option<Arc<AuthorizationPolicy>>,
}

/// Put into a denied response's extensions: who was denied what, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not allowed to call {path}", caller(.peer))]
pub struct AuthorizationDenied {
    /// The caller's SPIFFE ID (`None`: plaintext).
    pub peer: Option<SpiffeId>,
    /// The request path.
    pub path: String,
    /// Why (also the error's `source()`, with a [`PathError`] beneath it when the path
    /// could not be normalised).
    #[source]
    pub reason: DenyReason,
}

fn caller(peer: &Option<SpiffeId>) -> String {
    match peer {
        Some(id) => id.to_string(),
        None => "an unauthenticated caller".to_owned(),
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for Inbound<S>
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
        let peer = req
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|c| c.peer().cloned())
            .or_else(|| req.extensions().get::<PeerIdentity>().cloned());
        if let Some(policy) = &self.policy {
            let verdict = match RequestAttributes::of(&req, peer.as_ref()) {
                Err(error) => Err(DenyReason::InvalidPath(error)),
                Ok(attributes) => match policy.decide(&attributes) {
                    Decision::Deny(reason) => Err(reason),
                    Decision::Allow(_) => Ok(attributes.into_changed_path()),
                },
            };
            let verdict = match verdict {
                // The service gets the path the policy judged, or an encoding the service's
                // router reads differently could reach a handler no rule was asked about.
                Ok(Some(path)) => set_path(&mut req, &path),
                Ok(None) => Ok(()),
                Err(reason) => Err(reason),
            };
            if let Err(reason) = verdict {
                let denied = AuthorizationDenied {
                    peer: peer.map(|p| p.spiffe_id().clone()),
                    path: req.uri().path().to_owned(),
                    reason,
                };
                tracing::debug!(%denied, reason = %denied.reason, "request denied by the authorization policy");
                return InboundFuture::denied(denial(is_grpc(req.headers()), denied));
            }
        }
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer);
        }
        InboundFuture::inner(self.inner.call(req))
    }
}

/// Replaces `req`'s path with `path` (normal, so it parses), keeping its query.
pub(crate) fn set_path<B>(req: &mut http::Request<B>, path: &str) -> Result<(), DenyReason> {
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    // Unreachable with a normal path and a query that parsed; refused all the same, since
    // `Uri::from_parts` takes a missing path for an empty one and would serve a path the
    // policy did not judge.
    const REFUSED: DenyReason = DenyReason::InvalidPath(PathError::NotOriginForm);
    let mut parts = req.uri().clone().into_parts();
    let path_and_query = http::uri::PathAndQuery::try_from(path_and_query).map_err(|_| REFUSED)?;
    parts.path_and_query = Some(path_and_query);
    let uri = http::Uri::from_parts(parts).map_err(|_| REFUSED)?;
    *req.uri_mut() = uri;
    Ok(())
}

/// The response to a denied request: 403 or PERMISSION_DENIED when a rule denied it, 400 or
/// INTERNAL when its path could not be normalised (Envoy's answers to both).
fn denial<RB: Default>(grpc: bool, denied: AuthorizationDenied) -> http::Response<RB> {
    let invalid = matches!(denied.reason, DenyReason::InvalidPath(_));
    let (grpc_status, http_status) = if invalid {
        ("13", http::StatusCode::BAD_REQUEST)
    } else {
        ("7", http::StatusCode::FORBIDDEN)
    };
    // grpc-message is percent-encoded; the message below is plain ASCII without '%'.
    let message = http::HeaderValue::from_str(&format!("meshwork: {}", denied.reason)).ok();
    refusal(grpc, grpc_status, message, http_status, denied)
}

/// A response refusing a request before the service: for gRPC (by content type) a
/// trailers-only response with `grpc_status` and `message`, otherwise `http_status`; an
/// empty body, and `why` in the response's extensions.
pub(crate) fn refusal<RB, W>(
    grpc: bool,
    grpc_status: &'static str,
    message: Option<http::HeaderValue>,
    http_status: http::StatusCode,
    why: W,
) -> http::Response<RB>
where
    RB: Default,
    W: Clone + Send + Sync + 'static,
{
    let mut response = http::Response::new(RB::default());
    if grpc {
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", http::HeaderValue::from_static(grpc_status));
        if let Some(message) = message {
            headers.insert("grpc-message", message);
        }
    } else {
        *response.status_mut() = http_status;
    }
    response.extensions_mut().insert(why);
    response
}

pin_project! {
    /// The future of [`Inbound`].
    pub struct InboundFuture<F, RB> {
        #[pin]
        state: State<F, RB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, RB> {
        Inner { #[pin] future: F },
        Denied { response: Option<http::Response<RB>> },
    }
}

impl<F, RB> InboundFuture<F, RB> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn denied(response: http::Response<RB>) -> Self {
        Self {
            state: State::Denied {
                response: Some(response),
            },
        }
    }
}

impl<F, RB> fmt::Debug for InboundFuture<F, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Inner { .. } => "serving",
            State::Denied { .. } => "denied",
        };
        f.debug_tuple("InboundFuture").field(&state).finish()
    }
}

impl<F, RB, E> Future for InboundFuture<F, RB>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => future.poll(cx),
            StateProj::Denied { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `set_path` is only handed normal paths, which always parse; one that did not must
    /// refuse the request, not serve it with an empty path no rule judged.
    #[test]
    fn a_path_that_does_not_parse_is_refused_not_emptied() {
        let mut req = http::Request::get("/x?q=1").body(()).unwrap();
        assert_eq!(
            set_path(&mut req, "/a b"),
            Err(DenyReason::InvalidPath(PathError::NotOriginForm))
        );
        assert_eq!(req.uri(), "/x?q=1");
        assert_eq!(set_path(&mut req, "/a/b"), Ok(()));
        assert_eq!(req.uri(), "/a/b?q=1");
    }
}
