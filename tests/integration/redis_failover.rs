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
    redis::{engine_config, start_engine, unique_prefix},
    topology::{Kind, Topology},
    within,
};

type Call = JoinHandle<Result<Meeting, PairError>>;

async fn topology(kind: Kind) -> Topology {
    tokio::task::spawn_blocking(move || Topology::start(kind))
        .await
        .unwrap()
}

/// Two replicas on `url`, both ready.
async fn replicas_on(url: &str, prefix: &str) -> [Arc<RedisEngine>; 2] {
    let start = || async {
        Arc::new(start_engine(engine_config(url.to_owned(), prefix, usize::MAX)).await)
    };
    [start().await, start().await]
}

/// Two replicas on `topology`, both ready.
async fn replicas(topology: &Topology, prefix: &str) -> [Arc<RedisEngine>; 2] {
    replicas_on(&topology.url, prefix).await
}

/// A pair across `a` (the waiter) and `b`, each waiting up to `wait`:
/// both answers, checked to agree ([`assert_consistent`]).
async fn pair_across(
    a: &Arc<RedisEngine>,
    b: &Arc<RedisEngine>,
    id: &str,
    wait: Duration,
) -> Result<Meeting, PairError> {
    let first = arrive(a, id, &format!("waiter {id}"), wait);
    parked(a, 1).await;
    // Bounded by `wait`, not `within`'s 10 s: after a fault, a client on a
    // busy machine may take longer than that to learn the new slot map.
    let bounded = |call: Call| async move {
        tokio::time::timeout(wait, call)
            .await
            .expect("answered within its wait")
            .unwrap()
    };
    let second = bounded(arrive(b, id, &format!("partner {id}"), wait)).await;
    let first = bounded(first).await;
    assert_consistent(id, &first, &second);
    first
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

/// What the guarantees allow for a caller and its partner while a fault
/// cuts connections: [`assert_consistent`]'s outcomes, or one of them paired
/// (with the other's payload) while the other was told UNAVAILABLE, its
/// answer lost with its replica's connection after the pair was decided
/// (the README's "an answer lost with the connection"). Never a pair with
/// anyone else, and never one side told it timed out while the other paired.
fn assert_no_phantom(
    id: &str,
    waiter: &Result<Meeting, PairError>,
    partner: &Result<Meeting, PairError>,
) {
    match (waiter, partner) {
        (Ok(w), Err(PairError::Unavailable(_))) => {
            assert_eq!(w.role(), Role::First, "{id}");
            assert_eq!(&w.peer().payload[..], format!("partner {id}").as_bytes());
        }
        (Err(PairError::Unavailable(_)), Ok(p)) => {
            assert_eq!(p.role(), Role::Second, "{id}");
            assert_eq!(&p.peer().payload[..], format!("waiter {id}").as_bytes());
        }
        _ => assert_consistent(id, waiter, partner),
    }
}

/// After the fault: each waiter is answered (within the bound the README
/// states, 60 s being far past it), partners come, and each id ends as the
/// guarantees allow ([`assert_no_phantom`]); then both replicas pair across
/// each other again.
async fn every_caller_answered([a, b]: &[Arc<RedisEngine>; 2], ids: &[String], waiters: Vec<Call>) {
    // A waiter told UNAVAILABLE has gone: its partner must not pair with it,
    // and waits (briefly) on its own instead. All at once.
    ready_again(b).await;
    let partners: Vec<Call> = ids
        .iter()
        .map(|id| arrive(b, id, &format!("partner {id}"), Duration::from_secs(3)))
        .collect();
    for ((id, waiter), partner) in ids.iter().zip(waiters).zip(partners) {
        let partner = within(partner).await.unwrap();
        let waiter = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the waiter is answered")
            .unwrap();
        assert_no_phantom(id, &waiter, &partner);
    }
    ready_again(a).await;
    ready_again(b).await;
    let first = pair_across(a, b, "after", Duration::from_secs(60)).await;
    assert!(
        first.is_ok(),
        "replicas pair again after the fault: {first:?}"
    );
}

/// Waits (up to 30 s) until exactly `expected` say they are primaries.
async fn until_primaries(topology: &Topology, expected: &[u16]) {
    let what = format!("the primaries to become {expected:?}");
    crate::common::until(&what, || async {
        (topology.primaries().await == expected).then_some(())
    })
    .await
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
    let dead = topology.slots_of(primaries[0]).await;
    // Ids whose keys the primary about to die serves.
    let mut orphans = Vec::new();
    for id in self::ids("ck-dead", 100) {
        let key = RedisEngine::key_of(&prefix, &Id::new(id.as_str()).unwrap());
        let slot = topology.keyslot(&key).await;
        if dead.iter().any(|range| range.contains(&slot)) && orphans.len() < 4 {
            orphans.push(id);
        }
    }
    topology.kill(primaries[0]);
    every_caller_answered(&engines, &ids, waiters).await;
    // The replicas may have paired on the other shards before the cluster
    // promoted the dead primary's replica: wait for that, then pair on the
    // ids of its slots, which only the promoted node can serve.
    crate::common::until("a replica to take over", || async {
        let promoted = topology.primaries().await;
        (promoted.len() == 3 && !promoted.contains(&primaries[0])).then_some(promoted)
    })
    .await;
    let [a, b] = &engines;
    for id in &orphans {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            ready_again(a).await;
            ready_again(b).await;
            let first = arrive(a, id, &format!("waiter {id}"), Duration::from_secs(5));
            // A replica between probes may still refuse: then try again.
            while a.waiting() == 0 && !first.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if first.is_finished() {
                let refused = first.await.unwrap();
                assert!(
                    matches!(refused, Err(PairError::Unavailable(_))),
                    "{id}: {refused:?}"
                );
                assert!(
                    Instant::now() < deadline,
                    "{id}: no pair on the promoted node"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let second = within(arrive(
                b,
                id,
                &format!("partner {id}"),
                Duration::from_secs(5),
            ))
            .await
            .unwrap();
            let first = within(first).await.unwrap();
            assert_consistent(id, &first, &second);
            if first.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: no pair on the promoted node: {first:?}"
            );
        }
    }
    topology.until_keys(&prefix, 0).await;
}

/// `redis-cli --cluster reshard` moves slots, and the keys and shard
/// channels in them, from one primary to another while callers wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reshard_while_callers_wait() {
    let topology = topology(Kind::Cluster).await;
    let prefix = unique_prefix("cluster-reshard");
    let engines = replicas(&topology, &prefix).await;
    let primaries = topology.primaries().await;
    // Waiters whose ids the source of the slots serves: about half of them
    // move with the slots.
    let source = topology.slots_of(primaries[0]).await;
    let mut ids = Vec::new();
    let mut slots = HashMap::new();
    for id in self::ids("cr", 200) {
        let key = RedisEngine::key_of(&prefix, &Id::new(id.as_str()).unwrap());
        let slot = topology.keyslot(&key).await;
        if source.iter().any(|range| range.contains(&slot)) && ids.len() < 16 {
            slots.insert(id.clone(), slot);
            ids.push(id);
        }
    }
    let waiters = park_waiters(&engines[0], &ids).await;
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
    let target = topology.slots_of(primaries[1]).await;
    let moved = ids
        .iter()
        .filter(|id| target.iter().any(|range| range.contains(&slots[*id])))
        .count();
    assert!(moved > 0, "none of the waiters' slots moved");
    every_caller_answered(&engines, &ids, waiters).await;
    topology.until_keys(&prefix, 0).await;
    // Every id again, those whose slots moved among them: the replicas'
    // shard channels followed the slots to their new node.
    let [a, b] = &engines;
    for id in &ids {
        let first = pair_across(a, b, id, Duration::from_secs(30)).await;
        assert!(first.is_ok(), "{id} after the reshard: {first:?}");
    }
    topology.until_keys(&prefix, 0).await;
}

/// How many times the primaries ran `command`, in all.
async fn calls(topology: &Topology, command: &str) -> Vec<u64> {
    let mut counts = Vec::new();
    for port in topology.primaries().await {
        let info: String = topology
            .query(port, redis::cmd("INFO").arg("commandstats"))
            .await;
        let calls = info
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap());
        counts.push(calls);
    }
    counts
}

/// On a cluster, a pair still costs three scripts and one UNLINK, and ids
/// spread over the shards: each of the three primaries runs between 25%
/// and 42% of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_costs_four_commands_and_ids_spread_over_the_shards() {
    let topology = topology(Kind::Cluster).await;
    let prefix = unique_prefix("cluster-cost");
    let [a, b] = replicas(&topology, &prefix).await;
    let pair = |id: String| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let first = pair_across(&a, &b, &id, Duration::from_secs(30)).await;
            assert!(first.is_ok(), "{id}: {first:?}");
        }
    };
    pair("warm-up".into()).await;
    topology.until_keys(&prefix, 0).await;
    let sum = |counts: Vec<u64>| counts.iter().sum::<u64>();
    let (scripts, unlinks) = (
        calls(&topology, "evalsha").await,
        calls(&topology, "unlink").await,
    );
    const PAIRS: usize = 300;
    for i in 0..PAIRS {
        pair(format!("spread-{i}")).await;
    }
    topology.until_keys(&prefix, 0).await;
    let after = calls(&topology, "evalsha").await;
    assert_eq!(sum(after.clone()) - sum(scripts.clone()), 3 * PAIRS as u64);
    assert_eq!(
        sum(calls(&topology, "unlink").await) - sum(unlinks),
        PAIRS as u64
    );
    for (before, after) in scripts.iter().zip(&after) {
        let share = (after - before) as f64 / (3 * PAIRS) as f64;
        assert!(
            (0.25..=0.42).contains(&share),
            "a primary ran {share:.2} of the scripts"
        );
    }

    // Scripts are cached per node, and a promoted replica (or a restarted
    // node) has none: a node's NOSCRIPT loads the script on every primary.
    let loads = sum(calls(&topology, "script|load").await);
    for port in topology.primaries().await {
        let flushed: String = topology
            .query(port, redis::cmd("SCRIPT").arg("FLUSH"))
            .await;
        assert_eq!(flushed, "OK");
    }
    for i in 0..10 {
        pair(format!("after-flush-{i}")).await;
    }
    let reloads = sum(calls(&topology, "script|load").await) - loads;
    assert!(reloads >= 3, "{reloads} loads after the flush");
}

// Bad configuration: a clear message at start-up, naming what is wrong, and
// nothing hangs: the replica starts unready, and callers are answered
// UNAVAILABLE with the same words.

/// A replica of the real binary on `url`, with its misconfiguration (or its
/// wait) logged: the log line with `message`, and what a caller is told.
async fn refused_with(url: &str, message: &str) -> (String, String) {
    let mut server = crate::common::Process::start(&["--redis-url", url]).await;
    let logged = server.next(message).await;
    let reason = logged["fields"]["reason"].as_str().unwrap().to_owned();
    server.until_ready(503).await;
    let addr = server.grpc.parse().unwrap();
    let answer = within(crate::common::raw_wait(addr, "refused", b"", "30S")).await;
    assert_eq!(answer.grpc_status, "14", "{answer:?}");
    (reason, answer.grpc_message)
}

#[tokio::test]
async fn an_unknown_master_name_is_named() {
    let topology = topology(Kind::Sentinel).await;
    let sentinel = topology.sentinel_ports()[0];
    let url = format!("redis+sentinel://127.0.0.1:{sentinel}/nosuch");
    let (reason, told) = refused_with(
        &url,
        "Redis is misconfigured; this replica stays unready until it is fixed",
    )
    .await;
    let expected = format!(
        "the Sentinels 127.0.0.1:{sentinel} know no master named \"nosuch\": check the name \
         after the last '/' in --redis-url"
    );
    assert_eq!(reason, expected);
    assert_eq!(told, format!("{expected}; retry shortly"));
}

#[tokio::test]
async fn a_cluster_seed_that_is_not_a_cluster_is_named() {
    let single = crate::common::redis::RedisServer::start().await;
    let seed = single.url().trim_start_matches("redis://").to_owned();
    let (reason, _) = refused_with(
        &format!("redis+cluster://{seed}"),
        "Redis is misconfigured; this replica stays unready until it is fixed",
    )
    .await;
    assert_eq!(
        reason,
        format!(
            "{seed} is not a cluster (its cluster support is disabled): use redis:// for one \
             primary, or redis+sentinel:// under Sentinel"
        )
    );
}

/// Nobody listens: the replica waits for the Sentinels (they may be
/// starting beside it), and says which it waits for.
#[tokio::test]
async fn no_sentinel_reachable_is_named() {
    let nobody = crate::common::redis::free_port();
    let (reason, told) = refused_with(
        &format!("redis+sentinel://127.0.0.1:{nobody}/main"),
        "waiting for Redis",
    )
    .await;
    assert!(
        reason.starts_with(&format!("no Sentinel of 127.0.0.1:{nobody} answered")),
        "{reason}"
    );
    assert!(told.contains("Redis"), "{told}");
}

/// What the server cannot run with at all, it refuses to start with.
#[tokio::test]
async fn a_prefix_with_braces_or_a_bad_url_stops_the_start() {
    for (args, expected) in [
        (
            vec![
                "--redis-url=redis+cluster://127.0.0.1:7000",
                "--redis-key-prefix=app{1}:",
            ],
            "--redis-key-prefix \\\"app{1}:\\\" must not contain '{' or '}'",
        ),
        (
            vec!["--redis-url=redis+sentinel://:hunter2@127.0.0.1:26379"],
            "--redis-url redis+sentinel://:***@127.0.0.1:26379 is not usable: name the master after the Sentinels",
        ),
    ] {
        let log = crate::common::refused_start(&args, &[]).await;
        assert!(log.contains(expected), "{args:?}: {log}");
        assert!(!log.contains("hunter2"), "{log}");
    }
}

/// The ACL that SECURITY.md documents is enough on a cluster too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough_on_a_cluster() {
    const PASSWORD: &str = "acl-on-a-cluster";
    let topology = topology(Kind::Cluster).await;
    let command = crate::common::redis::documented_acl(PASSWORD);
    for port in topology.data_ports() {
        let _: String = topology.query(port, &command).await;
    }
    let prefix = "rendezvous:";
    let url = topology.url.replace(
        "redis+cluster://",
        &format!("redis+cluster://rendezvous:{PASSWORD}@"),
    );
    let [a, b] = replicas_on(&url, prefix).await;
    let first = pair_across(&a, &b, "acl", Duration::from_secs(30)).await;
    assert!(first.is_ok(), "{first:?}");
    let alone = within(arrive(
        &a,
        "acl-alone",
        "waiter acl-alone",
        Duration::from_millis(200),
    ))
    .await
    .unwrap();
    assert_eq!(alone.unwrap_err(), PairError::TimedOut);
    topology.until_keys(prefix, 0).await;

    // An attempt key's binding to its id is a key of its own, in its key's
    // slot, not the id's: a try with the key and another id, through the
    // other replica, finds it there and is refused.
    use rendezvous::pairing::{
        Attempt, AttemptKey, Joining, Parties, Reuse, TryOrder, Withdrawing,
    };
    let key = AttemptKey::in_namespace(None, "acl-key").unwrap().unwrap();
    async fn keyed(engine: &RedisEngine, key: &AttemptKey, id: &str) -> PairError {
        let attempt = Attempt {
            key,
            grace: Duration::from_millis(1),
            order: TryOrder::now(0),
            withdrawing: &Withdrawing::default(),
        };
        let call = Joining {
            id: Id::new(id).unwrap(),
            parties: Parties::TWO,
            offer: Bytes::new().into(),
        };
        let deadline = Instant::now() + Duration::from_millis(200);
        let answer = engine.gather_keyed(call, deadline, attempt);
        within(answer).await.unwrap_err()
    }
    assert_eq!(keyed(&a, &key, "acl-keyed").await, PairError::TimedOut);
    let other = keyed(&b, &key, "acl-other").await;
    assert_eq!(other, PairError::AttemptReused(Reuse::Id));
    // The binding lasts the wait, the grace and a second.
    topology.until_keys(prefix, 0).await;
}

/// A primary turned into a replica under the replicas' feet, its clients
/// not cut (as `REPLICAOF` by hand leaves them): the probe's `ROLE` check
/// finds out, the replica goes unready and answers UNAVAILABLE rather than
/// send scripts to a read-only node, and says why: the Sentinels still
/// name that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_demoted_without_cutting_its_clients_is_noticed() {
    let topology = topology(Kind::Sentinel).await;
    let prefix = unique_prefix("demoted");
    let [a, _b] = replicas(&topology, &prefix).await;
    let [primary, replica] = topology.data_ports()[..] else {
        unreachable!()
    };
    // The Sentinels would undo this by failing over; they are stopped.
    for sentinel in topology.sentinel_ports() {
        topology.kill(sentinel);
    }
    let _: String = topology
        .query(replica, redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
        .await;
    let _: String = topology
        .query(
            primary,
            redis::cmd("REPLICAOF").arg("127.0.0.1").arg(replica),
        )
        .await;
    let mut reachable = a.reachable();
    within(reachable.wait_for(|up| !up)).await.unwrap();
    let refused = within(arrive(
        &a,
        "demoted",
        "waiter demoted",
        Duration::from_secs(5),
    ))
    .await
    .unwrap();
    match refused {
        Err(PairError::Unavailable(reason)) => assert!(reason.contains("Redis"), "{reason}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}
