//! What a request on an xDS-served connection meets before the application: its chain's
//! route table (A36: only `non_forwarding_action` routes are served) and RBAC (A41).

use meshwork_xds::client::RouteUnavailable;
use meshwork_xds::resource::RouteAction;
use rand::RngCore;

use super::slot::{ChainHttp, rbac_override};
use crate::inbound::{ConnectionInfo, PathError, RbacAttributes, RbacDecision, RbacEngine};
use crate::route::{authority, route_matches};

/// Why the xDS configuration refused a request, put into the refusal's response
/// extensions. The caller is told only the kind of refusal (`grpc-message`), not the
/// names of the server's policies or routes.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum XdsRefusal {
    /// The request arrived on a connection no xDS filter chain accepted (the layer was used
    /// outside an xDS-driven server's connection loop): refused, not let through. gRPC:
    /// `UNAVAILABLE`.
    #[error("the connection has no xDS filter chain")]
    NoFilterChain,
    /// The request has more than one `Host` header, so its authority is ambiguous (RFC 9112
    /// §3.2 asks for a 400). gRPC: `INTERNAL`.
    #[error("the request has more than one Host header")]
    MultipleHosts,
    /// The request path cannot be normalised, so no route or RBAC rule can be trusted to
    /// see what the service would execute. gRPC: `INTERNAL`.
    #[error("the request path cannot be normalised")]
    InvalidPath(#[source] PathError),
    /// The chain's route configuration is unavailable (RDS said it does not exist, or
    /// rejected it before a good one came). gRPC: `UNAVAILABLE`.
    #[error("the route configuration is unavailable")]
    RoutesUnavailable(#[source] RouteUnavailable),
    /// No virtual host matches the request's authority. gRPC: `UNAVAILABLE`.
    #[error("no virtual host matches authority {authority:?}")]
    NoVirtualHost {
        /// The request's authority.
        authority: Option<String>,
    },
    /// No route of the virtual host matches. gRPC: `UNAVAILABLE`.
    #[error("no route of virtual host {virtual_host:?} matches path {path}")]
    NoRoute {
        /// The virtual host's name.
        virtual_host: String,
        /// The request path.
        path: String,
    },
    /// The matching route is not a `non_forwarding_action` one: a server has nowhere to
    /// forward to (A36). gRPC: `UNAVAILABLE`.
    #[error("route {route:?} is not a non-forwarding route")]
    NotNonForwarding {
        /// The route's name.
        route: String,
    },
    /// An RBAC filter denied it. gRPC: `PERMISSION_DENIED`.
    #[error("denied by RBAC filter {filter:?}{}", policy.as_ref().map(|p| format!(" (policy {p:?})")).unwrap_or_default())]
    Denied {
        /// The filter's instance name.
        filter: String,
        /// The DENY policy that matched, or `None` when no ALLOW policy did.
        policy: Option<String>,
    },
}

impl XdsRefusal {
    /// Whether it is an authorization denial (PERMISSION_DENIED, 403).
    pub fn is_denial(&self) -> bool {
        matches!(self, XdsRefusal::Denied { .. })
    }

    /// The `grpc-status` and HTTP status the refusal is answered with.
    pub(crate) fn statuses(&self) -> (&'static str, http::StatusCode) {
        match self {
            XdsRefusal::Denied { .. } => ("7", http::StatusCode::FORBIDDEN),
            XdsRefusal::MultipleHosts | XdsRefusal::InvalidPath(_) => {
                ("13", http::StatusCode::BAD_REQUEST)
            }
            _ => ("14", http::StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    /// What the caller is told (`grpc-message`): the kind of refusal, without the names of
    /// the server's policies or routes (Envoy answers "RBAC: access denied").
    pub(crate) fn caller_message(&self) -> &'static str {
        match self {
            XdsRefusal::Denied { .. } => "RBAC: access denied",
            XdsRefusal::NoFilterChain => "no filter chain",
            XdsRefusal::MultipleHosts => "more than one Host header",
            XdsRefusal::InvalidPath(_) => "the request path cannot be normalised",
            XdsRefusal::RoutesUnavailable(_) => "the route configuration is unavailable",
            XdsRefusal::NoVirtualHost { .. } | XdsRefusal::NoRoute { .. } => "no matching route",
            XdsRefusal::NotNonForwarding { .. } => "the matching route has an unsupported action",
        }
    }
}

impl ChainHttp {
    /// Judges `req` received on `connection`: `Ok` when it may reach the application. The
    /// path is the normalised one the application will see; the authority is the URI's or
    /// the single `Host` header's, as RBAC reads it.
    pub(crate) fn decide<B>(
        &self,
        req: &http::Request<B>,
        connection: &ConnectionInfo,
        rng: &mut impl RngCore,
    ) -> Result<(), XdsRefusal> {
        let routes = self
            .routes
            .as_ref()
            .map_err(|e| XdsRefusal::RoutesUnavailable(e.clone()))?;
        let authority = authority(req);
        let Some(vh) = routes.virtual_host_for(authority.unwrap_or("")) else {
            return Err(XdsRefusal::NoVirtualHost {
                authority: authority.map(str::to_owned),
            });
        };
        let path = req.uri().path();
        let Some(route) = vh.routes.iter().find(|route| {
            route_matches(&route.matcher, path, req.uri().query(), req.headers(), rng)
        }) else {
            return Err(XdsRefusal::NoRoute {
                virtual_host: vh.name.clone(),
                path: path.to_owned(),
            });
        };
        if !matches!(route.action, RouteAction::NonForwarding) {
            return Err(XdsRefusal::NotNonForwarding {
                route: route.name.clone(),
            });
        }
        if self.rbac.is_empty() {
            return Ok(());
        }
        let attributes = RbacAttributes::new(req, connection, connection.is_tls());
        for (name, engine) in &self.rbac {
            let decision = match rbac_override(vh, route, name) {
                Some(per_route) => RbacEngine::decide_config(&per_route.rbac, &attributes),
                None => engine.decide(&attributes),
            };
            if let RbacDecision::Deny { policy } = decision {
                return Err(XdsRefusal::Denied {
                    filter: name.clone(),
                    policy: policy.map(str::to_owned),
                });
            }
        }
        Ok(())
    }
}
