//! The authorization policy: allow and deny rules over who calls (SPIFFE ID, trust domain)
//! and what they call (gRPC service and method, HTTP path and method).
//!
//! Rules judge what the service will execute, not how the caller spelled it. Every rule
//! about a target (gRPC service, gRPC method, path, path prefix) is matched against one
//! string, the request's path in its normal form ([`normalize_path`]: escapes of characters
//! allowed raw decoded, slashes merged, dot segments resolved), and
//! [`InboundLayer`](super::InboundLayer) hands the service the request with that same path,
//! so a deny rule holds for every spelling that reaches the handler and an allow rule admits
//! no other. A path that cannot be
//! normalised safely (an escaped `/`, a `..` above the root, an invalid escape, a target
//! that is not `/…`) is refused before any rule is consulted.
//!
//! Rule strings are put in that same normal form when an operation is added to a
//! [`Rule`], so a rule may be written as a person writes a path (`/users/josé`, `/%7Euser`,
//! `/a|b`) and still match the requests a router serves for it. A rule string that has no
//! normal form (`/a%2Fb`, `/x%`, `../x`, a gRPC name with a `/`) fails closed:
//! [`Rule::try_operation`] returns it as an [`InvalidOperation`], and [`Rule::operation`]
//! keeps a marker that makes a **deny** rule match every path and an **allow** rule match
//! none, so a typo never turns into a rule that silently matches nothing.
//!
//! gRPC rules do not look at the content type: tonic and grpc-go dispatch a request on its
//! path whatever its `content-type` says, so `/helloworld.Greeter/SayHello` sent as
//! `application/octet-stream`, `Application/grpc` or with no content type is still a call to
//! `SayHello`. A gRPC method is the path `/package.Service/Method`, compared case-sensitively
//! (as tonic's router and generated code compare it); a gRPC service is every path
//! `/package.Service/…`, the routes tonic hands that service.

use std::borrow::Cow;

use meshwork_xds::bootstrap::is_path_byte;
use spiffe::{SpiffeId, TrustDomain};

use crate::identity::PeerIdentity;

/// Allow and deny rules, evaluated as Istio's `AuthorizationPolicy` and Envoy's RBAC filter
/// evaluate them:
///
/// 1. a request that matches any **deny** rule is denied;
/// 2. otherwise a request that matches any **allow** rule is allowed;
/// 3. otherwise it is denied: once a policy exists, what it does not allow is refused.
///
/// A policy with no allow rule therefore denies everything; to deny a few callers and allow
/// the rest, add `Rule::any()` as an allow rule. Having *no* policy (the server builders take
/// an `Option`) allows every request that passed the TLS handshake.
///
/// ```
/// use meshwork_core::inbound::{AuthorizationPolicy, Operation, Principal, Rule};
///
/// let policy = AuthorizationPolicy::new()
///     // Anyone in example.org may call the Greeter...
///     .allow(
///         Rule::any()
///             .principal(Principal::TrustDomain("example.org".parse().unwrap()))
///             .operation(Operation::grpc_service("helloworld.Greeter")),
///     )
///     // ...except this one workload.
///     .deny(Rule::any().principal(Principal::Id(
///         "spiffe://example.org/ns/default/sa/intruder".parse().unwrap(),
///     )));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl AuthorizationPolicy {
    /// A policy with no rules (it denies every request until rules allow some).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an allow rule.
    pub fn allow(mut self, rule: Rule) -> Self {
        self.allow.push(rule);
        self
    }

    /// Adds a deny rule.
    pub fn deny(mut self, rule: Rule) -> Self {
        self.deny.push(rule);
        self
    }

    /// The decision for `request` from `peer` (`None`: a plaintext caller): its path is
    /// normalised ([`normalize_path`]) and a path that cannot be is denied
    /// ([`DenyReason::InvalidPath`]), then [`decide`](Self::decide).
    ///
    /// This is the whole of [`InboundLayer`](super::InboundLayer)'s judgement, minus the
    /// response; it never panics, whatever the request.
    ///
    /// ```
    /// use meshwork_core::inbound::{AuthorizationPolicy, Decision, DenyReason, Operation, Rule};
    ///
    /// let policy = AuthorizationPolicy::new()
    ///     .allow(Rule::any())
    ///     .deny(Rule::any().operation(Operation::grpc_method("helloworld.Greeter", "SayHello")));
    /// // Not gRPC by its content type, and spelled differently: still that method.
    /// let sneaky = http::Request::post("/helloworld.Greeter//%53ayHello").body(()).unwrap();
    /// assert_eq!(policy.evaluate(&sneaky, None), Decision::Deny(DenyReason::DenyRule(0)));
    /// let escaped = http::Request::get("/a%2Fb").body(()).unwrap();
    /// assert!(matches!(
    ///     policy.evaluate(&escaped, None),
    ///     Decision::Deny(DenyReason::InvalidPath(_))
    /// ));
    /// ```
    pub fn evaluate<B>(&self, request: &http::Request<B>, peer: Option<&PeerIdentity>) -> Decision {
        match RequestAttributes::of(request, peer) {
            Ok(attributes) => self.decide(&attributes),
            Err(error) => Decision::Deny(DenyReason::InvalidPath(error)),
        }
    }

    /// The decision for one request whose attributes are already known.
    pub fn decide(&self, request: &RequestAttributes<'_>) -> Decision {
        if let Some(index) = self.deny.iter().position(|r| r.matches(request, true)) {
            return Decision::Deny(DenyReason::DenyRule(index));
        }
        match self.allow.iter().position(|r| r.matches(request, false)) {
            Some(index) => Decision::Allow(index),
            None => Decision::Deny(DenyReason::NotAllowed),
        }
    }
}

/// What one request is judged on: the caller and the request's method and normalised path.
///
/// The path is always the normalised one (see [`normalize_path`]): rules never see a raw
/// path, so no spelling of a path can match a rule that its normal form does not.
#[derive(Debug, Clone)]
pub struct RequestAttributes<'a> {
    peer: Option<&'a PeerIdentity>,
    method: &'a http::Method,
    path: Cow<'a, str>,
}

impl<'a> RequestAttributes<'a> {
    /// The attributes of a request for `path` (without its query) with `method`, from
    /// `peer` (`None`: a plaintext caller); `path` is normalised first.
    pub fn new(
        peer: Option<&'a PeerIdentity>,
        method: &'a http::Method,
        path: &'a str,
    ) -> Result<Self, PathError> {
        Ok(Self {
            peer,
            method,
            path: normalize_path(path)?,
        })
    }

    /// The attributes of `request`, with the connection's peer. Its content type plays no
    /// part: gRPC rules apply to every request whose path names the method, because a gRPC
    /// server (tonic, grpc-go) dispatches on the path alone.
    pub fn of<B>(
        request: &'a http::Request<B>,
        peer: Option<&'a PeerIdentity>,
    ) -> Result<Self, PathError> {
        Self::new(peer, request.method(), request.uri().path())
    }

    /// The caller's verified identity (`None` on a plaintext connection).
    pub fn peer(&self) -> Option<&'a PeerIdentity> {
        self.peer
    }

    /// The request's method.
    pub fn method(&self) -> &'a http::Method {
        self.method
    }

    /// The request's normalised path (without the query).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The gRPC service and method, from a `/package.Service/Method` path, whatever the
    /// request's content type.
    pub fn grpc_method(&self) -> Option<(&str, &str)> {
        let rest = self.path.strip_prefix('/')?;
        let (service, method) = rest.split_once('/')?;
        (!service.is_empty() && !method.is_empty() && !method.contains('/'))
            .then_some((service, method))
    }

    /// The normalised path, when it differs from the request's own: the path the service
    /// must be handed so that it executes what the policy judged.
    pub(crate) fn into_changed_path(self) -> Option<String> {
        match self.path {
            Cow::Owned(path) => Some(path),
            Cow::Borrowed(_) => None,
        }
    }
}

/// Whether `headers` say gRPC (`application/grpc`, `application/grpc+proto`, …; media types
/// are case-insensitive). This only picks the form of a refusal (a gRPC status or an HTTP
/// status); it never decides whether a rule applies.
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    const GRPC: &str = "application/grpc";
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.get(..GRPC.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(GRPC))
                && matches!(v.as_bytes().get(GRPC.len()), None | Some(b'+' | b';'))
        })
}

/// One rule, read as one entry of an Istio `AuthorizationPolicy` rule reads: it matches a
/// request when **all** of these hold:
///
/// - its caller matches **any** of the rule's principals (Istio's `from.source.principals`);
/// - its path matches **any** of the rule's path operations: [`Operation::GrpcService`],
///   [`Operation::GrpcMethod`], [`Operation::Path`] and [`Operation::PathPrefix`] (Istio's
///   `to.operation.paths`, where gRPC methods are paths too);
/// - its HTTP method is **any** of the rule's [`Operation::HttpMethod`]s (Istio's
///   `to.operation.methods`).
///
/// So operations of one kind are alternatives and operations of different kinds all apply:
/// a rule with the operations `Path("/status")` and `HttpMethod(GET)` is `GET /status`, not
/// "any GET, and `/status` by any method". To allow either, write two rules. A kind with no
/// entry matches anything, so `Rule::any()` matches every request.
///
/// Path strings are normalised ([`normalize_path`]) when the operation is added; see
/// [`operation`](Self::operation) for what happens to one that cannot be.
///
/// ```
/// use http::Method;
/// use meshwork_core::inbound::{AuthorizationPolicy, Decision, DenyReason, Operation, Rule};
///
/// let policy = AuthorizationPolicy::new().allow(
///     Rule::any()
///         .operation(Operation::Path("/status".into()))
///         .operation(Operation::path_prefix("/health/"))
///         .operation(Operation::HttpMethod(Method::GET)),
/// );
/// let get = |path| http::Request::get(path).body(()).unwrap();
/// assert_eq!(policy.evaluate(&get("/status"), None), Decision::Allow(0));
/// assert_eq!(policy.evaluate(&get("/health/db"), None), Decision::Allow(0));
/// let delete = http::Request::delete("/status").body(()).unwrap();
/// assert_eq!(policy.evaluate(&delete, None), Decision::Deny(DenyReason::NotAllowed));
/// assert_eq!(policy.evaluate(&get("/other"), None), Decision::Deny(DenyReason::NotAllowed));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    principals: Vec<Principal>,
    targets: Vec<Target>,
    methods: Vec<http::Method>,
}

impl Rule {
    /// A rule that matches every request; narrow it with [`principal`](Self::principal) and
    /// [`operation`](Self::operation).
    pub fn any() -> Self {
        Self::default()
    }

    /// Adds a principal (the rule matches callers that match any of its principals).
    pub fn principal(mut self, principal: Principal) -> Self {
        self.principals.push(principal);
        self
    }

    /// Adds an operation: an alternative to the rule's operations of the same kind (path
    /// operations, or HTTP methods), a further condition with those of the other kind (see
    /// [`Rule`]).
    ///
    /// A path string is put in normal form ([`normalize_path`]; for a prefix, its last
    /// segment is a prefix of a segment, so only its escapes are normalised). One that has
    /// none fails closed, since a rule that cannot be read must deny more, not less: in a
    /// deny rule it matches **every** path (the rule still needs its principals and
    /// methods), in an allow rule **no** path. Use [`try_operation`](Self::try_operation) to
    /// get the error instead.
    pub fn operation(mut self, operation: Operation) -> Self {
        match operation.compile() {
            Ok(Compiled::Method(method)) => self.methods.push(method),
            Ok(Compiled::Target(target)) => self.targets.push(target),
            Err(invalid) => self.targets.push(Target::Invalid(Box::new(invalid))),
        }
        self
    }

    /// [`operation`](Self::operation), or the error when the operation's path has no
    /// normal form.
    ///
    /// ```
    /// use meshwork_core::inbound::{Operation, PathError, Rule};
    ///
    /// let rule = Rule::any().try_operation(Operation::Path("/users/josé".into()));
    /// assert!(rule.is_ok());
    /// let invalid = Rule::any()
    ///     .try_operation(Operation::Path("/a%2Fb".into()))
    ///     .unwrap_err();
    /// assert_eq!(invalid.path_error(), Some(PathError::EscapedSlash));
    /// ```
    pub fn try_operation(mut self, operation: Operation) -> Result<Self, InvalidOperation> {
        match operation.compile()? {
            Compiled::Method(method) => self.methods.push(method),
            Compiled::Target(target) => self.targets.push(target),
        }
        Ok(self)
    }

    /// Whether the rule matches `request`; `deny` says which list the rule is in, since a
    /// rule that cannot be trusted must widen a deny and narrow an allow.
    fn matches(&self, request: &RequestAttributes<'_>, deny: bool) -> bool {
        (self.principals.is_empty() || self.principals.iter().any(|p| p.matches(request.peer)))
            && (self.targets.is_empty() || self.targets.iter().any(|t| t.matches(request, deny)))
            && (self.methods.is_empty()
                || self
                    .methods
                    .iter()
                    .any(|m| method_matches(m, request.method, deny)))
    }
}

/// Whether `method` in a rule matches a request's `got`. In a deny rule `GET` also matches
/// `HEAD`, which axum (and tonic's router) serve with the `GET` handler, so denying GET
/// denies what that handler would run. An allow rule matches exactly what it names, as
/// Istio's `methods` and Envoy's RBAC `:method` matcher do: `GET` does not admit `HEAD`,
/// which may reach an explicit HEAD handler.
fn method_matches(method: &http::Method, got: &http::Method, deny: bool) -> bool {
    got == method || (deny && method == http::Method::GET && got == http::Method::HEAD)
}

/// A path operation in the form it is matched in: strings in normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Paths `{0}…` with a non-empty rest; `{0}` is `/package.Service/`.
    GrpcService(String),
    /// Exactly this normal path (also a gRPC method, `/package.Service/Method`).
    Path(String),
    /// Normal paths starting with this.
    PathPrefix(String),
    /// An operation whose path has no normal form: every path in a deny rule, none in an
    /// allow rule.
    Invalid(Box<InvalidOperation>),
}

impl Target {
    fn matches(&self, request: &RequestAttributes<'_>, deny: bool) -> bool {
        match self {
            Self::GrpcService(prefix) => request
                .path()
                .strip_prefix(prefix.as_str())
                .is_some_and(|method| !method.is_empty()),
            Self::Path(path) => request.path() == path,
            Self::PathPrefix(prefix) => request.path().starts_with(prefix.as_str()),
            Self::Invalid(_) => deny,
        }
    }
}

/// What an [`Operation`] becomes in a [`Rule`].
enum Compiled {
    Target(Target),
    Method(http::Method),
}

/// Who a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Principal {
    /// Any caller with a verified SVID.
    Authenticated,
    /// Callers without one (plaintext connections).
    Unauthenticated,
    /// Exactly this SPIFFE ID.
    Id(SpiffeId),
    /// Any SPIFFE ID in this trust domain.
    TrustDomain(TrustDomain),
}

impl Principal {
    fn matches(&self, peer: Option<&PeerIdentity>) -> bool {
        match (self, peer) {
            (Self::Authenticated, peer) => peer.is_some(),
            (Self::Unauthenticated, peer) => peer.is_none(),
            (Self::Id(id), Some(peer)) => peer.spiffe_id() == id,
            (Self::TrustDomain(td), Some(peer)) => peer.trust_domain() == td,
            (Self::Id(_) | Self::TrustDomain(_), None) => false,
        }
    }
}

/// What a rule is about: a path operation (gRPC service or method, path, path prefix) or
/// an HTTP method. A [`Rule`] ORs operations of one kind and ANDs the two kinds.
///
/// Every string is normalised ([`normalize_path`]) when the operation is added to a rule,
/// so it may be written in any spelling that normalises to what the service serves; one
/// that cannot be normalised fails closed ([`Rule::operation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Any method of a gRPC service (`package.Service`, no `/`): every path
    /// `/package.Service/…`, the routes tonic hands that service.
    GrpcService(String),
    /// One method of a gRPC service: exactly the path `/package.Service/Method`.
    GrpcMethod {
        /// `package.Service`.
        service: String,
        /// `Method`.
        method: String,
    },
    /// A request whose normalised path is exactly this path's normal form (`/users/josé`,
    /// `/users/jos%c3%a9` and `/users/./jos%C3%A9` are one rule).
    Path(String),
    /// A request whose normalised path starts with this prefix's normal form (a plain
    /// string prefix: `/admin` also matches `/administrator`; end it with `/` to mean a
    /// directory). Its last segment is a prefix of a segment, so a final `.` or `..` is
    /// kept as written (`/docs/.` matches `/docs/.env`).
    PathPrefix(String),
    /// A request with this HTTP method. In a deny rule `GET` also matches `HEAD`, which
    /// axum and tonic route to the `GET` handler; in an allow rule it does not (as Istio's
    /// `methods` and Envoy's RBAC read it), so allow `HEAD` explicitly where it is wanted.
    HttpMethod(http::Method),
}

impl Operation {
    /// Any method of the gRPC service `service` (`package.Service`).
    pub fn grpc_service(service: impl Into<String>) -> Self {
        Self::GrpcService(service.into())
    }

    /// The method `method` of the gRPC service `service`.
    pub fn grpc_method(service: impl Into<String>, method: impl Into<String>) -> Self {
        Self::GrpcMethod {
            service: service.into(),
            method: method.into(),
        }
    }

    /// Requests whose path starts with `prefix`.
    pub fn path_prefix(prefix: impl Into<String>) -> Self {
        Self::PathPrefix(prefix.into())
    }

    /// The operation with its strings in normal form, as a rule matches it.
    fn compile(self) -> Result<Compiled, InvalidOperation> {
        let target = match &self {
            Self::HttpMethod(method) => return Ok(Compiled::Method(method.clone())),
            Self::GrpcService(service) => grpc_path(service, None).map(Target::GrpcService),
            Self::GrpcMethod { service, method } => {
                grpc_path(service, Some(method)).map(Target::Path)
            }
            Self::Path(path) => normalize_path(path)
                .map(|normal| Target::Path(normal.into_owned()))
                .map_err(Some),
            Self::PathPrefix(prefix) => normalize_prefix(prefix)
                .map(Target::PathPrefix)
                .map_err(Some),
        };
        target
            .map(Compiled::Target)
            .map_err(|error| InvalidOperation {
                operation: self,
                error,
            })
    }
}

/// The normal path of a gRPC service's routes (`/package.Service/`) or of one method
/// (`/package.Service/Method`); `Err(None)` when a name is empty or holds a `/`, so that
/// it is not one path segment.
fn grpc_path(service: &str, method: Option<&str>) -> Result<String, Option<PathError>> {
    let names = [Some(service), method];
    let mut raw = String::new();
    for name in names.into_iter().flatten() {
        if name.is_empty() || name.contains('/') {
            return Err(None);
        }
        raw.push('/');
        raw.push_str(name);
    }
    if method.is_none() {
        raw.push('/');
    }
    let normal = normalize_path(&raw)?;
    // A name that normalised away (`.`, `%2E`) leaves fewer segments than were written.
    let segments = normal.trim_matches('/').split('/');
    if segments.clone().count() != names.iter().flatten().count()
        || segments.into_iter().any(str::is_empty)
    {
        return Err(None);
    }
    Ok(normal.into_owned())
}

/// The normal form of a path prefix: its directory part (up to its last `/`) normalised as a
/// path, and its last, partial segment with its escapes normalised but no `.`/`..` meaning
/// (`/docs/..` as a prefix is about `/docs/..x`, not about `/`).
fn normalize_prefix(prefix: &str) -> Result<String, PathError> {
    let Some(cut) = prefix.rfind('/') else {
        return Err(PathError::NotOriginForm);
    };
    let (directory, partial) = prefix.split_at(cut + 1);
    let mut normal = normalize_path(directory)?.into_owned();
    normal.push_str(&canonical_escapes(partial)?);
    Ok(normal)
}

/// An [`Operation`] whose path has no normal form, so no request path could be compared
/// with it ([`Rule::try_operation`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the rule operation {operation:?} has no normalised path")]
pub struct InvalidOperation {
    operation: Operation,
    #[source]
    error: Option<PathError>,
}

impl InvalidOperation {
    /// The operation as it was written.
    pub fn operation(&self) -> &Operation {
        &self.operation
    }

    /// Why its path cannot be normalised (`None`: a gRPC service or method name that is
    /// empty, holds a `/` or normalises away, so is not one path segment).
    pub fn path_error(&self) -> Option<PathError> {
        self.error
    }
}

/// A policy's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the allow rule at this index.
    Allow(usize),
    /// Denied.
    Deny(DenyReason),
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenyReason {
    /// It matched the deny rule at this index.
    #[error("matched deny rule {0}")]
    DenyRule(usize),
    /// No allow rule matched.
    #[error("no allow rule matched")]
    NotAllowed,
    /// Its path cannot be normalised, so no rule can be trusted to see what the service
    /// would execute.
    #[error("the request path cannot be normalised")]
    InvalidPath(#[source] PathError),
}

/// Why a request path cannot be normalised (see [`normalize_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The request target is not in origin form (`/…`): `*`, an authority (`CONNECT`), or
    /// anything else that does not start with `/`.
    #[error("the request target is not an absolute path")]
    NotOriginForm,
    /// An escaped slash or backslash (`%2F`, `%5C`): whether it separates segments depends
    /// on who decodes it, so no rule could be sure which resource it names.
    #[error("the path contains an escaped slash or backslash")]
    EscapedSlash,
    /// A backslash, which some servers and frameworks take for a slash.
    #[error("the path contains a backslash")]
    Backslash,
    /// A NUL byte (`%00`), which ends strings in some consumers.
    #[error("the path contains a NUL byte")]
    Nul,
    /// A `%` not followed by two hex digits.
    #[error("the path contains an invalid percent-encoding")]
    InvalidPercentEncoding,
    /// A `..` segment that would climb above `/`.
    #[error("the path climbs above the root")]
    EscapesRoot,
}

/// The normal form of a request path, the one authorization rules are matched against and,
/// through [`InboundLayer`](super::InboundLayer), the one the service receives: what the
/// policy judged is what runs.
///
/// Anchored on Envoy's path normalisation (`normalize_path`, RFC 3986 section 6, with
/// `merge_slashes`), with its `path_with_escaped_slashes_action: REJECT_REQUEST`; Istio's
/// `MERGE_SLASHES` path normalisation is the closest of its options:
///
/// 1. an escaped character that may appear raw in a path segment is decoded: the
///    unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 section 2.3; `%53ayHello` is
///    `SayHello`, `%2e` is `.`), and also the sub-delimiters and `:` `@`
///    (`! $ & ' ( ) * + , ; = : @`, section 3.3; `%2B` is `+`). Every other escape is kept,
///    with upper-case hex digits (`%c3%a9` is `%C3%A9`), and a byte that may not appear raw
///    in a path (non-ASCII, `"`, `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`, a space, a
///    control character, `?`, `#`) is escaped the same way, so each character has one
///    spelling;
///
///    decoding the sub-delimiters is where this departs from Envoy, which keeps them escaped
///    because RFC 3986 (section 2.2) does not make `%2B` and `+` equivalent in general. For
///    an authorization decision the handler's view is what counts, and the handlers behind
///    this layer see them decoded: axum's `Path` extractor (and so a tonic or axum service)
///    percent-decodes a segment after routing, so with Envoy's rule a deny on `/f/a+b`
///    would let `/f/a%2Bb` reach the `/f/{name}` handler as `a+b`. Since the service is
///    handed the normal form, a router matching literal routes sees the decoded character
///    too;
/// 2. empty segments are dropped (`//a///b` is `/a/b`, Envoy's `merge_slashes`);
/// 3. `.` and `..` segments are resolved (RFC 3986 section 5.2.4: `/a/./b/../c` is `/a/c`,
///    and a path ending in one keeps a trailing `/`).
///
/// Case is kept: paths, and gRPC service and method names, are case-sensitive, as tonic's
/// router and its generated code compare them.
///
/// What cannot be normalised safely is an error ([`PathError`]), and the layer refuses the
/// request (400, or `grpc-status: 13` INTERNAL for gRPC, as Envoy answers a request it
/// rejects for its path): a target that is not `/…` (`*`, an authority; HTTP/1.1's
/// absolute form reaches the layer as its path), an escaped `/` or `\` (`%2F`, `%5C`), a raw
/// `\`, a NUL (`%00`), an invalid escape (`%`, `%4`, `%zz`), and a `..` that climbs above
/// the root (RFC 3986 would clamp it; a request doing so is an attack, not a typo).
///
/// The result borrows `path` when it is already normal (the common case costs one scan).
///
/// ```
/// use meshwork_core::inbound::{PathError, normalize_path};
///
/// assert_eq!(normalize_path("/pkg.Svc//./%4Dethod").unwrap(), "/pkg.Svc/Method");
/// assert_eq!(normalize_path("/a/b/../c/").unwrap(), "/a/c/");
/// assert_eq!(normalize_path("/a%2Fb"), Err(PathError::EscapedSlash));
/// assert_eq!(normalize_path("/../etc"), Err(PathError::EscapesRoot));
/// ```
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotOriginForm);
    };
    if is_normal(rest) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = canonical_escapes(rest)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/') {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
            }
            segment => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len() + 1);
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        normal.push('/');
    }
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// Whether `rest` (a path after its leading `/`) is already normal: no escape, no byte
/// needing one, no empty, `.` or `..` segment except a final empty one (a trailing `/`).
fn is_normal(rest: &str) -> bool {
    let bytes = rest.as_bytes();
    let mut segment_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if !is_path_byte(byte) {
            return false;
        }
        if byte == b'/' {
            if matches!(&bytes[segment_start..i], b"" | b"." | b"..") {
                return false;
            }
            segment_start = i + 1;
        }
    }
    !matches!(&bytes[segment_start..], b"." | b"..")
}

/// `rest` with every character spelled one way: escapes of bytes allowed raw decoded, other
/// escapes and the bytes that need one as upper-case `%XX`. Escapes that would become a separator
/// (or a NUL) are errors; the decoding never creates a `/`, so segments stay where they were.
fn canonical_escapes(rest: &str) -> Result<String, PathError> {
    fn hex(digit: u8) -> Option<u8> {
        char::from(digit).to_digit(16).map(|d| d as u8)
    }
    fn push_escaped(out: &mut String, byte: u8) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        out.push('%');
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    let bytes = rest.as_bytes();
    let mut out = String::with_capacity(rest.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        i += 1;
        match byte {
            b'%' => {
                let high = bytes.get(i).copied().and_then(hex);
                let low = bytes.get(i + 1).copied().and_then(hex);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                i += 2;
                match high << 4 | low {
                    b'/' | b'\\' => return Err(PathError::EscapedSlash),
                    0 => return Err(PathError::Nul),
                    // The escapes that cannot become a separator, decoded as handlers decode them.
                    b if is_path_byte(b) => out.push(char::from(b)),
                    b => push_escaped(&mut out, b),
                }
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b if is_path_byte(b) => out.push(char::from(b)),
            b => push_escaped(&mut out, b),
        }
    }
    Ok(out)
}
