//! A parked caller's mailbox: what its replica learns about it, from its
//! shard channel's messages or the engine itself, queued until the caller
//! looks.

use super::*;

/// What a parked caller's replica learns about it.
#[derive(Debug)]
pub(super) enum Event {
    /// Another caller offers to pair: accept it, since this one is here.
    Offer,
    /// This caller, an offerer, is paired; the waiter's payload.
    Paired(Bytes),
    /// This caller, an offerer, now waits in the place of a waiter that left.
    Promoted,
    /// This caller's group completed: its position. Its payloads are
    /// claimed through the member's record of its group.
    Grouped(usize),
    /// A retry with this caller's attempt key took its place over.
    Superseded,
    /// Its wait was withdrawn with its attempt key, and its place taken out.
    Withdrawn,
    /// Redis cannot be reached: the outcome cannot be known.
    Lost(String),
    /// The engine is closing.
    Closed,
}

/// Where a waiting caller's events wait for it: lighter than a channel,
/// which would allocate a block of slots per caller up front.
#[derive(Default)]
pub(super) struct Slot {
    events: Mutex<std::collections::VecDeque<Event>>,
    /// `notify_one` keeps a permit when nobody waits, so an event that comes
    /// between a look at the queue and the wait is not missed.
    ready: Notify,
}

impl Slot {
    pub(super) fn send(&self, event: Event) {
        self.lock().push_back(event);
        self.ready.notify_one();
    }

    pub(super) fn try_next(&self) -> Option<Event> {
        self.lock().pop_front()
    }

    pub(super) async fn next(&self) -> Event {
        loop {
            if let Some(event) = self.try_next() {
                return event;
            }
            self.ready.notified().await;
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
