//! The client's error: an opaque struct with predicates, an HTTP status, and the full cause
//! as its source chain.

use std::error::Error as StdError;
use std::fmt;

use http::StatusCode;
use meshwork_core::balance::NoHealthyEndpoint;
use meshwork_core::breaker::Overloaded;
use meshwork_core::client::ResolveError;
use meshwork_core::route::RouteError;
use meshwork_core::stack;
use meshwork_core::timeout::TimeoutError;
use tower::BoxError;

use crate::ConnectError;

/// Why a [`MeshClient`](crate::MeshClient) request failed.
///
/// The client returns an error rather than synthesizing a response (as an Envoy sidecar
/// would): a library caller should not mistake a local failure for the server's answer.
/// [`Error::status`] is the status a proxy would have answered with, for callers that want
/// to pass the failure on as HTTP. The cause is the [`source`](StdError::source) chain: walk
/// it, or use [`Error::connect_error`] and the `is_*` predicates.
pub struct Error {
    kind: Kind,
    status: StatusCode,
    source: BoxError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The request cannot be routed as written (no host, not `http`).
    InvalidRequest,
    /// The host could not be resolved to a mesh target.
    Resolve,
    /// The outbound stack failed the request.
    Stack,
}

impl Error {
    pub(crate) fn invalid_request(source: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::InvalidRequest,
            status: StatusCode::BAD_REQUEST,
            source: source.into(),
        }
    }

    pub(crate) fn resolve(source: ResolveError) -> Self {
        Self {
            kind: Kind::Resolve,
            status: StatusCode::SERVICE_UNAVAILABLE,
            source: Box::new(source),
        }
    }

    pub(crate) fn stack(source: BoxError) -> Self {
        let (_, status) = stack::error_codes(source.as_ref());
        Self {
            kind: Kind::Stack,
            status,
            source,
        }
    }

    /// The HTTP status a proxy would answer with: 400 for a request the client cannot route
    /// as written, 404 when no route matches, 504 when a timeout expired, 503 when the host
    /// cannot be resolved, no endpoint is healthy, the circuit breaker refused the request,
    /// or the endpoint failed (connect, TLS, reset); 500 for anything else (see
    /// [`meshwork_core::stack::error_codes`]).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The request has no host, or a scheme other than `http`.
    pub fn is_invalid_request(&self) -> bool {
        self.kind == Kind::InvalidRequest
    }

    /// The host could not be resolved: the control plane has no listener for it, its
    /// config is invalid, or it did not arrive in time ([`Error::resolve_error`] says which).
    /// The client answers the host's requests with the same failure, at once, for
    /// [`MeshClientOptions::negative_ttl`](crate::MeshClientOptions::negative_ttl).
    pub fn is_resolve(&self) -> bool {
        self.kind == Kind::Resolve
    }

    /// No route (or virtual host) of the host's config matches the request (404).
    pub fn is_no_route(&self) -> bool {
        matches!(
            self.find::<RouteError>(),
            Some(RouteError::NoRoute { .. } | RouteError::NoVirtualHost { .. })
        )
    }

    /// A route, stream or per-try timeout expired (504).
    pub fn is_timeout(&self) -> bool {
        self.find::<TimeoutError>().is_some()
    }

    /// The cluster had no healthy, ready endpoint, or its circuit breaker refused the
    /// request (503 without trying an endpoint).
    pub fn is_no_endpoint(&self) -> bool {
        self.find::<NoHealthyEndpoint>().is_some() || self.find::<Overloaded>().is_some()
    }

    /// A connection to an endpoint could not be made ([`Error::connect_error`] says why).
    pub fn is_connect(&self) -> bool {
        self.connect_error().is_some()
    }

    /// The connection failure behind this error, if one caused it (TCP, timeout, a
    /// rejected server SVID, …).
    pub fn connect_error(&self) -> Option<&ConnectError> {
        self.find::<ConnectError>()
    }

    /// The resolution failure behind this error, when [`Error::is_resolve`].
    pub fn resolve_error(&self) -> Option<&ResolveError> {
        self.find::<ResolveError>()
    }

    fn find<E: StdError + 'static>(&self) -> Option<&E> {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(self.source.as_ref());
        while let Some(e) = cur {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            cur = e.source();
        }
        None
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::InvalidRequest => "invalid request",
            Kind::Resolve => "cannot resolve host",
            Kind::Stack => "request failed",
        };
        write!(f, "{what} ({}): {}", self.status.as_u16(), self.source)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}
