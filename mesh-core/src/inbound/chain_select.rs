//! TEMPORARY stand-in for the chaintls branch's selector (same API); replaced at merge.

use std::net::SocketAddr;

use meshwork_xds::resource::ServerListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selected {
    Chain(usize),
    Default,
    NoMatch,
}

#[derive(Debug)]
pub(crate) struct ChainSelector {
    chains: usize,
    default: bool,
}

impl ChainSelector {
    pub(crate) fn new(listener: &ServerListener) -> Self {
        Self {
            chains: listener.filter_chains.len(),
            default: listener.default_filter_chain.is_some(),
        }
    }

    pub(crate) fn select(&self, _local: SocketAddr, _remote: SocketAddr) -> Selected {
        if self.chains > 0 {
            Selected::Chain(0)
        } else if self.default {
            Selected::Default
        } else {
            Selected::NoMatch
        }
    }
}
