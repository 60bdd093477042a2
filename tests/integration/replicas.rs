//! Several replicas on one Redis: callers meet whichever replica they reach.

use crate::common;

use std::io::Write;

use common::{
    JsonBody, RawGrpcAnswer, TestServer, assert_pair, assert_timed_out, raw_grpc_call, raw_wait,
    redis::{RedisServer, Replicas, replica_config, unique_prefix},
    within,
};
use rendezvous::{
    Config,
    pairing::Engine,
    proto::{Role, WaitForSecondPartyRequest},
};

#[tokio::test]
async fn grpc_callers_on_two_replicas_pair_with_payloads_both_ways() {
    let replicas = Replicas::start(2).await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    assert_pair(a, a.client().await, b.client().await, "across").await;
    // And the other way round.
    assert_pair(b, b.client().await, a.client().await, "back").await;
    assert_eq!((a.waiting(), b.waiting()), (0, 0));
    replicas.assert_nothing_left().await;
}

#[tokio::test]
async fn an_http_caller_and_a_grpc_caller_on_different_replicas_meet() {
    let replicas = Replicas::start(2).await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    // HTTP first, on a; gRPC second, on b.
    let http = common::http_client();
    let waiter = tokio::spawn(
        http.post(a.url("/wait-for-second-party/mixed"))
            .header("accept", "application/json")
            .body("from http")
            .send(),
    );
    a.parked(1).await;
    let answer = b
        .grpc()
        .await
        .wait_for_second_party(common::request("mixed", b"from grpc"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (answer.role(), answer.peer_payload.as_ref()),
        (Role::Second, &b"from http"[..])
    );
    let response = within(waiter).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body = response.json_body().await;
    assert_eq!(body["role"], "ROLE_FIRST");
    assert_eq!(body["peerPayload"], "ZnJvbSBncnBj"); // "from grpc"

    // gRPC first, on b; the legacy HTTP caller second, on a: `200 Synced`.
    let mut client = b.grpc().await;
    let waiter = tokio::spawn(async move {
        client
            .wait_for_second_party(common::request("legacy", b"for http"))
            .await
    });
    b.parked(1).await;
    let response = http
        .post(a.url("/wait-for-second-party/legacy"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Synced");
    let answer = within(waiter).await.unwrap().unwrap().into_inner();
    assert_eq!(
        (answer.role(), answer.peer_payload.as_ref()),
        (Role::First, &b""[..])
    );
    replicas.assert_nothing_left().await;
}

#[tokio::test]
async fn a_third_caller_on_a_third_replica_starts_a_new_pair() {
    let replicas = Replicas::start(3).await;
    let [a, b, c] = &replicas.servers[..] else {
        unreachable!()
    };
    assert_pair(a, a.client().await, b.client().await, "three").await;
    // The third caller does not join the finished pair: it waits, and meets
    // a fourth on the first replica.
    assert_pair(c, c.client().await, a.client().await, "three").await;
    replicas.assert_nothing_left().await;
}

#[tokio::test]
async fn timeouts_across_replicas_are_the_servers_own() {
    let replicas = Replicas::start(2).await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    // Two callers with different ids, on different replicas: both time out.
    let (one, two) = tokio::join!(
        raw_wait(a.grpc_addr, "lonely-1", b"", "300m"),
        raw_wait(b.grpc_addr, "lonely-2", b"", "300m"),
    );
    assert_timed_out(&one);
    assert_timed_out(&two);
    let response = common::http_client()
        .post(b.url("/wait-for-second-party/lonely-3?wait=300ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 408);
    assert_eq!(response.text().await.unwrap(), "Timeout");
    replicas.assert_nothing_left().await;
}

/// A waiter that went away on one replica is never paired by a caller on
/// another, even one that arrives at once.
#[tokio::test]
async fn a_cancelled_waiter_is_not_paired_from_another_replica() {
    let replicas = Replicas::start(2).await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    for round in 0..5 {
        let mut client = a.grpc().await;
        let gone = tokio::spawn(async move {
            client
                .wait_for_second_party(common::request("cancelled", b"gone"))
                .await
        });
        a.parked(1).await;
        gone.abort();
        a.parked(0).await;
        // The next caller, on b, waits for a partner of its own.
        let mut client = b.grpc().await;
        let next = tokio::spawn(async move {
            client
                .wait_for_second_party(common::request("cancelled", b"next"))
                .await
        });
        b.parked(1).await;
        let answer = a
            .grpc()
            .await
            .wait_for_second_party(common::request("cancelled", b"partner"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.peer_payload, "next", "round {round}");
        let next = within(next).await.unwrap().unwrap().into_inner();
        assert_eq!(
            (next.role(), next.peer_payload.as_ref()),
            (Role::First, &b"partner"[..]),
            "round {round}"
        );
    }
    replicas.assert_nothing_left().await;
}

#[tokio::test]
async fn namespaces_keep_tenants_apart_across_replicas() {
    const ALPHA: &str = "alpha-token-0123456789";
    const BETA: &str = "beta-token-0123456789";
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "{ALPHA} alpha\n{BETA} beta").unwrap();
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("namespaces");
    let replica = || async {
        let server = TestServer::with(Config {
            auth_token_file: Some(tokens.path().to_owned()),
            ..replica_config(&redis, &prefix)
        })
        .await;
        server.ready().await;
        server
    };
    let (a, b) = (replica().await, replica().await);
    let call = |server: &TestServer, token: &str, payload: &'static [u8], timeout: &'static str| {
        let (addr, bearer) = (server.grpc_addr, format!("Bearer {token}"));
        async move {
            raw_grpc_call(
                addr,
                &[("grpc-timeout", timeout), ("authorization", &bearer)],
                WaitForSecondPartyRequest {
                    id: "shared-id".into(),
                    payload: bytes::Bytes::from_static(payload),
                    ..Default::default()
                },
            )
            .await
        }
    };
    let alpha = tokio::spawn(call(&a, ALPHA, b"alpha one", "30S"));
    a.parked(1).await;
    // Beta, with the same id on the other replica, waits on its own.
    let beta = tokio::spawn(call(&b, BETA, b"beta", "30S"));
    b.parked(1).await;
    let other_alpha = within(call(&b, ALPHA, b"alpha two", "30S")).await;
    let paired = |answer: &RawGrpcAnswer| {
        let message = answer.message.as_ref().expect("a pair");
        (
            answer.grpc_status.clone(),
            message.role(),
            message.peer_payload.clone(),
        )
    };
    assert_eq!(
        paired(&other_alpha),
        ("0".into(), Role::Second, "alpha one".into())
    );
    let alpha = within(alpha).await.unwrap();
    assert_eq!(
        paired(&alpha),
        ("0".into(), Role::First, "alpha two".into())
    );
    // Beta was never paired with either alpha: it still waits, and meets
    // the next caller of its own namespace.
    assert_eq!(b.waiting(), 1);
    let other_beta = within(call(&a, BETA, b"beta two", "30S")).await;
    assert_eq!(
        paired(&other_beta),
        ("0".into(), Role::Second, "beta".into())
    );
    let beta = within(beta).await.unwrap();
    assert_eq!(paired(&beta), ("0".into(), Role::First, "beta two".into()));
    let left = redis.keys(&prefix).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn max_waiters_counts_per_replica() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("cap");
    let replica = || async {
        let server = TestServer::with(Config {
            max_waiters: 1,
            ..replica_config(&redis, &prefix)
        })
        .await;
        server.ready().await;
        server
    };
    let (a, b) = (replica().await, replica().await);
    let parked_a = tokio::spawn(raw_wait(a.grpc_addr, "one", b"", "30S"));
    a.parked(1).await;
    // a is full; b is not.
    let full = raw_wait(a.grpc_addr, "two", b"", "30S").await;
    assert_eq!(full.grpc_status, "8", "{full:?}");
    let parked_b = tokio::spawn(raw_wait(b.grpc_addr, "two", b"", "30S"));
    b.parked(1).await;
    // A caller that completes a pair is let in on a full replica.
    let second = within(raw_wait(a.grpc_addr, "two", b"b's partner", "30S")).await;
    assert_eq!(second.grpc_status, "0", "{second:?}");
    assert_eq!(within(parked_b).await.unwrap().grpc_status, "0");
    let second = within(raw_wait(b.grpc_addr, "one", b"", "30S")).await;
    assert_eq!(second.grpc_status, "0", "{second:?}");
    assert_eq!(within(parked_a).await.unwrap().grpc_status, "0");
    assert_eq!(a.engine.waiting() + b.engine.waiting(), 0);
    let left = redis.keys(&prefix).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn keys_share_one_hash_slot_per_id_and_expire_with_the_wait() {
    let replicas = Replicas::start(1).await;
    let a = &replicas.servers[0];
    let waiter = tokio::spawn(raw_wait(a.grpc_addr, "tagged", b"", "30S"));
    a.parked(1).await;
    let keys = replicas.redis.keys(&replicas.prefix).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    // `prefixv4{bucket}hash`: the format's version, then braces around the
    // tag of the id's bucket, so every key of one id lands in one Redis
    // Cluster slot, then half the id's SHA-256; the id itself is not in it.
    let rest = key
        .strip_prefix(replicas.prefix.as_str())
        .unwrap()
        .strip_prefix("v4{")
        .unwrap();
    let (tag, hash) = rest.split_once('}').unwrap();
    assert!(tag.bytes().all(|b| b.is_ascii_digit()), "{key}");
    assert!(
        hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    assert_eq!(key, &replicas.key_of("tagged"));
    assert!(!key.contains("tagged"), "{key}");
    let ttl: i64 = replicas.redis.query(redis::cmd("PTTL").arg(key)).await;
    assert!(ttl > 0 && ttl <= 30_000 + 1_000, "TTL {ttl} ms");
    let partner = within(raw_wait(a.grpc_addr, "tagged", b"", "30S")).await;
    assert_eq!(partner.grpc_status, "0", "{partner:?}");
    assert_eq!(within(waiter).await.unwrap().grpc_status, "0");
    replicas.assert_nothing_left().await;
}

#[tokio::test]
async fn close_on_one_replica_leaves_the_others_pairing() {
    let replicas = Replicas::start(2).await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    let parked = tokio::spawn(raw_wait(a.grpc_addr, "closing", b"", "30S"));
    a.parked(1).await;
    within(a.engine.close()).await;
    // Its entry is gone by the time `close` returns, so a caller on b waits
    // rather than pairing with it.
    let left = replicas.redis.keys(&replicas.prefix).await;
    assert!(left.is_empty(), "{left:?}");
    let answer = within(parked).await.unwrap();
    assert_eq!(answer.grpc_status, "14", "{answer:?}");
    assert_pair(b, b.client().await, b.client().await, "closing").await;
    replicas.assert_nothing_left().await;
}

/// The happy path's cost in Redis, counted by Redis itself: per pair, three
/// script runs (park, offer, accept) and one UNLINK of the result key.
#[tokio::test]
async fn a_pair_costs_four_commands_in_redis() {
    let replicas = Replicas::start(2).await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    // The first pair loads the script into Redis.
    assert_pair(a, a.client().await, b.client().await, "warm-up").await;
    replicas.assert_nothing_left().await;
    let (scripts, deletes) = (
        replicas.redis.calls("evalsha").await,
        replicas.redis.calls("unlink").await,
    );
    for i in 0..10 {
        assert_pair(
            a,
            a.client().await,
            b.client().await,
            &format!("counted-{i}"),
        )
        .await;
    }
    replicas.assert_nothing_left().await;
    assert_eq!(replicas.redis.calls("evalsha").await - scripts, 30);
    assert_eq!(replicas.redis.calls("unlink").await - deletes, 10);
    // Loaded once per replica at most, on the first NOSCRIPT.
    let loads = replicas.redis.calls("script|load").await;
    assert!((1..=2).contains(&loads), "{loads} loads");
}

/// Off a cluster, a pair whose callers both have attempt keys costs what a
/// pair without costs: three scripts, and no command of their keys' own.
/// The arrivals' scripts bind the keys to the id (on a cluster, where a
/// script's keys share a slot, each keyed caller sends its binding's SET
/// itself: `redis_failover::the_documented_acl_is_enough_on_a_cluster`).
#[tokio::test]
async fn a_keyed_pair_costs_no_more_commands_off_a_cluster() {
    let replicas = Replicas::start(2).await;
    let [a, b] = &replicas.servers[..] else {
        unreachable!()
    };
    assert_pair(a, a.client().await, b.client().await, "warm-up").await;
    replicas.assert_nothing_left().await;
    let monitor = replicas.redis.monitor().await;
    for i in 0..10 {
        let (id, key) = (format!("keyed-{i}"), format!("first-{i}"));
        let client = a.client().await;
        let waiter =
            tokio::spawn(async move { client.wait_with_key(&id, "a".into(), None, &key).await });
        a.parked(1).await;
        let (id, key) = (format!("keyed-{i}"), format!("second-{i}"));
        let on_b = b.client().await;
        let second = within(on_b.wait_with_key(&id, "b".into(), None, &key)).await;
        assert_eq!(second.unwrap().peer().payload, "a");
        let first = within(waiter).await.unwrap().unwrap();
        assert_eq!(first.peer().payload, "b");
    }
    let sent = monitor.stop(&replicas.redis).await;
    let scripts = sent.iter().filter(|name| *name == "evalsha").count();
    assert_eq!(scripts, 30, "{sent:?}");
    let others: Vec<_> = (sent.iter())
        .filter(|name| !["evalsha", "unlink", "ping"].contains(&name.as_str()))
        .collect();
    assert!(others.is_empty(), "{others:?}");
    // Each caller's key bound, and its answer kept, until they expire.
    assert_eq!(replicas.redis.bindings(&replicas.prefix).await, 20);
}

/// An id whose waiter is being offered to by someone else is busy for a
/// round trip or two. An arriving caller tries again with a growing pause,
/// never in a tight loop: here the id is held busy for a second (an entry
/// written by hand, as a stuck offer would leave it), and the caller asks
/// Redis a dozen times at most before it parks.
#[tokio::test]
async fn a_busy_id_is_retried_with_backoff_not_hammered() {
    let replicas = Replicas::start(1).await;
    let a = &replicas.servers[0];
    // Warm up, so the script is loaded and the count below is the caller's.
    assert_pair(a, a.client().await, a.client().await, "warm-up").await;
    let key = replicas.key_of("busy");
    let _: i64 = replicas
        .redis
        .query(
            redis::cmd("HSET")
                .arg(&key)
                .arg(&["w", "nobody:1", "wc", "nowhere", "wp", "", "we", "0"][..])
                .arg(&["o", "nobody:2", "oc", "nowhere", "op", "", "oe", "0"][..]),
        )
        .await;
    let _: i64 = replicas
        .redis
        .query(redis::cmd("PEXPIRE").arg(&key).arg(1000))
        .await;
    let scripts = replicas.redis.calls("evalsha").await;

    let waiter = tokio::spawn(raw_wait(a.grpc_addr, "busy", b"waited", "60S"));
    a.parked(1).await;
    let tries = replicas.redis.calls("evalsha").await - scripts;
    assert!((2..=15).contains(&tries), "{tries} tries in a second");
    let partner = within(raw_wait(a.grpc_addr, "busy", b"partner", "60S")).await;
    assert_eq!(partner.message.unwrap().peer_payload, "waited");
    assert_eq!(within(waiter).await.unwrap().grpc_status, "0");
    replicas.assert_nothing_left().await;
}

/// A waiter that leaves while a second caller's offer to it is pending hands
/// its place to that caller, who then waits (and counts as waiting) like
/// any first caller. The waiter here is a stand-in: an entry written by hand
/// whose "replica" is the test's own subscriber, which never accepts, and
/// which then leaves through the engine's own script.
#[tokio::test]
async fn a_waiter_leaving_during_an_offer_hands_its_place_to_the_offerer() {
    let replicas = Replicas::start(1).await;
    let a = &replicas.servers[0];
    let mut stand_in = replicas.stand_in("handover").await;

    // The second caller offers to the stand-in, which does not accept.
    let offerer = tokio::spawn(raw_wait(a.grpc_addr, "handover", b"offerer", "60S"));
    let message = stand_in.next_offer().await;
    assert!(message.starts_with(b"Oghost:1\n"), "{message:?}");
    assert_eq!(a.waiting(), 0, "an offerer is not a waiter");

    // The stand-in's caller leaves; the offerer takes its place.
    let left: Vec<String> = crate::common::redis::script()
        .key(&stand_in.key)
        .arg("leave")
        .arg("ghost:1")
        .arg("0")
        .invoke_async(&mut stand_in.connection)
        .await
        .unwrap();
    assert_eq!(left, ["left"]);
    a.parked(1).await;
    let partner = within(raw_wait(a.grpc_addr, "handover", b"partner", "60S")).await;
    assert_eq!(partner.message.unwrap().peer_payload, "offerer");
    let offerer = within(offerer).await.unwrap();
    let message = offerer.message.unwrap();
    assert_eq!(
        (message.role(), message.peer_payload.as_ref()),
        (Role::First, &b"partner"[..])
    );
    replicas.assert_nothing_left().await;
}

/// A second caller whose pair was decided but whose message never came
/// learns it from the result key when its deadline comes: paired, with the
/// waiter's payload, never timed out. The waiter is a stand-in (the test's
/// own subscriber) that decides the pair by hand and sends no message.
#[tokio::test]
async fn an_offerer_whose_message_was_lost_learns_its_pair_from_the_result_key() {
    let replicas = Replicas::start(1).await;
    let a = &replicas.servers[0];
    let mut stand_in = replicas.stand_in("lost-message").await;
    let key = stand_in.key.clone();

    // The server answers at its deadline (5 s less its margin), whatever
    // the test does meanwhile; the test only needs a moment.
    let offerer = tokio::spawn(raw_wait(a.grpc_addr, "lost-message", b"offerer", "5S"));
    stand_in.next_offer().await;
    // The pair, decided as the accept script would, without its message.
    let token: String = replicas
        .redis
        .query(redis::cmd("HGET").arg(&key).arg("o"))
        .await;
    let _: () = replicas
        .redis
        .query(
            redis::cmd("SET")
                .arg(format!("{key}:r:{token}"))
                .arg(crate::common::redis::sealed(b"ghost"))
                .arg("PX")
                .arg(60_000),
        )
        .await;
    let _: i64 = replicas.redis.query(redis::cmd("DEL").arg(&key)).await;

    let answer = within(offerer).await.unwrap();
    assert_eq!(answer.grpc_status, "0", "{answer:?}");
    let message = answer.message.unwrap();
    assert_eq!(
        (message.role(), message.peer_payload.as_ref()),
        (Role::Second, &b"ghost"[..])
    );
    replicas.assert_nothing_left().await;
}
