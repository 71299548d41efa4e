//! Decoding and validating an `envoy.config.route.v3.RouteConfiguration` (from RDS, or
//! inline in a Listener) into a [`RouteConfiguration`].

// Control planes still send deprecated fields (Istio fills both the current and the deprecated
// ones), so reading them is deliberate.
#![allow(deprecated)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_pb;
use envoy_types::pb::google::protobuf::Any;
use prost::Message as _;

use super::rules::{self, WeightSum};
use super::types::*;
use crate::resource::matcher::{SafeRegex, StringMatcher, full_match_regex, header_matcher};
use crate::resource::rbac::{self, RBAC_FILTER_TYPE_URL, RBAC_PER_ROUTE_TYPE_URL};
use crate::resource::{
    FieldPath, ResourceError, ResourceErrorKind, Result, Unsupported, decode_any, duration,
    nonzero_duration, per_million, unsupported_fields,
};

const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_HOSTS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<RouteConfiguration, ResourceError> {
    let rc = route_pb::RouteConfiguration::decode(bytes)
        .map_err(|e| ResourceError::new(None, ResourceErrorKind::decode("", e)))?;
    if rc.name.is_empty() {
        return Err(ResourceError::new(
            None,
            ResourceErrorKind::invalid("name", "must not be empty"),
        ));
    }
    validate(&rc, &FieldPath::ROOT).map_err(|kind| ResourceError::new(Some(rc.name.clone()), kind))
}

/// Validates a route configuration; `path` is its position (root for RDS, inside the HCM
/// for inline ones), and prefixes every error and unsupported-field path.
pub(crate) fn validate(
    rc: &route_pb::RouteConfiguration,
    path: &FieldPath<'_>,
) -> Result<RouteConfiguration> {
    let mut uns = Unsupported::default();
    unsupported_fields!(uns, path, rc, {
        vhds,
        internal_only_headers,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cluster_specifier_plugins,
    })?;
    let plugins = cluster_specifier_plugins(rc, path)?;
    unsupported_fields!(uns, path, rc, {
        request_mirror_policies,
        typed_per_filter_config,
        vhost_header,
        ignore_port_in_host_matching,
        route_specifiers,
    })?;

    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let p = path.at("virtual_hosts", i);
        virtual_hosts.push(virtual_host(vh, &p, &plugins, &mut uns)?);
    }
    Ok(RouteConfiguration {
        name: rc.name.clone(),
        virtual_hosts,
        unsupported_fields: uns.into_vec(),
    })
}

/// The names of the declared cluster specifier plugins. gRPC core NACKs a plugin without
/// an extension or a typed config, and two with one name. Plugins themselves are not
/// implemented (routes using one are ignored, gRFC A28), so their types are not checked:
/// grpc core NACKs a non-optional plugin of a type it does not know, but it knows RLS,
/// which a control plane may rightly send.
fn cluster_specifier_plugins<'a>(
    rc: &'a route_pb::RouteConfiguration,
    path: &FieldPath<'_>,
) -> Result<HashSet<&'a str>> {
    let mut names = HashSet::with_capacity(rc.cluster_specifier_plugins.len());
    for (i, plugin) in rc.cluster_specifier_plugins.iter().enumerate() {
        let ep = path.at("cluster_specifier_plugins", i);
        let ep = ep.field("extension");
        let Some(extension) = &plugin.extension else {
            return Err(ResourceErrorKind::invalid(ep, "must be set"));
        };
        if extension.typed_config.is_none() {
            return Err(ResourceErrorKind::invalid(
                ep.field("typed_config"),
                "must be set",
            ));
        }
        if !names.insert(extension.name.as_str()) {
            return Err(ResourceErrorKind::invalid(
                ep.field("name"),
                format!("duplicate cluster specifier plugin {:?}", extension.name),
            ));
        }
    }
    Ok(names)
}

fn virtual_host(
    vh: &route_pb::VirtualHost,
    p: &FieldPath<'_>,
    plugins: &HashSet<&str>,
    uns: &mut Unsupported,
) -> Result<VirtualHost> {
    unsupported_fields!(uns, p, vh, {
        matcher,
        require_tls,
        virtual_clusters,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        retry_policy_typed_config,
        hedge_policy,
        request_mirror_policies,
    })?;

    let filter_overrides = filter_overrides(&vh.typed_per_filter_config, p, uns)?;
    let retry_policy = match &vh.retry_policy {
        Some(rp) => Some(retry_policy(rp, &p.field("retry_policy"), uns)?),
        None => None,
    };
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        let rp = p.at("routes", i);
        if let Some(route) = route(r, &rp, retry_policy.as_ref(), plugins, uns)? {
            routes.push(route);
        }
    }
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes,
        retry_policy,
        filter_overrides,
    })
}

/// Returns `None` for a route gRPC ignores (one with a cluster specifier we cannot use).
fn route(
    r: &route_pb::Route,
    p: &FieldPath<'_>,
    vh_retry: Option<&RetryPolicy>,
    plugins: &HashSet<&str>,
    uns: &mut Unsupported,
) -> Result<Option<Route>> {
    let mp = p.field("match");
    let Some(m) = &r.r#match else {
        return Err(ResourceErrorKind::invalid(mp, "route has no match"));
    };
    let matcher = route_match(m, &mp, uns)?;

    let filter_overrides = filter_overrides(&r.typed_per_filter_config, p, uns)?;
    unsupported_fields!(uns, p, r, {
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        decorator,
        tracing,
        route_specifiers,
    })?;

    use route_pb::route::Action;
    let action = match &r.action {
        Some(Action::Route(ra)) => {
            match forward_action(ra, &p.field("route"), vh_retry, plugins, uns)? {
                Some(fa) => RouteAction::Forward(fa),
                None => return Ok(None),
            }
        }
        Some(Action::NonForwardingAction(_)) => RouteAction::NonForwarding,
        Some(Action::Redirect(_)) => RouteAction::Unsupported(UnsupportedAction::Redirect),
        Some(Action::DirectResponse(_)) => {
            RouteAction::Unsupported(UnsupportedAction::DirectResponse)
        }
        Some(Action::FilterAction(_)) => RouteAction::Unsupported(UnsupportedAction::FilterAction),
        None => RouteAction::Unsupported(UnsupportedAction::Missing),
    };
    if let RouteAction::Unsupported(what) = action {
        uns.note(format!("{p} (action {what:?}: requests fail)"));
    }
    Ok(Some(Route {
        name: r.name.clone(),
        matcher,
        action,
        filter_overrides,
    }))
}

/// A virtual host's or route's `typed_per_filter_config` (at `p`), as grpc-go reads it
/// (`processHTTPFilterOverrides`, gRFC A39): an entry may be wrapped in a `FilterConfig`,
/// whose `config` must then be set; an RBAC override must be a valid `RBACPerRoute` (else
/// NACK, gRFC A41). Unlike grpc-go, which NACKs an override of a filter type it does not
/// know unless it is optional, any other override is listed in `unsupported_fields`: the
/// filter it would configure is itself NACKed or skipped by the Listener, so the override
/// can never apply.
fn filter_overrides(
    map: &HashMap<String, Any>,
    p: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<BTreeMap<String, FilterOverride>> {
    let mut out = BTreeMap::new();
    // Sorted, so that a NACK names the same entry every time.
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by_key(|(name, _)| name.as_str());
    for (name, any) in entries {
        let ep = p.key("typed_per_filter_config", name);
        let wrapped = any.type_url == FILTER_CONFIG_TYPE_URL;
        let (any, optional) = if wrapped {
            let fc: route_pb::FilterConfig = decode_any(&ep, any, FILTER_CONFIG_TYPE_URL)?;
            unsupported_fields!(uns, &ep, fc, { disabled })?;
            let Some(config) = fc.config else {
                return Err(ResourceErrorKind::invalid(
                    ep.field("config"),
                    "must be set",
                ));
            };
            (std::borrow::Cow::Owned(config), fc.is_optional)
        } else {
            (std::borrow::Cow::Borrowed(any), false)
        };
        match any.type_url.as_str() {
            RBAC_PER_ROUTE_TYPE_URL => {
                let config_path = ep.field("config");
                let cp = if wrapped { config_path } else { ep };
                let per_route = rbac::decode_per_route(&cp, &any, uns)?;
                out.insert(name.clone(), FilterOverride::Rbac(per_route));
            }
            RBAC_FILTER_TYPE_URL => {
                return Err(ResourceErrorKind::invalid(
                    ep,
                    "an RBAC filter override must be an RBACPerRoute",
                ));
            }
            other => {
                let what = if optional { "optional " } else { "" };
                uns.note(format!(
                    "{ep} ({what}override of type {other:?} not implemented)"
                ));
            }
        }
    }
    Ok(out)
}

fn route_match(
    m: &route_pb::RouteMatch,
    p: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<RouteMatch> {
    use route_pb::route_match::PathSpecifier;
    // grpc-go NACKs a route whose path specifier it does not know, rather than skipping it.
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(s)) => PathMatch::Prefix(s.clone()),
        Some(PathSpecifier::Path(s)) => PathMatch::Path(s.clone()),
        Some(PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(full_match_regex(&p.field("safe_regex"), r)?)
        }
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err(ResourceErrorKind::unsupported(
                p.field("connect_matcher"),
                "CONNECT matching",
            ));
        }
        Some(PathSpecifier::PathSeparatedPrefix(_)) => {
            return Err(ResourceErrorKind::unsupported(
                p.field("path_separated_prefix"),
                "path_separated_prefix matching",
            ));
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(ResourceErrorKind::unsupported(
                p.field("path_match_policy"),
                "path match policy extensions",
            ));
        }
        None => {
            return Err(ResourceErrorKind::invalid(
                p,
                "route match has no path specifier",
            ));
        }
    };

    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(header_matcher(h, &p.at("headers", i), uns)?);
    }
    let mut query_parameters = Vec::with_capacity(m.query_parameters.len());
    for (i, q) in m.query_parameters.iter().enumerate() {
        query_parameters.push(query_matcher(q, &p.at("query_parameters", i))?);
    }
    let runtime_fraction = match m.runtime_fraction.as_ref() {
        Some(rf) => {
            let rp = p.field("runtime_fraction.default_value");
            Some(match &rf.default_value {
                Some(v) => per_million(&rp, v)?,
                None => 0,
            })
        }
        None => None,
    };
    // Matching conditions we cannot evaluate: listed, and the route matches more widely.
    unsupported_fields!(uns, p, m, {
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
    })?;

    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query_parameters,
        runtime_fraction,
    })
}

fn query_matcher(
    q: &route_pb::QueryParameterMatcher,
    p: &FieldPath<'_>,
) -> Result<QueryParameterMatcher> {
    use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    rules::not_empty(&q.name, p.field("name"))?;
    let (string_match, present) = match &q.query_parameter_match_specifier {
        Some(S::StringMatch(sm)) => (
            Some(StringMatcher::from_proto(&p.field("string_match"), sm)?),
            None,
        ),
        Some(S::PresentMatch(b)) => (None, Some(*b)),
        None => {
            return Err(ResourceErrorKind::invalid(
                p,
                "query parameter matcher has no match specifier",
            ));
        }
    };
    Ok(QueryParameterMatcher {
        name: q.name.clone(),
        string_match,
        present,
    })
}

fn forward_action(
    ra: &route_pb::RouteAction,
    p: &FieldPath<'_>,
    vh_retry: Option<&RetryPolicy>,
    plugins: &HashSet<&str>,
    uns: &mut Unsupported,
) -> Result<Option<ForwardAction>> {
    use route_pb::route_action::ClusterSpecifier as S;
    let clusters = match &ra.cluster_specifier {
        Some(S::Cluster(name)) => {
            rules::not_empty(name, p.field("cluster"))?;
            ClusterSpecifier::Cluster(name.clone())
        }
        Some(S::ClusterHeader(h)) => {
            rules::not_empty(h, p.field("cluster_header"))?;
            ClusterSpecifier::ClusterHeader(h.to_ascii_lowercase())
        }
        Some(S::WeightedClusters(wc)) => weighted_clusters(wc, &p.field("weighted_clusters"), uns)?,
        // grpc-go and grpc core: naming a plugin the configuration does not declare is an
        // error, not an unsupported feature.
        Some(S::ClusterSpecifierPlugin(name)) if !plugins.contains(name.as_str()) => {
            return Err(ResourceErrorKind::invalid(
                p.field("cluster_specifier_plugin"),
                format!("{name:?} is not in cluster_specifier_plugins"),
            ));
        }
        // gRFC A28: a route whose cluster specifier is unset or unsupported is ignored.
        Some(S::ClusterSpecifierPlugin(_)) | Some(S::InlineClusterSpecifierPlugin(_)) => {
            uns.note(format!("{p} (cluster specifier plugin: route ignored)"));
            return Ok(None);
        }
        None => {
            uns.note(format!("{p} (no cluster specifier: route ignored)"));
            return Ok(None);
        }
    };

    let timeout = nonzero_duration(&p.field("timeout"), ra.timeout.as_ref())?;
    let max_stream_duration = {
        let msd = ra.max_stream_duration.as_ref();
        let mp = p.field("max_stream_duration");
        let max = nonzero_duration(
            &mp.field("max_stream_duration"),
            msd.and_then(|m| m.max_stream_duration.as_ref()),
        )?;
        // The deprecated route fields stand in for the newer ones when those are unset.
        let header_max = match msd.and_then(|m| m.grpc_timeout_header_max.as_ref()) {
            Some(d) => Some(duration(&mp.field("grpc_timeout_header_max"), d)?),
            None => match &ra.max_grpc_timeout {
                Some(d) => Some(duration(&p.field("max_grpc_timeout"), d)?),
                None => None,
            },
        };
        let offset = match msd.and_then(|m| m.grpc_timeout_header_offset.as_ref()) {
            Some(d) => nonzero_duration(&mp.field("grpc_timeout_header_offset"), Some(d))?,
            None => nonzero_duration(
                &p.field("grpc_timeout_offset"),
                ra.grpc_timeout_offset.as_ref(),
            )?,
        };
        (msd.is_some() || header_max.is_some() || offset.is_some()).then_some(MaxStreamDuration {
            max,
            grpc_timeout_header_max: header_max,
            grpc_timeout_header_offset: offset,
        })
    };
    let retry_policy = match &ra.retry_policy {
        Some(rp) => Some(retry_policy(rp, &p.field("retry_policy"), uns)?),
        None => vh_retry.cloned(),
    };
    let mut hash_policies = Vec::with_capacity(ra.hash_policy.len());
    for (i, hp) in ra.hash_policy.iter().enumerate() {
        if let Some(h) = hash_policy(hp, &p.at("hash_policy", i), uns)? {
            hash_policies.push(h);
        }
    }

    unsupported_fields!(uns, p, ra, {
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        host_rewrite_specifier,
        metadata_match,
        idle_timeout,
        retry_policy_typed_config,
        request_mirror_policies,
        rate_limits,
        cors,
        upgrade_configs,
        internal_redirect_policy,
        hedge_policy,
    })?;

    Ok(Some(ForwardAction {
        clusters,
        timeout,
        max_stream_duration,
        retry_policy,
        hash_policies,
    }))
}

fn weighted_clusters(
    wc: &route_pb::WeightedCluster,
    p: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<ClusterSpecifier> {
    let mut out = Vec::with_capacity(wc.clusters.len());
    let mut sum = WeightSum::default();
    for (i, c) in wc.clusters.iter().enumerate() {
        let cp = p.at("clusters", i);
        let weight = c.weight.as_ref().map_or(0, |w| w.value);
        sum.add(&c.name, weight, &cp, p)?;
        if weight == 0 {
            continue;
        }
        unsupported_fields!(uns, &cp, c, {
            typed_per_filter_config,
            request_headers_to_add,
            response_headers_to_add,
            host_rewrite_specifier,
        })?;
        out.push(WeightedCluster {
            name: c.name.clone(),
            weight,
        });
    }
    sum.finish(p)?;
    unsupported_fields!(uns, p, wc, {
        runtime_key_prefix,
        random_value_specifier,
    })?;
    Ok(ClusterSpecifier::Weighted(out))
}

fn retry_policy(
    rp: &route_pb::RetryPolicy,
    p: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<RetryPolicy> {
    let mut retry_on = RetryOn::empty();
    for token in rp
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        match RetryOn::from_token(token) {
            Some(c) => retry_on = retry_on | c,
            None => uns.note(format!("{p}.retry_on ({token})")),
        }
    }
    let num_retries = rp.num_retries.as_ref().map_or(1, |n| n.value);
    let (base_interval, max_interval) = match &rp.retry_back_off {
        None => (Duration::from_millis(25), Duration::from_millis(250)),
        Some(b) => {
            let bp = p.field("retry_back_off.base_interval");
            let base = match &b.base_interval {
                Some(d) => duration(&bp, d)?,
                None => return Err(ResourceErrorKind::invalid(bp, "must be set")),
            };
            rules::backoff_base(base, bp)?;
            let max = match &b.max_interval {
                Some(d) => {
                    let mp = p.field("retry_back_off.max_interval");
                    let max = duration(&mp, d)?;
                    rules::backoff_max(max, base, mp)?;
                    max
                }
                None => base.saturating_mul(10),
            };
            (base, max)
        }
    };
    let per_try_timeout =
        nonzero_duration(&p.field("per_try_timeout"), rp.per_try_timeout.as_ref())?;
    let mut retriable_status_codes = Vec::with_capacity(rp.retriable_status_codes.len());
    for (i, &code) in rp.retriable_status_codes.iter().enumerate() {
        retriable_status_codes.push(rules::status_code(code, p.at("retriable_status_codes", i))?);
    }
    let mut avoid_previous_hosts = false;
    for (i, pred) in rp.retry_host_predicate.iter().enumerate() {
        use route_pb::retry_policy::retry_host_predicate::ConfigType;
        let is_previous_hosts = match &pred.config_type {
            Some(ConfigType::TypedConfig(any)) => any.type_url == PREVIOUS_HOSTS_TYPE_URL,
            None => pred.name == PREVIOUS_HOSTS_PREDICATE,
        };
        if is_previous_hosts {
            avoid_previous_hosts = true;
        } else {
            uns.note(format!("{}", p.at("retry_host_predicate", i)));
        }
    }
    let host_selection_max_attempts = match rp.host_selection_retry_max_attempts {
        n if n <= 1 => 1,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    };
    unsupported_fields!(uns, p, rp, {
        per_try_idle_timeout,
        retry_priority,
        retry_options_predicates,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
    })?;
    Ok(RetryPolicy {
        retry_on,
        num_retries,
        base_interval,
        max_interval,
        per_try_timeout,
        retriable_status_codes,
        avoid_previous_hosts,
        host_selection_max_attempts,
    })
}

fn hash_policy(
    hp: &route_pb::route_action::HashPolicy,
    p: &FieldPath<'_>,
    uns: &mut Unsupported,
) -> Result<Option<HashPolicy>> {
    use route_pb::route_action::hash_policy::PolicySpecifier as S;
    let kind = match &hp.policy_specifier {
        Some(S::Header(h)) => {
            let hp_path = p.field("header");
            rules::not_empty(&h.header_name, hp_path.field("header_name"))?;
            let regex_rewrite = match &h.regex_rewrite {
                Some(rr) => Some(regex_rewrite(rr, &hp_path.field("regex_rewrite"))?),
                None => None,
            };
            HashPolicyKind::Header {
                name: h.header_name.to_ascii_lowercase(),
                regex_rewrite,
            }
        }
        Some(S::FilterState(fs)) if fs.key == CHANNEL_ID_FILTER_STATE_KEY => {
            HashPolicyKind::ChannelId
        }
        Some(S::ConnectionProperties(cp)) if cp.source_ip => HashPolicyKind::SourceIp,
        _ => {
            uns.note(format!("{p} (hash policy ignored)"));
            return Ok(None);
        }
    };
    Ok(Some(HashPolicy {
        kind,
        terminal: hp.terminal,
    }))
}

fn regex_rewrite(
    rr: &matcher_pb::RegexMatchAndSubstitute,
    p: &FieldPath<'_>,
) -> Result<(SafeRegex, String)> {
    let pp = p.field("pattern");
    let Some(pattern) = &rr.pattern else {
        return Err(ResourceErrorKind::invalid(pp, "must be set"));
    };
    let re =
        SafeRegex::unanchored(&pattern.regex).map_err(|e| ResourceErrorKind::InvalidRegex {
            path: pp.to_string(),
            source: std::sync::Arc::new(e),
        })?;
    Ok((re, rr.substitution.clone()))
}
