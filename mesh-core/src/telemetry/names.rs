//! gRPC method names, interned once per [`Telemetry`](super::Telemetry) and bounded.
//!
//! A call's `grpc.method` attribute is then a reference count, not an allocation, and the
//! number of distinct values a [`Telemetry`](super::Telemetry) records is capped: past
//! [`MAX_METHOD_NAMES`] distinct methods, new ones are recorded as `other` in metrics (gRFC
//! A66 does the same for methods a server has not registered), so a peer sending random
//! paths cannot grow a server's metric cardinality without bound. Spans always carry the
//! real name.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// How many distinct gRPC methods one [`Telemetry`](super::Telemetry) names in its metrics.
pub const MAX_METHOD_NAMES: usize = 1024;

/// A gRPC method's full name (`package.Service/Method`) and whether metrics may carry it.
#[derive(Debug, Clone)]
pub(crate) struct MethodName {
    pub(crate) full: Arc<str>,
    /// False past the cap: metrics record `other`.
    pub(crate) named: bool,
}

/// The interned names: read lock-free, copied on the rare insert.
#[derive(Default)]
pub(crate) struct MethodNames {
    names: ArcSwap<Names>,
}

/// foldhash: a lookup per call, and the table is bounded, so a fast seeded hash is enough.
type Names = HashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>;

impl MethodNames {
    /// The name for `full` (`package.Service/Method`), interned if there is room; `None`
    /// when `full` is not a gRPC method name (no `/` between service and method).
    pub(crate) fn get(&self, full: &str) -> Option<MethodName> {
        let names = self.names.load();
        if let Some(name) = names.get(full) {
            return Some(MethodName {
                full: name.clone(),
                named: true,
            });
        }
        if !full.contains('/') {
            return None;
        }
        if names.len() >= MAX_METHOD_NAMES {
            return Some(MethodName {
                full: Arc::from(full),
                named: false,
            });
        }
        drop(names);
        Some(self.insert(full))
    }

    fn insert(&self, full: &str) -> MethodName {
        let mut found = None;
        self.names.rcu(|names| {
            if let Some(name) = names.get(full) {
                found = Some((name.clone(), true));
                return Arc::clone(names);
            }
            let name: Arc<str> = Arc::from(full);
            if names.len() >= MAX_METHOD_NAMES {
                found = Some((name, false));
                return Arc::clone(names);
            }
            let mut more = HashMap::clone(names);
            more.insert(Box::from(full), name.clone());
            found = Some((name, true));
            Arc::new(more)
        });
        let (full, named) = found.expect("rcu runs its closure at least once");
        MethodName { full, named }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_interned_once_and_the_table_is_bounded() {
        let names = MethodNames::default();
        assert!(names.get("not-a-method").is_none());
        let a = names.get("helloworld.Greeter/SayHello").unwrap();
        let b = names.get("helloworld.Greeter/SayHello").unwrap();
        assert!(a.named && b.named);
        assert!(
            Arc::ptr_eq(&a.full, &b.full),
            "the second lookup shares the first"
        );

        for i in 1..MAX_METHOD_NAMES {
            assert!(names.get(&format!("scan.Svc/M{i}")).unwrap().named);
        }
        let past = names.get("scan.Svc/OneTooMany").unwrap();
        assert!(!past.named, "past the cap a method is not named in metrics");
        assert_eq!(
            &*past.full, "scan.Svc/OneTooMany",
            "but keeps its name for spans"
        );
        let known = names.get("helloworld.Greeter/SayHello").unwrap();
        assert!(known.named, "known names stay");
    }
}
