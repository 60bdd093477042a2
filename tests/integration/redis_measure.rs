//! Measurements for BENCHMARKS.md, not checks: ignored by `cargo test`, run
//! by `scripts/bench.sh redis-topologies` (which passes `--ignored`). They
//! print their numbers and assert only that the work got done.
//!
//! - pair latency across two replicas, one pair in flight, on one primary,
//!   on a cluster, and on a primary with a replica (Sentinel's), side by
//!   side in one run (blocks of 100, in turn);
//! - failover: from SIGKILL of the primary to the first pair across two
//!   replicas, five times on a fresh Sentinel set and a fresh cluster.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use rendezvous::pairing::{Engine, Id, RedisEngine};
use tokio::time::Instant;

use crate::common::{
    redis::{RedisServer, engine_config, start_engine, unique_prefix},
    topology::{Kind, Topology},
};

/// An engine with the default `--redis-timeout` (the tests' is longer, for
/// busy machines): the time to follow a failover depends on it.
async fn engine(url: String, prefix: &str) -> Arc<RedisEngine> {
    let mut config = engine_config(url, prefix, usize::MAX);
    config.timeout = rendezvous::config::RedisArgs::default().timeout;
    Arc::new(start_engine(config).await)
}

/// One pair across `a` and `b`: the time from the second caller's arrival
/// to both answers, or `None` if they did not pair within `wait`.
async fn pair(
    a: &Arc<RedisEngine>,
    b: &Arc<RedisEngine>,
    id: &str,
    wait: Duration,
) -> Option<Duration> {
    let deadline = Instant::now() + wait;
    let first = {
        let (a, id) = (a.clone(), Id::new(id).unwrap());
        tokio::spawn(async move { a.meet(id, Bytes::from_static(b"a").into(), deadline).await })
    };
    while a.waiting() == 0 {
        if first.is_finished() || Instant::now() > deadline {
            let _ = first.await;
            return None;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let start = Instant::now();
    let second = b
        .meet(
            Id::new(id).unwrap(),
            Bytes::from_static(b"b").into(),
            deadline,
        )
        .await;
    let first = first.await.unwrap();
    (first.is_ok() && second.is_ok()).then(|| start.elapsed())
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: scripts/bench.sh redis-topologies"]
async fn measure_pair_latency_single_vs_cluster() {
    let single = RedisServer::start().await;
    let cluster = tokio::task::spawn_blocking(|| Topology::start(Kind::Cluster))
        .await
        .unwrap();
    // A primary with a replica (Sentinel's), to tell what replication costs
    // on this machine from what the cluster client costs.
    let sentinel = tokio::task::spawn_blocking(|| Topology::start(Kind::Sentinel))
        .await
        .unwrap();
    let prefix = unique_prefix("latency");
    let on_single = [
        engine(single.url(), &prefix).await,
        engine(single.url(), &prefix).await,
    ];
    let on_cluster = [
        engine(cluster.url.clone(), &prefix).await,
        engine(cluster.url.clone(), &prefix).await,
    ];
    let on_sentinel = [
        engine(sentinel.url.clone(), &prefix).await,
        engine(sentinel.url.clone(), &prefix).await,
    ];
    let (mut single_times, mut cluster_times, mut sentinel_times) =
        (Vec::new(), Vec::new(), Vec::new());
    for block in 0..20 {
        for (engines, times) in [
            (&on_single, &mut single_times),
            (&on_cluster, &mut cluster_times),
            (&on_sentinel, &mut sentinel_times),
        ] {
            for i in 0..100 {
                let id = format!("latency-{block}-{i}");
                let took = pair(&engines[0], &engines[1], &id, Duration::from_secs(10))
                    .await
                    .expect("pairs");
                // The first block of each warms connections and scripts up.
                if block > 0 {
                    times.push(took);
                }
            }
        }
    }
    single_times.sort();
    cluster_times.sort();
    sentinel_times.sort();
    for (name, times) in [
        ("single", &single_times),
        ("cluster", &cluster_times),
        ("sentinel", &sentinel_times),
    ] {
        println!(
            "MEASURE latency {name}: n={} p50={:?} p99={:?}",
            times.len(),
            quantile(times, 0.5),
            quantile(times, 0.99)
        );
    }
    println!(
        "MEASURE latency ratio cluster/single: p50={:.2} p99={:.2}",
        quantile(&cluster_times, 0.5).as_secs_f64() / quantile(&single_times, 0.5).as_secs_f64(),
        quantile(&cluster_times, 0.99).as_secs_f64() / quantile(&single_times, 0.99).as_secs_f64()
    );
}

/// From SIGKILL of a primary to the first pair across two replicas on an
/// id that the dead primary served; and, apart, from the kill to the
/// promotion of its replica (Redis's own part of it).
async fn failover_once(kind: Kind) -> (Duration, Duration) {
    let topology = tokio::task::spawn_blocking(move || Topology::start(kind))
        .await
        .unwrap();
    let prefix = unique_prefix("failover");
    let (a, b) = (
        engine(topology.url.clone(), &prefix).await,
        engine(topology.url.clone(), &prefix).await,
    );
    let primary = topology.primaries().await[0];
    // Ids whose keys the killed primary serves, one per try.
    // Found before the kill: the node asked is the one killed.
    let ranges = match kind {
        Kind::Sentinel => Vec::new(),
        Kind::Cluster => topology.slots_of(primary).await,
    };
    let mut ids = Vec::new();
    for i in 0.. {
        let id = format!("failover-{i}");
        let key = RedisEngine::key_of(&prefix, &Id::new(id.as_str()).unwrap());
        let slot: u32 = match kind {
            Kind::Sentinel => 0,
            Kind::Cluster => {
                topology
                    .query(primary, redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key))
                    .await
            }
        };
        if kind == Kind::Sentinel || ranges.iter().any(|range| range.contains(&slot)) {
            ids.push(id);
        }
        if ids.len() == 300 {
            break;
        }
    }
    let mut ids = ids.into_iter();
    assert!(
        pair(&a, &b, &ids.next().unwrap(), Duration::from_secs(5))
            .await
            .is_some()
    );
    let before: Vec<u16> = topology
        .data_ports()
        .into_iter()
        .filter(|&p| p != primary)
        .collect();
    let killed = Instant::now();
    topology.kill(primary);
    let promoted = {
        let ports = before.clone();
        let topology = &topology;
        async move {
            loop {
                let primaries = topology.primaries().await;
                if primaries.len() == ports.len().div_ceil(2).max(1)
                    && !primaries.contains(&primary)
                {
                    return killed.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let paired = async {
        loop {
            let id = ids.next().unwrap();
            if pair(&a, &b, &id, Duration::from_secs(2)).await.is_some() {
                return killed.elapsed();
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "no pair a minute after the kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (promoted, paired) = tokio::join!(promoted, paired);
    (paired, promoted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: scripts/bench.sh redis-topologies"]
async fn measure_failover() {
    for kind in [Kind::Sentinel, Kind::Cluster] {
        let (mut times, mut promotions) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let (paired, promoted) = failover_once(kind).await;
            println!(
                "MEASURE failover {kind:?} try: promoted after {promoted:?}, paired after {paired:?}"
            );
            times.push(paired);
            promotions.push(promoted);
        }
        times.sort();
        promotions.sort();
        println!(
            "MEASURE failover {kind:?}: first pair p50={:?} max={:?}; promotion p50={:?} max={:?}",
            quantile(&times, 0.5),
            times[times.len() - 1],
            quantile(&promotions, 0.5),
            promotions[promotions.len() - 1]
        );
    }
}
