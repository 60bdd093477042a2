//! rendezvous: two processes that must meet call
//! `rendezvous.v1.Sync/WaitForSecondParty` (or the legacy
//! `POST /wait-for-second-party/{id}`) with the same id. The first waits;
//! when the second arrives both return at once, each with the other's payload.
//! `WaitForParties` (`POST /wait-for-parties/{id}?parties=N`) does the same
//! for a group of any size: the engine forms groups, and a pair is its group
//! of two.
//!
//! # Layout
//!
//! Read it from the inside out:
//!
//! - [`pairing`]: the engines, behind one seam, [`pairing::Engine`]: ids,
//!   groups forming and completing (a pair is a group of two), cleanup on
//!   drop, and no transport types. The local
//!   engine (one process is the meeting place) and the Redis engine
//!   (replicas meet in Redis); [`pairing::AnyEngine`] is whichever one the
//!   configuration chose, and the only one the rest of the crate names.
//!   Attempt keys ([`pairing::Attempts`]) make a retry safe over either, and
//!   let a caller that gives up withdraw its wait.
//! - [`service`]: the one call both protocols map onto (and withdrawals):
//!   validation, the wait limits, the per-call spans, and the typed
//!   [`service::CallError`]; and [`service::Operation`], every RPC with its
//!   names on both ports, which both route by.
//! - [`grpc`]: the gRPC port. `rendezvous.v1.Sync` by a lean handler of its
//!   own (the caller's `grpc-timeout`, and errors to `tonic::Status`); health
//!   and reflection by tonic; gRPC-Web (browsers) through tonic-web and CORS,
//!   back into the same handler.
//! - [`gateway`]: the HTTP routes, and `CallError` to HTTP responses.
//! - [`health`]: gRPC health and `/healthz`, `/readyz`, switched together;
//!   readiness also follows whether the engine reaches its meeting place.
//! - [`metrics`]: the Prometheus series, and [`metrics::Protocol`], the label
//!   that says which transport a call came in on.
//! - [`auth`] and [`tls`]: bearer tokens with namespaces, and TLS/mTLS; both
//!   reloaded on SIGHUP through [`Reloader`].
//! - [`server`]: listeners, connections, reflection, and ordered shutdown.
//! - [`config`] and [`telemetry`]: flags (and their environment variables;
//!   their value parsers in a leaf, `config/values.rs`), and the process's
//!   logs and trace exporter; [`trace`]: a caller's W3C `traceparent`, whose trace id
//!   goes on its span and, through the engine, into its partner's log.
//! - [`client`]: the Rust client, which the CLI, the load tool and the tests
//!   share; [`proto`]: the generated types, and the wire's limits that the
//!   server's decoders and the client's are both sized by; [`cli`]: the
//!   subcommands, `serve` and the `wait` and `probe` clients for shells, CI
//!   jobs and exec probes.
//! - `json` (private): proto3's JSON forms, for the gateway and `wait
//!   --json`; `hex` (private): lowercase hex of 16-byte values, for trace ids
//!   and the id hashes in Redis keys; `human` (private): durations as people
//!   read them, in errors and the CLI.
//!
//! # What a parked caller costs
//!
//! A parked caller is its request's future, so the futures on a call's path
//! are kept small, by two rules that the code points back here for:
//! - a function that returns an `async` block, not an `async fn`, wherever
//!   the future lives as long as the wait: an `async fn` keeps a second copy
//!   of its arguments beside its locals for as long as it is pending
//!   (rust-lang/rust#62958);
//! - a future returned as it is, not awaited inside another `async` block,
//!   which would store it twice.
//!
//! Tests guard the sizes: a call's future in `service.rs`, a pair's request
//! on each port in `grpc.rs` and `gateway.rs`. BENCHMARKS.md has the bytes
//! per parked caller.
//!
//! # Features
//!
//! `server`, on by default, is everything but the client. Without it
//! (`default-features = false`) the crate is [`client`], [`proto`],
//! [`trace`] and the values of [`pairing`] (ids, meetings, roles) alone: what
//! a Rust service needs to call the server, with no Redis, no hyper server,
//! no Prometheus and no OpenTelemetry in its build.
//!
//! - `fuzzing` (hidden, feature `fuzzing`): the fuzz targets' bodies, shared by `fuzz/` and
//!   the corpus replay in `tests/integration/fuzz_corpus.rs`.
//!
//! The binary (`src/main.rs`) only picks the subcommand; `serve` sets up
//! logging and runs [`Application`] until SIGINT or SIGTERM. [`Application`] is where the
//! engine is chosen, once, from the configuration. Tests start the same
//! [`Application`] on port 0 with their own shutdown future.

#![warn(missing_docs)]

/// Items that only the server has: each gets `#[cfg(feature = "server")]`.
macro_rules! server {
    ($($item:item)*) => {
        $(#[cfg(feature = "server")] $item)*
    };
}

// The client, and what it shares with the server: in every build.
pub mod client;
mod hex;
mod human;
pub mod pairing;
pub mod proto;
pub mod trace;

// The server and the binary's command line: feature `server`, on by default.
server! {
    pub mod auth;
    pub mod cli;
    pub mod config;
    pub mod gateway;
    pub mod grpc;
    pub mod health;
    mod json;
    pub mod metrics;
    pub mod server;
    pub mod service;
    pub mod telemetry;
    pub mod tls;

    pub use config::Config;
    pub use server::{Application, Reloader, ServerError};
}
#[cfg(all(feature = "server", feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
