//! The authorization policy: allow and deny rules over who calls (SPIFFE ID, trust domain)
//! and what they call (gRPC service and method, HTTP path and method).

use std::fmt;

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

    /// The decision for one request.
    pub fn decide(&self, request: &RequestAttributes<'_>) -> Decision {
        if let Some(index) = self.deny.iter().position(|r| r.matches(request)) {
            return Decision::Deny(DenyReason::DenyRule(index));
        }
        match self.allow.iter().position(|r| r.matches(request)) {
            Some(index) => Decision::Allow(index),
            None => Decision::Deny(DenyReason::NotAllowed),
        }
    }
}

/// What one request is judged on.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttributes<'a> {
    /// The caller's verified identity (`None` on a plaintext connection).
    pub peer: Option<&'a PeerIdentity>,
    /// The request's method.
    pub method: &'a http::Method,
    /// The request's path (without the query).
    pub path: &'a str,
    /// Whether this is a gRPC request (`content-type: application/grpc…`).
    pub grpc: bool,
}

impl<'a> RequestAttributes<'a> {
    /// The attributes of `request`, with the connection's peer.
    pub fn of<B>(request: &'a http::Request<B>, peer: Option<&'a PeerIdentity>) -> Self {
        Self {
            peer,
            method: request.method(),
            path: request.uri().path(),
            grpc: is_grpc(request.headers()),
        }
    }

    /// The gRPC service and method, from a `/package.Service/Method` path.
    pub fn grpc_method(&self) -> Option<(&'a str, &'a str)> {
        if !self.grpc {
            return None;
        }
        let rest = self.path.strip_prefix('/')?;
        let (service, method) = rest.split_once('/')?;
        (!service.is_empty() && !method.is_empty() && !method.contains('/'))
            .then_some((service, method))
    }
}

/// Whether `headers` say gRPC (`application/grpc`, `application/grpc+proto`, …).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.strip_prefix("application/grpc").is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
            })
        })
}

/// One rule: it matches a request whose caller matches any of its principals and whose
/// target matches any of its operations. An empty list matches anything, so `Rule::any()`
/// matches every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    principals: Vec<Principal>,
    operations: Vec<Operation>,
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

    /// Adds an operation (the rule matches requests that match any of its operations).
    pub fn operation(mut self, operation: Operation) -> Self {
        self.operations.push(operation);
        self
    }

    fn matches(&self, request: &RequestAttributes<'_>) -> bool {
        (self.principals.is_empty() || self.principals.iter().any(|p| p.matches(request.peer)))
            && (self.operations.is_empty() || self.operations.iter().any(|o| o.matches(request)))
    }
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

/// What a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Any method of a gRPC service (`package.Service`).
    GrpcService(String),
    /// One method of a gRPC service.
    GrpcMethod {
        /// `package.Service`.
        service: String,
        /// `Method`.
        method: String,
    },
    /// A request whose path is exactly this.
    Path(String),
    /// A request whose path starts with this.
    PathPrefix(String),
    /// A request with this HTTP method.
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

    fn matches(&self, request: &RequestAttributes<'_>) -> bool {
        match self {
            Self::GrpcService(want) => request.grpc_method().is_some_and(|(s, _)| s == want),
            Self::GrpcMethod { service, method } => request
                .grpc_method()
                .is_some_and(|(s, m)| s == service && m == method),
            Self::Path(path) => request.path == path,
            Self::PathPrefix(prefix) => request.path.starts_with(prefix.as_str()),
            Self::HttpMethod(method) => request.method == method,
        }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// It matched the deny rule at this index.
    DenyRule(usize),
    /// No allow rule matched.
    NotAllowed,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DenyRule(i) => write!(f, "matched deny rule {i}"),
            Self::NotAllowed => f.write_str("no allow rule matched"),
        }
    }
}
