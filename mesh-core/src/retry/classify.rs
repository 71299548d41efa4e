//! Which `retry_on` conditions an attempt's outcome meets.

use std::error::Error as StdError;
use std::time::Duration;

use rand::RngCore;
use tower::BoxError;

use crate::config::{GrpcCode, RetryOn, RetryPolicy};
use crate::timeout::{TimeoutError, TimeoutKind};

/// The conditions a response meets. For a gRPC call the status comes from `grpc-status` in
/// the response head (a trailers-only response); a non-200 HTTP status on a gRPC call is
/// mapped to a gRPC code as gRPC clients do. HTTP conditions apply to every call.
pub fn response_conditions<B>(
    rsp: &http::Response<B>,
    grpc: bool,
    policy: &RetryPolicy,
) -> RetryOn {
    let status = rsp.status();
    let mut on = RetryOn::empty();
    if status.is_server_error() {
        on = on | RetryOn::HTTP_5XX;
    }
    if matches!(status.as_u16(), 502..=504) {
        on = on | RetryOn::GATEWAY_ERROR;
    }
    if policy.retriable_status_codes.contains(&status.as_u16()) {
        on = on | RetryOn::RETRIABLE_STATUS_CODES;
    }
    if grpc {
        let code = match rsp.headers().get("grpc-status") {
            Some(v) => GrpcCode::from_header(v.as_bytes()),
            None if status != http::StatusCode::OK => Some(GrpcCode::from_http_status(status)),
            None => None,
        };
        if let Some(code) = code {
            on = on | grpc_condition(code);
        }
    }
    on
}

/// The `retry_on` condition of a gRPC status code (empty for codes that are never retried).
pub fn grpc_condition(code: GrpcCode) -> RetryOn {
    match code {
        GrpcCode::Cancelled => RetryOn::CANCELLED,
        GrpcCode::DeadlineExceeded => RetryOn::DEADLINE_EXCEEDED,
        GrpcCode::Internal => RetryOn::INTERNAL,
        GrpcCode::ResourceExhausted => RetryOn::RESOURCE_EXHAUSTED,
        GrpcCode::Unavailable => RetryOn::UNAVAILABLE,
        _ => RetryOn::empty(),
    }
}

/// The server refused an attempt's stream without processing it (an HTTP/2 `RST_STREAM`
/// with `REFUSED_STREAM`), so the attempt is safe to retry.
///
/// meshwork-core does not see the transport's error types (h2's error is inside hyper's),
/// so an adapter that detects the reset wraps its error in this (meshwork-grpc's endpoints
/// do); [`error_conditions`] then meets `refused-stream`, and `reset` and `5xx` too, as
/// Envoy counts it.
#[derive(Debug, thiserror::Error)]
#[error("the server refused the stream (HTTP/2 REFUSED_STREAM)")]
pub struct RefusedStream {
    #[source]
    source: BoxError,
}

impl RefusedStream {
    /// Wraps the transport's error.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }

    /// The transport's error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

/// The conditions an attempt that produced no response meets, from its error's source
/// chain: a stream the server refused ([`RefusedStream`]) is `refused-stream` and a reset; a
/// refused connection is a connect failure; a reset, aborted or broken connection or an
/// early end of stream is a reset; a per-try timeout counts as a reset with a 504. All of
/// these are also `5xx`, as in Envoy. Other errors meet no condition and are not retried.
pub fn error_conditions(err: &(dyn StdError + 'static)) -> RetryOn {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<RefusedStream>() {
            return RetryOn::REFUSED_STREAM | RetryOn::RESET | RetryOn::HTTP_5XX;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused | NotConnected | AddrNotAvailable | HostUnreachable
                | NetworkUnreachable => {
                    return RetryOn::CONNECT_FAILURE | RetryOn::HTTP_5XX;
                }
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return RetryOn::RESET | RetryOn::HTTP_5XX;
                }
                _ => {}
            }
        }
        if let Some(t) = e.downcast_ref::<TimeoutError>()
            && t.kind() == TimeoutKind::PerTry
        {
            return RetryOn::RESET | RetryOn::HTTP_5XX | RetryOn::GATEWAY_ERROR;
        }
        cur = e.source();
    }
    RetryOn::empty()
}

/// Whether `met` (an outcome's conditions) is something `policy` retries.
pub fn is_retriable(met: RetryOn, policy: &RetryPolicy) -> bool {
    RetryOn::TOKENS_ALL
        .iter()
        .any(|&c| met.contains(c) && policy.retry_on.contains(c))
}

/// The backoff before retry number `retry` (1 for the first retry): a uniformly random
/// duration up to `min(base_interval × 2^(retry-1), max_interval)` ("full jitter", as
/// Envoy and gRPC do).
pub fn backoff(policy: &RetryPolicy, retry: u32, rng: &mut impl RngCore) -> Duration {
    let exp = policy.base_interval.saturating_mul(
        1u32.checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX),
    );
    let cap = exp.min(policy.max_interval);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.next_u64() % (nanos + 1))
}

/// Extra bits for [`RetryOn`] iteration (its token table is private).
trait AllTokens {
    const TOKENS_ALL: [RetryOn; 11];
}

impl AllTokens for RetryOn {
    const TOKENS_ALL: [RetryOn; 11] = [
        RetryOn::CANCELLED,
        RetryOn::DEADLINE_EXCEEDED,
        RetryOn::INTERNAL,
        RetryOn::RESOURCE_EXHAUSTED,
        RetryOn::UNAVAILABLE,
        RetryOn::HTTP_5XX,
        RetryOn::GATEWAY_ERROR,
        RetryOn::RESET,
        RetryOn::CONNECT_FAILURE,
        RetryOn::RETRIABLE_STATUS_CODES,
        RetryOn::REFUSED_STREAM,
    ];
}

/// What a server's `grpc-retry-pushback-ms` (gRFC A6) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pushback {
    /// No pushback: back off as the policy says.
    None,
    /// Retry after this long, instead of the policy's backoff.
    After(Duration),
    /// Do not retry (the value was negative or malformed).
    Stop,
}

/// The pushback of a response.
pub fn pushback<B>(rsp: &http::Response<B>) -> Pushback {
    let Some(v) = rsp.headers().get("grpc-retry-pushback-ms") else {
        return Pushback::None;
    };
    std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Pushback::Stop, |ms| {
            Pushback::After(Duration::from_millis(ms))
        })
}
