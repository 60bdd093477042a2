//! The contract every pairing engine keeps, run against each of them: the
//! local engine, and the Redis engine on a `redis-server` of the test's own.
//!
//! These run on real time, since Redis does: every step waits for a signal
//! (an answer, or the engine's count of waiting callers), never for a fixed
//! time, and the only timeouts are those a scenario asks for with nobody
//! racing them. The paused-time property test in `engine_properties.rs`
//! checks the local engine's timing to the millisecond on top of this.
//!
//! Every scenario runs twice on each engine: with the ids and payloads it
//! was written with (1-byte ids and empty payloads among them), and with
//! each id made [`MAX_ID_BYTES`](rendezvous::pairing::MAX_ID_BYTES) long and
//! each payload padded to exactly `--max-payload` bytes (see [`Inputs`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use proptest::prelude::*;
use rendezvous::pairing::{
    Engine, EngineLimits, Id, LocalEngine, Meeting, Offer, PairError, Parties, RedisEngine, Role,
};
use rendezvous::trace::TraceContext;
use tokio::{task::JoinHandle, time::Instant};

use crate::common::{
    edges::{
        IdKind, Sent, describe, id_kind, longest_id, max_group_bytes, max_parties, max_payload,
        padded, sent, size, tag_of,
    },
    eventually,
    redis::{self, RedisServer},
    topology::{Kind, Topology},
    within,
};

/// Makes engines for one scenario, and checks afterwards that nothing was
/// left behind.
pub trait Harness: Sized {
    type Engine: Engine;

    async fn new() -> Self;

    async fn engine(&self, capacity: usize) -> Arc<Self::Engine> {
        self.engine_with(capacity, usize::MAX).await
    }

    /// An engine whose groups of more than two hold at most
    /// `max_group_bytes` of payloads.
    async fn engine_with(&self, capacity: usize, max_group_bytes: usize) -> Arc<Self::Engine>;

    /// Nothing of the scenario's callers is left in the meeting place.
    async fn assert_nothing_left(&self);

    /// The same, right now: for after `close`, which returns only once the
    /// entries are gone.
    async fn assert_nothing_left_now(&self);

    /// Makes removing entries from the meeting place slow for a moment, so
    /// that a `close` that did not wait for it would show.
    async fn slow_down_removals(&self);

    /// Waits until the callers that went away are out of the meeting place,
    /// where a caller arriving next would still meet them.
    async fn let_go(engine: &Self::Engine);
}

pub struct Local;

impl Harness for Local {
    type Engine = LocalEngine;

    async fn new() -> Self {
        Self
    }

    async fn engine_with(&self, capacity: usize, max_group_bytes: usize) -> Arc<LocalEngine> {
        Arc::new(LocalEngine::with_limits(EngineLimits {
            max_waiters: capacity,
            max_group_bytes,
        }))
    }

    async fn assert_nothing_left(&self) {}

    async fn assert_nothing_left_now(&self) {}

    /// Removal is immediate, under the shard lock.
    async fn slow_down_removals(&self) {}

    async fn let_go(_: &LocalEngine) {}
}

/// Where a Redis harness's engines meet: a Redis of the scenario's own, or
/// a Sentinel set or cluster shared by the test binary (each scenario with
/// a key prefix of its own).
pub enum Place {
    Single(RedisServer),
    Shared(&'static Topology),
}

impl Place {
    pub fn url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Shared(topology) => topology.url.clone(),
        }
    }

    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        match self {
            Self::Single(server) => server.keys(prefix).await,
            Self::Shared(topology) => topology.keys(prefix).await,
        }
    }

    pub async fn until_keys(&self, prefix: &str, n: usize) {
        match self {
            Self::Single(server) => server.until_keys(prefix, n).await,
            Self::Shared(topology) => topology.until_keys(prefix, n).await,
        }
    }

    pub async fn pause_writes(&self, ms: u64) {
        match self {
            Self::Single(server) => {
                let paused: String = server
                    .query(::redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("WRITE"))
                    .await;
                assert_eq!(paused, "OK");
            }
            Self::Shared(topology) => topology.pause_writes(ms).await,
        }
    }

    /// The shared topology of `kind`, started on first use.
    pub async fn shared(kind: Kind) -> Self {
        let topology = tokio::task::spawn_blocking(move || Topology::shared(kind))
            .await
            .unwrap();
        Self::Shared(topology)
    }
}

/// The Redis engine, on one Redis ([`OnRedis`]), under Sentinel
/// ([`OnSentinel`]) or on a cluster ([`OnCluster`]).
pub struct RedisHarness {
    pub place: Place,
    pub prefix: String,
}

impl RedisHarness {
    async fn engine_with(&self, capacity: usize, max_group_bytes: usize) -> Arc<RedisEngine> {
        let mut config = redis::engine_config(self.place.url(), &self.prefix, capacity);
        config.limits.max_group_bytes = max_group_bytes;
        Arc::new(redis::start_engine(config).await)
    }

    async fn assert_nothing_left(&self) {
        self.place.until_keys(&self.prefix, 0).await;
    }

    async fn assert_nothing_left_now(&self) {
        let left = self.place.keys(&self.prefix).await;
        assert!(left.is_empty(), "keys left in Redis: {left:?}");
    }
}

macro_rules! redis_harness {
    ($(#[$doc:meta])* $name:ident, $place:expr) => {
        $(#[$doc])*
        pub struct $name(pub RedisHarness);

        impl Harness for $name {
            type Engine = RedisEngine;

            async fn new() -> Self {
                Self(RedisHarness {
                    place: $place,
                    prefix: redis::unique_prefix("suite"),
                })
            }

            async fn engine_with(
                &self,
                capacity: usize,
                max_group_bytes: usize,
            ) -> Arc<RedisEngine> {
                self.0.engine_with(capacity, max_group_bytes).await
            }

            async fn assert_nothing_left(&self) {
                self.0.assert_nothing_left().await;
            }

            async fn assert_nothing_left_now(&self) {
                self.0.assert_nothing_left_now().await;
            }

            /// Scripts wait 300 ms; reads (the check above) do not.
            async fn slow_down_removals(&self) {
                self.0.place.pause_writes(300).await;
            }

            async fn let_go(engine: &RedisEngine) {
                within(engine.let_go()).await;
            }
        }
    };
}

redis_harness!(
    /// One `redis-server` of the scenario's own.
    OnRedis,
    Place::Single(RedisServer::start().await)
);
redis_harness!(
    /// The test binary's Sentinel set: a primary, a replica, three Sentinels.
    OnSentinel,
    Place::shared(Kind::Sentinel).await
);
redis_harness!(
    /// The test binary's cluster: three primaries, each with a replica.
    OnCluster,
    Place::shared(Kind::Cluster).await
);

const LONG: Duration = Duration::from_secs(60);

/// How a scenario's ids and payloads reach the engine: as written, or each
/// id made as long as an id may be and each payload padded to exactly
/// `--max-payload` bytes. Helpers below apply it going in and take it off
/// coming out, so that a scenario reads the same either way. It is the test
/// task's own: make ids and payloads before spawning a caller.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    longest_ids: bool,
    largest_payloads: bool,
}

impl Inputs {
    pub const AS_WRITTEN: Self = Self {
        longest_ids: false,
        largest_payloads: false,
    };
    pub const LARGEST: Self = Self {
        longest_ids: true,
        largest_payloads: true,
    };
}

tokio::task_local! {
    static INPUTS: Inputs;
}

fn inputs() -> Inputs {
    INPUTS
        .try_with(|inputs| *inputs)
        .unwrap_or(Inputs::AS_WRITTEN)
}

/// Runs `scenario` with its payloads as written, whatever the inputs: for
/// scenarios about byte counts.
async fn exact_payloads<T>(scenario: impl Future<Output = T>) -> T {
    let inputs = Inputs {
        largest_payloads: false,
        ..inputs()
    };
    INPUTS.scope(inputs, scenario).await
}

fn id(s: &str) -> Id {
    if inputs().longest_ids {
        Id::new(longest_id(s)).unwrap()
    } else {
        Id::new(s).unwrap()
    }
}

/// A scenario's payload as the engine gets it.
fn payload(written: &[u8]) -> Bytes {
    if inputs().largest_payloads && written.len() < max_payload() {
        padded(written, max_payload()).into()
    } else {
        Bytes::copy_from_slice(written)
    }
}

/// A payload the engine handed back, as the scenario wrote it.
fn as_written(received: &[u8]) -> &[u8] {
    if inputs().largest_payloads && received.len() == max_payload() {
        tag_of(received)
    } else {
        received
    }
}

fn after(wait: Duration) -> Instant {
    Instant::now() + wait
}

type Call = JoinHandle<Result<Meeting, PairError>>;

/// A caller, on a task of its own, so that it waits while the test goes on.
fn arrive<E: Engine>(engine: &Arc<E>, key: &str, payload: &[u8], wait: Duration) -> Call {
    let engine = engine.clone();
    let (key, payload) = (id(key), self::payload(payload));
    let deadline = after(wait);
    tokio::spawn(async move { engine.meet(key, payload.into(), deadline).await })
}

async fn parked<E: Engine>(engine: &E, n: usize) {
    eventually(|| engine.waiting() == n, &format!("{n} waiting")).await;
}

async fn answer(call: Call) -> Result<Meeting, PairError> {
    within(call).await.expect("the call did not panic")
}

fn assert_paired(result: Result<Meeting, PairError>, role: Role, peer: &[u8]) {
    let meeting = result.unwrap_or_else(|e| panic!("expected a pair as {role:?}, got {e:?}"));
    assert_eq!(
        (meeting.role(), describe(&meeting.peer().payload)),
        (role, describe(&payload(peer))),
        "role and partner's payload"
    );
}

pub async fn two_callers_pair_and_swap_payloads<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let first = arrive(&engine, "a", b"from first", LONG);
    parked(&*engine, 1).await;
    let second = answer(arrive(&engine, "a", b"from second", LONG)).await;
    assert_paired(second, Role::Second, b"from first");
    assert_paired(answer(first).await, Role::First, b"from second");
    assert_eq!(engine.waiting(), 0);
    h.assert_nothing_left().await;
}

pub async fn a_third_caller_starts_a_new_pair<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let first = arrive(&engine, "a", b"1", LONG);
    parked(&*engine, 1).await;
    assert_paired(
        answer(arrive(&engine, "a", b"2", LONG)).await,
        Role::Second,
        b"1",
    );
    assert_paired(answer(first).await, Role::First, b"2");
    let third = arrive(&engine, "a", b"3", Duration::from_millis(300));
    assert_eq!(answer(third).await, Err(PairError::TimedOut));
    // And a fourth meets a fifth.
    let fourth = arrive(&engine, "a", b"4", LONG);
    parked(&*engine, 1).await;
    assert_paired(
        answer(arrive(&engine, "a", b"5", LONG)).await,
        Role::Second,
        b"4",
    );
    assert_paired(answer(fourth).await, Role::First, b"5");
    h.assert_nothing_left().await;
}

pub async fn different_ids_do_not_pair<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let wait = Duration::from_millis(300);
    let a = arrive(&engine, "a", b"", wait);
    let b = arrive(&engine, "b", b"", wait);
    assert_eq!(answer(a).await, Err(PairError::TimedOut));
    assert_eq!(answer(b).await, Err(PairError::TimedOut));
    assert_eq!(engine.waiting(), 0);
    h.assert_nothing_left().await;
}

/// A deadline that has passed when the caller arrives: told at once.
pub async fn a_caller_past_its_deadline_times_out_without_waiting<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let late = engine.meet(id("a"), Bytes::new().into(), Instant::now());
    assert_eq!(within(late).await, Err(PairError::TimedOut));
    assert_eq!(engine.waiting(), 0);
    h.assert_nothing_left().await;
}

/// The next caller arrives the moment the first one leaves: before a remote
/// store can have heard of it. It must wait, not pair with nobody.
pub async fn a_caller_that_left_is_never_paired<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    for round in 0..5 {
        let gone = arrive(&engine, "a", b"gone", LONG);
        parked(&*engine, 1).await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        let next = arrive(&engine, "a", b"next", LONG);
        parked(&*engine, 1).await;
        let partner = answer(arrive(&engine, "a", b"partner", LONG)).await;
        assert_paired(partner, Role::Second, b"next");
        assert_paired(answer(next).await, Role::First, b"partner");
        assert_eq!(engine.waiting(), 0, "round {round}");
    }
    h.assert_nothing_left().await;
}

pub async fn close_answers_parked_and_later_callers<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let parked_a = arrive(&engine, "a", b"", LONG);
    let parked_b = arrive(&engine, "b", b"", LONG);
    parked(&*engine, 2).await;
    h.slow_down_removals().await;
    within(engine.close()).await;
    // Closing removed their entries before it returned.
    h.assert_nothing_left_now().await;
    assert_eq!(answer(parked_a).await, Err(PairError::ShuttingDown));
    assert_eq!(answer(parked_b).await, Err(PairError::ShuttingDown));
    assert_eq!(
        answer(arrive(&engine, "a", b"", LONG)).await,
        Err(PairError::ShuttingDown)
    );
    assert_eq!(engine.waiting(), 0);
    h.assert_nothing_left().await;
}

pub async fn the_cap_counts_waiting_callers_only<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(2).await;
    let a = arrive(&engine, "a", b"a", LONG);
    let b = arrive(&engine, "b", b"b", LONG);
    parked(&*engine, 2).await;
    assert_eq!(
        answer(arrive(&engine, "c", b"", LONG)).await,
        Err(PairError::Full { capacity: 2 })
    );
    // A caller that completes a pair never waits, so it is let in.
    assert_paired(
        answer(arrive(&engine, "a", b"a2", LONG)).await,
        Role::Second,
        b"a",
    );
    assert_paired(answer(a).await, Role::First, b"a2");
    // The freed place is free again.
    let c = arrive(&engine, "c", b"", Duration::from_millis(300));
    assert_eq!(answer(c).await, Err(PairError::TimedOut));
    b.abort();
    parked(&*engine, 0).await;
    h.assert_nothing_left().await;
}

pub async fn payloads_arrive_byte_for_byte<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    for (one, other) in [
        (&b""[..], &big[..]),
        (&b""[..], &b""[..]),
        (&b"\n\0\xff"[..], &b"R\n"[..]),
    ] {
        let first = arrive(&engine, "p", one, LONG);
        parked(&*engine, 1).await;
        assert_paired(
            answer(arrive(&engine, "p", other, LONG)).await,
            Role::Second,
            one,
        );
        assert_paired(answer(first).await, Role::First, other);
    }
    h.assert_nothing_left().await;
}

/// A caller's trace context (trace id, span id, flags) reaches its partner
/// with its payload, whichever side sent one; payloads that look like its
/// framing stay payloads.
pub async fn trace_ids_reach_the_partner<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let traced = |text: &str| TraceContext::from_traceparent(text.as_bytes()).unwrap();
    let a = traced("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    let b = traced("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    let framing_lookalike: &[u8] = &[1; 1 + TraceContext::LEN];
    let pairs = [
        (Some(a.clone()), None),
        (None, Some(b.clone())),
        (Some(a), Some(b)),
    ];
    for (first_trace, second_trace) in pairs {
        let offer = |written: &[u8], trace| Offer {
            payload: payload(written),
            trace,
        };
        let first = {
            let (engine, offer) = (
                engine.clone(),
                offer(framing_lookalike, first_trace.clone()),
            );
            // The id is made here: the inputs are the test task's own.
            let id = id("t");
            tokio::spawn(async move { engine.meet(id, offer, after(LONG)).await })
        };
        parked(&*engine, 1).await;
        let second = engine
            .meet(id("t"), offer(b"\0", second_trace.clone()), after(LONG))
            .await
            .unwrap();
        let first = answer(first).await.unwrap();
        assert_eq!(
            (
                second.role(),
                second.peer().payload.clone(),
                second.peer().trace.clone()
            ),
            (Role::Second, payload(framing_lookalike), first_trace)
        );
        assert_eq!(
            (
                first.role(),
                first.peer().payload.clone(),
                first.peer().trace.clone()
            ),
            (Role::First, payload(b"\0"), second_trace)
        );
    }
    h.assert_nothing_left().await;
}

/// Many pairs at once over few ids: every caller pairs exactly once, with
/// one other, in opposite roles, each with the other's payload.
pub async fn many_pairs_at_once_pair_each_caller_once<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let calls: Vec<(usize, Call)> = (0..200)
        .map(|i| {
            (
                i,
                arrive(
                    &engine,
                    &format!("id-{}", i % 10),
                    i.to_string().as_bytes(),
                    LONG,
                ),
            )
        })
        .collect();
    let mut partner = HashMap::new();
    for (i, call) in calls {
        let meeting = answer(call).await.unwrap();
        let peer: usize = std::str::from_utf8(as_written(&meeting.peer().payload))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(peer % 10, i % 10, "paired across ids");
        partner.insert(i, (peer, meeting.role()));
    }
    for (&i, &(peer, role)) in &partner {
        let (back, peer_role) = partner[&peer];
        assert_eq!(back, i, "{i} paired with {peer}, who paired with {back}");
        assert_ne!(role, peer_role);
    }
    assert_eq!(engine.waiting(), 0);
    h.assert_nothing_left().await;
}

// Groups of more than two.

/// A member of a group of `parties`, on a task of its own.
fn join<E: Engine>(
    engine: &Arc<E>,
    key: &str,
    parties: u32,
    payload: &[u8],
    wait: Duration,
) -> Call {
    let engine = engine.clone();
    let (key, payload) = (id(key), self::payload(payload));
    let parties = Parties::new(parties, u32::MAX).unwrap();
    let deadline = after(wait);
    tokio::spawn(async move { engine.gather(key, parties, payload.into(), deadline).await })
}

/// The member's position, and every member's payload in arrival order.
fn group_of(result: Result<Meeting, PairError>, own: &[u8]) -> (usize, Vec<String>) {
    let meeting = result.unwrap_or_else(|e| panic!("expected a group, got {e:?}"));
    let payloads = meeting.payloads(&payload(own));
    assert_eq!(payloads.len(), meeting.parties());
    let payloads = payloads
        .iter()
        .map(|p| String::from_utf8(as_written(p).to_vec()).unwrap())
        .collect();
    (meeting.position, payloads)
}

/// Callers with `key` arriving one after another with `payloads` (each
/// parked before the next arrives), as one group: each learns its position
/// and everyone's payload in arrival order, the last without waiting.
async fn assert_group_completes<E: Engine>(engine: &Arc<E>, key: &str, payloads: &[&str]) {
    let parties = payloads.len() as u32;
    let (last, parked_ones) = payloads.split_last().unwrap();
    let mut members = Vec::new();
    for (n, payload) in parked_ones.iter().enumerate() {
        members.push(join(engine, key, parties, payload.as_bytes(), LONG));
        parked(&**engine, n + 1).await;
    }
    let everyone: Vec<String> = payloads.iter().map(|p| p.to_string()).collect();
    let completing = answer(join(engine, key, parties, last.as_bytes(), LONG)).await;
    assert_eq!(
        group_of(completing, last.as_bytes()),
        (parked_ones.len(), everyone.clone())
    );
    for (position, member) in members.into_iter().enumerate() {
        let own = payloads[position].as_bytes();
        assert_eq!(
            group_of(answer(member).await, own),
            (position, everyone.clone())
        );
    }
}

pub async fn a_group_of_five_completes_together<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    assert_group_completes(&engine, "g", &["a", "b", "c", "d", "e"]).await;
    assert_eq!(engine.waiting(), 0);
    // The next caller with the id starts a new group.
    let next = join(&engine, "g", 5, b"f", Duration::from_millis(300));
    assert_eq!(answer(next).await, Err(PairError::TimedOut));
    h.assert_nothing_left().await;
}

/// A member that goes away, or whose deadline passes, is out: the group
/// waits for others in its place, and never counts it.
pub async fn a_member_that_leaves_is_replaced_and_never_counted<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let gone = join(&engine, "g", 3, b"gone", LONG);
    parked(&*engine, 1).await;
    let expired = join(&engine, "g", 3, b"expired", Duration::from_millis(300));
    parked(&*engine, 2).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    assert_eq!(answer(expired).await, Err(PairError::TimedOut));
    parked(&*engine, 0).await;
    let b = join(&engine, "g", 3, b"b", LONG);
    parked(&*engine, 1).await;
    let c = join(&engine, "g", 3, b"c", LONG);
    parked(&*engine, 2).await;
    let d = answer(join(&engine, "g", 3, b"d", LONG)).await;
    let everyone = vec!["b".to_string(), "c".into(), "d".into()];
    assert_eq!(group_of(d, b"d"), (2, everyone.clone()));
    assert_eq!(group_of(answer(b).await, b"b"), (0, everyone.clone()));
    assert_eq!(group_of(answer(c).await, b"c"), (1, everyone));
    h.assert_nothing_left().await;
}

/// A member goes away just as the last member arrives. Whichever the
/// meeting place saw first decides, once, for everyone: the group counts
/// the member that left (it left after the group was decided), or it waits
/// for a replacement, which then completes it without the one that left.
pub async fn a_member_cancelling_while_the_last_arrives<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    for round in 0..10 {
        let leaving = join(&engine, "g", 3, b"leaving", LONG);
        parked(&*engine, 1).await;
        let staying = join(&engine, "g", 3, b"staying", LONG);
        parked(&*engine, 2).await;
        let last = join(&engine, "g", 3, b"last", LONG);
        leaving.abort();
        let _ = leaving.await;
        // Either the group completed with the one that left, or the last
        // arrival now waits in its place.
        let completed = tokio::select! {
            result = answer(last) => Some(result),
            () = parked(&*engine, 2) => None,
        };
        let everyone = match completed {
            Some(result) => {
                let everyone = vec!["leaving".to_string(), "staying".into(), "last".into()];
                assert_eq!(
                    group_of(result, b"last"),
                    (2, everyone.clone()),
                    "round {round}"
                );
                everyone
            }
            None => {
                let replacement = answer(join(&engine, "g", 3, b"replacement", LONG)).await;
                let everyone = vec!["staying".to_string(), "last".into(), "replacement".into()];
                assert_eq!(group_of(replacement, b"replacement"), (2, everyone.clone()));
                everyone
            }
        };
        assert_eq!(
            group_of(answer(staying).await, b"staying"),
            (
                everyone.iter().position(|p| p == "staying").unwrap(),
                everyone
            ),
            "round {round}"
        );
        parked(&*engine, 0).await;
    }
    h.assert_nothing_left().await;
}

/// A caller asking for another size than the group forming under its id is
/// refused, with both sizes, and the group carries on undisturbed; a pair
/// and a group never share an id either.
pub async fn mismatched_parties_are_refused_and_the_group_carries_on<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let a = join(&engine, "g", 3, b"a", LONG);
    parked(&*engine, 1).await;
    assert_eq!(
        answer(join(&engine, "g", 4, b"x", LONG)).await,
        Err(PairError::PartiesMismatch {
            forming: 3,
            asked: 4
        })
    );
    assert_eq!(
        answer(arrive(&engine, "g", b"x", LONG)).await,
        Err(PairError::PartiesMismatch {
            forming: 3,
            asked: 2
        })
    );
    let b = join(&engine, "g", 3, b"b", LONG);
    parked(&*engine, 2).await;
    let c = answer(join(&engine, "g", 3, b"c", LONG)).await;
    let everyone = vec!["a".to_string(), "b".into(), "c".into()];
    assert_eq!(group_of(c, b"c"), (2, everyone.clone()));
    assert_eq!(group_of(answer(a).await, b"a"), (0, everyone.clone()));
    assert_eq!(group_of(answer(b).await, b"b"), (1, everyone));

    // A pair waiting under an id turns a group caller away the same way.
    let waiter = arrive(&engine, "p", b"w", LONG);
    parked(&*engine, 1).await;
    assert_eq!(
        answer(join(&engine, "p", 3, b"x", LONG)).await,
        Err(PairError::PartiesMismatch {
            forming: 2,
            asked: 3
        })
    );
    assert_paired(
        answer(arrive(&engine, "p", b"s", LONG)).await,
        Role::Second,
        b"w",
    );
    assert_paired(answer(waiter).await, Role::First, b"s");
    h.assert_nothing_left().await;
}

/// `WaitForSecondParty` is the group of two: a pair caller meets a group
/// caller that asks for two, each way round.
pub async fn a_pair_caller_meets_a_group_of_two<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let pair = arrive(&engine, "two", b"pair", LONG);
    parked(&*engine, 1).await;
    let group = answer(join(&engine, "two", 2, b"group", LONG)).await;
    assert_eq!(
        group_of(group, b"group"),
        (1, vec!["pair".into(), "group".into()])
    );
    assert_paired(answer(pair).await, Role::First, b"group");

    let group = join(&engine, "two", 2, b"group", LONG);
    parked(&*engine, 1).await;
    assert_paired(
        answer(arrive(&engine, "two", b"pair", LONG)).await,
        Role::Second,
        b"group",
    );
    assert_eq!(
        group_of(answer(group).await, b"group"),
        (0, vec!["group".into(), "pair".into()])
    );
    h.assert_nothing_left().await;
}

/// Every parked member takes a place against the cap; the caller that
/// completes a group never waits, so it is let in.
pub async fn every_parked_member_counts_against_the_cap<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(2).await;
    let a = join(&engine, "g", 3, b"a", LONG);
    let b = join(&engine, "g", 3, b"b", LONG);
    parked(&*engine, 2).await;
    assert_eq!(
        answer(join(&engine, "other", 3, b"x", LONG)).await,
        Err(PairError::Full { capacity: 2 })
    );
    let c = answer(join(&engine, "g", 3, b"c", LONG)).await;
    assert_eq!(group_of(c, b"c").0, 2);
    assert_eq!(
        group_of(answer(a).await, b"a").0 + group_of(answer(b).await, b"b").0,
        1
    );
    h.assert_nothing_left().await;
}

/// A payload that would take the group's over the limit is refused as it
/// arrives, saying how much the group holds; a smaller one is let in.
/// Pairs are not held to it.
pub async fn a_payload_over_the_group_limit_is_refused<H: Harness>() {
    exact_payloads(payload_over_the_group_limit::<H>()).await;
}

async fn payload_over_the_group_limit<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine_with(usize::MAX, 10).await;
    let a = join(&engine, "g", 3, b"aaaaaa", LONG);
    parked(&*engine, 1).await;
    assert_eq!(
        answer(join(&engine, "g", 3, b"bbbbb", LONG)).await,
        Err(PairError::GroupTooLarge {
            held: 6,
            payload: 5,
            limit: 10
        })
    );
    assert_eq!(
        answer(join(&engine, "h", 3, &[0; 11], LONG)).await,
        Err(PairError::GroupTooLarge {
            held: 0,
            payload: 11,
            limit: 10
        })
    );
    let b = join(&engine, "g", 3, b"bbbb", LONG);
    parked(&*engine, 2).await;
    let c = answer(join(&engine, "g", 3, b"", LONG)).await;
    let everyone = vec!["aaaaaa".to_string(), "bbbb".into(), "".into()];
    assert_eq!(group_of(c, b""), (2, everyone.clone()));
    assert_eq!(group_of(answer(a).await, b"aaaaaa"), (0, everyone.clone()));
    assert_eq!(group_of(answer(b).await, b"bbbb"), (1, everyone));
    // A first member at the limit exactly is let in, as the last one was.
    let exact = join(&engine, "h", 3, &[1; 10], LONG);
    parked(&*engine, 1).await;
    exact.abort();
    let _ = exact.await;
    parked(&*engine, 0).await;

    let big = [7; 32];
    let first = arrive(&engine, "pair", &big, LONG);
    parked(&*engine, 1).await;
    assert_paired(
        answer(arrive(&engine, "pair", &big, LONG)).await,
        Role::Second,
        &big,
    );
    assert_paired(answer(first).await, Role::First, &big);
    h.assert_nothing_left().await;
}

/// Issue 21, as a user met it: four members of a group of three with
/// empty payloads, one after another. The first three complete the group;
/// the fourth is alone in the next one, and its deadline passing is a
/// timeout, not an outage. Nothing of it is left: a pair caller can use
/// the id at once (a group's leftover size would refuse it). The payloads
/// stay empty with the largest inputs too: only the ids grow.
pub async fn a_lone_member_with_an_empty_payload_times_out<H: Harness>() {
    exact_payloads(lone_empty_member::<H>()).await;
}

async fn lone_empty_member<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    assert_group_completes(&engine, "g", &["", "", ""]).await;
    let fourth = join(&engine, "g", 3, b"", Duration::from_millis(1500));
    assert_eq!(answer(fourth).await, Err(PairError::TimedOut));
    assert_eq!(engine.waiting(), 0);
    let pair = arrive(&engine, "g", b"", Duration::from_millis(300));
    assert_eq!(answer(pair).await, Err(PairError::TimedOut));
    h.assert_nothing_left().await;
}

/// Members with empty payloads leave a forming group every way a member
/// can (cancelled, timed out) and leave nothing behind: the id is free for
/// a pair at once, and a pair of empty payloads meets. The payloads stay
/// empty with the largest inputs too.
pub async fn members_with_empty_payloads_leave_cleanly<H: Harness>() {
    exact_payloads(empty_members_leave::<H>()).await;
}

async fn empty_members_leave<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let cancelled = join(&engine, "g", 3, b"", LONG);
    parked(&*engine, 1).await;
    let expired = join(&engine, "g", 3, b"", Duration::from_millis(300));
    parked(&*engine, 2).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    assert_eq!(answer(expired).await, Err(PairError::TimedOut));
    parked(&*engine, 0).await;
    h.assert_nothing_left().await;
    let pair = arrive(&engine, "g", b"", Duration::from_millis(300));
    assert_eq!(answer(pair).await, Err(PairError::TimedOut));
    let first = arrive(&engine, "p", b"", LONG);
    parked(&*engine, 1).await;
    assert_paired(
        answer(arrive(&engine, "p", b"", LONG)).await,
        Role::Second,
        b"",
    );
    assert_paired(answer(first).await, Role::First, b"");
    h.assert_nothing_left().await;
}

/// A group of `--max-parties` members whose payloads take exactly
/// `--max-group-bytes` between them completes, each member with its
/// position and every payload in order.
pub async fn a_group_of_the_largest_size_filling_the_group_limit<H: Harness>() {
    exact_payloads(largest_group::<H>()).await;
}

async fn largest_group<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine_with(usize::MAX, max_group_bytes()).await;
    let parties = max_parties() as usize;
    let each = max_group_bytes() / parties;
    assert_eq!(each * parties, max_group_bytes(), "the defaults divide");
    let sent: Vec<Vec<u8>> = (0..parties)
        .map(|i| padded(i.to_string().as_bytes(), each))
        .collect();
    let mut members = Vec::new();
    for (n, payload) in sent[..parties - 1].iter().enumerate() {
        members.push(join(&engine, "g", max_parties(), payload, LONG));
        parked(&*engine, n + 1).await;
    }
    members.push(join(&engine, "g", max_parties(), &sent[parties - 1], LONG));
    let everyone: Vec<String> = sent.iter().map(|p| describe(p)).collect();
    for (position, member) in members.into_iter().enumerate() {
        let meeting = answer(member).await.unwrap();
        let own = Bytes::copy_from_slice(&sent[position]);
        let payloads: Vec<String> = meeting.payloads(&own).iter().map(|p| describe(p)).collect();
        assert_eq!((meeting.position, payloads), (position, everyone.clone()));
    }
    assert_eq!(engine.waiting(), 0);
    h.assert_nothing_left().await;
}

/// Closing answers every member of a forming group.
pub async fn close_answers_every_member<H: Harness>() {
    let h = H::new().await;
    let engine = h.engine(usize::MAX).await;
    let a = join(&engine, "g", 3, b"a", LONG);
    let b = join(&engine, "g", 3, b"b", LONG);
    parked(&*engine, 2).await;
    within(engine.close()).await;
    assert_eq!(answer(a).await, Err(PairError::ShuttingDown));
    assert_eq!(answer(b).await, Err(PairError::ShuttingDown));
    h.assert_nothing_left().await;
}

macro_rules! suite {
    ($harness:ty, $inputs:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                super::super::INPUTS
                    .scope($inputs, super::super::$scenario::<$harness>())
                    .await;
            }
        )*
    };
}

/// Every scenario on both engines, with its inputs as written and at
/// their largest.
macro_rules! both {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            mod as_written {
                suite!(super::super::Local, super::super::Inputs::AS_WRITTEN; $($scenario),*);
            }
            mod largest {
                suite!(super::super::Local, super::super::Inputs::LARGEST; $($scenario),*);
            }
        }
        mod redis_engine {
            mod as_written {
                suite!(super::super::OnRedis, super::super::Inputs::AS_WRITTEN; $($scenario),*);
            }
            mod largest {
                suite!(super::super::OnRedis, super::super::Inputs::LARGEST; $($scenario),*);
            }
        }
        mod sentinel {
            mod as_written {
                suite!(super::super::OnSentinel, super::super::Inputs::AS_WRITTEN; $($scenario),*);
            }
            mod largest {
                suite!(super::super::OnSentinel, super::super::Inputs::LARGEST; $($scenario),*);
            }
        }
        mod cluster {
            mod as_written {
                suite!(super::super::OnCluster, super::super::Inputs::AS_WRITTEN; $($scenario),*);
            }
            mod largest {
                suite!(super::super::OnCluster, super::super::Inputs::LARGEST; $($scenario),*);
            }
        }
    };
}

both!(
    two_callers_pair_and_swap_payloads,
    trace_ids_reach_the_partner,
    a_third_caller_starts_a_new_pair,
    different_ids_do_not_pair,
    a_caller_past_its_deadline_times_out_without_waiting,
    a_caller_that_left_is_never_paired,
    close_answers_parked_and_later_callers,
    the_cap_counts_waiting_callers_only,
    payloads_arrive_byte_for_byte,
    many_pairs_at_once_pair_each_caller_once,
    a_group_of_five_completes_together,
    a_member_that_leaves_is_replaced_and_never_counted,
    a_member_cancelling_while_the_last_arrives,
    mismatched_parties_are_refused_and_the_group_carries_on,
    a_pair_caller_meets_a_group_of_two,
    every_parked_member_counts_against_the_cap,
    a_payload_over_the_group_limit_is_refused,
    close_answers_every_member,
    a_lone_member_with_an_empty_payload_times_out,
    members_with_empty_payloads_leave_cleanly,
    a_group_of_the_largest_size_filling_the_group_limit,
);

/// The property makes its own edges ([`Sent`], [`IdKind`], [`size`]), so it
/// runs once per engine.
mod properties {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local() {
        super::random_schedules_agree_with_the_model::<super::Local>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_engine() {
        super::random_schedules_agree_with_the_model::<super::OnRedis>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sentinel() {
        super::random_schedules_agree_with_the_model::<super::OnSentinel>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        super::random_schedules_agree_with_the_model::<super::OnCluster>().await;
    }
}

// The property: random schedules, one step at a time.

#[derive(Debug, Clone)]
enum Step {
    /// A caller arrives, asking for its id's usual group size, or (`stray`)
    /// one more; `expires` callers have a short wait and nobody else
    /// arrives until they are answered.
    Arrive {
        id: u8,
        stray: bool,
        expires: bool,
        payload: Sent,
    },
    /// The `n`th caller so far goes away, if it is still waiting.
    Cancel(usize),
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    /// Its group completed: its position, and the members' payloads in
    /// arrival order (as [`describe`] prints them).
    Met {
        position: usize,
        group: Vec<String>,
    },
    TimedOut,
    Full,
    ShuttingDown,
    Mismatch {
        forming: u32,
        asked: u32,
    },
    Cancelled,
}

fn step() -> impl Strategy<Value = Step> {
    let arrive = |stray, expires| {
        (0u8..3, sent()).prop_map(move |(id, payload)| Step::Arrive {
            id,
            stray,
            expires,
            payload,
        })
    };
    prop_oneof![
        8 => arrive(false, false),
        1 => arrive(true, false),
        1 => arrive(false, true),
        3 => (0usize..20).prop_map(Step::Cancel),
        1 => Just(Step::Close),
    ]
}

/// The steps, each id's usual group size and length, and the cap.
fn schedule() -> impl Strategy<Value = (Vec<Step>, [u32; 3], [IdKind; 3], usize)> {
    (
        proptest::collection::vec(step(), 1..24),
        [size(), size(), size()],
        [id_kind(), id_kind(), id_kind()],
        prop_oneof![3 => Just(usize::MAX), 1 => 1usize..5],
    )
}

/// Runs `steps` against a fresh engine and the sequential model, and checks
/// after every step that both told every caller the same, and that as many
/// callers wait in each.
async fn agree<H: Harness>(
    h: &H,
    steps: &[Step],
    sizes: [u32; 3],
    ids: [IdKind; 3],
    capacity: usize,
) -> Result<(), TestCaseError> {
    let engine = h.engine(capacity).await;
    let mut calls: Vec<Option<Call>> = Vec::new();
    // What each caller sent, for what its group's members are told.
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut told: Vec<Option<Told>> = Vec::new();
    // The model: the group forming under each id (its size, and its members
    // in arrival order), and whether the engine is closed.
    let mut forming: HashMap<u8, (u32, Vec<usize>)> = HashMap::new();
    let mut expected: Vec<Option<Told>> = Vec::new();
    let mut closed = false;
    let waiting = |forming: &HashMap<u8, (u32, Vec<usize>)>| {
        forming
            .values()
            .map(|(_, members)| members.len())
            .sum::<usize>()
    };
    for step in steps {
        match *step {
            Step::Arrive {
                id,
                stray,
                expires,
                payload,
            } => {
                let i = calls.len();
                let parties = sizes[usize::from(id)] + u32::from(stray);
                let wait = if expires {
                    Duration::from_millis(200)
                } else {
                    LONG
                };
                sent.push(payload.payload(i));
                calls.push(Some(join(
                    &engine,
                    &ids[usize::from(id)].id(id),
                    parties,
                    &sent[i],
                    wait,
                )));
                told.push(None);
                let group = forming.get(&id);
                let outcome = if closed {
                    Some(Told::ShuttingDown)
                } else if let Some(&(size, _)) = group.filter(|(size, _)| *size != parties) {
                    Some(Told::Mismatch {
                        forming: size,
                        asked: parties,
                    })
                } else if group.is_some_and(|(_, members)| members.len() + 1 == parties as usize) {
                    let (_, mut members) = forming.remove(&id).unwrap();
                    members.push(i);
                    let group: Vec<String> = members.iter().map(|&m| describe(&sent[m])).collect();
                    let parked = &members[..members.len() - 1];
                    for (position, &member) in parked.iter().enumerate() {
                        expected[member] = Some(Told::Met {
                            position,
                            group: group.clone(),
                        });
                    }
                    Some(Told::Met {
                        position: members.len() - 1,
                        group,
                    })
                } else if waiting(&forming) >= capacity {
                    Some(Told::Full)
                } else if expires {
                    Some(Told::TimedOut)
                } else {
                    forming.entry(id).or_insert((parties, Vec::new())).1.push(i);
                    None
                };
                expected.push(outcome);
            }
            Step::Cancel(n) => {
                // Only a caller the model keeps waiting still has its call
                // here: `settle` took every answered one.
                if let Some(call) = calls.get_mut(n).and_then(Option::take) {
                    call.abort();
                    let outcome = call.await;
                    H::let_go(&engine).await;
                    prop_assert!(
                        outcome.as_ref().is_err_and(|e| e.is_cancelled()),
                        "caller {} was answered while it should wait: {:?}",
                        n,
                        outcome
                    );
                    for (_, members) in forming.values_mut() {
                        members.retain(|&m| m != n);
                    }
                    forming.retain(|_, (_, members)| !members.is_empty());
                    expected[n] = Some(Told::Cancelled);
                    told[n] = Some(Told::Cancelled);
                }
            }
            Step::Close => {
                within(engine.close()).await;
                closed = true;
                for (_, (_, members)) in forming.drain() {
                    for member in members {
                        expected[member] = Some(Told::ShuttingDown);
                    }
                }
            }
        }
        let now_waiting = waiting(&forming);
        settle(
            &*engine,
            &mut calls,
            &sent,
            &mut told,
            &expected,
            now_waiting,
        )
        .await;
        for (i, (want, got)) in expected.iter().zip(&told).enumerate() {
            prop_assert_eq!(want, got, "caller {} after {:?}", i, step);
        }
        prop_assert_eq!(engine.waiting(), now_waiting);
    }
    within(engine.close()).await;
    for call in calls.into_iter().flatten() {
        let _ = answer(call).await;
    }
    prop_assert_eq!(engine.waiting(), 0);
    h.assert_nothing_left().await;
    Ok(())
}

/// Waits until every caller the model has answered is answered, and the
/// engine's count of waiting callers is the model's; records the answers.
async fn settle<E: Engine>(
    engine: &E,
    calls: &mut [Option<Call>],
    sent: &[Vec<u8>],
    told: &mut [Option<Told>],
    expected: &[Option<Told>],
    waiting: usize,
) {
    for (i, call) in calls.iter_mut().enumerate() {
        if expected[i].is_none() || told[i].is_some() {
            continue;
        }
        let Some(call) = call.take() else { continue };
        let own = Bytes::copy_from_slice(&sent[i]);
        told[i] = Some(match answer(call).await {
            Ok(meeting) => Told::Met {
                position: meeting.position,
                group: meeting.payloads(&own).iter().map(|p| describe(p)).collect(),
            },
            Err(PairError::TimedOut) => Told::TimedOut,
            Err(PairError::Full { .. }) => Told::Full,
            Err(PairError::ShuttingDown) => Told::ShuttingDown,
            Err(PairError::PartiesMismatch { forming, asked }) => Told::Mismatch { forming, asked },
            Err(error) => panic!("{error}"),
        });
    }
    // Until the engine holds as many as the model, or a caller the model
    // keeps waiting was answered: then the failure names that answer.
    let answered_early = |calls: &[Option<Call>]| {
        calls.iter().enumerate().position(|(i, call)| {
            expected[i].is_none() && call.as_ref().is_some_and(JoinHandle::is_finished)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.waiting() != waiting && answered_early(calls).is_none() {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {waiting} waiting: the engine holds {}",
            engine.waiting()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(i) = answered_early(calls) {
        let outcome = answer(calls[i].take().unwrap()).await;
        panic!("caller {i} was answered while it should wait: {outcome:?}");
    }
}

pub async fn random_schedules_agree_with_the_model<H: Harness>() {
    let h = H::new().await;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    let runtime = tokio::runtime::Handle::current();
    // proptest runs each case synchronously; each blocks on this runtime
    // from a thread of its own.
    let result = tokio::task::block_in_place(|| {
        runner.run(&schedule(), |(steps, sizes, ids, capacity)| {
            runtime.block_on(agree(&h, &steps, sizes, ids, capacity))
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
