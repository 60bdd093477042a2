//! The pairing engine alone, with no network: how many pairs a second it can
//! decide on one thread, and on two threads sharing one engine.
//!
//! A pair here is what the server does for one: the first caller arrives and
//! parks (its deadline timer armed), the second arrives and completes the
//! pair, the first wakes with the second's payload.

use std::{
    pin::pin,
    sync::{Arc, Barrier},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rendezvous::pairing::{Engine, Id, LocalEngine, Role};

const WAIT: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Runs `pairs` pairs on the current thread, over ids drawn from `ids`.
fn run_pairs(engine: &LocalEngine, ids: &[Id], pairs: u64) {
    let payload = Bytes::from_static(b"payload");
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..pairs {
        let id = &ids[i as usize % ids.len()];
        // Each call's deadline is taken when it arrives, as the server does.
        let deadline = || tokio::time::Instant::now() + WAIT;
        let mut first = pin!(engine.meet(id.clone(), payload.clone().into(), deadline()));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        let second =
            pin!(engine.meet(id.clone(), payload.clone().into(), deadline())).poll(&mut cx);
        let Poll::Ready(Ok(second)) = second else {
            panic!("the second caller pairs at once")
        };
        let Poll::Ready(Ok(first)) = first.poll(&mut cx) else {
            panic!("the first caller is woken")
        };
        debug_assert_eq!((first.role(), second.role()), (Role::First, Role::Second));
    }
}

/// The engine as the server builds it, with the default cap on waiters.
fn server_engine() -> LocalEngine {
    LocalEngine::with_capacity(rendezvous::Config::default().max_waiters)
}

fn ids(prefix: &str) -> Vec<Id> {
    (0..1024)
        .map(|i| Id::new(format!("{prefix}-{i}")).unwrap())
        .collect()
}

fn one_thread(c: &mut Criterion) {
    let rt = runtime();
    let engine = server_engine();
    let ids = ids("one");
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("pairs, one thread", |b| {
        b.iter_custom(|iters| {
            let _guard = rt.enter();
            let start = Instant::now();
            run_pairs(&engine, &ids, iters);
            start.elapsed()
        })
    });
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let engine = Arc::new(server_engine());
    let mut group = c.benchmark_group("engine");
    // One iteration is one pair on each thread.
    group.throughput(Throughput::Elements(2));
    group.bench_function("pairs, two threads", |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            std::thread::scope(|s| {
                let workers: Vec<_> = ["left", "right"]
                    .into_iter()
                    .map(|prefix| {
                        let (engine, barrier) = (&engine, &barrier);
                        s.spawn(move || {
                            let rt = runtime();
                            let _guard = rt.enter();
                            let ids = ids(prefix);
                            barrier.wait();
                            let start = Instant::now();
                            run_pairs(engine, &ids, iters);
                            start.elapsed()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap())
                    .max()
                    .unwrap()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, one_thread, two_threads);
criterion_main!(benches);
