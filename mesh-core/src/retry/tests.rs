use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};
use tower_test::mock;

use super::*;
use crate::balance::{AvoidEndpoints, EndpointError, ServedBy};
use crate::config::{ClusterSpecifier, ForwardAction, GrpcCode, RetryOn};

type Req = http::Request<RetryBody<Full<Bytes>>>;
type Rsp = http::Response<()>;

pub(super) fn policy(retry_on: RetryOn, num_retries: u32) -> RetryPolicy {
    RetryPolicy {
        retry_on,
        num_retries,
        base_interval: Duration::from_millis(25),
        max_interval: Duration::from_millis(250),
        per_try_timeout: None,
        retriable_status_codes: Vec::new(),
        avoid_previous_hosts: true,
        host_selection_max_attempts: 1,
    }
}

pub(super) fn grpc_req(p: Option<RetryPolicy>, body: &'static str) -> http::Request<Full<Bytes>> {
    let mut r = http::Request::post("http://svc/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let rp = RoutePolicy::from_action(ForwardAction {
        clusters: ClusterSpecifier::Cluster("c".into()),
        timeout: None,
        max_stream_duration: None,
        retry_policy: p,
        hash_policies: Vec::new(),
    })
    .unwrap();
    r.extensions_mut().insert(rp);
    r
}

fn grpc_status(code: u8) -> Rsp {
    http::Response::builder()
        .header("grpc-status", code.to_string())
        .body(())
        .unwrap()
}

fn status(code: u16) -> Rsp {
    http::Response::builder().status(code).body(()).unwrap()
}

/// `req`, marked safe to run twice.
fn idempotent<B>(mut req: http::Request<B>) -> http::Request<B> {
    req.extensions_mut().insert(Idempotent);
    req
}

fn layer() -> RetryLayer {
    RetryLayer::new().seed(1)
}

async fn body_of(req: Req) -> Bytes {
    req.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(start_paused = true)]
async fn unavailable_is_retried_with_replayed_body_and_attempt_headers() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 2)), "hello")),
    );
    let mut seen = Vec::new();
    let addr = |i: usize| -> std::net::SocketAddr { format!("10.0.0.{i}:80").parse().unwrap() };
    for (i, mut rsp) in [grpc_status(14), grpc_status(14), grpc_status(0)]
        .into_iter()
        .enumerate()
    {
        let (req, send) = handle.next_request().await.unwrap();
        let attempts = req.headers().get("grpc-previous-rpc-attempts").cloned();
        // Each retry avoids the endpoints of the earlier attempts.
        let avoid = req
            .extensions()
            .get::<AvoidEndpoints>()
            .cloned()
            .unwrap_or_default();
        assert_eq!(avoid.addresses(), (0..i).map(addr).collect::<Vec<_>>());
        // The route's policy is the retry layer's: the attempts do not carry it.
        assert!(req.extensions().get::<RoutePolicy>().is_none());
        assert!(req.body().is_replay());
        seen.push((attempts, body_of(req).await));
        // The balancer says which endpoint served the attempt.
        rsp.extensions_mut().insert(ServedBy::new(addr(i)));
        send.send_response(rsp);
    }
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "0");
    assert_eq!(
        seen,
        vec![
            (None, Bytes::from("hello")),
            (Some("1".parse().unwrap()), Bytes::from("hello")),
            (Some("2".parse().unwrap()), Bytes::from("hello")),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_endpoint_is_avoided_on_the_retry() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(idempotent(grpc_req(Some(policy(RetryOn::RESET, 1)), "x"))),
    );
    let (req, send) = handle.next_request().await.unwrap();
    assert!(req.extensions().get::<AvoidEndpoints>().is_none());
    let address: std::net::SocketAddr = "10.1.2.3:8080".parse().unwrap();
    send.send_error(EndpointError {
        address,
        source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
    });
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(
        req.extensions().get::<AvoidEndpoints>(),
        Some(&AvoidEndpoints::from_iter([address]))
    );
    send.send_response(grpc_status(0));
    assert!(call.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn statuses_outside_retry_on_are_returned_at_once() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let cases = [
        (grpc_status(3), "3"),   // INVALID_ARGUMENT: never retriable
        (grpc_status(13), "13"), // INTERNAL: not in retry_on
    ];
    for (rsp, want) in cases {
        let call = tokio::spawn(
            svc.ready()
                .await
                .unwrap()
                .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 3)), "x")),
        );
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(rsp);
        assert_eq!(call.await.unwrap().unwrap().headers()["grpc-status"], want);
    }
    // A committed gRPC response (head without grpc-status) is not retried, whatever comes
    // in its trailers.
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 3)), "x")),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(status(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    // Nothing else was sent.
    assert!(
        tokio::time::timeout(Duration::from_secs(60), handle.next_request())
            .await
            .is_err()
    );
}

#[test]
fn http_conditions() {
    let mut p = policy(RetryOn::empty(), 1);
    p.retriable_status_codes = vec![409];
    let c = |rsp: &Rsp, grpc| response_conditions(rsp, grpc, &p);
    assert!(c(&status(500), false).contains(RetryOn::HTTP_5XX));
    assert!(!c(&status(500), false).contains(RetryOn::GATEWAY_ERROR));
    assert!(c(&status(503), false).contains(RetryOn::HTTP_5XX | RetryOn::GATEWAY_ERROR));
    assert!(c(&status(409), false).contains(RetryOn::RETRIABLE_STATUS_CODES));
    assert!(c(&status(404), false).is_empty());
    // A 503 on a gRPC call is UNAVAILABLE (the gRPC HTTP mapping).
    assert!(c(&status(503), true).contains(RetryOn::UNAVAILABLE));
    assert!(!c(&status(503), false).contains(RetryOn::UNAVAILABLE));
    for (code, cond) in [
        (1, RetryOn::CANCELLED),
        (4, RetryOn::DEADLINE_EXCEEDED),
        (8, RetryOn::RESOURCE_EXHAUSTED),
        (13, RetryOn::INTERNAL),
        (14, RetryOn::UNAVAILABLE),
    ] {
        assert_eq!(c(&grpc_status(code), true), cond);
    }
    assert!(c(&grpc_status(0), true).is_empty());
    assert_eq!(grpc_condition(GrpcCode::NotFound), RetryOn::empty());
    assert!(is_retriable(
        RetryOn::HTTP_5XX | RetryOn::RESET,
        &policy(RetryOn::RESET, 1)
    ));
    assert!(!is_retriable(RetryOn::HTTP_5XX, &policy(RetryOn::RESET, 1)));
}

#[test]
fn error_conditions_follow_the_source_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] std::io::Error);
    // Envoy counts every reset, connect failures included, as `reset`, `5xx` and
    // `gateway-error`.
    let any_reset = RetryOn::RESET | RetryOn::HTTP_5XX | RetryOn::GATEWAY_ERROR;
    let refused = Wrapped(std::io::ErrorKind::ConnectionRefused.into());
    assert_eq!(
        error_conditions(&refused),
        any_reset | RetryOn::CONNECT_FAILURE
    );
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert_eq!(error_conditions(&reset), any_reset);
    let other = std::io::Error::other("???");
    assert!(error_conditions(&other).is_empty());
    // A per-try timeout is a reset, never a gRPC status.
    let per_try = TimeoutError::new(TimeoutKind::PerTry, Duration::from_secs(1));
    assert_eq!(error_conditions(&per_try), any_reset);
    let route = TimeoutError::new(TimeoutKind::Route, Duration::from_secs(1));
    assert!(error_conditions(&route).is_empty());
    // A TLS handshake reset is a connect failure (nothing was sent), found before the io
    // error inside it.
    let address = "10.0.0.1:443".parse().unwrap();
    let tls = ConnectError::Tls {
        address,
        source: std::io::ErrorKind::ConnectionReset.into(),
    };
    assert_eq!(error_conditions(&tls), any_reset | RetryOn::CONNECT_FAILURE);
    let timeout = ConnectError::Timeout {
        address,
        timeout: Duration::from_secs(1),
    };
    assert!(error_conditions(&timeout).contains(RetryOn::CONNECT_FAILURE));
    let config = ConnectError::NoIdentity {
        cluster: "c".into(),
    };
    assert!(error_conditions(&config).is_empty());
}

use crate::upstream::ConnectError;

/// A `POST` that failed after it was sent is not sent again; one that never reached the
/// server (connect failure, refused stream) is, and so is a `GET` or a `POST` marked
/// [`Idempotent`].
#[tokio::test(start_paused = true)]
async fn only_requests_that_may_run_twice_are_sent_again_after_a_reset() {
    type Fail = fn() -> BoxError;
    let cases: [(Fail, &str, bool, usize); 6] = [
        (
            || std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
            "POST",
            false,
            1,
        ),
        (
            || std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into(),
            "POST",
            false,
            1,
        ),
        (
            || std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
            "GET",
            false,
            2,
        ),
        (
            || std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
            "POST",
            true,
            2,
        ),
        (
            || std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
            "POST",
            false,
            2,
        ),
        (|| RefusedStream::new("refused").into(), "POST", false, 2),
    ];
    for (fail, method, marked, want) in cases {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let mut svc = layer().layer(service_fn(move |_req: Req| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(fail())
                } else {
                    Ok::<_, BoxError>(grpc_status(0))
                }
            }
        }));
        let mut req = grpc_req(Some(policy(RetryOn::RESET, 1)), "x");
        *req.method_mut() = method.parse().unwrap();
        if marked {
            req = idempotent(req);
        }
        let _ = svc.ready().await.unwrap().call(req).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            want,
            "{method} marked={marked}"
        );
    }
}

/// Under a policy naming gRPC conditions only (istiod's default: `connect-failure,
/// refused-stream,unavailable,cancelled,retriable-status-codes`), a gRPC call whose
/// connection broke after it was sent meets `unavailable`, as in gRPC, and is sent again
/// when marked idempotent; an unmarked one is not, nor is an HTTP request (whose
/// `unavailable` reads a gRPC status only), nor a per-try timeout.
#[tokio::test(start_paused = true)]
async fn a_broken_connection_is_unavailable_to_an_idempotent_grpc_call() {
    type Fail = fn() -> BoxError;
    let reset: Fail = || std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
    let eof: Fail = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into();
    let timeout: Fail = || TimeoutError::new(TimeoutKind::PerTry, Duration::from_secs(1)).into();
    let cases: [(Fail, bool, bool, usize); 6] = [
        (reset, true, true, 2),
        (eof, true, true, 2),
        (reset, true, false, 1),
        (reset, false, true, 1),
        (timeout, true, true, 1),
        (timeout, false, true, 1),
    ];
    for (i, (fail, grpc, marked, want)) in cases.into_iter().enumerate() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let mut svc = layer().layer(service_fn(move |_req: Req| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(fail())
                } else {
                    Ok::<_, BoxError>(grpc_status(0))
                }
            }
        }));
        let on = RetryOn::CONNECT_FAILURE | RetryOn::REFUSED_STREAM | RetryOn::UNAVAILABLE;
        let mut req = grpc_req(Some(policy(on, 2)), "x");
        if !grpc {
            req.headers_mut().remove(http::header::CONTENT_TYPE);
        }
        if marked {
            req = idempotent(req);
        }
        let _ = svc.ready().await.unwrap().call(req).await;
        assert_eq!(calls.load(Ordering::SeqCst), want, "case {i}");
    }
}

use crate::timeout::{TimeoutError, TimeoutKind};

#[test]
fn a_refused_stream_anywhere_in_the_chain_meets_refused_stream() {
    let refused = EndpointError {
        address: "10.0.0.1:80".parse().unwrap(),
        source: Box::new(RefusedStream::new("stream error received: refused stream")),
    };
    assert_eq!(
        error_conditions(&refused),
        RetryOn::REFUSED_STREAM | RetryOn::RESET | RetryOn::HTTP_5XX | RetryOn::GATEWAY_ERROR
    );
    assert!(is_retriable(
        error_conditions(&refused),
        &policy(RetryOn::REFUSED_STREAM, 1)
    ));
    assert_eq!(
        RefusedStream::new("h2").into_source().to_string(),
        "h2",
        "the transport's error is kept"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_streams_are_retried_under_refused_stream() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::REFUSED_STREAM, 1)), "x")),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(RefusedStream::new("stream error received: refused stream"));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(grpc_status(0));
    assert!(call.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn connect_failures_are_retried_and_other_errors_are_not() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::CONNECT_FAILURE, 1)), "x")),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(grpc_status(0));
    assert!(call.await.unwrap().is_ok());

    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::CONNECT_FAILURE, 1)), "x")),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::other("bad request"));
    assert_eq!(call.await.unwrap().unwrap_err().to_string(), "bad request");
}

#[tokio::test(start_paused = true)]
async fn attempts_are_capped_by_the_layer() {
    for (layer, want) in [
        (layer(), DEFAULT_MAX_ATTEMPTS as usize),
        (layer().max_attempts(2).unwrap(), 2),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let mut svc = layer.layer(service_fn(move |_req: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(grpc_status(14)) }
        }));
        let rsp = svc
            .ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 10)), "x"))
            .await
            .unwrap();
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(calls.load(Ordering::SeqCst), want);
    }
    assert_eq!(
        RetryLayer::new().max_attempts(0).unwrap_err(),
        RetryConfigError::ZeroAttempts
    );
}

#[tokio::test(start_paused = true)]
async fn no_policy_or_zero_retries_means_one_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = layer().layer(service_fn(move |req: Req| {
        c.fetch_add(1, Ordering::SeqCst);
        assert!(!req.body().is_replay());
        async { Ok::<_, Infallible>(grpc_status(14)) }
    }));
    for p in [
        None,
        Some(policy(RetryOn::UNAVAILABLE, 0)),
        Some(policy(RetryOn::empty(), 3)),
    ] {
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(p, "x"))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn the_layer_default_policy_applies_without_a_route() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = layer()
        .default_policy(policy(RetryOn::HTTP_5XX, 1))
        .unwrap()
        .layer(service_fn(move |_req: Req| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(status(if n == 0 { 500 } else { 200 })) }
        }));
    let req = http::Request::new(Full::new(Bytes::from_static(b"x")));
    let rsp = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let mut bad = policy(RetryOn::HTTP_5XX, 1);
    bad.base_interval = Duration::ZERO;
    let err = RetryLayer::new().default_policy(bad).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("retry_policy.retry_back_off.base_interval"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_bounds_each_attempt() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let mut p = policy(RetryOn::HTTP_5XX, 1);
    p.per_try_timeout = Some(Duration::from_millis(100));
    let start = Instant::now();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(idempotent(grpc_req(Some(p.clone()), "x"))),
    );
    let (_, _hang) = handle.next_request().await.unwrap();
    let (_, send) = handle.next_request().await.unwrap();
    let elapsed = start.elapsed();
    // 100 ms per try, then at most 25 ms of backoff.
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed <= Duration::from_millis(125),
        "{elapsed:?}"
    );
    send.send_response(grpc_status(0));
    assert!(call.await.unwrap().is_ok());

    // When the last attempt times out, the caller sees the per-try timeout.
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(idempotent(grpc_req(Some(p), "x"))),
    );
    let _a = handle.next_request().await.unwrap();
    let _b = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(
        err.downcast_ref::<TimeoutError>().unwrap().kind(),
        TimeoutKind::PerTry
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_made_once_keeps_its_per_try_timeout_from_when_it_was_made() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    // No retries: one attempt, made in `call`; its timer is made at the first poll.
    let mut p = policy(RetryOn::HTTP_5XX, 0);
    p.per_try_timeout = Some(Duration::from_millis(100));
    let start = Instant::now();
    let call = svc
        .ready()
        .await
        .unwrap()
        .call(idempotent(grpc_req(Some(p), "x")));
    tokio::time::sleep(Duration::from_millis(40)).await;
    let (_, _hang) = handle.next_request().await.unwrap();
    let err = call.await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    let timeout = err
        .downcast_ref::<TimeoutError>()
        .expect("a per-try timeout");
    assert_eq!(timeout.kind(), TimeoutKind::PerTry);
}

#[test]
fn backoff_is_jittered_exponential_and_capped() {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    let p = policy(RetryOn::UNAVAILABLE, 5);
    let mut rng = SmallRng::seed_from_u64(3);
    for retry in 1..=8u32 {
        let cap = (p.base_interval * 2u32.pow(retry - 1)).min(p.max_interval);
        let samples: Vec<_> = (0..200).map(|_| backoff(&p, retry, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= cap), "retry {retry}");
        // Jittered: spread over the range, not a constant.
        let max = samples.iter().max().unwrap();
        let min = samples.iter().min().unwrap();
        assert!(
            *max > cap * 3 / 4 && *min < cap / 4,
            "retry {retry}: {min:?}..{max:?}"
        );
    }
    // Huge retry numbers do not overflow.
    assert!(backoff(&p, u32::MAX, &mut rng) <= p.max_interval);
}

#[tokio::test(start_paused = true)]
async fn pushback_sets_the_delay_or_stops_retries() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let pushed = |v: &str| {
        http::Response::builder()
            .header("grpc-status", "14")
            .header("grpc-retry-pushback-ms", v)
            .body(())
            .unwrap()
    };
    let start = Instant::now();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 2)), "x")),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(pushed("200"));
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    send.send_response(pushed("-1"));
    assert_eq!(call.await.unwrap().unwrap().headers()["grpc-status"], "14");
}

/// A call's jitter is seeded at its first backoff: a call that never backs off takes no
/// seed, so with `seed(1)` the first call that backs off waits what the generator seeded
/// with 1 draws first (seeding every call would have given it seed 2).
#[tokio::test(start_paused = true)]
async fn the_jitter_seed_is_taken_at_the_first_backoff() {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    let p = policy(RetryOn::UNAVAILABLE, 2);
    let drawn = |seed| backoff(&p, 1, &mut SmallRng::seed_from_u64(seed));
    // Tokio's timer wakes on whole milliseconds.
    let waited = |d: Duration| Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64);
    assert_ne!(
        waited(drawn(1)),
        waited(drawn(2)),
        "the two seeds tell apart"
    );
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(p.clone()), "x")),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(grpc_status(0));
    call.await.unwrap().unwrap();

    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(p.clone()), "x")),
    );
    let (_, send) = handle.next_request().await.unwrap();
    let start = Instant::now();
    send.send_response(grpc_status(14));
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(start.elapsed(), waited(drawn(1)));
    send.send_response(grpc_status(0));
    call.await.unwrap().unwrap();
}

/// A pushback outside the policy's intervals (25 ms to 250 ms here) is brought within
/// them: the largest value cannot hold the call for years, 0 cannot make it spin.
#[tokio::test(start_paused = true)]
async fn pushback_is_bounded_by_the_policy_intervals() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let pushed = |v: &str| {
        http::Response::builder()
            .header("grpc-status", "14")
            .header("grpc-retry-pushback-ms", v)
            .body(())
            .unwrap()
    };
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 2)), "x")),
    );
    let (_, send) = handle.next_request().await.unwrap();
    let start = Instant::now();
    send.send_response(pushed(&u64::MAX.to_string()));
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    let start = Instant::now();
    send.send_response(pushed("0"));
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(25));
    send.send_response(http::Response::new(()));
    assert!(call.await.unwrap().is_ok());
}

#[test]
fn budget_bounds_and_arithmetic() {
    assert!(matches!(
        RetryBudget::new(0, 1.0),
        Err(RetryConfigError::BudgetMaxTokens(0))
    ));
    assert!(matches!(
        RetryBudget::new(1001, 1.0),
        Err(RetryConfigError::BudgetMaxTokens(1001))
    ));
    assert!(matches!(
        RetryBudget::new(10, 0.0),
        Err(RetryConfigError::BudgetTokenRatio(r)) if r == 0.0
    ));
    assert!(matches!(
        RetryBudget::new(10, f64::NAN),
        Err(RetryConfigError::BudgetTokenRatio(r)) if r.is_nan()
    ));
    let b = RetryBudget::new(10, 0.5).unwrap();
    assert!(b.can_retry());
    for _ in 0..5 {
        b.withdraw();
    }
    // 5 of 10 left: not more than half.
    assert!(!b.can_retry());
    b.deposit();
    assert_eq!(b.milli_tokens(), 5500);
    assert!(b.can_retry());
    for _ in 0..100 {
        b.deposit();
    }
    assert_eq!(b.milli_tokens(), 10_000);
    for _ in 0..100 {
        b.withdraw();
    }
    assert_eq!(b.milli_tokens(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_stops_retries() {
    let budget = Arc::new(RetryBudget::new(4, 1.0).unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = layer()
        .budget(budget.clone())
        .layer(service_fn(move |_req: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(grpc_status(14)) }
        }));
    let mut per_call = Vec::new();
    for _ in 0..3 {
        let before = calls.load(Ordering::SeqCst);
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 4)), "x"))
            .await
            .unwrap();
        per_call.push(calls.load(Ordering::SeqCst) - before);
    }
    // 4 tokens: two failures leave 2 (= half), so the first call makes 2 attempts and the
    // later ones 1 each: a dead backend sees no retry storm.
    assert_eq!(per_call, vec![2, 1, 1]);
    assert!(!svc.budget().can_retry());
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_limit_are_sent_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = layer()
        .max_replay_bytes(4)
        .layer(service_fn(move |req: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(!req.body().is_replay());
                let body = body_of(req).await;
                assert_eq!(body, Bytes::from("0123456789"));
                Ok::<_, Infallible>(grpc_status(14))
            }
        }));
    let rsp = svc
        .ready()
        .await
        .unwrap()
        .call(grpc_req(
            Some(policy(RetryOn::UNAVAILABLE, 3)),
            "0123456789",
        ))
        .await
        .unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "14");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_sent_once_in_full() {
    type SReq = http::Request<RetryBody<StreamBody<futures_channel_like::Rx>>>;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = layer().layer(service_fn(move |req: SReq| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, Bytes::from("ab"));
            Ok::<_, Infallible>(grpc_status(14))
        }
    }));
    let (tx, rx) = futures_channel_like::channel();
    let (parts, _) = grpc_req(Some(policy(RetryOn::UNAVAILABLE, 3)), "").into_parts();
    let req = http::Request::from_parts(parts, StreamBody::new(rx));
    tx.send(Bytes::from("a"));
    let call = tokio::spawn(svc.ready().await.unwrap().call(req));
    tokio::task::yield_now().await;
    tx.send(Bytes::from("b"));
    drop(tx);
    assert_eq!(call.await.unwrap().unwrap().headers()["grpc-status"], "14");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A tiny unbounded channel of body frames (a stream that can be pending).
mod futures_channel_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Frame;
    use tokio::sync::mpsc;

    pub(super) struct Tx(mpsc::UnboundedSender<Bytes>);
    pub(super) struct Rx(mpsc::UnboundedReceiver<Bytes>);

    pub(super) fn channel() -> (Tx, Rx) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Tx(tx), Rx(rx))
    }

    impl Tx {
        pub(super) fn send(&self, b: Bytes) {
            self.0.send(b).unwrap();
        }
    }

    impl futures_util::Stream for Rx {
        type Item = Result<Frame<Bytes>, std::convert::Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_flaky_backend_is_hidden_by_retries() {
    // Fails one call in three with UNAVAILABLE; the caller never sees it.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = layer().layer(service_fn(move |_req: Req| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(grpc_status(if n % 3 == 2 { 14 } else { 0 })) }
    }));
    for _ in 0..300 {
        let rsp = svc
            .ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 2)), "x"))
            .await
            .unwrap();
        assert_eq!(rsp.headers()["grpc-status"], "0");
    }
    assert!(svc.budget().can_retry());
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_the_inner_service_to_be_ready() {
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    handle.allow(1);
    let mut svc = layer().layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 1)), "x")),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(grpc_status(14));
    // Backoff is at most 25 ms; with no capacity the retry is not sent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!call.is_finished());
    handle.allow(1);
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.headers()["grpc-previous-rpc-attempts"], "1");
    send.send_response(grpc_status(0));
    assert_eq!(call.await.unwrap().unwrap().headers()["grpc-status"], "0");
}

#[tokio::test(start_paused = true)]
async fn a_request_body_error_fails_the_call_without_sending() {
    type EReq = http::Request<RetryBody<http_body_util::StreamBody<ErrStream>>>;
    struct ErrStream;
    impl futures_util::Stream for ErrStream {
        type Item = Result<http_body::Frame<Bytes>, std::io::Error>;
        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(Some(Err(std::io::Error::other("body broke"))))
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = layer().layer(service_fn(move |_req: EReq| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(grpc_status(0)) }
    }));
    let (parts, _) = grpc_req(Some(policy(RetryOn::UNAVAILABLE, 1)), "").into_parts();
    let req = http::Request::from_parts(parts, http_body_util::StreamBody::new(ErrStream));
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err.to_string(), "body broke");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A request body of known length whose first chunk is ready and whose rest is not yet (a
/// body still arriving from the caller's client): it wakes itself once and then continues.
struct StallsAfterFirstChunk {
    chunks: std::collections::VecDeque<Bytes>,
    stalled: bool,
}

impl http_body::Body for StallsAfterFirstChunk {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.chunks.len() == 1 && !self.stalled {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(
            self.chunks
                .pop_front()
                .map(|c| Ok(http_body::Frame::data(c))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
    }
}

/// The retry layer reads the first chunk, finds the body stalled and sends it once: the
/// attempt's body is that chunk then the rest. hyper asks its size hint (to choose
/// `content-length`); it must be the whole body's, not a panic in `SizeHint::set_lower`.
#[tokio::test(start_paused = true)]
async fn a_partly_buffered_stalled_body_reports_its_whole_length() {
    type SReq = http::Request<RetryBody<StallsAfterFirstChunk>>;
    let mut svc = layer().layer(service_fn(|req: SReq| async move {
        assert!(!req.body().is_replay());
        assert_eq!(req.body().size_hint().exact(), Some(7));
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "abcdefg");
        Ok::<_, Infallible>(grpc_status(0))
    }));
    let (parts, _) = grpc_req(Some(policy(RetryOn::UNAVAILABLE, 1)), "").into_parts();
    let body = StallsAfterFirstChunk {
        chunks: [Bytes::from("abcd"), Bytes::from("efg")].into(),
        stalled: false,
    };
    let rsp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::from_parts(parts, body))
        .await
        .unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "0");
}

/// A replayed body says about its length what the caller's body said: hyper turns an exact
/// size hint into `content-length`, which a streamed gRPC body (tonic's) never had.
#[tokio::test(start_paused = true)]
async fn a_replayed_body_is_exact_about_its_length_only_when_the_callers_body_was() {
    fn hints<B: http_body::Body + Unpin>(
        req: http::Request<RetryBody<B>>,
    ) -> (bool, u64, Option<u64>) {
        let hint = req.body().size_hint();
        (req.body().is_replay(), hint.lower(), hint.exact())
    }
    // `Full` knows its length.
    let (svc, mut handle) = mock::pair::<Req, Rsp>();
    let mut svc = layer().layer(svc);
    let call = svc
        .ready()
        .await
        .unwrap()
        .call(grpc_req(Some(policy(RetryOn::UNAVAILABLE, 1)), "hello"));
    let call = tokio::spawn(call);
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(hints(req), (true, 5, Some(5)));
    send.send_response(grpc_status(0));
    call.await.unwrap().unwrap();

    // A stream does not.
    type SReq = http::Request<
        RetryBody<
            StreamBody<
                futures_util::stream::Iter<
                    std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>,
                >,
            >,
        >,
    >;
    let (svc, mut handle) = mock::pair::<SReq, Rsp>();
    let mut svc = layer().layer(svc);
    let frames = vec![Ok(http_body::Frame::data(Bytes::from_static(b"hello")))];
    let (parts, _) = grpc_req(Some(policy(RetryOn::UNAVAILABLE, 1)), "").into_parts();
    let req = http::Request::from_parts(parts, StreamBody::new(futures_util::stream::iter(frames)));
    let call = tokio::spawn(svc.ready().await.unwrap().call(req));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(hints(req), (true, 5, None));
    send.send_response(grpc_status(0));
    call.await.unwrap().unwrap();
}
