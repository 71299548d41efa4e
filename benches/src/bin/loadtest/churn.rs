//! `--churn RATE`: EDS updates of the cluster a meshwork contestant uses, pushed by the
//! harness's control plane at RATE per second while that contestant's churned open-loop
//! phase runs, and the client's ACKs of them counted from the server's record.
//!
//! With `--churn-kind endpoint` (the default) each update adds or removes a second
//! endpoint: the same echo server on a second listening address. That is the EDS change a
//! mesh sends most (a pod scaled up or down, a rollout's pods replaced), and it exercises
//! all of the client's rebuild: a new pick table whose endpoint set differs, a connection
//! (TCP and TLS handshake) to the added endpoint, the removed one's connection dropped, all
//! while calls are being picked.
//!
//! With `--churn-kind weight` both endpoints stay, each in a locality of its own, and each
//! update swaps the localities' weights (1 and 4, then 4 and 1): the same update rate and
//! the same decode, walk and table rebuild, over the same connections. Locality weights,
//! not endpoint weights, because the contestants' clusters are least request, which (as
//! gRFC A48 and grpc-go) ignores endpoint weights; every policy but ring hash weighs
//! localities. Between churned phases the two localities weigh the same.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use meshwork_benches::xds_fixtures::two_localities;
use meshwork_xds::server::{RequestKind, XdsTestServer, build, type_url};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the harness waits for the client to ACK the last update.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// A running churn; [`Churn::stop`] ends it.
pub(crate) struct Churn {
    server: Arc<XdsTestServer>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<String>>,
}

/// What a churn did: EDS versions pushed, and how many of them the client ACKed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChurnReport {
    pub(crate) pushed: usize,
    pub(crate) acked: usize,
}

/// What each update changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ChurnKind {
    /// The second endpoint joins, then leaves.
    #[default]
    Endpoint,
    /// Both endpoints stay; their localities' weights swap.
    Weight,
}

impl ChurnKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ChurnKind::Endpoint => "endpoint",
            ChurnKind::Weight => "weight",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [ChurnKind::Endpoint, ChurnKind::Weight]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

/// The churned cluster: its name, its endpoint, and the second one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) cluster: &'static str,
    pub(crate) base: SocketAddr,
    pub(crate) extra: SocketAddr,
}

impl Target {
    /// The assignment between churned phases: `base` alone, or with `weight` churn both
    /// endpoints in localities of the same weight.
    pub(crate) fn resting(&self, kind: ChurnKind) -> ClusterLoadAssignment {
        match kind {
            ChurnKind::Endpoint => build::endpoints(self.cluster, &[self.base]),
            ChurnKind::Weight => self.weighted(1, 1),
        }
    }

    /// Update number `n` (from 0) of a churn.
    fn nth(&self, kind: ChurnKind, n: u64) -> ClusterLoadAssignment {
        match (kind, n % 2) {
            (ChurnKind::Endpoint, 0) => build::endpoints(self.cluster, &[self.base, self.extra]),
            (ChurnKind::Endpoint, _) => build::endpoints(self.cluster, &[self.base]),
            (ChurnKind::Weight, 0) => self.weighted(1, 4),
            (ChurnKind::Weight, _) => self.weighted(4, 1),
        }
    }

    /// `base` and `extra`, each in a locality of its own weighing `base_weight` and
    /// `extra_weight`.
    fn weighted(&self, base_weight: u32, extra_weight: u32) -> ClusterLoadAssignment {
        two_localities(
            self.cluster,
            [self.base, self.extra],
            [base_weight, extra_weight],
        )
    }
}

/// Starts pushing updates of `target`'s cluster of `kind`, `rate` times per second (the
/// first at once), from a task on `runtime` (the control plane's).
pub(crate) fn start(
    runtime: &tokio::runtime::Handle,
    server: Arc<XdsTestServer>,
    target: Target,
    kind: ChurnKind,
    rate: u32,
) -> Churn {
    let (stop, mut stopped) = oneshot::channel();
    let srv = server.clone();
    let task = runtime.spawn(async move {
        let push = |cla: ClusterLoadAssignment| {
            srv.update(|s| {
                s.insert_endpoints(cla);
            });
            srv.version(type_url::ENDPOINTS)
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut versions = Vec::new();
        let mut n = 0;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {
                    versions.push(push(target.nth(kind, n)));
                    n += 1;
                }
            }
        }
        // Back to the assignment every other phase runs with.
        if target.nth(kind, n.wrapping_sub(1)) != target.resting(kind) {
            versions.push(push(target.resting(kind)));
        }
        versions
    });
    Churn { server, stop, task }
}

impl Churn {
    /// Stops pushing, waits (at most [`ACK_WAIT`]) for the client to ACK the last version
    /// pushed, and counts the pushed versions it ACKed.
    pub(crate) async fn stop(self) -> Result<ChurnReport, tokio::task::JoinError> {
        let _ = self.stop.send(());
        let versions = self.task.await?;
        if let Some(last) = versions.last() {
            let _ = tokio::time::timeout(
                ACK_WAIT,
                self.server.wait_for_ack(type_url::ENDPOINTS, last),
            )
            .await;
        }
        let pushed: BTreeSet<&str> = versions.iter().map(String::as_str).collect();
        // Read in place: the record holds every request of the run (an Envoy client's
        // each with its whole `Node`), and a copy of it on the runtime the echo server
        // shares would stall the calls of the next window.
        let acked = self.server.with_requests(|requests| {
            requests
                .iter()
                .filter(|r| {
                    // An ACK that arrives after the next update went out is recorded as
                    // stale, but it accepts its version all the same.
                    matches!(r.kind, RequestKind::Ack | RequestKind::Stale)
                        && r.error_message().is_none()
                        && r.type_url() == type_url::ENDPOINTS
                        && pushed.contains(r.version_info())
                })
                .map(|r| r.version_info())
                .collect::<BTreeSet<&str>>()
                .len()
        });
        Ok(ChurnReport {
            pushed: versions.len(),
            acked,
        })
    }
}
