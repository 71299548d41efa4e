//! The RBAC engine of gRFC A41: judges one request against the policies of one xDS RBAC
//! HTTP filter ([`RbacConfig`], decoded by meshwork-xds).
//!
//! A Listener's HTTP connection manager may hold several RBAC filters; Istio sends a DENY
//! filter named `envoy.filters.http.rbac.DENY` and then an ALLOW one. Such a chain is a list
//! of [`RbacEngine`]s evaluated in filter order by [`RbacEngine::decide_chain`]: the first
//! engine that denies ends the request, and it is admitted only if every engine admits it.
//! A route's `RBACPerRoute` override replaces its filter's engine for that route: build the
//! engine from [`RbacPerRoute::rbac`](meshwork_xds::resource::RbacPerRoute) instead.
//!
//! What a request shows the engine ([`RbacAttributes`]) follows A41: the headers include the
//! pseudo-headers `:method`, `:path` (with its query) and `:authority` (the `Host` header when
//! the request has no authority), hop-by-hop headers are absent, several values of a header
//! are joined with `,`, and binary headers show their base64 text. The destination is the
//! server address the connection was accepted on; `source_ip`, `direct_remote_ip` and
//! `remote_ip` all mean the client address of the connection.
//!
//! The client's certificate identity, for `authenticated.principal_name`, is its URI SAN: a
//! meshwork server verifies clients as SPIFFE SVIDs, whose single URI SAN A41 checks before
//! any DNS SAN or the subject, so those are never consulted. [`PeerIdentity`] keeps neither.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use meshwork_xds::resource::{
    Permission, Policy, Principal, RbacAction, RbacConfig, RbacRules, StringMatcher,
};

use super::ConnectionInfo;
use crate::identity::PeerIdentity;
use crate::route::{header_value_matches, joined_header_value};

/// What an RBAC engine knows of a request: the HTTP request and its connection.
#[derive(Debug, Clone)]
pub struct RbacAttributes<'a> {
    method: &'a http::Method,
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
    local_addr: SocketAddr,
    remote_addr: SocketAddr,
    tls: bool,
    /// The client certificate's URI SAN, rendered once per request.
    principal: Option<String>,
}

impl<'a> RbacAttributes<'a> {
    /// The attributes of `request` received on `connection`; `tls` says whether the
    /// connection is TLS (a client certificate is not needed for that, A41).
    pub fn new<B>(request: &'a http::Request<B>, connection: &ConnectionInfo, tls: bool) -> Self {
        Self::from_parts(
            request.method(),
            request.uri(),
            request.headers(),
            connection,
            tls,
        )
    }

    /// The attributes of a request given by its parts, e.g. from `http::request::Parts`.
    pub fn from_parts(
        method: &'a http::Method,
        uri: &'a http::Uri,
        headers: &'a HeaderMap,
        connection: &ConnectionInfo,
        tls: bool,
    ) -> Self {
        let principal = connection
            .peer()
            .map(|peer: &PeerIdentity| peer.spiffe_id().to_string());
        Self {
            method,
            uri,
            headers,
            local_addr: connection.local_addr(),
            remote_addr: connection.remote_addr(),
            tls,
            principal,
        }
    }

    /// A header as A41 has RBAC see it (`name` is lower-case, as the decoder leaves it).
    fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        match name {
            ":method" => Some(Cow::Borrowed(self.method.as_str())),
            ":path" => Some(Cow::Borrowed(
                self.uri
                    .path_and_query()
                    .map_or(self.uri.path(), |pq| pq.as_str()),
            )),
            ":authority" => match self.uri.authority() {
                Some(authority) => Some(Cow::Borrowed(authority.as_str())),
                None => joined_header_value(self.headers, "host"),
            },
            // `host` is `:authority` above; other pseudo-headers are not headers.
            "host" => None,
            _ if name.starts_with(':') || self.is_hop_by_hop(name) => None,
            _ => joined_header_value(self.headers, name),
        }
    }

    /// Hop-by-hop headers belong to the connection, not the request (A41, RFC 7230 §6.1):
    /// the fixed set Envoy removes, and any header the `Connection` header names.
    fn is_hop_by_hop(&self, name: &str) -> bool {
        const HOP_BY_HOP: [&str; 6] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
        ];
        HOP_BY_HOP.contains(&name)
            || self
                .headers
                .get_all(http::header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|option| option.trim().eq_ignore_ascii_case(name))
    }

    fn authenticated(&self, principal_name: Option<&StringMatcher>) -> bool {
        match principal_name {
            _ if !self.tls => false,
            None => true,
            // No client certificate: A41 compares the empty string.
            Some(m) => m.matches(self.principal.as_deref().unwrap_or("")),
        }
    }
}

/// The outcome of RBAC for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacDecision<'a> {
    /// The request may proceed; `policy` is the ALLOW policy that matched, if one did.
    Allow {
        /// The matching ALLOW policy's name.
        policy: Option<&'a str>,
    },
    /// The request is refused (gRPC: `PERMISSION_DENIED`); `policy` is the DENY policy that
    /// matched, or `None` when no ALLOW policy matched.
    Deny {
        /// The matching DENY policy's name.
        policy: Option<&'a str>,
    },
}

impl RbacDecision<'_> {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, RbacDecision::Allow { .. })
    }
}

/// One RBAC filter's policies, ready to judge requests.
///
/// ```
/// use meshwork_core::inbound::{RbacDecision, RbacEngine};
/// use meshwork_xds::resource::RbacConfig;
///
/// // A filter without `rules` enforces nothing.
/// let engine = RbacEngine::new(&RbacConfig::default());
/// assert!(engine.is_noop());
/// ```
#[derive(Debug, Clone)]
pub struct RbacEngine {
    /// `None`: the filter enforces nothing (no `rules`, or action `LOG`). Shared, so that
    /// clones (one per filter chain using it) do not copy the policies.
    rules: Option<Arc<RbacRules>>,
}

impl RbacEngine {
    /// An engine for `config`. Without `rules`, or with action `LOG`, it admits every request,
    /// as A41 has gRPC ignore such a filter.
    pub fn new(config: &RbacConfig) -> Self {
        let rules = config
            .rules
            .as_ref()
            .filter(|r| r.action != RbacAction::Log)
            .cloned()
            .map(Arc::new);
        Self { rules }
    }

    /// Whether this engine admits every request without looking at it.
    pub fn is_noop(&self) -> bool {
        self.rules.is_none()
    }

    /// Judges one request: an ALLOW engine admits it when a policy matches, a DENY engine
    /// refuses it when one does. Policies are tried in name order; the first match is the
    /// one reported.
    pub fn decide(&self, request: &RbacAttributes<'_>) -> RbacDecision<'_> {
        judge(self.rules.as_deref(), request)
    }

    /// Judges one request against `config` as an engine built from it would, without
    /// building one (for a route's `RBACPerRoute` override, read in place per request).
    pub fn decide_config<'c>(
        config: &'c RbacConfig,
        request: &RbacAttributes<'_>,
    ) -> RbacDecision<'c> {
        judge(
            config
                .rules
                .as_ref()
                .filter(|r| r.action != RbacAction::Log),
            request,
        )
    }

    /// Judges one request against a chain of RBAC filters in their order (Istio: DENY, then
    /// ALLOW): the first denial is the decision; otherwise the request is allowed, reporting
    /// the last ALLOW policy that matched.
    pub fn decide_chain<'e>(
        engines: impl IntoIterator<Item = &'e RbacEngine>,
        request: &RbacAttributes<'_>,
    ) -> RbacDecision<'e> {
        let mut allowed_by = None;
        for engine in engines {
            match engine.decide(request) {
                deny @ RbacDecision::Deny { .. } => return deny,
                RbacDecision::Allow { policy } => allowed_by = policy.or(allowed_by),
            }
        }
        RbacDecision::Allow { policy: allowed_by }
    }
}

/// An RBAC filter's judgement of one request; `None` rules admit everything.
fn judge<'r>(rules: Option<&'r RbacRules>, request: &RbacAttributes<'_>) -> RbacDecision<'r> {
    let Some(rules) = rules else {
        return RbacDecision::Allow { policy: None };
    };
    let matched = rules
        .policies
        .iter()
        .find(|(_, policy)| policy_matches(policy, request))
        .map(|(name, _)| name.as_str());
    match (rules.action, matched) {
        (RbacAction::Deny, Some(name)) => RbacDecision::Deny { policy: Some(name) },
        (RbacAction::Deny | RbacAction::Log, _) => RbacDecision::Allow { policy: None },
        (RbacAction::Allow, Some(name)) => RbacDecision::Allow { policy: Some(name) },
        (RbacAction::Allow, None) => RbacDecision::Deny { policy: None },
    }
}

fn policy_matches(policy: &Policy, request: &RbacAttributes<'_>) -> bool {
    policy.permissions.iter().any(|p| permission(p, request))
        && policy.principals.iter().any(|p| principal(p, request))
}

// Recursion is bounded: the decoder rejects and/or/not rules nested deeper than
// `MAX_RBAC_DEPTH`.
fn permission(p: &Permission, request: &RbacAttributes<'_>) -> bool {
    match p {
        Permission::And(all) => all.iter().all(|p| permission(p, request)),
        Permission::Or(any) => any.iter().any(|p| permission(p, request)),
        Permission::Not(p) => !permission(p, request),
        Permission::Any => true,
        Permission::Header(h) => header_value_matches(h, request.header(&h.name).as_deref()),
        Permission::UrlPath(m) => m.matches(request.uri.path()),
        Permission::DestinationIp(range) => range.contains(request.local_addr.ip()),
        Permission::DestinationPort(port) => request.local_addr.port() == *port,
        Permission::DestinationPortRange { start, end } => {
            (*start..*end).contains(&i32::from(request.local_addr.port()))
        }
        Permission::Metadata { invert } => *invert,
        Permission::RequestedServerName(m) => m.matches(""),
    }
}

fn principal(p: &Principal, request: &RbacAttributes<'_>) -> bool {
    match p {
        Principal::And(all) => all.iter().all(|p| principal(p, request)),
        Principal::Or(any) => any.iter().any(|p| principal(p, request)),
        Principal::Not(p) => !principal(p, request),
        Principal::Any => true,
        Principal::Authenticated { principal_name } => {
            request.authenticated(principal_name.as_ref())
        }
        Principal::RemoteIp(range) => range.contains(request.remote_addr.ip()),
        Principal::Header(h) => header_value_matches(h, request.header(&h.name).as_deref()),
        Principal::UrlPath(m) => m.matches(request.uri.path()),
        Principal::Metadata { invert } => *invert,
    }
}

#[cfg(test)]
mod tests;
