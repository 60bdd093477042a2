//! A loom model of one shard: every interleaving of a few callers with one
//! id, with deadlines, a cancellation and a shutdown in the mix.
//!
//! `shard.rs` is compiled here a second time, with `super::sync` resolving to
//! the loom versions below instead of the standard library's and tokio's. The
//! model therefore checks the engine's own code, not a copy of it.
//!
//! What it checks, in every interleaving loom explores, for pairs and for a
//! group of three:
//! - a caller told its group completed got every member's payload in
//!   arrival order, its own at its position, and every other member was told
//!   the same (or had gone after the group was decided);
//! - a caller told it timed out is in nobody's group;
//! - a caller that had gone (cancelled, its handler dropped) before another
//!   arrived is never in that caller's group;
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

use super::{Id, Offer, Offers};

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
            pub(crate) fn is_closed(&self) -> bool {
                self.0.lock().unwrap().receiver_gone
            }

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
#[path = "../occupancy.rs"]
mod occupancy;
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "shard.rs"]
mod shard;

use occupancy::Occupancy;
use shard::{Completion, Joined, Shard, Terms, WaitEnd};

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
    /// Its group completed: its position, and every member's payload in
    /// arrival order.
    Completed(usize, Vec<Bytes>),
    TimedOut,
    Closed,
    Full,
    /// It went away; whatever happened to its entry, it was told nothing.
    Gone,
}

impl Told {
    fn group(&self) -> Option<&[Bytes]> {
        match self {
            Told::Completed(_, group) => Some(group),
            _ => None,
        }
    }
}

/// Every member's payload in arrival order, as a caller at `position`
/// whose own payload was `own` learns them.
fn payloads(position: usize, offers: Offers, own: &'static [u8]) -> Vec<Bytes> {
    match offers {
        Offers::Peer(peer) => {
            let own = Bytes::from_static(own);
            match position {
                0 => vec![own, peer.payload],
                _ => vec![peer.payload, own],
            }
        }
        Offers::All(all) => all.iter().map(|offer| offer.payload.clone()).collect(),
    }
}

/// A caller with `id` and `payload`, in a group of `parties`, that follows
/// `plan`.
fn call(world: &World, id: &str, payload: &'static [u8], parties: u32, plan: Plan) -> Told {
    let id = Id::new(id).unwrap();
    let group = Terms {
        parties,
        max_bytes: usize::MAX,
    };
    let offer = Offer::from(Bytes::from_static(payload));
    let parking = match world.shard.arrive(id, HASH, group, offer, &world.occupancy) {
        Joined::Completed(Completion { position, offers }) => {
            return Told::Completed(position, payloads(position, offers, payload));
        }
        Joined::Closed => return Told::Closed,
        Joined::Full => return Told::Full,
        Joined::Mismatch { .. } | Joined::TooLarge { .. } => {
            unreachable!("every caller asks for the same group, without a limit")
        }
        Joined::Parked(parking) => parking,
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
        WaitEnd::Completed(Completion { position, offers }) => {
            Told::Completed(position, payloads(position, offers, payload))
        }
        WaitEnd::TimedOut => Told::TimedOut,
        WaitEnd::Closed => Told::Closed,
    }
}

/// Runs `f` under loom, bounded for `cargo test` unless the environment asks
/// for more (see the module docs), and reports how many executions it took.
fn check(name: &str, f: impl Fn() + Sync + Send + 'static) {
    check_within(name, 3, f)
}

/// [`check`], with a smaller bound for `cargo test` than the usual three:
/// for a model too large to explore at three in seconds.
fn check_within(name: &str, bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = match std::env::var("RENDEZVOUS_LOOM_PREEMPTIONS").as_deref() {
        // Three: the smallest bound that catches a partner handing over its
        // payload after releasing the lock (checked by hand).
        Err(_) => Some(bound),
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

/// A caller in a model run: its id, payload and plan.
type CallerPlan = (&'static str, &'static [u8], Plan);

/// The callers of one model run. Each runs on its own thread; `replacement`
/// arrives on the cancelling caller's thread once that one has gone, and
/// `closer` adds a thread that closes the shard.
struct Scenario {
    callers: &'static [CallerPlan],
    replacement: Option<CallerPlan>,
    /// How many callers make up each group.
    parties: u32,
    capacity: usize,
    closer: bool,
}

impl Scenario {
    /// Every caller, the replacement last.
    fn all(&self) -> Vec<CallerPlan> {
        self.callers
            .iter()
            .copied()
            .chain(self.replacement)
            .collect()
    }

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
            let parties = self.parties;
            let replacement = self.replacement.filter(|_| matches!(plan, Plan::Cancel));
            threads.push(thread::spawn(move || {
                let gone_before = gone.load(Ordering::SeqCst);
                let told = call(&world, id, payload, parties, plan);
                if matches!(plan, Plan::Cancel) {
                    gone.store(true, Ordering::SeqCst);
                }
                let replaced = replacement
                    .map(|(id, payload, plan)| (call(&world, id, payload, parties, plan), true));
                ((told, gone_before), replaced)
            }));
        }
        let closer = self.closer.then(|| {
            let world = world.clone();
            thread::spawn(move || world.shard.close(&world.occupancy))
        });
        let mut results = Vec::new();
        let mut replaced = None;
        for thread in threads {
            let (told, then) = thread.join().unwrap();
            results.push(told);
            replaced = replaced.or(then);
        }
        // The replacement's answer goes last, as in `all`.
        results.extend(replaced);
        if let Some(closer) = closer {
            closer.join().unwrap();
        }

        let told: Vec<Told> = results.iter().map(|(told, _)| told.clone()).collect();
        self.check_groups_are_mutual(&told);
        // Only a shutdown answers "closed", and only a cap can refuse.
        if !self.closer {
            assert!(
                !told.contains(&Told::Closed),
                "closed without a shutdown: {told:?}"
            );
        }
        if self.capacity >= self.all().len() {
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
                if *gone_before && let Some(group) = told.group() {
                    assert!(
                        !group.iter().any(|p| p == cancelled),
                        "caller {i}'s group counts a caller that had already gone: {told:?}"
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

    /// Each member of a completed group holds every member's payload in
    /// arrival order, its own at its position, and every other member was
    /// told the same group (or went away after it was decided). Nobody told
    /// it timed out is in a group.
    fn check_groups_are_mutual(&self, told: &[Told]) {
        let all = self.all();
        let member = |payload: &Bytes| {
            all.iter()
                .position(|(_, p, _)| p == payload)
                .unwrap_or_else(|| panic!("a payload nobody sent: {told:?}"))
        };
        for (i, mine) in told.iter().enumerate() {
            let Told::Completed(position, group) = mine else {
                continue;
            };
            assert_eq!(group.len(), self.parties as usize, "{told:?}");
            assert_eq!(
                group[*position], all[i].1,
                "caller {i} is not at its own position: {told:?}"
            );
            for (at, payload) in group.iter().enumerate() {
                let other = member(payload);
                match &told[other] {
                    Told::Completed(their_position, theirs) => {
                        assert_eq!(theirs, group, "caller {i} and {other} disagree: {told:?}");
                        assert_eq!(*their_position, at, "{told:?}");
                    }
                    // It went away after the group was decided: its answer
                    // is lost, as with any response a client hangs up on.
                    Told::Gone => {}
                    _ => {
                        panic!("caller {i}'s group counts caller {other}, told otherwise: {told:?}")
                    }
                }
            }
        }
    }
}

#[test]
fn two_patient_callers_always_pair() {
    check("two_patient_callers_always_pair", || {
        let told = Scenario {
            callers: &[("x", b"A", Plan::Patient), ("x", b"B", Plan::Patient)],
            replacement: None,
            parties: 2,
            capacity: usize::MAX,
            closer: false,
        }
        .run();
        assert!(told.iter().all(|t| t.group().is_some()), "{told:?}");
    });
}

#[test]
fn a_deadline_races_the_partner() {
    check("a_deadline_races_the_partner", || {
        Scenario {
            callers: &[("x", b"A", Plan::Deadline), ("x", b"B", Plan::Deadline)],
            replacement: None,
            parties: 2,
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
            replacement: None,
            parties: 2,
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
            replacement: None,
            parties: 2,
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
            replacement: None,
            parties: 2,
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
            replacement: None,
            parties: 2,
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
            replacement: None,
            parties: 2,
            capacity: 1,
            closer: false,
        }
        .run();
        // "y" shares the bucket but never matches "x".
        assert!(told[1].group().is_none(), "{told:?}");
    });
}

#[test]
fn three_patient_callers_always_form_a_group() {
    // Three patient callers have too many interleavings at three
    // preemptions for `cargo test`; `scripts/loom.sh` runs them at four.
    check_within("three_patient_callers_always_form_a_group", 2, || {
        let told = Scenario {
            callers: &[
                ("x", b"A", Plan::Patient),
                ("x", b"B", Plan::Patient),
                ("x", b"C", Plan::Patient),
            ],
            replacement: None,
            parties: 3,
            capacity: usize::MAX,
            closer: false,
        }
        .run();
        assert!(told.iter().all(|t| t.group().is_some()), "{told:?}");
    });
}

#[test]
fn a_group_of_three_with_a_leaving_member() {
    check("a_group_of_three_with_a_leaving_member", || {
        // A goes away mid-wait and D arrives in its place, while B's and C's
        // deadlines race them: any group that forms counts B, C and either
        // A (if it completed before A left) or D, never A after it left, and
        // never a member told it timed out.
        Scenario {
            callers: &[
                ("x", b"A", Plan::Cancel),
                ("x", b"B", Plan::Deadline),
                ("x", b"C", Plan::Deadline),
            ],
            replacement: Some(("x", b"D", Plan::Deadline)),
            parties: 3,
            capacity: usize::MAX,
            closer: false,
        }
        .run();
    });
}
