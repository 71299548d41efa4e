//! The xDS client's OpenTelemetry metrics (gRFC A78) and its NACK log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Gauge, Meter};
use opentelemetry::{KeyValue, StringValue};

use crate::fail_static::SnapshotCounter;
use crate::protocol::{ResourceFailure, ResourceStatus, ResourceView};
use crate::resource::ResourceType;

/// How often the same resource's NACK is logged again while its reason stays the same.
const NACK_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// What the client's groups of servers count together, for the points that are the
/// client's, not one group's (each group knows only its own part). Shared by the groups'
/// [`XdsMetrics`]; each point is recorded under its lock, so the point recorded last is the
/// latest total.
#[derive(Default)]
pub(super) struct ClientTotals {
    /// Resources in use from fail-static snapshots: `meshwork.xds.snapshot.resources`.
    snapshot_resources: Mutex<u64>,
    /// Open ADS streams per xDS server URI: two groups whose lists share a server each have
    /// a stream to it, and `grpc.xds_client.connected` (one point per server) is 1 while
    /// either is up.
    streams: Mutex<HashMap<String, usize>>,
}

/// The instruments of gRFC A78, with the client's `grpc.target`: one group's.
pub(super) struct XdsMetrics {
    target: StringValue,
    connected: Gauge<u64>,
    server_failure: Counter<u64>,
    updates_valid: Counter<u64>,
    updates_invalid: Counter<u64>,
    resources: Gauge<u64>,
    snapshot_resources: Gauge<u64>,
    snapshot_loads: Counter<u64>,
    snapshot_writes: Counter<u64>,
    /// Resources in use from a fail-static snapshot at the last count.
    from_snapshot: u64,
    totals: Arc<ClientTotals>,
    /// Every (authority, cache state, type) recorded so far, so a count that drops to zero
    /// is recorded as zero.
    seen: BTreeMap<(String, &'static str, &'static str), u64>,
    /// The last NACK logged per resource: when, and its reason.
    nack_log: HashMap<(ResourceType, String), (Instant, String)>,
}

impl XdsMetrics {
    pub(super) fn new(meter: &Meter, target: String, totals: Arc<ClientTotals>) -> Self {
        Self {
            target: StringValue::from(target),
            connected: meter
                .u64_gauge("grpc.xds_client.connected")
                .with_unit("{bool}")
                .with_description(
                    "Whether the xDS client has a working ADS stream to the xDS server.",
                )
                .build(),
            server_failure: meter
                .u64_counter("grpc.xds_client.server_failure")
                .with_unit("{failure}")
                .with_description("A counter of xDS servers going from healthy to unhealthy.")
                .build(),
            updates_valid: meter
                .u64_counter("grpc.xds_client.resource_updates_valid")
                .with_unit("{resource}")
                .with_description("A counter of resources received that were considered valid.")
                .build(),
            updates_invalid: meter
                .u64_counter("grpc.xds_client.resource_updates_invalid")
                .with_unit("{resource}")
                .with_description("A counter of resources received that were considered invalid.")
                .build(),
            resources: meter
                .u64_gauge("grpc.xds_client.resources")
                .with_unit("{resource}")
                .with_description("Number of xDS resources.")
                .build(),
            snapshot_resources: meter
                .u64_gauge("meshwork.xds.snapshot.resources")
                .with_unit("{resource}")
                .with_description(
                    "Resources in use from the fail-static snapshot, not yet replaced by a server's answer.",
                )
                .build(),
            snapshot_loads: meter
                .u64_counter("meshwork.xds.snapshot.loads")
                .with_unit("{load}")
                .with_description(
                    "Fail-static snapshots read at start, by outcome: seeded, or why it was refused.",
                )
                .build(),
            snapshot_writes: meter
                .u64_counter("meshwork.xds.snapshot.writes")
                .with_unit("{write}")
                .with_description("Fail-static snapshots written, by outcome: ok, or why not.")
                .build(),
            from_snapshot: 0,
            totals,
            seen: BTreeMap::new(),
            nack_log: HashMap::new(),
        }
    }

    /// Counts a snapshot read at start: `seeded`, or the refusal's kind.
    pub(super) fn snapshot_loaded(&self, outcome: &'static str) {
        self.snapshot_loads.add(
            1,
            &[
                KeyValue::new("grpc.target", self.target.clone()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    /// The recorder of snapshot writes, for the writer task.
    pub(super) fn snapshot_writes(&self) -> SnapshotCounter {
        SnapshotCounter::new(self.snapshot_writes.clone(), self.target.clone())
    }

    /// Whether some resource in use came from a snapshot at the last count.
    pub(super) fn serving_snapshot(&self) -> bool {
        self.from_snapshot > 0
    }

    fn server_attrs(&self, server: &str) -> [KeyValue; 2] {
        [
            KeyValue::new("grpc.target", self.target.clone()),
            KeyValue::new("grpc.xds.server", server.to_owned()),
        ]
    }

    /// A stream to `server` opened (`up`) or closed; each open is followed by one close.
    pub(super) fn connected(&self, server: &str, up: bool) {
        // Recorded under the lock, so two groups' points go in the order of their counts.
        let mut streams = self
            .totals
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = streams.entry(server.to_owned()).or_default();
        *open = if up {
            open.saturating_add(1)
        } else {
            open.saturating_sub(1)
        };
        let any = *open > 0;
        if !any {
            streams.remove(server);
        }
        self.connected
            .record(u64::from(any), &self.server_attrs(server));
    }

    pub(super) fn server_failure(&self, server: &str) {
        self.server_failure.add(1, &self.server_attrs(server));
    }

    pub(super) fn valid(&self, server: &str, resource_type: ResourceType) {
        let [t, s] = self.server_attrs(server);
        let ty = KeyValue::new("grpc.xds.resource_type", resource_type.type_url());
        self.updates_valid.add(1, &[t, s, ty]);
    }

    /// Counts a rejected resource and logs the NACK, at most once per
    /// [`NACK_LOG_INTERVAL`] per resource while its reason stays the same.
    pub(super) fn invalid(
        &mut self,
        server: &str,
        resource_type: ResourceType,
        name: &str,
        error: &ResourceFailure,
        now: Instant,
    ) {
        let server_reported = matches!(error, ResourceFailure::ServerReported { .. });
        if !server_reported {
            let [t, s] = self.server_attrs(server);
            let ty = KeyValue::new("grpc.xds.resource_type", resource_type.type_url());
            self.updates_invalid.add(1, &[t, s, ty]);
        }
        let reason = error.to_string();
        let key = (resource_type, name.to_owned());
        let repeat = self.nack_log.get(&key).is_some_and(|(at, last)| {
            *last == reason && now.saturating_duration_since(*at) < NACK_LOG_INTERVAL
        });
        if repeat {
            return;
        }
        if server_reported {
            tracing::warn!(
                server,
                resource_type = resource_type.type_url(),
                resource = name,
                reason = %reason,
                "xDS server reported an error for a resource"
            );
        } else {
            tracing::warn!(
                server,
                resource_type = resource_type.type_url(),
                resource = name,
                reason = %reason,
                "xDS resource rejected (NACK)"
            );
        }
        self.nack_log.insert(key, (now, reason));
    }

    /// Forgets the NACK log entry of a resource that became valid again.
    pub(super) fn accepted(&mut self, resource_type: ResourceType, name: &str) {
        if !self.nack_log.is_empty() {
            self.nack_log.remove(&(resource_type, name.to_owned()));
        }
    }

    /// Records `grpc.xds_client.resources` from the cache's view.
    pub(super) fn cache<'a>(&mut self, views: impl Iterator<Item = ResourceView<'a>>) {
        for count in self.seen.values_mut() {
            *count = 0;
        }
        let mut from_snapshot = 0;
        for view in views {
            from_snapshot += u64::from(view.from_snapshot);
            let state = match (view.status, view.value.is_some()) {
                (ResourceStatus::Requested, _) => "requested",
                (ResourceStatus::Acked, _) => "acked",
                (ResourceStatus::Nacked, true) => "nacked_but_cached",
                (ResourceStatus::Nacked, false) => "nacked",
                (ResourceStatus::DoesNotExist, _) => "does_not_exist",
            };
            let authority = authority_of(view.name);
            *self
                .seen
                .entry((authority, state, view.resource_type.type_url()))
                .or_default() += 1;
        }
        if from_snapshot != self.from_snapshot || from_snapshot > 0 {
            // Recorded under the lock: the point recorded last is the latest total.
            let mut total = self
                .totals
                .snapshot_resources
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *total = total
                .saturating_sub(self.from_snapshot)
                .saturating_add(from_snapshot);
            self.snapshot_resources
                .record(*total, &[KeyValue::new("grpc.target", self.target.clone())]);
            self.from_snapshot = from_snapshot;
        }
        for ((authority, state, ty), count) in &self.seen {
            self.resources.record(
                *count,
                &[
                    KeyValue::new("grpc.target", self.target.clone()),
                    KeyValue::new("grpc.xds.authority", authority.clone()),
                    KeyValue::new("grpc.xds.cache_state", *state),
                    KeyValue::new("grpc.xds.resource_type", *ty),
                ],
            );
        }
    }
}

/// The authority of a resource name: the one of an `xdstp://` name, `#old` otherwise
/// (gRFC A78).
fn authority_of(name: &str) -> String {
    name.strip_prefix("xdstp://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("#old")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    use super::*;

    /// The last `grpc.xds_client.connected` point recorded for `server`.
    fn connected(
        provider: &SdkMeterProvider,
        exporter: &InMemoryMetricExporter,
        server: &str,
    ) -> u64 {
        provider.force_flush().unwrap();
        let metrics = exporter.get_finished_metrics().unwrap();
        let last = metrics.last().unwrap();
        let mut value = None;
        for scope in last.scope_metrics() {
            for m in scope
                .metrics()
                .filter(|m| m.name() == "grpc.xds_client.connected")
            {
                if let AggregatedMetrics::U64(MetricData::Gauge(g)) = m.data() {
                    for p in g.data_points() {
                        if p.attributes().any(|kv| kv.value.as_str() == server) {
                            value = Some(p.value());
                        }
                    }
                }
            }
        }
        value.expect("a point for the server")
    }

    /// Two groups whose server lists share a server: the gauge says connected while either
    /// group's stream to it is up, not whatever the last group to change recorded.
    #[test]
    fn a_server_two_groups_stream_to_is_connected_while_either_stream_is_up() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let meter = provider.meter("meshwork");
        let totals = Arc::<ClientTotals>::default();
        let group = || XdsMetrics::new(&meter, "t".into(), totals.clone());
        let (a, b) = (group(), group());
        let x = "https://x.example:443";
        a.connected(x, true);
        b.connected(x, true);
        a.connected(x, false);
        assert_eq!(
            connected(&provider, &exporter, x),
            1,
            "b's stream is still up"
        );
        b.connected(x, false);
        assert_eq!(connected(&provider, &exporter, x), 0);
        a.connected(x, true);
        assert_eq!(connected(&provider, &exporter, x), 1);
    }
}
