//! Measurements for BENCHMARKS.md, not checks: ignored by `cargo test`, run
//! by `scripts/bench.sh redis-topologies` (which passes `--ignored`). They
//! print their numbers and assert only that the work got done.
//!
//! - pair latency across two replicas, one pair in flight, on one primary
//!   and on a cluster, side by side in one run (blocks of 100, alternating);
//! - failover: from SIGKILL of the primary to the first pair across two
//!   replicas, five times on a fresh Sentinel set and a fresh cluster.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use rendezvous::pairing::{Engine, Id, RedisEngine};
use tokio::time::Instant;

use crate::common::{
    redis::{RedisServer, engine_config, ready, unique_prefix},
    topology::{Kind, Topology},
};

async fn engine(url: String, prefix: &str) -> Arc<RedisEngine> {
    let engine = RedisEngine::start(
        engine_config(url, prefix, usize::MAX),
        rendezvous::metrics::Metrics::new().registry_mut(),
    )
    .unwrap();
    ready(&engine).await;
    Arc::new(engine)
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
    let prefix = unique_prefix("latency");
    let on_single = [
        engine(single.url(), &prefix).await,
        engine(single.url(), &prefix).await,
    ];
    let on_cluster = [
        engine(cluster.url.clone(), &prefix).await,
        engine(cluster.url.clone(), &prefix).await,
    ];
    let (mut single_times, mut cluster_times) = (Vec::new(), Vec::new());
    for block in 0..20 {
        for (engines, times) in [
            (&on_single, &mut single_times),
            (&on_cluster, &mut cluster_times),
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
    for (name, times) in [("single", &single_times), ("cluster", &cluster_times)] {
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

/// From SIGKILL of a primary to the first pair across two replicas.
async fn failover_once(kind: Kind) -> Duration {
    let topology = tokio::task::spawn_blocking(move || Topology::start(kind))
        .await
        .unwrap();
    let prefix = unique_prefix("failover");
    let (a, b) = (
        engine(topology.url.clone(), &prefix).await,
        engine(topology.url.clone(), &prefix).await,
    );
    let primary = topology.primaries().await[0];
    // An id whose keys the killed primary serves.
    let id = (0..)
        .map(|i| format!("failover-{i}"))
        .find(|id| {
            let key = RedisEngine::key_of(&prefix, &Id::new(id.as_str()).unwrap());
            kind == Kind::Sentinel || owner(&topology, &key) == Some(primary)
        })
        .unwrap();
    assert!(pair(&a, &b, &id, Duration::from_secs(5)).await.is_some());
    let killed = Instant::now();
    topology.kill(primary);
    let mut tries = 0;
    loop {
        tries += 1;
        let id = format!("{id}-{tries}");
        // The replicas refuse at once while they have no Redis; a short
        // pause between tries keeps this from spinning.
        if pair(&a, &b, &id, Duration::from_secs(2)).await.is_some() {
            return killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no pair a minute after the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The port of the primary that serves `key`, as `CLUSTER KEYSLOT` and
/// `CLUSTER SLOTS` say.
fn owner(topology: &Topology, key: &str) -> Option<u16> {
    let port = topology.data_ports()[0];
    let run = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let slot: u32 = run(&["CLUSTER", "KEYSLOT", key]).trim().parse().ok()?;
    let slots = run(&["CLUSTER", "SLOTS"]);
    // redis-cli prints each range as: start, end, then the primary's ip
    // and port, one value per line.
    let lines: Vec<&str> = slots.lines().map(str::trim).collect();
    let mut i = 0;
    while i + 3 < lines.len() {
        if let (Ok(start), Ok(end)) = (lines[i].parse::<u32>(), lines[i + 1].parse::<u32>())
            && lines[i + 2] == "127.0.0.1"
            && (start..=end).contains(&slot)
        {
            return lines[i + 3].parse().ok();
        }
        i += 1;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: scripts/bench.sh redis-topologies"]
async fn measure_failover() {
    for kind in [Kind::Sentinel, Kind::Cluster] {
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(failover_once(kind).await);
        }
        times.sort();
        println!(
            "MEASURE failover {kind:?}: p50={:?} max={:?} all={times:?}",
            quantile(&times, 0.5),
            times[times.len() - 1]
        );
    }
}
