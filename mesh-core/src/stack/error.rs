//! The stack's own error, and the mapping of every layer's error to gRPC and HTTP codes.

use std::error::Error as StdError;
use std::sync::Arc;

use crate::balance::{self, EndpointError, NoHealthyEndpoint};
use crate::breaker::Overloaded;
use crate::route::RouteError;
use crate::status::GrpcCode;
use crate::timeout::TimeoutError;

/// A cluster the stack cannot build a service for; calls routed to it fail with this.
/// Adapters map it to `UNAVAILABLE` / 503.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// The cluster's kind is not supported yet.
    #[error("cluster {cluster}: {kind} clusters are not supported")]
    UnsupportedCluster {
        /// The cluster's name.
        cluster: String,
        /// Its kind (`aggregate`, `logical_dns`).
        kind: &'static str,
    },
    /// The cluster's load-balancing policy cannot be used.
    #[error("cluster {cluster}: {source}")]
    Balancer {
        /// The cluster's name.
        cluster: String,
        /// The balancer's error (it names the field).
        #[source]
        source: Arc<balance::ConfigError>,
    },
}

/// The gRPC code and HTTP status for an error from the outbound stack: the first error in
/// the source chain that meshwork knows decides. A route that matches nothing is
/// UNIMPLEMENTED / 404; a deadline is DEADLINE_EXCEEDED / 504; a refusal by the breaker, no
/// healthy endpoint, a failed endpoint (connect failure, reset, TLS rejection), an unusable
/// cluster or a closed buffer is UNAVAILABLE / 503. Anything else is UNKNOWN / 500.
pub fn error_codes(err: &(dyn StdError + 'static)) -> (GrpcCode, http::StatusCode) {
    const UNAVAILABLE: (GrpcCode, http::StatusCode) =
        (GrpcCode::Unavailable, http::StatusCode::SERVICE_UNAVAILABLE);
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<RouteError>() {
            return (r.grpc_code(), r.http_status());
        }
        if let Some(t) = e.downcast_ref::<TimeoutError>() {
            return (t.grpc_code(), t.http_status());
        }
        if e.is::<Overloaded>()
            || e.is::<NoHealthyEndpoint>()
            || e.is::<EndpointError>()
            || e.is::<StackError>()
            || e.is::<tower::buffer::error::Closed>()
            || e.is::<tower::buffer::error::ServiceError>()
        {
            return UNAVAILABLE;
        }
        cur = e.source();
    }
    (GrpcCode::Unknown, http::StatusCode::INTERNAL_SERVER_ERROR)
}
