//! Fail-static restarts (issue #15): the xDS client keeps its last good configuration on
//! disk and, started again while every xDS server is down, serves from it until a server
//! answers. Real ADS streams on loopback, real files in a temp dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshwork_test_support::xds::{
    bootstrap, endpoint_port, fail_static_builder, one_local_endpoint,
};
use meshwork_test_support::{refused_addr, temp_dir, within};
use meshwork_xds::fail_static::FailStatic;
use meshwork_xds::protocol::ResourceStatus;
use meshwork_xds::server::XdsTestServer;
use meshwork_xds::watch::TargetState;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

const TARGET: &str = "greeter:50051";
const NODE: &str = "meshwork-fail-static-test";

/// Run a client of `servers` until it has the target, then write its snapshot; returns the
/// file.
async fn write_snapshot(node: &str, servers: &[String], dir: &Path) -> PathBuf {
    let client = fail_static_builder(node, servers, dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    let path = within(10, client.save_snapshot())
        .await
        .unwrap()
        .expect("a snapshot is configured and nothing comes from one");
    assert_eq!(
        path,
        FailStatic::new(dir).path_for(&bootstrap(node, servers)),
        "the file is where path_for says"
    );
    assert!(path.is_file());
    path
}

/// The client's metrics, through an in-memory exporter.
struct Metrics {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl Metrics {
    fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        Self { provider, exporter }
    }

    /// The latest value of the u64 instrument `name` at the point with attribute
    /// `key=value` (any point when `key` is empty).
    fn value(&self, name: &str, key: &str, value: &str) -> Option<u64> {
        self.provider.force_flush().unwrap();
        let metrics = self.exporter.get_finished_metrics().unwrap();
        let last = metrics.last()?;
        let mut found = None;
        for scope in last.scope_metrics() {
            for m in scope.metrics().filter(|m| m.name() == name) {
                let matches = |kv: &opentelemetry::KeyValue| {
                    key.is_empty() || (kv.key.as_str() == key && kv.value.as_str() == value)
                };
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(s)) => {
                        for p in s.data_points() {
                            if key.is_empty() || p.attributes().any(matches) {
                                found = Some(p.value());
                            }
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                        for p in g.data_points() {
                            if key.is_empty() || p.attributes().any(matches) {
                                found = Some(p.value());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        found
    }

    /// Wait until the client has read its snapshot at start, with `outcome`.
    async fn wait_for_load(&self, outcome: &str) {
        within(10, async {
            while self.value("meshwork.xds.snapshot.loads", "outcome", outcome) != Some(1) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_restart_with_every_server_down_serves_the_snapshot_until_a_server_answers() {
    let dir = temp_dir("fail-static-restart");
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(one_local_endpoint(TARGET, 1001));
    let (addr, uris) = (server.addr(), vec![server.uri()]);
    write_snapshot(NODE, &uris, &dir).await;
    server.shutdown().await.unwrap();

    // Restarted with the control plane down: the snapshot is served, and marked.
    let metrics = Metrics::new();
    let client = fail_static_builder(NODE, &uris, &dir)
        .meter(metrics.provider.meter("meshwork"))
        .start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(endpoint_port(&served, "a"), Some(1001));
    let dump = client.dump().await;
    assert_eq!(dump.len(), 4, "{dump:#?}");
    for row in &dump {
        assert!(row.from_snapshot, "{row:?}");
        assert_eq!(row.status, ResourceStatus::Acked, "{row:?}");
        assert_eq!(row.version.as_deref(), Some("1"), "{row:?}");
    }
    metrics.wait_for_load("served").await;
    assert_eq!(
        metrics.value("meshwork.xds.snapshot.loads", "outcome", "ok"),
        Some(1)
    );
    assert_eq!(
        metrics.value("meshwork.xds.snapshot.resources", "", ""),
        Some(4)
    );
    assert_eq!(
        metrics.value("grpc.xds_client.resource_updates_valid", "", ""),
        None,
        "a snapshot's resources are not updates from a server"
    );
    assert_eq!(
        client.save_snapshot().await.unwrap(),
        None,
        "the snapshot is not written again as if it were new"
    );

    // The control plane comes back with another config: it replaces the snapshot.
    let server = XdsTestServer::start_on(addr).await.unwrap();
    server.set_snapshot(one_local_endpoint(TARGET, 1002));
    let replaced = within(10, async {
        loop {
            match watch.changed().await {
                Some(TargetState::Ready(config)) if endpoint_port(&config, "a") == Some(1002) => {
                    break config;
                }
                Some(_) => {}
                None => panic!("the client stopped"),
            }
        }
    })
    .await;
    assert_eq!(endpoint_port(&replaced, "a"), Some(1002));
    let dump = client.dump().await;
    assert!(dump.iter().all(|row| !row.from_snapshot), "{dump:#?}");
    assert_eq!(
        metrics.value("meshwork.xds.snapshot.resources", "", ""),
        Some(0)
    );
    // And on disk: the next restart with the control plane down serves the new config.
    client.save_snapshot().await.unwrap().expect("written");
    drop((watch, client));
    server.shutdown().await.unwrap();
    let client = fail_static_builder(NODE, &uris, &dir).start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(endpoint_port(&served, "a"), Some(1002));
}

/// gRFC A71: the snapshot is served only once every server failed, and whichever server
/// answers first replaces it (here the fallback).
#[tokio::test]
async fn with_fallback_servers_the_snapshot_waits_for_all_and_the_fallback_replaces_it() {
    let dir = temp_dir("fail-static-fallback");
    let primary = format!("http://{}", refused_addr());
    let fallback = XdsTestServer::start().await.unwrap();
    fallback.set_snapshot(one_local_endpoint(TARGET, 2001));
    let addr = fallback.addr();
    let uris = vec![primary, fallback.uri()];
    write_snapshot(NODE, &uris, &dir).await;
    fallback.shutdown().await.unwrap();

    let metrics = Metrics::new();
    let client = fail_static_builder(NODE, &uris, &dir)
        .meter(metrics.provider.meter("meshwork"))
        .start();
    let mut watch = client.watch_target(TARGET, TARGET).await;
    let served = within(10, watch.ready(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(endpoint_port(&served, "a"), Some(2001));
    metrics.wait_for_load("served").await;

    let fallback = XdsTestServer::start_on(addr).await.unwrap();
    fallback.set_snapshot(one_local_endpoint(TARGET, 2002));
    within(10, async {
        loop {
            match watch.changed().await {
                Some(TargetState::Ready(config)) if endpoint_port(&config, "a") == Some(2002) => {
                    break;
                }
                Some(_) => {}
                None => panic!("the client stopped"),
            }
        }
    })
    .await;
    let dump = client.dump().await;
    assert!(dump.iter().all(|row| !row.from_snapshot), "{dump:#?}");
    drop(fallback);
}

/// A snapshot that cannot be trusted is not served: the reason is counted (and logged),
/// and the client waits for a server as it would without a snapshot.
#[tokio::test]
async fn a_damaged_foreign_or_stale_snapshot_is_refused_with_its_reason() {
    let source = temp_dir("fail-static-source");
    let server = XdsTestServer::start().await.unwrap();
    server.set_snapshot(one_local_endpoint(TARGET, 3001));
    let uris = vec![server.uri()];
    let good = std::fs::read(write_snapshot(NODE, &uris, &source).await).unwrap();
    let foreign = std::fs::read(write_snapshot("another-node", &uris, &source).await).unwrap();
    server.shutdown().await.unwrap();

    let mut corrupt = good.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x40;
    let truncated = good[..good.len() - 7].to_vec();
    let cases: [(&str, Option<Vec<u8>>, Duration); 5] = [
        ("missing", None, Duration::from_secs(3600)),
        ("corrupt", Some(corrupt), Duration::from_secs(3600)),
        ("truncated", Some(truncated), Duration::from_secs(3600)),
        ("foreign", Some(foreign), Duration::from_secs(3600)),
        ("stale", Some(good.clone()), Duration::ZERO),
    ];
    for (outcome, bytes, max_age) in cases {
        let dir = temp_dir(&format!("fail-static-{outcome}"));
        let fail_static = FailStatic::new(&dir).max_age(max_age);
        if let Some(bytes) = bytes {
            std::fs::write(fail_static.path_for(&bootstrap(NODE, &uris)), bytes).unwrap();
        }
        let metrics = Metrics::new();
        let client = fail_static_builder(NODE, &uris, &dir)
            .fail_static(fail_static)
            .meter(metrics.provider.meter("meshwork"))
            .start();
        let watch = client.watch_target(TARGET, TARGET).await;
        metrics.wait_for_load(outcome).await;
        assert_eq!(
            metrics.value("meshwork.xds.snapshot.loads", "outcome", "served"),
            None,
            "{outcome}"
        );
        assert!(
            matches!(watch.current(), TargetState::Pending),
            "{outcome}: {:?}",
            watch.current()
        );
        assert!(client.dump().await.iter().all(|row| row.resource.is_none()));
    }
}
