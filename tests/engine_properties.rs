//! Property tests of the pairing engine: random schedules of callers over a
//! few ids, with random arrivals, waits and cancellations, on paused time.
//! Whatever the schedule, a pair is decided once for both sides, nobody is
//! paired with a caller that left, at most one caller per id waits at a
//! time, and nothing is left behind.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use proptest::prelude::*;
use rendezvous::pairing::{Engine, Id, LocalEngine, PairError, Role};

#[derive(Debug, Clone)]
struct Caller {
    id: u8,
    arrive_ms: u64,
    wait_ms: u64,
    /// Goes away (its future is dropped) this long after arriving.
    cancel_after_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Paired {
        role: Role,
        peer: usize,
    },
    TimedOut {
        wait: Duration,
    },
    /// Refused for --max-waiters.
    Full,
    Cancelled,
}

fn caller() -> impl Strategy<Value = Caller> {
    (
        0u8..3,
        0u64..200,
        1u64..150,
        proptest::option::weighted(0.2, 0u64..150),
    )
        .prop_map(|(id, arrive_ms, wait_ms, cancel_after_ms)| Caller {
            id,
            arrive_ms,
            wait_ms,
            cancel_after_ms,
        })
}

/// What a run saw: what each caller was told, the most callers ever parked
/// at one time, and how many were left parked at the end.
struct Run {
    outcomes: Vec<Outcome>,
    most_waiting: usize,
    left: usize,
}

/// Runs every caller on paused time, reading the waiting count every
/// millisecond, and returns what each caller was told.
fn run(callers: &[Caller], capacity: usize) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let engine = Arc::new(LocalEngine::with_capacity(capacity));
        let mut tasks = Vec::new();
        for (index, caller) in callers.iter().cloned().enumerate() {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(caller.arrive_ms)).await;
                let id = Id::new(format!("id-{}", caller.id)).unwrap();
                // The payload says who sent it, so each side can be checked.
                let payload = Bytes::from(index.to_string());
                let meet = engine.meet(id, payload, Duration::from_millis(caller.wait_ms));
                let cancel = async {
                    match caller.cancel_after_ms {
                        Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                        None => std::future::pending().await,
                    }
                };
                // Biased: when the engine has answered and the cancel timer
                // fires in the same instant, the engine's answer stands (it
                // decided before the caller left). A random pick here once
                // made the property fail: the harness's race, not the engine's.
                tokio::select! {
                    biased;
                    result = meet => match result {
                        Ok(meeting) => Outcome::Paired {
                            role: meeting.role,
                            peer: std::str::from_utf8(&meeting.peer_payload).unwrap().parse().unwrap(),
                        },
                        Err(PairError::TimedOut { wait }) => Outcome::TimedOut { wait },
                        Err(PairError::Full { .. }) => Outcome::Full,
                        Err(other) => panic!("unexpected {other:?}"),
                    },
                    () = cancel => Outcome::Cancelled,
                }
            }));
        }
        // Every caller is done by 200 + 150 ms: arrival plus the longest
        // wait. Paused time makes each reading land between two events.
        let watcher = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut most = 0;
                for _ in 0..400 {
                    most = most.max(engine.waiting());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                most
            })
        };
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        Run {
            outcomes,
            most_waiting: watcher.await.unwrap(),
            left: engine.waiting(),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pairs_are_mutual_and_nothing_is_left_behind(
        callers in proptest::collection::vec(caller(), 1..40),
        // Mostly no cap; sometimes a tiny one, so refusals mix in.
        capacity in prop_oneof![3 => Just(usize::MAX), 1 => 1usize..5],
    ) {
        let Run { outcomes, most_waiting, left } = run(&callers, capacity);
        prop_assert_eq!(left, 0, "waiters left in the engine");
        // A second caller pairs at once, so at most one caller per id waits,
        // and never more than the cap allows.
        let ids = callers.iter().map(|c| c.id).collect::<std::collections::HashSet<_>>().len();
        prop_assert!(most_waiting <= ids.min(capacity), "{} waiting at once", most_waiting);
        let mut oks_per_id = HashMap::<u8, usize>::new();
        for (me, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Outcome::Paired { role, peer } => {
                    *oks_per_id.entry(callers[me].id).or_default() += 1;
                    // My peer was told it paired with me, in the other role,
                    // under the same id; a caller that left is nobody's peer.
                    let expected = Outcome::Paired {
                        role: match role { Role::First => Role::Second, Role::Second => Role::First },
                        peer: me,
                    };
                    prop_assert_eq!(&outcomes[*peer], &expected, "caller {} and {}", me, peer);
                    prop_assert_eq!(callers[*peer].id, callers[me].id);
                }
                Outcome::TimedOut { wait } => {
                    prop_assert_eq!(*wait, Duration::from_millis(callers[me].wait_ms));
                }
                Outcome::Full | Outcome::Cancelled => {}
            }
        }
        for (id, oks) in oks_per_id {
            prop_assert_eq!(oks % 2, 0, "id {} has an odd number of OKs", id);
        }
    }
}
