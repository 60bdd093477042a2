//! What happens to the engine's callers as a whole: Redis lost, the engine
//! closed, and the cleanup of a caller that left.

use super::*;

impl Inner {
    /// Redis is unreachable: readiness goes down, and every caller waiting
    /// here is answered, since nothing it would be told can reach it now.
    /// Only the change does this: callers that arrive while Redis is away
    /// are refused as they arrive.
    pub(super) fn lost(&self, reason: String) {
        if !self.reachable.send_replace(false) {
            return;
        }
        tracing::warn!(%reason, "Redis is unreachable; answering waiting callers UNAVAILABLE");
        self.metrics.reachable.set(0);
        for slot in self.lock_slots().values() {
            slot.send(Event::Lost(reason.clone()));
        }
    }

    pub(super) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in self.lock_slots().values() {
            slot.send(Event::Closed);
        }
        loop {
            let released = self.released.notified();
            if self.lock_slots().is_empty() && self.cleanups.load(Ordering::Acquire) == 0 {
                return;
            }
            released.await;
        }
    }

    /// Removes a caller that left from Redis. If Redis cannot be reached, it
    /// tries again once Redis is back (not on a timer, so that an outage does
    /// not turn into a storm of retries), until the entries would have
    /// expired anyway.
    pub(super) async fn clean_up(self: Arc<Self>, key: String, token: String, deadline: Instant) {
        let give_up = deadline + Duration::from_secs(1);
        let mut reachable = self.reachable.subscribe();
        while self.leave_in_turn(&key, &token).await.is_err() {
            // Wait for Redis to be found lost (if this failure did not say
            // so already) and back, or for the entries to expire.
            let back = async {
                let _ = timeout(self.timeout * 2, reachable.wait_for(|up| !up)).await;
                let _ = reachable.wait_for(|up| *up).await;
            };
            if timeout_at(give_up, back).await.is_err() {
                break;
            }
        }
        self.cleanups.fetch_sub(1, Ordering::AcqRel);
        self.released.notify_waiters();
    }

    pub(super) async fn leave_in_turn(&self, key: &str, token: &str) -> Result<Verdict, PairError> {
        let _turn = self.turn().await?;
        self.leave(key, token, false).await
    }

    pub(super) fn spawn_cleanup(self: &Arc<Self>, key: String, token: String, deadline: Instant) {
        self.cleanups.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(self.clone().clean_up(key, token, deadline));
    }
}
