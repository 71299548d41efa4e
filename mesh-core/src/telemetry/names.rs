//! gRPC method names, interned once per [`Telemetry`](super::Telemetry) and bounded.
//!
//! A call's `grpc.method` attribute is then a reference count, not an allocation, and the
//! number of distinct values a handle records is capped, so a peer sending random paths
//! cannot make a server's metrics grow without bound:
//!
//! - a client names the methods its application calls, up to [`MAX_METHOD_NAMES`]; past
//!   that (or past [`MAX_METHOD_NAME_LEN`] bytes) a method is `other` in metrics;
//! - a server names a method only once it has answered a call to it with a status other
//!   than `UNIMPLEMENTED` (what gRPC servers answer for a method they do not serve),
//!   `PERMISSION_DENIED` or `UNAUTHENTICATED`: until then, and for anything a scan finds,
//!   the method is `other` (gRFC A66 does the same for methods a server has not registered;
//!   a generic layer cannot see the registrations, so it learns them from the answers). A
//!   method's first call is therefore `other` too, unless the adapter said its service is
//!   served ([`Telemetry::serve_service`](super::Telemetry::serve_service); `MeshServer`
//!   does for every service added to it): those methods are named from the first call,
//!   within the cap.
//!
//! Spans always carry the real name. Client and server names live in separate tables, so
//! one handle shared by a channel and a server keeps the client's names whatever peers send.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use opentelemetry::StringValue;

/// How many distinct gRPC methods one [`Telemetry`](super::Telemetry) names in its client
/// metrics, and again in its server metrics.
pub const MAX_METHOD_NAMES: usize = 1024;

/// Longer method names are never stored: they are `other` in metrics.
pub const MAX_METHOD_NAME_LEN: usize = 256;

/// A gRPC method's full name (`package.Service/Method`) and whether metrics may carry it.
#[derive(Debug, Clone)]
pub(crate) struct MethodName {
    pub(crate) info: Arc<MethodInfo>,
    /// False when the name is not (yet) in the table: metrics record `other`.
    pub(crate) named: bool,
}

/// A method's name and its parts, made once per interned method: the attribute values and
/// span names of its calls are then reference counts, not a parse and four allocations.
#[derive(Debug)]
pub(crate) struct MethodInfo {
    /// `package.Service/Method`.
    pub(crate) full: StringValue,
    /// `package.Service`.
    pub(crate) service: StringValue,
    /// `Method`.
    pub(crate) method: StringValue,
    /// The span names and the `grpc.method` value, once the method is interned (see
    /// [`shared_names`]).
    shared: OnceLock<Shared>,
}

/// What an interned method's calls share for the life of the process.
#[derive(Debug)]
struct Shared {
    /// The three span names, by [`SpanPrefix`].
    span_names: [&'static str; 3],
    /// The full name as a `grpc.method` value whose copies are copies, not reference counts
    /// (each call's metrics carry it up to four times, from both workers at once).
    metric: StringValue,
}

/// The three spans a method's calls make (gRFC A72's name prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanPrefix {
    /// The client's call span.
    Sent = 0,
    /// A client attempt's span.
    Attempt = 1,
    /// The server's span.
    Recv = 2,
}

impl SpanPrefix {
    fn as_str(self) -> &'static str {
        match self {
            SpanPrefix::Sent => "Sent",
            SpanPrefix::Attempt => "Attempt",
            SpanPrefix::Recv => "Recv",
        }
    }
}

impl MethodInfo {
    fn new(full: &str) -> Self {
        let (service, method) = full.split_once('/').unwrap_or(("", full));
        Self {
            full: StringValue::from(Arc::<str>::from(full)),
            service: StringValue::from(Arc::<str>::from(service)),
            method: StringValue::from(Arc::<str>::from(method)),
            shared: OnceLock::new(),
        }
    }

    /// `<prefix>.<package.Service>.<Method>` (gRFC A72's span names): shared once the
    /// method is interned, else made for this span.
    pub(crate) fn span_name(&self, prefix: SpanPrefix) -> Cow<'static, str> {
        match self.shared.get() {
            Some(shared) => Cow::Borrowed(shared.span_names[prefix as usize]),
            None => Cow::Owned(self.format_span_name(prefix)),
        }
    }

    /// The `grpc.method` value of the method's metrics: a process-wide one once the
    /// method is interned, else its own.
    pub(crate) fn metric_value(&self) -> StringValue {
        match self.shared.get() {
            Some(shared) => shared.metric.clone(),
            None => self.full.clone(),
        }
    }

    fn format_span_name(&self, prefix: SpanPrefix) -> String {
        let (prefix, service, method) =
            (prefix.as_str(), self.service.as_str(), self.method.as_str());
        let mut name = String::with_capacity(prefix.len() + service.len() + method.len() + 2);
        name.push_str(prefix);
        name.push('.');
        name.push_str(service);
        name.push('.');
        name.push_str(method);
        name
    }

    /// Makes this method's span names and metric value shared ones, if the process has
    /// room for them.
    fn share_names(&self) {
        if self.shared.get().is_none()
            && let Some([full, sent, attempt, recv]) = shared_names([
                self.full.as_str().to_owned(),
                self.format_span_name(SpanPrefix::Sent),
                self.format_span_name(SpanPrefix::Attempt),
                self.format_span_name(SpanPrefix::Recv),
            ])
        {
            let _ = self.shared.set(Shared {
                span_names: [sent, attempt, recv],
                metric: StringValue::from(full),
            });
        }
    }
}

/// How many bytes of method names the process keeps shared: the four names (three span
/// names and the full name) of every method a table can hold at [`MAX_METHOD_NAME_LEN`],
/// twice over (about 2 MiB).
const MAX_SHARED_BYTES: usize = 2 * 4 * (MAX_METHOD_NAME_LEN + 16) * MAX_METHOD_NAMES;

/// How many bytes of targets ([`shared_name`]) the process keeps shared, apart from the
/// method names (so that a process naming many targets over its life cannot take the
/// methods' room): at least 1,024 targets of the longest kept.
const MAX_SHARED_TARGET_BYTES: usize = MAX_SHARED_NAME_LEN * 1024;

/// The names kept for the life of the process, and their bytes. OpenTelemetry takes a
/// span's name as a `Cow<'static, str>` and an attribute value as a [`StringValue`], which
/// is either `'static` (copied for free) or reference-counted (an atomic increment and
/// decrement per copy, on a line that every worker's calls touch): a name that every call
/// shares, rather than one counted or copied per call, must live as long as the process.
/// Only the names some table has interned are kept, once per process whatever the number
/// of handles naming them, and at most [`MAX_SHARED_BYTES`] of them; past that a method's
/// spans copy their names and its metrics count theirs, as every call did before.
static SHARED_NAMES: Mutex<Option<(HashSet<&'static str>, usize)>> = Mutex::new(None);

/// The targets handles record, kept likewise within [`MAX_SHARED_TARGET_BYTES`].
static SHARED_TARGETS: Mutex<Option<(HashSet<&'static str>, usize)>> = Mutex::new(None);

/// `names` as names kept for the process, or `None` when there is no room for them all.
fn shared_names<const N: usize>(names: [String; N]) -> Option<[&'static str; N]> {
    let mut kept = SHARED_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    let kept = kept.get_or_insert_with(|| (HashSet::new(), 0));
    keep(kept, names, MAX_SHARED_BYTES)
}

/// `names` out of `kept` (the names and their bytes), the missing ones leaked into it if
/// that keeps it within `max` bytes; `None` (and nothing kept) otherwise.
fn keep<const N: usize>(
    (kept, bytes): &mut (HashSet<&'static str>, usize),
    names: [String; N],
    max: usize,
) -> Option<[&'static str; N]> {
    let mut missing: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !kept.contains(n))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if *bytes + missing.iter().map(|n| n.len()).sum::<usize>() > max {
        return None;
    }
    Some(names.map(|name| match kept.get(name.as_str()) {
        Some(&shared) => shared,
        None => {
            *bytes += name.len();
            let shared: &'static str = Box::leak(name.into_boxed_str());
            kept.insert(shared);
            shared
        }
    }))
}

/// `name` as a name kept for the process (a handle's `grpc.target`), if it is at most
/// [`MAX_SHARED_NAME_LEN`] bytes and there is room.
pub(crate) fn shared_name(name: &str) -> Option<&'static str> {
    if name.len() > MAX_SHARED_NAME_LEN {
        return None;
    }
    let mut kept = SHARED_TARGETS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let kept = kept.get_or_insert_with(|| (HashSet::new(), 0));
    keep(kept, [name.to_owned()], MAX_SHARED_TARGET_BYTES).map(|[name]| name)
}

/// A longer target is never kept shared.
const MAX_SHARED_NAME_LEN: usize = 1024;

/// The interned names: read lock-free, copied on the rare insert (a copy clones `Arc`s, not
/// strings).
#[derive(Default)]
pub(crate) struct MethodNames {
    names: ArcSwap<Names>,
    /// Services the server is known to serve (told by the adapter, e.g. tonic's
    /// `NamedService::NAME`): their methods are named from the first call, within the cap.
    services: ArcSwap<HashSet<Box<str>, foldhash::fast::RandomState>>,
}

/// foldhash: a lookup per call, and the table is bounded, so a fast seeded hash is enough.
type Names = HashMap<Box<str>, Arc<MethodInfo>, foldhash::fast::RandomState>;

/// Whether `full` looks like a gRPC method name (`service/method`).
fn is_method(full: &str) -> bool {
    full.contains('/')
}

impl MethodNames {
    /// The name for `full`, interned if there is room (the client side); `None` when `full`
    /// is not a gRPC method name.
    pub(crate) fn get(&self, full: &str) -> Option<MethodName> {
        self.lookup(full, |info| self.learn(info))
    }

    /// The name for `full` if it is in the table, else an unnamed one (the server side: see
    /// [`learn`](Self::learn)), unless its service is [served](Self::serve); `None` when
    /// `full` is not a gRPC method name.
    pub(crate) fn known(&self, full: &str) -> Option<MethodName> {
        self.lookup(full, |info| {
            self.services.load().contains(info.service.as_str()) && self.learn(info)
        })
    }

    /// The interned name for `full`, or a new one that `name_it` may intern (and says
    /// whether metrics may carry it).
    fn lookup(
        &self,
        full: &str,
        name_it: impl FnOnce(&Arc<MethodInfo>) -> bool,
    ) -> Option<MethodName> {
        if let Some(info) = self.names.load().get(full) {
            return Some(MethodName {
                info: info.clone(),
                named: true,
            });
        }
        if !is_method(full) {
            return None;
        }
        let info = Arc::new(MethodInfo::new(full));
        let named = name_it(&info);
        Some(MethodName { info, named })
    }

    /// Marks `service` (`package.Service`) as served: [`known`](Self::known) names its
    /// methods at once.
    pub(crate) fn serve(&self, service: &str) {
        self.services.rcu(|services| {
            let mut more = HashSet::clone(services);
            more.insert(Box::from(service));
            more
        });
    }

    /// Puts `info` in the table if there is room; whether its name is there now.
    pub(crate) fn learn(&self, info: &Arc<MethodInfo>) -> bool {
        let name = info.full.as_str();
        if name.len() > MAX_METHOD_NAME_LEN {
            return false;
        }
        let names = self.names.load();
        if names.contains_key(name) {
            return true;
        }
        if names.len() >= MAX_METHOD_NAMES {
            return false;
        }
        drop(names);
        let mut there = false;
        self.names.rcu(|names| {
            if names.contains_key(name) {
                there = true;
                return Arc::clone(names);
            }
            if names.len() >= MAX_METHOD_NAMES {
                there = false;
                return Arc::clone(names);
            }
            // The copy clones `Arc`s and at most 1024 short keys; inserts are rare.
            let mut more = Names::clone(names);
            more.insert(Box::from(name), info.clone());
            there = true;
            Arc::new(more)
        });
        if there {
            info.share_names();
        }
        there
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_name_is_interned_once_and_the_table_is_bounded() {
        let names = MethodNames::default();
        assert!(names.get("not-a-method").is_none());
        let a = names.get("helloworld.Greeter/SayHello").unwrap();
        let b = names.get("helloworld.Greeter/SayHello").unwrap();
        assert!(a.named && b.named);
        assert!(
            Arc::ptr_eq(&a.info, &b.info),
            "the second lookup shares the first"
        );
        assert_eq!(a.info.service.as_str(), "helloworld.Greeter");
        assert_eq!(a.info.method.as_str(), "SayHello");
        assert_eq!(
            a.info.span_name(SpanPrefix::Sent),
            "Sent.helloworld.Greeter.SayHello"
        );
        assert!(
            matches!(a.info.span_name(SpanPrefix::Attempt), Cow::Borrowed(n) if n == "Attempt.helloworld.Greeter.SayHello"),
            "an interned method's span names are shared"
        );

        let long = format!("svc/{}", "m".repeat(MAX_METHOD_NAME_LEN));
        assert!(!names.get(&long).unwrap().named, "too long to be named");

        for i in 1..MAX_METHOD_NAMES {
            assert!(names.get(&format!("scan.Svc/M{i}")).unwrap().named);
        }
        let past = names.get("scan.Svc/OneTooMany").unwrap();
        assert!(!past.named, "past the cap a method is not named in metrics");
        assert_eq!(
            past.info.full.as_str(),
            "scan.Svc/OneTooMany",
            "keeps its name for spans"
        );
        let known = names.get("helloworld.Greeter/SayHello").unwrap();
        assert!(known.named, "known names stay");
    }

    #[test]
    fn tables_share_one_process_wide_copy_of_an_interned_name() {
        let (a, b) = (MethodNames::default(), MethodNames::default());
        let full = "shared.Names/Method";
        let (a, b) = (a.get(full).unwrap(), b.get(full).unwrap());
        assert!(
            !Arc::ptr_eq(&a.info, &b.info),
            "each table has its own entry"
        );
        let (va, vb) = (a.info.metric_value(), b.info.metric_value());
        assert_eq!(va.as_str(), full);
        assert_eq!(
            va.as_str().as_ptr(),
            vb.as_str().as_ptr(),
            "one process-wide copy of the grpc.method value"
        );
        let target = shared_name("xds:///shared-names").unwrap();
        assert_eq!(
            target.as_ptr(),
            shared_name("xds:///shared-names").unwrap().as_ptr()
        );
        assert!(shared_name(&"t".repeat(MAX_SHARED_NAME_LEN + 1)).is_none());
    }

    #[test]
    fn the_kept_names_stay_within_their_bytes() {
        let mut kept = (HashSet::new(), 0);
        let [a, b] = keep(&mut kept, ["aaaa".into(), "bbbb".into()], 10).unwrap();
        assert_eq!((a, b, kept.1), ("aaaa", "bbbb", 8));
        assert_eq!(
            keep(&mut kept, ["aaaa".into()], 10).unwrap()[0].as_ptr(),
            a.as_ptr(),
            "a name kept is not kept again"
        );
        assert!(
            keep(&mut kept, ["cc".into(), "ddd".into()], 10).is_none(),
            "all or nothing"
        );
        assert_eq!(
            (kept.0.len(), kept.1),
            (2, 8),
            "nothing kept past the budget"
        );
        let [c, c2] = keep(&mut kept, ["cc".into(), "cc".into()], 10).unwrap();
        assert_eq!(
            (c.as_ptr(), kept.1),
            (c2.as_ptr(), 10),
            "a name twice is kept once"
        );
    }

    #[test]
    fn a_served_services_methods_are_known_at_once() {
        let names = MethodNames::default();
        names.serve("helloworld.Greeter");
        assert!(names.known("helloworld.Greeter/SayHello").unwrap().named);
        assert!(!names.known("other.Service/M").unwrap().named);
    }

    #[test]
    fn a_server_name_is_known_only_once_learned() {
        let names = MethodNames::default();
        assert!(names.known("not-a-method").is_none());
        let first = names.known("helloworld.Greeter/SayHello").unwrap();
        assert!(!first.named);
        assert!(names.learn(&first.info));
        assert!(names.known("helloworld.Greeter/SayHello").unwrap().named);
    }
}
