//! One shard of [`LocalEngine`](super::LocalEngine): the part of the engine
//! where callers race, and so the part that is model-checked.
//!
//! Everything here takes its locks, atomics and channels from `super::sync`.
//! The engine compiles this file against the standard library and tokio; the
//! loom model (`model.rs`, tests only) compiles the same file a second time
//! against loom's versions, and explores every interleaving of the callers.
//! Keep anything that loom cannot run (timers, the runtime) out of this file:
//! the deadline comes in as a future.

use std::{
    pin::Pin,
    sync::PoisonError,
    task::{Context, Poll, ready},
};

use hashbrown::HashTable;
use pin_project_lite::pin_project;

use super::{
    Id, Offer,
    sync::{AtomicUsize, Mutex, MutexGuard, Ordering, oneshot},
};
/// Places for parked callers, against the cap.
///
/// One counter for the whole engine would put a cache line that every core
/// writes on every park (it cut the engine's two-core scaling from 1.55 to
/// 1.23). So a shard that frees a place may keep it as a spare for its next
/// parked caller instead of handing it back. With large caps a shard keeps at
/// most one spare, so the cap holds to within one place per shard (0.4% at the
/// smallest cap that allows spares); below that, every place goes through the
/// counter and the cap is exact.
pub(super) struct Occupancy {
    /// Places taken: parked callers plus the shards' spares.
    taken: CachePadded<AtomicUsize>,
    /// The cap on waiting callers.
    pub(super) capacity: usize,
    /// How many spares one shard may keep.
    spares_per_shard: usize,
}

/// Keeps a hot atomic on cache lines of its own.
#[repr(align(128))]
struct CachePadded<T>(T);

impl Occupancy {
    /// Room for `capacity` parked callers. Shards keep spares only when the
    /// cap is large enough for the slack to be negligible.
    pub(super) fn new(capacity: usize, shards: usize) -> Self {
        Self {
            taken: CachePadded(AtomicUsize::new(0)),
            capacity,
            spares_per_shard: usize::from(capacity >= shards * 256),
        }
    }

    /// Places taken, the shards' spares included.
    #[cfg(test)]
    pub(super) fn taken(&self) -> usize {
        self.taken.0.load(Ordering::Relaxed)
    }

    /// Takes a place for one more parked caller in `state`'s shard: its
    /// spare if it has one, or a new one if the cap allows.
    fn admit(&self, state: &mut ShardState) -> bool {
        if state.spares > 0 {
            state.spares -= 1;
            return true;
        }
        // Relaxed: the count orders nothing else; the shard lock does that.
        if self.taken.0.fetch_add(1, Ordering::Relaxed) < self.capacity {
            return true;
        }
        self.taken.0.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Frees the place of a caller that left `state`'s shard.
    fn release(&self, state: &mut ShardState) {
        if state.spares < self.spares_per_shard {
            state.spares += 1;
        } else {
            self.taken.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Aligned to its own cache lines (128 bytes covers the adjacent-line
/// prefetcher), so that two cores working on neighbouring shards do not
/// slow each other down through false sharing.
#[repr(align(128))]
pub(super) struct Shard {
    state: Mutex<ShardState>,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            state: Mutex::new(ShardState::default()),
        }
    }
}

#[derive(Default)]
struct ShardState {
    table: HashTable<Box<Parked>>,
    next_ticket: u64,
    closed: bool,
    /// Places this shard holds for its next parked callers (see [`Occupancy`]).
    spares: usize,
}

/// A caller waiting in the map.
struct Parked {
    id: Id,
    hash: u64,
    /// Unique within the shard: cleanup removes by ticket, never by id.
    ticket: u64,
    /// Goes to the partner.
    offer: Offer,
    /// Brings the partner's offer back to the waiting caller.
    tx: oneshot::Sender<Offer>,
}

/// What a caller finds when it arrives.
pub(super) enum Arrival<'a> {
    Paired(Offer),
    Parked(Parking<'a>),
    Closed,
    Full,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, ShardState> {
        // No code panics while holding the lock, and the state stays
        // consistent at every step, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes the pair if someone waits for `id`, or parks the caller.
    pub(super) fn arrive<'a>(
        &'a self,
        id: Id,
        hash: u64,
        mut offer: Offer,
        occupancy: &'a Occupancy,
    ) -> Arrival<'a> {
        let mut state = self.lock();
        if state.closed {
            return Arrival::Closed;
        }
        if let Ok(entry) = state.table.find_entry(hash, |p| p.id == id) {
            let (waiter, _) = entry.remove();
            occupancy.release(&mut state);
            // Sent under the lock: a waiter that finds its entry gone can rely
            // on the offer already being in its channel.
            match waiter.tx.send(offer) {
                Ok(()) => return Arrival::Paired(waiter.offer),
                // Its caller went away and its cleanup has not run yet. Never
                // pair with it: park in its place instead.
                Err(returned) => offer = returned,
            }
        }
        if !occupancy.admit(&mut state) {
            return Arrival::Full;
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let (tx, rx) = oneshot::channel();
        let parked = Parked {
            id,
            hash,
            ticket,
            offer,
            tx,
        };
        state
            .table
            .insert_unique(hash, Box::new(parked), |p| p.hash);
        Arrival::Parked(Parking {
            shard: self,
            occupancy,
            hash,
            ticket,
            settled: false,
            rx,
        })
    }

    /// Refuses every later caller, and answers every parked one: dropping
    /// their senders wakes each with an error, which it reports as closed.
    pub(super) fn close(&self, occupancy: &Occupancy) {
        let mut state = self.lock();
        state.closed = true;
        // Give their places back too (the loom model caught this missing):
        // nothing may be left behind, not even in a count.
        let parked = state.table.len();
        state.table.clear();
        for _ in 0..parked {
            occupancy.release(&mut state);
        }
    }

    /// How many callers are parked in this shard.
    pub(super) fn waiting(&self) -> usize {
        self.lock().table.len()
    }

    /// Places this shard keeps for its next parked callers.
    #[cfg(test)]
    pub(super) fn spares(&self) -> usize {
        self.lock().spares
    }
}

/// A parked caller's claim on its entry. Dropping it unsettled (the caller
/// went away) removes the entry, so nobody can pair with a caller that left.
pub(super) struct Parking<'a> {
    shard: &'a Shard,
    occupancy: &'a Occupancy,
    hash: u64,
    ticket: u64,
    /// Set once the outcome is known and the entry is already gone.
    settled: bool,
    // Declared last so it drops after `Drop::drop` has removed the entry.
    rx: oneshot::Receiver<Offer>,
}

/// How a parked caller's wait ended.
pub(super) enum Outcome {
    /// A partner came, and sent this offer.
    Paired(Offer),
    /// The deadline came first; the entry is gone, so nobody can pair with it.
    TimedOut,
    /// The shard was closed (the server is shutting down).
    Closed,
}

impl<'a> Parking<'a> {
    /// Waits for a partner, or until `deadline` completes.
    ///
    /// Whichever of the two takes the entry out of the map decides: a partner
    /// that got there first has already put its payload in the channel, so a
    /// late deadline still reports the pair.
    pub(super) fn outcome<D: Future<Output = ()>>(self, deadline: D) -> Waiting<'a, D> {
        Waiting {
            parking: self,
            deadline,
        }
    }

    /// Removes this caller's entry if it is still there. `false` means a
    /// partner (or `close`) already took it, so the outcome is in `rx`.
    fn withdraw(&mut self) -> bool {
        self.settled = true;
        let mut state = self.shard.lock();
        match state
            .table
            .find_entry(self.hash, |p| p.ticket == self.ticket)
        {
            Ok(entry) => {
                entry.remove();
                self.occupancy.release(&mut state);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Parking<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.withdraw();
        }
    }
}

pin_project! {
    /// A parked caller waiting for its partner or its deadline.
    ///
    /// A hand-written future rather than an async fn: an async fn keeps its
    /// arguments apart from its locals (rust-lang/rust#62958), and every byte
    /// here is paid once per parked caller.
    pub(super) struct Waiting<'a, D> {
        parking: Parking<'a>,
        #[pin]
        deadline: D,
    }
}

impl<D: Future<Output = ()>> Future for Waiting<'_, D> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.project();
        let parking = this.parking;
        // The channel first: once a partner's payload is in it, the pair
        // stands even if the deadline has passed as well.
        let delivered = match Pin::new(&mut parking.rx).poll(cx) {
            Poll::Ready(delivered) => delivered.ok(),
            Poll::Pending => {
                ready!(this.deadline.poll(cx));
                if parking.withdraw() {
                    return Poll::Ready(Outcome::TimedOut);
                }
                // Too late to withdraw: the partner removed the entry first,
                // and handed its payload over before releasing the lock.
                parking.rx.try_recv().ok()
            }
        };
        parking.settled = true;
        Poll::Ready(match delivered {
            Some(peer) => Outcome::Paired(peer),
            // The sender was dropped without a payload: only `close` does that.
            None => Outcome::Closed,
        })
    }
}
