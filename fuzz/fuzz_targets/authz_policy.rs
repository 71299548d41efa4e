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
//! received (the layer hands it the normalised path), viewed as a server routes on it: tonic
//! dispatches on the path whatever the content-type, so gRPC rules apply to every request;
//! and the path is also viewed RFC 3986-normalised by the harness's own code (unreserved
//! percent-escapes decoded, `//` merged, dot segments removed), as a normalising router
//! would route it. A deny rule must hold for every view; an allow rule for at least one.
//!
//! The model follows the policy's documented rule semantics: principals any-of, AND path
//! operations (gRPC service, gRPC method, path, prefix) any-of, AND HTTP methods any-of (an
//! empty group matches anything); a `GET` deny rule also covers `HEAD`. Rule strings are
//! judged as written, so inputs whose rule strings are not already in normal form (by
//! `normalize_path`, used only as a filter here) are run for "no panic" only.
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
use meshwork_core::inbound::{
    AuthorizationPolicy, InboundLayer, Operation, Principal, Rule, normalize_path,
};
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

/// Whether every rule string is already in normal form, so the model can compare it as
/// written (the policy normalises rule strings; an unnormalisable one fails closed).
fn model_can_judge(rule: &ModelRule) -> bool {
    let normal = |p: &str| normalize_path(p).is_ok_and(|n| n == p);
    let name = |n: &str| {
        !n.is_empty() && !n.contains('/') && n != "." && n != ".." && normal(&format!("/{n}"))
    };
    rule.operations.iter().all(|o| match o {
        ModelOp::GrpcService(s) => name(s),
        ModelOp::GrpcMethod(s, m) => name(s) && name(m),
        ModelOp::Path(p) | ModelOp::PathPrefix(p) => normal(p),
        ModelOp::HttpMethod(_) => true,
    })
}

/// One way of looking at the request the service received.
struct View<'a> {
    method: &'a Method,
    path: String,
    peer: Option<&'a str>,
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

/// Whether a path operation matches: a gRPC service is every `/service/…` with a non-empty
/// rest (tonic's route for it), a gRPC method exactly `/service/method`.
fn path_op_matches(o: &ModelOp, v: &View<'_>) -> Option<bool> {
    Some(match o {
        ModelOp::GrpcService(s) => v
            .path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(s.as_str()))
            .and_then(|p| p.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty()),
        ModelOp::GrpcMethod(s, m) => v.path == format!("/{s}/{m}"),
        ModelOp::Path(p) => &v.path == p,
        ModelOp::PathPrefix(p) => v.path.starts_with(p.as_str()),
        ModelOp::HttpMethod(_) => return None,
    })
}

fn method_op_matches(o: &ModelOp, v: &View<'_>, deny: bool) -> Option<bool> {
    let ModelOp::HttpMethod(m) = o else {
        return None;
    };
    Some(v.method == m || (deny && m == Method::GET && v.method == Method::HEAD))
}

fn rule_matches(rule: &ModelRule, v: &View<'_>, deny: bool) -> bool {
    let group = |f: &dyn Fn(&ModelOp) -> Option<bool>| {
        let results: Vec<bool> = rule.operations.iter().filter_map(f).collect();
        results.is_empty() || results.contains(&true)
    };
    (rule.principals.is_empty() || rule.principals.iter().any(|p| principal_matches(p, v.peer)))
        && group(&|o| path_op_matches(o, v))
        && group(&|o| method_op_matches(o, v, deny))
}

/// RFC 3986 normalisation as a normalising router applies it: percent-escapes of
/// unreserved characters decoded, `//` merged, dot segments removed.
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
fn views<'a>(method: &'a Method, path: &str, peer: Option<&'a str>) -> Vec<View<'a>> {
    vec![
        View {
            method,
            path: path.to_owned(),
            peer,
        },
        View {
            method,
            path: normalise(path),
            peer,
        },
    ]
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
            if !allow.iter().chain(&deny).all(model_can_judge) {
                return;
            }
            let views = views(&seen.method, &seen.path, seen.peer.as_deref());
            for v in &views {
                if let Some(i) = deny.iter().position(|rule| rule_matches(rule, v, true)) {
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
                    .any(|v| allow.iter().any(|rule| rule_matches(rule, v, false))),
                "allowed without an allow rule: {seen:?}"
            );
        }
    }
});
