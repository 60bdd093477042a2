//! The drop guard: a caller's claim on its entries in Redis, which removes
//! them in a task of its own when the caller goes away before it is cleared.

use std::sync::{Arc, atomic::Ordering};

use tokio::time::Instant;

use super::{Inner, slots::Digest};

/// A caller's claim on its entries: dropped before it is cleared (the caller left, or
/// its outcome is unknown), it removes them from Redis in a task.
pub(super) struct Guard {
    pub(super) inner: Arc<Inner>,
    /// The id's hash: its key is built from it when needed.
    pub(super) digest: Digest,
    pub(super) ticket: u64,
    pub(super) deadline: Instant,
    /// How many callers make up its group.
    pub(super) parties: u32,
    /// A pair's caller with an attempt key: shutting down, its place is
    /// detached for its retry, not taken out.
    pub(super) keyed: bool,
    /// Holds a place against the cap.
    pub(super) place: bool,
    /// Counted as parked.
    pub(super) parked: bool,
    /// The outcome is known, and nothing of this caller is left in Redis.
    pub(super) cleared: bool,
}

impl Guard {
    pub(super) fn key(&self) -> String {
        self.inner.key(&self.digest)
    }

    pub(super) fn token(&self) -> String {
        self.inner.token(self.ticket)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The cleanup is counted before the slot goes, so that `close`
        // never sees neither (and returns before the entry is gone).
        if !self.cleared {
            self.inner
                .spawn_cleanup(self.key(), self.token(), self.deadline);
        }
        self.inner.lock_slots().remove(&self.ticket);
        if self.place {
            self.inner.places.give_back();
        }
        if self.parked {
            self.inner.parked.fetch_sub(1, Ordering::Relaxed);
        }
        self.inner.released.notify_waiters();
    }
}
