//! The pairing engine: who is waiting for whom. No tonic, no HTTP.
//!
//! Everything transport-specific (deadline headers, status codes, bodies)
//! lives in the adapters; this module only knows ids, payloads and deadlines.
//! That keeps the one invariant the service promises in one small place:
//!
//! > A pair is decided once, for both sides. Nobody is told it paired unless
//! > its partner is told the same, and nothing is left behind.
//!
//! How [`LocalEngine`] keeps it:
//! - A pair is decided under the shard lock, by whoever removes the waiter's
//!   entry from the map. The second caller removes it and hands over its
//!   payload while still holding the lock; a waiter whose deadline fires
//!   removes it itself and reports a timeout. Whoever gets there first wins,
//!   and the other side learns the result from the same entry.
//! - A waiter is removed by its ticket, not by its id, so cleanup can never
//!   delete a newer caller that parked under the same id.
//! - Removal runs in `Drop`, because the transports drop a handler future when
//!   its caller goes away (RST_STREAM, a closed connection). A caller that left
//!   is therefore gone from the map before anyone can pair with it.
//!
//! The part where callers race, one shard, is in `shard.rs`; `model.rs`
//! model-checks that same file with loom (see the README's "How it is
//! tested").
//!
//! [`RedisEngine`] (`redis.rs`) keeps the same invariant for replicas that
//! meet in Redis: one Lua script decides each pair, and the waiter's replica
//! confirms that its caller is still there before it does. [`Engine`] spells
//! out what each method means when the meeting place is remote, and
//! [`AnyEngine`] is the one type the rest of the crate holds.

use std::{
    fmt,
    hash::BuildHasher,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::{
    sync::watch,
    time::{Instant, sleep_until},
};

mod attempts;
#[cfg(test)]
mod model;
mod occupancy;
mod redis;
mod shard;

pub use attempts::{Attempts, Delivery};
pub use redis::{RedisArgs, RedisConfig, RedisEngine, RedisError};

use crate::trace::TraceContext;

use occupancy::Occupancy;
use shard::{Arrival, Outcome, Shard};

/// The primitives the shards synchronise with. The loom model swaps in its
/// own versions of exactly these (see `model.rs`).
mod sync {
    pub(super) use std::sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    };
    pub(super) use tokio::sync::oneshot;
}

/// The longest id accepted, in bytes. Ids are meeting codes, not documents;
/// the bound also caps the memory a parked caller can pin with its id.
pub const MAX_ID_BYTES: usize = 256;

/// A validated meeting id: 1 to [`MAX_ID_BYTES`] bytes of UTF-8.
///
/// Only [`Id::new`] builds one, so the engine never sees an invalid id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    /// Validates `id` at the edge, so the rest of the code can rely on it.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        match id.len() {
            0 => Err(IdError::Empty),
            len if len > MAX_ID_BYTES => Err(IdError::TooLong { len }),
            _ => Ok(Self(id)),
        }
    }

    /// Validates `id` and scopes it to `namespace`, so that callers in
    /// different namespaces never meet. Namespace names contain no `/`, so
    /// `namespace/id` is unambiguous.
    pub fn in_namespace(namespace: Option<&str>, id: String) -> Result<Self, IdError> {
        let id = Self::new(id)?;
        Ok(match namespace {
            None => id,
            Some(namespace) => Self(format!("{namespace}/{}", id.0)),
        })
    }

    /// The id as the caller sent it (prefixed by its namespace, if any).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// An id can be a secret pairing code, so `Debug` does not print it; log it
// deliberately with `as_str` at debug level instead.
impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({} bytes)", self.0.len())
    }
}

/// Why an id was refused. The messages go to callers verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The caller sent no id at all.
    #[error("id is empty: send the meeting id both parties agreed on")]
    Empty,
    /// The id is longer than [`MAX_ID_BYTES`].
    #[error("id is {len} bytes long; the limit is {MAX_ID_BYTES} bytes")]
    TooLong {
        /// The length the caller sent, in bytes.
        len: usize,
    },
}

/// The first half of `bytes`' SHA-256: how ids and attempt keys, which can
/// be secrets, are named where they are stored.
pub(crate) fn half_sha256(bytes: &[u8]) -> [u8; 16] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bytes);
    let mut half = [0; 16];
    half.copy_from_slice(&digest[..16]);
    half
}

/// The longest attempt key accepted, in bytes: room for a UUID or a
/// 256-bit random value in any common spelling, and a bound on what a held
/// answer pins besides its payloads.
pub const MAX_ATTEMPT_KEY_BYTES: usize = 128;

/// A validated attempt key, scoped to its caller's namespace: what makes a
/// retry of one logical wait safe.
///
/// A client makes one at random for each wait and sends it on every try of
/// that wait. A try that finds the key still known gets the first try's
/// place back, or its answer ([`Attempts`]). Keys are scoped like ids, so
/// that one tenant cannot read another's answer by guessing its key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AttemptKey(String);

impl AttemptKey {
    /// The key as Redis stores it: hashed (the first half of its SHA-256),
    /// since a key stands for a caller's answer.
    pub(crate) fn hash(&self) -> [u8; 16] {
        half_sha256(self.0.as_bytes())
    }

    /// Validates `key` at the edge, and scopes it to `namespace`. An empty
    /// key (proto3's default, or no query parameter) is no key: `Ok(None)`.
    pub fn in_namespace(
        namespace: Option<&str>,
        key: &str,
    ) -> Result<Option<Self>, AttemptKeyError> {
        if key.is_empty() {
            return Ok(None);
        }
        if key.len() > MAX_ATTEMPT_KEY_BYTES {
            return Err(AttemptKeyError::TooLong { len: key.len() });
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AttemptKeyError::NotPrintable);
        }
        Ok(Some(Self(match namespace {
            None => key.to_owned(),
            Some(namespace) => format!("{namespace}/{key}"),
        })))
    }
}

// A key stands for a caller's answer: `Debug` does not print it.
impl fmt::Debug for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttemptKey({} bytes)", self.0.len())
    }
}

/// A keyed engine call's attempt: its key, how long its answer is kept,
/// and which try of the wait it runs for.
///
/// A cut try can reach the meeting place after its retry (its request was
/// still on its way, or its engine call on another replica's), and must
/// not take the wait back from it. So tries are ordered by [`TryOrder`],
/// not by when each gets there.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The wait's key.
    pub key: &'a AttemptKey,
    /// How long the answer is kept for a retry.
    pub grace: Duration,
    /// Which try this is.
    pub order: TryOrder,
    /// Set when the wait is withdrawn through this process. An engine whose
    /// place lives in this process ends the call on it, as it would at the
    /// deadline; one that replicas share ends it when the meeting place
    /// says so ([`Engine::withdraw`]).
    pub withdrawing: &'a Withdrawing,
}

/// The signal that a keyed wait is being withdrawn (see [`Attempt`]): set
/// once, and never unset.
#[derive(Debug)]
pub struct Withdrawing(watch::Sender<bool>);

impl Default for Withdrawing {
    fn default() -> Self {
        Self(watch::Sender::new(false))
    }
}

impl Withdrawing {
    /// Asks the wait's engine call to end, unless it is decided first.
    pub fn request(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`Withdrawing::request`] was called.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once [`Withdrawing::request`] has been called.
    pub async fn requested(&self) {
        let mut requested = self.0.subscribe();
        // The sender lives in `self`: `wait_for` cannot fail here.
        let _ = requested.wait_for(|requested| *requested).await;
    }
}

/// What a withdrawal found ([`Engine::withdraw`], [`Attempts::withdraw`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    /// The wait's place was taken out before anything was decided: nobody
    /// is paired with it now.
    Withdrawn,
    /// Too late: the wait had met its partner or group, and they were told
    /// `OK`. What this caller was to be told.
    Met(Meeting),
    /// Too late, and nothing lost: the wait had timed out already.
    TimedOut,
    /// Nothing under this key was found waiting or decided (never seen, or
    /// forgotten after the grace). A try with the key that comes within the
    /// grace is refused all the same, so that one still on its way does not
    /// park after its caller gave up.
    Unknown,
}

impl Withdrawal {
    /// A wait's answer, as a withdrawal that came after it reads it.
    pub(crate) fn after(answer: &Result<Meeting, PairError>) -> Self {
        match answer {
            Ok(meeting) => Self::Met(meeting.clone()),
            Err(PairError::TimedOut) => Self::TimedOut,
            Err(PairError::Withdrawn) => Self::Withdrawn,
            Err(_) => Self::Unknown,
        }
    }
}

/// Where a try stands among the tries of its wait: by how many tries its
/// client says came before it, then by when it reached its replica (for
/// clients that do not count, and across replicas as good as their clocks).
/// A later try takes a wait over; an earlier one that comes late is told
/// [`PairError::Superseded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TryOrder {
    /// The client's count of the tries before this one.
    pub previous: u32,
    /// When the try reached this replica.
    pub tried: SystemTime,
}

impl TryOrder {
    /// A try that has just reached this replica, after `previous` others.
    pub fn now(previous: u32) -> Self {
        Self {
            previous,
            tried: SystemTime::now(),
        }
    }
}

/// Why an attempt key was refused. The messages go to callers verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptKeyError {
    /// A withdrawal sent none: a wait is withdrawn by its key.
    #[error(
        "attempt key is empty: a wait is withdrawn by the attempt key it was sent with, \
         so only a wait sent with one can be"
    )]
    Missing,
    /// The key is longer than [`MAX_ATTEMPT_KEY_BYTES`].
    #[error("attempt key is {len} bytes long; the limit is {MAX_ATTEMPT_KEY_BYTES} bytes")]
    TooLong {
        /// The length the caller sent, in bytes.
        len: usize,
    },
    /// The key holds a space, a control character or non-ASCII text.
    #[error(
        "attempt key may hold only visible ASCII characters (letters, digits, punctuation), \
         such as a UUID"
    )]
    NotPrintable,
}

/// What differs between a call and the first call that sent its attempt
/// key: one key stands for one wait, and a retry must ask for the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Another id.
    Id,
    /// Another group size (or the other method).
    Parties,
    /// Another payload.
    Payload,
}

impl Reuse {
    fn as_str(self) -> &'static str {
        match self {
            Self::Id => "another id",
            Self::Parties => "another group size",
            Self::Payload => "another payload",
        }
    }
}

/// Which side of a pair a caller took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Arrived first and waited for the second party.
    First,
    /// Arrived second and completed the pair.
    Second,
}

/// What a caller brings to the meeting, for its partner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// The payload, delivered exactly as sent.
    pub payload: Bytes,
    /// The caller's trace context, so that its partner's log can name its
    /// trace, and its partner's span link to its span.
    pub trace: Option<TraceContext>,
}

impl From<Bytes> for Offer {
    /// A payload without a trace id.
    fn from(payload: Bytes) -> Self {
        Self {
            payload,
            trace: None,
        }
    }
}

/// How many callers make up a group: 2 (a pair, `WaitForSecondParty`) or
/// more (`WaitForParties`). Only [`Parties::new`] builds one, so the engines
/// never see a group of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Parties(u32);

impl Parties {
    /// A pair: what `WaitForSecondParty` asks for.
    pub const TWO: Self = Self(2);

    /// Validates a caller's `parties` at the edge, against `--max-parties`.
    pub fn new(parties: u32, max: u32) -> Result<Self, PartiesError> {
        match parties {
            0 | 1 => Err(PartiesError::TooFew(parties)),
            n if n > max => Err(PartiesError::TooMany { asked: n, max }),
            n => Ok(Self(n)),
        }
    }

    /// The number of callers.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Why a caller's `parties` was refused. The messages go to callers verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartiesError {
    /// Fewer than two: nobody to wait for.
    #[error("parties is {0}; a group needs at least 2 callers")]
    TooFew(u32),
    /// More than `--max-parties`.
    #[error("parties is {asked}; the limit is {max} (--max-parties)")]
    TooMany {
        /// What the caller asked for.
        asked: u32,
        /// The configured limit.
        max: u32,
    },
}

/// What a caller learns when its group completes.
#[derive(Debug, Clone)]
pub struct Meeting {
    /// This caller's place in the group's arrival order, from 0. In a pair,
    /// 0 is the first party, which waited.
    pub position: usize,
    /// The offers, as the engine handed them over.
    offers: Offers,
    /// How long this caller waited for the group.
    pub waited: Duration,
    /// How an engine that replicas share handed it to a keyed call: a
    /// retry through another replica than its first try's takes the place
    /// back there, or is handed the answer kept there. For the metrics
    /// alone, so it is not part of what two meetings are compared on.
    pub(crate) handed: Delivery,
}

/// What was decided, not how it was handed over.
impl PartialEq for Meeting {
    fn eq(&self, other: &Self) -> bool {
        (self.position, &self.offers, self.waited) == (other.position, &other.offers, other.waited)
    }
}

impl Eq for Meeting {}

/// The other members' offers. A pair hands over its partner's alone, so
/// that the most common group allocates nothing to deliver it; larger groups
/// share one list of everyone's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Offers {
    /// The partner's offer, in a pair.
    Peer(Offer),
    /// Every member's offer, this caller's own included, in arrival order.
    All(Arc<[Offer]>),
}

impl Meeting {
    /// The meeting of the caller at `position`, handed `offers`.
    pub(crate) fn new(position: usize, offers: Offers, waited: Duration) -> Self {
        Self {
            position,
            offers,
            waited,
            handed: Delivery::Fresh,
        }
    }

    /// Which side of a pair this caller took: the first (position 0), which
    /// waited, or the one after it.
    pub fn role(&self) -> Role {
        match self.position {
            0 => Role::First,
            _ => Role::Second,
        }
    }

    /// How many callers the group had.
    pub fn parties(&self) -> usize {
        match &self.offers {
            Offers::Peer(_) => 2,
            Offers::All(all) => all.len(),
        }
    }

    /// The partner's offer, in a pair. In a larger group, that of the first
    /// other member: callers who want them all ask for [`Meeting::payloads`].
    pub fn peer(&self) -> &Offer {
        match &self.offers {
            Offers::Peer(peer) => peer,
            Offers::All(all) => &all[usize::from(self.position == 0)],
        }
    }

    /// Every other member's offer, in arrival order: the partner's alone in
    /// a pair.
    pub fn partners(&self) -> impl Iterator<Item = &Offer> {
        let (all, own): (&[Offer], _) = match &self.offers {
            Offers::Peer(peer) => (std::slice::from_ref(peer), None),
            Offers::All(all) => (all, Some(self.position)),
        };
        all.iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != own)
            .map(|(_, offer)| offer)
    }

    /// [`Meeting::peer`], taken out of the meeting rather than copied.
    pub fn into_peer(self) -> Offer {
        match self.offers {
            Offers::Peer(peer) => peer,
            Offers::All(all) => all[usize::from(self.position == 0)].clone(),
        }
    }

    /// Every member's payload in arrival order, this caller's own (`own`,
    /// which a pair does not hand back) at [`Meeting::position`].
    pub fn payloads(&self, own: &Bytes) -> Vec<Bytes> {
        match &self.offers {
            Offers::Peer(peer) => match self.position {
                0 => vec![own.clone(), peer.payload.clone()],
                _ => vec![peer.payload.clone(), own.clone()],
            },
            Offers::All(all) => all.iter().map(|offer| offer.payload.clone()).collect(),
        }
    }
}

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
    fn full(&self) -> PairError {
        PairError::Full {
            capacity: self.max_waiters,
        }
    }

    /// The refusal of a caller whose `payload` bytes would take its group,
    /// which holds `held`, over `--max-group-bytes`.
    fn too_large(&self, held: usize, payload: usize) -> PairError {
        PairError::GroupTooLarge {
            held,
            payload,
            limit: self.max_group_bytes,
        }
    }
}

/// Why a caller did not pair. Every case leaves nothing behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// Nobody came with the same id before the deadline.
    #[error("nobody else arrived with this id before the deadline")]
    TimedOut,
    /// The engine was closed, by a server shutdown, before a partner came.
    #[error("the server is shutting down; retry against another instance")]
    ShuttingDown,
    /// The caller would have had to wait, and the engine already holds as
    /// many waiting callers as it may.
    #[error(
        "the server already has {capacity} callers waiting (--max-waiters); retry shortly, \
         or against another instance"
    )]
    Full {
        /// The cap on waiting callers.
        capacity: usize,
    },
    /// The shared store the replicas meet in cannot be reached, so this
    /// replica cannot tell whether a partner is waiting elsewhere. Never
    /// answered by pairing locally instead: two replicas doing that would
    /// pair one id twice.
    #[error("{0}; retry shortly")]
    Unavailable(String),
    /// A group of another size is forming under this id. The group is left
    /// as it was: callers meant for it are not turned away by a stray one.
    #[error(
        "a group of {forming} is forming under this id, and this call asks for {asked}; \
         every member must ask for the same number of parties (WaitForSecondParty asks for 2)"
    )]
    PartiesMismatch {
        /// The size of the group forming under the id.
        forming: u32,
        /// The size this caller asked for.
        asked: u32,
    },
    /// This caller's payload would take the group's over `--max-group-bytes`,
    /// and so the answer every member gets over what a client accepts.
    #[error(
        "the group forming under this id holds {held} bytes of payloads, and {payload} more \
         would take it over the limit of {limit} bytes (--max-group-bytes); send a smaller payload"
    )]
    GroupTooLarge {
        /// The payloads of the members already waiting, in bytes.
        held: usize,
        /// This caller's payload, in bytes.
        payload: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The call's attempt key was first sent with another id, group size or
    /// payload: a key stands for one wait, and its answer is that wait's.
    #[error(
        "this attempt key was first sent with {}; send the same request on every retry \
         of one wait, and a new key for each new wait",
        .0.as_str()
    )]
    AttemptReused(Reuse),
    /// A newer call with the same attempt key took this wait over: the
    /// answer goes to it.
    #[error("a newer call with the same attempt key took this wait over; its answer goes there")]
    Superseded,
    /// The wait was withdrawn ([`Engine::withdraw`]): its caller gave up,
    /// and a try with its attempt key within the grace is refused.
    #[error("this wait was withdrawn with its attempt key; a new wait needs a new attempt key")]
    Withdrawn,
}

/// The interface every pairing engine offers: the in-process one
/// ([`LocalEngine`]), and [`RedisEngine`], which replicas share.
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
    /// nothing to add to what [`Attempts`] keeps.
    fn gather_keyed(
        &self,
        (id, parties, offer): (Id, Parties, Offer),
        deadline: Instant,
        attempt: Attempt<'_>,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        let _ = attempt;
        self.gather(id, parties, offer, deadline)
    }

    /// The meeting place's part of withdrawing the keyed wait `key` for
    /// `id` ([`Attempts::withdraw`] does the rest): an engine that replicas
    /// share takes the wait's place out wherever it is held, unless it was
    /// decided first, tells the replica that holds it, and keeps the
    /// withdrawal for `grace`, so that a try with the key still on its way
    /// is refused through any replica. An engine in one process has no
    /// place of its own for keyed waits: [`Attempts`] holds them.
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
        let group = shard::Group {
            parties: parties.get(),
            max_bytes: self.limits.meeting_bytes(parties.get()),
        };
        let parking = match self
            .shard(hash)
            .arrive(id, hash, group, offer, &self.occupancy)
        {
            // The last caller never waits: it finds the others already there.
            Arrival::Completed(position, offers) => {
                return Ok(Meeting::new(position, offers, Duration::ZERO));
            }
            Arrival::Closed => return Err(PairError::ShuttingDown),
            Arrival::Full => return Err(self.limits.full()),
            Arrival::Mismatch { forming } => {
                return Err(PairError::PartiesMismatch {
                    forming,
                    asked: parties.get(),
                });
            }
            Arrival::TooLarge { held, payload } => {
                return Err(self.limits.too_large(held, payload));
            }
            Arrival::Parked(parking) => parking,
        };
        let start = Instant::now();
        match parking.outcome(give_up.until(deadline)).await {
            Outcome::Completed(position, offers) => {
                Ok(Meeting::new(position, offers, start.elapsed()))
            }
            Outcome::TimedOut if give_up.given_up() => Err(PairError::Withdrawn),
            Outcome::TimedOut => Err(PairError::TimedOut),
            Outcome::Closed => Err(PairError::ShuttingDown),
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
        (id, parties, offer): (Id, Parties, Offer),
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

/// Whichever engine the configuration chose: the one type the service, the
/// transports and the server hold, so none of them names an engine.
///
/// An enum rather than a trait object, so that a local call's future is not
/// boxed: every byte of it is paid once per parked caller.
#[derive(Debug)]
// One per process: its size does not matter, and boxing would add a pointer
// chase to every call.
#[allow(clippy::large_enum_variant)]
pub enum AnyEngine {
    /// One process is the meeting place (the default).
    Local(LocalEngine),
    /// Replicas meet in Redis (`--redis-url`).
    Redis(RedisEngine),
}

impl From<LocalEngine> for AnyEngine {
    fn from(engine: LocalEngine) -> Self {
        Self::Local(engine)
    }
}

impl From<RedisEngine> for AnyEngine {
    fn from(engine: RedisEngine) -> Self {
        Self::Redis(engine)
    }
}

/// Why no engine could be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `--redis-url` or its companions are not usable.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

impl AnyEngine {
    /// The one place the engine is chosen: Redis with `--redis-url`, this
    /// process otherwise. An engine with series of its own registers them
    /// in `registry`.
    pub fn build(
        redis: &RedisArgs,
        limits: EngineLimits,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Self, EngineError> {
        Ok(match redis.engine_config(limits)? {
            None => LocalEngine::with_limits(limits).into(),
            Some(config) => RedisEngine::start(config, registry)?.into(),
        })
    }
}

pin_project_lite::pin_project! {
    /// [`AnyEngine::gather`]'s future: the chosen engine's, unboxed.
    #[project = MeetProj]
    enum Meet<L, R> {
        /// The local engine's call.
        Local { #[pin] call: L },
        /// The Redis engine's call.
        Redis { #[pin] call: R },
    }
}

impl<L, R, T> Future for Meet<L, R>
where
    L: Future<Output = T>,
    R: Future<Output = T>,
{
    type Output = T;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            MeetProj::Local { call } => call.poll(cx),
            MeetProj::Redis { call } => call.poll(cx),
        }
    }
}

impl Engine for AnyEngine {
    fn gather(
        &self,
        id: Id,
        parties: Parties,
        offer: Offer,
        deadline: Instant,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        match self {
            Self::Local(engine) => Meet::Local {
                call: engine.gather(id, parties, offer, deadline),
            },
            Self::Redis(engine) => Meet::Redis {
                call: engine.gather(id, parties, offer, deadline),
            },
        }
    }

    fn gather_keyed(
        &self,
        call: (Id, Parties, Offer),
        deadline: Instant,
        attempt: Attempt<'_>,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        match self {
            Self::Local(engine) => Meet::Local {
                call: engine.gather_keyed(call, deadline, attempt),
            },
            Self::Redis(engine) => Meet::Redis {
                call: engine.gather_keyed(call, deadline, attempt),
            },
        }
    }

    fn withdraw(
        &self,
        id: Id,
        key: &AttemptKey,
        grace: Duration,
    ) -> impl Future<Output = Result<Withdrawal, PairError>> + Send {
        match self {
            Self::Local(engine) => Meet::Local {
                call: engine.withdraw(id, key, grace),
            },
            Self::Redis(engine) => Meet::Redis {
                call: engine.withdraw(id, key, grace),
            },
        }
    }

    async fn close(&self) {
        match self {
            Self::Local(engine) => engine.close().await,
            Self::Redis(engine) => engine.close().await,
        }
    }

    fn waiting(&self) -> usize {
        match self {
            Self::Local(engine) => engine.waiting(),
            Self::Redis(engine) => engine.waiting(),
        }
    }

    fn reachable(&self) -> watch::Receiver<bool> {
        match self {
            Self::Local(engine) => engine.reachable(),
            Self::Redis(engine) => engine.reachable(),
        }
    }

    fn unreachable_reason(&self) -> &'static str {
        match self {
            Self::Local(engine) => engine.unreachable_reason(),
            Self::Redis(engine) => engine.unreachable_reason(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, task::Poll};

    use super::*;

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
        let group = shard::Group {
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
        let (Arrival::Parked(gone), Arrival::Parked(b)) = (arrive(b"gone"), arrive(b"b")) else {
            panic!("the first two wait");
        };
        gone.leave_without_cleanup();
        // The cap (2) is full until the one that left is dropped.
        let Arrival::Parked(c) = arrive(b"c") else {
            panic!("counted a member that had gone");
        };
        assert_eq!(shard.waiting(), 2);
        assert_eq!(occupancy.taken(), 2);
        let Arrival::Completed(2, Offers::All(all)) = arrive(b"d") else {
            panic!("the group did not complete");
        };
        let payloads: Vec<_> = all.iter().map(|o| o.payload.clone()).collect();
        assert_eq!(payloads, ["b", "c", "d"]);
        for (parking, position) in [(b, 0), (c, 1)] {
            let outcome = futures_poll(std::pin::pin!(parking.outcome(std::future::pending())));
            assert!(
                matches!(outcome, Poll::Ready(shard::Outcome::Completed(p, _)) if p == position)
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
    async fn a_third_caller_starts_a_new_pair() {
        let engine = LocalEngine::new();
        let first = engine.meet(id("a"), Offer::default(), after(FAR));
        tokio::pin!(first);
        assert!(futures_poll(first.as_mut()).is_pending());
        engine
            .meet(id("a"), Offer::default(), after(FAR))
            .await
            .unwrap();
        assert_eq!(first.await.unwrap().role(), Role::First);

        let third = engine.meet(id("a"), Offer::default(), after(SECOND));
        assert_eq!(third.await, Err(PairError::TimedOut));
        assert_eq!(engine.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn different_ids_do_not_pair() {
        let engine = LocalEngine::new();
        let deadline = Duration::from_millis(500);
        let (a, b) = tokio::join!(
            engine.meet(id("a"), Offer::default(), after(deadline)),
            engine.meet(id("b"), Offer::default(), after(deadline)),
        );
        assert!(matches!(a, Err(PairError::TimedOut)));
        assert!(matches!(b, Err(PairError::TimedOut)));
        assert_eq!(engine.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_nothing_behind() {
        let engine = LocalEngine::new();
        {
            let gone = engine.meet(id("a"), Bytes::from_static(b"stale").into(), after(FAR));
            tokio::pin!(gone);
            assert!(futures_poll(gone.as_mut()).is_pending());
            assert_eq!(engine.waiting(), 1);
        }
        assert_eq!(engine.waiting(), 0);

        // The next caller waits instead of pairing with the one that left.
        let next = engine.meet(id("a"), Offer::default(), after(SECOND));
        assert!(matches!(next.await, Err(PairError::TimedOut)));
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
