//! Redis as it is run for availability and scale, failing over and
//! resharding while callers wait: a Sentinel set and a cluster of each
//! test's own (`scripts/redis-topology.sh`). After each fault, every caller
//! is answered, nobody is paired with a caller that left or with another
//! id's caller, no pair is decided twice, the replicas are ready again by
//! themselves, and nothing is left in Redis.

use std::{collections::HashMap, process::Command, sync::Arc, time::Duration};

use bytes::Bytes;
use rendezvous::pairing::{Engine, Id, Meeting, PairError, RedisEngine, Role};
use tokio::{task::JoinHandle, time::Instant};

use crate::common::{
    redis::{engine_config, ready, unique_prefix},
    topology::{Kind, Topology},
    within,
};

type Call = JoinHandle<Result<Meeting, PairError>>;

async fn topology(kind: Kind) -> Topology {
    tokio::task::spawn_blocking(move || Topology::start(kind))
        .await
        .unwrap()
}

/// Two replicas on `topology`, both ready.
async fn replicas(topology: &Topology, prefix: &str) -> [Arc<RedisEngine>; 2] {
    let start = || async {
        let engine = RedisEngine::start(
            engine_config(topology.url.clone(), prefix, usize::MAX),
            rendezvous::metrics::Metrics::new().registry_mut(),
        )
        .unwrap();
        ready(&engine).await;
        Arc::new(engine)
    };
    [start().await, start().await]
}

fn arrive(engine: &Arc<RedisEngine>, id: &str, payload: &str, wait: Duration) -> Call {
    let engine = engine.clone();
    let (id, payload) = (Id::new(id).unwrap(), Bytes::from(payload.to_owned()));
    let deadline = Instant::now() + wait;
    tokio::spawn(async move { engine.meet(id, payload.into(), deadline).await })
}

async fn parked(engine: &RedisEngine, n: usize) {
    crate::common::eventually(|| engine.waiting() == n, &format!("{n} waiting")).await;
}

/// Waits (up to 60 s: a failover takes seconds) until `engine` is ready.
async fn ready_again(engine: &RedisEngine) {
    let mut reachable = engine.reachable();
    tokio::time::timeout(Duration::from_secs(60), reachable.wait_for(|up| *up))
        .await
        .expect("the replica is ready again by itself")
        .unwrap();
}

/// Parks a waiter for each of `ids` on replica `a`.
async fn park_waiters(a: &Arc<RedisEngine>, ids: &[String]) -> Vec<Call> {
    let waiters: Vec<Call> = ids
        .iter()
        .map(|id| arrive(a, id, &format!("waiter {id}"), Duration::from_secs(120)))
        .collect();
    parked(a, ids.len()).await;
    waiters
}

/// What happened to one id: its waiter and its partner, each answered.
/// Either they paired with each other, roles and payloads swapped, or
/// neither was paired at all.
fn assert_consistent(
    id: &str,
    waiter: &Result<Meeting, PairError>,
    partner: &Result<Meeting, PairError>,
) {
    match (waiter, partner) {
        (Ok(w), Ok(p)) => {
            assert_eq!(w.role(), Role::First, "{id}");
            assert_eq!(p.role(), Role::Second, "{id}");
            assert_eq!(&w.peer().payload[..], format!("partner {id}").as_bytes());
            assert_eq!(&p.peer().payload[..], format!("waiter {id}").as_bytes());
        }
        (Err(_), Err(_)) => {}
        (w, p) => panic!("{id}: one side paired and the other did not: {w:?} / {p:?}"),
    }
}

/// After the fault: each waiter is answered (within the bound the README
/// states, 60 s being far past it), partners come, and each id ends
/// consistently; then both replicas pair across each other again.
async fn every_caller_answered([a, b]: &[Arc<RedisEngine>; 2], ids: &[String], waiters: Vec<Call>) {
    let mut outcomes = HashMap::new();
    for (id, waiter) in ids.iter().zip(waiters) {
        // A waiter told UNAVAILABLE has gone: its partner must not pair with
        // it, and waits (briefly) on its own instead.
        ready_again(b).await;
        let partner = arrive(b, id, &format!("partner {id}"), Duration::from_secs(3));
        let partner = within(partner).await.unwrap();
        let waiter = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the waiter is answered")
            .unwrap();
        assert_consistent(id, &waiter, &partner);
        outcomes.insert(id.clone(), (waiter.is_ok(), partner.is_ok()));
    }
    ready_again(a).await;
    ready_again(b).await;
    let first = arrive(a, "after", "waiter after", Duration::from_secs(60));
    parked(a, 1).await;
    let second = within(arrive(b, "after", "partner after", Duration::from_secs(60)))
        .await
        .unwrap();
    let first = within(first).await.unwrap();
    assert_consistent("after", &first, &second);
    assert!(
        first.is_ok(),
        "replicas pair again after the fault: {first:?}"
    );
}

/// Waits (up to 30 s) until exactly `expected` say they are primaries.
async fn until_primaries(topology: &Topology, expected: &[u16]) {
    for _ in 0..300 {
        if topology.primaries().await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the primaries never became {expected:?}");
}

fn ids(test: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{test}-{i}")).collect()
}

/// SIGKILL of the primary: Sentinel promotes the replica, and every replica
/// of ours follows it with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_primary_killed_while_callers_wait() {
    let topology = topology(Kind::Sentinel).await;
    let prefix = unique_prefix("sentinel-kill");
    let engines = replicas(&topology, &prefix).await;
    let ids = ids("sk", 8);
    let waiters = park_waiters(&engines[0], &ids).await;
    let [old, new] = topology.data_ports()[..] else {
        unreachable!()
    };
    assert_eq!(topology.primaries().await, [old]);
    topology.kill(old);
    every_caller_answered(&engines, &ids, waiters).await;
    assert_eq!(
        topology.primaries().await,
        [new],
        "the replica was promoted"
    );
    topology.until_keys(&prefix, 0).await;
}

/// `SENTINEL FAILOVER`: the old primary is demoted (its clients cut), the
/// replica promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_while_callers_wait() {
    let topology = topology(Kind::Sentinel).await;
    let prefix = unique_prefix("sentinel-failover");
    let engines = replicas(&topology, &prefix).await;
    let ids = ids("sf", 8);
    let waiters = park_waiters(&engines[0], &ids).await;
    let sentinel = topology.sentinel_ports()[0];
    let ok: String = topology
        .query(sentinel, redis::cmd("SENTINEL").arg("FAILOVER").arg("main"))
        .await;
    assert_eq!(ok, "OK");
    let promoted = [topology.data_ports()[1]];
    until_primaries(&topology, &promoted).await;
    every_caller_answered(&engines, &ids, waiters).await;
    assert_eq!(topology.primaries().await, promoted);
    topology.until_keys(&prefix, 0).await;
}

/// SIGKILL of a cluster primary: its replica takes over its slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_killed_while_callers_wait() {
    let topology = topology(Kind::Cluster).await;
    let prefix = unique_prefix("cluster-kill");
    let engines = replicas(&topology, &prefix).await;
    let ids = ids("ck", 12);
    let waiters = park_waiters(&engines[0], &ids).await;
    let primaries = topology.primaries().await;
    assert_eq!(primaries.len(), 3);
    topology.kill(primaries[0]);
    every_caller_answered(&engines, &ids, waiters).await;
    let after = topology.primaries().await;
    assert_eq!(after.len(), 3, "a replica took over: {after:?}");
    assert!(!after.contains(&primaries[0]));
    topology.until_keys(&prefix, 0).await;
}

/// `redis-cli --cluster reshard` moves slots, and the keys and shard
/// channels in them, from one primary to another while callers wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reshard_while_callers_wait() {
    let topology = topology(Kind::Cluster).await;
    let prefix = unique_prefix("cluster-reshard");
    let engines = replicas(&topology, &prefix).await;
    let ids = ids("cr", 12);
    let waiters = park_waiters(&engines[0], &ids).await;
    let primaries = topology.primaries().await;
    let node_id = |port: u16| {
        let topology = &topology;
        async move {
            let id: String = topology
                .query(port, redis::cmd("CLUSTER").arg("MYID"))
                .await;
            id
        }
    };
    let (from, to) = (node_id(primaries[0]).await, node_id(primaries[1]).await);
    let seed = format!("127.0.0.1:{}", primaries[0]);
    let status = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &seed])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "3000", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "redis-cli --cluster reshard");
    every_caller_answered(&engines, &ids, waiters).await;
    topology.until_keys(&prefix, 0).await;
}
