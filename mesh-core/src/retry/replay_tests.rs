//! Replay around the buffering limit (from a review of the buffer going straight into the
//! replay vector): a body of several frames and trailers is replayed whole up to the
//! limit, and sent once whole past it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tower::{Layer, ServiceExt, service_fn};

use super::tests::{grpc_req, policy};
use super::*;
use crate::config::RetryOn;

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
type Req = http::Request<RetryBody<StreamBody<Frames>>>;

const LIMIT: usize = 8;

/// A retriable gRPC request whose body is `len` bytes in frames of three, then trailers.
fn request(len: usize) -> (http::Request<StreamBody<Frames>>, Bytes) {
    let data: Bytes = (0..len)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut frames: Vec<_> = data
        .chunks(3)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from(len));
    frames.push(Ok(Frame::trailers(trailers)));
    // A gRPC request the route lets retry UNAVAILABLE twice, with this body.
    let (parts, _) = grpc_req(Some(policy(RetryOn::UNAVAILABLE, 2)), "").into_parts();
    let body = StreamBody::new(futures_util::stream::iter(frames));
    (http::Request::from_parts(parts, body), data)
}

#[tokio::test(start_paused = true)]
async fn bodies_around_the_limit_are_replayed_whole_or_sent_once_whole() {
    for len in [0, 1, LIMIT - 1, LIMIT, LIMIT + 1, 2 * LIMIT + 1] {
        // Each attempt's body and trailers, as the backend got them.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = RetryLayer::new()
            .seed(1)
            .max_replay_bytes(LIMIT)
            .layer(service_fn(move |req: Req| {
                let log = log.clone();
                async move {
                    let collected = req.into_body().collect().await.unwrap();
                    let trailers = collected.trailers().cloned();
                    let mut log = log.lock().unwrap();
                    log.push((collected.to_bytes(), trailers));
                    // UNAVAILABLE the first time, OK after.
                    let code = if log.len() == 1 { "14" } else { "0" };
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("grpc-status", code)
                            .body(())
                            .unwrap(),
                    )
                }
            }));
        let (req, data) = request(len);
        let rsp = svc.oneshot(req).await.unwrap();
        let seen = seen.lock().unwrap();
        let attempts = if len <= LIMIT { 2 } else { 1 };
        assert_eq!(seen.len(), attempts, "len {len}");
        let expected = if len <= LIMIT { "0" } else { "14" };
        assert_eq!(rsp.headers()["grpc-status"], expected, "len {len}");
        for (body, trailers) in seen.iter() {
            assert_eq!(body, &data, "len {len}");
            let trailers = trailers.as_ref().expect("the trailers are sent");
            assert_eq!(trailers["x-checksum"], len.to_string(), "len {len}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_fails_midway_fails_the_call_unsent() {
    type EReq = http::Request<RetryBody<StreamBody<EFrames>>>;
    type EFrames =
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>;
    let calls = Arc::new(Mutex::new(0));
    let count = calls.clone();
    let svc = RetryLayer::new()
        .seed(1)
        .max_replay_bytes(LIMIT)
        .layer(service_fn(move |_req: EReq| {
            *count.lock().unwrap() += 1;
            async { Ok::<_, Infallible>(http::Response::new(())) }
        }));
    let (req, _) = request(4);
    let (parts, _) = req.into_parts();
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"abc"))),
        Err(std::io::Error::other("body broke")),
    ];
    let req = http::Request::from_parts(parts, StreamBody::new(futures_util::stream::iter(frames)));
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(err.to_string(), "body broke");
    assert_eq!(*calls.lock().unwrap(), 0);
}
