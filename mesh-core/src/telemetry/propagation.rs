//! W3C Trace Context (`traceparent`, `tracestate`) on HTTP headers.
//!
//! meshwork writes and reads the W3C headers itself rather than through OpenTelemetry's
//! global propagator (a no-op until an application installs one), so a trace crosses
//! meshwork services whatever the application configured.

use std::str::FromStr;

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceState};
use opentelemetry::{Context, SpanId, TraceFlags, TraceId};

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

/// The header names, parsed once (a lookup by a `&str` name parses it every time).
pub(super) static TRACEPARENT_NAME: http::HeaderName = http::HeaderName::from_static(TRACEPARENT);
static TRACESTATE_NAME: http::HeaderName = http::HeaderName::from_static(TRACESTATE);

/// Writes the span context of `cx`'s span into `headers` (replacing any earlier values).
/// Writes nothing when `cx` has no valid span context.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    // Lowercase hex of fixed length is always a valid header value.
    if let Ok(value) = HeaderValue::from_bytes(&traceparent_bytes(sc)) {
        headers.insert(TRACEPARENT_NAME.clone(), value);
    }
    let state = sc.trace_state().header();
    if state.is_empty() {
        headers.remove(&TRACESTATE_NAME);
    } else if let Ok(value) = HeaderValue::from_str(&state) {
        headers.insert(TRACESTATE_NAME.clone(), value);
    }
}

/// The remote span context in `headers`, if they carry a valid `traceparent`. A malformed
/// `tracestate` is dropped, the `traceparent` kept (as the W3C recommendation says).
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    let parent = headers.get(&TRACEPARENT_NAME)?.to_str().ok()?;
    let (trace_id, span_id, flags) = parse_traceparent(parent)?;
    let state = headers
        .get_all(&TRACESTATE_NAME)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let state = TraceState::from_str(&state).unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// The `traceparent` value of `sc`: `00-<trace id>-<span id>-<flags>`.
pub fn traceparent(sc: &SpanContext) -> String {
    String::from_utf8_lossy(&traceparent_bytes(sc)).into_owned()
}

/// The `traceparent` value of `sc`, written on the stack (it goes on every attempt).
fn traceparent_bytes(sc: &SpanContext) -> [u8; 55] {
    fn hex(out: &mut [u8], bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0f)];
        }
    }
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    hex(&mut out[3..35], &sc.trace_id().to_bytes());
    hex(&mut out[36..52], &sc.span_id().to_bytes());
    hex(
        &mut out[53..55],
        &[(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    out
}

/// Parses a `traceparent` value: version 00 exactly, a later version by its version-00
/// prefix (W3C's forward compatibility); version `ff`, all-zero IDs and malformed hex
/// are rejected.
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let value = value.trim();
    let b = value.as_bytes();
    if b.len() < 55 || !b.is_ascii() {
        return None;
    }
    let version = &value[0..2];
    if !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && b.len() != 55 {
        return None;
    }
    if b.len() > 55 && b[55] != b'-' {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !(is_lower_hex(trace) && is_lower_hex(span) && is_lower_hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let (t, s, f) = parse_traceparent(GOOD).unwrap();
        assert!(f.is_sampled());
        let sc = SpanContext::new(t, s, f, true, TraceState::default());
        assert_eq!(traceparent(&sc), GOOD);
    }

    #[test]
    fn rejects_what_w3c_rejects() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version: the version-00 prefix is read, the rest ignored.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn round_trips_through_headers_with_tracestate() {
        let (t, s, f) = parse_traceparent(GOOD).unwrap();
        let state = TraceState::from_str("vendor=a,other=b").unwrap();
        let cx = Context::new().with_remote_span_context(SpanContext::new(t, s, f, true, state));
        let mut headers = HeaderMap::new();
        inject(&cx, &mut headers);
        assert_eq!(headers[TRACEPARENT], GOOD);
        assert_eq!(headers[TRACESTATE], "vendor=a,other=b");
        let back = extract(&headers).unwrap();
        assert_eq!(back.trace_id(), t);
        assert_eq!(back.span_id(), s);
        assert!(back.is_remote());
        assert_eq!(back.trace_state().get("other"), Some("b"));
    }

    #[test]
    fn nothing_is_written_without_a_span_context() {
        let mut headers = HeaderMap::new();
        inject(&Context::new(), &mut headers);
        assert!(headers.is_empty());
        assert!(extract(&headers).is_none());
    }
}
