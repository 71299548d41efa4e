//! The client at steady load: idempotent unary calls at a fixed rate through a
//! `MeshChannel` (on a runtime of its own, so its task count is the mesh's and the calls'
//! alone), every reply checked, every failed call attributed to the fault in force when it
//! ended, and judged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meshwork_core::identity::{MtlsConfig, StaticSource};
use meshwork_grpc::{MeshChannel, MeshChannelOptions};
use meshwork_xds::bootstrap::Bootstrap;
use meshwork_xds::client::XdsClient;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, watch};

use crate::Error;
use crate::echo::{self, Outcome};

/// A call not answered in this long failed (the route sets no timeout of its own).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Error messages kept per bucket, to show what failed without growing.
const ERRORS_KEPT: usize = 3;

/// The calls that ended while one fault was the latest (bucket 0: before the first).
#[derive(Debug, Default, Clone)]
pub(crate) struct Bucket {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    /// Failed while the config itself said calls must fail (the cluster was deleted).
    pub(crate) expected: u64,
    /// Failed although a retry or failover could have saved them, or answered wrongly.
    pub(crate) unsaved: u64,
    /// Answered, but with another payload or identity (always unsaved).
    pub(crate) wrong: u64,
    pub(crate) errors: Vec<String>,
}

/// What the calls did, shared by the callers and the harness.
#[derive(Debug)]
pub(crate) struct Tally {
    buckets: Mutex<Vec<Bucket>>,
    current: AtomicUsize,
    /// Odd while the config says calls must fail; a call that saw it odd, or saw it change,
    /// overlapped such a window.
    expect_failures: AtomicU64,
    pub(crate) shed: AtomicU64,
    backends: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn new(events: usize) -> Self {
        Self {
            buckets: Mutex::new(vec![Bucket::default(); events + 1]),
            current: AtomicUsize::new(0),
            expect_failures: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            backends: Mutex::new(BTreeMap::new()),
        }
    }

    /// Fault `event` (0-based) is injected now: calls ending from now on are its.
    pub(crate) fn begin(&self, event: usize) {
        self.current.store(event + 1, Ordering::SeqCst);
    }

    /// Opens or closes a window in which the config says calls must fail.
    pub(crate) fn expect_failures(&self, on: bool) {
        let odd = self.expect_failures.load(Ordering::SeqCst) % 2 == 1;
        if odd != on {
            self.expect_failures.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn record(&self, window_at_start: u64, outcome: Result<Outcome, tokio::time::error::Elapsed>) {
        let window_at_end = self.expect_failures.load(Ordering::SeqCst);
        let expected = window_at_start % 2 == 1 || window_at_start != window_at_end;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(b) = buckets.get_mut(self.current.load(Ordering::SeqCst)) else {
            return;
        };
        b.calls += 1;
        let error = match outcome {
            Ok(Outcome::Ok { backend }) => {
                *self
                    .backends
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(backend)
                    .or_default() += 1;
                return;
            }
            Ok(Outcome::Wrong(why)) => {
                b.wrong += 1;
                b.failed += 1;
                b.unsaved += 1;
                format!("wrong answer: {why}")
            }
            Ok(Outcome::Failed(status)) => {
                b.failed += 1;
                if expected {
                    b.expected += 1;
                } else {
                    b.unsaved += 1;
                }
                format!("{:?}: {}", status.code(), status.message())
            }
            Err(_) => {
                b.failed += 1;
                if expected {
                    b.expected += 1;
                } else {
                    b.unsaved += 1;
                }
                format!("no answer in {CALL_TIMEOUT:?}")
            }
        };
        if b.errors.len() < ERRORS_KEPT {
            let mut error = error;
            error.truncate(400);
            b.errors.push(error);
        }
    }

    /// Every bucket so far.
    pub(crate) fn buckets(&self) -> Vec<Bucket> {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Calls answered, per backend.
    pub(crate) fn backends(&self) -> BTreeMap<String, u64> {
        self.backends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The client side of the run.
pub(crate) struct Load {
    rt: Option<Runtime>,
    pub(crate) xds: XdsClient,
    pub(crate) tally: Arc<Tally>,
    pub(crate) metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    concurrency: usize,
    stop: watch::Sender<bool>,
}

/// The settings of the load.
pub(crate) struct LoadSettings {
    pub(crate) rate: u32,
    pub(crate) concurrency: usize,
    pub(crate) events: usize,
    pub(crate) expected_id: String,
}

impl Load {
    /// Starts the xDS client and the channel on the client's runtime, makes one call (a
    /// channel that cannot call at all fails the run at once), then calls at the rate.
    pub(crate) async fn start(
        bootstrap: Bootstrap,
        identity: Arc<StaticSource>,
        target: String,
        s: LoadSettings,
    ) -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("soak-client")
            .enable_all()
            .build()?;
        let metrics = Arc::new(Metrics::new());
        let meter = metrics.provider.meter("meshwork");
        let metrics_target = target.clone();
        let expected_id: Arc<str> = s.expected_id.into();
        let id = expected_id.clone();
        let (xds, channel) = rt
            .spawn(async move {
                let xds = XdsClient::builder(&bootstrap)?
                    .meter(meter)
                    .metrics_target(metrics_target)
                    .start();
                let options = MeshChannelOptions::new().mtls(MtlsConfig::new(identity));
                let channel = MeshChannel::from_xds(&xds, &target, options).await?;
                let grpc = tonic::client::Grpc::new(channel.clone());
                match echo::call(grpc, u64::MAX, &id).await {
                    Outcome::Ok { .. } => Ok::<_, Error>((xds, channel)),
                    Outcome::Failed(status) => Err(format!("first call: {status}").into()),
                    Outcome::Wrong(why) => Err(format!("first call: {why}").into()),
                }
            })
            .await??;
        let tally = Arc::new(Tally::new(s.events));
        let permits = Arc::new(Semaphore::new(s.concurrency));
        let (stop, mut stopped) = watch::channel(false);
        let (t, p) = (tally.clone(), permits.clone());
        let interval = Duration::from_secs(1) / s.rate.max(1);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            // After a stall the rate resumes; a burst of the missed calls would be load the
            // service never asked for.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                let Ok(permit) = p.clone().try_acquire_owned() else {
                    t.shed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                seq += 1;
                let (t, id) = (t.clone(), expected_id.clone());
                let grpc = tonic::client::Grpc::new(channel.clone());
                tokio::spawn(async move {
                    let window = t.expect_failures.load(Ordering::SeqCst);
                    let out = tokio::time::timeout(CALL_TIMEOUT, echo::call(grpc, seq, &id)).await;
                    t.record(window, out);
                    drop(permit);
                });
            }
        });
        Ok(Self {
            rt: Some(rt),
            xds,
            tally,
            metrics,
            permits,
            concurrency: s.concurrency,
            stop,
        })
    }

    /// What the sampler reads of the client.
    pub(crate) fn probe(&self) -> Probe {
        Probe {
            handle: self.rt.as_ref().map(|rt| rt.handle().clone()),
            permits: self.permits.clone(),
            concurrency: self.concurrency,
        }
    }

    /// Stops calling and waits for the calls in flight (each ends within `CALL_TIMEOUT`).
    pub(crate) async fn stop_calls(&self) {
        let _ = self.stop.send(true);
        let _ = self.permits.acquire_many(self.concurrency as u32).await;
    }

    /// Stops the client's runtime.
    pub(crate) async fn shutdown(mut self) {
        if let Some(rt) = self.rt.take() {
            let _ = tokio::task::spawn_blocking(move || {
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed on the harness's own runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The client runtime's counts, for the sampler.
#[derive(Clone)]
pub(crate) struct Probe {
    handle: Option<tokio::runtime::Handle>,
    permits: Arc<Semaphore>,
    concurrency: usize,
}

impl Probe {
    /// The client runtime's live tasks, and the calls in flight (each call is one task).
    pub(crate) fn tasks(&self) -> (usize, usize) {
        let alive = self
            .handle
            .as_ref()
            .map_or(0, |h| h.metrics().num_alive_tasks());
        (alive, self.concurrency - self.permits.available_permits())
    }
}

/// The xDS client's OpenTelemetry metrics (gRFC A78), read on demand.
pub(crate) struct Metrics {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

/// One u64 data point: metric name, attributes, value.
pub(crate) type Point = (String, Vec<(String, String)>, u64);

impl Metrics {
    fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            // Read only when asked (force_flush); the interval just keeps the reader quiet.
            .with_reader(
                PeriodicReader::builder(exporter.clone())
                    .with_interval(Duration::from_secs(24 * 3600))
                    .build(),
            )
            .build();
        Self { provider, exporter }
    }

    /// Every u64 sum and gauge point now. Blocks (the SDK's reader runs on its own thread).
    pub(crate) fn points(&self) -> Result<Vec<Point>, Error> {
        self.provider.force_flush()?;
        let finished = self.exporter.get_finished_metrics()?;
        // Only the latest export is read: dropping the others keeps memory flat.
        self.exporter.reset();
        let mut points = Vec::new();
        let Some(last) = finished.last() else {
            return Ok(points);
        };
        for scope in last.scope_metrics() {
            for m in scope.metrics() {
                let mut push = |attrs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>, v| {
                    let attrs = attrs
                        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                        .collect();
                    points.push((m.name().to_owned(), attrs, v));
                };
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(s)) => {
                        for p in s.data_points() {
                            push(&mut p.attributes(), p.value());
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                        for p in g.data_points() {
                            push(&mut p.attributes(), p.value());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(points)
    }
}

/// The sum of `name`'s points whose attributes include every pair of `want`.
pub(crate) fn sum(points: &[Point], name: &str, want: &[(&str, &str)]) -> u64 {
    points
        .iter()
        .filter(|(n, attrs, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| attrs.iter().any(|(ak, av)| ak == k && av == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}
