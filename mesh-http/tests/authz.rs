//! Path rules hold against every spelling of a path: a hyper service behind `Server`, over
//! real mTLS, called with raw HTTP/1.1 request lines (absolute form, `*`, odd paths) and a
//! hyper HTTP/2 client.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_core::identity::testing::TestCa;
use meshwork_core::inbound::{AuthorizationPolicy, Operation, Principal, Rule};
use meshwork_http::Server;
use rustls_pki_types::ServerName;
use support::identity;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

const INTRUDER: &str = "/ns/default/sa/intruder";
const FRIEND: &str = "/ns/default/sa/friend";

/// The paths the service received.
type Seen = Arc<Mutex<Vec<String>>>;

/// A `Server` whose policy denies the intruder `/admin` and everything under `/admin/`, and
/// allows everything else; the service records each path it gets and answers 200.
async fn start(ca: &TestCa) -> (SocketAddr, Seen) {
    let intruder = format!("spiffe://example.org{INTRUDER}").parse().unwrap();
    let policy = AuthorizationPolicy::new().allow(Rule::any()).deny(
        Rule::any()
            .principal(Principal::Id(intruder))
            .operation(Operation::Path("/admin".into()))
            .operation(Operation::path_prefix("/admin/")),
    );
    start_with(ca, policy).await
}

/// A `Server` enforcing `policy`; the service records each path it gets and answers 200.
async fn start_with(ca: &TestCa, policy: AuthorizationPolicy) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        record.lock().unwrap().push(req.uri().path().to_owned());
        async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok")))) }
    });
    let server = Server::new(identity(ca, "/ns/default/sa/server")).policy(policy);
    tokio::spawn(server.serve(listener, service));
    (addr, seen)
}

async fn tls(ca: &TestCa, who: &str, addr: SocketAddr, alpn: &[u8]) -> TlsStream<TcpStream> {
    let config = identity(ca, who)
        .alpn_protocols(vec![alpn.to_vec()])
        .client_config()
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap()
}

/// The status of `request_line` (e.g. `GET /admin HTTP/1.1`) sent alone on a new
/// HTTP/1.1 connection.
async fn h1(ca: &TestCa, who: &str, addr: SocketAddr, request_line: &str) -> u16 {
    let mut stream = tls(ca, who, addr, b"http/1.1").await;
    let request = format!("{request_line}\r\nhost: greeter\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The server may close without a TLS close_notify; what was read is what counts.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .unwrap_or_else(|| panic!("{request_line}: not a response: {response:?}"));
    status.parse().unwrap()
}

/// The status of `GET https://greeter{path}` over a new HTTP/2 connection.
async fn h2(ca: &TestCa, who: &str, addr: SocketAddr, path: &str) -> u16 {
    let stream = tls(ca, who, addr, b"h2").await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://greeter{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    let status = rsp.status().as_u16();
    rsp.into_body().collect().await.unwrap();
    status
}

/// Request targets that name `/admin` (or a path under it) once normalised.
const ADMIN_FORMS: &[&str] = &[
    "/admin",
    "//admin",
    "/./admin",
    "/public/../admin",
    "/%61dmin",
    "/%61%64%6D%69%6E",
    "/admin?debug=1",
    "/admin/keys",
    "/admin//keys",
    "/%2e/admin/keys",
    "/admin/x/../keys",
];

/// Request targets that cannot be normalised.
const REFUSED_FORMS: &[&str] = &[
    "/public%2F..%2Fadmin",
    "/public%2f..%2fadmin",
    "/public%5C..%5Cadmin",
    "/public\\..\\admin",
    "/../admin",
    "/public/%2e%2e/%2e%2e/admin",
    "/admin%00",
    "/adm%zzin",
];

#[tokio::test]
async fn a_denied_path_stays_denied_in_every_spelling_over_http1() {
    let ca = TestCa::new("example.org");
    let (addr, seen) = start(&ca).await;
    let mut wrong = Vec::new();
    let mut check = |line: String, got: u16, want: u16| {
        if got != want {
            wrong.push(format!("{line}: {got}, want {want}"));
        }
    };
    for path in ADMIN_FORMS {
        for line in [
            format!("GET {path} HTTP/1.1"),
            format!("HEAD {path} HTTP/1.1"),
            // Absolute form: the path is the URI's path, for the policy and the service.
            format!("GET https://greeter{path} HTTP/1.1"),
        ] {
            let got = h1(&ca, INTRUDER, addr, &line).await;
            check(line, got, 403);
        }
    }
    for path in REFUSED_FORMS {
        let line = format!("GET {path} HTTP/1.1");
        let got = h1(&ca, INTRUDER, addr, &line).await;
        check(line, got, 400);
    }
    // Neither origin form nor absolute form: nothing a path rule could judge.
    let line = String::from("OPTIONS * HTTP/1.1");
    let got = h1(&ca, INTRUDER, addr, &line).await;
    check(line, got, 400);
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    assert_eq!(*seen.lock().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn a_denied_path_stays_denied_in_every_spelling_over_http2() {
    let ca = TestCa::new("example.org");
    let (addr, seen) = start(&ca).await;
    let mut wrong = Vec::new();
    for (forms, want) in [(ADMIN_FORMS, 403), (REFUSED_FORMS, 400)] {
        for path in forms {
            let got = h2(&ca, INTRUDER, addr, path).await;
            if got != want {
                wrong.push(format!("{path}: {got}, want {want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    assert_eq!(*seen.lock().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn the_service_gets_the_normalised_path_the_policy_judged() {
    let ca = TestCa::new("example.org");
    let (addr, seen) = start(&ca).await;
    for path in ADMIN_FORMS {
        assert_eq!(h2(&ca, FRIEND, addr, path).await, 200, "{path}");
        let line = format!("GET https://greeter{path} HTTP/1.1");
        assert_eq!(h1(&ca, FRIEND, addr, &line).await, 200, "{line}");
    }
    for path in REFUSED_FORMS {
        assert_eq!(h2(&ca, FRIEND, addr, path).await, 400, "{path}");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2 * ADMIN_FORMS.len());
    for path in seen.iter() {
        assert!(path == "/admin" || path == "/admin/keys", "{path}");
    }
}

/// Rules mean what they say, whatever their spelling: a rule path is normalised as request
/// paths are (so `/users/josé` is the `/users/jos%C3%A9` a router decodes back to josé), a
/// GET allow rule does not admit HEAD, and a path and a method in one rule both apply.
#[tokio::test]
async fn rules_hold_as_written_over_http1_and_http2() {
    let ca = TestCa::new("example.org");
    let policy = AuthorizationPolicy::new()
        .allow(
            Rule::any()
                .operation(Operation::path_prefix("/public/"))
                .operation(Operation::HttpMethod(http::Method::GET)),
        )
        .allow(Rule::any().operation(Operation::path_prefix("/users/")))
        .deny(Rule::any().operation(Operation::Path("/users/jos\u{e9}".into())))
        .deny(Rule::any().operation(Operation::path_prefix("/users/%7eroot")))
        .deny(Rule::any().operation(Operation::Path("/users/a+b".into())));
    let (addr, seen) = start_with(&ca, policy).await;
    let mut wrong = Vec::new();
    for (line, want) in [
        ("GET /users/jos%c3%a9 HTTP/1.1", 403),
        ("GET /users/jos%C3%A9 HTTP/1.1", 403),
        ("GET /users/~root/keys HTTP/1.1", 403),
        ("GET /users/%7Eroot HTTP/1.1", 403),
        ("GET /users/a%2Bb HTTP/1.1", 403),
        ("GET /users/a+b HTTP/1.1", 403),
        ("GET /users/jose HTTP/1.1", 200),
        ("GET /public/x HTTP/1.1", 200),
        ("HEAD /public/x HTTP/1.1", 403),
        ("POST /public/x HTTP/1.1", 403),
        ("GET /private HTTP/1.1", 403),
    ] {
        let got = h1(&ca, FRIEND, addr, line).await;
        if got != want {
            wrong.push(format!("{line}: {got}, want {want}"));
        }
    }
    for (path, want) in [("/users/jos%c3%a9", 403), ("/users/%7eroot/x", 403)] {
        let got = h2(&ca, FRIEND, addr, path).await;
        if got != want {
            wrong.push(format!("h2 GET {path}: {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    assert_eq!(*seen.lock().unwrap(), ["/users/jose", "/public/x"]);
}
