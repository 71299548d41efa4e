//! The Listener a server serves with, as the acceptor reads it for each new connection.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use meshwork_xds::client::ServerConfig;

use super::slot::{ChainSlot, ChainTls};
use crate::identity::IdentityError;
use crate::inbound::chain_select::{ChainSelector, Selected};

/// The compiled Listener being served, or none while the server is not serving.
#[derive(Debug, Default)]
pub(crate) struct ListenerState {
    current: ArcSwapOption<Serving>,
}

/// A compiled Listener: its chain selector and one slot per chain.
#[derive(Debug)]
struct Serving {
    selector: ChainSelector,
    chains: Vec<Arc<ChainSlot>>,
    default: Option<Arc<ChainSlot>>,
}

/// Why a new connection was closed without a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The server has no Listener to serve with (A36's not-serving mode).
    NotServing,
    /// No filter chain matches the connection and there is no default chain.
    NoChain,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::NotServing => "the xDS server is not serving",
            Refused::NoChain => "no filter chain of the xDS Listener matches the connection",
        })
    }
}

impl ListenerState {
    /// The chain that takes a connection from `remote` to `local`.
    pub(crate) fn choose(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Arc<ChainSlot>, Refused> {
        let guard = self.current.load();
        let Some(serving) = guard.as_ref() else {
            return Err(Refused::NotServing);
        };
        match serving.selector.select(local, remote) {
            Selected::Chain(i) => serving.chains.get(i).cloned().ok_or(Refused::NoChain),
            Selected::Default => serving.default.clone().ok_or(Refused::NoChain),
            Selected::NoMatch => Err(Refused::NoChain),
        }
    }

    /// Whether a Listener is being served.
    pub(crate) fn is_serving(&self) -> bool {
        self.current.load().is_some()
    }

    /// Serves with `config` from now on. A chain whose match and TLS are unchanged keeps its
    /// connections, which see the new routes and RBAC from their next request; the
    /// connections of every other old chain drain (A36). On error nothing changes.
    pub(crate) fn serve(
        &self,
        config: &ServerConfig,
        tls: &ChainTls<'_>,
    ) -> Result<(), IdentityError> {
        let old = self.current.load_full();
        let listener = &config.listener;
        // Compile everything first, so a failure leaves the served Listener alone.
        let mut reused = Vec::new();
        let mut compile = |chain, is_default: bool| -> Result<Arc<ChainSlot>, IdentityError> {
            let previous = old.as_ref().and_then(|o| {
                let candidates: Box<dyn Iterator<Item = &Arc<ChainSlot>>> = if is_default {
                    Box::new(o.default.iter())
                } else {
                    Box::new(o.chains.iter())
                };
                candidates
                    .filter(|slot| !reused.iter().any(|r| Arc::ptr_eq(r, slot)))
                    .find(|slot| slot.same_transport(chain))
                    .cloned()
            });
            match previous {
                Some(slot) => {
                    reused.push(slot.clone());
                    Ok(slot)
                }
                None => {
                    // A new match with a TLS an old chain had reuses its acceptor.
                    let same_tls = old.as_ref().and_then(|o| {
                        o.chains
                            .iter()
                            .chain(&o.default)
                            .find(|slot| slot.same_tls(chain))
                    });
                    let same_tls = same_tls.map(|slot| &**slot);
                    Ok(Arc::new(ChainSlot::compile(chain, config, tls, same_tls)?))
                }
            }
        };
        let mut chains = Vec::with_capacity(listener.filter_chains.len());
        for chain in &listener.filter_chains {
            chains.push(compile(chain, false)?);
        }
        let default = match &listener.default_filter_chain {
            Some(chain) => Some(compile(chain, true)?),
            None => None,
        };
        // Reused slots take their new HTTP configuration only now that nothing can fail.
        for (slot, chain) in chains.iter().zip(&listener.filter_chains) {
            if reused.iter().any(|r| Arc::ptr_eq(r, slot)) {
                slot.update_http(chain, config);
            }
        }
        if let (Some(slot), Some(chain)) = (&default, &listener.default_filter_chain)
            && reused.iter().any(|r| Arc::ptr_eq(r, slot))
        {
            slot.update_http(chain, config);
        }
        self.current.store(Some(Arc::new(Serving {
            selector: ChainSelector::new(listener),
            chains,
            default,
        })));
        if let Some(old) = old {
            for slot in old.chains.iter().chain(&old.default) {
                if !reused.iter().any(|r| Arc::ptr_eq(r, slot)) {
                    tracing::debug!(
                        chain = slot.name(),
                        "draining the connections of a replaced filter chain"
                    );
                    slot.drain();
                }
            }
        }
        Ok(())
    }

    /// Stops serving: new connections are closed, existing ones drain (A36).
    pub(crate) fn stop(&self) {
        if let Some(old) = self.current.swap(None) {
            for slot in old.chains.iter().chain(&old.default) {
                slot.drain();
            }
        }
    }
}
