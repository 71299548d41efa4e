//! The Listener a server serves with, as the acceptor reads it for each new connection and
//! each connection re-reads it after every update.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use meshwork_xds::client::ServerConfig;
use tokio::sync::watch;

use super::slot::{ChainSlot, ChainTls};
use crate::identity::IdentityError;
use crate::inbound::acceptor::{AcceptedChain, ChainSource};
use crate::inbound::chain_select::{ChainSelector, Selected};

/// The compiled Listener being served, or none while the server is not serving.
#[derive(Debug)]
pub(crate) struct ListenerState {
    current: ArcSwapOption<Serving>,
    /// Bumped after every change of `current`, for the connections to look again.
    updates: watch::Sender<u64>,
}

impl Default for ListenerState {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            updates: watch::Sender::new(0),
        }
    }
}

/// A compiled Listener: its chain selector and one slot per chain.
#[derive(Debug)]
struct Serving {
    selector: ChainSelector,
    chains: Vec<Arc<ChainSlot>>,
    default: Option<Arc<ChainSlot>>,
}

impl ListenerState {
    /// The chain that takes a connection from `remote` to `local`.
    pub(crate) fn choose(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Arc<ChainSlot>, &'static str> {
        const NO_CHAIN: &str = "no filter chain of the xDS Listener matches the connection";
        let guard = self.current.load();
        let Some(serving) = guard.as_ref() else {
            return Err("the xDS server is not serving");
        };
        match serving.selector.select(local, remote) {
            Selected::Chain(i) => serving.chains.get(i).cloned().ok_or(NO_CHAIN),
            Selected::Default => serving.default.clone().ok_or(NO_CHAIN),
            Selected::NoMatch => Err(NO_CHAIN),
        }
    }

    /// Completes when a connection from `remote` to `local` that `slot` took must drain:
    /// once the served Listener would give a new connection from there another chain (or
    /// none). A36 drains the connections of changed chains; looking again per connection
    /// also catches a kept chain that a new, more specific one now shadows.
    #[cfg(feature = "server")]
    async fn drained(
        self: Arc<Self>,
        slot: Arc<dyn AcceptedChain>,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        let mut updates = self.updates.subscribe();
        loop {
            match self.choose(local, remote) {
                Ok(now) if std::ptr::addr_eq(Arc::as_ptr(&now), Arc::as_ptr(&slot)) => {}
                _ => return,
            }
            if updates.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Whether a Listener is being served.
    pub(crate) fn is_serving(&self) -> bool {
        self.current.load().is_some()
    }

    /// Serves with `config` from now on. A chain whose match and TLS are unchanged keeps its
    /// slot: its connections that would still be given it stay, and see the new routes and
    /// RBAC from their next request; every other connection drains (A36). On error nothing
    /// changes.
    pub(crate) fn serve(
        &self,
        config: &ServerConfig,
        tls: &ChainTls<'_>,
    ) -> Result<(), IdentityError> {
        let old = self.current.load_full();
        let listener = &config.listener;
        // Compile everything first, so a failure leaves the served Listener alone.
        let mut reused: Vec<Arc<ChainSlot>> = Vec::new();
        let mut compile = |chain, is_default: bool| -> Result<Arc<ChainSlot>, IdentityError> {
            let candidates = old.as_ref().map(|o| {
                if is_default {
                    o.default.iter().collect::<Vec<_>>()
                } else {
                    o.chains.iter().collect()
                }
            });
            let previous = candidates.into_iter().flatten().find(|slot| {
                !reused.iter().any(|r| Arc::ptr_eq(r, slot)) && slot.same_transport(chain)
            });
            if let Some(slot) = previous {
                reused.push(slot.clone());
                return Ok(slot.clone());
            }
            // A new match with a TLS an old chain had shares its acceptor.
            let same_tls = old.as_ref().and_then(|o| {
                o.chains
                    .iter()
                    .chain(&o.default)
                    .find(|slot| slot.same_tls(chain))
            });
            let same_tls = same_tls.map(|slot| &**slot);
            Ok(Arc::new(ChainSlot::compile(chain, config, tls, same_tls)?))
        };
        let mut chains = Vec::with_capacity(listener.filter_chains.len());
        for chain in &listener.filter_chains {
            chains.push(compile(chain, false)?);
        }
        let default = match &listener.default_filter_chain {
            Some(chain) => Some(compile(chain, true)?),
            None => None,
        };
        // Kept slots take their new HTTP configuration only now that nothing can fail.
        let pairs = chains
            .iter()
            .zip(&listener.filter_chains)
            .chain(default.iter().zip(&listener.default_filter_chain));
        for (slot, chain) in pairs {
            if reused.iter().any(|r| Arc::ptr_eq(r, slot)) {
                slot.update_http(chain, config);
            }
        }
        self.current.store(Some(Arc::new(Serving {
            selector: ChainSelector::new(listener),
            chains,
            default,
        })));
        self.updates.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Stops serving: new connections are closed, existing ones drain (A36).
    pub(crate) fn stop(&self) {
        if self.current.swap(None).is_some() {
            self.updates.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

impl ChainSource for ListenerState {
    fn choose(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Arc<dyn AcceptedChain>, &'static str> {
        let slot: Arc<dyn AcceptedChain> = ListenerState::choose(self, local, remote)?;
        Ok(slot)
    }

    #[cfg(feature = "server")]
    fn replaced(
        self: Arc<Self>,
        chain: Arc<dyn AcceptedChain>,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(self.drained(chain, local, remote))
    }
}
