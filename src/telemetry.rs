//! Logging setup, kept out of `main` so tests and tools can share it.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`, with
/// the Redis client's own messages from `error` up: its warnings, about each
/// node it cannot reach while a cluster starts or fails over, repeat what
/// the Redis engine says in its own words, once); the format is text for
/// people or JSON for log pipelines.
///
/// Calls are not logged one by one at `info`: each gets a `debug` span with
/// its protocol, outcome, role and time waited, and `debug` events for its
/// arrival and end. That keeps the hot path cheap at the default level.
///
/// Colours only on a terminal: a log redirected to a file or a pipe must not
/// be full of escape codes.
pub fn init(format: LogFormat) {
    const DEFAULT_FILTER: &str = "info,redis=error";
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
