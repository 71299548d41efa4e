//! The fault plan: one cycle of every fault kind, repeated as often as the run allows, its
//! events spread evenly after the warm-up. Rotations sit between the other faults so that
//! a 60 s run still rotates identities at least ten times.

use std::time::Duration;

/// One kind of fault the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    /// Client and backend SVIDs re-issued by the same CA.
    SvidRotation,
    /// CA rotation, step 1: a new root joins every bundle.
    CaNewRoot,
    /// CA rotation, step 2: every SVID re-issued by the new CA.
    CaReissue,
    /// CA rotation, step 3: the old root leaves every bundle.
    CaOldRootRemoved,
    /// A new backend started and added to EDS.
    EndpointAdded,
    /// A backend removed from EDS, then (once the client ACKed) stopped: a drain.
    EndpointRemoved,
    /// A backend SIGKILLed while in EDS and taking calls.
    BackendKilled,
    /// The killed backend started again on its address.
    EndpointRestarted,
    /// The control plane killed (streams and sockets dropped).
    ControlPlaneKilled,
    /// The control plane back on its port with the config it had.
    ControlPlaneRestartedSame,
    /// The control plane back on its port with changed config: an endpoint moved.
    ControlPlaneRestartedChanged,
    /// A cluster update the client must NACK (an unsupported lb policy), then the fix.
    Nack,
    /// The cluster in use deleted from CDS, then restored.
    ClusterDeleted,
}

impl Fault {
    /// Every kind, in table order.
    pub(crate) const ALL: [Fault; 13] = [
        Fault::SvidRotation,
        Fault::CaNewRoot,
        Fault::CaReissue,
        Fault::CaOldRootRemoved,
        Fault::EndpointAdded,
        Fault::EndpointRemoved,
        Fault::BackendKilled,
        Fault::EndpointRestarted,
        Fault::ControlPlaneKilled,
        Fault::ControlPlaneRestartedSame,
        Fault::ControlPlaneRestartedChanged,
        Fault::Nack,
        Fault::ClusterDeleted,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::SvidRotation => "svid-rotation",
            Fault::CaNewRoot => "ca-rotation: new root added",
            Fault::CaReissue => "ca-rotation: svids from new ca",
            Fault::CaOldRootRemoved => "ca-rotation: old root removed",
            Fault::EndpointAdded => "endpoint-added",
            Fault::EndpointRemoved => "endpoint-removed (drained)",
            Fault::BackendKilled => "backend-killed (SIGKILL)",
            Fault::EndpointRestarted => "endpoint-restarted (same addr)",
            Fault::ControlPlaneKilled => "control-plane-killed",
            Fault::ControlPlaneRestartedSame => "control-plane-restarted (same)",
            Fault::ControlPlaneRestartedChanged => "control-plane-restarted (moved)",
            Fault::Nack => "nacked-update",
            Fault::ClusterDeleted => "cluster-deleted (in use)",
        }
    }

    /// Whether this fault must show in the config dump and the metrics.
    pub(crate) fn must_be_visible(self) -> bool {
        matches!(self, Fault::Nack | Fault::ClusterDeleted)
    }
}

use Fault::*;

/// One cycle. Each step undoes an earlier one by the end (the endpoint added is removed,
/// the killed backend restarted, the control plane up), so every cycle starts from the
/// same state and the run ends where it began: growth is then leakage, not state.
pub(crate) const CYCLE: [Fault; 26] = [
    SvidRotation,
    EndpointAdded,
    SvidRotation,
    EndpointRemoved,
    CaNewRoot,
    BackendKilled,
    CaReissue,
    EndpointRestarted,
    CaOldRootRemoved,
    SvidRotation,
    ControlPlaneKilled,
    SvidRotation,
    ControlPlaneRestartedSame,
    SvidRotation,
    ControlPlaneKilled,
    ControlPlaneRestartedChanged,
    SvidRotation,
    Nack,
    SvidRotation,
    ClusterDeleted,
    SvidRotation,
    CaNewRoot,
    CaReissue,
    CaOldRootRemoved,
    SvidRotation,
    SvidRotation,
];

/// No two events closer than this: each fault's effects (a reconnect, a retry) settle
/// before the next one.
const MIN_SLOT: Duration = Duration::from_millis(1500);
/// Aimed-for spacing in long runs.
const LONG_SLOT: Duration = Duration::from_secs(3);

/// The plan of a run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Each event's offset from the start of the run, and its fault.
    pub(crate) events: Vec<(Duration, Fault)>,
    pub(crate) slot: Duration,
    pub(crate) cycles: usize,
}

/// Plans `duration`: faults from `warmup` on, the last `tail` fault-free so the last
/// fault's effects are counted.
pub(crate) fn plan(duration: Duration, warmup: Duration, tail: Duration) -> Plan {
    let room = duration.saturating_sub(warmup + tail);
    let per_cycle = CYCLE.len() as u32;
    let cycles = ((room.as_secs_f64() / (LONG_SLOT * per_cycle).as_secs_f64()) as usize).max(1);
    let slot = (room / (cycles as u32 * per_cycle)).max(MIN_SLOT);
    let events = (0..cycles)
        .flat_map(|_| CYCLE)
        .enumerate()
        .map(|(i, f)| (warmup + slot * i as u32, f))
        .collect();
    Plan {
        events,
        slot,
        cycles,
    }
}

/// Identity rotations in a plan: SVID re-issues by the same CA, and whole CA rotations.
pub(crate) fn rotations(faults: impl IntoIterator<Item = Fault>) -> usize {
    faults
        .into_iter()
        .filter(|f| matches!(f, SvidRotation | CaOldRootRemoved))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_has_every_fault_and_ten_rotations() {
        let p = plan(
            Duration::from_secs(60),
            Duration::from_secs(6),
            Duration::from_secs(5),
        );
        assert_eq!(p.cycles, 1);
        for f in Fault::ALL {
            assert!(p.events.iter().any(|(_, e)| *e == f), "{f:?} missing");
        }
        assert!(rotations(p.events.iter().map(|(_, f)| *f)) >= 10);
        let last = p.events.last().unwrap().0;
        assert!(last <= Duration::from_secs(55), "{last:?}");
        assert!(p.events.windows(2).all(|w| w[1].0 - w[0].0 >= MIN_SLOT));
    }

    #[test]
    fn ten_minutes_repeat_the_cycle() {
        let p = plan(
            Duration::from_secs(600),
            Duration::from_secs(10),
            Duration::from_secs(10),
        );
        assert_eq!(p.cycles, 7);
        assert!(p.slot >= LONG_SLOT);
        assert!(p.events.last().unwrap().0 <= Duration::from_secs(590));
    }

    #[test]
    fn every_cycle_undoes_its_changes() {
        let count = |f| CYCLE.iter().filter(|&&c| c == f).count();
        assert_eq!(count(EndpointAdded), count(EndpointRemoved));
        assert_eq!(count(BackendKilled), count(EndpointRestarted));
        assert_eq!(
            count(ControlPlaneKilled),
            count(ControlPlaneRestartedSame) + count(ControlPlaneRestartedChanged)
        );
        assert_eq!(count(CaNewRoot), count(CaOldRootRemoved));
    }
}
