//! The inbound authorization policy over arbitrary requests, through the public tower layer
//! (`InboundLayer` around a service that records what reaches it).
//!
//! Input (`meshwork_fuzz::Reader` format): a few allow and deny rules (principals and
//! operations drawn from small pools or fuzzed strings), then one request: method, path
//! bytes (any request target `http::Uri` accepts), `content-type` and another header, and the
//! caller's SPIFFE ID (or none).
//!
//! The invariant, checked with the harness's own rule matcher (not the policy's): **a
//! request that reaches the service matches no deny rule, and matches some allow rule, as the
//! service will see it.** "As the service sees it" is the request the inner service
//! received (the layer may rewrite it), viewed as:
//! - by default, the policy's documented semantics on main: gRPC rules apply to
//!   `content-type: application/grpc…` requests, path rules to the raw path;
//! - with the `authz-routing-model` feature, what a server routes on: tonic dispatches on
//!   the path whatever the content-type, so gRPC rules apply to every request; and a path
//!   is also viewed RFC 3986-normalised (unreserved percent-escapes decoded, `//` merged,
//!   dot segments removed), as a normalising router (Envoy's `normalize_path` +
//!   `merge_slashes`) would route it. A deny rule must hold for every view; an allow rule
//!   must hold for at least one.
//!
//! Also: no panic, and a denied request gets 403 or `grpc-status: 7` with no body.
//!
//! This file only uses the public API (`AuthorizationPolicy`, `Rule`, `Principal`,
//! `Operation`, `InboundLayer`, `PeerIdentity`) so it can follow the `authz` changes.
#![no_main]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use http::{HeaderValue, Method, Request, Response};
use libfuzzer_sys::fuzz_target;
use meshwork_core::identity::{PeerIdentity, SpiffeId};
use meshwork_core::inbound::{AuthorizationPolicy, InboundLayer, Operation, Principal, Rule};
use meshwork_fuzz::Reader;
use tower::{Layer, Service};

const SERVICES: [&str; 4] = ["helloworld.Greeter", "pkg.Svc", "Pkg.Svc", ""];
const METHODS: [&str; 4] = ["SayHello", "Method", "sayhello", ""];
const PATHS: [&str; 8] = [
    "/helloworld.Greeter/SayHello",
    "/admin",
    "/admin/",
    "/pkg.Svc/Method",
    "/",
    "/helloworld.Greeter/",
    "/a/b",
    "",
];
const IDS: [&str; 3] = [
    "spiffe://example.org/ns/default/sa/client",
    "spiffe://example.org/ns/default/sa/intruder",
    "spiffe://other.org/ns/x/sa/y",
];
const CONTENT_TYPES: [&str; 8] = [
    "application/grpc",
    "application/grpc+proto",
    "application/grpc;charset=utf-8",
    "Application/grpc",
    "application/octet-stream",
    "application/grpc-web",
    "text/plain",
    "",
];
const HTTP_METHODS: [&str; 5] = ["POST", "GET", "PUT", "DELETE", "OPTIONS"];

/// The rules as the harness sees them, to judge independently of the policy's matcher.
#[derive(Clone, Debug)]
struct ModelRule {
    principals: Vec<ModelPrincipal>,
    operations: Vec<ModelOp>,
}

#[derive(Clone, Debug)]
enum ModelPrincipal {
    Authenticated,
    Unauthenticated,
    Id(String),
    TrustDomain(String),
}

#[derive(Clone, Debug)]
enum ModelOp {
    GrpcService(String),
    GrpcMethod(String, String),
    Path(String),
    PathPrefix(String),
    HttpMethod(Method),
}

fn string_from(r: &mut Reader<'_>, pool: &[&str]) -> String {
    let b = r.u8();
    if b >= 0xF0 {
        r.string()
    } else {
        pool[usize::from(b) % pool.len()].to_owned()
    }
}

fn rule(r: &mut Reader<'_>) -> (Rule, ModelRule) {
    let mut rule = Rule::any();
    let mut model = ModelRule {
        principals: Vec::new(),
        operations: Vec::new(),
    };
    for _ in 0..r.u8() % 3 {
        let (p, m) = match r.u8() % 4 {
            0 => (Principal::Authenticated, ModelPrincipal::Authenticated),
            1 => (Principal::Unauthenticated, ModelPrincipal::Unauthenticated),
            2 => {
                let id = string_from(r, &IDS);
                let Ok(parsed) = id.parse::<SpiffeId>() else {
                    continue;
                };
                (Principal::Id(parsed), ModelPrincipal::Id(id))
            }
            _ => {
                let id = IDS[usize::from(r.u8()) % IDS.len()];
                let parsed: SpiffeId = id.parse().expect("pool IDs are valid");
                let td = parsed.trust_domain().clone();
                (
                    Principal::TrustDomain(td.clone()),
                    ModelPrincipal::TrustDomain(td.to_string()),
                )
            }
        };
        rule = rule.principal(p);
        model.principals.push(m);
    }
    for _ in 0..r.u8() % 3 {
        let (o, m) = match r.u8() % 5 {
            0 => {
                let s = string_from(r, &SERVICES);
                (Operation::grpc_service(s.clone()), ModelOp::GrpcService(s))
            }
            1 => {
                let s = string_from(r, &SERVICES);
                let m = string_from(r, &METHODS);
                (
                    Operation::grpc_method(s.clone(), m.clone()),
                    ModelOp::GrpcMethod(s, m),
                )
            }
            2 => {
                let p = string_from(r, &PATHS);
                (Operation::Path(p.clone()), ModelOp::Path(p))
            }
            3 => {
                let p = string_from(r, &PATHS);
                (Operation::path_prefix(p.clone()), ModelOp::PathPrefix(p))
            }
            _ => {
                let m = Method::from_bytes(string_from(r, &HTTP_METHODS).as_bytes())
                    .unwrap_or(Method::POST);
                (Operation::HttpMethod(m.clone()), ModelOp::HttpMethod(m))
            }
        };
        rule = rule.operation(o);
        model.operations.push(m);
    }
    (rule, model)
}

/// One way of looking at the request the service received.
struct View<'a> {
    method: &'a Method,
    path: String,
    grpc: bool,
    peer: Option<&'a str>,
}

impl View<'_> {
    fn grpc_method(&self) -> Option<(&str, &str)> {
        if !self.grpc {
            return None;
        }
        let (service, method) = self.path.strip_prefix('/')?.split_once('/')?;
        (!service.is_empty() && !method.is_empty() && !method.contains('/'))
            .then_some((service, method))
    }
}

fn principal_matches(p: &ModelPrincipal, peer: Option<&str>) -> bool {
    match (p, peer) {
        (ModelPrincipal::Authenticated, peer) => peer.is_some(),
        (ModelPrincipal::Unauthenticated, peer) => peer.is_none(),
        (ModelPrincipal::Id(id), Some(peer)) => id == peer,
        (ModelPrincipal::TrustDomain(td), Some(peer)) => peer
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next())
            .is_some_and(|t| t == td),
        (ModelPrincipal::Id(_) | ModelPrincipal::TrustDomain(_), None) => false,
    }
}

fn op_matches(o: &ModelOp, v: &View<'_>) -> bool {
    match o {
        ModelOp::GrpcService(s) => v.grpc_method().is_some_and(|(vs, _)| vs == s),
        ModelOp::GrpcMethod(s, m) => v.grpc_method().is_some_and(|(vs, vm)| vs == s && vm == m),
        ModelOp::Path(p) => &v.path == p,
        ModelOp::PathPrefix(p) => v.path.starts_with(p.as_str()),
        ModelOp::HttpMethod(m) => v.method == m,
    }
}

fn rule_matches(rule: &ModelRule, v: &View<'_>) -> bool {
    (rule.principals.is_empty() || rule.principals.iter().any(|p| principal_matches(p, v.peer)))
        && (rule.operations.is_empty() || rule.operations.iter().any(|o| op_matches(o, v)))
}

fn is_grpc_content_type(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

/// RFC 3986 normalisation as a normalising router applies it: percent-escapes of
/// unreserved characters decoded, `//` merged, dot segments removed.
#[cfg(feature = "authz-routing-model")]
fn normalise(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && (b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            decoded.push(b);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut normal = format!("/{}", out.join("/"));
    if trailing && !out.is_empty() {
        normal.push('/');
    }
    normal
}

/// The views of the request the service received.
fn views<'a>(
    method: &'a Method,
    path: &str,
    content_type: Option<&HeaderValue>,
    peer: Option<&'a str>,
) -> Vec<View<'a>> {
    #[cfg(not(feature = "authz-routing-model"))]
    {
        vec![View {
            method,
            path: path.to_owned(),
            grpc: is_grpc_content_type(content_type),
            peer,
        }]
    }
    #[cfg(feature = "authz-routing-model")]
    {
        let _ = is_grpc_content_type(content_type);
        vec![
            View {
                method,
                path: path.to_owned(),
                grpc: true,
                peer,
            },
            View {
                method,
                path: normalise(path),
                grpc: true,
                peer,
            },
        ]
    }
}

/// What reached the inner service.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    content_type: Option<HeaderValue>,
    peer: Option<String>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Option<Seen>>>);

impl Service<Request<()>> for Recorder {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let seen = Seen {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            content_type: req.headers().get(http::header::CONTENT_TYPE).cloned(),
            peer: req
                .extensions()
                .get::<PeerIdentity>()
                .map(|p| p.spiffe_id().to_string()),
        };
        *self.0.lock().expect("one thread") = Some(seen);
        std::future::ready(Ok(Response::new("handled".to_owned())))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut policy = AuthorizationPolicy::new();
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for _ in 0..r.u8() % 4 {
        let (rule, model) = rule(&mut r);
        policy = policy.allow(rule);
        allow.push(model);
    }
    for _ in 0..r.u8() % 4 {
        let (rule, model) = rule(&mut r);
        policy = policy.deny(rule);
        deny.push(model);
    }

    let method = match r.u8() {
        b if b >= 0xF0 => Method::from_bytes(r.bytes()).unwrap_or(Method::POST),
        b => Method::from_bytes(HTTP_METHODS[usize::from(b) % HTTP_METHODS.len()].as_bytes())
            .expect("pool methods are valid"),
    };
    let target = match r.u8() {
        b if b >= 0xC0 => r.bytes().to_vec(),
        b => PATHS[usize::from(b) % PATHS.len()].as_bytes().to_vec(),
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let mut builder = Request::builder().method(method).uri(uri);
    let ct = match r.u8() {
        b if b >= 0xF0 => r.bytes().to_vec(),
        b => CONTENT_TYPES[usize::from(b) % CONTENT_TYPES.len()]
            .as_bytes()
            .to_vec(),
    };
    if !ct.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(&ct)
    {
        builder = builder.header(http::header::CONTENT_TYPE, v);
    }
    let header_name = r.bytes().to_vec();
    let header_value = r.bytes().to_vec();
    if let (Ok(n), Ok(v)) = (
        http::HeaderName::from_bytes(&header_name),
        HeaderValue::from_bytes(&header_value),
    ) {
        builder = builder.header(n, v);
    }
    let Ok(mut request) = builder.body(()) else {
        return;
    };
    if r.bool() {
        let id = string_from(&mut r, &IDS);
        if let Ok(id) = id.parse::<SpiffeId>() {
            request.extensions_mut().insert(PeerIdentity::new(id));
        }
    }

    let recorder = Recorder::default();
    let seen = recorder.0.clone();
    let mut service = InboundLayer::new(Some(policy)).layer(recorder);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = pin!(service.call(request));
    let Poll::Ready(Ok(response)) = future.poll(&mut cx) else {
        panic!("the layer over a ready service did not answer at once");
    };

    let seen = seen.lock().expect("one thread").take();
    match seen {
        None => {
            let status = response.status();
            let grpc_denied = response
                .headers()
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() != b"0");
            assert!(
                status.is_client_error() || status.is_server_error() || grpc_denied,
                "the service did not run but the answer is {status}"
            );
            assert!(response.body().is_empty(), "a refusal carries a body");
        }
        Some(seen) => {
            let views = views(
                &seen.method,
                &seen.path,
                seen.content_type.as_ref(),
                seen.peer.as_deref(),
            );
            for v in &views {
                if let Some(i) = deny.iter().position(|rule| rule_matches(rule, v)) {
                    panic!(
                        "deny rule {i} ({:?}) bypassed: {:?} {:?} (content-type {:?}, peer {:?}) \
                         reached the service",
                        deny[i], v.method, seen.path, seen.content_type, v.peer
                    );
                }
            }
            assert!(
                views
                    .iter()
                    .any(|v| allow.iter().any(|rule| rule_matches(rule, v))),
                "allowed without an allow rule: {seen:?}"
            );
        }
    }
});
