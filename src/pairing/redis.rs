//! The Redis engine: replicas meet in one Redis, so two callers with one id
//! pair whichever replicas they reached.
//!
//! Keys hold the truth, and one Lua script (`redis.lua`, which documents the
//! keys and messages) takes every decision about an id atomically. Pub/sub
//! only wakes replicas up: each replica subscribes to one channel of its own
//! (on a cluster, one shard channel per bucket of ids: `slots.rs`), on a
//! RESP3 connection that carries nothing else. One primary, Sentinel and a
//! cluster differ only in how those connections are made (`links.rs`). Redis holds a subscribed
//! connection's replies to its pub/sub output-buffer limit (32 MiB by
//! default, then it cuts the connection), and a group's payloads, read once
//! by each member, would pass it: commands go over a connection of their own.
//!
//! How a pair happens, and why nobody pairs with a caller that left:
//! 1. The first caller's replica runs `arrive`: the caller parks in the id's
//!    hash, naming its replica's channel.
//! 2. The second caller's `arrive` finds it, and PUBLISHes an offer to that
//!    channel. 0 receivers means the waiter's replica is gone (killed, or cut
//!    off from Redis), so the second caller takes the waiter's place instead.
//! 3. The waiter's replica accepts the offer (`accept`) only if its caller is
//!    still there. That script is where the pair is decided, once; it sends
//!    the waiter's payload to the second caller's replica, and leaves it in a
//!    result key as well, in case the message is missed.
//!
//! A caller that leaves (cancel, disconnect, shutdown, lost Redis) runs
//! `leave` from a task started in `Drop`. Until that has run, an offer for it
//! reaches its replica, which no longer knows the caller, and answers with
//! `leave` itself; so a caller that left is never paired afterwards.

use std::{
    collections::HashMap,
    fmt,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, OnceLock, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use prometheus_client::registry::Registry;
use redis::{PushInfo, PushKind, Script, Value};
use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    time::{Instant, sleep_until, timeout, timeout_at},
};

mod config;
mod guard;
mod links;
mod metrics;
mod probe;
mod slots;
mod wire;

use config::Deployment;
pub use config::{RedisArgs, RedisConfig, RedisError, redact};
use guard::Guard;
use links::{Conn, Connector, Links, Pushes};
use metrics::RedisMetrics;
use probe::{probe, sweep};
use slots::{BUCKETS, Digest};
use wire::{seal, settled, unexpected, unseal, wait_ms};

use super::occupancy::Occupancy;
use super::{
    Attempt, AttemptKey, Delivery, Engine, EngineLimits, Id, Meeting, Offer, Offers, PairError,
    Parties, Reuse, Role, Withdrawal,
};
use crate::hex::Hex16;

/// A command may take this many `--redis-timeout`s: the probe, not one slow
/// command, decides that Redis is unreachable, since a command can queue
/// behind a burst of others while Redis is well.
const COMMANDS_WAIT: u32 = 10;

/// The most commands a replica has in flight to Redis at once: enough to keep
/// the connection's pipeline full. A burst of callers waits its turn before
/// its commands are built, rather than as thousands of commands queued at
/// once, whose buffers would outlive the burst in the allocator.
const IN_FLIGHT: usize = 256;

/// The longest pause between two tries of an arrival that found the id busy.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long an attempt key's binding to its id outlives the longest its
/// answer can be kept (its wait, then the grace), as the script's entries
/// outlive their callers' deadlines (`SLACK_MS` in `redis.lua`).
const BINDING_SLACK: Duration = Duration::from_secs(1);

/// What a parked caller's replica learns about it.
#[derive(Debug)]
enum Event {
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
struct Slot {
    events: Mutex<std::collections::VecDeque<Event>>,
    /// `notify_one` keeps a permit when nobody waits, so an event that comes
    /// between a look at the queue and the wait is not missed.
    ready: Notify,
}

impl Slot {
    fn send(&self, event: Event) {
        self.lock().push_back(event);
        self.ready.notify_one();
    }

    fn try_next(&self) -> Option<Event> {
        self.lock().pop_front()
    }

    async fn next(&self) -> Event {
        loop {
            if let Some(event) = self.try_next() {
                return event;
            }
            self.ready.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The engine that replicas share through Redis. See the module docs.
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    /// The callers' commands, and this replica's subscription with the
    /// probe's PING: on the callers' connection, a PING would queue behind
    /// their commands, and a burst would look like an outage. `None` until
    /// the probe first connects.
    links: ArcSwapOption<Links>,
    /// Makes the links, and makes them again where a failover moves the
    /// primary.
    connector: Connector,
    /// Bumped whenever the links are replaced: pushes from older links
    /// (closing as they are dropped) are not news about the new ones.
    generation: AtomicU64,
    script: Script,
    key_prefix: String,
    /// This replica's channels: one, or in a cluster one per bucket (see
    /// `slots.rs`).
    channels: Vec<String>,
    /// The start of this replica's callers' tokens, and of its channels.
    replica: String,
    next_ticket: AtomicU64,
    /// The callers waiting through this replica, by ticket.
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    /// Places taken against the cap: callers parked in Redis through this
    /// replica, and arrivals that may park, from before they ask Redis.
    places: Occupancy,
    /// Callers parked in Redis through this replica (not offerers).
    parked: AtomicUsize,
    limits: EngineLimits,
    timeout: Duration,
    closed: AtomicBool,
    reachable: watch::Sender<bool>,
    /// While the configuration is what keeps Redis out of reach (an unknown
    /// master name, a seed that is not a cluster): what new callers are
    /// told, so that it reaches whoever can fix it.
    misconfigured: Mutex<Option<String>>,
    /// Cleanups started from `Drop` that have not finished yet.
    cleanups: AtomicUsize,
    /// Woken whenever a slot or a cleanup ends, for `close`.
    settled: Notify,
    /// Result keys whose message arrived, for [`sweep`] to remove.
    janitor: mpsc::UnboundedSender<String>,
    /// Turns for commands in flight: [`IN_FLIGHT`] of them.
    turns: Semaphore,
    metrics: RedisMetrics,
}

impl fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEngine")
            .field("channel", &self.inner.channels[0])
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl RedisEngine {
    /// Connects to Redis in the background and returns at once: the replica
    /// starts (not ready) even while Redis is down, and becomes ready when
    /// Redis answers. Its series go into `registry`.
    pub fn start(config: RedisConfig, registry: &mut Registry) -> Result<Self, RedisError> {
        if config.key_prefix.contains(['{', '}']) {
            return Err(RedisError::BadPrefix(config.key_prefix));
        }
        let deployment = Deployment::parse(&config.url, config.password.as_deref())?;
        // Messages are handled where the connection hands them over, with
        // no task in between: the engine is filled in once it exists.
        let engine: Arc<OnceLock<Weak<Inner>>> = Arc::default();
        let connector = Connector::new(&deployment, &config)?;
        tracing::info!(
            redis = %redact(&config.url),
            redis_mode = deployment.mode(),
            redis_key_prefix = %config.key_prefix,
            redis_timeout = %humantime::format_duration(config.timeout),
            redis_password_file = config.password.is_some(),
            "meeting through Redis"
        );
        slots::prepare();
        let metrics = RedisMetrics::register(registry);
        let (janitor, swept) = mpsc::unbounded_channel();
        let replica = format!("{:016x}", std::hash::RandomState::new().hash_one(0u8));
        let channels = match connector.sharded() {
            true => (0..BUCKETS)
                .map(|bucket| slots::shard_channel(&config.key_prefix, bucket, &replica))
                .collect(),
            false => vec![format!("{}replica:{replica}", config.key_prefix)],
        };
        let (reachable, _) = watch::channel(false);
        metrics.reachable.set(0);
        let inner = Arc::new(Inner {
            links: ArcSwapOption::empty(),
            connector,
            generation: AtomicU64::new(0),
            script: Script::new(include_str!("redis.lua")),
            channels,
            key_prefix: config.key_prefix,
            replica,
            next_ticket: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
            places: Occupancy::exact(config.limits.max_waiters),
            parked: AtomicUsize::new(0),
            limits: config.limits,
            timeout: config.timeout,
            closed: AtomicBool::new(false),
            reachable,
            misconfigured: Mutex::new(None),
            cleanups: AtomicUsize::new(0),
            settled: Notify::new(),
            janitor,
            turns: Semaphore::new(IN_FLIGHT),
            metrics,
        });
        let _ = engine.set(Arc::downgrade(&inner));
        // Both hold the engine weakly, and end with it.
        tokio::spawn(sweep(Arc::downgrade(&inner), swept));
        tokio::spawn(probe(Arc::downgrade(&inner), engine));
        Ok(Self { inner })
    }

    /// One of this replica's pub/sub channels (the first bucket's, in a
    /// cluster), for tests that check what is left in Redis.
    pub fn channel(&self) -> &str {
        &self.inner.channels[0]
    }

    /// The key that `id`'s meeting place has under `prefix`, for tools and
    /// tests that look into Redis.
    pub fn key_of(prefix: &str, id: &Id) -> String {
        slots::key(prefix, &id_digest(id))
    }

    /// Waits until every caller that went away unanswered is out of Redis.
    /// A caller's leaving is sent to Redis after it has gone, and until it
    /// gets there a caller of the same id still meets it: a test that
    /// cancels a caller and then expects it gone waits for this.
    pub async fn let_go(&self) {
        let inner = &self.inner;
        loop {
            let settled = inner.settled.notified();
            if inner.cleanups.load(Ordering::Acquire) == 0 {
                return;
            }
            settled.await;
        }
    }
}

/// Hands the pushes of one generation of links to the engine, once it
/// exists.
fn pushes_for(engine: &Arc<OnceLock<Weak<Inner>>>, generation: u64) -> Pushes {
    let engine = engine.clone();
    Arc::new(move |push: PushInfo| {
        if let Some(inner) = engine.get().and_then(Weak::upgrade)
            && generation == inner.generation.load(Ordering::Acquire)
        {
            inner.pushed(push);
        }
    })
}

/// What an arrival brings to Redis, used up by the time it waits.
struct Arrival {
    sealed: Bytes,
    payload_len: usize,
    attempt: Option<Keyed>,
}

/// What Redis keeps of a keyed call's [`Attempt`].
struct Keyed {
    /// The key's hash ([`super::AttemptKey::hash`]).
    hash: Digest,
    /// How long the answer is kept for.
    grace: Duration,
    /// Which try it is ([`super::TryOrder`]): the tries before it, and
    /// when it reached its replica, in microseconds since the Unix epoch.
    /// A try earlier than the one holding the place is refused it.
    previous: u32,
    tried_us: u64,
}

impl RedisEngine {
    /// Boxed: this future is larger than the local engine's, and inline in
    /// [`super::AnyEngine`]'s it would make every local call as large.
    fn call(
        &self,
        (id, parties, offer): (Id, Parties, Offer),
        deadline: Instant,
        attempt: Option<Keyed>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Meeting, PairError>> + Send>> {
        let inner = self.inner.clone();
        // Hashed now, so that the waiting future keeps 16 bytes, not the id.
        let digest = id_digest(&id);
        // Boxed: used up on arrival, it would otherwise take room in the
        // future for as long as the caller waits.
        let arrival = Box::new(Arrival {
            payload_len: offer.payload.len(),
            sealed: seal(offer),
            attempt,
        });
        Box::pin(async move {
            let met = inner.meet(digest, parties, arrival, deadline).await?;
            let offers = match met.offers {
                Sealed::Peer(peer) => Offers::Peer(unseal(peer)),
                Sealed::All(all) => Offers::All(all.into_iter().map(unseal).collect()),
            };
            let mut meeting = Meeting::new(met.position, offers, met.waited);
            meeting.handed = met.handed;
            Ok(meeting)
        })
    }
}

impl Engine for RedisEngine {
    fn gather(
        &self,
        id: Id,
        parties: Parties,
        offer: Offer,
        deadline: Instant,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        self.call((id, parties, offer), deadline, None)
    }

    /// The answer (a pair's or a group's) is kept in Redis too, under the
    /// key's digest, for the grace, and the place is found by that digest:
    /// a retry through another replica (this one killed, say) gets the
    /// answer there, or takes the place back.
    fn gather_keyed(
        &self,
        call: (Id, Parties, Offer),
        deadline: Instant,
        attempt: Attempt<'_>,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        let since_epoch = (attempt.order.tried)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let keyed = Keyed {
            hash: attempt.key.hash(),
            grace: attempt.grace,
            previous: attempt.order.previous,
            tried_us: u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX),
        };
        self.call(call, deadline, Some(keyed))
    }

    /// By one script run on the id's key, through any replica: the
    /// place is found by the key's digest, wherever its caller parked.
    fn withdraw(
        &self,
        id: Id,
        key: &AttemptKey,
        grace: Duration,
    ) -> impl Future<Output = Result<Withdrawal, PairError>> + Send {
        let inner = self.inner.clone();
        let (digest, hash) = (id_digest(&id), key.hash());
        async move { inner.withdraw(digest, hash, grace).await }
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    fn waiting(&self) -> usize {
        self.inner.parked.load(Ordering::Relaxed)
    }

    fn reachable(&self) -> watch::Receiver<bool> {
        self.inner.reachable.subscribe()
    }

    fn unreachable_reason(&self) -> &'static str {
        UNREACHABLE
    }
}

/// What `arrive` decided.
enum Arrived {
    /// Parked; or, for a retry that took its place back, parked until its
    /// first try's deadline, this far off.
    Parked(Option<Duration>),
    Offered,
    Busy,
    Full,
    /// A group of this size is forming under the id.
    Mismatch(u32),
    /// The group's payloads already take this many bytes.
    TooLarge(usize),
    /// Decided as it arrived (a keyed caller that paired with a waiter
    /// whose replica is gone, or completed a group).
    Answered(Settled),
    /// A retry with an attempt key: the answer Redis kept for it.
    Kept(Settled),
    /// A try with an attempt key older than the one that holds its place.
    Superseded,
    /// A try with an attempt key whose wait was withdrawn.
    Withdrawn,
    /// A retry with an attempt key whose place or kept answer is another
    /// payload's, or whose key is bound to another id or group size.
    Reused(Reuse),
}

/// How an arrival ended up.
enum Placed {
    /// Parked, or offered to the waiter: its outcome is to come.
    /// `Reattached` if it took back the place of an earlier try with its
    /// attempt key.
    Waiting(Delivery),
    Refused(PairError),
    Answered(Settled, Delivery),
}

/// What a caller's replica learned, the offers still sealed.
struct Met {
    position: usize,
    offers: Sealed,
    waited: Duration,
    handed: Delivery,
}

/// The other members' sealed offers: a pair's partner's, or everyone's.
enum Sealed {
    Peer(Bytes),
    All(Vec<Bytes>),
}

/// What `accept`, `confirm` and `leave` decided.
enum Settled {
    /// Paired: the role, the partner's sealed offer, and how long Redis
    /// says the caller waited, where it keeps that (for an answer that a
    /// retry may be handed again).
    Paired(Role, Bytes, Option<Duration>),
    /// The group completed: this caller's position, every member's sealed
    /// offer, and how long Redis says it waited, for a caller with an
    /// attempt key (as for a pair).
    Grouped(usize, Vec<Bytes>, Option<Duration>),
    /// No pair: `accept` found the offer withdrawn, or `leave` removed the
    /// caller (or found it gone already).
    Unpaired,
}

impl Inner {
    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        // Nothing panics while holding it; the map is consistent at each step.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The meeting place of the id whose hash is `digest`.
    /// A waiting caller keeps only the hash, and builds the key when it
    /// sends a command: every byte it keeps is paid for as long as it waits.
    fn key(&self, digest: &Digest) -> String {
        slots::key(&self.key_prefix, digest)
    }

    /// The channel this replica hears about the id whose hash is `digest`
    /// on: in a cluster, the one in its key's slot.
    fn channel(&self, digest: &Digest) -> &str {
        match self.channels.len() {
            1 => &self.channels[0],
            _ => &self.channels[slots::bucket(digest)],
        }
    }

    /// On a cluster: a channel per bucket, and a script's keys in one slot.
    fn on_a_cluster(&self) -> bool {
        self.channels.len() > 1
    }

    /// Where a keyed caller's attempt key is bound to its id, and what the
    /// binding says: the id's hash, then the group size.
    fn binding(&self, guard: &Guard, keyed: &Keyed) -> (String, String) {
        let id = Hex16::new(&guard.digest);
        (
            slots::binding(&self.key_prefix, &keyed.hash),
            format!("{} {}", id.as_str(), guard.parties),
        )
    }

    fn token(&self, ticket: u64) -> String {
        format!("{}:{ticket}", self.replica)
    }

    fn unreachable_now(&self) -> Option<PairError> {
        if self.closed.load(Ordering::Acquire) {
            return Some(PairError::ShuttingDown);
        }
        if *self.reachable.borrow() {
            return None;
        }
        let misconfigured = self.lock_misconfigured().clone();
        Some(PairError::Unavailable(
            misconfigured.unwrap_or_else(|| UNREACHABLE.into()),
        ))
    }

    fn set_misconfigured(&self, problem: Option<String>) {
        *self.lock_misconfigured() = problem;
    }

    fn lock_misconfigured(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.misconfigured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn meet(
        self: Arc<Self>,
        digest: Digest,
        parties: Parties,
        arrival: Box<Arrival>,
        deadline: Instant,
    ) -> Result<Met, PairError> {
        if let Some(error) = self.unreachable_now() {
            return Err(error);
        }
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        // Registered before arriving: an offer can come before the answer.
        self.lock_slots().insert(ticket, slot.clone());
        let mut guard = Guard {
            inner: self.clone(),
            digest,
            ticket,
            deadline,
            parties: parties.get(),
            keyed: arrival.attempt.is_some(),
            place: false,
            parked: false,
            settled: false,
        };
        let start = Instant::now();
        // The first turn is waited for here, before anything is built for the
        // arrival: in a burst, thousands of callers wait for it at once, and
        // the allocator keeps what a burst needed. (Boxing this wait, to
        // shrink the waiting future by 120 bytes, measured worse: each caller
        // in the burst then holds a box of its own.)
        let turn = match self.turn().await {
            Ok(turn) => turn,
            Err(error) => {
                guard.settled = true;
                return Err(error);
            }
        };
        // Boxed: what arriving needs (the payload, a timer to back off with)
        // is then not part of the future that waits.
        let placed = Box::pin(self.arrive_until_placed(&mut guard, arrival, turn)).await?;
        let handed = match &placed {
            Placed::Waiting(handed) | Placed::Answered(_, handed) => *handed,
            Placed::Refused(_) => Delivery::Fresh,
        };

        // The payloads here are sealed offers; `gather` unseals them.
        let met = |settled| {
            let (position, offers, waited) = match settled {
                Settled::Paired(Role::First, peer, waited) => (0, Sealed::Peer(peer), waited),
                // Zero, as the contract says and the local engine and the
                // kept answer for a retry do: it found its partner waiting.
                Settled::Paired(Role::Second, peer, _) => {
                    (1, Sealed::Peer(peer), Some(Duration::ZERO))
                }
                Settled::Grouped(position, all, waited) => (position, Sealed::All(all), waited),
                Settled::Unpaired => return Err(PairError::TimedOut),
            };
            Ok(Met {
                position,
                offers,
                waited: waited.unwrap_or_else(|| start.elapsed()),
                handed,
            })
        };
        match placed {
            Placed::Waiting(_) => {}
            Placed::Refused(refused) => return Err(refused),
            Placed::Answered(answer, _) => return met(answer),
        }
        // A retry that took its place back keeps its first try's deadline.
        let deadline = guard.deadline;
        loop {
            let event = tokio::select! {
                event = slot.next() => event,
                () = sleep_until(deadline) => {
                    return met(Box::pin(self.at_deadline(&mut guard, &slot)).await?);
                }
            };
            match event {
                Event::Offer => {
                    let accepted = Box::pin(self.accept_in_turn(&guard)).await?;
                    if !matches!(accepted, Settled::Unpaired) {
                        guard.settled = true;
                        return met(accepted);
                    }
                }
                Event::Paired(peer_payload) => {
                    guard.settled = true;
                    return met(Settled::Paired(Role::Second, peer_payload, None));
                }
                Event::Grouped(position) => {
                    let claimed = Box::pin(self.group_result(&guard)).await;
                    guard.settled = true;
                    let (all, waited) = claimed?;
                    return met(Settled::Grouped(position, all, waited));
                }
                // Now a waiter, it takes a place against the cap like one;
                // with none left, it leaves (the guard removes it).
                Event::Promoted => {
                    if !guard.place {
                        if !self.places.take() {
                            return Err(self.limits.full());
                        }
                        guard.place = true;
                        self.parked.fetch_add(1, Ordering::Relaxed);
                        guard.parked = true;
                    }
                }
                // Nothing of it is left here: the retry holds its entry.
                Event::Superseded => {
                    guard.settled = true;
                    return Err(PairError::Superseded);
                }
                // Nothing of it is left either: the withdrawal took it out.
                Event::Withdrawn => {
                    guard.settled = true;
                    return Err(PairError::Withdrawn);
                }
                Event::Lost(reason) => return Err(PairError::Unavailable(reason)),
                Event::Closed if guard.keyed => {
                    return met(Box::pin(self.detach(&mut guard)).await?);
                }
                Event::Closed => return Err(PairError::ShuttingDown),
            }
        }
    }

    /// Withdraws the keyed wait whose attempt key hashes to `hash`, if it is
    /// still undecided (the script's `withdraw`).
    async fn withdraw(
        &self,
        digest: Digest,
        hash: Digest,
        grace: Duration,
    ) -> Result<Withdrawal, PairError> {
        if let Some(error) = self.unreachable_now() {
            return Err(error);
        }
        let _turn = self.turn().await?;
        let mut invocation = self.script.key(self.key(&digest));
        invocation
            .arg("withdraw")
            .arg("")
            .arg(Hex16::new(&hash).as_str())
            .arg(wait_ms(grace));
        let reply = self.run(&invocation).await?;
        let decided = match reply.first().map(Vec::as_slice) {
            Some(b"withdrawn") => return Ok(Withdrawal::Withdrawn),
            Some(b"unknown") => return Ok(Withdrawal::Unknown),
            Some(b"kept") => settled(reply.into_iter().skip(1).collect())?,
            // Found, and taken out as it was leaving.
            _ => settled(reply)?,
        };
        Ok(meeting_of(decided).map_or(Withdrawal::Withdrawn, Withdrawal::Met))
    }

    /// The deadline came: leave, unless an offer came first.
    async fn at_deadline(&self, guard: &mut Guard, slot: &Slot) -> Result<Settled, PairError> {
        let _turn = self.turn().await?;
        let settled = self.leave(&guard.key(), &guard.token(), true).await?;
        guard.settled = true;
        if !matches!(settled, Settled::Unpaired) {
            return Ok(settled);
        }
        // Its result key is gone only if the message that paired it arrived,
        // and then that message is waiting in its slot.
        while let Some(event) = slot.try_next() {
            match event {
                Event::Paired(peer_payload) => {
                    return Ok(Settled::Paired(Role::Second, peer_payload, None));
                }
                Event::Grouped(position) => {
                    let (all, waited) = self.group_result(guard).await?;
                    return Ok(Settled::Grouped(position, all, waited));
                }
                _ => {}
            }
        }
        Ok(Settled::Unpaired)
    }

    /// Shutting down, a waiter with an attempt key lets go of its place in
    /// Redis rather than take it out, so that a rolling restart costs it only
    /// a reconnect: its retry through another replica takes the place back
    /// within the grace, and a partner that comes first pairs with it and
    /// leaves the answer for the retry. An offer already made to it is
    /// accepted, and then the caller is answered here after all.
    async fn detach(&self, guard: &mut Guard) -> Result<Settled, PairError> {
        let _turn = self.turn().await?;
        let mut invocation = self.script.key(guard.key());
        invocation.arg("detach").arg(guard.token());
        let reply = self.run(&invocation).await?;
        if reply.first().map(Vec::as_slice) == Some(b"detached") {
            guard.settled = true;
            return Err(PairError::ShuttingDown);
        }
        match settled(reply)? {
            // Not its place (an offerer's, say): the guard takes it out.
            Settled::Unpaired => Err(PairError::ShuttingDown),
            answered => {
                guard.settled = true;
                Ok(answered)
            }
        }
    }

    /// The payloads of the member's completed group. Claimed through the
    /// member's own record of its group (not the key its message named), as
    /// its cleanup claims them if it goes first: either way once, so that
    /// the payloads go with their last reader.
    async fn group_result(
        &self,
        guard: &Guard,
    ) -> Result<(Vec<Bytes>, Option<Duration>), PairError> {
        let _turn = self.turn().await?;
        let mut invocation = self.script.key(guard.key());
        invocation.arg("claim").arg(guard.token());
        let reply = self.run(&invocation).await?;
        match settled(reply)? {
            Settled::Grouped(_, all, waited) => Ok((all, waited)),
            _ => Err(PairError::Unavailable(
                "the group completed, but its answer expired in Redis before it was read".into(),
            )),
        }
    }

    async fn accept_in_turn(&self, guard: &Guard) -> Result<Settled, PairError> {
        let _turn = self.turn().await?;
        self.accept(guard).await
    }

    /// Parks the caller in Redis, or offers it to the waiter there, trying
    /// again while the id is busy.
    async fn arrive_until_placed(
        &self,
        guard: &mut Guard,
        arrival: Box<Arrival>,
        turn: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<Placed, PairError> {
        let deadline = guard.deadline;
        // On a cluster, a keyed caller's key is bound by a command of its
        // own, first; off one, the arrival's script binds it.
        if let Some(keyed) = arrival.attempt.as_ref().filter(|_| self.on_a_cluster()) {
            // Refused or failed, nothing of the caller is in Redis yet.
            match Box::pin(self.bind_key(guard, keyed)).await {
                Ok(None) => {}
                Ok(Some(reuse)) => {
                    guard.settled = true;
                    return Ok(Placed::Refused(PairError::AttemptReused(reuse)));
                }
                Err(error) => {
                    guard.settled = true;
                    return Err(error);
                }
            }
        }
        let mut first_turn = Some(turn);
        let mut backoff = Duration::from_millis(1);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                guard.settled = true;
                return Ok(Placed::Refused(PairError::TimedOut));
            }
            let _turn = match first_turn.take() {
                Some(turn) => turn,
                None => self.turn().await?,
            };
            // A place against the cap, taken before asking, so that two
            // arrivals at once cannot both take the last one.
            let may_park = self.places.take();
            guard.place = may_park;
            // Each command's future is boxed, here and below: it lives for a
            // round trip, and inline it would size every waiting caller.
            let arrived = Box::pin(self.arrive(guard, &arrival, wait, may_park)).await;
            if let Ok(Arrived::Parked(left)) = arrived {
                if let Some(left) = left {
                    guard.deadline = guard.deadline.min(Instant::now() + left);
                }
                self.parked.fetch_add(1, Ordering::Relaxed);
                guard.parked = true;
            } else if guard.place {
                self.places.give_back();
                guard.place = false;
            }
            match arrived? {
                // Redis has the payload now: it (and the request buffer it
                // may be a slice of) is let go of as this returns.
                Arrived::Parked(Some(_)) => return Ok(Placed::Waiting(Delivery::Reattached)),
                Arrived::Parked(None) | Arrived::Offered => {
                    return Ok(Placed::Waiting(Delivery::Fresh));
                }
                Arrived::Answered(answer) => {
                    guard.settled = true;
                    return Ok(Placed::Answered(answer, Delivery::Fresh));
                }
                Arrived::Kept(answer) => {
                    guard.settled = true;
                    return Ok(Placed::Answered(answer, Delivery::Redelivered));
                }
                Arrived::Full => {
                    guard.settled = true;
                    return Ok(Placed::Refused(self.limits.full()));
                }
                Arrived::Superseded => {
                    guard.settled = true;
                    return Ok(Placed::Refused(PairError::Superseded));
                }
                Arrived::Withdrawn => {
                    guard.settled = true;
                    return Ok(Placed::Refused(PairError::Withdrawn));
                }
                Arrived::Reused(reuse) => {
                    guard.settled = true;
                    return Ok(Placed::Refused(PairError::AttemptReused(reuse)));
                }
                Arrived::Mismatch(forming) => {
                    guard.settled = true;
                    return Ok(Placed::Refused(PairError::PartiesMismatch {
                        forming,
                        asked: guard.parties,
                    }));
                }
                Arrived::TooLarge(held) => {
                    guard.settled = true;
                    let payload_len = arrival.payload_len;
                    return Ok(Placed::Refused(self.limits.too_large(held, payload_len)));
                }
                // Another caller is pairing with this id's waiter right now;
                // the id is free again within a round trip or two.
                Arrived::Busy => {
                    sleep_until(deadline.min(Instant::now() + backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn arrive(
        &self,
        guard: &Guard,
        arrival: &Arrival,
        wait: Duration,
        may_park: bool,
    ) -> Result<Arrived, PairError> {
        let (payload, payload_len) = (&arrival.sealed, arrival.payload_len);
        let (key, token) = (guard.key(), guard.token());
        let mut invocation = self.script.key(&key);
        let group = guard.parties > 2;
        invocation
            .arg(if group { "join" } else { "arrive" })
            .arg(&token)
            .arg(self.channel(&guard.digest))
            .arg(payload.as_ref())
            .arg(wait_ms(wait))
            .arg(if may_park { "1" } else { "0" });
        if group {
            invocation
                .arg(guard.parties)
                .arg(payload_len)
                .arg(self.limits.meeting_bytes(guard.parties));
        }
        let mut binding = None;
        if let Some(keyed) = &arrival.attempt {
            invocation
                .arg(Hex16::new(&keyed.hash).as_str())
                .arg(wait_ms(keyed.grace))
                .arg(keyed.previous)
                .arg(keyed.tried_us);
            if !self.on_a_cluster() {
                let (key, ours) = self.binding(guard, keyed);
                invocation
                    .key(key)
                    .arg(&ours)
                    .arg(binding_ms(wait, keyed.grace));
                binding = Some(ours);
            }
        }
        let reply = self.run(&invocation).await?;
        let number = || {
            reply
                .get(1)
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
                .ok_or_else(|| unexpected(&reply))
        };
        match reply.first().map(Vec::as_slice) {
            Some(b"parked") => Ok(Arrived::Parked(
                reply
                    .get(1)
                    .map(|_| number())
                    .transpose()?
                    .map(Duration::from_millis),
            )),
            Some(b"offered") => Ok(Arrived::Offered),
            Some(b"busy") => Ok(Arrived::Busy),
            Some(b"superseded") => Ok(Arrived::Superseded),
            Some(b"withdrawn") => Ok(Arrived::Withdrawn),
            Some(b"reused") => Ok(Arrived::Reused(Reuse::Payload)),
            Some(b"rebound") => {
                let ours = binding.as_ref().map(String::as_bytes);
                (reply.get(1).zip(ours))
                    .and_then(|(first, ours)| bound_to_another(first, ours))
                    .map(Arrived::Reused)
                    .ok_or_else(|| unexpected(&reply))
            }
            Some(b"full") => Ok(Arrived::Full),
            Some(b"mismatch") => Ok(Arrived::Mismatch(number()? as u32)),
            Some(b"toolarge") => Ok(Arrived::TooLarge(number()? as usize)),
            Some(b"first" | b"second" | b"group") => Ok(Arrived::Answered(settled(reply)?)),
            Some(b"kept") => Ok(Arrived::Kept(settled(reply.into_iter().skip(1).collect())?)),
            _ => Err(unexpected(&reply)),
        }
    }

    /// Binds a keyed call's attempt key to its id and group size in Redis,
    /// for as long as its wait and then its kept answer can last: a try
    /// that names another id or size is then refused through any replica,
    /// as the replica that saw the first try refuses it. On a cluster, with
    /// a command of its own (`SET NX GET`): the binding is in its key's
    /// slot, which a try with another id can find, not in the id's, where
    /// the script runs. (Off a cluster, the script binds it.)
    async fn bind_key(&self, guard: &Guard, keyed: &Keyed) -> Result<Option<Reuse>, PairError> {
        let wait = guard.deadline.saturating_duration_since(Instant::now());
        let (key, ours) = self.binding(guard, keyed);
        let mut command = redis::cmd("SET");
        command
            .arg(key)
            .arg(&ours)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(binding_ms(wait, keyed.grace));
        let first: Option<Vec<u8>> = self
            .send(|mut connection| async move { command.query_async(&mut connection).await })
            .await?;
        Ok(first.and_then(|first| bound_to_another(&first, ours.as_bytes())))
    }

    async fn accept(&self, guard: &Guard) -> Result<Settled, PairError> {
        let (key, token) = (guard.key(), guard.token());
        let mut invocation = self.script.key(&key);
        let confirm = guard.parties > 2;
        invocation
            .arg(if confirm { "confirm" } else { "accept" })
            .arg(&token);
        settled(self.run(&invocation).await?)
    }

    async fn leave(&self, key: &str, token: &str, can_accept: bool) -> Result<Settled, PairError> {
        let mut invocation = self.script.key(key);
        invocation
            .arg("leave")
            .arg(token)
            .arg(if can_accept { "1" } else { "0" });
        settled(self.run(&invocation).await?)
    }

    /// A turn to send a command (see [`IN_FLIGHT`]). Taken before the
    /// command's future is built, so that a caller waiting for its turn holds
    /// no more than this.
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PairError> {
        let mut reachable = self.reachable.subscribe();
        tokio::select! {
            turn = self.turns.acquire() => Ok(turn.expect("the semaphore is never closed")),
            _ = reachable.wait_for(|up| !up) => Err(PairError::Unavailable(UNREACHABLE.into())),
        }
    }

    /// Runs the script once and records the round trip. It fails at once
    /// when the probe finds Redis unreachable, so that no caller waits on a
    /// Redis that cannot answer; and after [`COMMANDS_WAIT`] timeouts in any
    /// case, since a command queued behind a burst may be slow while Redis
    /// is well.
    async fn run(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<Vec<u8>>, PairError> {
        self.send(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await
    }

    /// Sends one command, made by `command` on a handle to the commands'
    /// connection, as [`Inner::run`] says.
    async fn send<T, F>(&self, command: impl FnOnce(Conn) -> F) -> Result<T, PairError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let mut reachable = self.reachable.subscribe();
        let Some(links) = self.links.load_full() else {
            return Err(PairError::Unavailable(UNREACHABLE.into()));
        };
        let start = Instant::now();
        // Boxed: inline, this large future would be part of every waiting
        // caller's, though it lives only for a round trip.
        let command = Box::pin(command(links.commands.clone()));
        let reply = tokio::select! {
            reply = timeout(self.timeout * COMMANDS_WAIT, command) => reply,
            _ = reachable.wait_for(|up| !up) => {
                return Err(PairError::Unavailable(UNREACHABLE.into()));
            }
        };
        self.metrics
            .round_trips
            .observe(start.elapsed().as_secs_f64());
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            // This call fails; whether Redis is lost is for the probe and
            // the subscription to say (a broken subscriber connection pushes
            // a `Disconnection`, see `pushed`), not for one command.
            Ok(Err(error)) => Err(PairError::Unavailable(format!("Redis failed: {error}"))),
            Err(_) => Err(PairError::Unavailable(format!(
                "Redis did not answer within {}",
                humantime::format_duration(self.timeout * COMMANDS_WAIT)
            ))),
        }
    }

    /// Redis is unreachable: readiness goes down, and every caller waiting
    /// here is answered, since nothing it would be told can reach it now.
    /// Only the change does this: callers that arrive while Redis is away
    /// are refused as they arrive.
    fn lost(&self, reason: String) {
        if !self.reachable.send_replace(false) {
            return;
        }
        tracing::warn!(%reason, "Redis is unreachable; answering waiting callers UNAVAILABLE");
        self.metrics.reachable.set(0);
        for slot in self.lock_slots().values() {
            slot.send(Event::Lost(reason.clone()));
        }
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in self.lock_slots().values() {
            slot.send(Event::Closed);
        }
        loop {
            let settled = self.settled.notified();
            if self.lock_slots().is_empty() && self.cleanups.load(Ordering::Acquire) == 0 {
                return;
            }
            settled.await;
        }
    }

    /// Removes a caller that left from Redis. If Redis cannot be reached, it
    /// tries again once Redis is back (not on a timer, so that an outage does
    /// not turn into a storm of retries), until the entries would have
    /// expired anyway.
    async fn clean_up(self: Arc<Self>, key: String, token: String, deadline: Instant) {
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
        self.settled.notify_waiters();
    }

    async fn leave_in_turn(&self, key: &str, token: &str) -> Result<Settled, PairError> {
        let _turn = self.turn().await?;
        self.leave(key, token, false).await
    }

    fn spawn_cleanup(self: &Arc<Self>, key: String, token: String, deadline: Instant) {
        self.cleanups.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(self.clone().clean_up(key, token, deadline));
    }

    /// What the subscriber connection hands over besides answers: a message
    /// on this replica's channel, or news that the connection dropped, which
    /// loses Redis: messages sent while it was down are gone, so no waiting
    /// caller can trust what it has not been told.
    fn pushed(self: &Arc<Self>, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(Value::BulkString(message)) = push.data.get(1) {
                    self.received(message);
                }
            }
            PushKind::Disconnection => self.lost("lost the connection to Redis".into()),
            // This replica never unsubscribes: Redis dropped a subscription,
            // as a cluster does when a slot moves to another node. Messages
            // on it may be lost until the probe has it back.
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                self.metrics.failovers.inc();
                self.lost("Redis dropped this replica's subscription (a slot moved)".into());
            }
            _ => {}
        }
    }

    /// One message from this replica's channel.
    fn received(self: &Arc<Self>, message: &[u8]) {
        let Some((&kind, rest)) = message.split_first() else {
            return;
        };
        let mut parts = rest.splitn(3, |&b| b == b'\n');
        let (Some(token), Some(key)) = (parts.next(), parts.next()) else {
            return;
        };
        let (Ok(token), Ok(key)) = (std::str::from_utf8(token), std::str::from_utf8(key)) else {
            return;
        };
        let Some(ticket) = token
            .strip_prefix(self.replica.as_str())
            .and_then(|t| t.strip_prefix(':'))
            .and_then(|t| t.parse::<u64>().ok())
        else {
            return;
        };
        let event = match kind {
            b'O' => Event::Offer,
            b'X' => Event::Superseded,
            b'W' => Event::Withdrawn,
            b'P' => Event::Promoted,
            b'R' => Event::Paired(Bytes::copy_from_slice(parts.next().unwrap_or_default())),
            // The position, then the result's key, which the member's
            // record of its group names too.
            b'G' => {
                let Some(Ok(position)) = parts.next().and_then(|rest| {
                    let (position, _result) = std::str::from_utf8(rest).ok()?.split_once('\n')?;
                    Some(position.parse())
                }) else {
                    return;
                };
                Event::Grouped(position)
            }
            _ => return,
        };
        let delivered = match self.lock_slots().get(&ticket) {
            Some(slot) => {
                slot.send(event);
                true
            }
            None => false,
        };
        match (kind, delivered) {
            // The result key was only for a missed message, and this one
            // arrived: remove it. Only after delivering the message, which a
            // caller that finds its result key gone relies on.
            (b'R', _) => {
                let _ = self.janitor.send(format!("{key}:r:{token}"));
            }
            // The member claims its copy of the payloads through its record
            // of the group, or its cleanup does, if it left as the group
            // completed (or leaves before it has read them): so that they
            // do not outstay their last reader.
            (b'G', _) => {}
            // Taken over by a retry: its entry is the retry's now. Or
            // withdrawn: the withdrawal took its entry out.
            (b'X' | b'W', _) => {}
            // An offer to (or a promotion of) a caller that is no longer
            // here: it left, or was answered when Redis was lost. Make sure
            // it is gone from Redis, which hands its place to the offerer.
            (_, false) => {
                self.spawn_cleanup(key.to_owned(), token.to_owned(), Instant::now());
            }
            (_, true) => {}
        }
    }
}

/// What a decided caller is told, from what Redis kept of the decision;
/// `None` if it was not paired.
fn meeting_of(settled: Settled) -> Option<Meeting> {
    let (position, offers, waited) = match settled {
        Settled::Paired(Role::First, peer, waited) => (0, Offers::Peer(unseal(peer)), waited),
        Settled::Paired(Role::Second, peer, waited) => (1, Offers::Peer(unseal(peer)), waited),
        Settled::Grouped(position, all, waited) => {
            let all = all.into_iter().map(unseal).collect();
            (position, Offers::All(all), waited)
        }
        Settled::Unpaired => return None,
    };
    Some(Meeting::new(position, offers, waited.unwrap_or_default()))
}

/// Ids are hashed: they can be secret meeting codes, and a hash keeps braces
/// in an id from breaking the hash tag that keeps an id's keys in one
/// cluster slot.
fn id_digest(id: &Id) -> Digest {
    super::half_sha256(id.as_str().as_bytes())
}

/// How long a keyed try's binding lasts, in ms: as long as its wait (what
/// is left of it), then its kept answer, can last, and [`BINDING_SLACK`].
fn binding_ms(wait: Duration, grace: Duration) -> u64 {
    wait_ms(wait + grace + BINDING_SLACK)
}

/// What an attempt key's binding says of a try whose own binding, `ours`,
/// is another: `first` (the id's hash, then the group size) names another
/// id, or the same id with another size. `None` if it is the same.
fn bound_to_another(first: &[u8], ours: &[u8]) -> Option<Reuse> {
    fn id(binding: &[u8]) -> Option<&[u8]> {
        binding.split(|&b| b == b' ').next()
    }
    if first == ours {
        None
    } else if id(first) == id(ours) {
        Some(Reuse::Parties)
    } else {
        Some(Reuse::Id)
    }
}

/// What a caller is told while the probe finds Redis unreachable.
const UNREACHABLE: &str = "cannot reach Redis";

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            password: Some("from-a-file".into()),
            sentinel_password: None,
            key_prefix: "debug:".into(),
            timeout: Duration::from_millis(10),
            limits: EngineLimits {
                max_waiters: 1,
                max_group_bytes: usize::MAX,
            },
        }
    }

    fn start(config: RedisConfig) -> Result<RedisEngine, RedisError> {
        RedisEngine::start(config, &mut Registry::default())
    }

    /// A binding names the id's hash, then the group size: a try whose own
    /// binding differs in the size only reused the key with another size.
    #[test]
    fn a_keys_binding_tells_another_id_from_another_size() {
        let ours = b"0123abcd 2";
        assert_eq!(bound_to_another(ours, ours), None);
        assert_eq!(bound_to_another(b"0123abcd 3", ours), Some(Reuse::Parties));
        assert_eq!(bound_to_another(b"0123abce 2", ours), Some(Reuse::Id));
        assert_eq!(bound_to_another(b"0123abce 3", ours), Some(Reuse::Id));
    }

    #[test]
    fn a_keys_binding_outlives_its_wait_and_grace_by_a_second() {
        let (wait, grace) = (Duration::from_secs(60), Duration::from_secs(5));
        assert_eq!(binding_ms(wait, grace), 66_000);
        assert_eq!(binding_ms(Duration::ZERO, Duration::from_millis(1)), 1_001);
    }

    #[test]
    fn debug_shows_the_settings_but_no_secret() {
        let shown = format!("{:?}", config("redis://app:hunter2@db:6379"));
        assert!(
            shown.contains(r#"url: "redis://app:***@db:6379""#),
            "{shown}"
        );
        assert!(shown.contains(r#"key_prefix: "debug:""#), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("from-a-file"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn an_engine_shows_its_channel_and_how_many_wait() {
        let engine = start(config("redis://127.0.0.1:1")).unwrap();
        let shown = format!("{engine:?}");
        let channel = engine.channel().to_owned();
        assert_eq!(channel, format!("debug:replica:{}", engine.inner.replica));
        assert_eq!(
            shown,
            format!("RedisEngine {{ channel: {channel:?}, waiting: 0 }}")
        );
        assert_eq!(engine.unreachable_reason(), "cannot reach Redis");
    }

    /// In a cluster, one shard channel per bucket, each in its bucket's slot.
    #[tokio::test]
    async fn a_cluster_replica_has_a_channel_per_bucket() {
        let engine = start(config("redis+cluster://127.0.0.1:1")).unwrap();
        let channels = &engine.inner.channels;
        assert_eq!(channels.len(), BUCKETS);
        let digest: Digest = [7; 16];
        let channel = engine.inner.channel(&digest);
        assert_eq!(
            slots::slot(channel.as_bytes()),
            slots::slot(engine.inner.key(&digest).as_bytes())
        );
        assert!(channel.ends_with(&format!("}}replica:{}", engine.inner.replica)));
    }

    #[test]
    fn bad_urls_and_prefixes_are_refused_with_the_secret_hidden() {
        let error = start(config("http://user:hunter2@db")).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "--redis-url http://user:***@db is not usable: use redis:// or rediss:// (TLS)"
            ),
            "{error}"
        );
        let mut braces = config("redis://db");
        braces.key_prefix = "app{1}:".into();
        let error = start(braces).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--redis-key-prefix \"app{1}:\" must not contain '{' or '}'"
        );
        let mut sentinel_password = config("redis://db");
        sentinel_password.sentinel_password = Some("x".into());
        let error = start(sentinel_password).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--redis-sentinel-password-file needs a redis+sentinel:// URL"
        );
    }
}
#[cfg(test)]
mod size {
    /// A waiting caller's future is paid for as long as it waits; what only
    /// a round trip needs is boxed apart. This keeps it that way (568 bytes
    /// when this was written).
    #[tokio::test]
    async fn a_waiting_callers_future_stays_small() {
        let config = super::RedisConfig {
            url: "redis://127.0.0.1:1".into(),
            password: None,
            sentinel_password: None,
            key_prefix: "size:".into(),
            timeout: std::time::Duration::from_millis(10),
            limits: super::EngineLimits::NONE,
        };
        let engine = super::RedisEngine::start(config, &mut Default::default()).unwrap();
        let call = engine.inner.clone().meet(
            [0; 16],
            super::Parties::TWO,
            Box::new(super::Arrival {
                sealed: bytes::Bytes::new(),
                payload_len: 0,
                attempt: None,
            }),
            tokio::time::Instant::now(),
        );
        let size = std::mem::size_of_val(&call);
        assert!(size <= 640, "a waiting caller's future is {size} bytes");
    }
}
