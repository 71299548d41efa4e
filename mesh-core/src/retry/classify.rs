//! Which `retry_on` conditions an attempt's outcome meets.

use std::error::Error as StdError;
use std::time::Duration;

use rand::RngCore;
use tower::BoxError;

use crate::config::{RetryOn, RetryPolicy};
use crate::status::{GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS, GrpcCode};
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
        let code = match rsp.headers().get(&GRPC_STATUS) {
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

/// Whether the request of an attempt that failed without a response may have run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// It never reached the server's application: the connection was never made, or the
    /// server refused the stream unprocessed (RFC 9113 §8.7).
    NotProcessed,
    /// It may have been received and acted on: the connection was reset or the attempt
    /// timed out after the request was sent (or while it was being sent).
    MaybeProcessed,
}

/// Every failure Envoy treats as a reset meets `reset`, `5xx` and `gateway-error` (its
/// `wouldRetryFromReset`: an upstream reset results in a 503 or 504).
const ANY_RESET: RetryOn = RetryOn::RESET
    .union(RetryOn::HTTP_5XX)
    .union(RetryOn::GATEWAY_ERROR);

/// The conditions an attempt that produced no response meets, from its error's source
/// chain, as Envoy's router counts them (every such failure is a reset to Envoy, and meets
/// `reset`, `5xx` and `gateway-error`):
///
/// - a stream the server refused ([`RefusedStream`]) also meets `refused-stream`;
/// - a connection that could not be made (refused, unreachable, meshwork's
///   [`ConnectError`](crate::upstream::ConnectError) for TCP, TLS and the connect timeout)
///   also meets `connect-failure`;
/// - a reset, aborted or broken connection, an early end of stream and a per-try timeout
///   meet only those three. A per-try timeout is never a gRPC status: Envoy's gRPC
///   conditions read `grpc-status` from a response, and gRPC has no per-try timeout (gRFC
///   A44 ignores `per_try_timeout`).
///
/// Other errors meet no condition and are not retried. Meeting a condition is not enough
/// for a request that may already have run; see the [module docs](super#what-is-retried).
pub fn error_conditions(err: &(dyn StdError + 'static)) -> RetryOn {
    error_outcome(err, false).map_or(RetryOn::empty(), |(on, _)| on)
}

/// The conditions an error meets and whether its request may have run; `None` for errors
/// that are never retried. For a gRPC call (`grpc`), a failure of the connection or the
/// stream also meets `unavailable`: the status a gRPC client gives a call whose transport
/// failed before any response head (grpc-go's uncommitted stream, which its retry policy
/// then matches by that code). A per-try timeout is not a gRPC status.
pub(crate) fn error_outcome(
    err: &(dyn StdError + 'static),
    grpc: bool,
) -> Option<(RetryOn, Delivery)> {
    let (on, delivery) = transport_outcome(err)?;
    let timed_out = crate::errors::chain(err).any(|e| {
        e.downcast_ref::<TimeoutError>()
            .is_some_and(|t| t.kind() == TimeoutKind::PerTry)
    });
    let unavailable = if grpc && !timed_out {
        RetryOn::UNAVAILABLE
    } else {
        RetryOn::empty()
    };
    Some((on | unavailable, delivery))
}

/// [`error_outcome`] as Envoy's router counts it (no gRPC status).
fn transport_outcome(err: &(dyn StdError + 'static)) -> Option<(RetryOn, Delivery)> {
    use crate::upstream::ConnectError;
    let connect_failure = Some((ANY_RESET | RetryOn::CONNECT_FAILURE, Delivery::NotProcessed));
    for e in crate::errors::chain(err) {
        if e.is::<RefusedStream>() {
            return Some((ANY_RESET | RetryOn::REFUSED_STREAM, Delivery::NotProcessed));
        }
        // Before the io errors: a TLS handshake's reset is a connect failure, not a reset
        // of a request that was sent.
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return match c {
                ConnectError::Tcp { .. }
                | ConnectError::Timeout { .. }
                | ConnectError::PeerRejected { .. }
                | ConnectError::Tls { .. } => connect_failure,
                // The client's own TLS configuration: another attempt fails the same way.
                _ => None,
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused | NotConnected | AddrNotAvailable | HostUnreachable
                | NetworkUnreachable => return connect_failure,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return Some((ANY_RESET, Delivery::MaybeProcessed));
                }
                _ => {}
            }
        }
        if let Some(t) = e.downcast_ref::<TimeoutError>()
            && t.kind() == TimeoutKind::PerTry
        {
            return Some((ANY_RESET, Delivery::MaybeProcessed));
        }
    }
    None
}

/// A request extension that says the request may run more than once: a retry policy may
/// then send it again after a reset or a per-try timeout, which may have left it half done
/// on the server, as it does for idempotent methods (RFC 9110 §9.2.2: `GET`, `HEAD`,
/// `OPTIONS`, `TRACE`, `PUT`, `DELETE`). Mark a `POST` (and gRPC calls, which are all
/// `POST`) with it when the operation is idempotent, e.g. a gRPC method declared
/// `idempotency_level = IDEMPOTENT`, or a request carrying an idempotency key the server
/// honours.
///
/// ```
/// let mut req = http::Request::post("http://svc/pkg.Svc/Set").body(()).unwrap();
/// req.extensions_mut().insert(meshwork_core::retry::Idempotent);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Idempotent;

/// Whether a request may run more than once: its method is idempotent (RFC 9110 §9.2.2) or
/// the caller said so with [`Idempotent`].
pub(crate) fn is_idempotent<B>(req: &http::Request<B>) -> bool {
    use http::Method;
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.extensions().get::<Idempotent>().is_some()
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
    let Some(v) = rsp.headers().get(&GRPC_RETRY_PUSHBACK_MS) else {
        return Pushback::None;
    };
    std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Pushback::Stop, |ms| {
            Pushback::After(Duration::from_millis(ms))
        })
}
