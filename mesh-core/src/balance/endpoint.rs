//! What the balancer keeps per endpoint across endpoint-set updates, shared by the driver
//! and every call: the load signal, the outlier stats and the current connection handle.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use tower::BoxError;

use super::load::EndpointLoad;
use crate::outlier::EndpointStats;

/// One endpoint's shared state. `S` is the endpoint's service handle.
pub(crate) struct Endpoint<S> {
    pub(crate) load: EndpointLoad,
    pub(crate) outlier: Option<Arc<EndpointStats>>,
    /// Mirrors `handle.is_some()`, so that a pick tests one flag per candidate. The driver
    /// stores the handle before raising it and lowers it before taking the handle away; a
    /// pick that finds the flag up and the handle gone just picks again.
    ready: AtomicBool,
    handle: ArcSwapOption<Handle<S>>,
    /// The error of the last connection attempt while it keeps failing (gRPC's sticky
    /// TRANSIENT_FAILURE); cleared when a connection is made.
    failure: ArcSwapOption<BoxError>,
}

/// A connected endpoint service; calls clone `service`. `id` tells one connection from the
/// next, so a failure reported late does not take down a newer connection.
pub(crate) struct Handle<S> {
    pub(crate) id: u64,
    pub(crate) service: S,
}

impl<S> fmt::Debug for Endpoint<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("load", &self.load)
            .field("ready", &self.is_ready())
            .field("ejected", &self.ejected())
            .finish_non_exhaustive()
    }
}

impl<S> Endpoint<S> {
    pub(crate) fn new(outlier: Option<Arc<EndpointStats>>) -> Self {
        Self {
            load: EndpointLoad::new(),
            outlier,
            ready: AtomicBool::new(false),
            handle: ArcSwapOption::empty(),
            failure: ArcSwapOption::empty(),
        }
    }

    /// The last connection error, while connecting keeps failing.
    pub(crate) fn failure(&self) -> Option<Arc<BoxError>> {
        self.failure.load_full()
    }

    /// Whether the last connection attempt failed (and none succeeded since).
    pub(crate) fn is_failing(&self) -> bool {
        self.failure.load().is_some()
    }

    /// Records a failed connection attempt (driver only).
    pub(crate) fn fail(&self, error: BoxError) {
        self.failure.store(Some(Arc::new(error)));
    }

    pub(crate) fn ejected(&self) -> bool {
        self.outlier.as_ref().is_some_and(|o| o.is_ejected())
    }

    /// Whether a connected handle is published.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The published handle's id and a clone of its service.
    pub(crate) fn handle(&self) -> Option<(u64, S)>
    where
        S: Clone,
    {
        let guard = self.handle.load();
        guard.as_ref().map(|h| (h.id, h.service.clone()))
    }

    /// The id of the published handle.
    pub(crate) fn handle_id(&self) -> Option<u64> {
        self.handle.load().as_ref().map(|h| h.id)
    }

    /// Publishes a connected handle (driver only).
    pub(crate) fn publish(&self, handle: Handle<S>) {
        self.handle.store(Some(Arc::new(handle)));
        self.failure.store(None);
        self.ready.store(true, Ordering::Release);
    }

    /// Takes the handle away (driver only).
    pub(crate) fn withdraw(&self) {
        self.ready.store(false, Ordering::Release);
        self.handle.store(None);
    }

    /// Hides the endpoint from picks until the driver has looked at a failure report: a
    /// caller that found the handle `id` broken. The driver raises the flag again if a newer
    /// handle is in place.
    pub(crate) fn hide(&self, id: u64) {
        if self.handle_id() == Some(id) {
            self.ready.store(false, Ordering::Release);
        }
    }

    /// Raises the flag again when a handle is published (driver only).
    pub(crate) fn unhide(&self) {
        if self.handle.load().is_some() {
            self.ready.store(true, Ordering::Release);
        }
    }
}
