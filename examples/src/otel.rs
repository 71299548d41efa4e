//! The demo's OpenTelemetry pipelines: one per simulated service, so that each service's
//! spans and metrics carry its own `service.name` (and `service.instance.id`) and a trace
//! viewer shows the hops between services, as it would for separate processes.
//!
//! An OpenTelemetry exporter sends the one resource its provider gave it with every batch,
//! so services cannot share an exporter without sharing a name: each gets its own exporter
//! to the same place (the OTLP endpoint of `OTEL_EXPORTER_OTLP_*`, or memory).

use meshwork_grpc::core::telemetry::{SCOPE, Telemetry};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// Where the pipelines send what they record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// OTLP/gRPC to the endpoint the `OTEL_EXPORTER_OTLP_*` variables name; traces and
    /// metrics.
    Otlp,
    /// Spans kept in memory (read them with [`Pipelines::spans`]); no metrics.
    Memory,
}

impl Sink {
    /// [`Otlp`](Self::Otlp) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else
    /// [`Memory`](Self::Memory).
    pub fn from_env() -> Self {
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
            Self::Otlp
        } else {
            Self::Memory
        }
    }
}

/// Why a pipeline could not be made or flushed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// An OTLP exporter could not be built (e.g. a malformed endpoint).
    #[error("building an OTLP exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The SDK failed to flush or shut a provider down.
    #[error("flushing the {service} pipeline")]
    Sdk {
        /// The service whose pipeline failed.
        service: String,
        /// What the SDK said.
        #[source]
        source: OTelSdkError,
    },
}

/// One service's providers.
#[derive(Debug)]
struct Pipeline {
    service: String,
    instance: String,
    traces: SdkTracerProvider,
    metrics: Option<SdkMeterProvider>,
    spans: Option<InMemorySpanExporter>,
}

/// A finished span and the service that recorded it.
#[derive(Debug, Clone)]
pub struct ServiceSpan {
    /// The `service.name` of the pipeline that recorded the span.
    pub service: String,
    /// The `service.instance.id` of that pipeline.
    pub instance: String,
    /// The span.
    pub span: SpanData,
}

/// The pipelines of every simulated service, all exporting to one [`Sink`].
#[derive(Debug)]
pub struct Pipelines {
    sink: Sink,
    pipelines: Vec<Pipeline>,
}

impl Pipelines {
    /// No pipelines yet; each [`service`](Self::service) adds one.
    pub fn new(sink: Sink) -> Self {
        Self {
            sink,
            pipelines: Vec::new(),
        }
    }

    /// Where the pipelines export.
    pub fn sink(&self) -> Sink {
        self.sink
    }

    /// A new pipeline for one instance of `service` (the resource's `service.name` and
    /// `service.instance.id`), and the meshwork [`Telemetry`] that records through it, for a
    /// `MeshServer` or a channel's options.
    pub fn service(&mut self, service: &str, instance: &str) -> Result<Telemetry, OtelError> {
        let resource = Resource::builder()
            .with_service_name(service.to_owned())
            .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
            .build();
        let traces = SdkTracerProvider::builder().with_resource(resource.clone());
        let (traces, metrics, spans) = match self.sink {
            Sink::Otlp => {
                // The exporters read the endpoint (and headers) from the environment.
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build()?;
                let metrics = opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .build()?;
                let metrics = SdkMeterProvider::builder()
                    .with_resource(resource)
                    .with_reader(PeriodicReader::builder(metrics).build())
                    .build();
                (
                    traces.with_batch_exporter(exporter).build(),
                    Some(metrics),
                    None,
                )
            }
            Sink::Memory => {
                let spans = InMemorySpanExporter::default();
                (
                    traces.with_simple_exporter(spans.clone()).build(),
                    None,
                    Some(spans),
                )
            }
        };
        let scope = InstrumentationScope::builder(SCOPE)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = traces.tracer_with_scope(scope.clone());
        let telemetry = match &metrics {
            Some(metrics) => Telemetry::new(tracer, &metrics.meter_with_scope(scope)),
            None => Telemetry::new(
                tracer,
                &opentelemetry::metrics::NoopMeterProvider::new().meter_with_scope(scope),
            ),
        };
        self.pipelines.push(Pipeline {
            service: service.to_owned(),
            instance: instance.to_owned(),
            traces,
            metrics,
            spans,
        });
        Ok(telemetry)
    }

    /// Every span the in-memory pipelines have finished, oldest first (none for
    /// [`Sink::Otlp`]).
    pub fn spans(&self) -> Result<Vec<ServiceSpan>, OtelError> {
        let mut all = Vec::new();
        for p in &self.pipelines {
            let Some(exporter) = &p.spans else { continue };
            p.traces.force_flush().map_err(|source| p.error(source))?;
            let spans = exporter.get_finished_spans().map_err(|e| p.error(e))?;
            all.extend(spans.into_iter().map(|span| ServiceSpan {
                service: p.service.clone(),
                instance: p.instance.clone(),
                span,
            }));
        }
        all.sort_by_key(|s| s.span.start_time);
        Ok(all)
    }

    /// Flushes and stops every pipeline. It blocks on the exporters (call it off an async
    /// runtime's threads, e.g. in `spawn_blocking`); every pipeline is shut down even when
    /// one fails, and the first failure is returned.
    pub fn shutdown(self) -> Result<(), OtelError> {
        let mut first = None;
        for p in &self.pipelines {
            let traces = p.traces.shutdown();
            let metrics = p
                .metrics
                .as_ref()
                .map_or(Ok(()), SdkMeterProvider::shutdown);
            if let Err(e) = traces.and(metrics)
                && first.is_none()
            {
                first = Some(p.error(e));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Pipeline {
    fn error(&self, source: OTelSdkError) -> OtelError {
        OtelError::Sdk {
            service: self.service.clone(),
            source,
        }
    }
}
