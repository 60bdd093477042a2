//! Health as probes see it: gRPC health (tonic-health) on the gRPC port, and
//! `/healthz` and `/readyz` on the HTTP port, switched together.
//!
//! Liveness (`""`, `/healthz`) says the process works, and stays up until
//! shutdown. Readiness (`rendezvous.v1.Sync`, `/readyz`) says it can take
//! callers: it goes down while the engine's meeting place is unreachable,
//! so an orchestrator stops sending callers here without restarting a
//! replica that only waits for it to come back.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Mutex;
use tonic_health::{
    ServingStatus,
    pb::health_server::{Health as HealthRpc, HealthServer},
    server::HealthReporter,
};

use crate::proto::sync_server::SERVICE_NAME as SYNC_SERVICE_NAME;

/// Whether the server takes new work. Shared by both listeners.
#[derive(Debug)]
pub struct Health {
    reporter: HealthReporter,
    draining: AtomicBool,
    /// `None` while the meeting place is reachable; the engine's words for
    /// why not otherwise.
    unreachable: std::sync::Mutex<Option<&'static str>>,
    /// Serialises changes, so that the gRPC statuses end up matching the
    /// flags whatever order two changes race in.
    changing: Mutex<()>,
}

/// Why the server is not ready, as `/readyz` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Shutdown has begun.
    ShuttingDown,
    /// The meeting place cannot be reached: the engine's words for it.
    Unreachable(&'static str),
}

impl NotReady {
    /// The `/readyz` body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShuttingDown => "shutting down",
            Self::Unreachable(reason) => reason,
        }
    }
}

impl Health {
    /// Reports `SERVING` for the whole server (`""`) and for
    /// `rendezvous.v1.Sync`, and returns the gRPC health service to mount.
    pub async fn serving() -> (Self, HealthServer<impl HealthRpc>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        for name in ["", SYNC_SERVICE_NAME] {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let health = Self {
            reporter,
            draining: AtomicBool::new(false),
            unreachable: std::sync::Mutex::new(None),
            changing: Mutex::new(()),
        };
        (health, server)
    }

    /// The first step of shutdown: every probe now says "not serving", so a
    /// mesh stops sending new callers here.
    pub async fn drain(&self) {
        let _changing = self.changing.lock().await;
        self.draining.store(true, Ordering::Release);
        for name in ["", SYNC_SERVICE_NAME] {
            self.reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    }

    /// Follows the meeting place: readiness goes down while it cannot be
    /// reached (`Err`, with the engine's words for it), and liveness does not
    /// change.
    pub async fn set_reachable(&self, reachable: Result<(), &'static str>) {
        let _changing = self.changing.lock().await;
        *self.lock_unreachable() = reachable.err();
        let reachable = reachable.is_ok();
        if self.draining.load(Ordering::Acquire) {
            return;
        }
        let status = match reachable {
            true => ServingStatus::Serving,
            false => ServingStatus::NotServing,
        };
        self.reporter
            .set_service_status(SYNC_SERVICE_NAME, status)
            .await;
    }

    /// `Ok` while the server takes callers; `/readyz` answers 503 otherwise.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Acquire) {
            return Err(NotReady::ShuttingDown);
        }
        match *self.lock_unreachable() {
            Some(reason) => Err(NotReady::Unreachable(reason)),
            None => Ok(()),
        }
    }

    fn lock_unreachable(&self) -> std::sync::MutexGuard<'_, Option<&'static str>> {
        self.unreachable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
