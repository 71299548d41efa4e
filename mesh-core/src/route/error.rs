use crate::config::{ClusterError, UnsupportedAction};
use crate::status::GrpcCode;

/// Why the router could not hand a request to a cluster.
///
/// Adapters answer with [`RouteError::http_status`] or [`RouteError::grpc_code`]: no match
/// is 404 / UNIMPLEMENTED (as gRPC does); everything else is 503 / UNAVAILABLE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No virtual host matches the request's authority.
    #[error("no virtual host matches authority {authority:?}")]
    NoVirtualHost {
        /// The request's authority, if it had one.
        authority: Option<String>,
    },
    /// No route of the virtual host matches the request.
    #[error("no route matches {path} in virtual host {virtual_host}")]
    NoRoute {
        /// The virtual host searched.
        virtual_host: String,
        /// The request path.
        path: String,
    },
    /// The matching route has an action meshwork does not implement.
    #[error("route {route:?} has an unsupported action {action:?}")]
    UnsupportedAction {
        /// The route's name.
        route: String,
        /// The action.
        action: UnsupportedAction,
    },
    /// The matching route is a server-side (non-forwarding) route, which a client cannot use.
    #[error("route {route:?} is a non-forwarding route")]
    NonForwarding {
        /// The route's name.
        route: String,
    },
    /// The route takes the cluster name from a header the request does not carry (or whose
    /// value is not a valid name).
    #[error("the request has no usable cluster header {header}")]
    MissingClusterHeader {
        /// The header name.
        header: String,
    },
    /// The cluster lookup does not know the chosen cluster.
    #[error("cluster {cluster} is not known")]
    ClusterNotFound {
        /// The cluster's name.
        cluster: String,
    },
    /// The configuration says the chosen cluster cannot be used.
    #[error("cluster {cluster} is unavailable: {reason}")]
    ClusterUnavailable {
        /// The cluster's name.
        cluster: String,
        /// Why (from the control plane's view); boxed, so that a route's `Result` stays
        /// small on the hot path.
        #[source]
        reason: Box<ClusterError>,
    },
}

impl RouteError {
    /// Whether this is a "no match" error (404 / UNIMPLEMENTED).
    pub fn is_no_match(&self) -> bool {
        matches!(
            self,
            RouteError::NoVirtualHost { .. } | RouteError::NoRoute { .. }
        )
    }

    /// The HTTP status an HTTP adapter answers with.
    pub fn http_status(&self) -> http::StatusCode {
        if self.is_no_match() {
            http::StatusCode::NOT_FOUND
        } else {
            http::StatusCode::SERVICE_UNAVAILABLE
        }
    }

    /// The gRPC status code a gRPC adapter answers with.
    pub fn grpc_code(&self) -> GrpcCode {
        if self.is_no_match() {
            GrpcCode::Unimplemented
        } else {
            GrpcCode::Unavailable
        }
    }
}
