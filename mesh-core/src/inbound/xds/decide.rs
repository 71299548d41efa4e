//! What a request on an xDS-served connection meets before the application: its chain's
//! route table (A36: only `non_forwarding_action` routes are served) and RBAC (A41).

use rand::RngCore;

use super::slot::ChainHttp;
use crate::inbound::{ConnectionInfo, RbacAttributes, RbacDecision};
use crate::route::route_matches;

/// Why the xDS configuration refused a request, put into the refusal's response
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XdsRefusal {
    /// The chain's route configuration is unavailable (RDS said it does not exist, or
    /// rejected it before a good one came). gRPC: `UNAVAILABLE`.
    #[error("the route configuration is unavailable: {0}")]
    RoutesUnavailable(String),
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
    /// Whether it is an authorization denial (PERMISSION_DENIED, 403) rather than a
    /// configuration one (UNAVAILABLE, 503).
    pub fn is_denial(&self) -> bool {
        matches!(self, XdsRefusal::Denied { .. })
    }
}

impl ChainHttp {
    /// Judges `req` received on `connection`: `Ok` when it may reach the application.
    pub(crate) fn decide<B>(
        &self,
        req: &http::Request<B>,
        connection: &ConnectionInfo,
        rng: &mut impl RngCore,
    ) -> Result<(), XdsRefusal> {
        let routes = self
            .routes
            .as_ref()
            .map_err(|e| XdsRefusal::RoutesUnavailable(e.to_string()))?;
        let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let Some((v, vh)) = routes
            .virtual_host_for(authority.unwrap_or(""))
            .and_then(|vh| {
                let i = routes
                    .virtual_hosts
                    .iter()
                    .position(|x| std::ptr::eq(x, vh))?;
                Some((i, vh))
            })
        else {
            return Err(XdsRefusal::NoVirtualHost {
                authority: authority.map(str::to_owned),
            });
        };
        let path = req.uri().path();
        let Some((r, route)) = vh.routes.iter().enumerate().find(|(_, route)| {
            route_matches(&route.matcher, path, req.uri().query(), req.headers(), rng)
        }) else {
            return Err(XdsRefusal::NoRoute {
                virtual_host: vh.name.clone(),
                path: path.to_owned(),
            });
        };
        if !matches!(
            route.action,
            meshwork_xds::resource::RouteAction::NonForwarding
        ) {
            return Err(XdsRefusal::NotNonForwarding {
                route: route.name.clone(),
            });
        }
        if self.rbac.is_empty() {
            return Ok(());
        }
        let attributes = RbacAttributes::new(req, connection, connection.is_tls());
        let overridden = self.overridden.get(&(v, r));
        for (i, (name, engine)) in self.rbac.iter().enumerate() {
            let engine = overridden.and_then(|o| o.get(i)).unwrap_or(engine);
            if let RbacDecision::Deny { policy } = engine.decide(&attributes) {
                return Err(XdsRefusal::Denied {
                    filter: name.clone(),
                    policy: policy.map(str::to_owned),
                });
            }
        }
        Ok(())
    }
}
