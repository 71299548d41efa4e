use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer as _, ServiceExt as _};

use super::*;
use crate::identity::testing::{Flaw, TestCa};
use crate::identity::{MtlsConfig, PeerIdentity, StaticSource, Svid};

fn peer(id: &str) -> PeerIdentity {
    PeerIdentity::new(id.parse().unwrap())
}

fn grpc_request(path: &str) -> http::Request<()> {
    http::Request::post(path)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

fn attrs<'a>(req: &'a http::Request<()>, peer: Option<&'a PeerIdentity>) -> RequestAttributes<'a> {
    RequestAttributes::of(req, peer).unwrap()
}

#[test]
fn deny_rules_win_then_allow_rules_then_default_deny() {
    let policy = AuthorizationPolicy::new()
        .allow(
            Rule::any()
                .principal(Principal::TrustDomain("example.org".parse().unwrap()))
                .operation(Operation::grpc_service("helloworld.Greeter")),
        )
        .deny(Rule::any().principal(Principal::Id(
            "spiffe://example.org/intruder".parse().unwrap(),
        )));
    let greet = grpc_request("/helloworld.Greeter/SayHello");
    let other = grpc_request("/admin.Admin/Shutdown");
    let friend = peer("spiffe://example.org/client");
    let intruder = peer("spiffe://example.org/intruder");
    let stranger = peer("spiffe://elsewhere.org/client");

    assert_eq!(
        policy.decide(&attrs(&greet, Some(&friend))),
        Decision::Allow(0)
    );
    assert_eq!(
        policy.decide(&attrs(&greet, Some(&intruder))),
        Decision::Deny(DenyReason::DenyRule(0))
    );
    assert_eq!(
        policy.decide(&attrs(&greet, Some(&stranger))),
        Decision::Deny(DenyReason::NotAllowed)
    );
    assert_eq!(
        policy.decide(&attrs(&other, Some(&friend))),
        Decision::Deny(DenyReason::NotAllowed)
    );
    assert_eq!(
        policy.decide(&attrs(&greet, None)),
        Decision::Deny(DenyReason::NotAllowed)
    );
}

#[test]
fn an_empty_policy_denies_everything_and_rule_any_allows_everything() {
    let req = grpc_request("/a.B/C");
    let id = peer("spiffe://example.org/x");
    assert_eq!(
        AuthorizationPolicy::new().decide(&attrs(&req, Some(&id))),
        Decision::Deny(DenyReason::NotAllowed)
    );
    let open = AuthorizationPolicy::new().allow(Rule::any());
    assert_eq!(open.decide(&attrs(&req, None)), Decision::Allow(0));
}

#[test]
fn principals_cover_authenticated_and_plaintext_callers() {
    let req = http::Request::get("/health").body(()).unwrap();
    let id = peer("spiffe://example.org/x");
    let authenticated =
        AuthorizationPolicy::new().allow(Rule::any().principal(Principal::Authenticated));
    assert_eq!(
        authenticated.decide(&attrs(&req, Some(&id))),
        Decision::Allow(0)
    );
    assert!(matches!(
        authenticated.decide(&attrs(&req, None)),
        Decision::Deny(_)
    ));
    let plaintext =
        AuthorizationPolicy::new().allow(Rule::any().principal(Principal::Unauthenticated));
    assert_eq!(plaintext.decide(&attrs(&req, None)), Decision::Allow(0));
    assert!(matches!(
        plaintext.decide(&attrs(&req, Some(&id))),
        Decision::Deny(_)
    ));
}

#[test]
fn grpc_rules_match_the_path_whatever_the_content_type() {
    let method = Operation::grpc_method("helloworld.Greeter", "SayHello");
    let policy = AuthorizationPolicy::new().allow(Rule::any().operation(method));
    let ok = grpc_request("/helloworld.Greeter/SayHello");
    assert_eq!(policy.decide(&attrs(&ok, None)), Decision::Allow(0));
    for path in [
        "/helloworld.Greeter/SayHelloAgain",
        "/helloworld.Greeter/SayHello/extra",
        "/helloworld.Greeter/",
        "//SayHello",
    ] {
        let req = grpc_request(path);
        assert!(
            matches!(policy.decide(&attrs(&req, None)), Decision::Deny(_)),
            "{path}"
        );
    }
    // tonic serves the method whatever the content type says, so the rule applies too.
    let plain = http::Request::post("/helloworld.Greeter/SayHello")
        .body(())
        .unwrap();
    assert_eq!(policy.decide(&attrs(&plain, None)), Decision::Allow(0));
    // The content type only picks the form of a refusal.
    for (ct, grpc) in [
        ("application/grpc", true),
        ("application/grpc+proto", true),
        ("application/grpc;charset=utf-8", true),
        ("Application/GRPC", true),
        ("application/grpc-web", false),
        ("application/grp", false),
        ("application/json", false),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", ct.parse().unwrap());
        assert_eq!(policy::is_grpc(&headers), grpc, "{ct}");
    }
}

/// The forms an attacker with a valid SVID might try, each with the decision a policy that
/// allows everything but `helloworld.Greeter/SayHello`, the service `admin.Admin`, the path
/// `/admin` and the paths under `/private/` must reach: `None` for allowed, `Some(true)` for
/// denied by a rule, `Some(false)` for refused as unnormalisable.
const ATTACKS: &[(&str, Option<&str>, Option<bool>)] = &[
    // The plain forms.
    (
        "/helloworld.Greeter/SayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/helloworld.Greeter/SayHelloAgain",
        Some("application/grpc"),
        None,
    ),
    // Content types tonic ignores.
    (
        "/helloworld.Greeter/SayHello",
        Some("application/octet-stream"),
        Some(true),
    ),
    (
        "/helloworld.Greeter/SayHello",
        Some("Application/grpc"),
        Some(true),
    ),
    (
        "/helloworld.Greeter/SayHello",
        Some("application/grpc-web"),
        Some(true),
    ),
    ("/helloworld.Greeter/SayHello", None, Some(true)),
    // Spellings of the same method.
    (
        "//helloworld.Greeter/SayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/helloworld.Greeter//SayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/helloworld.Greeter/./SayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/./helloworld.Greeter/SayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/x/../helloworld.Greeter/SayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/helloworld.Greeter/%53ayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/helloworld.Greeter/%53%61%79%48%65%6c%6c%6f",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/helloworld%2EGreeter/SayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/helloworld.Greeter/%2e/SayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/helloworld.Greeter/x/%2E%2E/SayHello",
        Some("application/grpc"),
        Some(true),
    ),
    (
        "/helloworld.Greeter/SayHello?x=1",
        Some("application/grpc"),
        Some(true),
    ),
    // Spellings that cannot be normalised.
    (
        "/helloworld.Greeter%2FSayHello",
        Some("application/grpc"),
        Some(false),
    ),
    (
        "/helloworld.Greeter%2fSayHello",
        Some("application/grpc"),
        Some(false),
    ),
    (
        "/helloworld.Greeter%5CSayHello",
        Some("application/grpc"),
        Some(false),
    ),
    (
        "/helloworld.Greeter\\SayHello",
        Some("application/grpc"),
        Some(false),
    ),
    (
        "/helloworld.Greeter/SayHello%00",
        Some("application/grpc"),
        Some(false),
    ),
    (
        "/helloworld.Greeter/SayHello%",
        Some("application/grpc"),
        Some(false),
    ),
    (
        "/helloworld.Greeter/%5",
        Some("application/grpc"),
        Some(false),
    ),
    (
        "/helloworld.Greeter/%zzSayHello",
        Some("application/grpc"),
        Some(false),
    ),
    (
        "/../helloworld.Greeter/SayHello",
        Some("application/grpc"),
        Some(false),
    ),
    (
        "/%2e%2e/helloworld.Greeter/SayHello",
        Some("application/grpc"),
        Some(false),
    ),
    ("*", None, Some(false)),
    // Case is significant (tonic routes case-sensitively): other methods, allowed.
    (
        "/helloworld.Greeter/sayhello",
        Some("application/grpc"),
        None,
    ),
    (
        "/Helloworld.greeter/SayHello",
        Some("application/grpc"),
        None,
    ),
    // A trailing segment is another method to tonic's generated code.
    (
        "/helloworld.Greeter/SayHello/",
        Some("application/grpc"),
        None,
    ),
    // Every method of a denied service, however spelled.
    (
        "/admin.Admin/Shutdown",
        Some("application/grpc"),
        Some(true),
    ),
    ("/admin.Admin/Shutdown/again", None, Some(true)),
    ("//admin.Admin//Shutdown", None, Some(true)),
    ("/%61dmin.Admin/Shutdown", Some("text/plain"), Some(true)),
    ("/admin.Admin", Some("application/grpc"), None),
    ("/admin.Admin/", Some("application/grpc"), None),
    (
        "/admin.Administrator/Shutdown",
        Some("application/grpc"),
        None,
    ),
    // Paths.
    ("/admin", None, Some(true)),
    ("//admin", None, Some(true)),
    ("/./admin", None, Some(true)),
    ("/public/../admin", None, Some(true)),
    ("/%61dmin", None, Some(true)),
    ("/%61%64%6D%69%6E", None, Some(true)),
    ("/admin?debug=1", None, Some(true)),
    ("/admin/", None, None),
    ("/Admin", None, None),
    ("/private/keys", None, Some(true)),
    ("/private//keys", None, Some(true)),
    ("//private/keys", None, Some(true)),
    ("/public/../private/keys", None, Some(true)),
    ("/private/x/../keys", None, Some(true)),
    ("/private/.", None, Some(true)),
    ("/private/x/..", None, Some(true)),
    ("/private", None, None),
    ("/%70rivate/keys", None, Some(true)),
    ("/public%2F..%2Fprivate/keys", None, Some(false)),
    ("/public%5C..%5Cprivate/keys", None, Some(false)),
    ("/public/..%2Fprivate/keys", None, Some(false)),
    ("/public/%2e%2e/%2e%2e/private/keys", None, Some(false)),
    ("/public/file", None, None),
];

fn attack_policy() -> AuthorizationPolicy {
    AuthorizationPolicy::new()
        .allow(Rule::any())
        .deny(Rule::any().operation(Operation::grpc_method("helloworld.Greeter", "SayHello")))
        .deny(Rule::any().operation(Operation::grpc_service("admin.Admin")))
        .deny(Rule::any().operation(Operation::Path("/admin".into())))
        .deny(Rule::any().operation(Operation::path_prefix("/private/")))
}

fn attack_request(path: &str, content_type: Option<&str>) -> http::Request<()> {
    let mut req = http::Request::post(path);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.body(()).unwrap()
}

#[test]
fn deny_rules_hold_for_every_spelling_that_reaches_the_handler() {
    let policy = attack_policy();
    let caller = peer("spiffe://example.org/ns/default/sa/attacker");
    let mut wrong = Vec::new();
    for &(path, ct, want) in ATTACKS {
        let got = policy.evaluate(&attack_request(path, ct), Some(&caller));
        let got = match got {
            Decision::Allow(_) => None,
            Decision::Deny(DenyReason::InvalidPath(_)) => Some(false),
            Decision::Deny(_) => Some(true),
        };
        if got != want {
            wrong.push(format!("{path} ({ct:?}): {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn allow_rules_are_not_widened() {
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any().operation(Operation::grpc_method("helloworld.Greeter", "SayHello")))
        .allow(Rule::any().operation(Operation::path_prefix("/public/")));
    for path in [
        "/helloworld.Greeter/SayHelloAgain",
        "/helloworld.Greeter/sayhello",
        "/helloworld.greeter/SayHello",
        "/helloworld.Greeter/SayHello/",
        "/helloworld.Greeter/SayHello/x",
        "/helloworld.Greeter/SayHello/..",
        "/helloworld.Greeter/SayHello%2F..%2FOther",
        "/helloworld.Greeter/SayHello%2Fx",
        "/public/../private",
        "/public/%2e%2e/private",
        "/public/..",
        "/public%2F../private",
        "/public",
        "/publicity",
    ] {
        let got = policy.evaluate(&grpc_request(path), None);
        assert!(matches!(got, Decision::Deny(_)), "{path}: {got:?}");
    }
    for path in [
        "/helloworld.Greeter/SayHello",
        "/x/../helloworld.Greeter/SayHello",
        "/public/a/../b",
    ] {
        let got = policy.evaluate(&grpc_request(path), None);
        assert!(matches!(got, Decision::Allow(_)), "{path}: {got:?}");
    }
}

#[test]
fn paths_normalise_as_documented() {
    for (raw, normal) in [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("//", "/"),
        ("///a//b///", "/a/b/"),
        ("/.", "/"),
        ("/./", "/"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/a/./b/../c", "/a/c"),
        ("/a//../b", "/b"),
        ("/a/.../b", "/a/.../b"),
        ("/a/..b/.c", "/a/..b/.c"),
        ("/%41%5a%61%7A%30%39%2D%2E%5F%7E", "/AZaz09-._~"),
        ("/a/%2e%2E/b", "/b"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/a%20b%3f%23%25", "/a%20b%3F%23%25"),
        ("/a b\"<>[]^`{|}", "/a%20b%22%3C%3E%5B%5D%5E%60%7B%7C%7D"),
        ("/a?b#c", "/a%3Fb%23c"),
        ("/!$&'()*+,;=:@", "/!$&'()*+,;=:@"),
        ("/%21%3B%3D%40%2b%3a", "/!;=@+:"),
        ("/%3F%23%5B%5D%25", "/%3F%23%5B%5D%25"),
        ("/Pkg.Svc/Method", "/Pkg.Svc/Method"),
    ] {
        assert_eq!(normalize_path(raw).as_deref(), Ok(normal), "{raw}");
    }
    for (raw, error) in [
        ("", PathError::NotOriginForm),
        ("*", PathError::NotOriginForm),
        ("a/b", PathError::NotOriginForm),
        ("http://host/a", PathError::NotOriginForm),
        ("/a%2Fb", PathError::EscapedSlash),
        ("/a%2fb", PathError::EscapedSlash),
        ("/a%5Cb", PathError::EscapedSlash),
        ("/a%5cb", PathError::EscapedSlash),
        ("/a\\b", PathError::Backslash),
        ("/a%00", PathError::Nul),
        ("/a\0", PathError::Nul),
        ("/a%", PathError::InvalidPercentEncoding),
        ("/a%4", PathError::InvalidPercentEncoding),
        ("/a%g0", PathError::InvalidPercentEncoding),
        ("/a%+1", PathError::InvalidPercentEncoding),
        ("/a%\u{e9}", PathError::InvalidPercentEncoding),
        ("/..", PathError::EscapesRoot),
        ("/a/../..", PathError::EscapesRoot),
        ("/a/../../b", PathError::EscapesRoot),
        ("/%2e%2e", PathError::EscapesRoot),
        ("/.%2e/", PathError::EscapesRoot),
    ] {
        assert_eq!(normalize_path(raw), Err(error), "{raw:?}");
    }
    // Normal paths cost no allocation.
    for raw in ["/", "/a/b/", "/helloworld.Greeter/SayHello", "/%C3%A9"] {
        assert!(
            matches!(normalize_path(raw), Ok(std::borrow::Cow::Borrowed(_))),
            "{raw}"
        );
    }
}

/// Every path up to five bytes over an alphabet of the characters that matter: the normal
/// form never panics, is a fixed point (borrowed when normalised again), starts with `/`,
/// and has no empty, `.` or `..` segment before its end.
#[test]
fn normalisation_is_total_and_idempotent_on_small_paths() {
    const ALPHABET: &[u8] = b"/.%2eFa\\";
    let mut paths = vec![String::from("/")];
    let mut frontier = paths.clone();
    for _ in 0..5 {
        let mut next = Vec::new();
        for path in &frontier {
            for &b in ALPHABET {
                let mut p = path.clone();
                p.push(char::from(b));
                next.push(p);
            }
        }
        paths.extend(next.iter().cloned());
        frontier = next;
    }
    assert!(paths.len() > 30_000);
    for path in &paths {
        let Ok(normal) = normalize_path(path) else {
            continue;
        };
        assert!(
            matches!(normalize_path(&normal), Ok(std::borrow::Cow::Borrowed(_))),
            "{path} -> {normal}"
        );
        assert!(normal.starts_with('/'), "{path} -> {normal}");
        let segments: Vec<&str> = normal[1..].split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            assert!(
                (last || !segment.is_empty()) && *segment != "." && *segment != "..",
                "{path} -> {normal}"
            );
        }
    }
}

#[test]
fn a_get_rule_covers_head_which_routers_serve_with_the_get_handler() {
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any())
        .deny(Rule::any().operation(Operation::HttpMethod(http::Method::GET)));
    let head = http::Request::head("/x").body(()).unwrap();
    assert_eq!(
        policy.evaluate(&head, None),
        Decision::Deny(DenyReason::DenyRule(0))
    );
    let post = http::Request::post("/x").body(()).unwrap();
    assert_eq!(policy.evaluate(&post, None), Decision::Allow(0));
}

#[test]
fn http_operations_match_paths_and_methods() {
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any().operation(Operation::path_prefix("/public/")))
        .allow(
            Rule::any()
                .operation(Operation::Path("/status".into()))
                .operation(Operation::HttpMethod(http::Method::HEAD)),
        );
    let get = |p: &str| http::Request::get(p).body(()).unwrap();
    assert_eq!(
        policy.decide(&attrs(&get("/public/a"), None)),
        Decision::Allow(0)
    );
    let head = |p: &str| http::Request::head(p).body(()).unwrap();
    assert_eq!(
        policy.decide(&attrs(&head("/status"), None)),
        Decision::Allow(1)
    );
    // A path and a method in one rule both apply: GET /status is not HEAD, HEAD /anything
    // neither `/status` nor under `/public/`.
    for req in [get("/status"), get("/status/x"), head("/anything")] {
        assert_eq!(
            policy.decide(&attrs(&req, None)),
            Decision::Deny(DenyReason::NotAllowed),
            "{} {}",
            req.method(),
            req.uri()
        );
    }
}

fn request(method: http::Method, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap()
}

#[test]
fn operations_of_different_kinds_all_apply_and_of_one_kind_any() {
    use http::Method;
    let policy = AuthorizationPolicy::new().allow(
        Rule::any()
            .operation(Operation::Path("/status".into()))
            .operation(Operation::path_prefix("/health/"))
            .operation(Operation::HttpMethod(Method::GET))
            .operation(Operation::HttpMethod(Method::POST)),
    );
    for (method, path, want) in [
        (Method::GET, "/status", Decision::Allow(0)),
        (Method::POST, "/health/x", Decision::Allow(0)),
        (
            Method::GET,
            "/anything",
            Decision::Deny(DenyReason::NotAllowed),
        ),
        (
            Method::DELETE,
            "/status",
            Decision::Deny(DenyReason::NotAllowed),
        ),
        (
            Method::PUT,
            "/health/x",
            Decision::Deny(DenyReason::NotAllowed),
        ),
    ] {
        let got = policy.evaluate(&request(method.clone(), path), None);
        assert_eq!(got, want, "{method} {path}");
    }
    // The same for a deny rule: it denies DELETE on /admin, not every DELETE nor every
    // request for /admin.
    let policy = AuthorizationPolicy::new().allow(Rule::any()).deny(
        Rule::any()
            .operation(Operation::Path("/admin".into()))
            .operation(Operation::HttpMethod(Method::DELETE)),
    );
    for (method, path, want) in [
        (
            Method::DELETE,
            "/admin",
            Decision::Deny(DenyReason::DenyRule(0)),
        ),
        (
            Method::DELETE,
            "//admin",
            Decision::Deny(DenyReason::DenyRule(0)),
        ),
        (Method::GET, "/admin", Decision::Allow(0)),
        (Method::DELETE, "/other", Decision::Allow(0)),
    ] {
        let got = policy.evaluate(&request(method.clone(), path), None);
        assert_eq!(got, want, "{method} {path}");
    }
}

#[test]
fn a_get_allow_rule_does_not_admit_head() {
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any().operation(Operation::HttpMethod(http::Method::GET)));
    let head = http::Request::head("/x").body(()).unwrap();
    assert_eq!(
        policy.evaluate(&head, None),
        Decision::Deny(DenyReason::NotAllowed)
    );
    let get = http::Request::get("/x").body(()).unwrap();
    assert_eq!(policy.evaluate(&get, None), Decision::Allow(0));
}

#[test]
fn rule_paths_are_normalised_as_request_paths_are() {
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any())
        .deny(Rule::any().operation(Operation::Path("/users/jos\u{e9}".into())))
        .deny(Rule::any().operation(Operation::path_prefix("/%7euser")))
        .deny(Rule::any().operation(Operation::Path("/a|b".into())))
        .deny(Rule::any().operation(Operation::Path("/f/./x//y/../z".into())))
        .deny(Rule::any().operation(Operation::path_prefix("/docs/.")))
        .deny(Rule::any().operation(Operation::grpc_method("pkg.Svc", "M%C3%A9thod")));
    for (path, want) in [
        ("/users/jos%c3%a9", Some(0)),
        ("/users/jos%C3%A9", Some(0)),
        ("/users/jose", None),
        ("/~user/x", Some(1)),
        ("/%7Euser", Some(1)),
        ("/~username", Some(1)),
        ("/a%7cb", Some(2)),
        ("/a%7Cb", Some(2)),
        ("/f/x/z", Some(3)),
        ("/f/x/y/z", None),
        // A prefix's last segment is a prefix of a segment, not a `.` segment to resolve.
        ("/docs/.env", Some(4)),
        ("/docs/x", None),
        ("/pkg.Svc/M%c3%a9thod", Some(5)),
    ] {
        let want = match want {
            Some(index) => Decision::Deny(DenyReason::DenyRule(index)),
            None => Decision::Allow(0),
        };
        let got = policy.evaluate(&http::Request::get(path).body(()).unwrap(), None);
        assert_eq!(got, want, "{path}");
    }
}

#[test]
fn an_unnormalisable_rule_path_denies_more_and_allows_nothing() {
    // A deny rule whose path cannot be normalised denies every request it could be about...
    let policy = AuthorizationPolicy::new().allow(Rule::any()).deny(
        Rule::any()
            .principal(Principal::Unauthenticated)
            .operation(Operation::Path("/a%2Fb".into())),
    );
    let any = http::Request::get("/x").body(()).unwrap();
    assert_eq!(
        policy.evaluate(&any, None),
        Decision::Deny(DenyReason::DenyRule(0))
    );
    // ...still only for its principals.
    let id = peer("spiffe://example.org/x");
    assert_eq!(policy.evaluate(&any, Some(&id)), Decision::Allow(0));
    // An allow rule whose path cannot be normalised allows nothing.
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any().operation(Operation::path_prefix("/x%")))
        .allow(Rule::any().operation(Operation::grpc_method("pkg.Svc", "a/b")));
    for path in ["/x%25", "/x%2541", "/pkg.Svc/a/b"] {
        let req = http::Request::get(path).body(()).unwrap();
        assert_eq!(
            policy.evaluate(&req, None),
            Decision::Deny(DenyReason::NotAllowed),
            "{path}"
        );
    }
}

#[test]
fn try_operation_names_the_operation_that_has_no_normal_form() {
    for (operation, error) in [
        (
            Operation::Path("/a%2Fb".into()),
            Some(PathError::EscapedSlash),
        ),
        (
            Operation::Path("/../a".into()),
            Some(PathError::EscapesRoot),
        ),
        (
            Operation::path_prefix("admin"),
            Some(PathError::NotOriginForm),
        ),
        (
            Operation::path_prefix("/x%"),
            Some(PathError::InvalidPercentEncoding),
        ),
        (Operation::grpc_service("a/b"), None),
        (Operation::grpc_service(""), None),
        (Operation::grpc_service("%2E"), None),
        (Operation::grpc_method("pkg.Svc", ""), None),
        (Operation::grpc_method("pkg.Svc", "."), None),
    ] {
        let invalid = Rule::any().try_operation(operation.clone()).unwrap_err();
        assert_eq!(invalid.operation(), &operation);
        assert_eq!(invalid.path_error(), error, "{operation:?}");
        assert_eq!(
            std::error::Error::source(&invalid).map(|e| e.to_string()),
            error.map(|e| e.to_string())
        );
    }
    let rule = Rule::any()
        .try_operation(Operation::grpc_method("pkg.Svc", "M%65thod"))
        .unwrap()
        .try_operation(Operation::HttpMethod(http::Method::POST))
        .unwrap();
    let policy = AuthorizationPolicy::new().allow(rule);
    let call = http::Request::post("/pkg.Svc/Method").body(()).unwrap();
    assert_eq!(policy.evaluate(&call, None), Decision::Allow(0));
}

#[test]
fn escaped_sub_delims_are_decoded_as_the_handler_sees_them() {
    let policy = AuthorizationPolicy::new()
        .allow(Rule::any())
        .deny(Rule::any().operation(Operation::Path("/f/a+b".into())))
        .deny(Rule::any().operation(Operation::Path("/g/:x@y=z;!$&'()*,".into())));
    for (path, want) in [
        ("/f/a%2Bb", 0),
        ("/f/a%2bb", 0),
        ("/g/%3Ax%40y%3Dz%3B%21%24%26%27%28%29%2A%2C", 1),
    ] {
        let got = policy.evaluate(&http::Request::get(path).body(()).unwrap(), None);
        assert_eq!(got, Decision::Deny(DenyReason::DenyRule(want)), "{path}");
    }
}

/// A service answering with the caller's SPIFFE ID as seen in the extensions.
fn echo_peer() -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|req: http::Request<()>| async move {
        let who = req
            .extensions()
            .get::<PeerIdentity>()
            .map(|p| p.spiffe_id().to_string())
            .unwrap_or_default();
        Ok::<_, Infallible>(http::Response::new(who))
    })
}

fn with_connection(mut req: http::Request<()>, peer: Option<PeerIdentity>) -> http::Request<()> {
    let addr = "127.0.0.1:1".parse().unwrap();
    req.extensions_mut()
        .insert(ConnectionInfo::new(addr, addr, peer));
    req
}

#[tokio::test]
async fn the_layer_gives_handlers_the_peer_and_answers_denials_itself() {
    let policy = AuthorizationPolicy::new().allow(Rule::any().principal(Principal::Id(
        "spiffe://example.org/friend".parse().unwrap(),
    )));
    let svc = InboundLayer::new(Some(policy)).layer(echo_peer());

    let friend = peer("spiffe://example.org/friend");
    let ok = svc
        .clone()
        .oneshot(with_connection(grpc_request("/a.B/C"), Some(friend)))
        .await
        .unwrap();
    assert_eq!(ok.body(), "spiffe://example.org/friend");
    assert!(ok.extensions().get::<AuthorizationDenied>().is_none());

    let foe = peer("spiffe://example.org/foe");
    let denied = svc
        .clone()
        .oneshot(with_connection(grpc_request("/a.B/C"), Some(foe)))
        .await
        .unwrap();
    assert_eq!(denied.status(), http::StatusCode::OK);
    assert_eq!(denied.headers()["grpc-status"], "7");
    assert_eq!(denied.headers()["content-type"], "application/grpc");
    assert_eq!(denied.body(), "", "the service never ran");
    let why = denied.extensions().get::<AuthorizationDenied>().unwrap();
    assert_eq!(
        why.peer.as_ref().unwrap().to_string(),
        "spiffe://example.org/foe"
    );
    assert_eq!(why.reason, DenyReason::NotAllowed);
    assert_eq!(
        why.to_string(),
        "spiffe://example.org/foe is not allowed to call /a.B/C"
    );
    assert_eq!(
        std::error::Error::source(why).unwrap().to_string(),
        "no allow rule matched"
    );

    let http_denied = svc
        .clone()
        .oneshot(with_connection(
            http::Request::get("/x").body(()).unwrap(),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(http_denied.status(), http::StatusCode::FORBIDDEN);
    assert!(http_denied.headers().get("grpc-status").is_none());
}

/// A service answering with the request's URI as it received it.
fn echo_uri() -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|req: http::Request<()>| async move {
        Ok::<_, Infallible>(http::Response::new(req.uri().to_string()))
    })
}

#[tokio::test]
async fn the_service_receives_the_path_the_policy_judged() {
    let svc = InboundLayer::new(Some(attack_policy())).layer(echo_uri());
    for (uri, seen) in [
        ("/a/./b//c?x=1&y=%2F", "/a/b/c?x=1&y=%2F"),
        (
            "/helloworld.Greeter/%53ayBy%65",
            "/helloworld.Greeter/SayBye",
        ),
        ("/public/../other", "/other"),
        ("/already/normal?q", "/already/normal?q"),
        ("https://greeter/a//b", "https://greeter/a/b"),
    ] {
        let req = with_connection(
            http::Request::get(uri).body(()).unwrap(),
            Some(peer("spiffe://example.org/ns/default/sa/friend")),
        );
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::OK, "{uri}");
        assert_eq!(res.body(), seen, "{uri}");
    }
    // Without a policy nothing is judged, so nothing is rewritten.
    let open = InboundLayer::new(None).layer(echo_uri());
    let res = open
        .oneshot(http::Request::get("/a//b").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.body(), "/a//b");
}

#[tokio::test]
async fn an_unnormalisable_path_is_refused_with_400_or_internal() {
    let svc =
        InboundLayer::new(Some(AuthorizationPolicy::new().allow(Rule::any()))).layer(echo_uri());
    let res = svc
        .clone()
        .oneshot(http::Request::get("/a%2Fb").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::BAD_REQUEST);
    assert_eq!(res.body(), "", "the service never ran");
    let why = res.extensions().get::<AuthorizationDenied>().unwrap();
    assert_eq!(why.reason, DenyReason::InvalidPath(PathError::EscapedSlash));
    let source = std::error::Error::source(why).unwrap();
    assert_eq!(
        std::error::Error::source(source).unwrap().to_string(),
        PathError::EscapedSlash.to_string()
    );

    let grpc = http::Request::post("/../pkg.Svc/M")
        .header("content-type", "Application/grpc+proto")
        .body(())
        .unwrap();
    let res = svc.oneshot(grpc).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "13");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.body(), "");
}

#[tokio::test]
async fn without_a_policy_everything_passes_and_a_bare_peer_identity_is_used() {
    let svc = InboundLayer::new(None).layer(echo_peer());
    let mut req = http::Request::get("/x").body(()).unwrap();
    req.extensions_mut().insert(peer("spiffe://example.org/p"));
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.body(), "spiffe://example.org/p");
    let res = svc.oneshot(with_connection(
        http::Request::get("/x").body(()).unwrap(),
        None,
    ));
    assert_eq!(res.await.unwrap().status(), http::StatusCode::OK);
}

fn mtls(ca: &TestCa, svid: Option<Svid>) -> MtlsConfig {
    MtlsConfig::new(Arc::new(StaticSource::new(svid, ca.bundles())))
        .alpn_protocols(vec![b"h2".to_vec()])
}

async fn tls_client(
    addr: std::net::SocketAddr,
    config: &MtlsConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config.client_config().unwrap()));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

#[tokio::test]
async fn the_acceptor_yields_verified_connections_and_skips_failed_handshakes() {
    let ca = TestCa::new("example.org");
    let server = mtls(&ca, Some(ca.svid("/server")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut acceptor = MeshAcceptor::new(listener, &server).unwrap();
    let addr = acceptor.local_addr().unwrap();

    // A client with no SVID, one with an expired SVID, and one from another trust domain
    // fail their handshakes; none of them ends or blocks the stream.
    let other = TestCa::new("other.org");
    let bad_clients = [
        mtls(&ca, None),
        mtls(
            &ca,
            Some(ca.mint("/expired", Flaw::Expired).svid().unwrap()),
        ),
        mtls(&other, Some(other.svid("/client"))),
    ];
    let good = mtls(&ca, Some(ca.svid("/client")));
    let clients = async {
        for bad in &bad_clients {
            // The client may see the failure at once or on its first read.
            if let Ok(mut s) = tls_client(addr, bad).await {
                let mut buf = [0u8; 1];
                assert!(s.read(&mut buf).await.map(|n| n == 0).unwrap_or(true));
            }
        }
        let mut s = tls_client(addr, &good).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        s
    };
    let (mut accepted, _client) =
        tokio::join!(async { acceptor.next().await.unwrap().unwrap() }, clients);
    assert_eq!(
        accepted.info().peer().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/client"
    );
    assert_eq!(accepted.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(accepted.info().local_addr(), addr);
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_silent_client_neither_blocks_others_nor_stays_forever() {
    let ca = TestCa::new("example.org");
    let server = mtls(&ca, Some(ca.svid("/server")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(listener, &server)
        .unwrap()
        .handshake_timeout(Duration::from_millis(300));
    let addr = acceptor.local_addr().unwrap();
    let mut acceptor = Box::pin(acceptor);

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let good = mtls(&ca, Some(ca.svid("/client")));
    let (accepted, _client) =
        tokio::join!(async { acceptor.next().await.unwrap().unwrap() }, async {
            tls_client(addr, &good).await.unwrap()
        });
    assert!(accepted.info().peer().is_some());

    // Keep polling the acceptor (as a server does) while the silent client waits: the
    // server closes it once its handshake times out.
    let mut buf = [0u8; 1];
    let read = tokio::select! {
        r = silent.read(&mut buf) => r,
        _ = acceptor.next() => panic!("nothing else connects"),
    };
    assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
}

#[tokio::test]
async fn a_plaintext_acceptor_has_no_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut acceptor = MeshAcceptor::plaintext(listener);
    let addr = acceptor.local_addr().unwrap();
    let (accepted, _c) = tokio::join!(async { acceptor.next().await.unwrap().unwrap() }, async {
        TcpStream::connect(addr).await.unwrap()
    });
    assert!(accepted.info().peer().is_none());
    assert!(accepted.alpn_protocol().is_none());
}
