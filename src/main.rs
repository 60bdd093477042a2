//! The `rendezvous` binary: the server (`serve`, the default) with logging
//! and a run until a signal, and the `wait` and `probe` clients.

use std::process::ExitCode;

use clap::Parser;
use rendezvous::{
    Application, Config,
    cli::{self, Cli, Command},
    telemetry,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::Instant,
};

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::with_default_subcommand(std::env::args_os().collect());
    match Cli::parse_from(args).command {
        Command::Serve(config) => serve(*config).await,
        Command::Wait(args) => cli::wait(args).await.into(),
        Command::Probe(args) => cli::probe(args).await.into(),
    }
}

async fn serve(config: Config) -> ExitCode {
    let telemetry = match telemetry::init(config.log_format) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let grace = config.shutdown_grace;

    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let reloader = app.reloader();
    tokio::spawn(async move {
        let mut hangup = signal(SignalKind::hangup()).expect("can install a SIGHUP handler");
        while hangup.recv().await.is_some() {
            reloader.reload();
        }
    });
    // The grace bounds the whole shutdown: what the server leaves of it
    // goes to exporting the spans still queued.
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stopping.send(Instant::now() + grace);
    };
    let result = app.run_until_stopped(shutdown).await;
    let flush_by = stopped.await.unwrap_or_else(|_| Instant::now());
    telemetry
        .shutdown(flush_by.saturating_duration_since(Instant::now()))
        .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGINT or SIGTERM. A second one exits at once, for
/// an operator who does not want to wait out the grace period.
async fn shutdown_signal() {
    let mut interrupt = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(
        signal = name,
        "shutdown requested; a second signal exits at once"
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
}
