//! Span attribute values that repeat call after call — the host a target's calls go to,
//! the addresses of its endpoints — made once per [`Telemetry`](super::Telemetry) handle
//! instead of formatted and allocated per span.
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

/// Values by key: read lock-free, copied on the rare insert.
pub(crate) struct Values<K> {
    table: ArcSwap<HashMap<K, StringValue, foldhash::fast::RandomState>>,
}

impl<K> Default for Values<K> {
    fn default() -> Self {
        Self {
            table: ArcSwap::default(),
        }
    }
}

impl<K: Hash + Eq + Clone> Values<K> {
    /// The value for `key`, made by `make` the first time.
    pub(crate) fn get<Q>(&self, key: &Q, make: impl FnOnce() -> String) -> StringValue
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(value) = self.table.load().get(key) {
            return value.clone();
        }
        let value = StringValue::from(Arc::<str>::from(make()));
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
        let a = values.get("greeter", || "greeter".to_owned());
        let b = values.get("greeter", || unreachable!("made once"));
        assert_eq!(a.as_str(), "greeter");
        assert!(
            std::ptr::eq(a.as_str(), b.as_str()),
            "the second call shares the first's value"
        );
        for i in 1..MAX_VALUES * 2 {
            let host = format!("host-{i}");
            assert_eq!(values.get(host.as_str(), || host.clone()).as_str(), host);
        }
        assert_eq!(
            values.len(),
            MAX_VALUES,
            "the first values are kept, no more"
        );
        let past = format!("host-{}", MAX_VALUES * 2 - 1);
        assert_eq!(values.get(past.as_str(), || past.clone()).as_str(), past);
        let kept = values.get("greeter", || unreachable!("kept"));
        assert!(std::ptr::eq(a.as_str(), kept.as_str()));
    }
}
