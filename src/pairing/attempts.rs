//! Attempt keys: a retry of one logical wait gets the first try's place
//! back, or its answer, instead of parking as a new caller.
//!
//! A call with a key does not wait in its caller's future. Its engine call
//! runs in a task of its own, and the caller's future only watches it. So a
//! stream that breaks (a proxy's route timeout, a lost connection) takes
//! nothing with it:
//! - **before the decision** the place stays in the engine for the grace
//!   (`--attempt-grace`), still counted against `--max-waiters`, and with
//!   its role or position, payload and deadline. A partner that comes then
//!   pairs with it, and the answer waits for the retry. After the grace with
//!   nobody back, the engine call is dropped: the caller is withdrawn, as a
//!   caller without a key is at once.
//! - **after the decision** (a pair, a group, a timeout) the answer is kept
//!   for the grace, and every retry gets it again, byte for byte.
//!
//! Refusals (full, unavailable, shutting down, a group of another size) are
//! not decisions: they are not kept, and a retry is a new try.
//!
//! Works the same over every engine, since it only holds an engine call: on
//! Redis, a retry re-attaches through the replica its first try reached.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, Once, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::{Notify, watch},
    time::{Instant, sleep_until},
};

use super::{
    Attempt, AttemptKey, Delivery, Engine, Id, Joining, Meeting, PairError, Parties, Reuse,
    TryOrder, Withdrawal, Withdrawing,
};

/// The keyed waits of one service: open ones, and answers kept for the
/// grace. Shared by every connection of both protocols.
#[derive(Debug)]
pub struct Attempts {
    grace: Duration,
    waits: Mutex<HashMap<AttemptKey, Arc<Wait>>>,
    /// Decided waits, oldest first, each with when it is forgotten. One
    /// task forgets them all (see [`Attempts::sweep`]): a task and a timer
    /// apiece would be paid for as long as each answer is kept. The grace
    /// is the same for every wait, so they are forgotten in this order.
    kept: Mutex<VecDeque<(Instant, AttemptKey, Arc<Wait>)>>,
    /// Tells the sweeper that `kept` has an entry again.
    more: Notify,
    sweeper: Once,
}

/// One logical wait: what its first call asked for, and how it stands.
#[derive(Debug)]
struct Wait {
    id: Id,
    parties: Parties,
    payload: Bytes,
    /// The first call's deadline, which the engine call keeps.
    deadline: Instant,
    state: watch::Sender<State>,
    /// Set by [`Attempts::withdraw`], for the engine call.
    withdrawing: Withdrawing,
    /// A withdrawal of a wait this process never saw, kept for the grace:
    /// it knows only its id, and refuses every try with its key.
    tombstone: bool,
}

#[derive(Debug, Clone)]
struct State {
    /// The call that hears the answer: the newest with the key. `None`
    /// since `since`, when the last one went away.
    holder: Option<u64>,
    since: Instant,
    next_holder: u64,
    /// The latest try of the wait that has come here.
    newest: TryOrder,
    answer: Option<Result<Meeting, PairError>>,
    /// Whether a call has been handed the answer.
    delivered: bool,
}

impl Attempts {
    /// Keyed waits hold their place, and then their answer, for `grace`.
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            grace,
            waits: Mutex::default(),
            kept: Mutex::default(),
            more: Notify::new(),
            sweeper: Once::new(),
        })
    }

    /// How many keyed waits are open or kept, for tests.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no keyed wait is open or kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<AttemptKey, Arc<Wait>>> {
        lock(&self.waits)
    }

    /// [`Engine::gather`] for a call with `key`, after `previous` tries of
    /// its wait (as its client counts): the first call with the key starts
    /// the wait, and a later one takes it over (the one before is answered
    /// [`PairError::Superseded`]) or gets its answer. An earlier try that
    /// comes after a later one is the one answered `Superseded`, unless the
    /// answer is known: every try gets that.
    pub async fn gather<E: Engine>(
        self: &Arc<Self>,
        engine: &Arc<E>,
        (key, previous): (AttemptKey, u32),
        Joining { id, parties, offer }: Joining,
        deadline: Instant,
    ) -> (Result<Meeting, PairError>, Delivery) {
        let order = TryOrder::now(previous);
        let (wait, holder, fresh) = {
            let mut waits = self.lock();
            match waits.get(&key) {
                Some(wait) => {
                    if let Err(reuse) = wait.same(&id, parties, &offer.payload) {
                        return (Err(PairError::AttemptReused(reuse)), Delivery::Fresh);
                    }
                    let Some(holder) = wait.take_over(order) else {
                        return (Err(PairError::Superseded), Delivery::Fresh);
                    };
                    (wait.clone(), holder, false)
                }
                None => {
                    let wait = Arc::new(Wait {
                        id: id.clone(),
                        parties,
                        payload: offer.payload.clone(),
                        deadline,
                        state: watch::Sender::new(State {
                            holder: Some(0),
                            since: Instant::now(),
                            next_holder: 1,
                            newest: order,
                            answer: None,
                            delivered: false,
                        }),
                        withdrawing: Withdrawing::default(),
                        tombstone: false,
                    });
                    waits.insert(key.clone(), wait.clone());
                    let call = (Joining { id, parties, offer }, deadline);
                    let run = self.clone().run(engine.clone(), key, wait.clone(), call);
                    tokio::spawn(run);
                    (wait, 0, true)
                }
            }
        };
        let mut holding = Holding {
            wait: &wait,
            holder,
            settled: false,
        };
        // A retry that asks to wait less than the wait's first try did is
        // answered at its own deadline, and lets go as a cut one does: the
        // place stays for the grace.
        let (answer, delivered_before) = if deadline < wait.deadline {
            tokio::select! {
                biased;
                seen = holding.answer() => seen,
                () = sleep_until(deadline) => (Err(PairError::TimedOut), false),
            }
        } else {
            holding.answer().await
        };
        let delivery = match (fresh, delivered_before) {
            // New here; but an engine that replicas share may have had the
            // wait through another replica.
            (true, _) => answer
                .as_ref()
                .map_or(Delivery::Fresh, |meeting| meeting.handed),
            (false, false) => Delivery::Reattached,
            (false, true) => Delivery::Redelivered,
        };
        (answer, delivery)
    }

    /// Withdraws the keyed wait `key` for `id`: its caller gave up, and
    /// says so, rather than leave its place held for the grace as a broken
    /// connection does. Through any replica: the engine takes the place out
    /// wherever it is held ([`Engine::withdraw`]); a wait held here ends
    /// as at its deadline, unless it was decided first. Either way a try
    /// with the key within the grace is refused, so that one still on its
    /// way does not park for a caller that has gone. Waits at most until
    /// `deadline` for a wait held here to end.
    pub async fn withdraw<E: Engine>(
        self: &Arc<Self>,
        engine: &E,
        (id, key): (Id, AttemptKey),
        deadline: Instant,
    ) -> Result<Withdrawal, PairError> {
        let held = self.withdraw_here(&id, &key, false)?;
        let found = engine.withdraw(id.clone(), &key, self.grace).await?;
        if found != Withdrawal::Unknown {
            return Ok(found);
        }
        // Looked up again: a first try may have come here meanwhile.
        let held = match held {
            Some(wait) => wait,
            None => match self.withdraw_here(&id, &key, true)? {
                Some(wait) => wait,
                None => return Ok(Withdrawal::Unknown),
            },
        };
        let mut state = held.state.subscribe();
        let ended = tokio::time::timeout_at(deadline, state.wait_for(|s| s.answer.is_some())).await;
        Ok(match ended {
            Ok(Ok(state)) => Withdrawal::after(state.answer.as_ref().expect("waited for")),
            // Still undecided at the caller's deadline: the engine call
            // has been asked to end, and will.
            _ => Withdrawal::Unknown,
        })
    }

    /// Asks the wait held here under `key` to end, and returns it; or, if
    /// none is and `or_keep`, keeps a withdrawal in its stead for the
    /// grace, which refuses the key's tries.
    fn withdraw_here(
        self: &Arc<Self>,
        id: &Id,
        key: &AttemptKey,
        or_keep: bool,
    ) -> Result<Option<Arc<Wait>>, PairError> {
        let mut waits = self.lock();
        if let Some(wait) = waits.get(key) {
            if wait.id != *id {
                return Err(PairError::AttemptReused(Reuse::Id));
            }
            if wait.tombstone {
                return Ok(None);
            }
            wait.withdrawing.request();
            return Ok(Some(wait.clone()));
        }
        if !or_keep {
            return Ok(None);
        }
        let now = Instant::now();
        let tombstone = Arc::new(Wait {
            id: id.clone(),
            parties: Parties::TWO,
            payload: Bytes::new(),
            deadline: now,
            state: watch::Sender::new(State {
                holder: None,
                since: now,
                next_holder: 0,
                newest: TryOrder::now(0),
                answer: Some(Err(PairError::Withdrawn)),
                delivered: false,
            }),
            withdrawing: Withdrawing::default(),
            tombstone: true,
        });
        waits.insert(key.clone(), tombstone.clone());
        drop(waits);
        self.keep(key.clone(), tombstone);
        Ok(None)
    }

    /// The wait's engine call, run apart from its callers: it ends with an
    /// answer, or when nobody has come back for it within the grace.
    async fn run<E: Engine>(
        self: Arc<Self>,
        engine: Arc<E>,
        key: AttemptKey,
        wait: Arc<Wait>,
        (call, deadline): (Joining, Instant),
    ) {
        let grace = self.grace;
        let mut order = wait.state.borrow().newest;
        let answer = loop {
            let attempt = Attempt {
                key: &key,
                grace,
                order,
                withdrawing: &wait.withdrawing,
            };
            let engine_call = engine.gather_keyed(call.clone(), deadline, attempt);
            // The call first: a decision that comes as the grace ends stands.
            let answer = tokio::select! {
                biased;
                answer = engine_call => answer,
                () = wait.abandoned(grace) => break None,
            };
            if !matches!(answer, Err(PairError::Superseded)) {
                break Some(answer);
            }
            // A try through another replica holds the wait now. A call
            // here since may be newer still: the engine call is made again
            // for it. Decided under the lock that calls take the wait over
            // with, so that none comes to a wait that is over.
            let mut waits = self.lock();
            let newest = wait.state.borrow().newest;
            if newest > order {
                order = newest;
                continue;
            }
            wait.state.send_modify(|state| state.answer = Some(answer));
            return forget(&mut waits, &key, &wait);
        };
        if let Some(answer) = answer {
            // A withdrawal is kept as a decision is: a try still on its way
            // is refused, not parked for a caller that gave up.
            let decided = matches!(
                answer,
                Ok(_) | Err(PairError::TimedOut | PairError::Withdrawn)
            );
            wait.state.send_modify(|state| state.answer = Some(answer));
            if decided {
                return self.keep(key, wait);
            }
        }
        self.forget(&key, &wait);
    }

    /// Keeps a decided wait's answer for the grace.
    fn keep(self: &Arc<Self>, key: AttemptKey, wait: Arc<Wait>) {
        self.sweeper
            .call_once(|| drop(tokio::spawn(self.clone().sweep())));
        let mut kept = lock(&self.kept);
        if kept.is_empty() {
            self.more.notify_one();
        }
        kept.push_back((Instant::now() + self.grace, key, wait));
    }

    /// Forgets each kept answer at its time.
    async fn sweep(self: Arc<Self>) {
        loop {
            match self.forget_expired() {
                Some(next) => sleep_until(next).await,
                // A permit is kept if the entry came first: nothing is missed.
                None => self.more.notified().await,
            }
        }
    }

    /// Forgets the answers whose grace is over; returns when the next one's
    /// ends.
    fn forget_expired(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut kept = lock(&self.kept);
        while let Some(&(at, ..)) = kept.front() {
            if at > now {
                return Some(at);
            }
            let (_, key, wait) = kept.pop_front().expect("looked at");
            self.forget(&key, &wait);
        }
        None
    }

    fn forget(&self, key: &AttemptKey, wait: &Arc<Wait>) {
        forget(&mut self.lock(), key, wait);
    }
}

/// Forgets `wait`, if `key` still names it (a wait after it may have taken
/// the key since).
fn forget(waits: &mut HashMap<AttemptKey, Arc<Wait>>, key: &AttemptKey, wait: &Arc<Wait>) {
    if waits.get(key).is_some_and(|kept| Arc::ptr_eq(kept, wait)) {
        waits.remove(key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding one; each is consistent at every step.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Wait {
    /// Whether a call asks for what the first call with the key asked for.
    /// A withdrawal this process knew nothing else of knows only the id.
    fn same(&self, id: &Id, parties: Parties, payload: &Bytes) -> Result<(), Reuse> {
        if *id != self.id {
            return Err(Reuse::Id);
        }
        if self.tombstone {
            return Ok(());
        }
        if parties != self.parties {
            return Err(Reuse::Parties);
        }
        if *payload != self.payload {
            return Err(Reuse::Payload);
        }
        Ok(())
    }

    /// Makes a call that is try `order` the holder, and returns its
    /// number; `None` if a later try has come, and the wait is undecided.
    fn take_over(&self, mut order: TryOrder) -> Option<u64> {
        let mut holder = None;
        self.state.send_if_modified(|state| {
            let number = state.next_holder;
            state.next_holder += 1;
            if state.answer.is_some() {
                // Any try may hear the answer: nothing to take over.
                holder = Some(number);
                return false;
            }
            if order.previous < state.newest.previous {
                return false;
            }
            // Of two tries with one count, the later to come is the later,
            // even if the clock stepped back in between.
            let after = state.newest.tried + Duration::from_micros(1);
            order.tried = order.tried.max(after);
            state.newest = order;
            state.holder = Some(number);
            holder = Some(number);
            true
        });
        holder
    }

    /// Completes once nobody has held the wait for `grace`.
    async fn abandoned(&self, grace: Duration) {
        let mut state = self.state.subscribe();
        loop {
            let gone_since = match &*state.borrow_and_update() {
                State {
                    holder: None,
                    since,
                    ..
                } => Some(*since),
                _ => None,
            };
            match gone_since {
                Some(since) => tokio::select! {
                    () = sleep_until(since + grace) => return,
                    _ = state.changed() => {}
                },
                // The sender lives in `self`: `changed` cannot fail here.
                None => {
                    let _ = state.changed().await;
                }
            }
        }
    }
}

/// A call's hold on a wait. Dropped before the answer (its caller went
/// away), it lets go, and the grace starts.
struct Holding<'a> {
    wait: &'a Wait,
    holder: u64,
    settled: bool,
}

impl Holding<'_> {
    /// The wait's answer, and whether a call had been handed it before; or
    /// [`PairError::Superseded`] once a newer call holds the wait.
    async fn answer(&mut self) -> (Result<Meeting, PairError>, bool) {
        let mut state = self.wait.state.subscribe();
        loop {
            {
                let mut seen = None;
                // The answer first: every try may hear it, even one that a
                // later try took over from as it came.
                self.wait.state.send_if_modified(|now| {
                    if let Some(answer) = now.answer.clone() {
                        seen = Some((answer, now.delivered));
                        now.delivered = true;
                    } else if now.holder != Some(self.holder) {
                        seen = Some((Err(PairError::Superseded), false));
                    }
                    false
                });
                if let Some(seen) = seen {
                    self.settled = true;
                    return seen;
                }
            }
            // The sender lives in the wait: `changed` cannot fail here.
            let _ = state.changed().await;
        }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let holder = self.holder;
        self.wait.state.send_if_modified(|state| {
            if state.holder != Some(holder) {
                return false;
            }
            state.holder = None;
            state.since = Instant::now();
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;
    use crate::pairing::{LocalEngine, Offer, Offers, Role};

    const GRACE: Duration = Duration::from_secs(5);
    const FAR: Duration = Duration::from_secs(60);

    fn key(k: &str) -> AttemptKey {
        AttemptKey::in_namespace(None, k).unwrap().unwrap()
    }

    fn ask(id: &str, parties: u32, payload: &'static [u8]) -> Joining {
        Joining {
            id: Id::new(id).unwrap(),
            parties: Parties::new(parties, 64).unwrap(),
            offer: Bytes::from_static(payload).into(),
        }
    }

    struct Fixture {
        engine: Arc<LocalEngine>,
        attempts: Arc<Attempts>,
    }

    type Answer = (Result<Meeting, PairError>, Delivery);

    impl Fixture {
        fn new() -> Self {
            Self {
                engine: Arc::new(LocalEngine::new()),
                attempts: Attempts::new(GRACE),
            }
        }

        /// A keyed call, spawned: its handle, which aborting cuts as a
        /// broken stream would.
        fn call(
            &self,
            k: &str,
            asked: (&str, u32, &'static [u8]),
            wait: Duration,
        ) -> tokio::task::JoinHandle<Answer> {
            self.try_after(0, k, asked, wait)
        }

        /// [`Fixture::call`], as the try after `previous` others.
        fn try_after(
            &self,
            previous: u32,
            k: &str,
            (id, parties, payload): (&str, u32, &'static [u8]),
            wait: Duration,
        ) -> tokio::task::JoinHandle<Answer> {
            let (engine, attempts, key) = (self.engine.clone(), self.attempts.clone(), key(k));
            let ask = ask(id, parties, payload);
            let deadline = Instant::now() + wait;
            tokio::spawn(async move {
                let attempt = (key, previous);
                attempts.gather(&engine, attempt, ask, deadline).await
            })
        }

        /// A call without a key, straight to the engine.
        fn plain(
            &self,
            (id, parties, payload): (&str, u32, &'static [u8]),
            wait: Duration,
        ) -> tokio::task::JoinHandle<Result<Meeting, PairError>> {
            let engine = self.engine.clone();
            let Joining { id, parties, offer } = ask(id, parties, payload);
            let deadline = Instant::now() + wait;
            tokio::spawn(async move { engine.gather(id, parties, offer, deadline).await })
        }

        /// Lets every spawned task run until it waits.
        async fn settle(&self) {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        }

        async fn cut(&self, call: tokio::task::JoinHandle<Answer>) {
            call.abort();
            assert!(call.await.unwrap_err().is_cancelled());
            self.settle().await;
        }
    }

    fn paired(answer: &Answer) -> (Role, Bytes, Delivery) {
        let meeting = answer.0.as_ref().expect("paired");
        (meeting.role(), meeting.peer().payload.clone(), answer.1)
    }

    const A: (&str, u32, &[u8]) = ("a", 2, b"from a");
    const B: (&str, u32, &[u8]) = ("a", 2, b"from b");

    /// Cut while parked, retried before anyone came: the retry takes the
    /// place back, as the first party, with the first try's deadline.
    #[tokio::test(start_paused = true)]
    async fn a_retry_while_parked_takes_the_place_back() {
        let f = Fixture::new();
        let first = f.call("k", A, Duration::from_secs(10));
        f.settle().await;
        f.cut(first).await;
        assert_eq!(f.engine.waiting(), 1, "the place is held through the cut");
        assert_eq!((f.attempts.len(), f.attempts.is_empty()), (1, false));
        tokio::time::advance(Duration::from_secs(2)).await;
        let retry = f.call("k", A, FAR);
        f.settle().await;
        assert_eq!(f.engine.waiting(), 1, "the retry did not park again");
        let partner = f.plain(B, FAR).await.unwrap().unwrap();
        assert_eq!(partner.role(), Role::Second);
        assert_eq!(partner.peer().payload, "from a");
        let retry = retry.await.unwrap();
        assert_eq!(
            paired(&retry),
            (Role::First, "from b".into(), Delivery::Reattached)
        );
        assert_eq!(retry.0.unwrap().waited, Duration::from_secs(2));
        // The first try's deadline holds: a retry after it is told so.
        let late = f.call("k2", A, Duration::from_secs(1));
        f.settle().await;
        f.cut(late).await;
        let retry = f.call("k2", A, FAR).await.unwrap();
        assert_eq!(retry, (Err(PairError::TimedOut), Delivery::Reattached));
    }

    /// Cut while parked, a partner comes within the grace: it pairs, and
    /// the answer waits for the retry.
    #[tokio::test(start_paused = true)]
    async fn a_partner_in_the_grace_pairs_and_the_answer_waits_for_the_retry() {
        let f = Fixture::new();
        let first = f.call("k", A, FAR);
        f.settle().await;
        f.cut(first).await;
        tokio::time::advance(GRACE - Duration::from_millis(1)).await;
        let partner = f.plain(B, FAR).await.unwrap().unwrap();
        assert_eq!(partner.peer().payload, "from a");
        tokio::time::advance(GRACE - Duration::from_millis(1)).await;
        let retry = f.call("k", A, FAR).await.unwrap();
        assert_eq!(
            paired(&retry),
            (Role::First, "from b".into(), Delivery::Reattached)
        );
        // Delivered once; every retry after gets it again, the same.
        let again = f.call("k", A, FAR).await.unwrap();
        assert_eq!(again.0, retry.0);
        assert_eq!(again.1, Delivery::Redelivered);
    }

    /// Nobody back within the grace: the place goes, as a keyless caller's
    /// goes at once, and the key is forgotten.
    #[tokio::test(start_paused = true)]
    async fn after_the_grace_the_place_is_gone() {
        let f = Fixture::new();
        let first = f.call("k", A, FAR);
        f.settle().await;
        f.cut(first).await;
        tokio::time::advance(GRACE).await;
        f.settle().await;
        assert_eq!(f.engine.waiting(), 0);
        assert!(f.attempts.is_empty());
        let partner = f.plain(B, Duration::from_secs(1)).await.unwrap();
        assert_eq!(partner, Err(PairError::TimedOut));
        // A retry now is a new wait.
        let retry = f.call("k", A, Duration::from_secs(1)).await.unwrap();
        assert_eq!(retry, (Err(PairError::TimedOut), Delivery::Fresh));
    }

    /// An answer that reached its caller is handed again to a retry with
    /// the same key, the same, and not after the grace.
    #[tokio::test(start_paused = true)]
    async fn an_answer_is_handed_again_within_the_grace() {
        let f = Fixture::new();
        let members = [b"m0", b"m1"].map(|p| {
            let call = f.call(std::str::from_utf8(p).unwrap(), ("g", 3, p), FAR);
            (call, p)
        });
        f.settle().await;
        let last = f.call("m2", ("g", 3, b"m2"), FAR).await.unwrap();
        assert_eq!(last.1, Delivery::Fresh);
        for (call, _) in members {
            assert_eq!(call.await.unwrap().1, Delivery::Fresh);
        }
        let again = f.call("m0", ("g", 3, b"m0"), FAR).await.unwrap();
        let meeting = again.0.unwrap();
        assert_eq!(again.1, Delivery::Redelivered);
        assert_eq!(meeting.position, 0);
        assert_eq!(meeting.payloads(&"m0".into()), ["m0", "m1", "m2"]);
        assert_eq!(f.attempts.len(), 3, "every member's answer is kept");
        tokio::time::advance(GRACE).await;
        f.settle().await;
        assert!(f.attempts.is_empty(), "kept past the grace");
    }

    /// A group member cut while it waits keeps its position.
    #[tokio::test(start_paused = true)]
    async fn a_group_member_keeps_its_position() {
        let f = Fixture::new();
        let first = f.call("m0", ("g", 3, b"m0"), FAR);
        f.settle().await;
        let second = f.call("m1", ("g", 3, b"m1"), FAR);
        f.settle().await;
        f.cut(first).await;
        let retry = f.call("m0", ("g", 3, b"m0"), FAR);
        f.settle().await;
        let last = f.plain(("g", 3, b"m2"), FAR).await.unwrap().unwrap();
        assert_eq!(last.position, 2);
        let retry = retry.await.unwrap();
        assert_eq!(retry.1, Delivery::Reattached);
        assert_eq!(retry.0.unwrap().position, 0);
        assert_eq!(second.await.unwrap().0.unwrap().position, 1);
    }

    /// Two open calls with one key: the newer takes over.
    #[tokio::test(start_paused = true)]
    async fn the_newer_of_two_open_calls_takes_over() {
        let f = Fixture::new();
        let older = f.call("k", A, FAR);
        f.settle().await;
        let newer = f.call("k", A, FAR);
        f.settle().await;
        assert_eq!(
            older.await.unwrap(),
            (Err(PairError::Superseded), Delivery::Fresh)
        );
        // And so on: each retry is newer than the last.
        let newer_still = f.call("k", A, FAR);
        f.settle().await;
        assert_eq!(
            newer.await.unwrap(),
            (Err(PairError::Superseded), Delivery::Reattached)
        );
        let newer = newer_still;
        assert_eq!(f.engine.waiting(), 1);
        f.plain(B, FAR).await.unwrap().unwrap();
        assert_eq!(
            paired(&newer.await.unwrap()),
            (Role::First, "from b".into(), Delivery::Reattached)
        );
    }

    /// A key stands for one request: another id, size or payload is
    /// refused, and the wait it names is left as it was.
    #[tokio::test(start_paused = true)]
    async fn a_key_reused_for_another_request_is_refused() {
        let f = Fixture::new();
        let first = f.call("k", A, FAR);
        f.settle().await;
        for (other, reuse) in [
            (("b", 2, &b"from a"[..]), Reuse::Id),
            (("a", 3, b"from a"), Reuse::Parties),
            (("a", 2, b"other"), Reuse::Payload),
        ] {
            let refused = f.call("k", other, FAR).await.unwrap();
            assert_eq!(
                refused,
                (Err(PairError::AttemptReused(reuse)), Delivery::Fresh)
            );
        }
        f.plain(B, FAR).await.unwrap().unwrap();
        assert_eq!(paired(&first.await.unwrap()).2, Delivery::Fresh);
    }

    /// Keys are scoped to their namespace: the same key in another one is
    /// another wait.
    #[tokio::test(start_paused = true)]
    async fn keys_are_per_namespace() {
        let ours = AttemptKey::in_namespace(Some("ours"), "k")
            .unwrap()
            .unwrap();
        let theirs = AttemptKey::in_namespace(Some("theirs"), "k")
            .unwrap()
            .unwrap();
        assert_ne!(ours, theirs);
        // As Redis keeps it: half the scoped key's SHA-256, in hex.
        assert_eq!(
            crate::hex::Hex16::new(&ours.hash()).as_str(),
            "54f5f7dedd895464046d4e17f024a2ef"
        );
        assert_eq!(AttemptKey::in_namespace(None, ""), Ok(None));
        assert_eq!(
            AttemptKey::in_namespace(None, &"k".repeat(129)),
            Err(crate::pairing::AttemptKeyError::TooLong { len: 129 })
        );
        assert!(AttemptKey::in_namespace(None, &"k".repeat(128)).is_ok());
        for bad in ["a b", "é", "a\n"] {
            assert_eq!(
                AttemptKey::in_namespace(None, bad),
                Err(crate::pairing::AttemptKeyError::NotPrintable),
                "{bad:?}"
            );
        }
        assert_eq!(format!("{ours:?}"), "AttemptKey(6 bytes)");
    }

    /// A refusal is not a decision: a retry is a new try.
    #[tokio::test(start_paused = true)]
    async fn refusals_are_not_kept() {
        let f = Fixture {
            engine: Arc::new(LocalEngine::with_capacity(1)),
            attempts: Attempts::new(GRACE),
        };
        let _other = f.plain(("x", 2, b""), FAR);
        f.settle().await;
        let full = f.call("k", A, FAR).await.unwrap();
        assert_eq!(full.0, Err(PairError::Full { capacity: 1 }));
        f.settle().await;
        assert!(f.attempts.is_empty());
    }

    /// A place held for a retry never outlives its caller's deadline, and
    /// its timeout is an answer like any other.
    #[tokio::test(start_paused = true)]
    async fn a_held_place_ends_at_the_deadline() {
        let f = Fixture::new();
        let first = f.call("k", A, Duration::from_secs(1));
        f.settle().await;
        f.cut(first).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        f.settle().await;
        assert_eq!(f.engine.waiting(), 0);
        let retry = f.call("k", A, FAR).await.unwrap();
        assert_eq!(retry, (Err(PairError::TimedOut), Delivery::Reattached));
    }

    /// The call was cut before it reached the engine (before its arrival
    /// was recorded): there is nothing to take back, and the retry is the
    /// first try.
    #[tokio::test(start_paused = true)]
    async fn a_call_cut_before_it_arrived_leaves_nothing() {
        let f = Fixture::new();
        drop(f.attempts.gather(
            &f.engine,
            (key("k"), 0),
            ask("a", 2, b""),
            Instant::now() + FAR,
        ));
        assert!(f.attempts.is_empty());
        let retry = f.call("k", ("a", 2, b""), FAR);
        f.settle().await;
        let mut retry = std::pin::pin!(retry);
        assert!(matches!(futures_poll(retry.as_mut()), Poll::Pending));
        f.plain(("a", 2, b""), FAR).await.unwrap().unwrap();
        assert_eq!(retry.await.unwrap().1, Delivery::Fresh);
    }

    /// A retry that asks to wait less than its first try did is answered
    /// at its own deadline, and lets go as a cut try does: the place stays
    /// for the grace, for a partner and a retry after it.
    #[tokio::test(start_paused = true)]
    async fn a_retry_with_a_shorter_wait_is_answered_at_its_own_deadline() {
        let f = Fixture::new();
        let first = f.call("k", A, Duration::from_secs(30));
        f.settle().await;
        f.cut(first).await;
        let short = f.call("k", A, Duration::from_secs(1));
        f.settle().await;
        tokio::time::advance(Duration::from_millis(999)).await;
        f.settle().await;
        assert!(!short.is_finished(), "not before its deadline");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            short.await.unwrap(),
            (Err(PairError::TimedOut), Delivery::Reattached)
        );
        assert_eq!(f.engine.waiting(), 1, "the place stays");
        f.plain(B, FAR).await.unwrap().unwrap();
        assert_eq!(
            paired(&f.call("k", A, FAR).await.unwrap()),
            (Role::First, "from b".into(), Delivery::Reattached)
        );
    }

    /// A try that comes after a later try of its wait (its request was
    /// slower) is the one answered superseded: the later keeps the wait,
    /// whatever the order they came in. Once the answer is known, every
    /// try gets it, the late one too.
    #[tokio::test(start_paused = true)]
    async fn a_late_earlier_try_leaves_the_wait_to_the_later_one() {
        let f = Fixture::new();
        let later = f.try_after(1, "k", A, FAR);
        f.settle().await;
        let earlier = f.try_after(0, "k", A, FAR).await.unwrap();
        assert_eq!(earlier, (Err(PairError::Superseded), Delivery::Fresh));
        // Of two with one count, the one that comes last is the later.
        let same = f.try_after(1, "k", A, FAR);
        f.settle().await;
        assert!(later.is_finished(), "taken over by the same count");
        assert_eq!(later.await.unwrap().0, Err(PairError::Superseded));
        assert_eq!(f.engine.waiting(), 1, "one place through it all");
        f.plain(B, FAR).await.unwrap().unwrap();
        assert_eq!(
            paired(&same.await.unwrap()),
            (Role::First, "from b".into(), Delivery::Reattached)
        );
        let late = f.try_after(0, "k", A, FAR).await.unwrap();
        assert_eq!(
            paired(&late),
            (Role::First, "from b".into(), Delivery::Redelivered)
        );
    }

    /// An engine that replicas share, played by the test: each keyed call
    /// waits until the test answers it, as the meeting place would, and
    /// records when its try reached this replica.
    use std::time::SystemTime;

    #[derive(Default)]
    struct Shared {
        calls: Mutex<Vec<(SystemTime, Answering)>>,
    }

    type Answering = tokio::sync::oneshot::Sender<Result<Meeting, PairError>>;

    impl Shared {
        fn calls(&self) -> Vec<SystemTime> {
            lock(&self.calls).iter().map(|(tried, _)| *tried).collect()
        }

        /// Ends the `n`th engine call with `answer`.
        fn answer(&self, n: usize, answer: Result<Meeting, PairError>) {
            let (_, call) = lock(&self.calls).remove(n);
            call.send(answer).unwrap();
        }
    }

    impl Engine for Shared {
        async fn gather(
            &self,
            _: Id,
            _: Parties,
            _: Offer,
            _: Instant,
        ) -> Result<Meeting, PairError> {
            unreachable!("every call here has a key")
        }

        fn gather_keyed(
            &self,
            _: Joining,
            _: Instant,
            attempt: Attempt<'_>,
        ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
            let (answer, answered) = tokio::sync::oneshot::channel();
            lock(&self.calls).push((attempt.order.tried, answer));
            async move { answered.await.expect("answered") }
        }

        async fn close(&self) {}

        fn waiting(&self) -> usize {
            lock(&self.calls).len()
        }

        fn reachable(&self) -> watch::Receiver<bool> {
            watch::channel(true).1
        }
    }

    fn shared_call(
        attempts: &Arc<Attempts>,
        engine: &Arc<Shared>,
        k: &'static str,
    ) -> tokio::task::JoinHandle<Answer> {
        let (attempts, engine) = (attempts.clone(), engine.clone());
        let deadline = Instant::now() + FAR;
        tokio::spawn(async move {
            attempts
                .gather(&engine, (key(k), 0), ask("a", 2, b"from a"), deadline)
                .await
        })
    }

    /// A try through another replica took the wait over (the shared engine
    /// ends this replica's call superseded), but a retry came here after
    /// it: the engine call is made again, for the retry's later time, and
    /// the retry gets its answer. With no later call here, the one holding
    /// the wait is told it was superseded, and the key is forgotten.
    #[tokio::test(start_paused = true)]
    async fn a_wait_taken_over_elsewhere_is_asked_for_again_by_a_later_call() {
        let (attempts, engine) = (Attempts::new(GRACE), Arc::new(Shared::default()));
        let first = shared_call(&attempts, &engine, "k");
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let [first_tried] = engine.calls()[..] else {
            panic!("one engine call")
        };
        first.abort();
        let _ = first.await;
        let retry = shared_call(&attempts, &engine, "k");
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        engine.answer(0, Err(PairError::Superseded));
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let [again] = engine.calls()[..] else {
            panic!("asked again, once")
        };
        assert!(again > first_tried, "for the retry's later time");
        let partner = Offer::from(Bytes::from_static(b"from b"));
        engine.answer(
            0,
            Ok(Meeting::new(
                0,
                Offers::Peer(partner.clone()),
                Duration::ZERO,
            )),
        );
        let (answer, delivery) = retry.await.unwrap();
        assert_eq!(
            (answer.unwrap().peer(), delivery),
            (&partner, Delivery::Reattached)
        );

        let holder = shared_call(&attempts, &engine, "k2");
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        engine.answer(0, Err(PairError::Superseded));
        let answer = holder.await.unwrap();
        assert_eq!(answer, (Err(PairError::Superseded), Delivery::Fresh));
        assert!(engine.calls().is_empty(), "not asked again");
        assert_eq!(attempts.len(), 1, "k2 is forgotten; k's answer is kept");
    }

    /// The span's `attempt` field names how the answer came.
    #[test]
    fn deliveries_are_named_for_the_span() {
        let names =
            [Delivery::Fresh, Delivery::Reattached, Delivery::Redelivered].map(Delivery::as_str);
        assert_eq!(names, ["fresh", "reattached", "redelivered"]);
    }

    fn futures_poll<F: Future + ?Sized>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }
}
