use std::time::Duration;

use crate::status::GrpcCode;

/// Which rule set the deadline that expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// The route `timeout`.
    Route,
    /// The route's `max_stream_duration` (gRFC A31).
    MaxStreamDuration,
    /// The request's `grpc-timeout` header.
    GrpcTimeout,
    /// The layer's default, for a request without a route policy.
    Default,
    /// The retry policy's per-try timeout (one attempt).
    PerTry,
}

/// A call did not get a response before its deadline: DEADLINE_EXCEEDED / 504.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} timeout of {after:?} elapsed")]
pub struct TimeoutError {
    kind: TimeoutKind,
    after: Duration,
}

impl TimeoutError {
    /// A timeout of `kind` after `after`.
    pub fn new(kind: TimeoutKind, after: Duration) -> Self {
        Self { kind, after }
    }

    /// The rule that set the deadline.
    pub fn kind(&self) -> TimeoutKind {
        self.kind
    }

    /// How long the call was allowed.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// The HTTP status an HTTP adapter answers with (504).
    pub fn http_status(&self) -> http::StatusCode {
        http::StatusCode::GATEWAY_TIMEOUT
    }

    /// The gRPC status code a gRPC adapter answers with (DEADLINE_EXCEEDED).
    pub fn grpc_code(&self) -> GrpcCode {
        GrpcCode::DeadlineExceeded
    }
}
