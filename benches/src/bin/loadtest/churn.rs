//! `--churn RATE`: EDS updates of the cluster a meshwork contestant uses, pushed by the
//! harness's control plane at RATE per second while that contestant's churned open-loop
//! phase runs, and the client's ACKs of them counted from the server's record.
//!
//! Each update adds or removes a second endpoint: the same echo server on a second
//! listening address. That is the EDS change a mesh sends most (a pod scaled up or down, a
//! rollout's pods replaced), and it exercises all of the client's rebuild: a new pick table
//! whose endpoint set differs, a connection (TCP and TLS handshake) to the added endpoint,
//! the removed one's connection dropped, all while calls are being picked. A weight change
//! would only rebuild the table over the same connections.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// Starts pushing `cluster`'s endpoints, alternately `[base, extra]` and `[base]`, `rate`
/// times per second (the first at once).
pub(crate) fn start(
    server: Arc<XdsTestServer>,
    cluster: &'static str,
    base: SocketAddr,
    extra: SocketAddr,
    rate: u32,
) -> Churn {
    let (stop, mut stopped) = oneshot::channel();
    let srv = server.clone();
    let task = tokio::spawn(async move {
        let push = |addrs: &[SocketAddr]| {
            srv.update(|s| {
                s.insert_endpoints(build::endpoints(cluster, addrs));
            });
            srv.version(type_url::ENDPOINTS)
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut versions, mut with_extra) = (Vec::new(), false);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {
                    with_extra = !with_extra;
                    let addrs: &[SocketAddr] = if with_extra { &[base, extra] } else { &[base] };
                    versions.push(push(addrs));
                }
            }
        }
        // Back to the one endpoint every other phase runs with.
        if with_extra {
            versions.push(push(&[base]));
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
        let acked: BTreeSet<String> = self
            .server
            .requests()
            .into_iter()
            .filter(|r| {
                // An ACK that arrives after the next update went out is recorded as stale,
                // but it accepts its version all the same.
                matches!(r.kind, RequestKind::Ack | RequestKind::Stale)
                    && r.error_message().is_none()
                    && r.type_url() == type_url::ENDPOINTS
                    && pushed.contains(r.version_info())
            })
            .map(|r| r.version_info().to_owned())
            .collect();
        Ok(ChurnReport {
            pushed: versions.len(),
            acked: acked.len(),
        })
    }
}
