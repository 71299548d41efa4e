//! One filter chain of the served Listener, compiled: the TLS its connections take and the
//! HTTP configuration their requests meet (routes and RBAC).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshwork_xds::client::{RouteUnavailable, ServerConfig};
use meshwork_xds::resource::{
    DownstreamTls, FilterChain, FilterChainMatch, FilterOverride, RbacPerRoute, Route,
    RouteConfiguration, ServerHttpFilterConfig, VirtualHost,
};
use tokio_rustls::TlsAcceptor;

use crate::identity::{CertificateProviders, IdentityError};
use crate::inbound::RbacEngine;
use crate::inbound::acceptor::AcceptedChain;

/// One compiled filter chain, shared by the connections it accepted.
pub(crate) struct ChainSlot {
    name: String,
    /// What decides whether the slot can be kept across an update: the same match and the
    /// same TLS.
    filter_match: FilterChainMatch,
    downstream_tls: Option<DownstreamTls>,
    tls: Option<TlsAcceptor>,
    http: ArcSwap<ChainHttp>,
}

impl fmt::Debug for ChainSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainSlot")
            .field("name", &self.name)
            .field("tls", &self.downstream_tls)
            .finish_non_exhaustive()
    }
}

impl ChainSlot {
    /// Compiles `chain`, reusing `reuse`'s TLS acceptor when its TLS is the same (so an update
    /// that leaves TLS alone does not rebuild rustls configurations).
    pub(crate) fn compile(
        chain: &FilterChain,
        config: &ServerConfig,
        tls: &ChainTls<'_>,
        reuse: Option<&ChainSlot>,
    ) -> Result<Self, IdentityError> {
        let acceptor = match (&chain.tls, reuse) {
            (None, _) => None,
            (Some(_), Some(old)) if old.same_tls(chain) => old.tls.clone(),
            (Some(dt), _) => Some(tls.acceptor(dt)?),
        };
        Ok(Self {
            name: chain.name.clone(),
            filter_match: chain.filter_match.clone(),
            downstream_tls: chain.tls.clone(),
            tls: acceptor,
            http: ArcSwap::from_pointee(ChainHttp::compile(chain, config)),
        })
    }

    /// The chain's name, for logs.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The chain's current HTTP configuration.
    pub(crate) fn http(&self) -> arc_swap::Guard<Arc<ChainHttp>> {
        self.http.load()
    }

    /// Whether `chain` has this slot's match and TLS.
    pub(crate) fn same_transport(&self, chain: &FilterChain) -> bool {
        self.filter_match == chain.filter_match && self.same_tls(chain)
    }

    /// Whether `chain` has this slot's TLS (so its acceptor can be shared).
    pub(crate) fn same_tls(&self, chain: &FilterChain) -> bool {
        self.downstream_tls == chain.tls
    }

    /// Takes `chain`'s HTTP configuration (routes and filters) for the next request.
    pub(crate) fn update_http(&self, chain: &FilterChain, config: &ServerConfig) {
        self.http.store(Arc::new(ChainHttp::compile(chain, config)));
    }
}

impl AcceptedChain for ChainSlot {
    fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// What the chains' TLS is built from.
pub(crate) struct ChainTls<'a> {
    pub(crate) providers: &'a CertificateProviders,
    pub(crate) alpn: &'a [Vec<u8>],
}

impl ChainTls<'_> {
    fn acceptor(&self, tls: &DownstreamTls) -> Result<TlsAcceptor, IdentityError> {
        let config = self
            .providers
            .for_downstream(tls)?
            .alpn_protocols(self.alpn.to_vec())
            .server_config()?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A chain's HTTP configuration: its route table and its RBAC filters. Route overrides are
/// read in place per request, so a large route table costs nothing more per chain.
#[derive(Debug)]
pub(crate) struct ChainHttp {
    pub(crate) routes: Result<Arc<RouteConfiguration>, RouteUnavailable>,
    /// The RBAC filters in order, by instance name.
    pub(crate) rbac: Vec<(String, RbacEngine)>,
}

impl ChainHttp {
    fn compile(chain: &FilterChain, config: &ServerConfig) -> Self {
        let routes = config.route_config(&chain.route);
        let rbac = chain
            .http_filters
            .iter()
            .filter_map(|f| match &f.config {
                ServerHttpFilterConfig::Rbac(config) => {
                    Some((f.name.clone(), RbacEngine::new(config)))
                }
                _ => None,
            })
            .collect();
        Self { routes, rbac }
    }
}

/// The `RBACPerRoute` override of the filter named `filter` for `route`: the route's own,
/// else its virtual host's (A41).
pub(crate) fn rbac_override<'a>(
    vh: &'a VirtualHost,
    route: &'a Route,
    filter: &str,
) -> Option<&'a RbacPerRoute> {
    route
        .filter_overrides
        .get(filter)
        .or_else(|| vh.filter_overrides.get(filter))
        .and_then(|o| match o {
            FilterOverride::Rbac(per_route) => Some(per_route),
            _ => None,
        })
}
