//! Route selection: a pure function of the config, the request and a random source.

use std::borrow::Cow;

use http::HeaderMap;
use rand::RngCore;

use crate::config::{
    ClusterSpecifier, HashPolicyKind, HeaderMatchKind, HeaderMatcher, PathMatch,
    QueryParameterMatcher, RouteAction, RouteMatch, TargetConfig, WeightedCluster,
};

use super::RouteError;

/// Which route of which virtual host a request matched, and the cluster chosen for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selection {
    pub(crate) virtual_host: usize,
    pub(crate) route: usize,
    pub(crate) cluster: ClusterChoice,
}

/// The cluster a selection forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClusterChoice {
    /// `ClusterSpecifier::Cluster`, or entry `i` of `ClusterSpecifier::Weighted`.
    Index(usize),
    /// `ClusterSpecifier::ClusterHeader`: the header's value.
    Header(http::HeaderValue),
}

/// Selects the route for a request: the virtual host by authority (or the pinned one), then
/// the first route that matches, then the cluster (a weighted choice draws from `rng`).
pub(crate) fn select<B>(
    cfg: &TargetConfig,
    req: &http::Request<B>,
    rng: &mut impl RngCore,
) -> Result<Selection, RouteError> {
    let authority = authority(req);
    let Some((vh_index, vh)) = cfg.virtual_host_for(authority) else {
        return Err(RouteError::NoVirtualHost {
            authority: authority.map(str::to_owned),
        });
    };
    let path = req.uri().path();
    let query = req.uri().query();
    let Some((route_index, route)) = vh
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| route_matches(&r.matcher, path, query, req.headers(), rng))
    else {
        return Err(RouteError::NoRoute {
            virtual_host: vh.name.clone(),
            path: path.to_owned(),
        });
    };
    let action = match &route.action {
        RouteAction::Forward(fa) => fa,
        RouteAction::NonForwarding => {
            return Err(RouteError::NonForwarding {
                route: route.name.clone(),
            });
        }
        RouteAction::Unsupported(action) => {
            return Err(RouteError::UnsupportedAction {
                route: route.name.clone(),
                action: *action,
            });
        }
    };
    let cluster = match &action.clusters {
        ClusterSpecifier::Cluster(_) => ClusterChoice::Index(0),
        ClusterSpecifier::Weighted(list) => ClusterChoice::Index(pick_weighted(list, rng)),
        ClusterSpecifier::ClusterHeader(name) => match req.headers().get(name.as_str()) {
            Some(v) if !v.is_empty() && v.to_str().is_ok() => ClusterChoice::Header(v.clone()),
            _ => {
                return Err(RouteError::MissingClusterHeader {
                    header: name.clone(),
                });
            }
        },
    };
    Ok(Selection {
        virtual_host: vh_index,
        route: route_index,
        cluster,
    })
}

/// The request's authority: the URI's, else the `host` header's.
pub(crate) fn authority<B>(req: &http::Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Picks an index with probability proportional to its weight. Zero-weight entries are
/// never picked; with a total of zero (rejected by validation) the first entry is.
pub(crate) fn pick_weighted(list: &[WeightedCluster], rng: &mut impl RngCore) -> usize {
    let total: u64 = list.iter().map(|w| u64::from(w.weight)).sum();
    if total == 0 {
        return 0;
    }
    // `total` is at most a few u32s, so a u64 modulo has negligible bias.
    let mut point = rng.next_u64() % total;
    for (i, w) in list.iter().enumerate() {
        let w = u64::from(w.weight);
        if point < w {
            return i;
        }
        point -= w;
    }
    list.len() - 1
}

/// Whether a route matches: path, then headers, query parameters and runtime fraction.
pub(crate) fn route_matches(
    m: &RouteMatch,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    rng: &mut impl RngCore,
) -> bool {
    let path_ok = match &m.path {
        PathMatch::Prefix(prefix) => starts_with(path, prefix, m.case_sensitive),
        PathMatch::Path(exact) => {
            if m.case_sensitive {
                path == exact
            } else {
                path.eq_ignore_ascii_case(exact)
            }
        }
        PathMatch::Regex(re) => re.is_match(path),
    };
    path_ok
        && m.headers.iter().all(|h| header_matches(h, headers))
        && m.query_parameters.iter().all(|q| query_matches(q, query))
        // Drawn last so that a route that fails on anything else costs no randomness.
        && m.runtime_fraction
            .is_none_or(|ppm| (rng.next_u32() % 1_000_000) < ppm)
}

fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    let (s, p) = (s.as_bytes(), prefix.as_bytes());
    s.len() >= p.len()
        && if case_sensitive {
            &s[..p.len()] == p
        } else {
            s[..p.len()].eq_ignore_ascii_case(p)
        }
}

/// The value of a header as gRPC sees it: every value joined with `,`. Binary (`-bin`)
/// headers are treated as absent, as gRPC does (gRFC A28), and so are values that are not
/// UTF-8.
pub(crate) fn header_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    if name.ends_with("-bin") {
        return None;
    }
    joined_header_value(headers, name)
}

/// Every value of a header joined with `,`, binary ones included; `None` when the header is
/// absent or a value is not UTF-8.
pub(crate) fn joined_header_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter();
    let first = std::str::from_utf8(values.next()?.as_bytes()).ok()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = String::with_capacity(first.len() * 2 + 1);
    joined.push_str(first);
    for v in std::iter::once(second).chain(values) {
        joined.push(',');
        joined.push_str(std::str::from_utf8(v.as_bytes()).ok()?);
    }
    Some(Cow::Owned(joined))
}

/// A header condition (gRPC semantics, gRFC A28): a missing header fails every condition
/// except `present: false`, whatever `invert` says; otherwise `invert` flips the result.
pub(crate) fn header_matches(h: &HeaderMatcher, headers: &HeaderMap) -> bool {
    header_value_matches(h, header_value(headers, &h.name).as_deref())
}

/// [`header_matches`] on a value already looked up (`None`: the header is absent), for
/// callers that see headers differently (RBAC, gRFC A41).
pub(crate) fn header_value_matches(h: &HeaderMatcher, value: Option<&str>) -> bool {
    let Some(v) = value else {
        return match h.kind {
            // Absent: `present: false` holds, inverted or not by `invert`.
            HeaderMatchKind::Present(want) => want == h.invert,
            _ => false,
        };
    };
    let hit = match &h.kind {
        HeaderMatchKind::Exact(s) => v == s,
        HeaderMatchKind::Prefix(s) => v.starts_with(s.as_str()),
        HeaderMatchKind::Suffix(s) => v.ends_with(s.as_str()),
        HeaderMatchKind::Contains(s) => v.contains(s.as_str()),
        HeaderMatchKind::SafeRegex(re) => re.is_match(v),
        HeaderMatchKind::Range { start, end } => {
            v.parse::<i64>().is_ok_and(|n| *start <= n && n < *end)
        }
        HeaderMatchKind::Present(want) => *want,
        HeaderMatchKind::StringMatch(sm) => sm.matches(v),
    };
    hit != h.invert
}

/// A query parameter condition; the first occurrence of the parameter is the one compared,
/// after percent-decoding (`+` is a space), as Envoy does. A matcher with neither a value
/// condition nor a presence condition asks for presence.
pub(crate) fn query_matches(q: &QueryParameterMatcher, query: Option<&str>) -> bool {
    let value = query.and_then(|query| {
        query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name) == q.name).then(|| percent_decode(value))
        })
    });
    match (&q.string_match, q.present, value) {
        (_, Some(want), v) => v.is_some() == want,
        (Some(sm), None, Some(v)) => sm.matches(&v),
        (Some(_), None, None) => false,
        (None, None, v) => v.is_some(),
    }
}

/// Decodes `%XX` escapes and `+`; borrows when there are none. Invalid escapes are kept
/// as they are; a result that is not UTF-8 is decoded lossily.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                out.push(hex(b[i + 1]).unwrap_or(0) << 4 | hex(b[i + 2]).unwrap_or(0));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The request hash of gRFC A42: the hash policies in order, each one that produces a value
/// folded in (`hash = hash.rotate_left(1) ^ value`), stopping after a terminal policy that
/// produced one. `None` when no policy produced a value (the ring-hash balancer then picks
/// at random, as gRPC does).
pub(crate) fn request_hash(
    policies: &[crate::config::HashPolicy],
    headers: &HeaderMap,
    channel_id: u64,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        let value = match &p.kind {
            HashPolicyKind::Header {
                name,
                regex_rewrite,
            } => header_value(headers, name).map(|v| match regex_rewrite {
                Some((re, sub)) => {
                    let rewritten = re.regex().replace_all(&v, sub.as_str());
                    xxhash_rust::xxh64::xxh64(rewritten.as_bytes(), 0)
                }
                None => xxhash_rust::xxh64::xxh64(v.as_bytes(), 0),
            }),
            HashPolicyKind::ChannelId => Some(channel_id),
            // gRPC ignores this policy; so do we (a hand-built config cannot contain it).
            HashPolicyKind::SourceIp => None,
        };
        if let Some(v) = value {
            hash = Some(hash.map_or(v, |h| h.rotate_left(1) ^ v));
            if p.terminal {
                break;
            }
        }
    }
    hash
}
