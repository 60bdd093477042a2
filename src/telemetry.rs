//! Logs and traces, set up once per process and kept out of `main`.
//!
//! - Logs go to stderr, filtered by `RUST_LOG`, as text or JSON.
//! - Traces are exported over OTLP/gRPC when the standard OpenTelemetry
//!   variables ask for it (`telemetry/otlp.rs`): each call is one server span
//!   (the service's, `service/span.rs`), linked to its partners' spans. With none of them set,
//!   nothing is exported and no span is built for it.

use std::{io::IsTerminal, time::Duration};

use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

mod otlp;

pub(crate) use otlp::EXPORTED;

/// The target of each call's log span and its lines (`arrived`,
/// `finished`): what `RUST_LOG=rendezvous::service=debug` turns on, and
/// what decides whether a caller's `traceparent` is read for them.
pub(crate) const CALLS: &str = "rendezvous::service";
pub use otlp::{TracesError, register_metrics};

/// What [`init`] set up, to be shut down when the server stops.
#[derive(Debug)]
#[must_use = "spans still queued are lost unless shut down"]
pub struct Telemetry {
    traces: Option<otlp::Traces>,
}

impl Telemetry {
    /// Exports the spans still queued, waiting at most `within` (what is
    /// left of the shutdown grace), and stops the exporter. Spans it could
    /// not send by then are logged as lost, with their number.
    pub async fn shutdown(self, within: Duration) {
        if let Some(traces) = self.traces {
            traces.shutdown(within).await;
        }
    }
}

/// Installs the global subscriber, and the trace exporter if the
/// environment asks for one. `RUST_LOG` filters the logs (default `info`,
/// with the Redis client's own messages from `error` up: its warnings,
/// about each node it cannot reach while a cluster starts or fails over,
/// repeat what the Redis engine says in its own words, once); the format
/// is text for people or JSON for log pipelines.
///
/// Calls are not logged one by one at `info`: each gets a `debug` span with
/// its protocol, outcome, role and time waited, and `debug` events for its
/// arrival and end. That keeps the hot path cheap at the default level.
/// Exported spans are filtered apart from the logs: `RUST_LOG` neither
/// turns them on nor off.
///
/// Colours only on a terminal: a log redirected to a file or a pipe must not
/// be full of escape codes.
///
/// Needs a Tokio runtime when it exports (its gRPC channel runs on it).
/// On an error in the trace settings, logging is installed all the same,
/// so that the error can be logged.
pub fn init(format: LogFormat) -> Result<Telemetry, TracesError> {
    const DEFAULT_FILTER: &str = "info,redis=error";
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let traces = otlp::Settings::from_env(|name| std::env::var(name).ok())
        .and_then(|settings| settings.map(otlp::Traces::start).transpose());
    let (layer, traces) = match traces {
        Ok(Some((layer, traces))) => (Some(layer), Ok(Some(traces))),
        Ok(None) => (None, Ok(None)),
        Err(error) => (None, Err(error)),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(layer)
        .init();
    let traces = traces?;
    if let Some(traces) = &traces {
        traces.log_started();
    }
    Ok(Telemetry { traces })
}

/// Whether calls' spans are exported: read on every call, so that a
/// process that exports nothing builds no span for it.
pub fn exporting() -> bool {
    otlp::exporting()
}
