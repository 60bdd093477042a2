//! Health as probes see it: gRPC health (tonic-health) on the gRPC port, and
//! `/healthz` and `/readyz` on the HTTP port. One switch flips them together.

use std::sync::atomic::{AtomicBool, Ordering};

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
        };
        (health, server)
    }

    /// The first step of shutdown: every probe now says "not serving", so a
    /// mesh stops sending new callers here.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        for name in ["", SYNC_SERVICE_NAME] {
            self.reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    }

    /// `false` from the moment shutdown begins; `/readyz` answers 503 then.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
    }
}
