//! The seam every engine sits behind, [`Engine`], and the limits every
//! engine holds its callers to.

use std::time::Duration;

use tokio::{sync::watch, time::Instant};

use super::{Attempt, AttemptKey, Id, Joining, Meeting, Offer, PairError, Parties, Withdrawal};

/// The limits that every engine holds its callers to, whichever engine it
/// is: one place for them, so that the engines cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// The most callers that may wait at once (`--max-waiters`); a caller
    /// that completes a meeting never counts against it.
    pub max_waiters: usize,
    /// The most bytes of payloads a group of more than two may hold
    /// (`--max-group-bytes`).
    pub max_group_bytes: usize,
}

impl EngineLimits {
    /// No limit at all, for tests and benchmarks of the engines alone.
    pub const NONE: Self = Self {
        max_waiters: usize::MAX,
        max_group_bytes: usize::MAX,
    };

    /// The most bytes of payloads a meeting of `parties` may hold. A pair is
    /// held to `--max-payload` alone: each of its callers is answered with
    /// one payload, while every member of a group is answered with them all,
    /// and a client refuses an answer over its receive limit.
    pub fn meeting_bytes(&self, parties: u32) -> usize {
        match parties {
            2 => usize::MAX,
            _ => self.max_group_bytes,
        }
    }

    /// The refusal of a caller that would wait past `--max-waiters`.
    pub(super) fn full(&self) -> PairError {
        PairError::Full {
            capacity: self.max_waiters,
        }
    }

    /// The refusal of a caller whose `payload` bytes would take its group,
    /// which holds `held`, over `--max-group-bytes`.
    pub(super) fn too_large(&self, held: usize, payload: usize) -> PairError {
        PairError::GroupTooLarge {
            held,
            payload,
            limit: self.max_group_bytes,
        }
    }
}

/// The interface every pairing engine offers: the in-process one
/// ([`LocalEngine`](super::LocalEngine)), and [`RedisEngine`](super::RedisEngine), which replicas share.
///
/// Implementations keep the invariant in the module docs. What each method
/// means when the meeting place is remote:
///
/// - **`meet`**: the decision to pair is taken once, where the meeting place
///   is (under a shard lock, or in one Redis script), and both callers learn
///   the same result. A waiter whose future is dropped (its caller went away)
///   is never paired afterwards.
/// - **Cleanup on drop.** Dropping a `gather` future withdraws its caller. An
///   engine whose store is remote cannot wait in `Drop`, so it starts the
///   removal there as a task of its own, which [`Engine::close`] waits for.
///   Until that task has run, the store may still hold the caller; the engine
///   must make sure nobody pairs with it all the same (the Redis engine asks
///   the waiter's replica before pairing).
/// - **`close`**: answers every caller parked through this engine
///   [`PairError::ShuttingDown`], and every later one too, then waits until
///   their entries are gone from the store (or the store cannot be reached:
///   then their entries expire on their own). Callers parked on other
///   replicas carry on.
/// - **`waiting`**: the callers parked through this engine, in this process;
///   not the store's total, which other replicas add to. `--max-waiters`
///   caps this count.
/// - **`reachable`**: whether the meeting place can be reached right now.
///   Readiness follows it, so that a replica that lost its store stops
///   getting callers without being restarted.
pub trait Engine: Send + Sync + 'static {
    /// Meets the other `parties - 1` callers with `id`, or gives up at
    /// `deadline`.
    ///
    /// The first `parties` callers with an id form a group, and all of them
    /// return together when the last one arrives; the next caller starts a
    /// new group. A caller that asks for another size than the group forming
    /// under its id is refused ([`PairError::PartiesMismatch`]). A member
    /// that leaves before the group completes is out, and the group waits
    /// for another caller in its place: nobody is counted in a group who was
    /// not there when it completed, and every member learns the same result.
    ///
    /// `offer` (a payload, and maybe a trace id) goes to the other members;
    /// theirs come back in the [`Meeting`]. The deadline is absolute, taken
    /// when the call arrived, so that time spent reading the request counts
    /// against it.
    fn gather(
        &self,
        id: Id,
        parties: Parties,
        offer: Offer,
        deadline: Instant,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send;

    /// Meets the one other caller with `id`: a group of two.
    fn meet(
        &self,
        id: Id,
        offer: Offer,
        deadline: Instant,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        self.gather(id, Parties::TWO, offer, deadline)
    }

    /// [`Engine::gather`] for a call with an attempt key, whose answer a
    /// retry with the same key may come back for within `grace`, through
    /// this replica or another. An engine that replicas share keeps the
    /// answer where every replica finds it; one in a single process has
    /// nothing to add to what [`Attempts`](super::Attempts) keeps.
    fn gather_keyed(
        &self,
        Joining { id, parties, offer }: Joining,
        deadline: Instant,
        attempt: Attempt<'_>,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        let _ = attempt;
        self.gather(id, parties, offer, deadline)
    }

    /// The meeting place's part of withdrawing the keyed wait `key` for
    /// `id` ([`Attempts::withdraw`](super::Attempts::withdraw) does the rest): an engine that replicas
    /// share takes the wait's place out wherever it is held, unless it was
    /// decided first, tells the replica that holds it, and keeps the
    /// withdrawal for `grace`, so that a try with the key still on its way
    /// is refused through any replica. An engine in one process has no
    /// place of its own for keyed waits: [`Attempts`](super::Attempts) holds them.
    fn withdraw(
        &self,
        id: Id,
        key: &AttemptKey,
        grace: Duration,
    ) -> impl Future<Output = Result<Withdrawal, PairError>> + Send {
        let _ = (id, key, grace);
        std::future::ready(Ok(Withdrawal::Unknown))
    }

    /// Answers every parked caller [`PairError::ShuttingDown`], and every
    /// later one too, then waits for their cleanup. Shutdown uses it so that
    /// no caller hangs and nothing is left behind.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// How many callers are parked through this engine right now. One that
    /// went away counts until the meeting place has let it go: until then,
    /// a caller of its id still meets it there.
    fn waiting(&self) -> usize;

    /// Whether the meeting place can be reached: `true`, then changes.
    fn reachable(&self) -> watch::Receiver<bool>;

    /// What readiness says while [`Engine::reachable`] is `false`, in the
    /// engine's own words.
    fn unreachable_reason(&self) -> &'static str {
        "cannot reach the meeting place"
    }
}
