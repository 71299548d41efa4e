//! gRPC status codes: the `grpc-status` values, their names, and the mapping from an HTTP
//! status. Shared vocabulary of the layers (each error says which code it is) and of the
//! telemetry (which records the code a call ended with), so it depends on nothing else in
//! the crate.

// The gRPC headers the layers read or write on every call, parsed once: a lookup by a `&str`
// name parses (and case-checks) the name every time.
/// `grpc-status`.
pub(crate) static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-timeout`.
pub(crate) static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
/// `grpc-retry-pushback-ms`.
pub(crate) static GRPC_RETRY_PUSHBACK_MS: http::HeaderName =
    http::HeaderName::from_static("grpc-retry-pushback-ms");
/// `grpc-previous-rpc-attempts`.
pub(crate) static GRPC_PREVIOUS_RPC_ATTEMPTS: http::HeaderName =
    http::HeaderName::from_static("grpc-previous-rpc-attempts");

/// A gRPC status code (the `grpc-status` values of the gRPC spec).
///
/// The layers' errors say which code a gRPC adapter should report for them; the retry layer
/// reads these from `grpc-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 0.
    Ok,
    /// 1.
    Cancelled,
    /// 2.
    Unknown,
    /// 3.
    InvalidArgument,
    /// 4.
    DeadlineExceeded,
    /// 5.
    NotFound,
    /// 6.
    AlreadyExists,
    /// 7.
    PermissionDenied,
    /// 8.
    ResourceExhausted,
    /// 9.
    FailedPrecondition,
    /// 10.
    Aborted,
    /// 11.
    OutOfRange,
    /// 12.
    Unimplemented,
    /// 13.
    Internal,
    /// 14.
    Unavailable,
    /// 15.
    DataLoss,
    /// 16.
    Unauthenticated,
}

impl GrpcCode {
    const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The numeric code.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code for a number; numbers outside 0..=16 are `Unknown`, as gRPC treats them.
    pub fn from_u32(n: u32) -> Self {
        usize::try_from(n)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .unwrap_or(GrpcCode::Unknown)
    }

    /// Parses a `grpc-status` header value; `None` when it is not a decimal number.
    pub fn from_header(value: &[u8]) -> Option<Self> {
        if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        Some(Self::from_u32(u32::try_from(n).unwrap_or(u32::MAX)))
    }

    /// The code gRPC reports for a non-200 HTTP status on a gRPC call (the gRPC spec's
    /// "HTTP to gRPC status code mapping").
    pub fn from_http_status(status: http::StatusCode) -> Self {
        match status.as_u16() {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502..=504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }
}

/// The name gRPC gives a status code in `grpc.status` (`"OK"`, `"UNAVAILABLE"`, …).
pub(crate) fn status_name(code: GrpcCode) -> &'static str {
    match code {
        GrpcCode::Ok => "OK",
        GrpcCode::Cancelled => "CANCELLED",
        GrpcCode::Unknown => "UNKNOWN",
        GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
        GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
        GrpcCode::NotFound => "NOT_FOUND",
        GrpcCode::AlreadyExists => "ALREADY_EXISTS",
        GrpcCode::PermissionDenied => "PERMISSION_DENIED",
        GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
        GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
        GrpcCode::Aborted => "ABORTED",
        GrpcCode::OutOfRange => "OUT_OF_RANGE",
        GrpcCode::Unimplemented => "UNIMPLEMENTED",
        GrpcCode::Internal => "INTERNAL",
        GrpcCode::Unavailable => "UNAVAILABLE",
        GrpcCode::DataLoss => "DATA_LOSS",
        GrpcCode::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_map() {
        assert_eq!(GrpcCode::from_header(b"14"), Some(GrpcCode::Unavailable));
        assert_eq!(GrpcCode::from_header(b"0"), Some(GrpcCode::Ok));
        assert_eq!(GrpcCode::from_header(b"99"), Some(GrpcCode::Unknown));
        assert_eq!(GrpcCode::from_header(b"99999999999"), None);
        assert_eq!(GrpcCode::from_header(b""), None);
        assert_eq!(GrpcCode::from_header(b"-1"), None);
        assert_eq!(GrpcCode::from_header(b"1x"), None);
        assert_eq!(GrpcCode::Unauthenticated.as_u8(), 16);
        assert_eq!(
            GrpcCode::from_http_status(http::StatusCode::SERVICE_UNAVAILABLE),
            GrpcCode::Unavailable
        );
        assert_eq!(
            GrpcCode::from_http_status(http::StatusCode::NOT_FOUND),
            GrpcCode::Unimplemented
        );
        assert_eq!(
            GrpcCode::from_http_status(http::StatusCode::IM_A_TEAPOT),
            GrpcCode::Unknown
        );
    }
}
