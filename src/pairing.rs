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

use std::{
    fmt,
    hash::BuildHasher,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hashbrown::HashTable;
use tokio::{
    sync::oneshot,
    time::{Instant, sleep_until},
};

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

/// Which side of a pair a caller took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Arrived first and waited for the second party.
    First,
    /// Arrived second and completed the pair.
    Second,
}

/// What a caller learns when its pair completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meeting {
    /// Which side this caller was.
    pub role: Role,
    /// The other party's payload, exactly as it was sent.
    pub peer_payload: Bytes,
    /// How long this caller waited for the pair.
    pub waited: Duration,
}

/// Why a caller did not pair. Both cases leave nothing behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// Nobody came with the same id before the deadline.
    #[error("nobody else arrived with this id within {}", whole_millis(*wait))]
    TimedOut {
        /// The wait the caller was allowed: from its arrival to its deadline.
        wait: Duration,
    },
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
}

/// A wait as people read it: `1s 950ms`, not `1s 949ms 998us 389ns`.
fn whole_millis(wait: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(wait.as_millis() as u64))
}

/// The interface every pairing engine offers: the in-process one here, and
/// later ones that share state between replicas (Redis, say).
///
/// Implementations must keep the invariant in the module docs, and must
/// remove a caller's waiter when the future returned by `meet` is dropped.
pub trait Engine: Send + Sync + 'static {
    /// Meets the other caller with `id`, or gives up after `wait`.
    ///
    /// `payload` goes to the partner; the partner's comes back in the
    /// [`Meeting`].
    fn meet(
        &self,
        id: Id,
        payload: Bytes,
        wait: Duration,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send;

    /// Answers every parked caller [`PairError::ShuttingDown`], and every
    /// later one too. Shutdown uses it so that no caller hangs.
    fn close(&self);

    /// How many callers are parked right now.
    fn waiting(&self) -> usize;
}

/// Shards spread ids over independent locks, so that callers on different
/// cores rarely contend. A power of two, and comfortably above the core count.
const SHARDS: usize = 256;

/// The in-process engine: a sharded map from id to the caller waiting on it.
pub struct LocalEngine {
    shards: Box<[Shard]>,
    // Keyed per process: ids come from callers, so a fixed hash would let
    // them aim every id at one bucket.
    hasher: std::hash::RandomState,
    occupancy: Occupancy,
}

impl LocalEngine {
    /// An empty, open engine with no cap on waiting callers.
    pub fn new() -> Self {
        Self::with_capacity(usize::MAX)
    }

    /// An empty, open engine that holds at most `capacity` waiting callers,
    /// so that no flood of callers can exhaust the server's memory. A caller
    /// that completes a pair never counts against it.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: std::hash::RandomState::new(),
            occupancy: Occupancy {
                taken: CachePadded(AtomicUsize::new(0)),
                capacity,
                spares_per_shard: usize::from(capacity >= SHARDS * 256),
            },
        }
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

impl Engine for LocalEngine {
    async fn meet(&self, id: Id, payload: Bytes, wait: Duration) -> Result<Meeting, PairError> {
        let hash = self.hasher.hash_one(&id);
        let mut parking = match self.shard(hash).arrive(id, hash, payload, &self.occupancy) {
            // The second caller never waits: it finds its partner already there.
            Arrival::Paired(peer_payload) => {
                return Ok(Meeting {
                    role: Role::Second,
                    peer_payload,
                    waited: Duration::ZERO,
                });
            }
            Arrival::Closed => return Err(PairError::ShuttingDown),
            Arrival::Full => {
                return Err(PairError::Full {
                    capacity: self.occupancy.capacity,
                });
            }
            Arrival::Parked(parking) => parking,
        };
        let start = Instant::now();
        let deadline = start + wait;

        let delivered = tokio::select! {
            biased;
            delivered = &mut parking.rx => delivered.ok(),
            () = sleep_until(deadline) => {
                if parking.withdraw() {
                    return Err(PairError::TimedOut { wait });
                }
                // Too late to withdraw: the partner removed the entry first,
                // and handed its payload over before releasing the lock.
                parking.rx.try_recv().ok()
            }
        };
        parking.settled = true;
        match delivered {
            Some(peer_payload) => Ok(Meeting {
                role: Role::First,
                peer_payload,
                waited: start.elapsed(),
            }),
            // The sender was dropped without a payload: only `close` does that.
            None => Err(PairError::ShuttingDown),
        }
    }

    fn close(&self) {
        for shard in self.shards.iter() {
            let mut state = shard.lock();
            state.closed = true;
            // Dropping the senders wakes each parked caller with an error,
            // which it reports as `ShuttingDown`.
            state.table.clear();
        }
    }

    fn waiting(&self) -> usize {
        self.shards.iter().map(|s| s.lock().table.len()).sum()
    }
}

/// Places for parked callers, against the cap.
///
/// One counter for the whole engine would put a cache line that every core
/// writes on every park (it cut the engine's two-core scaling from 1.55 to
/// 1.23). So a shard that frees a place may keep it as a spare for its next
/// parked caller instead of handing it back. With large caps a shard keeps at
/// most one spare, so the cap holds to within [`SHARDS`] places (0.4% at the
/// smallest cap that allows spares); below that, every place goes through the
/// counter and the cap is exact.
struct Occupancy {
    /// Places taken: parked callers plus the shards' spares.
    taken: CachePadded<AtomicUsize>,
    capacity: usize,
    /// How many spares one shard may keep.
    spares_per_shard: usize,
}

/// Keeps a hot atomic on cache lines of its own.
#[repr(align(128))]
struct CachePadded<T>(T);

impl Occupancy {
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
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    state: Mutex<ShardState>,
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
    payload: Bytes,
    /// Brings the partner's payload back to the waiting caller.
    tx: oneshot::Sender<Bytes>,
}

enum Arrival<'a> {
    Paired(Bytes),
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
    fn arrive<'a>(
        &'a self,
        id: Id,
        hash: u64,
        mut payload: Bytes,
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
            // on the payload already being in its channel.
            match waiter.tx.send(payload) {
                Ok(()) => return Arrival::Paired(waiter.payload),
                // Its caller went away and its cleanup has not run yet. Never
                // pair with it: park in its place instead.
                Err(returned) => payload = returned,
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
            payload,
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
}

/// A parked caller's claim on its entry. Dropping it unsettled (the caller
/// went away) removes the entry, so nobody can pair with a caller that left.
struct Parking<'a> {
    shard: &'a Shard,
    occupancy: &'a Occupancy,
    hash: u64,
    ticket: u64,
    /// Set once the outcome is known and the entry is already gone.
    settled: bool,
    // Declared last so it drops after `Drop::drop` has removed the entry.
    rx: oneshot::Receiver<Bytes>,
}

impl Parking<'_> {
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

#[cfg(test)]
mod tests {
    use std::{sync::Arc, task::Poll};

    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    const FAR: Duration = Duration::from_secs(3600);
    const SECOND: Duration = Duration::from_secs(1);

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

    #[test]
    fn debug_does_not_leak_the_id() {
        assert_eq!(format!("{:?}", id("secret-code")), "Id(11 bytes)");
    }

    #[tokio::test(start_paused = true)]
    async fn two_callers_pair_and_swap_payloads() {
        let engine = Arc::new(LocalEngine::new());
        let e = engine.clone();
        let first = tokio::spawn(async move {
            e.meet(id("a"), Bytes::from_static(b"from first"), FAR)
                .await
        });
        tokio::task::yield_now().await;
        assert_eq!(engine.waiting(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;

        let second = engine
            .meet(id("a"), Bytes::from_static(b"from second"), FAR)
            .await
            .unwrap();
        let first = first.await.unwrap().unwrap();

        assert_eq!(second.role, Role::Second);
        assert_eq!(second.peer_payload, "from first");
        assert_eq!(second.waited, Duration::ZERO);
        assert_eq!(first.role, Role::First);
        assert_eq!(first.peer_payload, "from second");
        assert_eq!(first.waited, Duration::from_secs(2));
        assert_eq!(engine.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_third_caller_starts_a_new_pair() {
        let engine = LocalEngine::new();
        let first = engine.meet(id("a"), Bytes::new(), FAR);
        tokio::pin!(first);
        assert!(futures_poll(first.as_mut()).is_pending());
        engine.meet(id("a"), Bytes::new(), FAR).await.unwrap();
        assert_eq!(first.await.unwrap().role, Role::First);

        let third = engine.meet(id("a"), Bytes::new(), SECOND);
        assert_eq!(
            third.await,
            Err(PairError::TimedOut {
                wait: Duration::from_secs(1)
            })
        );
        assert_eq!(engine.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn different_ids_do_not_pair() {
        let engine = LocalEngine::new();
        let deadline = Duration::from_millis(500);
        let (a, b) = tokio::join!(
            engine.meet(id("a"), Bytes::new(), deadline),
            engine.meet(id("b"), Bytes::new(), deadline),
        );
        assert!(matches!(a, Err(PairError::TimedOut { .. })));
        assert!(matches!(b, Err(PairError::TimedOut { .. })));
        assert_eq!(engine.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_nothing_behind() {
        let engine = LocalEngine::new();
        {
            let gone = engine.meet(id("a"), Bytes::from_static(b"stale"), FAR);
            tokio::pin!(gone);
            assert!(futures_poll(gone.as_mut()).is_pending());
            assert_eq!(engine.waiting(), 1);
        }
        assert_eq!(engine.waiting(), 0);

        // The next caller waits instead of pairing with the one that left.
        let next = engine.meet(id("a"), Bytes::new(), SECOND);
        assert!(matches!(next.await, Err(PairError::TimedOut { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partner_arriving_after_the_deadline_fired_but_before_the_waiter_ran_still_pairs_both()
     {
        let engine = LocalEngine::new();
        let deadline = SECOND;
        let first = engine.meet(id("a"), Bytes::from_static(b"1"), deadline);
        tokio::pin!(first);
        assert!(futures_poll(first.as_mut()).is_pending());

        // The deadline passes, but the waiter has not been polled since; the
        // partner gets there first and takes the entry.
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = engine.meet(id("a"), Bytes::from_static(b"2"), FAR).await;
        assert_eq!(second.unwrap().peer_payload, "1");

        let first = first.await.unwrap();
        assert_eq!(first.role, Role::First);
        assert_eq!(first.peer_payload, "2");
    }

    #[tokio::test(start_paused = true)]
    async fn close_answers_parked_and_later_callers() {
        let engine = LocalEngine::new();
        let parked = engine.meet(id("a"), Bytes::new(), FAR);
        tokio::pin!(parked);
        assert!(futures_poll(parked.as_mut()).is_pending());

        engine.close();
        assert_eq!(parked.await, Err(PairError::ShuttingDown));
        assert_eq!(
            engine.meet(id("b"), Bytes::new(), FAR).await,
            Err(PairError::ShuttingDown)
        );
        assert_eq!(engine.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_counts_waiting_callers_only() {
        let engine = LocalEngine::with_capacity(2);
        let a = engine.meet(id("a"), Bytes::new(), FAR);
        tokio::pin!(a);
        let mut b = Box::pin(engine.meet(id("b"), Bytes::new(), FAR));
        assert!(futures_poll(a.as_mut()).is_pending());
        assert!(futures_poll(b.as_mut()).is_pending());
        assert_eq!(engine.waiting(), 2);

        // A third waiter is refused, and leaves nothing behind...
        assert_eq!(
            engine.meet(id("c"), Bytes::new(), FAR).await,
            Err(PairError::Full { capacity: 2 })
        );
        // ...but a caller that completes a pair never waits, so it is let in.
        assert_eq!(
            engine.meet(id("a"), Bytes::new(), FAR).await.unwrap().role,
            Role::Second
        );
        assert_eq!(a.await.unwrap().role, Role::First);
        assert_eq!(engine.waiting(), 1);

        // A place freed by a timeout or a departure is free again.
        let c = engine.meet(id("c"), Bytes::new(), SECOND);
        assert!(matches!(c.await, Err(PairError::TimedOut { .. })));
        drop(b);
        assert_eq!(engine.waiting(), 0);
        engine.close();
        assert_eq!(engine.waiting(), 0);
    }

    /// Polls a future once, as an executor would, without waiting for it.
    fn futures_poll<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut std::task::Context::from_waker(waker))
    }
}
