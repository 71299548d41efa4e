//! `Listener` (LDS): client-side API listeners holding an `HttpConnectionManager`, and
//! server-side listeners with filter chains ([`ServerListener`], in `server`).

// Control planes still send deprecated fields (Istio fills both the current and the deprecated
// ones), so reading them is deliberate.
#![allow(deprecated)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use envoy_types::pb::google::protobuf::Any;
use prost::Message as _;

use super::rbac::{self, RbacConfig};
use super::route::{self, RouteConfiguration};
use super::{
    FieldPath, Resource, ResourceError, ResourceErrorKind, Result, Unsupported, check_ads_or_self,
    decode_any, nonzero_duration, unsupported_fields,
};

/// The type URL of the `HttpConnectionManager` an API listener must hold.
pub const HTTP_CONNECTION_MANAGER_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The type URL of the router filter, which must be the last HTTP filter.
pub const ROUTER_FILTER_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const TYPED_STRUCT_TYPE_URLS: [&str; 2] = [
    "type.googleapis.com/xds.type.v3.TypedStruct",
    "type.googleapis.com/udpa.type.v1.TypedStruct",
];

/// A validated client-side `envoy.config.listener.v3.Listener`.
///
/// Istio's outbound listeners also carry a VIP `address`; it is ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// The resource name (what the client dialed, e.g. `echo.default.svc.cluster.local:7070`).
    pub name: String,
    /// Where the routes come from.
    pub route: RouteSource,
    /// The HTTP filters in order, ending with the router. Optional filters meshwork does not
    /// know are left out (and listed in `unsupported_fields`).
    pub http_filters: Vec<HttpFilter>,
    /// `common_http_protocol_options.max_stream_duration` (gRFC A31); `None` when unset or
    /// zero.
    pub max_stream_duration: Option<Duration>,
    /// Set-but-unimplemented field paths (see [`super::Resource::unsupported_fields`]).
    pub unsupported_fields: Vec<String>,
}

/// Where a listener's routes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    /// A RouteConfiguration fetched over RDS (from the same ADS stream).
    Rds {
        /// Its name.
        route_config_name: String,
    },
    /// A RouteConfiguration inside the listener, validated like an RDS one.
    Inline(Arc<RouteConfiguration>),
}

/// One HTTP filter of the connection manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFilter {
    /// The filter's instance name.
    pub name: String,
    /// The type URL of its config (unwrapped from a `TypedStruct`).
    pub type_url: String,
    /// What meshwork knows of it.
    pub kind: HttpFilterKind,
}

/// The HTTP filters meshwork recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpFilterKind {
    /// `envoy.extensions.filters.http.router.v3.Router` (terminal).
    Router,
    /// Fault injection (gRFC A33) — recognised, not implemented yet.
    Fault,
    /// RBAC (gRFC A41) — recognised, not implemented yet.
    Rbac,
    /// Stateful session / cookie affinity (gRFC A55) — recognised, not implemented yet.
    StatefulSession,
    /// GCP authentication (gRFC A83) — recognised, not implemented yet.
    GcpAuthn,
}

impl HttpFilterKind {
    fn from_type_url(url: &str) -> Option<Self> {
        let name = url.rsplit('/').next().unwrap_or(url);
        Some(match name {
            "envoy.extensions.filters.http.router.v3.Router" => HttpFilterKind::Router,
            "envoy.extensions.filters.http.fault.v3.HTTPFault" => HttpFilterKind::Fault,
            "envoy.extensions.filters.http.rbac.v3.RBAC" => HttpFilterKind::Rbac,
            "envoy.extensions.filters.http.stateful_session.v3.StatefulSession" => {
                HttpFilterKind::StatefulSession
            }
            "envoy.extensions.filters.http.gcp_authn.v3.GcpAuthnFilterConfig" => {
                HttpFilterKind::GcpAuthn
            }
            _ => return None,
        })
    }

    /// Whether an xDS-enabled server runs this filter (gRFC A36): the router and RBAC; the
    /// others are client-side filters.
    pub fn runs_on_server(self) -> bool {
        matches!(self, HttpFilterKind::Router | HttpFilterKind::Rbac)
    }

    /// Whether meshwork applies this filter today.
    pub fn is_implemented(self) -> bool {
        matches!(self, HttpFilterKind::Router)
    }
}

/// `xds.type.v3.TypedStruct` / `udpa.type.v1.TypedStruct`: only the inner type URL matters.
#[derive(Clone, PartialEq, prost::Message)]
struct TypedStruct {
    #[prost(string, tag = "1")]
    type_url: String,
}

/// Decodes an LDS resource: a client listener when `api_listener` is set, else a server one.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Resource, ResourceError> {
    decode_with(bytes, |l| {
        if l.api_listener.is_some() {
            validate(l).map(|l| Resource::Listener(Arc::new(l)))
        } else {
            server::validate(l).map(|l| Resource::ServerListener(Arc::new(l)))
        }
    })
}

/// Decodes a named Listener and validates it with `validate`, whose errors carry the name.
fn decode_with<T>(
    bytes: &[u8],
    validate: impl FnOnce(&listener_pb::Listener) -> Result<T>,
) -> std::result::Result<T, ResourceError> {
    let l = listener_pb::Listener::decode(bytes)
        .map_err(|e| ResourceError::new(None, ResourceErrorKind::decode("", e)))?;
    if l.name.is_empty() {
        return Err(ResourceError::new(
            None,
            ResourceErrorKind::invalid("name", "must not be empty"),
        ));
    }
    validate(&l).map_err(|kind| ResourceError::new(Some(l.name.clone()), kind))
}

fn validate(l: &listener_pb::Listener) -> Result<Listener> {
    let root = FieldPath::ROOT;
    let Some(api) = &l.api_listener else {
        return Err(ResourceErrorKind::invalid(
            root.field("api_listener"),
            "must be set (a Listener without one is a server listener)",
        ));
    };
    let ap = root.field("api_listener.api_listener");
    let Some(any) = &api.api_listener else {
        return Err(ResourceErrorKind::invalid(ap, "must be set"));
    };
    let hcm: hcm_pb::HttpConnectionManager =
        decode_any(&ap, any, HTTP_CONNECTION_MANAGER_TYPE_URL)?;

    let mut uns = Unsupported::default();
    unsupported_fields!(uns, &root, l, {
        filter_chains,
        default_filter_chain,
        listener_filters,
        access_log,
    })?;

    let cm = connection_manager(&hcm, &ap, &mut uns, Side::Client)?;
    Ok(Listener {
        name: l.name.clone(),
        route: cm.route,
        http_filters: cm.http_filters.into_iter().map(|f| f.filter).collect(),
        max_stream_duration: cm.max_stream_duration,
        unsupported_fields: uns.into_vec(),
    })
}

/// Which side a connection manager is decoded for: the HTTP filters each side runs differ
/// (gRFC A39 for the client, A36 for the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// An `HttpConnectionManager`, validated for one [`Side`].
struct ConnectionManager {
    route: RouteSource,
    http_filters: Vec<DecodedFilter>,
    max_stream_duration: Option<Duration>,
}

/// One HTTP filter with its decoded configuration, when the side uses it.
struct DecodedFilter {
    filter: HttpFilter,
    /// The RBAC configuration, decoded on the server side only.
    rbac: Option<RbacConfig>,
}

/// Validates an `HttpConnectionManager` at `ap`.
fn connection_manager(
    hcm: &hcm_pb::HttpConnectionManager,
    ap: &FieldPath<'_>,
    uns: &mut Unsupported,
    side: Side,
) -> Result<ConnectionManager> {
    // gRFC A41: these must be unset, else NACK.
    unsupported_fields!(uns, ap, hcm, {
        xff_num_trusted_hops => reject("trusting X-Forwarded-For hops"),
        original_ip_detection_extensions => reject("original IP detection extensions"),
    })?;

    use hcm_pb::http_connection_manager::RouteSpecifier;
    let route = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            let rp = ap.field("rds");
            check_ads_or_self(&rp.field("config_source"), rds.config_source.as_ref())?;
            if rds.route_config_name.is_empty() {
                return Err(ResourceErrorKind::invalid(
                    rp.field("route_config_name"),
                    "must not be empty",
                ));
            }
            RouteSource::Rds {
                route_config_name: rds.route_config_name.clone(),
            }
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            let rp = ap.field("route_config");
            let rc = route::validate(rc, &rp)?;
            for entry in &rc.unsupported_fields {
                uns.note(entry.clone());
            }
            RouteSource::Inline(Arc::new(rc))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(ResourceErrorKind::unsupported(
                ap.field("scoped_routes"),
                "scoped routes",
            ));
        }
        None => {
            return Err(ResourceErrorKind::invalid(
                ap,
                "HttpConnectionManager has no route specifier (rds or route_config)",
            ));
        }
    };

    let http_filters = http_filters(&hcm.http_filters, ap, uns, side)?;

    let max_stream_duration = match &hcm.common_http_protocol_options {
        Some(o) => {
            let op = ap.field("common_http_protocol_options");
            unsupported_fields!(uns, &op, o, {
                idle_timeout,
                max_connection_duration,
                max_headers_count,
            })?;
            nonzero_duration(
                &op.field("max_stream_duration"),
                o.max_stream_duration.as_ref(),
            )?
        }
        None => None,
    };
    unsupported_fields!(uns, ap, hcm, {
        tracing,
        access_log,
        upgrade_configs,
        stream_idle_timeout,
        request_timeout,
        local_reply_config,
        request_id_extension,
    })?;

    Ok(ConnectionManager {
        route,
        http_filters,
        max_stream_duration,
    })
}

fn filter_type_url(p: &FieldPath<'_>, any: &Any) -> Result<String> {
    if TYPED_STRUCT_TYPE_URLS.contains(&any.type_url.as_str()) {
        let ts = TypedStruct::decode(any.value.as_slice())
            .map_err(|e| ResourceErrorKind::decode(p, e))?;
        Ok(ts.type_url)
    } else {
        Ok(any.type_url.clone())
    }
}

/// gRPC's rules (A39): names are non-empty and unique; an unknown filter is an error unless
/// `is_optional`, in which case it is skipped; the router must be last, and only last.
///
/// On the server side (A36) only the filters a server runs count as known (the router and
/// RBAC, whose configuration is decoded here); the client-only ones follow the unknown
/// filters' rule.
fn http_filters(
    filters: &[hcm_pb::HttpFilter],
    ap: &FieldPath<'_>,
    uns: &mut Unsupported,
    side: Side,
) -> Result<Vec<DecodedFilter>> {
    use hcm_pb::http_filter::ConfigType;
    let mut out = Vec::with_capacity(filters.len());
    let mut names = HashSet::with_capacity(filters.len());
    for (i, f) in filters.iter().enumerate() {
        let fp = ap.at("http_filters", i);
        if f.name.is_empty() {
            return Err(ResourceErrorKind::invalid(
                fp.field("name"),
                "must not be empty",
            ));
        }
        if !names.insert(f.name.as_str()) {
            return Err(ResourceErrorKind::invalid(
                fp.field("name"),
                format!("duplicate filter name {:?}", f.name),
            ));
        }
        let typed_config = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => Some(any),
            Some(ConfigType::ConfigDiscovery(_)) | None => None,
        };
        let type_url = match typed_config {
            Some(any) => filter_type_url(&fp.field("typed_config"), any)?,
            None => String::new(),
        };
        let kind = HttpFilterKind::from_type_url(&type_url)
            .filter(|k| side == Side::Client || k.runs_on_server());
        let Some(kind) = kind else {
            if f.is_optional {
                uns.note(format!("{fp} ({}: optional filter skipped)", f.name));
                continue;
            }
            return Err(ResourceErrorKind::unsupported(
                fp,
                format!("HTTP filter {:?} with config type {type_url:?}", f.name),
            ));
        };
        let rbac = match (side, kind, typed_config) {
            (Side::Server, HttpFilterKind::Rbac, Some(any)) => {
                Some(rbac::decode_filter(&fp.field("typed_config"), any, uns)?)
            }
            _ => None,
        };
        if !kind.is_implemented() && rbac.is_none() {
            uns.note(format!(
                "{fp} ({}: {kind:?} filter not implemented)",
                f.name
            ));
        }
        unsupported_fields!(uns, &fp, f, { disabled })?;
        out.push(DecodedFilter {
            filter: HttpFilter {
                name: f.name.clone(),
                type_url,
                kind,
            },
            rbac,
        });
    }
    match out
        .iter()
        .position(|f| f.filter.kind == HttpFilterKind::Router)
    {
        None => Err(ResourceErrorKind::invalid(
            ap.field("http_filters"),
            "no router filter (envoy.extensions.filters.http.router.v3.Router)",
        )),
        Some(pos) if pos + 1 != out.len() => Err(ResourceErrorKind::invalid(
            ap.field("http_filters"),
            format!(
                "the router filter {:?} is not the last filter",
                out[pos].filter.name
            ),
        )),
        Some(_) => Ok(out),
    }
}

mod server;

pub use server::{
    DownstreamTls, FilterChain, FilterChainMatch, MAX_FILTER_CHAIN_MATCHES, MAX_FILTER_CHAINS,
    MAX_MATCH_LIST_LEN, ServerHttpFilter, ServerHttpFilterConfig, ServerListener, SourceType,
};

#[cfg(test)]
mod tests;
