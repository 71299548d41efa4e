//! One filter chain of the served Listener, compiled: the TLS its connections take, the
//! HTTP configuration their requests meet (routes and RBAC), and the signal that drains its
//! connections when a Listener update replaces or removes it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshwork_xds::resource::{
    DownstreamTls, FilterChain, FilterChainMatch, FilterOverride, RbacPerRoute, Route,
    RouteConfiguration, RouteSource, ServerHttpFilterConfig, VirtualHost,
};

use meshwork_xds::client::{RouteUnavailable, ServerConfig};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::identity::{CertificateProviders, IdentityError};
use crate::inbound::RbacEngine;

/// One compiled filter chain, shared by the connections it accepted.
pub(crate) struct ChainSlot {
    name: String,
    /// What decides whether a connection can stay on this slot across an update: the same
    /// match and the same TLS mean the connection is what the new chain would accept.
    filter_match: FilterChainMatch,
    downstream_tls: Option<DownstreamTls>,
    tls: Option<TlsAcceptor>,
    http: ArcSwap<ChainHttp>,
    drain: watch::Sender<bool>,
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
    /// that leaves TLS alone does not restart certificate sources or rebuild rustls configs).
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
        let (drain, _) = watch::channel(false);
        Ok(Self {
            name: chain.name.clone(),
            filter_match: chain.filter_match.clone(),
            downstream_tls: chain.tls.clone(),
            tls: acceptor,
            http: ArcSwap::from_pointee(ChainHttp::compile(chain, config)),
            drain,
        })
    }

    /// The chain's name, for logs.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The TLS acceptor of the chain; `None` is plaintext.
    pub(crate) fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// The chain's current HTTP configuration.
    pub(crate) fn http(&self) -> arc_swap::Guard<Arc<ChainHttp>> {
        self.http.load()
    }

    /// Whether a connection this slot accepted is one `chain` would accept the same way.
    pub(crate) fn same_transport(&self, chain: &FilterChain) -> bool {
        self.filter_match == chain.filter_match && self.downstream_tls == chain.tls
    }

    /// Whether `chain` has this slot's TLS (so its acceptor can be shared).
    pub(crate) fn same_tls(&self, chain: &FilterChain) -> bool {
        self.downstream_tls == chain.tls
    }

    /// Takes `chain`'s HTTP configuration (routes and filters) for the next request.
    pub(crate) fn update_http(&self, chain: &FilterChain, config: &ServerConfig) {
        self.http.store(Arc::new(ChainHttp::compile(chain, config)));
    }

    /// Becomes `true` when the connections of this slot are to drain.
    pub(crate) fn drained(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Drains every connection of this slot (graceful close).
    pub(crate) fn drain(&self) {
        self.drain.send_replace(true);
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

/// A chain's HTTP configuration: its route table and its RBAC filters.
#[derive(Debug)]
pub(crate) struct ChainHttp {
    pub(crate) routes: Result<Arc<RouteConfiguration>, RouteUnavailable>,
    /// The RBAC filters in order, by instance name.
    pub(crate) rbac: Vec<(String, RbacEngine)>,
    /// For routes with an `RBACPerRoute` override (on the route or its virtual host), the
    /// filters as they apply there, keyed by (virtual host, route) index.
    pub(crate) overridden: HashMap<(usize, usize), Vec<RbacEngine>>,
}

impl ChainHttp {
    fn compile(chain: &FilterChain, config: &ServerConfig) -> Self {
        let routes = match &chain.route {
            RouteSource::Inline(rc) => Ok(rc.clone()),
            RouteSource::Rds { route_config_name } => match config.routes.get(route_config_name) {
                Some(found) => found.clone(),
                // The watch resolves every name the chains use before it reports a config.
                None => Err(RouteUnavailable::DoesNotExist {
                    name: route_config_name.clone(),
                }),
            },
        };
        let rbac: Vec<(String, RbacEngine)> = chain
            .http_filters
            .iter()
            .filter_map(|f| match &f.config {
                ServerHttpFilterConfig::Rbac(config) => {
                    Some((f.name.clone(), RbacEngine::new(config)))
                }
                _ => None,
            })
            .collect();
        let mut overridden = HashMap::new();
        if let Ok(rc) = &routes {
            for (v, vh) in rc.virtual_hosts.iter().enumerate() {
                for (r, route) in vh.routes.iter().enumerate() {
                    let lookup = |name: &str| rbac_override(vh, route, name);
                    if rbac.iter().all(|(name, _)| lookup(name).is_none()) {
                        continue;
                    }
                    let engines = rbac
                        .iter()
                        .map(|(name, engine)| match lookup(name) {
                            Some(per_route) => RbacEngine::new(&per_route.rbac),
                            None => engine.clone(),
                        })
                        .collect();
                    overridden.insert((v, r), engines);
                }
            }
        }
        Self {
            routes,
            rbac,
            overridden,
        }
    }
}

/// The `RBACPerRoute` override of the filter named `filter` for `route`: the route's own,
/// else its virtual host's (A41).
fn rbac_override<'a>(
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
