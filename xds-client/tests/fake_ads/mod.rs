//! A misbehaving ADS server over real HTTP/2 (hyper), scripted per stream: it can delay its
//! HTTP/2 connection, its response headers and its messages, send a gRPC length prefix it
//! never honours, trickle a body, close every stream after one response, or stop reading
//! the client's requests for a while (it records those it reads), on a SotW or a delta
//! stream (the path the client calls). Our test server (tonic) cannot lie about a
//! message's length, so this one writes gRPC frames by hand.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// What the server does on one stream, in order, after its response headers.
#[derive(Clone, Debug)]
pub enum Step {
    /// Send a well-formed gRPC message.
    Message(DiscoveryResponse),
    /// Send a well-formed delta response (on a delta stream).
    Delta(DeltaDiscoveryResponse),
    /// Send a gRPC message header announcing `len` bytes (and nothing else).
    Announce(u32),
    /// Send `count` chunks of `size` zero bytes, as fast as the client takes them.
    Trickle { count: usize, size: usize },
    /// Wait.
    Wait(Duration),
    /// End the stream with `grpc-status: 0`.
    Close,
    /// Wait until a request naming at least this many resources has been read (on delta,
    /// until the requests read have subscribed this many names in all).
    UntilNames(usize),
    /// Wait until the test calls `notify_one` on this.
    Until(Arc<Notify>),
    /// Stop reading the client's requests (HTTP/2 flow control then holds the client back).
    StopReading,
    /// Read them again.
    ResumeReading,
}

/// How the server behaves.
#[derive(Clone)]
pub struct Script {
    /// Wait this long after accepting a TCP connection before speaking HTTP/2.
    pub accept_delay: Duration,
    /// Wait this long before sending a stream's response headers.
    pub headers_delay: Duration,
    /// The steps of the n-th stream (0-based); a stream whose steps run out stays open.
    pub steps: Arc<dyn Fn(usize) -> Vec<Step> + Send + Sync>,
}

impl Script {
    pub fn new(steps: impl Fn(usize) -> Vec<Step> + Send + Sync + 'static) -> Self {
        Self {
            accept_delay: Duration::ZERO,
            headers_delay: Duration::ZERO,
            steps: Arc::new(steps),
        }
    }
}

/// What the server saw.
#[derive(Default, Debug)]
pub struct Seen {
    /// When each stream started.
    pub streams: Vec<Instant>,
    /// Streams whose every step was sent.
    pub finished: usize,
    /// The requests read, of every stream, in order.
    pub requests: Vec<DiscoveryRequest>,
    /// The stream (0-based) each of `requests` was read on.
    pub request_streams: Vec<usize>,
    /// The delta requests read, of every stream, in order.
    pub delta_requests: Vec<DeltaDiscoveryRequest>,
}

impl Seen {
    /// The requests read on stream `n` (0-based).
    pub fn requests_on(&self, n: usize) -> Vec<DiscoveryRequest> {
        self.requests
            .iter()
            .zip(&self.request_streams)
            .filter(|(_, s)| **s == n)
            .map(|(r, _)| r.clone())
            .collect()
    }
}

pub struct FakeAds {
    pub addr: SocketAddr,
    seen: watch::Sender<Seen>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAds {
    fn drop(&mut self) {
        self._accept.abort();
    }
}

/// A gRPC message frame: the flag, the 4-byte length, the encoded message.
pub fn frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(0);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

impl FakeAds {
    pub async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, _) = watch::channel(Seen::default());
        let seen_in = seen.clone();
        let accept = tokio::spawn(async move {
            let index = Arc::new(Mutex::new(0usize));
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (script, seen, index) = (script.clone(), seen_in.clone(), index.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(script.accept_delay).await;
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let n = {
                                let mut i = index.lock().unwrap();
                                *i += 1;
                                *i - 1
                            };
                            seen.send_modify(|s| s.streams.push(Instant::now()));
                            let (script, seen) = (script.clone(), seen.clone());
                            async move { Ok::<_, Infallible>(respond(n, req, script, seen).await) }
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            _accept: accept,
        }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Wait until `pred` holds for what the server saw; returns a copy of the stream starts.
    pub async fn wait_for(&self, pred: impl Fn(&Seen) -> bool) -> Vec<Instant> {
        let mut rx = self.seen.subscribe();
        rx.wait_for(|s| pred(s)).await.unwrap().streams.clone()
    }

    /// The requests read so far.
    pub fn requests(&self) -> Vec<DiscoveryRequest> {
        self.seen.borrow().requests.clone()
    }

    /// The requests read so far on stream `n` (0-based).
    pub fn requests_on(&self, n: usize) -> Vec<DiscoveryRequest> {
        self.seen.borrow().requests_on(n)
    }

    /// The delta requests read so far.
    pub fn delta_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.seen.borrow().delta_requests.clone()
    }

    pub fn streams(&self) -> usize {
        self.seen.borrow().streams.len()
    }
}

type Body = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

async fn respond(
    n: usize,
    req: hyper::Request<Incoming>,
    script: Script,
    seen: watch::Sender<Seen>,
) -> hyper::Response<Body> {
    // Keep reading the client's requests (unless told to stop), so its side of the stream
    // stays open.
    let (reading, gate) = watch::channel(true);
    let delta = req.uri().path().ends_with("/DeltaAggregatedResources");
    tokio::spawn(read_requests(n, delta, req.into_body(), gate, seen.clone()));
    tokio::time::sleep(script.headers_delay).await;
    let (tx, rx) = mpsc::channel(1);
    let steps = (script.steps)(n);
    tokio::spawn(async move {
        for step in steps {
            let sent = match step {
                Step::Message(m) => tx.send(Ok(Frame::data(frame(&m)))).await.is_ok(),
                Step::Delta(m) => tx.send(Ok(Frame::data(frame(&m)))).await.is_ok(),
                Step::Announce(len) => {
                    let mut b = BytesMut::with_capacity(5);
                    b.put_u8(0);
                    b.put_u32(len);
                    tx.send(Ok(Frame::data(b.freeze()))).await.is_ok()
                }
                Step::Trickle { count, size } => {
                    let chunk = Bytes::from_static(&ZEROS[..size.min(ZEROS.len())]);
                    let mut ok = true;
                    for _ in 0..count {
                        if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    ok
                }
                Step::Wait(d) => {
                    tokio::time::sleep(d).await;
                    true
                }
                Step::UntilNames(n) => {
                    let mut rx = seen.subscribe();
                    let _ = rx
                        .wait_for(|s| {
                            let subscribed: usize = s
                                .delta_requests
                                .iter()
                                .map(|r| r.resource_names_subscribe.len())
                                .sum();
                            subscribed >= n
                                || s.requests.iter().any(|r| r.resource_names.len() >= n)
                        })
                        .await;
                    true
                }
                Step::Until(signal) => {
                    signal.notified().await;
                    true
                }
                Step::StopReading => reading.send(false).is_ok(),
                Step::ResumeReading => reading.send(true).is_ok(),
                Step::Close => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                    seen.send_modify(|s| s.finished += 1);
                    return;
                }
            };
            if !sent {
                return;
            }
        }
        seen.send_modify(|s| s.finished += 1);
        // Hold the stream open: the body ends only when the client goes away.
        tx.closed().await;
    });
    hyper::Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap()
}

/// Reads the gRPC messages of stream `n`'s request body (delta requests if `delta`) while
/// `gate` says so, recording each.
async fn read_requests(
    n: usize,
    delta: bool,
    mut body: Incoming,
    mut gate: watch::Receiver<bool>,
    seen: watch::Sender<Seen>,
) {
    let mut buf = BytesMut::new();
    loop {
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        let Some(Ok(frame)) = body.frame().await else {
            return;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            let message = buf.split_to(5 + len);
            if delta {
                if let Ok(request) = DeltaDiscoveryRequest::decode(&message[5..]) {
                    seen.send_modify(|s| s.delta_requests.push(request));
                }
            } else if let Ok(request) = DiscoveryRequest::decode(&message[5..]) {
                seen.send_modify(|s| {
                    s.requests.push(request);
                    s.request_streams.push(n);
                });
            }
        }
    }
}
