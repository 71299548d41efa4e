use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::config::{ClusterSpecifier, ForwardAction, GrpcCode};

fn policy(timeout: Option<Duration>, msd: Option<MaxStreamDuration>) -> RoutePolicy {
    RoutePolicy::from_action(ForwardAction {
        clusters: ClusterSpecifier::Cluster("c".into()),
        timeout,
        max_stream_duration: msd,
        retry_policy: None,
        hash_policies: Vec::new(),
    })
    .unwrap()
}

fn req(policy: Option<RoutePolicy>, grpc_timeout: Option<&str>) -> http::Request<()> {
    let mut r = http::Request::new(());
    if let Some(p) = policy {
        r.extensions_mut().insert(p);
    }
    if let Some(t) = grpc_timeout {
        r.headers_mut().insert("grpc-timeout", t.parse().unwrap());
    }
    r
}

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

#[test]
fn parse_grpc_timeouts() {
    assert_eq!(parse_grpc_timeout(b"1H"), Some(S(3600)));
    assert_eq!(parse_grpc_timeout(b"2M"), Some(S(120)));
    assert_eq!(parse_grpc_timeout(b"3S"), Some(S(3)));
    assert_eq!(parse_grpc_timeout(b"99999999m"), Some(MS(99_999_999)));
    assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
    assert_eq!(parse_grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
    for bad in [
        &b""[..],
        b"m",
        b"123456789m",
        b"10x",
        b"-1S",
        b"1.5S",
        b" 1S",
    ] {
        assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
    }
}

#[test]
fn the_earliest_rule_wins() {
    let msd = |max, header_max, offset| {
        Some(MaxStreamDuration {
            max,
            grpc_timeout_header_max: header_max,
            grpc_timeout_header_offset: offset,
        })
    };
    assert_eq!(deadline(&req(None, None), None), None);
    assert_eq!(
        deadline(&req(None, None), Some(S(9))),
        Some((S(9), TimeoutKind::Default))
    );
    // A route policy replaces the default, even without a timeout of its own.
    assert_eq!(
        deadline(&req(Some(policy(None, None)), None), Some(S(9))),
        None
    );
    assert_eq!(
        deadline(&req(Some(policy(Some(S(5)), None)), Some("10S")), None),
        Some((S(5), TimeoutKind::Route))
    );
    assert_eq!(
        deadline(&req(Some(policy(Some(S(5)), None)), Some("100m")), None),
        Some((MS(100), TimeoutKind::GrpcTimeout))
    );
    // A31: max_stream_duration applies when grpc_timeout_header_max is unset...
    assert_eq!(
        deadline(
            &req(Some(policy(None, msd(Some(S(2)), None, None))), Some("3S")),
            None
        ),
        Some((S(2), TimeoutKind::MaxStreamDuration))
    );
    // ... and grpc_timeout_header_max replaces it when set,
    assert_eq!(
        deadline(
            &req(
                Some(policy(None, msd(Some(S(2)), Some(S(4)), None))),
                Some("30S")
            ),
            None
        ),
        Some((S(4), TimeoutKind::MaxStreamDuration))
    );
    // with zero meaning no cap: the header rules.
    assert_eq!(
        deadline(
            &req(
                Some(policy(None, msd(Some(S(2)), Some(S(0)), None))),
                Some("30S")
            ),
            None
        ),
        Some((S(30), TimeoutKind::GrpcTimeout))
    );
    // The offset is taken off the header, saturating at zero.
    assert_eq!(
        deadline(
            &req(
                Some(policy(None, msd(None, None, Some(MS(50))))),
                Some("200m")
            ),
            None
        ),
        Some((MS(150), TimeoutKind::GrpcTimeout))
    );
    assert_eq!(
        deadline(
            &req(
                Some(policy(None, msd(None, None, Some(S(1))))),
                Some("200m")
            ),
            None
        ),
        Some((Duration::ZERO, TimeoutKind::GrpcTimeout))
    );
    // A malformed header is ignored.
    assert_eq!(deadline(&req(None, Some("soon")), None), None);
}

#[tokio::test(start_paused = true)]
async fn route_timeout_fails_with_deadline_exceeded() {
    let (svc, mut handle) = mock::pair::<http::Request<()>, http::Response<()>>();
    let mut svc = TimeoutLayer::new().layer(svc);
    let start = Instant::now();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(req(Some(policy(Some(MS(250)), None)), None)),
    );
    let (_req, _send) = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    let err = err.downcast::<TimeoutError>().unwrap();
    assert_eq!(err.kind(), TimeoutKind::Route);
    assert_eq!(err.after(), MS(250));
    assert_eq!(err.grpc_code(), GrpcCode::DeadlineExceeded);
    assert_eq!(err.http_status(), http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), MS(250));
}

#[tokio::test(start_paused = true)]
async fn a_response_before_the_deadline_passes_through() {
    let (svc, mut handle) = mock::pair::<http::Request<()>, http::Response<&'static str>>();
    let mut svc = Timeout::with_default(svc, S(1));
    let call = tokio::spawn(svc.ready().await.unwrap().call(req(None, Some("2S"))));
    let (_req, send) = handle.next_request().await.unwrap();
    tokio::time::sleep(MS(999)).await;
    send.send_response(http::Response::new("ok"));
    assert_eq!(call.await.unwrap().unwrap().into_body().into_inner(), "ok");

    // Inner errors are passed through, boxed.
    let call = tokio::spawn(svc.ready().await.unwrap().call(req(None, None)));
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::other("inner"));
    assert_eq!(call.await.unwrap().unwrap_err().to_string(), "inner");
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_header_is_honoured_without_a_route() {
    let (svc, mut handle) = mock::pair::<http::Request<()>, http::Response<()>>();
    let mut svc = Timeout::new(svc);
    let start = Instant::now();
    let call = tokio::spawn(svc.ready().await.unwrap().call(req(None, Some("40m"))));
    let _pending = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(
        err.downcast_ref::<TimeoutError>().unwrap().kind(),
        TimeoutKind::GrpcTimeout
    );
    assert_eq!(start.elapsed(), MS(40));
    assert!(svc.get_ref().clone().ready().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_deadline_covers_the_response_body() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Channel};
    type Body = Channel<Bytes, std::convert::Infallible>;
    let (svc, mut handle) = mock::pair::<http::Request<()>, http::Response<Body>>();
    let mut svc = Timeout::new(svc);
    let start = Instant::now();

    // A body that ends before the deadline is delivered whole.
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(req(Some(policy(Some(S(1)), None)), None)),
    );
    let (_, send) = handle.next_request().await.unwrap();
    let (mut tx, body) = Channel::new(1);
    send.send_response(http::Response::new(body));
    let rsp = call.await.unwrap().unwrap();
    tokio::spawn(async move {
        tx.send_data(Bytes::from("a")).await.unwrap();
        tokio::time::sleep(MS(500)).await;
        tx.send_data(Bytes::from("b")).await.unwrap();
    });
    assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "ab");

    // A body still streaming at the deadline fails with the deadline's error.
    let start2 = Instant::now();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(req(Some(policy(Some(S(1)), None)), None)),
    );
    let (_, send) = handle.next_request().await.unwrap();
    tokio::time::sleep(MS(300)).await;
    let (mut tx, body) = Channel::new(1);
    send.send_response(http::Response::new(body));
    let mut body = std::pin::pin!(call.await.unwrap().unwrap().into_body());
    tx.send_data(Bytes::from("a")).await.unwrap();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "a");
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(
        err.downcast_ref::<TimeoutError>().unwrap().kind(),
        TimeoutKind::Route
    );
    assert_eq!(start2.elapsed(), S(1));
    assert!(start.elapsed() >= S(1));
    drop(tx);
}
