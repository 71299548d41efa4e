//! Span attribute values that repeat call after call — the host and port a target's calls
//! go to, the addresses of its endpoints — made once per [`Telemetry`](super::Telemetry)
//! handle instead of parsed, formatted and allocated per span.
//!
//! Bounded: a table keeps the first [`MAX_VALUES`] values it meets and no more. A value
//! past those (a caller naming a new host per call, a cluster of thousands of endpoints, an
//! endpoint set that has churned) is made per span, as every value was before; a full table
//! is never copied again, so a miss costs one lookup more than before, not a copy.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use arc_swap::ArcSwap;
use opentelemetry::StringValue;

/// How many values one table keeps.
pub(crate) const MAX_VALUES: usize = 256;

/// The `server.address` and explicit port of a request's authority.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) host: StringValue,
    pub(crate) port: Option<u16>,
}

/// Values by key: read lock-free, copied on the rare insert.
pub(crate) struct Values<K, V = StringValue> {
    table: ArcSwap<HashMap<K, V, foldhash::fast::RandomState>>,
}

impl<K, V> Default for Values<K, V> {
    fn default() -> Self {
        Self {
            table: ArcSwap::default(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Values<K, V> {
    /// The value for `key`, made by `make` the first time.
    pub(crate) fn get<Q>(&self, key: &Q, make: impl FnOnce() -> V) -> V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(value) = self.table.load().get(key) {
            return value.clone();
        }
        let value = make();
        if self.table.load().len() < MAX_VALUES {
            let owned: K = key.to_owned();
            self.table.rcu(|table| {
                if table.len() >= MAX_VALUES || table.contains_key(key) {
                    return Arc::clone(table);
                }
                let mut more = HashMap::clone(table);
                more.insert(owned.clone(), value.clone());
                Arc::new(more)
            });
        }
        value
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.load().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_made_once_and_the_table_is_bounded() {
        let values = Values::<String>::default();
        let a = values.get("greeter", || StringValue::from(Arc::<str>::from("greeter")));
        let b = values.get("greeter", || unreachable!("made once"));
        assert_eq!(a.as_str(), "greeter");
        assert!(
            std::ptr::eq(a.as_str(), b.as_str()),
            "the second call shares the first's value"
        );
        for i in 1..MAX_VALUES * 2 {
            let host = format!("host-{i}");
            let made = || StringValue::from(host.clone());
            assert_eq!(values.get(host.as_str(), made).as_str(), host);
        }
        assert_eq!(
            values.len(),
            MAX_VALUES,
            "the first values are kept, no more"
        );
        let past = format!("host-{}", MAX_VALUES * 2 - 1);
        let made = || StringValue::from(past.clone());
        assert_eq!(values.get(past.as_str(), made).as_str(), past);
        let kept = values.get("greeter", || unreachable!("kept"));
        assert!(std::ptr::eq(a.as_str(), kept.as_str()));
    }

    #[test]
    fn peer_addresses_are_written_as_before() {
        let telemetry = super::super::Telemetry::disabled();
        for ip in [
            "10.0.0.1",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(telemetry.peer_value(ip).as_str(), ip.to_string());
            assert_eq!(telemetry.peer_value(ip).as_str(), ip.to_string(), "kept");
        }
    }
}
