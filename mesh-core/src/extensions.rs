//! The request and response extensions one layer leaves for another: the router's request
//! hash for ring hash, the endpoints a retry should avoid, and the endpoint that served a
//! response. They are the layers' only shared state per call, so they live below every
//! layer that reads or writes them, with private fields so that their meaning stays here.

use std::net::SocketAddr;

/// The request hash ring hash uses: a request extension. The router computes it from the
/// route's hash policies (headers, channel id, source IP; terminal policies stop the chain);
/// ring hash picks a random hash for a request without one, and other policies ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHash(u64);

impl RequestHash {
    /// The extension for `hash`.
    pub const fn new(hash: u64) -> Self {
        Self(hash)
    }

    /// The hash.
    pub const fn value(self) -> u64 {
        self.0
    }
}

/// Endpoints a request should not go to if another can take it: a request extension. The
/// retry layer lists the endpoints of earlier attempts (from [`ServedBy`] and
/// [`EndpointError::address`](crate::balance::EndpointError::address)) so that a retry goes
/// to a different endpoint when one exists; when every usable endpoint is listed, the
/// balancer picks among them anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AvoidEndpoints(Vec<SocketAddr>);

impl AvoidEndpoints {
    /// Whether `address` is listed.
    pub fn contains(&self, address: &SocketAddr) -> bool {
        self.0.contains(address)
    }

    /// Adds `address`.
    pub fn push(&mut self, address: SocketAddr) {
        if !self.contains(&address) {
            self.0.push(address);
        }
    }

    /// Whether no endpoint is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The endpoints listed, in the order they were added.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.0
    }
}

impl FromIterator<SocketAddr> for AvoidEndpoints {
    /// Lists each address once.
    fn from_iter<I: IntoIterator<Item = SocketAddr>>(iter: I) -> Self {
        let mut avoid = Self::default();
        for address in iter {
            avoid.push(address);
        }
        avoid
    }
}

/// The endpoint that served a response: a response extension the balancer sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServedBy(SocketAddr);

impl ServedBy {
    /// The extension for a response from `address`.
    pub const fn new(address: SocketAddr) -> Self {
        Self(address)
    }

    /// The endpoint's address.
    pub const fn address(self) -> SocketAddr {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avoid_endpoints_lists_each_address_once() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let mut avoid: AvoidEndpoints = [a, b, a].into_iter().collect();
        assert_eq!(avoid.addresses(), &[a, b]);
        avoid.push(b);
        assert_eq!(avoid.addresses(), &[a, b]);
        assert!(avoid.contains(&a) && !avoid.is_empty());
        assert!(AvoidEndpoints::default().is_empty());
        assert_eq!(RequestHash::new(7).value(), 7);
        assert_eq!(ServedBy::new(a).address(), a);
    }
}
