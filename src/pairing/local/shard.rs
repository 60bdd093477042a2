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
    sync::{Arc, PoisonError},
    task::{Context, Poll, ready},
};

use hashbrown::HashTable;
use pin_project_lite::pin_project;

use smallvec::SmallVec;

use super::{
    Id, Offer, Offers,
    occupancy::Occupancy,
    sync::{Mutex, MutexGuard, oneshot},
};
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
    table: HashTable<Box<Forming>>,
    closed: bool,
    /// Kept apart from the table, so that both can be borrowed at once.
    counts: ShardCounts,
}

#[derive(Default)]
struct ShardCounts {
    next_ticket: u64,
    /// Callers parked in this shard, over all its groups.
    parked: usize,
    /// Places this shard holds for its next parked callers (see [`Occupancy`]).
    spares: usize,
}

/// A group forming under one id: the callers waiting for it to fill up.
struct Forming {
    id: Id,
    hash: u64,
    /// How many callers complete it.
    parties: u32,
    /// In arrival order. The first is kept inline, so that a pair's waiter
    /// costs no allocation beyond its entry.
    members: SmallVec<[Member; 1]>,
}

/// A caller parked in a forming group.
struct Member {
    /// Unique within the shard: cleanup removes by ticket, never by id.
    ticket: u64,
    /// Goes to the other members.
    offer: Offer,
    /// Brings this caller's position and the others' offers back to it.
    tx: oneshot::Sender<Completion>,
}

/// What a member is handed when its group completes, whether it completed
/// the group or waited in it.
pub(super) struct Completion {
    /// Its place in the group's arrival order, from 0.
    pub(super) position: usize,
    /// The others' offers.
    pub(super) offers: Offers,
}

/// What an arriving caller asks for.
#[derive(Clone, Copy)]
pub(super) struct Terms {
    /// How many callers make up its group.
    pub(super) parties: u32,
    /// The most bytes of payloads the group may hold
    /// ([`EngineLimits::meeting_bytes`](super::EngineLimits::meeting_bytes) in the
    /// engine): `usize::MAX` for none.
    pub(super) max_bytes: usize,
}

/// What a caller finds when it arrives.
pub(super) enum Joined<'a> {
    /// It was the last member.
    Completed(Completion),
    Parked(Parking<'a>),
    Closed,
    Full,
    /// A group of another size is forming under the id.
    Mismatch {
        forming: u32,
    },
    /// Its payload would take the group over its limit.
    TooLarge {
        held: usize,
        payload: usize,
    },
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, ShardState> {
        // No code panics while holding the lock, and the state stays
        // consistent at every step, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the group forming under `id`, completing it if this caller is
    /// the last one, or starts a new group.
    pub(super) fn arrive<'a>(
        &'a self,
        id: Id,
        hash: u64,
        group: Terms,
        offer: Offer,
        occupancy: &'a Occupancy,
    ) -> Joined<'a> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.closed {
            return Joined::Closed;
        }
        let payload = offer.payload.len();
        let max_bytes = group.max_bytes;
        let Ok(mut entry) = state.table.find_entry(hash, |f| f.id == id) else {
            if payload > max_bytes {
                return Joined::TooLarge { held: 0, payload };
            }
            let Some((member, parking)) = self.park(&mut state.counts, hash, offer, occupancy)
            else {
                return Joined::Full;
            };
            let forming = Forming {
                id,
                hash,
                parties: group.parties,
                members: SmallVec::from_buf([member]),
            };
            state
                .table
                .insert_unique(hash, Box::new(forming), |f| f.hash);
            return Joined::Parked(parking);
        };
        let forming: &mut Forming = entry.get_mut();
        if forming.parties != group.parties {
            return Joined::Mismatch {
                forming: forming.parties,
            };
        }
        // Summed when needed rather than kept: a pair, the common case,
        // never needs it, and every byte of its entry is paid while it waits.
        if max_bytes != usize::MAX {
            let held = forming.members.iter().map(|m| m.offer.payload.len()).sum();
            if payload.saturating_add(held) > max_bytes {
                return Joined::TooLarge { held, payload };
            }
        }
        // A member whose caller went away withdraws itself under this lock
        // before its channel closes, so none should be found here. Never
        // count one all the same: the group then waits for another caller.
        let counts = &mut state.counts;
        forming.members.retain(|member| {
            let gone = member.tx.is_closed();
            if gone {
                occupancy.release(&mut counts.spares);
                counts.parked -= 1;
            }
            !gone
        });
        if forming.members.len() + 1 < forming.parties as usize {
            let Some((member, parking)) = self.park(counts, hash, offer, occupancy) else {
                return Joined::Full;
            };
            forming.members.push(member);
            return Joined::Parked(parking);
        }
        let (forming, _) = entry.remove();
        let members = forming.members;
        for _ in 0..members.len() {
            occupancy.release(&mut counts.spares);
        }
        counts.parked -= members.len();
        Joined::Completed(Completion {
            position: members.len(),
            offers: complete(members, offer),
        })
    }

    /// A new member's entry, and its claim on it, if the cap has a place.
    fn park<'a>(
        &'a self,
        counts: &mut ShardCounts,
        hash: u64,
        offer: Offer,
        occupancy: &'a Occupancy,
    ) -> Option<(Member, Parking<'a>)> {
        if !occupancy.admit(&mut counts.spares) {
            return None;
        }
        counts.parked += 1;
        let ticket = counts.next_ticket;
        counts.next_ticket += 1;
        let (tx, rx) = oneshot::channel();
        let parking = Parking {
            shard: self,
            occupancy,
            hash,
            ticket,
            settled: false,
            rx,
        };
        Some((Member { ticket, offer, tx }, parking))
    }

    /// Refuses every later caller, and answers every parked one: dropping
    /// their senders wakes each with an error, which it reports as closed.
    pub(super) fn close(&self, occupancy: &Occupancy) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.closed = true;
        // Give their places back too (the loom model caught this missing):
        // nothing may be left behind, not even in a count.
        state.table.clear();
        for _ in 0..state.counts.parked {
            occupancy.release(&mut state.counts.spares);
        }
        state.counts.parked = 0;
    }

    /// How many callers are parked in this shard.
    pub(super) fn waiting(&self) -> usize {
        self.lock().counts.parked
    }

    /// Places this shard keeps for its next parked callers.
    #[cfg(test)]
    pub(super) fn spares(&self) -> usize {
        self.lock().counts.spares
    }
}

/// Hands every parked member of a completed group its delivery, and returns
/// the last arrival's offers. Called under the shard lock.
fn complete(members: SmallVec<[Member; 1]>, offer: Offer) -> Offers {
    if members.len() == 1 {
        // A pair: each side gets the other's offer, and nothing is shared.
        let waiter = members.into_iter().next().expect("one member");
        let _ = waiter.tx.send(Completion {
            position: 0,
            offers: Offers::Peer(offer),
        });
        return Offers::Peer(waiter.offer);
    }
    let mut senders = Vec::with_capacity(members.len());
    let mut offers = Vec::with_capacity(members.len() + 1);
    for member in members {
        senders.push(member.tx);
        offers.push(member.offer);
    }
    offers.push(offer);
    let offers: Arc<[Offer]> = offers.into();
    for (position, tx) in senders.into_iter().enumerate() {
        let _ = tx.send(Completion {
            position,
            offers: Offers::All(offers.clone()),
        });
    }
    Offers::All(offers)
}

/// A parked caller's claim on its place in a group. Dropping it unsettled
/// (the caller went away) removes it, so nobody counts a caller that left.
pub(super) struct Parking<'a> {
    shard: &'a Shard,
    occupancy: &'a Occupancy,
    hash: u64,
    ticket: u64,
    /// Set once the outcome is known and the member is already gone.
    settled: bool,
    // Declared last so it drops after `Drop::drop` has removed the member.
    rx: oneshot::Receiver<Completion>,
}

/// How a parked caller's wait ended.
pub(super) enum WaitEnd {
    /// The group completed.
    Completed(Completion),
    /// The deadline came first; the member is gone, so nobody counts it.
    TimedOut,
    /// The shard was closed (the server is shutting down).
    Closed,
}

impl<'a> Parking<'a> {
    /// Waits for the group to complete, or until `deadline` completes.
    ///
    /// Whichever takes the member out of the map decides: a last arrival
    /// that got there first has already put the delivery in the channel, so
    /// a late deadline still reports the group.
    pub(super) fn outcome<D: Future<Output = ()>>(self, deadline: D) -> Waiting<'a, D> {
        Waiting {
            parking: self,
            deadline,
        }
    }

    /// Removes this caller from its group if it is still there. `false`
    /// means the group completed (or `close` ran), so the outcome is in `rx`.
    fn withdraw(&mut self) -> bool {
        self.settled = true;
        let mut guard = self.shard.lock();
        let state = &mut *guard;
        let ticket = self.ticket;
        let Ok(mut entry) = state
            .table
            .find_entry(self.hash, |f| f.members.iter().any(|m| m.ticket == ticket))
        else {
            return false;
        };
        let forming = entry.get_mut();
        if forming.members.len() == 1 {
            entry.remove();
        } else {
            let at = forming
                .members
                .iter()
                .position(|m| m.ticket == ticket)
                .expect("found by this ticket");
            forming.members.remove(at);
        }
        self.occupancy.release(&mut state.counts.spares);
        state.counts.parked -= 1;
        true
    }
}

#[cfg(test)]
impl Parking<'_> {
    /// Goes away without withdrawing: its channel closes while its entry
    /// stays, as if its cleanup had not run yet when the next caller came.
    pub(super) fn leave_without_cleanup(mut self) {
        self.settled = true;
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
    /// A parked caller waiting for its group or its deadline.
    ///
    /// A hand-written future rather than an async fn (the crate doc's "What
    /// a parked caller costs"): every byte here is paid once per parked
    /// caller.
    pub(super) struct Waiting<'a, D> {
        parking: Parking<'a>,
        #[pin]
        deadline: D,
    }
}

impl<D: Future<Output = ()>> Future for Waiting<'_, D> {
    type Output = WaitEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WaitEnd> {
        let this = self.project();
        let parking = this.parking;
        // The channel first: once the delivery is in it, the group stands
        // even if the deadline has passed as well.
        let delivered = match Pin::new(&mut parking.rx).poll(cx) {
            Poll::Ready(delivered) => delivered.ok(),
            Poll::Pending => {
                ready!(this.deadline.poll(cx));
                if parking.withdraw() {
                    return Poll::Ready(WaitEnd::TimedOut);
                }
                // Too late to withdraw: the last arrival removed the group
                // first, and handed the delivery over before releasing the lock.
                parking.rx.try_recv().ok()
            }
        };
        parking.settled = true;
        Poll::Ready(match delivered {
            Some(completion) => WaitEnd::Completed(completion),
            // The sender was dropped without a delivery: only `close` does that.
            None => WaitEnd::Closed,
        })
    }
}
