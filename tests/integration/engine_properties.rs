//! The pairing engine against a reference model, on random schedules.
//!
//! Each schedule is a few dozen callers over three ids: when each arrives,
//! how long it may wait (zero included), whether it goes away and when, a
//! cap on waiting callers, and sometimes a shutdown. [`Model`] is the engine's
//! contract written as the simplest sequential program that could keep it. The
//! engine runs the same schedule on paused time, driven step by step (see
//! [`drive`]), and must agree with the model exactly: who pairs with whom and
//! in which role, each side's payload and time waited, who times out and at
//! which millisecond, who is refused and why, and how many callers wait after
//! every step. Callers send the payloads and ids at the edges of what is
//! allowed (`common::edges`): empty, tagged or `--max-payload` bytes, over
//! ids of 1, 4 and 256 bytes.

use std::{collections::HashMap, pin::Pin, task::Context, time::Duration};

use bytes::Bytes;
use proptest::prelude::*;
use rendezvous::pairing::{Engine, Id, LocalEngine, Meeting, PairError, Role};

use crate::common::edges::{IdKind, Sent, describe, id_kind, sent};

#[derive(Debug, Clone)]
struct Caller {
    id: u8,
    arrive_ms: u64,
    wait_ms: u64,
    /// Goes away (its future is dropped) this long after arriving.
    cancel_after_ms: Option<u64>,
    /// Orders events that fall in the same millisecond.
    tiebreak: u8,
    payload: Sent,
}

#[derive(Debug, Clone)]
struct Schedule {
    callers: Vec<Caller>,
    /// How long each of the three ids is.
    ids: [IdKind; 3],
    capacity: usize,
    close_at_ms: Option<u64>,
}

/// What a caller was told, and at which millisecond.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    Paired {
        role: Role,
        /// The partner's payload, as [`describe`] prints it.
        peer: String,
        waited_ms: u64,
        at_ms: u64,
    },
    TimedOut {
        at_ms: u64,
    },
    Full {
        capacity: usize,
        at_ms: u64,
    },
    ShuttingDown {
        at_ms: u64,
    },
    /// Went away before it was told anything.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Close,
    Arrive(usize),
    Cancel(usize),
}

/// The schedule as one ordered list: by millisecond, then tiebreak. Every
/// deadline's millisecond is a step too, so time stops there.
fn timeline(schedule: &Schedule) -> Vec<(u64, u8, Action)> {
    let mut events = Vec::new();
    for (i, c) in schedule.callers.iter().enumerate() {
        events.push((c.arrive_ms, c.tiebreak, Action::Arrive(i)));
        if let Some(after) = c.cancel_after_ms {
            // A cancel in the arrival's own millisecond comes after it.
            let tiebreak = if after == 0 {
                c.tiebreak.saturating_add(1)
            } else {
                c.tiebreak
            };
            events.push((c.arrive_ms + after, tiebreak, Action::Cancel(i)));
        }
    }
    if let Some(at) = schedule.close_at_ms {
        events.push((at, 0, Action::Close));
    }
    events.sort();
    events
}

/// The contract, sequentially: one waiter per id at most; a caller that
/// finds one pairs at once (second, waited zero) and the waiter is first; a
/// waiter times out exactly at arrival + wait, before anyone arriving in that
/// same millisecond; a zero wait pairs or times out on arrival; a caller that
/// would wait is refused when `capacity` wait already; after a shutdown every
/// waiter and every later caller is told so; a caller that left is gone.
struct Model<'a> {
    schedule: &'a Schedule,
    waiting: HashMap<u8, usize>,
    closed: bool,
    told: Vec<Option<Told>>,
}

impl<'a> Model<'a> {
    fn new(schedule: &'a Schedule) -> Self {
        Self {
            schedule,
            waiting: HashMap::new(),
            closed: false,
            told: vec![None; schedule.callers.len()],
        }
    }

    /// Waiters whose deadline is `now` time out, before anything else
    /// happens in that millisecond.
    fn expire(&mut self, now: u64) {
        let callers = &self.schedule.callers;
        let expired: Vec<u8> = self
            .waiting
            .iter()
            .filter(|&(_, &w)| callers[w].arrive_ms + callers[w].wait_ms == now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let w = self.waiting.remove(&id).unwrap();
            self.told[w] = Some(Told::TimedOut { at_ms: now });
        }
    }

    fn apply(&mut self, now: u64, action: Action) {
        let callers = &self.schedule.callers;
        match action {
            Action::Close => {
                self.closed = true;
                for (_, w) in self.waiting.drain() {
                    self.told[w] = Some(Told::ShuttingDown { at_ms: now });
                }
            }
            Action::Cancel(i) => {
                if self.told[i].is_none() {
                    self.waiting.retain(|_, w| *w != i);
                    self.told[i] = Some(Told::Cancelled);
                }
            }
            Action::Arrive(i) => {
                let me = &callers[i];
                self.told[i] = if self.closed {
                    Some(Told::ShuttingDown { at_ms: now })
                } else if let Some(w) = self.waiting.remove(&me.id) {
                    self.told[w] = Some(Told::Paired {
                        role: Role::First,
                        peer: describe(&me.payload.payload(i)),
                        waited_ms: now - callers[w].arrive_ms,
                        at_ms: now,
                    });
                    Some(Told::Paired {
                        role: Role::Second,
                        peer: describe(&callers[w].payload.payload(w)),
                        waited_ms: 0,
                        at_ms: now,
                    })
                } else if self.waiting.len() >= self.schedule.capacity {
                    Some(Told::Full {
                        capacity: self.schedule.capacity,
                        at_ms: now,
                    })
                } else if me.wait_ms == 0 {
                    Some(Told::TimedOut { at_ms: now })
                } else {
                    self.waiting.insert(me.id, i);
                    None
                };
            }
        }
    }
}

type Call<'e> = Pin<Box<dyn Future<Output = Result<Meeting, PairError>> + 'e>>;

/// Runs the schedule against `engine` and the model side by side, on
/// paused time. Futures are polled by hand, every one of them after each
/// step, so that the engine's answers are read the moment they exist and the
/// order of events within a millisecond is the schedule's, not a runtime's.
fn drive<E: Engine>(engine: &E, schedule: &Schedule) -> Result<Vec<Told>, TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut model = Model::new(schedule);
        let mut calls: Vec<Option<Call<'_>>> = (0..schedule.callers.len()).map(|_| None).collect();
        let mut told: Vec<Option<Told>> = vec![None; schedule.callers.len()];
        let mut steps: Vec<(u64, Option<(u8, Action)>)> = timeline(schedule)
            .into_iter()
            .map(|(at, tiebreak, action)| (at, Some((tiebreak, action))))
            .collect();
        // The deadlines, so that time stops at each of them.
        steps.extend(
            schedule
                .callers
                .iter()
                .map(|c| (c.arrive_ms + c.wait_ms, None)),
        );
        steps.sort_by_key(|(at, event)| (*at, event.is_some(), *event));

        let start = tokio::time::Instant::now();
        let mut now = 0;
        for (at, event) in steps {
            if at > now {
                tokio::time::advance(Duration::from_millis(at - now)).await;
                now = at;
            }
            if now_ms(start) != now {
                return Err(TestCaseError::fail("the paused clock drifted"));
            }
            // Deadlines first: whatever expires now, before this
            // millisecond's events.
            model.expire(now);
            poll_all(&mut calls, &mut told, start);
            let Some((_, action)) = event else {
                check_step(engine, &model, &told, now)?;
                continue;
            };
            match action {
                Action::Close => {
                    // Nothing to wait for in the local engine: it closes at once.
                    let mut close = std::pin::pin!(engine.close());
                    let closed = close
                        .as_mut()
                        .poll(&mut Context::from_waker(std::task::Waker::noop()));
                    prop_assert!(closed.is_ready(), "closing waited");
                }
                Action::Cancel(i) => {
                    drop(calls[i].take());
                    told[i].get_or_insert(Told::Cancelled);
                }
                Action::Arrive(i) => {
                    let caller = &schedule.callers[i];
                    let id = Id::new(schedule.ids[usize::from(caller.id)].id(caller.id)).unwrap();
                    let payload = Bytes::from(caller.payload.payload(i));
                    let deadline =
                        tokio::time::Instant::now() + Duration::from_millis(caller.wait_ms);
                    calls[i] = Some(Box::pin(engine.meet(id, payload.into(), deadline)));
                    // It arrives when first polled: before anyone it may
                    // have answered is polled below.
                    poll_one(&mut calls[i], &mut told[i], start);
                }
            }
            model.apply(now, action);
            poll_all(&mut calls, &mut told, start);
            check_step(engine, &model, &told, now)?;
        }
        prop_assert!(
            calls.iter().all(Option::is_none),
            "callers still unanswered after every deadline"
        );
        prop_assert_eq!(engine.waiting(), 0, "waiters left in the engine");
        Ok(told.into_iter().map(Option::unwrap).collect())
    })
}

fn now_ms(start: tokio::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Polls every unanswered call once, and records what the answered ones
/// were told.
fn poll_all(
    calls: &mut [Option<Call<'_>>],
    told: &mut [Option<Told>],
    start: tokio::time::Instant,
) {
    for (slot, told) in calls.iter_mut().zip(told) {
        poll_one(slot, told, start);
    }
}

fn poll_one(slot: &mut Option<Call<'_>>, told: &mut Option<Told>, start: tokio::time::Instant) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let Some(call) = slot else { return };
    let std::task::Poll::Ready(result) = call.as_mut().poll(&mut cx) else {
        return;
    };
    *slot = None;
    let at_ms = now_ms(start);
    *told = Some(match result {
        Ok(meeting) => Told::Paired {
            role: meeting.role(),
            peer: describe(&meeting.peer().payload),
            waited_ms: u64::try_from(meeting.waited.as_millis()).unwrap(),
            at_ms,
        },
        Err(PairError::TimedOut) => Told::TimedOut { at_ms },
        Err(PairError::Full { capacity }) => Told::Full { capacity, at_ms },
        Err(PairError::ShuttingDown) => Told::ShuttingDown { at_ms },
        Err(
            error @ (PairError::PartiesMismatch { .. }
            | PairError::GroupTooLarge { .. }
            | PairError::AttemptReused(_)
            | PairError::Superseded
            | PairError::Withdrawn),
        ) => {
            panic!("{error}")
        }
        Err(PairError::Unavailable(reason)) => {
            panic!("the local engine is never unavailable: {reason}")
        }
    });
}

/// After every step: everyone the model has answered, the engine has
/// answered alike, and as many callers wait in both.
fn check_step<E: Engine>(
    engine: &E,
    model: &Model<'_>,
    told: &[Option<Told>],
    now: u64,
) -> Result<(), TestCaseError> {
    for (i, (expected, got)) in model.told.iter().zip(told).enumerate() {
        prop_assert_eq!(expected, got, "caller {} at {} ms", i, now);
    }
    prop_assert_eq!(
        engine.waiting(),
        model.waiting.len(),
        "callers waiting at {} ms",
        now
    );
    Ok(())
}

fn caller() -> impl Strategy<Value = Caller> {
    (
        0u8..3,
        0u64..200,
        prop_oneof![1 => Just(0u64), 6 => 1u64..150],
        proptest::option::weighted(0.2, 0u64..150),
        0u8..4,
        sent(),
    )
        .prop_map(
            |(id, arrive_ms, wait_ms, cancel_after_ms, tiebreak, payload)| Caller {
                id,
                arrive_ms,
                wait_ms,
                cancel_after_ms,
                tiebreak,
                payload,
            },
        )
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        proptest::collection::vec(caller(), 1..40),
        // Mostly no cap; sometimes a tiny one, so refusals mix in.
        prop_oneof![3 => Just(usize::MAX), 1 => 1usize..5],
        proptest::option::weighted(0.25, 0u64..360),
        [id_kind(), id_kind(), id_kind()],
    )
        .prop_map(|(callers, capacity, close_at_ms, ids)| Schedule {
            callers,
            ids,
            capacity,
            close_at_ms,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_local_engine_agrees_with_the_model(schedule in schedule()) {
        let engine = LocalEngine::with_capacity(schedule.capacity);
        drive(&engine, &schedule)?;
    }
}

/// The model itself, on schedules small enough to check by hand, so that a
/// wrong model cannot make the property vacuous.
mod model_examples {
    use super::*;

    fn caller(id: u8, arrive_ms: u64, wait_ms: u64) -> Caller {
        Caller {
            id,
            arrive_ms,
            wait_ms,
            cancel_after_ms: None,
            tiebreak: 0,
            payload: Sent::Tagged,
        }
    }

    fn run(schedule: Schedule) -> Vec<Told> {
        let engine = LocalEngine::with_capacity(schedule.capacity);
        drive(&engine, &schedule).unwrap()
    }

    #[test]
    fn a_pair_a_timeout_a_refusal_and_a_zero_wait() {
        let told = run(Schedule {
            callers: vec![
                caller(0, 10, 100),
                caller(0, 30, 100),
                caller(1, 40, 20),
                caller(2, 45, 50),
                caller(1, 60, 5),
                caller(1, 70, 0),
            ],
            ids: [IdKind::Short; 3],
            capacity: 1,
            close_at_ms: None,
        });
        assert_eq!(
            told,
            [
                Told::Paired {
                    role: Role::First,
                    peer: "1".into(),
                    waited_ms: 20,
                    at_ms: 30
                },
                Told::Paired {
                    role: Role::Second,
                    peer: "0".into(),
                    waited_ms: 0,
                    at_ms: 30
                },
                // Times out exactly at 40 + 20, before caller 4 arrives then.
                Told::TimedOut { at_ms: 60 },
                Told::Full {
                    capacity: 1,
                    at_ms: 45
                },
                Told::TimedOut { at_ms: 65 },
                Told::TimedOut { at_ms: 70 },
            ]
        );
    }

    #[test]
    fn a_cancel_and_a_shutdown() {
        let mut gone = caller(0, 0, 100);
        gone.cancel_after_ms = Some(10);
        let told = run(Schedule {
            callers: vec![
                gone,
                caller(0, 20, 100),
                caller(1, 30, 100),
                caller(0, 60, 100),
            ],
            ids: [IdKind::Short; 3],
            capacity: usize::MAX,
            close_at_ms: Some(50),
        });
        assert_eq!(
            told,
            [
                Told::Cancelled,
                Told::ShuttingDown { at_ms: 50 },
                Told::ShuttingDown { at_ms: 50 },
                Told::ShuttingDown { at_ms: 60 },
            ]
        );
    }
}
