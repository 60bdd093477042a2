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
//!
//! The files, by concern: here the engine, its state and its wiring;
//! `meeting.rs` a caller's way through it (arrival, wait, decision);
//! `script.rs` the script's operations and their replies; `mailbox.rs` what
//! a parked caller is told; `pubsub.rs` the channel messages that tell it;
//! `commands.rs` turns and bounds on commands; `lifecycle.rs` Redis lost,
//! the engine closed, and cleanup; `guard.rs` a caller's claim on its
//! entries; `links.rs` the connections (one primary, Sentinel, a cluster);
//! `probe.rs` the probe and janitor; `slots.rs` buckets and their keys and
//! channels; `wire.rs` the wire format; `config.rs` the flags;
//! `metrics.rs` the series.

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

mod commands;
mod config;
mod guard;
mod lifecycle;
mod links;
mod mailbox;
mod meeting;
mod metrics;
mod probe;
mod pubsub;
mod script;
mod slots;
mod wire;

use commands::COMMANDS_WAIT;
use mailbox::{Event, Slot};
use meeting::{Arrival, Keyed, Sealed};
use pubsub::pushes_for;
use script::{Arrived, Verdict};

use config::Deployment;
pub use config::{RedisArgs, RedisConfig, RedisError, redact};
use guard::Guard;
use links::{Conn, Connector, Links, Pushes};
use metrics::RedisMetrics;
use probe::{probe, sweep};
use slots::{BUCKETS, Digest};
use wire::{seal, unexpected, unseal, verdict, wait_ms};

use super::occupancy::Occupancy;
use super::{
    Attempt, AttemptKey, Delivery, Engine, EngineLimits, Id, Joining, Meeting, Offer, Offers,
    PairError, Parties, Reuse, Role, Withdrawal,
};
use crate::hex::Hex16;

/// The most commands a replica has in flight to Redis at once: enough to keep
/// the connection's pipeline full. A burst of callers waits its turn before
/// its commands are built, rather than as thousands of commands queued at
/// once, whose buffers would outlive the burst in the allocator.
const IN_FLIGHT: usize = 256;

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
    released: Notify,
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
            released: Notify::new(),
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
            let released = inner.released.notified();
            if inner.cleanups.load(Ordering::Acquire) == 0 {
                return;
            }
            released.await;
        }
    }
}

impl RedisEngine {
    /// Boxed: this future is larger than the local engine's, and inline in
    /// [`super::AnyEngine`]'s it would make every local call as large.
    fn call(
        &self,
        Joining { id, parties, offer }: Joining,
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
        self.call(Joining { id, parties, offer }, deadline, None)
    }

    /// The answer (a pair's or a group's) is kept in Redis too, under the
    /// key's digest, for the grace, and the place is found by that digest:
    /// a retry through another replica (this one killed, say) gets the
    /// answer there, or takes the place back.
    fn gather_keyed(
        &self,
        call: Joining,
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
}

/// Ids are hashed: they can be secret meeting codes, and a hash keeps braces
/// in an id from breaking the hash tag that keeps an id's keys in one
/// cluster slot.
fn id_digest(id: &Id) -> Digest {
    super::half_sha256(id.as_str().as_bytes())
}

/// What a caller is told while the probe finds Redis unreachable.
const UNREACHABLE: &str = "cannot reach Redis";

#[cfg(test)]
mod tests {
    use super::*;
    use script::{binding_ms, bound_to_another};

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
