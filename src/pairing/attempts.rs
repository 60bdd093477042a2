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
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::watch,
    time::{Instant, sleep, sleep_until},
};

use super::{AttemptKey, Engine, Id, Meeting, Offer, PairError, Parties, Reuse};

/// How a keyed call got its answer, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The first call with its key, or a retry after the key was forgotten.
    Fresh,
    /// A retry that took over a wait still undecided, or decided while
    /// nobody was there to hear it.
    Reattached,
    /// A retry handed an answer that an earlier try was handed already.
    Redelivered,
}

impl Delivery {
    /// As the call's span records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Reattached => "reattached",
            Self::Redelivered => "redelivered",
        }
    }
}

/// The keyed waits of one service: open ones, and answers kept for the
/// grace. Shared by every connection of both protocols.
#[derive(Debug)]
pub struct Attempts {
    grace: Duration,
    waits: Mutex<HashMap<AttemptKey, Arc<Wait>>>,
}

/// One logical wait: what its first call asked for, and how it stands.
#[derive(Debug)]
struct Wait {
    id: Id,
    parties: Parties,
    payload: Bytes,
    state: watch::Sender<State>,
}

#[derive(Debug, Clone)]
struct State {
    /// The call that hears the answer: the newest with the key. `None`
    /// since `since`, when the last one went away.
    holder: Option<u64>,
    since: Instant,
    next_holder: u64,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptKey, Arc<Wait>>> {
        // Nothing panics while holding it; the map is consistent at each step.
        self.waits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Engine::gather`] for a call with `key`: the first call with the
    /// key starts the wait, and a later one takes it over (the one before
    /// is answered [`PairError::Superseded`]) or gets its answer.
    pub async fn gather<E: Engine>(
        self: &Arc<Self>,
        engine: &Arc<E>,
        key: AttemptKey,
        (id, parties, offer): (Id, Parties, Offer),
        deadline: Instant,
    ) -> (Result<Meeting, PairError>, Delivery) {
        let (wait, holder, fresh) = {
            let mut waits = self.lock();
            match waits.get(&key) {
                Some(wait) => {
                    if let Err(reuse) = wait.same(&id, parties, &offer.payload) {
                        return (Err(PairError::AttemptReused(reuse)), Delivery::Fresh);
                    }
                    (wait.clone(), wait.take_over(), false)
                }
                None => {
                    let wait = Arc::new(Wait {
                        id: id.clone(),
                        parties,
                        payload: offer.payload.clone(),
                        state: watch::Sender::new(State {
                            holder: Some(0),
                            since: Instant::now(),
                            next_holder: 1,
                            answer: None,
                            delivered: false,
                        }),
                    });
                    waits.insert(key.clone(), wait.clone());
                    let call = engine.clone();
                    let run = Self::run(
                        Arc::downgrade(self),
                        key,
                        wait.clone(),
                        self.grace,
                        async move { call.gather(id, parties, offer, deadline).await },
                    );
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
        let (answer, delivered_before) = holding.answer().await;
        let delivery = match (fresh, delivered_before) {
            (true, _) => Delivery::Fresh,
            (false, false) => Delivery::Reattached,
            (false, true) => Delivery::Redelivered,
        };
        (answer, delivery)
    }

    /// The wait's engine call, run apart from its callers: it ends with an
    /// answer, or when nobody has come back for it within the grace.
    async fn run(
        attempts: Weak<Self>,
        key: AttemptKey,
        wait: Arc<Wait>,
        grace: Duration,
        call: impl Future<Output = Result<Meeting, PairError>>,
    ) {
        // The call first: a decision that comes as the grace ends stands.
        let answer = tokio::select! {
            biased;
            answer = call => Some(answer),
            () = wait.abandoned(grace) => None,
        };
        if let Some(answer) = answer {
            let decided = matches!(answer, Ok(_) | Err(PairError::TimedOut));
            wait.state.send_modify(|state| state.answer = Some(answer));
            if decided {
                sleep(grace).await;
            }
        }
        if let Some(attempts) = attempts.upgrade() {
            let mut waits = attempts.lock();
            if waits.get(&key).is_some_and(|kept| Arc::ptr_eq(kept, &wait)) {
                waits.remove(&key);
            }
        }
    }
}

impl Wait {
    /// Whether a call asks for what the first call with the key asked for.
    fn same(&self, id: &Id, parties: Parties, payload: &Bytes) -> Result<(), Reuse> {
        if *id != self.id {
            return Err(Reuse::Id);
        }
        if parties != self.parties {
            return Err(Reuse::Parties);
        }
        if *payload != self.payload {
            return Err(Reuse::Payload);
        }
        Ok(())
    }

    /// Makes a new call the holder, and returns its number.
    fn take_over(&self) -> u64 {
        let mut holder = 0;
        self.state.send_modify(|state| {
            holder = state.next_holder;
            state.next_holder += 1;
            state.holder = Some(holder);
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
                self.wait.state.send_if_modified(|now| {
                    if now.holder != Some(self.holder) {
                        seen = Some((Err(PairError::Superseded), false));
                        return false;
                    }
                    let Some(answer) = now.answer.clone() else {
                        return false;
                    };
                    seen = Some((answer, now.delivered));
                    now.delivered = true;
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
