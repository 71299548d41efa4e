//! The RBAC HTTP filter's configuration (gRFC A41): `envoy.extensions.filters.http.rbac.v3.RBAC`
//! and its per-route override `RBACPerRoute`, validated into plain Rust for an RBAC engine.
//!
//! What each field means to a gRPC server, and which ones reject the configuration, follows
//! A41 and grpc-go (`internal/xds/httpfilter/rbac`, `internal/xds/rbac`):
//!
//! - `rules` absent, or `rules.action` `LOG`: the filter enforces nothing. A `LOG` policy is
//!   still validated, as grpc-go does.
//! - `shadow_rules` (and their stat prefixes, `shadow_matcher`, per-rule stats) only feed
//!   Envoy's statistics; A41 leaves them out, so they are listed in
//!   [`unsupported_fields`](RbacConfig::unsupported_fields) and change nothing.
//! - `matcher` (the generic matcher API that replaces `rules`) is rejected: ignoring it, as
//!   grpc-go does, would turn an enforcing filter into one that admits everything.
//! - `Policy.condition` and `checked_condition` (CEL) are rejected (A41).
//! - A header matcher on `:scheme` or on a `grpc-` prefixed header is rejected (A41); the
//!   name is lower-cased and `host` becomes `:authority`, so a policy behaves the same
//!   whichever of the two names it uses.
//! - `metadata` refers to Envoy's dynamic metadata, which a gRPC server does not have: it
//!   never matches, or always when `invert` is set (grpc-go).
//! - Permission `matcher`, `uri_template`, `sourced_metadata` and principal `filter_state`,
//!   `sourced_metadata`, `custom` are extensions no gRPC implements: rejected.
//!
//! Untrusted input is bounded: and/or/not rules nest at most [`MAX_RBAC_DEPTH`] deep and a
//! configuration holds at most [`MAX_RBAC_MATCHERS`] permissions and principals in all, so
//! evaluating a request costs a bounded amount of work and recursion.

// `metadata` and `source_ip` are deprecated in the proto but still valid, and control planes
// still send them, so reading them is deliberate.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as filter_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::Any;

use super::matcher::StringMatcher;
use super::matcher::{HeaderMatcher, header_matcher};
use super::{FieldPath, ResourceErrorKind, Result, Unsupported, decode_any, unsupported_fields};

/// The type URL of the RBAC HTTP filter's configuration.
pub const RBAC_FILTER_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The type URL of the RBAC HTTP filter's per-route override.
pub const RBAC_PER_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

/// How deep `and_rules` / `or_rules` / `not_rule` (and their principal twins) may nest; a
/// deeper rule rejects the configuration. Istio's deepest policies nest four levels.
pub const MAX_RBAC_DEPTH: usize = 32;

/// How many permissions and principals, counted at every level of nesting, one RBAC
/// configuration may hold; a larger one is rejected, so that no request costs more than this
/// many matcher evaluations per filter.
pub const MAX_RBAC_MATCHERS: usize = 65_536;

/// An RBAC HTTP filter's configuration (`envoy.extensions.filters.http.rbac.v3.RBAC`).
///
/// The default enforces nothing (no `rules`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RbacConfig {
    /// The enforced rules; `None` when `rules` is absent, which enforces nothing.
    pub rules: Option<RbacRules>,
    /// Fields that were set but that meshwork ignores (e.g. `shadow_rules`), as paths
    /// relative to the filter's configuration.
    pub unsupported_fields: Vec<String>,
}

/// The per-route override of the RBAC filter (`RBACPerRoute`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RbacPerRoute {
    /// Replaces the filter's configuration on this route. An absent `rbac` yields the default
    /// [`RbacConfig`], which disables the filter for the route (Envoy's documented meaning).
    pub rbac: RbacConfig,
}

/// `envoy.config.rbac.v3.RBAC`: an action and the policies that trigger it.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacRules {
    /// What a match means.
    pub action: RbacAction,
    /// The policies by name. They are kept in name order, which is the order Envoy checks
    /// them in, so the policy reported for a request is the same on every run.
    pub policies: BTreeMap<String, Policy>,
}

/// What an RBAC filter does with a request that matches one of its policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    /// Admit a request only if some policy matches.
    Allow,
    /// Refuse a request if some policy matches.
    Deny,
    /// Envoy logs the match; A41 ignores the filter completely (it admits everything).
    Log,
}

/// A policy: it matches a request when one of its permissions and one of its principals
/// match (an empty list matches nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// What the request does.
    pub permissions: Vec<Permission>,
    /// Who sends it.
    pub principals: Vec<Principal>,
}

/// A condition on what a request does (`envoy.config.rbac.v3.Permission`).
///
/// Deliberately exhaustive: an evaluator must decide every kind, so a kind added later has
/// to be handled where requests are judged rather than fall through a wildcard.
#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    /// All of these match (an empty list matches).
    And(Vec<Permission>),
    /// One of these matches (an empty list matches nothing).
    Or(Vec<Permission>),
    /// This one does not match.
    Not(Box<Permission>),
    /// Every request.
    Any,
    /// A request header, including the pseudo-headers `:method`, `:path` and `:authority`.
    Header(HeaderMatcher),
    /// The request's path without its query (for gRPC, `/package.Service/Method`).
    UrlPath(StringMatcher),
    /// The server address the connection was accepted on.
    DestinationIp(CidrRange),
    /// The server port the connection was accepted on.
    DestinationPort(u16),
    /// The server port is in `[start, end)`.
    DestinationPortRange {
        /// Inclusive start.
        start: i32,
        /// Exclusive end.
        end: i32,
    },
    /// A matcher on Envoy metadata, which a gRPC server does not have (A41): matches every
    /// request when `invert` is set, none otherwise.
    Metadata {
        /// The matcher's `invert`.
        invert: bool,
    },
    /// The TLS SNI, which a gRPC server takes to be empty (A41): matches every request when
    /// the matcher accepts `""`, none otherwise.
    RequestedServerName(StringMatcher),
}

/// A condition on who sends a request (`envoy.config.rbac.v3.Principal`); exhaustive for
/// the reason [`Permission`] is.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// All of these match (an empty list matches).
    And(Vec<Principal>),
    /// One of these matches (an empty list matches nothing).
    Or(Vec<Principal>),
    /// This one does not match.
    Not(Box<Principal>),
    /// Every request.
    Any,
    /// The connection uses TLS and, when `principal_name` is set, the client certificate's
    /// identity matches it: its URI SANs if it has any, else its DNS SANs, else its subject,
    /// and `""` without a client certificate (A41).
    Authenticated {
        /// The identity condition; `None` asks only for TLS.
        principal_name: Option<StringMatcher>,
    },
    /// The client address. `source_ip`, `direct_remote_ip` and `remote_ip` all mean the
    /// peer address of the connection for a gRPC server, which supports neither the PROXY
    /// protocol nor `x-forwarded-for` (A41).
    RemoteIp(CidrRange),
    /// A request header, as in [`Permission::Header`].
    Header(HeaderMatcher),
    /// The request's path, as in [`Permission::UrlPath`].
    UrlPath(StringMatcher),
    /// A matcher on Envoy metadata, as in [`Permission::Metadata`].
    Metadata {
        /// The matcher's `invert`.
        invert: bool,
    },
}

/// An IP prefix (`envoy.config.core.v3.CidrRange`), stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRange {
    prefix: IpAddr,
    len: u8,
}

impl CidrRange {
    /// The prefix of `len` bits of `addr`; `None` when `len` exceeds the address's width.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let prefix = match addr {
            IpAddr::V4(a) if len <= 32 => IpAddr::V4((u32::from(a) & mask_u32(len)).into()),
            IpAddr::V6(a) if len <= 128 => IpAddr::V6((u128::from(a) & mask_u128(len)).into()),
            _ => return None,
        };
        Some(Self { prefix, len })
    }

    /// The first address of the range.
    pub fn prefix(&self) -> IpAddr {
        self.prefix
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `addr` is in the range. An IPv4 address is never in an IPv6 range nor the
    /// reverse (IPv4-mapped IPv6 addresses included), as in Envoy and grpc-go.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.prefix, addr) {
            (IpAddr::V4(p), IpAddr::V4(a)) => u32::from(a) & mask_u32(self.len) == u32::from(p),
            (IpAddr::V6(p), IpAddr::V6(a)) => u128::from(a) & mask_u128(self.len) == u128::from(p),
            _ => false,
        }
    }
}

fn mask_u32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_u128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl RbacConfig {
    /// Validates an RBAC filter configuration; errors name the field, relative to the
    /// configuration.
    pub fn from_proto(rbac: &filter_pb::Rbac) -> std::result::Result<Self, ResourceErrorKind> {
        let mut uns = Unsupported::default();
        let config = validate_config(&FieldPath::ROOT, rbac, &mut uns)?;
        Ok(Self {
            unsupported_fields: uns.into_vec(),
            ..config
        })
    }
}

impl RbacPerRoute {
    /// Validates an RBAC per-route override; errors name the field, relative to it.
    pub fn from_proto(
        per_route: &filter_pb::RbacPerRoute,
    ) -> std::result::Result<Self, ResourceErrorKind> {
        let mut uns = Unsupported::default();
        let rbac = validate_per_route(&FieldPath::ROOT, per_route, &mut uns)?;
        Ok(Self {
            rbac: RbacConfig {
                unsupported_fields: uns.into_vec(),
                ..rbac.rbac
            },
        })
    }
}

/// Decodes and validates the `typed_config` of an RBAC HTTP filter at `path`.
pub(crate) fn decode_filter(
    path: &FieldPath<'_>,
    any: &Any,
    uns: &mut Unsupported,
) -> Result<RbacConfig> {
    let rbac: filter_pb::Rbac = decode_any(path, any, RBAC_FILTER_TYPE_URL)?;
    validate_config(path, &rbac, uns)
}

/// Decodes and validates an RBAC per-route override (`typed_per_filter_config`) at `path`.
pub(crate) fn decode_per_route(
    path: &FieldPath<'_>,
    any: &Any,
    uns: &mut Unsupported,
) -> Result<RbacPerRoute> {
    let per_route: filter_pb::RbacPerRoute = decode_any(path, any, RBAC_PER_ROUTE_TYPE_URL)?;
    validate_per_route(path, &per_route, uns)
}

fn validate_per_route(
    path: &FieldPath<'_>,
    per_route: &filter_pb::RbacPerRoute,
    uns: &mut Unsupported,
) -> Result<RbacPerRoute> {
    let rbac = match &per_route.rbac {
        Some(rbac) => validate_config(&path.field("rbac"), rbac, uns)?,
        None => RbacConfig::default(),
    };
    Ok(RbacPerRoute { rbac })
}

/// The unsupported fields are collected into `uns`, not into the returned value's
/// `unsupported_fields`, so that a Listener lists them with its own.
fn validate_config(
    path: &FieldPath<'_>,
    rbac: &filter_pb::Rbac,
    uns: &mut Unsupported,
) -> Result<RbacConfig> {
    unsupported_fields!(uns, path, rbac, {
        matcher => reject("the RBAC matcher API (only `rules` is supported, gRFC A41)"),
        rules_stat_prefix,
        shadow_rules,
        shadow_matcher,
        shadow_rules_stat_prefix,
        track_per_rule_stats,
    })?;
    let rules = match &rbac.rules {
        Some(rules) => Some(validate_rules(&path.field("rules"), rules, uns)?),
        None => None,
    };
    Ok(RbacConfig {
        rules,
        unsupported_fields: Vec::new(),
    })
}

fn validate_rules(
    path: &FieldPath<'_>,
    rules: &rbac_pb::Rbac,
    uns: &mut Unsupported,
) -> Result<RbacRules> {
    use rbac_pb::rbac::Action;
    let action = match Action::try_from(rules.action) {
        Ok(Action::Allow) => RbacAction::Allow,
        Ok(Action::Deny) => RbacAction::Deny,
        Ok(Action::Log) => RbacAction::Log,
        Err(_) => {
            return Err(ResourceErrorKind::invalid(
                path.field("action"),
                format!("unknown action {}", rules.action),
            ));
        }
    };
    unsupported_fields!(uns, path, rules, { audit_logging_options })?;
    // The proto map has no order; walking it by name makes the first error (and the
    // unsupported-field list) the same on every decode.
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let mut budget = Budget(MAX_RBAC_MATCHERS);
    let mut policies = BTreeMap::new();
    for name in names {
        let policy = &rules.policies[name];
        let p = path.field("policies");
        let p = PolicyPath { parent: &p, name };
        policies.insert(name.clone(), validate_policy(&p, policy, &mut budget, uns)?);
    }
    Ok(RbacRules { action, policies })
}

/// The path of one map entry, `policies["name"]`, which [`FieldPath`] cannot spell since
/// its keys are `'static`.
struct PolicyPath<'a> {
    parent: &'a FieldPath<'a>,
    name: &'a str,
}

impl std::fmt::Display for PolicyPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{:?}]", self.parent, self.name)
    }
}

/// How many more permissions and principals the configuration may hold.
struct Budget(usize);

impl Budget {
    /// Takes one matcher from the budget; `false` when none is left.
    fn spend(&mut self) -> bool {
        match self.0.checked_sub(1) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
        }
    }
}

/// The context of one policy's validation: its path (rendered only on error), the size
/// budget and the unsupported-field collector.
struct Cx<'a, 'b> {
    policy: &'a PolicyPath<'a>,
    budget: &'b mut Budget,
    uns: &'b mut Unsupported,
}

impl Cx<'_, '_> {
    fn path(&self, rel: &FieldPath<'_>) -> String {
        let rel = rel.to_string();
        if rel.is_empty() {
            self.policy.to_string()
        } else {
            format!("{}.{rel}", self.policy)
        }
    }

    fn invalid(&self, rel: &FieldPath<'_>, reason: impl Into<String>) -> ResourceErrorKind {
        ResourceErrorKind::invalid(self.path(rel), reason)
    }

    fn unsupported(&self, rel: &FieldPath<'_>, what: &str) -> ResourceErrorKind {
        ResourceErrorKind::unsupported(self.path(rel), what)
    }

    /// Re-roots an error produced by a shared decoder at a path relative to the policy.
    fn reroot(&self, err: ResourceErrorKind) -> ResourceErrorKind {
        let prefix = self.policy.to_string();
        match err {
            ResourceErrorKind::InvalidField { path, reason } => ResourceErrorKind::InvalidField {
                path: format!("{prefix}.{path}"),
                reason,
            },
            ResourceErrorKind::InvalidRegex { path, source } => ResourceErrorKind::InvalidRegex {
                path: format!("{prefix}.{path}"),
                source,
            },
            ResourceErrorKind::Unsupported { path, what } => ResourceErrorKind::Unsupported {
                path: format!("{prefix}.{path}"),
                what,
            },
            other => other,
        }
    }

    fn enter(&mut self, rel: &FieldPath<'_>, depth: usize) -> Result<()> {
        if !self.budget.spend() {
            return Err(self.invalid(
                rel,
                format!("more than {MAX_RBAC_MATCHERS} permissions and principals"),
            ));
        }
        if depth > MAX_RBAC_DEPTH {
            return Err(self.invalid(
                rel,
                format!("and/or/not rules nest deeper than {MAX_RBAC_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn string_matcher(
        &self,
        rel: &FieldPath<'_>,
        m: &matcher_pb::StringMatcher,
    ) -> Result<StringMatcher> {
        StringMatcher::from_proto(rel, m).map_err(|e| self.reroot(e))
    }

    fn path_matcher(
        &self,
        rel: &FieldPath<'_>,
        m: &matcher_pb::PathMatcher,
    ) -> Result<StringMatcher> {
        use matcher_pb::path_matcher::Rule;
        match &m.rule {
            Some(Rule::Path(s)) => self.string_matcher(&rel.field("path"), s),
            None => Err(self.invalid(rel, "path matcher has no rule")),
        }
    }

    fn cidr(&self, rel: &FieldPath<'_>, c: &core_pb::CidrRange) -> Result<CidrRange> {
        let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
            self.invalid(
                &rel.field("address_prefix"),
                format!("{:?} is not an IP address", c.address_prefix),
            )
        })?;
        let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
        u8::try_from(len)
            .ok()
            .and_then(|len| CidrRange::new(addr, len))
            .ok_or_else(|| {
                self.invalid(
                    &rel.field("prefix_len"),
                    format!("prefix length {len} is too long for {addr}"),
                )
            })
    }

    /// A41's header rules: no `:scheme`, no `grpc-` prefix, `host` is `:authority`.
    fn header(
        &mut self,
        rel: &FieldPath<'_>,
        h: &envoy_types::pb::envoy::config::route::v3::HeaderMatcher,
    ) -> Result<HeaderMatcher> {
        let mut uns = Unsupported::default();
        let mut m = header_matcher(h, rel, &mut uns).map_err(|e| self.reroot(e))?;
        for field in uns.into_vec() {
            self.uns.note(format!("{}.{field}", self.policy));
        }
        if m.name == ":scheme" || m.name.starts_with("grpc-") {
            return Err(self.invalid(
                &rel.field("name"),
                format!("RBAC may not match header {:?} (gRFC A41)", h.name),
            ));
        }
        if m.name == "host" {
            m.name = ":authority".to_owned();
        }
        Ok(m)
    }

    fn permission(
        &mut self,
        rel: &FieldPath<'_>,
        p: &rbac_pb::Permission,
        depth: usize,
    ) -> Result<Permission> {
        use rbac_pb::permission::Rule;
        self.enter(rel, depth)?;
        Ok(match &p.rule {
            Some(Rule::AndRules(set)) => {
                Permission::And(self.permissions(&rel.field("and_rules"), &set.rules, depth)?)
            }
            Some(Rule::OrRules(set)) => {
                Permission::Or(self.permissions(&rel.field("or_rules"), &set.rules, depth)?)
            }
            Some(Rule::NotRule(inner)) => Permission::Not(Box::new(self.permission(
                &rel.field("not_rule"),
                inner,
                depth + 1,
            )?)),
            Some(Rule::Any(_)) => Permission::Any,
            Some(Rule::Header(h)) => Permission::Header(self.header(&rel.field("header"), h)?),
            Some(Rule::UrlPath(m)) => {
                Permission::UrlPath(self.path_matcher(&rel.field("url_path"), m)?)
            }
            Some(Rule::DestinationIp(c)) => {
                Permission::DestinationIp(self.cidr(&rel.field("destination_ip"), c)?)
            }
            Some(Rule::DestinationPort(port)) => {
                Permission::DestinationPort(u16::try_from(*port).map_err(|_| {
                    self.invalid(
                        &rel.field("destination_port"),
                        format!("port {port} is above 65535"),
                    )
                })?)
            }
            Some(Rule::DestinationPortRange(r)) => Permission::DestinationPortRange {
                start: r.start,
                end: r.end,
            },
            Some(Rule::Metadata(m)) => Permission::Metadata { invert: m.invert },
            Some(Rule::RequestedServerName(m)) => Permission::RequestedServerName(
                self.string_matcher(&rel.field("requested_server_name"), m)?,
            ),
            Some(Rule::Matcher(_)) => {
                return Err(
                    self.unsupported(&rel.field("matcher"), "RBAC permission matcher extensions")
                );
            }
            Some(Rule::UriTemplate(_)) => {
                return Err(self.unsupported(&rel.field("uri_template"), "URI template matching"));
            }
            Some(Rule::SourcedMetadata(_)) => {
                return Err(
                    self.unsupported(&rel.field("sourced_metadata"), "sourced metadata matching")
                );
            }
            None => return Err(self.invalid(rel, "permission has no rule")),
        })
    }

    fn permissions(
        &mut self,
        rel: &FieldPath<'_>,
        list: &[rbac_pb::Permission],
        depth: usize,
    ) -> Result<Vec<Permission>> {
        list.iter()
            .enumerate()
            .map(|(i, p)| self.permission(&rel.at("rules", i), p, depth + 1))
            .collect()
    }

    fn principal(
        &mut self,
        rel: &FieldPath<'_>,
        p: &rbac_pb::Principal,
        depth: usize,
    ) -> Result<Principal> {
        use rbac_pb::principal::Identifier;
        self.enter(rel, depth)?;
        Ok(match &p.identifier {
            Some(Identifier::AndIds(set)) => {
                Principal::And(self.principals(&rel.field("and_ids"), &set.ids, depth)?)
            }
            Some(Identifier::OrIds(set)) => {
                Principal::Or(self.principals(&rel.field("or_ids"), &set.ids, depth)?)
            }
            Some(Identifier::NotId(inner)) => Principal::Not(Box::new(self.principal(
                &rel.field("not_id"),
                inner,
                depth + 1,
            )?)),
            Some(Identifier::Any(_)) => Principal::Any,
            Some(Identifier::Authenticated(a)) => Principal::Authenticated {
                principal_name: match &a.principal_name {
                    Some(m) => {
                        Some(self.string_matcher(&rel.field("authenticated.principal_name"), m)?)
                    }
                    None => None,
                },
            },
            Some(Identifier::SourceIp(c)) => {
                Principal::RemoteIp(self.cidr(&rel.field("source_ip"), c)?)
            }
            Some(Identifier::DirectRemoteIp(c)) => {
                Principal::RemoteIp(self.cidr(&rel.field("direct_remote_ip"), c)?)
            }
            Some(Identifier::RemoteIp(c)) => {
                Principal::RemoteIp(self.cidr(&rel.field("remote_ip"), c)?)
            }
            Some(Identifier::Header(h)) => Principal::Header(self.header(&rel.field("header"), h)?),
            Some(Identifier::UrlPath(m)) => {
                Principal::UrlPath(self.path_matcher(&rel.field("url_path"), m)?)
            }
            Some(Identifier::Metadata(m)) => Principal::Metadata { invert: m.invert },
            Some(Identifier::FilterState(_)) => {
                return Err(self.unsupported(&rel.field("filter_state"), "filter state matching"));
            }
            Some(Identifier::SourcedMetadata(_)) => {
                return Err(
                    self.unsupported(&rel.field("sourced_metadata"), "sourced metadata matching")
                );
            }
            Some(Identifier::Custom(_)) => {
                return Err(
                    self.unsupported(&rel.field("custom"), "RBAC principal matcher extensions")
                );
            }
            None => return Err(self.invalid(rel, "principal has no identifier")),
        })
    }

    fn principals(
        &mut self,
        rel: &FieldPath<'_>,
        list: &[rbac_pb::Principal],
        depth: usize,
    ) -> Result<Vec<Principal>> {
        list.iter()
            .enumerate()
            .map(|(i, p)| self.principal(&rel.at("ids", i), p, depth + 1))
            .collect()
    }
}

fn validate_policy(
    path: &PolicyPath<'_>,
    policy: &rbac_pb::Policy,
    budget: &mut Budget,
    uns: &mut Unsupported,
) -> Result<Policy> {
    let mut cx = Cx {
        policy: path,
        budget,
        uns,
    };
    let root = FieldPath::ROOT;
    if policy.condition.is_some() {
        return Err(cx.unsupported(&root.field("condition"), "CEL conditions (gRFC A41)"));
    }
    if policy.checked_condition.is_some() {
        return Err(cx.unsupported(
            &root.field("checked_condition"),
            "CEL conditions (gRFC A41)",
        ));
    }
    if policy.cel_config.is_some() {
        cx.uns.note(format!("{path}.cel_config"));
    }
    let permissions = policy
        .permissions
        .iter()
        .enumerate()
        .map(|(i, p)| cx.permission(&root.at("permissions", i), p, 1))
        .collect::<Result<_>>()?;
    let principals = policy
        .principals
        .iter()
        .enumerate()
        .map(|(i, p)| cx.principal(&root.at("principals", i), p, 1))
        .collect::<Result<_>>()?;
    Ok(Policy {
        permissions,
        principals,
    })
}

#[cfg(test)]
mod tests;
