//! Authorization rules hold against every spelling of a gRPC call: a real tonic service
//! behind `MeshServer`, over real mTLS and HTTP/2, called by a raw hyper HTTP/2 client that
//! sends what tonic's own client never would (other content types, odd paths).

mod support;

use support::*;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hyper::body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::identity::testing::TestCa;
use meshwork_core::identity::{MtlsConfig, StaticSource};
use meshwork_core::inbound::{AuthorizationPolicy, Operation, Principal, Rule};
use meshwork_grpc::MeshServer;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tonic::Status;
use tonic::body::Body;

const INTRUDER: &str = "/ns/default/sa/intruder";
const FRIEND: &str = "/ns/default/sa/friend";

/// `helloworld.Greeter` counting the calls that reach `SayHello`'s handler.
#[derive(Clone)]
struct Greeter {
    said_hello: Arc<AtomicUsize>,
}

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

struct SayHello(Arc<AtomicUsize>);

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, Status>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        let message = format!("hello {}", req.get_ref().name);
        std::future::ready(Ok(tonic::Response::new(HelloReply { message })))
    }
}

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = SayHello(self.said_hello.clone());
        Box::pin(async move { Ok(dispatch(req, method).await) })
    }
}

fn mtls(ca: &TestCa, path: &str) -> MtlsConfig {
    MtlsConfig::new(Arc::new(StaticSource::new(
        Some(ca.svid(path)),
        ca.bundles(),
    )))
}

/// A `MeshServer` whose policy denies the intruder `SayHello` and allows everything else.
async fn start(ca: &TestCa, said_hello: Arc<AtomicUsize>) -> SocketAddr {
    let intruder = format!("spiffe://example.org{INTRUDER}").parse().unwrap();
    let policy = AuthorizationPolicy::new().allow(Rule::any()).deny(
        Rule::any()
            .principal(Principal::Id(intruder))
            .operation(Operation::grpc_method("helloworld.Greeter", "SayHello")),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = MeshServer::new(mtls(ca, "/ns/default/sa/greeter"))
        .policy(policy)
        .add_service(Greeter { said_hello });
    tokio::spawn(server.serve(listener));
    addr
}

/// A raw HTTP/2 connection over mTLS as `path`'s SVID.
async fn connect(
    ca: &TestCa,
    path: &str,
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<String> {
    let tls = mtls(ca, path)
        .alpn_protocols(vec![b"h2".to_vec()])
        .client_config()
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// How the server answered: its HTTP status and its `grpc-status` (from a trailers-only
/// response or the trailers), or the stream's error.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Http(u16, Option<String>),
    Reset(String),
}

/// `SayHello("hi")` as one gRPC frame, sent to `path` with `content_type`.
async fn call(
    send: &mut hyper::client::conn::http2::SendRequest<String>,
    path: &str,
    content_type: Option<&str>,
) -> Answer {
    let mut req = http::Request::post(format!("https://localhost{path}")).header("te", "trailers");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    // Uncompressed, 4 bytes: field 1 (name), length 2, "hi".
    let req = req.body(String::from("\0\0\0\0\x04\x0a\x02hi")).unwrap();
    send.ready().await.unwrap();
    let rsp = match send.send_request(req).await {
        Ok(rsp) => rsp,
        Err(error) => return Answer::Reset(error.to_string()),
    };
    let status = rsp.status().as_u16();
    let mut grpc_status = rsp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = rsp.into_body();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame {
            Ok(frame) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(value) = trailers.get("grpc-status")
                {
                    grpc_status = Some(value.to_str().unwrap().to_owned());
                }
            }
            Err(error) => return Answer::Reset(error.to_string()),
        }
    }
    Answer::Http(status, grpc_status)
}

const GRPC: Option<&str> = Some("application/grpc");

/// Spellings of a call to `helloworld.Greeter/SayHello` that tonic executes (once
/// normalised, for those that need it).
const SAY_HELLO_FORMS: &[(&str, Option<&str>)] = &[
    ("/helloworld.Greeter/SayHello", GRPC),
    (
        "/helloworld.Greeter/SayHello",
        Some("application/grpc+proto"),
    ),
    (
        "/helloworld.Greeter/SayHello",
        Some("application/octet-stream"),
    ),
    ("/helloworld.Greeter/SayHello", Some("Application/grpc")),
    ("/helloworld.Greeter/SayHello", Some("application/grpc-web")),
    ("/helloworld.Greeter/SayHello", None),
    ("/helloworld.Greeter/SayHello?x=1", GRPC),
    ("//helloworld.Greeter/SayHello", GRPC),
    ("/helloworld.Greeter//SayHello", GRPC),
    ("/helloworld.Greeter/./SayHello", GRPC),
    ("/helloworld.Greeter/x/../SayHello", GRPC),
    ("/helloworld.Greeter/%53ayHello", GRPC),
    (
        "/helloworld.Greeter/%53ayHello",
        Some("application/octet-stream"),
    ),
    ("/helloworld%2EGreeter/SayHell%6f", GRPC),
    ("/helloworld.Greeter/%2e/SayHello", GRPC),
];

/// Spellings that cannot be normalised, so are refused whoever sends them.
const REFUSED_FORMS: &[(&str, Option<&str>)] = &[
    ("/helloworld.Greeter%2FSayHello", GRPC),
    ("/helloworld.Greeter/SayHello%2F", GRPC),
    ("/helloworld.Greeter%5CSayHello", GRPC),
    ("/helloworld.Greeter/SayHello%00", GRPC),
    ("/helloworld.Greeter/%zzSayHello", GRPC),
    ("/../helloworld.Greeter/SayHello", GRPC),
    (
        "/%2e%2e/helloworld.Greeter/SayHello",
        Some("Application/grpc"),
    ),
    (
        "/helloworld.Greeter%2FSayHello",
        Some("application/octet-stream"),
    ),
];

/// Whether a content type makes the server answer in gRPC's terms.
fn speaks_grpc(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let ct = ct.to_ascii_lowercase();
        ct == "application/grpc" || ct.starts_with("application/grpc+")
    })
}

#[tokio::test]
async fn a_denied_grpc_method_stays_denied_in_every_spelling() {
    let ca = TestCa::new("example.org");
    let said_hello = Arc::new(AtomicUsize::new(0));
    let addr = start(&ca, said_hello.clone()).await;
    let mut intruder = connect(&ca, INTRUDER, addr).await;
    let mut wrong = Vec::new();
    for &(path, ct) in SAY_HELLO_FORMS {
        let before = said_hello.load(Ordering::SeqCst);
        let answer = call(&mut intruder, path, ct).await;
        let ran = said_hello.load(Ordering::SeqCst) - before;
        let want = if speaks_grpc(ct) {
            Answer::Http(200, Some("7".into()))
        } else {
            Answer::Http(403, None)
        };
        if ran != 0 || answer != want {
            wrong.push(format!(
                "{path} ({ct:?}): handler ran {ran} times, answer {answer:?}, want {want:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn every_spelling_a_deny_rule_covers_is_what_the_handler_runs() {
    // The other side of the deny test: a caller the rule does not name reaches `SayHello`
    // through each of those spellings, so they are calls to the denied method and not
    // merely requests that fail anyway.
    let ca = TestCa::new("example.org");
    let said_hello = Arc::new(AtomicUsize::new(0));
    let addr = start(&ca, said_hello.clone()).await;
    let mut friend = connect(&ca, FRIEND, addr).await;
    let mut wrong = Vec::new();
    for &(path, ct) in SAY_HELLO_FORMS {
        let before = said_hello.load(Ordering::SeqCst);
        let answer = call(&mut friend, path, ct).await;
        let ran = said_hello.load(Ordering::SeqCst) - before;
        if ran != 1 || answer != Answer::Http(200, Some("0".into())) {
            wrong.push(format!(
                "{path} ({ct:?}): handler ran {ran} times, answer {answer:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn unnormalisable_paths_are_refused_for_everyone() {
    let ca = TestCa::new("example.org");
    let said_hello = Arc::new(AtomicUsize::new(0));
    let addr = start(&ca, said_hello.clone()).await;
    let mut wrong = Vec::new();
    for who in [INTRUDER, FRIEND] {
        let mut send = connect(&ca, who, addr).await;
        for &(path, ct) in REFUSED_FORMS {
            let answer = call(&mut send, path, ct).await;
            let want = if speaks_grpc(ct) {
                Answer::Http(200, Some("13".into()))
            } else {
                Answer::Http(400, None)
            };
            if answer != want {
                wrong.push(format!("{who} {path} ({ct:?}): {answer:?}, want {want:?}"));
            }
        }
    }
    assert_eq!(
        said_hello.load(Ordering::SeqCst),
        0,
        "the handler never ran"
    );
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// One HTTP/2 frame: its header (length, type, flags, stream) and payload.
fn frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, stream];
    out.extend_from_slice(payload);
    out
}

/// Sends `SayHello("hi")` on stream 1 of a new connection with exactly this `:path`
/// (written by hand: http's `Uri` cannot carry a `:path` that is not origin form), and
/// returns the type of the first frame the server sends on stream 1 (1: HEADERS, the
/// request was processed; 3: RST_STREAM, it was refused as malformed).
async fn raw_h2(ca: &TestCa, who: &str, addr: SocketAddr, path: &str) -> u8 {
    let tls = mtls(ca, who)
        .alpn_protocols(vec![b"h2".to_vec()])
        .client_config()
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    // HPACK literal header fields without indexing, new names, no Huffman coding.
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(u8::try_from(name.len()).unwrap());
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[])); // SETTINGS, all defaults
    out.extend(frame(1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    out.extend(frame(0, 0x1, 1, b"\0\0\0\0\x04\x0a\x02hi")); // DATA, END_STREAM
    stream.write_all(&out).await.unwrap();
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.unwrap();
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await.unwrap();
        let stream_id =
            u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & !(1 << 31);
        if stream_id == 1 {
            return header[3];
        }
        // GOAWAY: the connection refused the stream.
        if header[3] == 7 {
            return 7;
        }
    }
}

#[tokio::test]
async fn an_http2_path_in_absolute_form_never_reaches_the_handler() {
    let ca = TestCa::new("example.org");
    let said_hello = Arc::new(AtomicUsize::new(0));
    let addr = start(&ca, said_hello.clone()).await;
    // The hand-written request works in origin form (the control)...
    assert_eq!(raw_h2(&ca, FRIEND, addr, SAY_HELLO).await, 1);
    assert_eq!(said_hello.load(Ordering::SeqCst), 1);
    // ...and in absolute form is refused before any policy or service sees it (http's
    // `PathAndQuery` accepts only `/…`, `?…`, `#…` and `*`, so h2 resets the stream).
    for who in [INTRUDER, FRIEND] {
        for path in [
            "https://localhost/helloworld.Greeter/SayHello",
            "localhost/helloworld.Greeter/SayHello",
        ] {
            assert_eq!(raw_h2(&ca, who, addr, path).await, 3, "{who} {path}");
        }
    }
    assert_eq!(said_hello.load(Ordering::SeqCst), 1);
}
