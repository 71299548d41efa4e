//! The errors that cross layers: walking an error's source chain, the gRPC code and HTTP
//! status of every layer's error ([`error_codes`]), and [`StackError`] for a cluster the
//! stack cannot build.
//!
//! It sits above the layers whose errors it names (balance, breaker, route, timeout) and
//! below the telemetry and the stack, which both answer for a failed call with its code.

use std::error::Error as StdError;
use std::sync::Arc;

use crate::balance::{self, EndpointError, NoHealthyEndpoint};
use crate::breaker::Overloaded;
use crate::route::RouteError;
use crate::status::GrpcCode;
use crate::timeout::TimeoutError;

/// `err` and then each of its sources, outermost first.
pub(crate) fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

/// The first `E` in `err`'s source chain.
pub(crate) fn find<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    chain(err).find_map(|e| e.downcast_ref::<E>())
}

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
        source: Arc<balance::BalancerConfigError>,
    },
}

/// The gRPC code and HTTP status for an error from the outbound stack: the first error in
/// the source chain that meshwork knows decides. A route that matches nothing is
/// UNIMPLEMENTED / 404; a deadline is DEADLINE_EXCEEDED / 504; a refusal by the breaker, no
/// healthy endpoint, a failed endpoint (connect failure, reset, TLS rejection) or an
/// unusable cluster is UNAVAILABLE / 503. Anything else is UNKNOWN / 500.
pub fn error_codes(err: &(dyn StdError + 'static)) -> (GrpcCode, http::StatusCode) {
    const UNAVAILABLE: (GrpcCode, http::StatusCode) =
        (GrpcCode::Unavailable, http::StatusCode::SERVICE_UNAVAILABLE);
    chain(err)
        .find_map(|e| {
            if let Some(r) = e.downcast_ref::<RouteError>() {
                return Some((r.grpc_code(), r.http_status()));
            }
            if let Some(t) = e.downcast_ref::<TimeoutError>() {
                return Some((t.grpc_code(), t.http_status()));
            }
            let unavailable = e.is::<Overloaded>()
                || e.is::<NoHealthyEndpoint>()
                || e.is::<EndpointError>()
                || e.is::<StackError>();
            unavailable.then_some(UNAVAILABLE)
        })
        .unwrap_or((GrpcCode::Unknown, http::StatusCode::INTERNAL_SERVER_ERROR))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::timeout::TimeoutKind;

    /// An error of someone else's that wraps one of ours.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] tower::BoxError);

    #[test]
    fn the_first_known_error_in_the_chain_decides() {
        let timeout = TimeoutError::new(TimeoutKind::Route, Duration::from_secs(1));
        let err = Wrapped(Box::new(Wrapped(Box::new(timeout.clone()))));
        assert_eq!(chain(&err).count(), 3);
        assert_eq!(find::<TimeoutError>(&err), Some(&timeout));
        assert_eq!(
            error_codes(&err),
            (
                GrpcCode::DeadlineExceeded,
                http::StatusCode::GATEWAY_TIMEOUT
            )
        );
        let unknown = Wrapped("not ours".into());
        assert_eq!(find::<TimeoutError>(&unknown), None);
        assert_eq!(
            error_codes(&unknown),
            (GrpcCode::Unknown, http::StatusCode::INTERNAL_SERVER_ERROR)
        );
    }
}
