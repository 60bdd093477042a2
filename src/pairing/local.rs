//! The in-process engine: one process is the meeting place. Ids are
//! spread over shards (`shard.rs`, where callers race, model-checked by
//! loom in `model.rs`), each a map from id to the group forming under it.

use std::{fmt, hash::BuildHasher, time::Duration};

use tokio::{
    sync::watch,
    time::{Instant, sleep_until},
};

use super::{
    Attempt, Engine, EngineLimits, Id, Joining, Meeting, Offer, Offers, PairError, Parties,
    Withdrawing, occupancy, sync,
};

#[cfg(test)]
mod model;
mod shard;

use occupancy::Occupancy;
use shard::{Completion, Joined, Shard, WaitEnd};

/// Shards spread ids over independent locks, so that callers on different
/// cores rarely contend. A power of two, and comfortably above the core count.
const SHARDS: usize = 256;

/// The in-process engine: a sharded map from id to the caller waiting on it.
pub struct LocalEngine {
    shards: Box<[Shard]>,
    /// Always `true`: the meeting place is this process.
    reachable: watch::Sender<bool>,
    // Keyed per process: ids come from callers, so a fixed hash would let
    // them aim every id at one bucket.
    hasher: std::hash::RandomState,
    occupancy: Occupancy,
    limits: EngineLimits,
}

impl LocalEngine {
    /// An empty, open engine with no cap on waiting callers.
    pub fn new() -> Self {
        Self::with_limits(EngineLimits::NONE)
    }

    /// An empty, open engine that holds its callers to `limits`.
    pub fn with_limits(limits: EngineLimits) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            reachable: watch::Sender::new(true),
            hasher: std::hash::RandomState::new(),
            occupancy: Occupancy::new(limits.max_waiters, SHARDS),
            limits,
        }
    }

    /// An empty, open engine that holds at most `capacity` waiting callers,
    /// and no limit on a group's bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_limits(EngineLimits {
            max_waiters: capacity,
            ..EngineLimits::NONE
        })
    }

    /// Places taken against the cap by parked callers (the shards' spares
    /// aside): every path out of the map must give its place back.
    #[cfg(test)]
    fn places_in_use(&self) -> usize {
        self.occupancy.taken() - self.shards.iter().map(Shard::spares).sum::<usize>()
    }

    fn shard(&self, hash: u64) -> &Shard {
        // hashbrown indexes buckets by the low bits and tags them with the top
        // seven, so pick the shard from bits neither of those uses.
        &self.shards[(hash >> 32) as usize % SHARDS]
    }
}

impl Default for LocalEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LocalEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEngine")
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl LocalEngine {
    /// [`Engine::gather`], ended early if `give_up` says so: the shard
    /// decides then as at the deadline (the caller is taken out, or its
    /// group completed first). Generic, so that a plain call's future holds
    /// no room for a withdrawal.
    async fn gather_until<G: GiveUp>(
        &self,
        id: Id,
        parties: Parties,
        offer: Offer,
        deadline: Instant,
        give_up: G,
    ) -> Result<Meeting, PairError> {
        let hash = self.hasher.hash_one(&id);
        let group = shard::Terms {
            parties: parties.get(),
            max_bytes: self.limits.meeting_bytes(parties.get()),
        };
        let parking = match self
            .shard(hash)
            .arrive(id, hash, group, offer, &self.occupancy)
        {
            // The last caller never waits: it finds the others already there.
            Joined::Completed(Completion { position, offers }) => {
                return Ok(Meeting::new(position, offers, Duration::ZERO));
            }
            Joined::Closed => return Err(PairError::ShuttingDown),
            Joined::Full => return Err(self.limits.full()),
            Joined::Mismatch { forming } => {
                return Err(PairError::PartiesMismatch {
                    forming,
                    asked: parties.get(),
                });
            }
            Joined::TooLarge { held, payload } => {
                return Err(self.limits.too_large(held, payload));
            }
            Joined::Parked(parking) => parking,
        };
        let start = Instant::now();
        match parking.outcome(give_up.until(deadline)).await {
            WaitEnd::Completed(Completion { position, offers }) => {
                Ok(Meeting::new(position, offers, start.elapsed()))
            }
            WaitEnd::TimedOut if give_up.given_up() => Err(PairError::Withdrawn),
            WaitEnd::TimedOut => Err(PairError::TimedOut),
            WaitEnd::Closed => Err(PairError::ShuttingDown),
        }
    }
}

/// What ends a local caller's wait besides its group: its deadline, and,
/// for a keyed wait, its withdrawal.
trait GiveUp {
    fn until(&self, deadline: Instant) -> impl Future<Output = ()>;
    fn given_up(&self) -> bool;
}

/// A plain call: only its deadline. Nothing to keep.
struct AtDeadline;

impl GiveUp for AtDeadline {
    fn until(&self, deadline: Instant) -> impl Future<Output = ()> {
        sleep_until(deadline)
    }

    fn given_up(&self) -> bool {
        false
    }
}

impl GiveUp for &Withdrawing {
    async fn until(&self, deadline: Instant) {
        tokio::select! {
            () = sleep_until(deadline) => {}
            () = self.requested() => {}
        }
    }

    fn given_up(&self) -> bool {
        self.is_requested()
    }
}

impl Engine for LocalEngine {
    fn gather(
        &self,
        id: Id,
        parties: Parties,
        offer: Offer,
        deadline: Instant,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        self.gather_until(id, parties, offer, deadline, AtDeadline)
    }

    /// The place lives here, in the caller's future: a withdrawal ends it
    /// as the deadline would, and is what it reports.
    fn gather_keyed(
        &self,
        Joining { id, parties, offer }: Joining,
        deadline: Instant,
        attempt: Attempt<'_>,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        self.gather_until(id, parties, offer, deadline, attempt.withdrawing)
    }

    /// Nothing to wait for: removal from the shards is immediate.
    async fn close(&self) {
        for shard in self.shards.iter() {
            shard.close(&self.occupancy);
        }
    }

    fn waiting(&self) -> usize {
        self.shards.iter().map(Shard::waiting).sum()
    }

    fn reachable(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, task::Poll};

    use bytes::Bytes;

    use super::*;
    use crate::pairing::{IdError, MAX_ID_BYTES, Offers, Role};

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    const FAR: Duration = Duration::from_secs(3600);
    const SECOND: Duration = Duration::from_secs(1);

    /// A deadline `wait` from now.
    fn after(wait: Duration) -> Instant {
        Instant::now() + wait
    }

    #[test]
    fn ids_are_validated() {
        assert_eq!(Id::new(""), Err(IdError::Empty));
        assert_eq!(
            Id::new("x".repeat(MAX_ID_BYTES + 1)),
            Err(IdError::TooLong { len: 257 })
        );
        assert_eq!(
            Id::new("x".repeat(MAX_ID_BYTES)).unwrap().as_str().len(),
            256
        );
        // Length is in bytes, not characters.
        assert!(Id::new("é".repeat(129)).is_err());
    }

    /// A member whose channel has closed but whose entry is still there
    /// (its cleanup has not run) is never counted: the caller that would
    /// have completed the group with it waits in its place, and the place
    /// it held against the cap is given back.
    #[test]
    fn a_member_gone_without_cleanup_is_never_counted() {
        let shard = Shard::default();
        let occupancy = Occupancy::new(2, 1);
        let group = shard::Terms {
            parties: 3,
            max_bytes: usize::MAX,
        };
        let arrive = |payload: &'static [u8]| {
            shard.arrive(
                id("g"),
                7,
                group,
                Bytes::from_static(payload).into(),
                &occupancy,
            )
        };
        let (Joined::Parked(gone), Joined::Parked(b)) = (arrive(b"gone"), arrive(b"b")) else {
            panic!("the first two wait");
        };
        gone.leave_without_cleanup();
        // The cap (2) is full until the one that left is dropped.
        let Joined::Parked(c) = arrive(b"c") else {
            panic!("counted a member that had gone");
        };
        assert_eq!(shard.waiting(), 2);
        assert_eq!(occupancy.taken(), 2);
        let Joined::Completed(Completion {
            position: 2,
            offers: Offers::All(all),
        }) = arrive(b"d")
        else {
            panic!("the group did not complete");
        };
        let payloads: Vec<_> = all.iter().map(|o| o.payload.clone()).collect();
        assert_eq!(payloads, ["b", "c", "d"]);
        for (parking, position) in [(b, 0), (c, 1)] {
            let outcome = futures_poll(std::pin::pin!(parking.outcome(std::future::pending())));
            assert!(
                matches!(outcome, Poll::Ready(shard::WaitEnd::Completed(c)) if c.position == position)
            );
        }
        assert_eq!((shard.waiting(), occupancy.taken()), (0, 0));
    }

    /// A larger group's meeting holds everyone's offers: its peer is the
    /// first member other than itself, its role follows its position, and
    /// its payloads come back in arrival order, its own from the list.
    #[test]
    fn a_group_meeting_reads_from_the_shared_list() {
        let all: Arc<[Offer]> = [&b"a"[..], b"b", b"c"]
            .map(|p| Offer::from(Bytes::from_static(p)))
            .into();
        let at = |position| Meeting::new(position, Offers::All(all.clone()), Duration::ZERO);
        assert_eq!(at(0).peer().payload, "b");
        assert_eq!(at(1).peer().payload, "a");
        assert_eq!(at(2).peer().payload, "a");
        assert_eq!(at(0).into_peer().payload, "b");
        assert_eq!(at(1).into_peer().payload, "a");
        assert_eq!((at(0).role(), at(2).role()), (Role::First, Role::Second));
        assert_eq!(at(1).parties(), 3);
        assert_eq!(
            at(1).payloads(&Bytes::from_static(b"ignored")),
            ["a", "b", "c"]
        );
        let pair = |position| {
            Meeting::new(
                position,
                Offers::Peer(Bytes::from_static(b"peer").into()),
                Duration::ZERO,
            )
        };
        assert_eq!(
            pair(0).payloads(&Bytes::from_static(b"own")),
            ["own", "peer"]
        );
        assert_eq!(
            pair(1).payloads(&Bytes::from_static(b"own")),
            ["peer", "own"]
        );
        assert_eq!(pair(1).parties(), 2);
    }

    #[test]
    fn debug_does_not_leak_the_id() {
        assert_eq!(format!("{:?}", id("secret-code")), "Id(11 bytes)");
    }

    #[tokio::test(start_paused = true)]
    async fn two_callers_pair_and_swap_payloads() {
        let engine = Arc::new(LocalEngine::new());
        let e = engine.clone();
        let first = tokio::spawn(async move {
            e.meet(
                id("a"),
                Bytes::from_static(b"from first").into(),
                after(FAR),
            )
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(engine.waiting(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;

        let second = engine
            .meet(
                id("a"),
                Bytes::from_static(b"from second").into(),
                after(FAR),
            )
            .await
            .unwrap();
        let first = first.await.unwrap().unwrap();

        assert_eq!(second.role(), Role::Second);
        assert_eq!(second.peer().payload, "from first");
        assert_eq!(second.waited, Duration::ZERO);
        assert_eq!(first.role(), Role::First);
        assert_eq!(first.peer().payload, "from second");
        assert_eq!(first.waited, Duration::from_secs(2));
        assert_eq!(engine.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partner_arriving_after_the_deadline_fired_but_before_the_waiter_ran_still_pairs_both()
     {
        let engine = LocalEngine::new();
        let deadline = SECOND;
        let first = engine.meet(id("a"), Bytes::from_static(b"1").into(), after(deadline));
        tokio::pin!(first);
        assert!(futures_poll(first.as_mut()).is_pending());

        // The deadline passes, but the waiter has not been polled since; the
        // partner gets there first and takes the entry.
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = engine
            .meet(id("a"), Bytes::from_static(b"2").into(), after(FAR))
            .await;
        assert_eq!(second.unwrap().peer().payload, "1");

        let first = first.await.unwrap();
        assert_eq!(first.role(), Role::First);
        assert_eq!(first.peer().payload, "2");
    }

    #[tokio::test(start_paused = true)]
    async fn close_answers_parked_and_later_callers() {
        let engine = LocalEngine::new();
        let parked = engine.meet(id("a"), Offer::default(), after(FAR));
        tokio::pin!(parked);
        assert!(futures_poll(parked.as_mut()).is_pending());

        engine.close().await;
        assert_eq!(parked.await, Err(PairError::ShuttingDown));
        assert_eq!(
            engine.meet(id("b"), Offer::default(), after(FAR)).await,
            Err(PairError::ShuttingDown)
        );
        assert_eq!(engine.waiting(), 0);
        // Found by the loom model (`shutdown_races_a_pair`): closing used to
        // drop the parked callers without giving their places back.
        assert_eq!(engine.places_in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_counts_waiting_callers_only() {
        let engine = LocalEngine::with_capacity(2);
        let a = engine.meet(id("a"), Offer::default(), after(FAR));
        tokio::pin!(a);
        let mut b = Box::pin(engine.meet(id("b"), Offer::default(), after(FAR)));
        assert!(futures_poll(a.as_mut()).is_pending());
        assert!(futures_poll(b.as_mut()).is_pending());
        assert_eq!(engine.waiting(), 2);

        // A third waiter is refused, and leaves nothing behind...
        assert_eq!(
            engine.meet(id("c"), Offer::default(), after(FAR)).await,
            Err(PairError::Full { capacity: 2 })
        );
        // ...but a caller that completes a pair never waits, so it is let in.
        assert_eq!(
            engine
                .meet(id("a"), Offer::default(), after(FAR))
                .await
                .unwrap()
                .role(),
            Role::Second
        );
        assert_eq!(a.await.unwrap().role(), Role::First);
        assert_eq!(engine.waiting(), 1);

        // A place freed by a timeout or a departure is free again.
        let c = engine.meet(id("c"), Offer::default(), after(SECOND));
        assert!(matches!(c.await, Err(PairError::TimedOut)));
        drop(b);
        assert_eq!(engine.waiting(), 0);
        assert_eq!(engine.places_in_use(), 0);
        engine.close().await;
        assert_eq!(engine.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn with_spares_every_path_still_gives_its_place_back() {
        let engine = Arc::new(LocalEngine::with_capacity(1 << 20));
        let e = engine.clone();
        let first =
            tokio::spawn(async move { e.meet(id("a"), Offer::default(), after(FAR)).await });
        tokio::task::yield_now().await;
        assert_eq!(engine.places_in_use(), 1);
        engine
            .meet(id("a"), Offer::default(), after(FAR))
            .await
            .unwrap();
        first.await.unwrap().unwrap();
        let timed_out = engine.meet(id("b"), Offer::default(), after(SECOND)).await;
        assert!(matches!(timed_out, Err(PairError::TimedOut)));
        {
            let gone = engine.meet(id("c"), Offer::default(), after(FAR));
            tokio::pin!(gone);
            assert!(futures_poll(gone.as_mut()).is_pending());
            assert_eq!(engine.places_in_use(), 1);
        }
        assert_eq!(engine.places_in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_keeps_a_freed_place_as_its_spare_and_uses_it_next() {
        // The smallest cap at which shards keep spares.
        let engine = LocalEngine::with_capacity(SHARDS * 256);
        let timed_out = engine.meet(id("a"), Offer::default(), after(SECOND)).await;
        assert!(matches!(timed_out, Err(PairError::TimedOut)));
        // The place stayed with the shard rather than going back to the
        // shared counter, which every core would otherwise write to.
        assert_eq!(engine.occupancy.taken(), 1);
        assert_eq!(engine.places_in_use(), 0);
        // The next caller in that shard takes the spare, not a new place.
        let again = engine.meet(id("a"), Offer::default(), after(FAR));
        tokio::pin!(again);
        assert!(futures_poll(again.as_mut()).is_pending());
        assert_eq!(engine.occupancy.taken(), 1);
        assert_eq!(engine.places_in_use(), 1);
    }

    /// At the smallest cap with spares, the cap holds even after the shards
    /// have filled up with spares: every freed place can be taken again, and
    /// no more.
    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_with_spares() {
        const CAP: usize = SHARDS * 256;
        let engine = LocalEngine::with_capacity(CAP);
        let (mut parked, waiting) = arrive(&engine, (0..CAP).map(|i| format!("p{i}")));
        assert_eq!(waiting, CAP);
        assert_eq!(
            engine
                .meet(id("one-too-many"), Offer::default(), after(FAR))
                .await,
            Err(PairError::Full { capacity: CAP })
        );
        // Half of them leave, spread over every shard; as many others come.
        parked.truncate(CAP / 2);
        let (again, waiting) = arrive(&engine, (0..CAP / 2).map(|i| format!("q{i}")));
        assert_eq!(waiting, CAP / 2, "refused under the cap");
        assert_eq!(engine.waiting(), CAP);
        assert_eq!(
            engine
                .meet(id("one-too-many"), Offer::default(), after(FAR))
                .await,
            Err(PairError::Full { capacity: CAP })
        );
        drop((parked, again));
        assert_eq!(engine.places_in_use(), 0);
    }

    /// Just below the smallest cap with spares, a freed place goes back to
    /// everyone at once, whichever shard the next caller's id lands in.
    #[tokio::test(start_paused = true)]
    async fn below_the_spare_threshold_a_freed_place_is_anyones() {
        const CAP: usize = SHARDS * 256 - 1;
        let engine = LocalEngine::with_capacity(CAP);
        let (mut parked, waiting) = arrive(&engine, (0..CAP).map(|i| format!("p{i}")));
        assert_eq!(waiting, CAP);
        parked.pop();
        assert_eq!(engine.occupancy.taken(), CAP - 1, "no spare kept");
        let (_next, admitted) = arrive(&engine, (0..8).map(|i| format!("n{i}")));
        assert_eq!(
            admitted, 1,
            "exactly the one freed place, for the first caller"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ids_spread_over_the_shards() {
        let engine = LocalEngine::new();
        let (_parked, waiting) = arrive(&engine, (0..64).map(|i| format!("spread-{i}")));
        assert_eq!(waiting, 64);
        let used = engine.shards.iter().filter(|s| s.waiting() > 0).count();
        // 64 ids over 256 shards: about 57 shards on average; all in a few
        // would mean the shard is picked from bits that do not vary.
        assert!(used > 32, "64 ids landed in {used} shards");
    }

    #[tokio::test(start_paused = true)]
    async fn debug_shows_the_waiting_count() {
        let engine = LocalEngine::new();
        let parked = engine.meet(id("a"), Offer::default(), after(FAR));
        tokio::pin!(parked);
        assert!(futures_poll(parked.as_mut()).is_pending());
        assert_eq!(format!("{engine:?}"), "LocalEngine { waiting: 1 }");
    }

    type Call<'e> = std::pin::Pin<Box<dyn Future<Output = Result<Meeting, PairError>> + 'e>>;

    /// A call for each of `ids`, each polled once: the calls, and how many
    /// of them are waiting (the others were refused).
    fn arrive(engine: &LocalEngine, ids: impl Iterator<Item = String>) -> (Vec<Call<'_>>, usize) {
        let mut waiting = 0;
        let calls = ids
            .map(|i| {
                let mut call: Call<'_> =
                    Box::pin(engine.meet(id(&i), Offer::default(), after(FAR)));
                if futures_poll(call.as_mut()).is_pending() {
                    waiting += 1;
                }
                call
            })
            .collect();
        (calls, waiting)
    }

    /// Polls a future once, as an executor would, without waiting for it.
    fn futures_poll<F: Future + ?Sized>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut std::task::Context::from_waker(waker))
    }
}
