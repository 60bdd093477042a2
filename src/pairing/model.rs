//! A loom model of one shard: every interleaving of a few callers with one
//! id, with deadlines, a cancellation and a shutdown in the mix.
//!
//! `shard.rs` is compiled here a second time, with `super::sync` resolving to
//! the loom versions below instead of the standard library's and tokio's. The
//! model therefore checks the engine's own code, not a copy of it.
//!
//! What it checks, in every interleaving loom explores:
//! - a caller told it paired got its partner's payload, and that partner was
//!   told it paired with this caller's payload;
//! - a caller that had gone (cancelled, its handler dropped) before another
//!   arrived is never that caller's partner;
//! - once every caller has finished, no waiter is left in the map and every
//!   place taken against the cap has been given back.
//!
//! The deadline is a future: ready at once (it fires whenever loom schedules
//! the waiter next, so every ordering against the partner's arrival is
//! explored) or never ready.
//!
//! `cargo test` runs it with at most three preemptions per execution, which
//! takes seconds; `scripts/loom.sh` runs a larger bound in release mode
//! (`RENDEZVOUS_LOOM_PREEMPTIONS=<n>` or `none`).

use std::{
    future::{Future, pending, ready},
    pin::pin,
    sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use loom::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use super::{Id, Offer};

/// The primitives `shard.rs` synchronises with, as loom models them.
mod sync {
    pub(super) use loom::sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    };

    /// tokio's oneshot channel as far as the engine relies on it (tokio
    /// model-checks its own): a send into a dropped receiver hands the value
    /// back; a value sent is there for `try_recv` at once; dropping the
    /// sender without sending ends the receiver's wait with an error.
    pub(super) mod oneshot {
        use std::{
            future::Future,
            pin::Pin,
            task::{Context, Poll, Waker},
        };

        use loom::sync::{Arc, Mutex};

        struct Channel<T> {
            value: Option<T>,
            sender_gone: bool,
            receiver_gone: bool,
            waker: Option<Waker>,
        }

        pub(crate) struct Sender<T>(Arc<Mutex<Channel<T>>>);
        pub(crate) struct Receiver<T>(Arc<Mutex<Channel<T>>>);

        /// Nothing was sent, and nothing will be.
        #[derive(Debug)]
        pub(crate) struct Closed;

        pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
            let channel = Arc::new(Mutex::new(Channel {
                value: None,
                sender_gone: false,
                receiver_gone: false,
                waker: None,
            }));
            (Sender(channel.clone()), Receiver(channel))
        }

        impl<T> Sender<T> {
            pub(crate) fn send(self, value: T) -> Result<(), T> {
                let mut channel = self.0.lock().unwrap();
                if channel.receiver_gone {
                    return Err(value);
                }
                channel.value = Some(value);
                if let Some(waker) = channel.waker.take() {
                    waker.wake();
                }
                Ok(())
            }
        }

        impl<T> Drop for Sender<T> {
            fn drop(&mut self) {
                let mut channel = self.0.lock().unwrap();
                channel.sender_gone = true;
                if let Some(waker) = channel.waker.take() {
                    waker.wake();
                }
            }
        }

        impl<T> Receiver<T> {
            pub(crate) fn try_recv(&mut self) -> Result<T, Closed> {
                self.0.lock().unwrap().value.take().ok_or(Closed)
            }
        }

        impl<T> Future for Receiver<T> {
            type Output = Result<T, Closed>;

            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                let mut channel = self.0.lock().unwrap();
                if let Some(value) = channel.value.take() {
                    Poll::Ready(Ok(value))
                } else if channel.sender_gone {
                    Poll::Ready(Err(Closed))
                } else {
                    channel.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }

        impl<T> Drop for Receiver<T> {
            fn drop(&mut self) {
                self.0.lock().unwrap().receiver_gone = true;
            }
        }
    }
}

// The engine's own shard code, built a second time on purpose, against the
// primitives above. The model does not use every item in it.
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "shard.rs"]
mod shard;

use shard::{Arrival, Occupancy, Outcome, Shard};

/// One shard and its cap, shared by the model's threads.
struct World {
    shard: Shard,
    occupancy: Occupancy,
}

/// Every id in the model hashes alike, so that ids that differ still share
/// buckets: cleanup must go by ticket, not by hash.
const HASH: u64 = 42;

/// How a caller behaves once it has parked.
#[derive(Clone, Copy)]
enum Plan {
    /// Its deadline fires as soon as it next runs.
    Deadline,
    /// It has no deadline: it waits for a partner or the shutdown.
    Patient,
    /// It goes away mid-wait: its future is polled once, then dropped.
    Cancel,
}

/// What a caller was told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    /// Paired on arrival (the second party), with this peer payload.
    Second(Bytes),
    /// Paired after parking (the first party), with this peer payload.
    First(Bytes),
    TimedOut,
    Closed,
    Full,
    /// It went away; whatever happened to its entry, it was told nothing.
    Gone,
}

impl Told {
    fn peer(&self) -> Option<&Bytes> {
        match self {
            Told::Second(peer) | Told::First(peer) => Some(peer),
            _ => None,
        }
    }
}

/// A caller with `id` and `payload` that follows `plan`.
fn call(world: &World, id: &str, payload: &'static [u8], plan: Plan) -> Told {
    let id = Id::new(id).unwrap();
    let parking = match world.shard.arrive(
        id,
        HASH,
        Bytes::from_static(payload).into(),
        &world.occupancy,
    ) {
        Arrival::Paired(peer) => return Told::Second(peer.payload),
        Arrival::Closed => return Told::Closed,
        Arrival::Full => return Told::Full,
        Arrival::Parked(parking) => parking,
    };
    let outcome = match plan {
        Plan::Deadline => loom::future::block_on(parking.outcome(ready(()))),
        Plan::Patient => loom::future::block_on(parking.outcome(pending())),
        Plan::Cancel => {
            let mut waiting = pin!(parking.outcome(pending()));
            let polled = waiting
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            match polled {
                Poll::Ready(outcome) => outcome,
                // Dropped here, unsettled, as a transport drops a handler.
                Poll::Pending => return Told::Gone,
            }
        }
    };
    match outcome {
        Outcome::Paired(peer) => Told::First(peer.payload),
        Outcome::TimedOut => Told::TimedOut,
        Outcome::Closed => Told::Closed,
    }
}

/// Runs `f` under loom, bounded for `cargo test` unless the environment asks
/// for more (see the module docs), and reports how many executions it took.
fn check(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = match std::env::var("RENDEZVOUS_LOOM_PREEMPTIONS").as_deref() {
        // Three: the smallest bound that catches a partner handing over its
        // payload after releasing the lock (checked by hand).
        Err(_) => Some(3),
        Ok("none") => None,
        Ok(bound) => Some(
            bound
                .parse()
                .expect("RENDEZVOUS_LOOM_PREEMPTIONS: a number or none"),
        ),
    };
    let executions = std::sync::Arc::new(StdAtomicUsize::new(0));
    let counter = executions.clone();
    let started = std::time::Instant::now();
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    eprintln!(
        "loom model {name}: {} executions in {:.1?} (preemption bound {:?})",
        executions.load(StdOrdering::Relaxed),
        started.elapsed(),
        builder.preemption_bound,
    );
}

/// The callers of one model run: the id, payload and plan of each. Each
/// runs on its own thread; `closer` adds a thread that closes the shard.
struct Scenario {
    callers: &'static [(&'static str, &'static [u8], Plan)],
    capacity: usize,
    closer: bool,
}

impl Scenario {
    fn run(&self) -> Vec<Told> {
        let world = Arc::new(World {
            shard: Shard::default(),
            occupancy: Occupancy::new(self.capacity, 1),
        });
        // Set once a cancelling caller's future has been dropped. A caller
        // that sees it before arriving must not pair with the one that left.
        let gone = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &(id, payload, plan) in self.callers {
            let world = world.clone();
            let gone = gone.clone();
            threads.push(thread::spawn(move || {
                let gone_before = gone.load(Ordering::SeqCst);
                let told = call(&world, id, payload, plan);
                if matches!(plan, Plan::Cancel) {
                    gone.store(true, Ordering::SeqCst);
                }
                (told, gone_before)
            }));
        }
        let closer = self.closer.then(|| {
            let world = world.clone();
            thread::spawn(move || world.shard.close(&world.occupancy))
        });
        let results: Vec<(Told, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        if let Some(closer) = closer {
            closer.join().unwrap();
        }

        let told: Vec<Told> = results.iter().map(|(told, _)| told.clone()).collect();
        self.check_pairs_are_mutual(&told);
        // Only a shutdown answers "closed", and only a cap can refuse.
        if !self.closer {
            assert!(
                !told.contains(&Told::Closed),
                "closed without a shutdown: {told:?}"
            );
        }
        if self.capacity >= self.callers.len() {
            assert!(
                !told.contains(&Told::Full),
                "refused under the cap: {told:?}"
            );
        }
        let cancelled = self
            .callers
            .iter()
            .find_map(|&(_, payload, plan)| matches!(plan, Plan::Cancel).then_some(payload));
        if let Some(cancelled) = cancelled {
            for (i, (told, gone_before)) in results.iter().enumerate() {
                if *gone_before {
                    assert_ne!(
                        told.peer().map(|p| &p[..]),
                        Some(cancelled),
                        "caller {i} paired with a caller that had already gone: {told:?}"
                    );
                }
            }
        }
        assert_eq!(
            world.shard.waiting(),
            0,
            "a waiter was left behind: {told:?}"
        );
        assert_eq!(
            world.occupancy.taken(),
            world.shard.spares(),
            "a place was neither given back nor kept as a spare: {told:?}"
        );
        told
    }

    /// Each paired caller holds its partner's payload, and the partner holds
    /// its own; exactly one of the two was the first party.
    fn check_pairs_are_mutual(&self, told: &[Told]) {
        for (i, mine) in told.iter().enumerate() {
            let Some(peer_payload) = mine.peer() else {
                continue;
            };
            let partner = self
                .callers
                .iter()
                .position(|(_, payload, _)| payload == peer_payload)
                .unwrap_or_else(|| panic!("caller {i} got a payload nobody sent: {told:?}"));
            assert_ne!(partner, i, "caller {i} paired with itself: {told:?}");
            let own = self.callers[i].1;
            match (&told[i], &told[partner]) {
                (Told::First(_), Told::Second(back)) | (Told::Second(_), Told::First(back)) => {
                    assert_eq!(back, own, "pair {i}/{partner} is not mutual: {told:?}")
                }
                // The partner went away after the pair was decided: its
                // answer is lost, as with any response a client hangs up on.
                (Told::Second(_), Told::Gone) => {}
                _ => panic!("caller {i} paired but caller {partner} was not told: {told:?}"),
            }
        }
    }
}

#[test]
fn two_patient_callers_always_pair() {
    check("two_patient_callers_always_pair", || {
        let told = Scenario {
            callers: &[("x", b"A", Plan::Patient), ("x", b"B", Plan::Patient)],
            capacity: usize::MAX,
            closer: false,
        }
        .run();
        assert!(told.iter().all(|t| t.peer().is_some()), "{told:?}");
    });
}

#[test]
fn a_deadline_races_the_partner() {
    check("a_deadline_races_the_partner", || {
        Scenario {
            callers: &[("x", b"A", Plan::Deadline), ("x", b"B", Plan::Deadline)],
            capacity: usize::MAX,
            closer: false,
        }
        .run();
    });
}

#[test]
fn three_callers_with_one_id() {
    check("three_callers_with_one_id", || {
        Scenario {
            callers: &[
                ("x", b"A", Plan::Deadline),
                ("x", b"B", Plan::Deadline),
                ("x", b"C", Plan::Deadline),
            ],
            capacity: usize::MAX,
            closer: false,
        }
        .run();
    });
}

#[test]
fn a_cancel_races_a_partner_whose_deadline_fires() {
    check("a_cancel_races_a_partner_whose_deadline_fires", || {
        Scenario {
            callers: &[("x", b"A", Plan::Cancel), ("x", b"B", Plan::Deadline)],
            capacity: usize::MAX,
            closer: false,
        }
        .run();
    });
}

#[test]
fn three_callers_with_a_cancel_and_deadlines() {
    check("three_callers_with_a_cancel_and_deadlines", || {
        Scenario {
            callers: &[
                ("x", b"A", Plan::Cancel),
                ("x", b"B", Plan::Deadline),
                ("x", b"C", Plan::Deadline),
            ],
            capacity: usize::MAX,
            closer: false,
        }
        .run();
    });
}

#[test]
fn shutdown_races_a_pair() {
    check("shutdown_races_a_pair", || {
        // The patient caller has no deadline: a partner or the shutdown
        // must answer it, or `block_on` would never return.
        Scenario {
            callers: &[("x", b"A", Plan::Patient), ("x", b"B", Plan::Deadline)],
            capacity: usize::MAX,
            closer: true,
        }
        .run();
    });
}

#[test]
fn the_cap_is_given_back_by_every_path() {
    check("the_cap_is_given_back_by_every_path", || {
        // A cap of 1 is exact (no spares): someone may be refused.
        let told = Scenario {
            callers: &[
                ("x", b"A", Plan::Cancel),
                ("y", b"B", Plan::Deadline),
                ("x", b"C", Plan::Deadline),
            ],
            capacity: 1,
            closer: false,
        }
        .run();
        // "y" shares the bucket but never matches "x".
        assert!(told[1].peer().is_none(), "{told:?}");
    });
}
