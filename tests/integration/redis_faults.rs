//! Redis going away, pausing and coming back empty, and replicas dying:
//! callers are answered, never left hanging, never paired with the dead,
//! and pairing comes back by itself.

use crate::common;

use std::time::Duration;

use common::{
    Process, RawGrpcAnswer, TestServer, assert_pair, raw_wait,
    redis::{RedisServer, Replicas, replica_config, unique_prefix},
    scrape, value, within,
};
use rendezvous::pairing::Engine;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// [`raw_wait`] on a task of its own.
fn spawn_wait(
    addr: std::net::SocketAddr,
    id: String,
    payload: &'static [u8],
    timeout: &'static str,
) -> tokio::task::JoinHandle<RawGrpcAnswer> {
    tokio::spawn(async move { raw_wait(addr, &id, payload, timeout).await })
}

/// The answer a caller gets while Redis cannot be reached.
fn assert_unavailable(answer: &RawGrpcAnswer) {
    assert_eq!(answer.grpc_status, "14", "{answer:?}");
    assert!(answer.grpc_message.contains("Redis"), "{answer:?}");
}

async fn grpc_health(server: &TestServer, service: &str) -> ServingStatus {
    HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn probe(server: &TestServer, path: &str) -> (u16, String) {
    let response = common::http_client()
        .get(server.url(path))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Readiness says `ready`, on both ports; liveness says up, whatever Redis
/// does, so that an orchestrator does not restart a replica for it.
async fn assert_readiness(server: &TestServer, ready: bool) {
    let want = match ready {
        true => ServingStatus::Serving,
        false => ServingStatus::NotServing,
    };
    assert_eq!(grpc_health(server, "rendezvous.v1.Sync").await, want);
    assert_eq!(grpc_health(server, "").await, ServingStatus::Serving);
    let readyz = probe(server, "/readyz").await;
    match ready {
        true => assert_eq!(readyz, (200, "OK".into())),
        false => assert_eq!(readyz, (503, "cannot reach Redis".into())),
    }
    assert_eq!(probe(server, "/healthz").await, (200, "OK".into()));
    let metrics = scrape(server).await;
    assert_eq!(
        value(&metrics, "rendezvous_ready", &[]),
        f64::from(u8::from(ready))
    );
    assert_eq!(
        value(&metrics, "rendezvous_redis_reachable", &[]),
        f64::from(u8::from(ready))
    );
}

async fn until_ready(server: &TestServer, ready: bool) {
    let mut reachable = server.engine.reachable();
    within(reachable.wait_for(|up| *up == ready)).await.unwrap();
    // Health follows the engine in a task of its own.
    for _ in 0..500 {
        if probe(server, "/readyz").await.0 == if ready { 200 } else { 503 } {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_readiness(server, ready).await;
}

#[tokio::test]
async fn redis_killed_while_100_callers_wait_then_back_empty() {
    let mut replicas = Replicas::start(2).await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    let http = common::http_client();
    // 50 gRPC callers on a, 40 gRPC and 10 HTTP on b, all with distinct ids.
    let grpc: Vec<_> = (0..90)
        .map(|i| {
            let addr = if i < 50 { a.grpc_addr } else { b.grpc_addr };
            spawn_wait(addr, format!("killed-{i}"), b"", "60S")
        })
        .collect();
    let legacy: Vec<_> = (90..100)
        .map(|i| {
            tokio::spawn(
                http.post(b.url(&format!("/wait-for-second-party/killed-{i}")))
                    .send(),
            )
        })
        .collect();
    a.parked(50).await;
    b.parked(50).await;

    replicas.redis.kill();
    for call in grpc {
        assert_unavailable(&within(call).await.unwrap());
    }
    for call in legacy {
        let response = within(call).await.unwrap().unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body = response.text().await.unwrap();
        assert!(body.contains("Redis"), "{body}");
    }
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    assert_eq!((a.waiting(), b.waiting()), (0, 0));
    until_ready(a, false).await;
    until_ready(b, false).await;
    // New callers are refused at once, not parked until their deadline.
    assert_unavailable(&within(raw_wait(a.grpc_addr, "during", b"", "60S")).await);
    let metrics = scrape(a).await;
    assert_eq!(value(&metrics, "rendezvous_redis_reachable", &[]), 0.0);
    assert!(
        value(
            &metrics,
            "rendezvous_rejections_total",
            &[("reason", "unavailable")]
        ) >= 51.0
    );

    // Redis comes back empty; the replicas reconnect by themselves.
    replicas.redis.restart().await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    until_ready(a, true).await;
    until_ready(b, true).await;
    assert_pair(a, a.client().await, b.client().await, "after").await;
    let metrics = scrape(a).await;
    assert_eq!(value(&metrics, "rendezvous_redis_reachable", &[]), 1.0);
    assert_eq!(
        value(&metrics, "rendezvous_redis_reconnects_total", &[]),
        1.0
    );
    replicas.assert_nothing_left().await;
}

#[tokio::test]
async fn redis_paused_answers_unavailable_and_nothing_hangs() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("paused");
    let mut config = replica_config(&redis, &prefix);
    config.redis.timeout = Duration::from_millis(300);
    let server = TestServer::with(config).await;
    server.ready().await;
    let parked = tokio::spawn(raw_wait(server.grpc_addr, "paused", b"", "60S"));
    server.parked(1).await;

    redis.pause();
    // The parked caller, and a caller that arrives now, are both answered
    // long before their 60 s deadline (`within` gives them 10 s).
    let arriving = within(raw_wait(server.grpc_addr, "arriving", b"", "60S")).await;
    assert_unavailable(&arriving);
    assert_unavailable(&within(parked).await.unwrap());
    until_ready(&server, false).await;

    redis.resume();
    until_ready(&server, true).await;
    assert_pair(
        &server,
        server.client().await,
        server.client().await,
        "resumed",
    )
    .await;
    // The callers answered during the pause were removed once Redis answered.
    redis.until_keys(&prefix, 0).await;
}

/// Starts the binary as a replica, and waits until it is ready.
async fn replica_process(redis: &RedisServer, prefix: &str) -> Process {
    let url = format!("--redis-url={}", redis.url());
    let prefix = format!("--redis-key-prefix={prefix}");
    let process = Process::start(&[&url, &prefix, "--redis-timeout=2s"]).await;
    process.until_ready(200).await;
    process
}

#[tokio::test]
async fn a_caller_is_never_paired_with_a_waiter_on_a_killed_replica() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("sigkill");
    let mut doomed = replica_process(&redis, &prefix).await;
    let survivor = TestServer::with(replica_config(&redis, &prefix)).await;
    survivor.ready().await;

    let addr: std::net::SocketAddr = doomed.grpc.parse().unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|i| spawn_wait(addr, format!("dead-{i}"), b"from the dead", "3S"))
        .collect();
    redis.until_keys(&prefix, 3).await;

    doomed.child.kill().await.unwrap();
    for waiter in waiters {
        // Its connection died with it.
        assert!(within(waiter).await.is_err());
    }
    // The waiters' entries are still in Redis (until their TTL), but their
    // replica is gone: a caller with one of their ids waits for a partner
    // of its own instead of pairing with the dead.
    let next = tokio::spawn(raw_wait(survivor.grpc_addr, "dead-0", b"next", "30S"));
    survivor.parked(1).await;
    let partner = within(raw_wait(survivor.grpc_addr, "dead-0", b"partner", "30S")).await;
    assert_eq!(partner.grpc_status, "0", "{partner:?}");
    assert_eq!(partner.message.unwrap().peer_payload, "next");
    let next = within(next).await.unwrap();
    assert_eq!(next.message.unwrap().peer_payload, "partner");
    // The other two expire with their deadline.
    redis.until_keys(&prefix, 0).await;
}

#[tokio::test]
async fn sigterm_on_one_replica_answers_its_callers_and_removes_them_while_others_pair() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("sigterm");
    let mut stopping = replica_process(&redis, &prefix).await;
    let others = [
        TestServer::with(replica_config(&redis, &prefix)).await,
        TestServer::with(replica_config(&redis, &prefix)).await,
    ];
    for server in &others {
        server.ready().await;
    }
    let addr: std::net::SocketAddr = stopping.grpc.parse().unwrap();
    let waiters: Vec<_> = (0..5)
        .map(|i| spawn_wait(addr, format!("term-{i}"), b"", "60S"))
        .collect();
    redis.until_keys(&prefix, 5).await;

    // The other two keep pairing all the while.
    let [b, c] = &others;
    let pairing = async {
        for i in 0..30 {
            assert_pair(b, b.client().await, c.client().await, &format!("busy-{i}")).await;
        }
    };
    let terminating = async {
        stopping.signal("TERM");
        for waiter in waiters {
            let answer = within(waiter).await.unwrap();
            assert_eq!(answer.grpc_status, "14", "{answer:?}");
        }
        let status = within(stopping.child.wait()).await.unwrap();
        assert!(status.success(), "{status:?}");
    };
    tokio::join!(pairing, terminating);
    // Its callers' entries went with it, not with their 60 s TTL.
    redis.until_keys(&prefix, 0).await;
    let next = tokio::spawn(raw_wait(b.grpc_addr, "term-0", b"next", "30S"));
    b.parked(1).await;
    let partner = within(raw_wait(c.grpc_addr, "term-0", b"partner", "30S")).await;
    assert_eq!(partner.message.unwrap().peer_payload, "next");
    assert_eq!(within(next).await.unwrap().grpc_status, "0");
    assert_eq!(others[0].engine.waiting(), 0);
}

/// A replica that loses its connection to Redis (Redis itself stays up)
/// answers its waiting callers `UNAVAILABLE`; their entries, still in
/// Redis for a moment, are never paired by a caller on another replica.
#[tokio::test]
async fn a_waiter_whose_replica_lost_its_connection_is_never_paired() {
    let replicas = Replicas::start(2).await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    let waiter = spawn_wait(a.grpc_addr, "cut-off".into(), b"cut off", "60S");
    a.parked(1).await;
    // Every subscribed connection, which is both replicas' callers'
    // connection (RESP3 carries the messages on it).
    let killed: i64 = replicas
        .redis
        .query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
        .await;
    assert_eq!(killed, 2);
    assert_unavailable(&within(waiter).await.unwrap());
    until_ready(b, true).await;
    // A caller on the other replica waits for a partner of its own.
    let next = spawn_wait(b.grpc_addr, "cut-off".into(), b"next", "60S");
    b.parked(1).await;
    let partner = within(raw_wait(b.grpc_addr, "cut-off", b"partner", "60S")).await;
    assert_eq!(partner.message.unwrap().peer_payload, "next");
    assert_eq!(
        within(next).await.unwrap().message.unwrap().peer_payload,
        "partner"
    );
    until_ready(a, true).await;
    replicas.assert_nothing_left().await;
}

/// Redis slow to run scripts for a second (`CLIENT PAUSE ... WRITE`, as a
/// burst or a slow command elsewhere would make it) delays callers; it is not
/// an outage, and fails none of them. Only the probe, whose PING keeps being
/// answered within `--redis-timeout`, decides that Redis is lost.
#[tokio::test]
async fn a_slow_redis_delays_callers_without_failing_them() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("slow");
    let mut config = replica_config(&redis, &prefix);
    // Commands may take ten probe timeouts: 50 s here, against the 1 s pause.
    config.redis.timeout = Duration::from_secs(5);
    let server = TestServer::with(config).await;
    server.ready().await;
    // Answered at once; from then on, scripts wait for a second.
    let paused: String = redis
        .query(redis::cmd("CLIENT").arg("PAUSE").arg(1000).arg("WRITE"))
        .await;
    assert_eq!(paused, "OK");
    let (first, second) = tokio::join!(
        raw_wait(server.grpc_addr, "slow", b"one", "60S"),
        raw_wait(server.grpc_addr, "slow", b"two", "60S"),
    );
    assert_eq!(
        (first.grpc_status.as_str(), second.grpc_status.as_str()),
        ("0", "0"),
        "{first:?} {second:?}"
    );
    let mut payloads = [
        first.message.unwrap().peer_payload,
        second.message.unwrap().peer_payload,
    ];
    payloads.sort();
    assert_eq!(
        payloads,
        [bytes::Bytes::from("one"), bytes::Bytes::from("two")]
    );
    assert!(*server.engine.reachable().borrow(), "Redis was never lost");
}

/// Redis answering a command with an error (here: the id's key holds a
/// string, written by hand) fails that call, with Redis's message; it is
/// not an outage, and other ids pair as before.
#[tokio::test]
async fn an_error_from_redis_fails_the_call_not_the_replica() {
    let replicas = Replicas::start(1).await;
    let a = &replicas.servers[0];
    let key = replicas.key_of("clobbered");
    let _: String = replicas
        .redis
        .query(redis::cmd("SET").arg(&key).arg("not a hash"))
        .await;
    let answer = within(raw_wait(a.grpc_addr, "clobbered", b"", "60S")).await;
    assert_eq!(answer.grpc_status, "14", "{answer:?}");
    assert!(answer.grpc_message.contains("WRONGTYPE"), "{answer:?}");
    assert_readiness(a, true).await;
    assert_pair(a, a.client().await, a.client().await, "unharmed").await;
    let _: i64 = replicas.redis.query(redis::cmd("DEL").arg(&key)).await;
    replicas.assert_nothing_left().await;
}
