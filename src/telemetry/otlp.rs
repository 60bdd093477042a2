//! The trace exporter: OTLP over gRPC, turned on by the standard
//! OpenTelemetry variables, and kept off the callers' path.
//!
//! - **On** when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and not `OTEL_SDK_DISABLED=true`
//!   or `OTEL_TRACES_EXPORTER=none`). The exporter, the sampler
//!   (`OTEL_TRACES_SAMPLER`, `_ARG`), the resource (`OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`) and the batching (`OTEL_BSP_*`) read the
//!   rest, as every OpenTelemetry SDK does.
//! - **Batched, never in the way.** A finished span goes into a bounded
//!   queue, and a thread of the SDK's exports it. A collector that is down
//!   or slow fills the queue, and then spans are dropped, never waited for;
//!   each dropped span is counted, by why, in
//!   `rendezvous_trace_spans_dropped_total`.
//! - **Flushed on shutdown**, within what is left of the shutdown grace.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{ExporterBuildError, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    resource::{EnvResourceDetector, TelemetryResourceDetector},
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter,
        SpanProcessor,
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tracing::Subscriber;
use tracing_subscriber::{Layer, filter::filter_fn, registry::LookupSpan};

/// The target of exported spans, which the exporter's layer alone takes.
pub(crate) const EXPORTED: &str = "rendezvous::exported";

/// The queue's size unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise: the
/// specification's default.
const DEFAULT_QUEUE: usize = 2048;

/// Whether the trace settings are wrong: the server does not start on them,
/// rather than run without the traces its operator asked for.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// Only OTLP/gRPC is built in.
    #[error(
        "{variable} is {value:?}; traces are exported over OTLP/gRPC only: set it to grpc, or unset it"
    )]
    Protocol {
        /// The variable that asked for another protocol.
        variable: &'static str,
        /// What it asked for.
        value: String,
    },
    /// Only OTLP (or none) is built in.
    #[error("OTEL_TRACES_EXPORTER is {0:?}; the exporters here are otlp and none")]
    Exporter(String),
    /// Not a positive number.
    #[error("OTEL_BSP_MAX_QUEUE_SIZE is {0:?}; it must be a whole number of spans, at least 1")]
    QueueSize(String),
    /// The exporter could not be built from the settings, for instance
    /// from an endpoint that is not a URL.
    #[error("cannot export traces to the OTLP endpoint: {0}")]
    Build(#[from] ExporterBuildError),
}

/// What the environment asks of the exporter, where this module decides
/// rather than the SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    /// The most spans waiting to be exported at once.
    queue: usize,
    /// Where they go, for the startup line (the SDK reads it itself).
    endpoint: String,
}

impl Settings {
    /// `None` when no trace should be exported. `var` reads one
    /// environment variable; unset and empty are the same.
    pub(super) fn from_env(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TracesError> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporter) = var("OTEL_TRACES_EXPORTER") {
            match exporter.trim().to_ascii_lowercase().as_str() {
                "otlp" => {}
                "none" => return Ok(None),
                _ => return Err(TracesError::Exporter(exporter)),
            }
        }
        let Some(endpoint) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        // The signal's own variable wins over the general one, as for the
        // endpoint.
        let protocol = [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .find_map(|variable| var(variable).map(|value| (variable, value)));
        if let Some((variable, value)) = protocol
            && value.trim() != "grpc"
        {
            return Err(TracesError::Protocol { variable, value });
        }
        let queue = match var("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => DEFAULT_QUEUE,
            Some(value) => match value.trim().parse() {
                Ok(queue) if queue > 0 => queue,
                _ => return Err(TracesError::QueueSize(value)),
            },
        };
        Ok(Some(Self { queue, endpoint }))
    }
}

/// Set once the exporter is installed; read by every call.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(super) fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The exporter's counts, for `/metrics`: process-wide, as the exporter is.
struct ExportCounts {
    exported: Counter,
    dropped: Family<DropLabel, Counter>,
    queue_full: Counter,
    export_failed: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    reason: &'static str,
}

static COUNTS: LazyLock<ExportCounts> = LazyLock::new(|| {
    let dropped = Family::<DropLabel, Counter>::default();
    let reason = |reason| dropped.get_or_create(&DropLabel { reason }).clone();
    ExportCounts {
        exported: Counter::default(),
        queue_full: reason("queue_full"),
        export_failed: reason("export_failed"),
        dropped,
    }
});

/// Registers the exporter's series in a server's registry. They are there
/// (at 0) when nothing is exported, so that a dashboard's panels and an
/// alert's query find them on every replica.
pub fn register_metrics(registry: &mut Registry) {
    registry.register(
        "trace_spans_exported",
        "Spans the OTLP collector accepted",
        COUNTS.exported.clone(),
    );
    registry.register(
        "trace_spans_dropped",
        "Spans never exported, by reason: queue_full (the collector was slower than the calls, or down), export_failed (the collector refused them, or could not be reached in time)",
        COUNTS.dropped.clone(),
    );
}

/// The exporter while it runs.
#[derive(Debug)]
pub(super) struct Traces {
    provider: SdkTracerProvider,
    /// Spans handed to the SDK's queue whose export has not ended yet.
    queued: Arc<AtomicUsize>,
    queue: usize,
    endpoint: String,
}

impl Traces {
    /// Starts the exporter, and returns the layer that turns the calls'
    /// exported spans ([`EXPORTED`]) into OpenTelemetry spans.
    pub(super) fn start<S>(settings: Settings) -> Result<(impl Layer<S>, Self), TracesError>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let Settings { queue, endpoint } = settings;
        // The endpoint, headers, timeout and compression come from the
        // environment (the SDK reads them).
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .build()?;
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = Counted {
            inner: exporter,
            queued: queued.clone(),
        };
        // The same size as our own bound, which counts more (spans being
        // batched and sent, too): so the SDK's queue never fills before
        // ours, and every drop is one we counted.
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(queue)
            .build();
        let processor = Bounded {
            inner: BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
            queued: queued.clone(),
            queue,
        };
        let provider = SdkTracerProvider::builder()
            .with_resource(resource())
            .with_span_processor(processor)
            .build();
        // Only what the OpenTelemetry layer needs: no code locations, thread
        // names or busy times on every span, and no context to activate on
        // every poll (nothing here reads it).
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("rendezvous"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            // The calls' exported spans only: never a log event, which
            // could carry an id.
            .with_filter(
                filter_fn(|metadata| metadata.is_span() && metadata.target() == EXPORTED)
                    .with_max_level_hint(tracing::Level::INFO),
            );
        EXPORTING.store(true, Ordering::Relaxed);
        Ok((
            layer,
            Self {
                provider,
                queued,
                queue,
                endpoint,
            },
        ))
    }

    /// The startup line, once logging is installed.
    pub(super) fn log_started(&self) {
        tracing::info!(
            endpoint = self.endpoint,
            queue = self.queue,
            "exporting traces over OTLP/gRPC"
        );
    }

    pub(super) async fn shutdown(self, within: Duration) {
        EXPORTING.store(false, Ordering::Relaxed);
        let Self {
            provider, queued, ..
        } = self;
        // Blocking: the SDK's thread exports while this waits, over a
        // channel that runs on the runtime, so not on one of its threads.
        let result =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within)).await;
        let lost = queued.load(Ordering::Relaxed);
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(error) => Some(error.to_string()),
        };
        if lost == 0 {
            tracing::debug!(error, "traces flushed");
        } else {
            tracing::warn!(lost, error, "spans not exported at shutdown");
        }
    }
}

/// Who the spans come from: `service.name` is `rendezvous` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names it (the SDK's
/// own default would be `unknown_service`), with this build's version.
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.is_empty());
    // Later attributes win: ours, then the SDK's own, then the operator's.
    let builder = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "rendezvous"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    match named {
        Some(name) => builder.with_service_name(name),
        None => builder,
    }
    .build()
}

/// The SDK's batch processor behind a bound of our own, so that every span
/// dropped for a full queue is counted: the SDK drops them without a count
/// it lets anyone read.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    queue: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.queue {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            COUNTS.queue_full.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what leaves the queue and how it fared.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        // Only now: a batch being sent still counts against the bound, and
        // as lost if shutdown comes first.
        self.queued.fetch_sub(spans, Ordering::Relaxed);
        let count = if result.is_ok() {
            &COUNTS.exported
        } else {
            &COUNTS.export_failed
        };
        count.inc_by(spans as u64);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, TracesError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            None
        );
        // The other settings alone turn nothing on, and are not checked.
        assert_eq!(
            settings(&[
                ("OTEL_SERVICE_NAME", "x"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            ])
            .unwrap(),
            None
        );
    }

    #[test]
    fn either_endpoint_turns_it_on() {
        let on = Some(Settings {
            queue: DEFAULT_QUEUE,
            endpoint: ENDPOINT.1.into(),
        });
        assert_eq!(settings(&[ENDPOINT]).unwrap(), on);
        // The signal's own endpoint wins.
        let traces = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317");
        assert_eq!(
            settings(&[traces]).unwrap().map(|s| s.endpoint),
            Some("http://c:4317".into())
        );
        assert_eq!(
            settings(&[ENDPOINT, traces]).unwrap().map(|s| s.endpoint),
            Some("http://c:4317".into())
        );
        assert_eq!(
            settings(&[ENDPOINT, ("OTEL_TRACES_EXPORTER", "OTLP")]).unwrap(),
            on
        );
        assert_eq!(
            settings(&[ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap(),
            on
        );
        assert_eq!(
            settings(&[ENDPOINT, ("OTEL_BSP_MAX_QUEUE_SIZE", "10")]).unwrap(),
            Some(Settings {
                queue: 10,
                endpoint: ENDPOINT.1.into()
            })
        );
    }

    #[test]
    fn the_standard_switches_turn_it_off() {
        assert_eq!(
            settings(&[ENDPOINT, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(),
            None
        );
        assert_eq!(
            settings(&[ENDPOINT, ("OTEL_SDK_DISABLED", "false")]).unwrap(),
            Some(Settings {
                queue: DEFAULT_QUEUE,
                endpoint: ENDPOINT.1.into()
            })
        );
        assert_eq!(
            settings(&[ENDPOINT, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_that_names_it() {
        let error = settings(&[ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "OTEL_EXPORTER_OTLP_PROTOCOL is \"http/protobuf\"; traces are exported over OTLP/gRPC only: set it to grpc, or unset it"
        );
        // The signal's own variable is the one that counts.
        let error = settings(&[
            ENDPOINT,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert!(
            matches!(
                error,
                TracesError::Protocol {
                    variable: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            settings(&[
                ENDPOINT,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ])
            .is_ok()
        );
        assert_eq!(
            settings(&[ENDPOINT, ("OTEL_TRACES_EXPORTER", "zipkin")])
                .unwrap_err()
                .to_string(),
            "OTEL_TRACES_EXPORTER is \"zipkin\"; the exporters here are otlp and none"
        );
        for bad in ["0", "-1", "many"] {
            assert_eq!(
                settings(&[ENDPOINT, ("OTEL_BSP_MAX_QUEUE_SIZE", bad)])
                    .unwrap_err()
                    .to_string(),
                format!(
                    "OTEL_BSP_MAX_QUEUE_SIZE is {bad:?}; it must be a whole number of spans, at least 1"
                )
            );
        }
    }
}
