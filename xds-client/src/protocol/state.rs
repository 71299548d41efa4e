//! One cached resource and the transitions of its status (gRFC A88 and CSDS's
//! `ClientResourceStatus`): every change of a resource's status, value, version or error
//! is a [`Transition`] applied by [`ResourceState::transition`], in one place.
//!
//! ```text
//! REQUESTED ──Accept──▶ ACKED ◀──Accept── NACKED / DOES_NOT_EXIST
//! any ──Reject──▶ NACKED   (the last good value stays, unless dropped: A88 fail_on_data_errors)
//! any ──NotFound──▶ DOES_NOT_EXIST   (the server says so, or the A57 timer fired)
//! ACKED/NACKED with a value ──Deleted──▶ DOES_NOT_EXIST   (left out of an LDS/CDS response)
//! ```

use std::time::Instant;

use envoy_types::pb::google::protobuf::Any;

use super::{ResourceFailure, ResourceStatus, XdsEvent};
use crate::resource::{Resource, ResourceType};

/// The client's state of one resource of one type.
#[derive(Debug, Default)]
pub(super) struct ResourceState {
    pub(super) subscribed: bool,
    pub(super) value: Option<Resource>,
    /// `value` as the server sent it: CSDS shows it (gRFC A40's `xds_config`), as grpc-go
    /// keeps it. Present exactly when `value` is.
    pub(super) raw: Option<Any>,
    pub(super) version: Option<String>,
    status: Option<ResourceStatus>,
    pub(super) error: Option<ResourceFailure>,
    pub(super) last_updated: Option<Instant>,
    pub(super) does_not_exist_at: Option<Instant>,
    /// Named by a request polled on the current stream (its timer starts once connected).
    pub(super) requested_on_stream: bool,
    /// `value` came from a fail-static snapshot, not from a server: no live answer has
    /// replaced it yet.
    pub(super) from_snapshot: bool,
}

/// What happens to a resource.
#[derive(Debug)]
pub(super) enum Transition {
    /// A valid value arrived in a response of `version`: ACKED.
    Accept {
        /// The value.
        value: Resource,
        /// The value as the server sent it.
        raw: Any,
        /// The response's `version_info`.
        version: String,
    },
    /// A value was rejected, by us or by the server: NACKED. The last good value stays in
    /// use unless `drop_cached` (gRFC A88 `fail_on_data_errors`).
    Reject {
        /// Why.
        failure: ResourceFailure,
        /// Forget the cached value (and its version).
        drop_cached: bool,
    },
    /// The server says the resource does not exist, or its does-not-exist timer fired:
    /// DOES_NOT_EXIST, without a value.
    NotFound,
    /// A full-state response (LDS, CDS) left the resource out: DOES_NOT_EXIST, without a
    /// value or the version that delivered it.
    Deleted,
    /// A value of an earlier run, from a fail-static snapshot, for a resource that has none:
    /// ACKED with the snapshot's version, until a server answers.
    Seed {
        /// The value.
        value: Resource,
        /// The value as the server of the earlier run sent it.
        raw: Any,
        /// The version it had then.
        version: String,
    },
}

/// What a transition means to the resource's watchers.
#[derive(Debug)]
pub(super) enum Notice {
    /// A new or changed valid value.
    Changed(Resource),
    /// A rejected value.
    Invalid(ResourceFailure),
    /// No value, and none is coming.
    DoesNotExist,
}

impl Notice {
    pub(super) fn into_event(self, resource_type: ResourceType, name: String) -> XdsEvent {
        match self {
            Notice::Changed(resource) => XdsEvent::Changed(resource),
            Notice::Invalid(error) => XdsEvent::Invalid {
                resource_type,
                name,
                error,
            },
            Notice::DoesNotExist => XdsEvent::DoesNotExist {
                resource_type,
                name,
            },
        }
    }
}

impl ResourceState {
    /// The value a snapshot gave this resource, with when it was seeded, if it is still
    /// in use: for the seed pool when nobody wants the resource any more.
    pub(super) fn seed(&self) -> Option<(super::Seed, Instant)> {
        if !self.from_snapshot {
            return None;
        }
        let seed = super::Seed {
            value: self.value.clone()?,
            raw: self.raw.clone()?,
            version: self.version.clone()?,
        };
        Some((seed, self.last_updated?))
    }

    pub(super) fn status(&self) -> ResourceStatus {
        self.status.unwrap_or(ResourceStatus::Requested)
    }

    /// Applies `transition` at `now`. Every transition answers the resource, so its
    /// does-not-exist timer stops. Returns what the watchers must hear: nothing for a
    /// value accepted again unchanged.
    pub(super) fn transition(&mut self, transition: Transition, now: Instant) -> Option<Notice> {
        self.does_not_exist_at = None;
        if !matches!(
            transition,
            Transition::Reject {
                drop_cached: false,
                ..
            } | Transition::Seed { .. }
        ) {
            // A server's answer replaces what the snapshot gave, unless it is a rejection
            // that keeps the value in use.
            self.from_snapshot = false;
        }
        match transition {
            Transition::Seed {
                value,
                raw,
                version,
            } => {
                if self.value.is_some() {
                    return None;
                }
                self.version = Some(version);
                self.raw = Some(raw);
                self.error = None;
                self.status = Some(ResourceStatus::Acked);
                self.last_updated = Some(now);
                self.from_snapshot = true;
                self.value = Some(value.clone());
                Some(Notice::Changed(value))
            }
            Transition::Accept {
                value,
                raw,
                version,
            } => {
                self.version = Some(version);
                self.error = None;
                // Even when the value decodes the same, the bytes may differ (a field
                // meshwork ignores): the dump shows what the server sent last.
                self.raw = Some(raw);
                let changed =
                    self.value.as_ref() != Some(&value) || self.status() != ResourceStatus::Acked;
                self.status = Some(ResourceStatus::Acked);
                if !changed {
                    return None;
                }
                self.last_updated = Some(now);
                self.value = Some(value.clone());
                Some(Notice::Changed(value))
            }
            Transition::Reject {
                failure,
                drop_cached,
            } => {
                self.status = Some(ResourceStatus::Nacked);
                self.error = Some(failure.clone());
                self.last_updated = Some(now);
                if drop_cached && self.value.take().is_some() {
                    self.raw = None;
                    self.version = None;
                }
                Some(Notice::Invalid(failure))
            }
            Transition::NotFound => {
                self.value = None;
                self.raw = None;
                self.error = None;
                self.status = Some(ResourceStatus::DoesNotExist);
                self.last_updated = Some(now);
                Some(Notice::DoesNotExist)
            }
            Transition::Deleted => {
                self.value = None;
                self.raw = None;
                self.version = None;
                self.error = None;
                self.status = Some(ResourceStatus::DoesNotExist);
                self.last_updated = Some(now);
                Some(Notice::DoesNotExist)
            }
        }
    }

    /// Start the does-not-exist timer of a resource still waited for, unless it runs. No
    /// deadline (a timeout too large for the clock) means it never fires. A value from a
    /// snapshot is still waited for once a server has sent an accepted response of its type
    /// (`type_acked`): if that server does not send the resource in time, it does not exist.
    /// Before that, a server's silence (or a response rejected whole) says nothing (a
    /// control plane may hold a request it has no config for), and a seeded value whose
    /// update was rejected is kept as any last good value is.
    pub(super) fn start_timer(&mut self, deadline: Option<Instant>, type_acked: bool) {
        let seeded_and_unanswered =
            self.from_snapshot && type_acked && self.status() == ResourceStatus::Acked;
        let waiting = (self.value.is_none() && self.status() == ResourceStatus::Requested)
            || seeded_and_unanswered;
        if let Some(deadline) = deadline
            && waiting
            && self.does_not_exist_at.is_none()
        {
            self.does_not_exist_at = Some(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::resource::Cluster;

    fn cluster(name: &str, timeout_secs: u64) -> Resource {
        Resource::Cluster(Arc::new(Cluster {
            connect_timeout: Duration::from_secs(timeout_secs),
            ..Cluster::eds(name)
        }))
    }

    fn accept(value: &Resource, version: &str) -> Transition {
        Transition::Accept {
            value: value.clone(),
            raw: raw(version),
            version: version.into(),
        }
    }

    /// Stands in for the bytes of the response of `version`.
    fn raw(version: &str) -> Any {
        Any {
            type_url: "test".into(),
            value: version.as_bytes().to_vec(),
        }
    }

    fn reject(drop_cached: bool) -> Transition {
        Transition::Reject {
            failure: ResourceFailure::ServerReported {
                code: 13,
                message: "bad".into(),
            },
            drop_cached,
        }
    }

    /// A resource that went REQUESTED → ACKED with `value` at version "1", at `t0`.
    fn acked(value: &Resource, t0: Instant) -> ResourceState {
        let mut rs = ResourceState::default();
        rs.transition(accept(value, "1"), t0);
        rs
    }

    #[test]
    fn requested_then_accepted_is_acked_with_value_and_version() {
        let t0 = Instant::now();
        let a = cluster("a", 1);
        let mut rs = ResourceState::default();
        rs.start_timer(Some(t0 + Duration::from_secs(15)), false);
        assert!(rs.does_not_exist_at.is_some());
        assert_eq!(rs.status(), ResourceStatus::Requested);
        let notice = rs.transition(accept(&a, "1"), t0);
        assert!(matches!(notice, Some(Notice::Changed(v)) if v == a));
        assert_eq!(rs.status(), ResourceStatus::Acked);
        assert_eq!(rs.value, Some(a));
        assert_eq!(rs.raw, Some(raw("1")));
        assert_eq!(rs.version.as_deref(), Some("1"));
        assert_eq!(rs.last_updated, Some(t0));
        assert!(rs.error.is_none());
        assert_eq!(rs.does_not_exist_at, None, "the answer stops the timer");
    }

    #[test]
    fn the_same_value_again_takes_the_version_and_tells_nobody() {
        let t0 = Instant::now();
        let a = cluster("a", 1);
        let mut rs = acked(&a, t0);
        let notice = rs.transition(accept(&a, "2"), t0 + Duration::from_secs(1));
        assert!(notice.is_none());
        assert_eq!(rs.status(), ResourceStatus::Acked);
        assert_eq!(rs.version.as_deref(), Some("2"));
        assert_eq!(rs.raw, Some(raw("2")), "the bytes the server sent last");
        assert_eq!(rs.last_updated, Some(t0), "nothing changed");
    }

    #[test]
    fn a_changed_value_is_acked_and_told() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let b = cluster("a", 2);
        let mut rs = acked(&cluster("a", 1), t0);
        let notice = rs.transition(accept(&b, "2"), t1);
        assert!(matches!(notice, Some(Notice::Changed(v)) if v == b));
        assert_eq!(rs.value, Some(b));
        assert_eq!(rs.last_updated, Some(t1));
    }

    #[test]
    fn a_nack_keeps_the_last_good_value_and_its_version() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let a = cluster("a", 1);
        let mut rs = acked(&a, t0);
        let notice = rs.transition(reject(false), t1);
        assert!(matches!(
            notice,
            Some(Notice::Invalid(ResourceFailure::ServerReported {
                code: 13,
                ..
            }))
        ));
        assert_eq!(rs.status(), ResourceStatus::Nacked);
        assert_eq!(rs.value, Some(a), "the last good value stays in use");
        assert_eq!(rs.raw, Some(raw("1")));
        assert_eq!(rs.version.as_deref(), Some("1"));
        assert!(rs.error.is_some());
        assert_eq!(rs.last_updated, Some(t1));
    }

    #[test]
    fn a_nack_that_drops_the_cache_forgets_value_and_version() {
        let t0 = Instant::now();
        let mut rs = acked(&cluster("a", 1), t0);
        assert!(rs.transition(reject(true), t0).is_some());
        assert_eq!(rs.status(), ResourceStatus::Nacked);
        assert_eq!(rs.value, None);
        assert_eq!(rs.raw, None);
        assert_eq!(rs.version, None);
        assert!(rs.error.is_some());
    }

    #[test]
    fn requested_then_rejected_is_nacked_without_value() {
        let t0 = Instant::now();
        let mut rs = ResourceState::default();
        rs.start_timer(Some(t0), false);
        assert!(matches!(
            rs.transition(reject(false), t0),
            Some(Notice::Invalid(_))
        ));
        assert_eq!(rs.status(), ResourceStatus::Nacked);
        assert_eq!(rs.value, None);
        assert_eq!(rs.does_not_exist_at, None);
    }

    #[test]
    fn an_accept_after_a_nack_is_acked_and_told_even_with_the_same_value() {
        let t0 = Instant::now();
        let a = cluster("a", 1);
        let mut rs = acked(&a, t0);
        rs.transition(reject(false), t0);
        let notice = rs.transition(accept(&a, "3"), t0);
        assert!(matches!(notice, Some(Notice::Changed(_))));
        assert_eq!(rs.status(), ResourceStatus::Acked);
        assert!(rs.error.is_none(), "the error is cleared");
        assert_eq!(rs.version.as_deref(), Some("3"));
    }

    #[test]
    fn not_found_drops_the_value_and_keeps_the_version() {
        let t0 = Instant::now();
        let mut rs = acked(&cluster("a", 1), t0);
        rs.transition(reject(false), t0);
        let notice = rs.transition(Transition::NotFound, t0);
        assert!(matches!(notice, Some(Notice::DoesNotExist)));
        assert_eq!(rs.status(), ResourceStatus::DoesNotExist);
        assert_eq!(rs.value, None);
        assert_eq!(rs.raw, None);
        assert!(rs.error.is_none());
        assert_eq!(rs.version.as_deref(), Some("1"));
    }

    #[test]
    fn the_timer_makes_a_requested_resource_not_exist() {
        let t0 = Instant::now();
        let mut rs = ResourceState::default();
        rs.start_timer(Some(t0), false);
        assert_eq!(rs.does_not_exist_at, Some(t0));
        assert!(matches!(
            rs.transition(Transition::NotFound, t0),
            Some(Notice::DoesNotExist)
        ));
        assert_eq!(rs.status(), ResourceStatus::DoesNotExist);
        assert_eq!(rs.does_not_exist_at, None);
        rs.start_timer(Some(t0), false);
        assert_eq!(
            rs.does_not_exist_at, None,
            "only a REQUESTED resource waits"
        );
    }

    #[test]
    fn deleted_drops_value_version_and_error() {
        let t0 = Instant::now();
        let mut rs = acked(&cluster("a", 1), t0);
        let notice = rs.transition(Transition::Deleted, t0);
        assert!(matches!(notice, Some(Notice::DoesNotExist)));
        assert_eq!(rs.status(), ResourceStatus::DoesNotExist);
        assert_eq!(rs.value, None);
        assert_eq!(rs.raw, None);
        assert_eq!(rs.version, None);
        assert!(rs.error.is_none());
    }

    #[test]
    fn a_resource_that_does_not_exist_can_come_back() {
        let t0 = Instant::now();
        let a = cluster("a", 1);
        let mut rs = acked(&a, t0);
        rs.transition(Transition::Deleted, t0);
        assert!(matches!(
            rs.transition(accept(&a, "4"), t0),
            Some(Notice::Changed(_))
        ));
        assert_eq!(rs.status(), ResourceStatus::Acked);
        assert_eq!(rs.value, Some(a));
    }

    #[test]
    fn notices_become_events_for_the_named_resource() {
        let a = cluster("a", 1);
        assert!(matches!(
            Notice::Changed(a.clone()).into_event(ResourceType::Cluster, "a".into()),
            XdsEvent::Changed(v) if v == a
        ));
        assert!(matches!(
            Notice::DoesNotExist.into_event(ResourceType::Cluster, "a".into()),
            XdsEvent::DoesNotExist { name, .. } if name == "a"
        ));
        assert!(matches!(
            Notice::Invalid(ResourceFailure::Duplicate { name: "a".into() })
                .into_event(ResourceType::Cluster, "a".into()),
            XdsEvent::Invalid { name, .. } if name == "a"
        ));
    }
}
