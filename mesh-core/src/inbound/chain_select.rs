//! Which filter chain of a server Listener takes an accepted connection (gRFC A36).
//!
//! A36 asks for Envoy's "most specific `filter_chain_match`" over the criteria a gRPC server
//! can evaluate, stage by stage, each stage narrowing the candidates before the next looks:
//!
//! 1. destination prefix: the longest `prefix_ranges` entry holding the local address; a
//!    chain without `prefix_ranges` matches every address but less specifically than an
//!    explicit `0.0.0.0/0` or `::/0`, which still name a family (as in grpc-go);
//! 2. source type: among those, a chain for the connection's type (`SameIpOrLoopback` when
//!    the peer is a loopback address or the local address, `External` otherwise) beats one
//!    for `Any`;
//! 3. source prefix: the longest `source_prefix_ranges` entry holding the peer's address,
//!    none again least specific;
//! 4. source port: a listed port beats no list.
//!
//! There is no backtracking: when the most specific candidates of a stage fail a later one,
//! the connection goes to the default chain (or is closed), even if a less specific chain
//! would have matched. IPv4-mapped IPv6 addresses are matched as the IPv4 addresses they
//! carry, as the decoder stores the prefixes.
//!
//! Where meshwork differs from grpc-go: destination prefixes are matched whatever address
//! the server listens on (Envoy's behaviour); grpc-go skips that stage unless it listens on
//! a wildcard address, which can leave it several candidates and no chain at all.
//!
//! Everything is arranged once per Listener update so that choosing a chain for a
//! connection is a few comparisons per candidate and allocates nothing.

// The acceptor selects chains once the server takes its Listener from xDS (issue #14);
// until it does, only the tests call this module.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use meshwork_xds::resource::{CidrRange, ServerListener, SourceType};

/// The outcome of [`ChainSelector::select`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selected {
    /// The chain at this index of the Listener's `filter_chains`.
    Chain(usize),
    /// No chain matched; the Listener's `default_filter_chain` takes the connection.
    Default,
    /// No chain matched and there is no default chain: close the connection unanswered.
    NoMatch,
}

/// A Listener's filter chains arranged for A36's staged matching.
#[derive(Debug, Clone)]
pub(crate) struct ChainSelector {
    /// One entry per distinct destination prefix, most specific first (no prefix last), so
    /// the first entry holding an address is the only one of its specificity that does:
    /// two distinct prefixes of one length cannot both hold it.
    destinations: Vec<Destination>,
    has_default: bool,
}

#[derive(Debug, Clone)]
struct Destination {
    prefix: Option<CidrRange>,
    /// The source prefixes per source type (indexed by [`type_index`]), each list most
    /// specific first; an empty list is a type no chain names.
    by_type: [Vec<Source>; 3],
}

#[derive(Debug, Clone)]
struct Source {
    prefix: Option<CidrRange>,
    /// `(port, chain)`, sorted by port.
    ports: Vec<(u16, usize)>,
    /// The chain without `source_ports`.
    any_port: Option<usize>,
}

fn type_index(t: SourceType) -> usize {
    match t {
        SourceType::Any => 0,
        SourceType::SameIpOrLoopback => 1,
        SourceType::External => 2,
    }
}

/// A hashable key for a prefix (`None`: the list was empty).
type PrefixKey = Option<(IpAddr, u8)>;

fn key(p: Option<CidrRange>) -> PrefixKey {
    p.map(|c| (c.prefix(), c.prefix_len()))
}

/// Sorts most specific first: longer prefixes, then no prefix at all.
fn specificity(p: &Option<CidrRange>) -> std::cmp::Reverse<i16> {
    std::cmp::Reverse(p.map_or(-1, |c| i16::from(c.prefix_len())))
}

fn or_unspecified<T: Copy>(list: &[T]) -> impl Iterator<Item = Option<T>> + '_ {
    let none = list.is_empty().then_some(None);
    list.iter().copied().map(Some).chain(none)
}

fn holds(prefix: Option<CidrRange>, addr: IpAddr) -> bool {
    prefix.is_none_or(|c| c.contains(addr))
}

impl ChainSelector {
    /// Arranges `listener`'s chains. The decoder's caps bound the work: at most
    /// `MAX_FILTER_CHAIN_MATCHES` points over all chains. Should two chains claim the same
    /// point (the decoder NACKs that; a hand-built Listener might not), the earlier wins.
    pub(crate) fn new(listener: &ServerListener) -> Self {
        let mut destinations: Vec<Destination> = Vec::new();
        let mut dst_index: HashMap<PrefixKey, usize> = HashMap::new();
        let mut src_index: HashMap<(usize, usize, PrefixKey), usize> = HashMap::new();
        for (chain, fc) in listener.filter_chains.iter().enumerate() {
            let m = &fc.filter_match;
            let t = type_index(m.source_type);
            for dst in or_unspecified(&m.prefix_ranges) {
                let d = *dst_index.entry(key(dst)).or_insert_with(|| {
                    destinations.push(Destination {
                        prefix: dst,
                        by_type: Default::default(),
                    });
                    destinations.len() - 1
                });
                let sources = &mut destinations[d].by_type[t];
                for src in or_unspecified(&m.source_prefix_ranges) {
                    let s = *src_index.entry((d, t, key(src))).or_insert_with(|| {
                        sources.push(Source {
                            prefix: src,
                            ports: Vec::new(),
                            any_port: None,
                        });
                        sources.len() - 1
                    });
                    let source = &mut sources[s];
                    if m.source_ports.is_empty() {
                        source.any_port.get_or_insert(chain);
                    } else {
                        source
                            .ports
                            .extend(m.source_ports.iter().map(|&port| (port, chain)));
                    }
                }
            }
        }
        // Stable sorts: among equals the earlier chain stays first and dedup keeps it.
        for d in &mut destinations {
            for sources in &mut d.by_type {
                for s in sources.iter_mut() {
                    s.ports.sort_by_key(|&(port, _)| port);
                    s.ports.dedup_by_key(|&mut (port, _)| port);
                }
                sources.sort_by_key(|s| specificity(&s.prefix));
            }
        }
        destinations.sort_by_key(|d| specificity(&d.prefix));
        Self {
            destinations,
            has_default: listener.default_filter_chain.is_some(),
        }
    }

    /// The chain for a connection accepted on `local` from `remote`.
    pub(crate) fn select(&self, local: SocketAddr, remote: SocketAddr) -> Selected {
        self.chain(local, remote)
            .map_or(self.fallback(), Selected::Chain)
    }

    fn fallback(&self) -> Selected {
        if self.has_default {
            Selected::Default
        } else {
            Selected::NoMatch
        }
    }

    fn chain(&self, local: SocketAddr, remote: SocketAddr) -> Option<usize> {
        let local_ip = local.ip().to_canonical();
        let remote_ip = remote.ip().to_canonical();
        let dst = self
            .destinations
            .iter()
            .find(|d| holds(d.prefix, local_ip))?;
        let source_type = if remote_ip.is_loopback() || remote_ip == local_ip {
            SourceType::SameIpOrLoopback
        } else {
            SourceType::External
        };
        let sources = [type_index(source_type), type_index(SourceType::Any)]
            .into_iter()
            .map(|t| &dst.by_type[t])
            .find(|s| !s.is_empty())?;
        let src = sources.iter().find(|s| holds(s.prefix, remote_ip))?;
        let port = remote.port();
        src.ports
            .binary_search_by_key(&port, |&(p, _)| p)
            .ok()
            .map(|i| src.ports[i].1)
            .or(src.any_port)
    }
}

#[cfg(test)]
mod tests;
