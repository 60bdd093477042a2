//! Attempt keys through the real server: a call whose stream is cut gets its
//! place or its answer back by retrying with the same key, over gRPC and
//! HTTP, on the local engine and on Redis.

use std::time::Duration;

use bytes::Bytes;
use rendezvous::{
    client::Try,
    pairing::{PairError, Role},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tonic::Code;

use crate::common::{
    JsonBody, TestServer, http_client,
    redis::{RedisServer, engine_config, replica_config, start_engine, unique_prefix},
    scrape, value, within,
};

type Waiting = tokio::task::JoinHandle<Result<rendezvous::pairing::Meeting, tonic::Status>>;

/// What a caller was told: its role, and its partner's payload.
fn told(meeting: &rendezvous::pairing::Meeting) -> (Role, &[u8]) {
    (meeting.role(), &meeting.peer().payload[..])
}

/// A call with attempt key `key`, on `client`, on a task of its own.
fn keyed(
    client: rendezvous::client::Client,
    id: &'static str,
    payload: &'static str,
    key: &'static str,
) -> Waiting {
    tokio::spawn(async move { client.wait_with_key(id, payload.into(), None, key).await })
}

/// The engines every scenario here runs on: one process, and a replica on
/// a Redis of its own.
async fn servers() -> Vec<(TestServer, Option<RedisServer>)> {
    let local = TestServer::start().await;
    let redis = RedisServer::start().await;
    let replica = TestServer::with(replica_config(&redis, &unique_prefix("attempts"))).await;
    replica.ready().await;
    vec![(local, None), (replica, Some(redis))]
}

/// Two replicas, ready, on a Redis of their own, under a prefix named
/// after `name`.
async fn replicas(name: &str) -> (RedisServer, String, [TestServer; 2]) {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix(name);
    let a = TestServer::with(replica_config(&redis, &prefix)).await;
    a.ready().await;
    let b = TestServer::with(replica_config(&redis, &prefix)).await;
    b.ready().await;
    (redis, prefix, [a, b])
}

/// A gRPC waiter's stream is cut while it is parked (its task aborted, so
/// its client resets the stream); the partner comes; the retry, on a new
/// connection, gets the answer: the first party's, with the partner's
/// payload. Then again, the same, and counted as handed again.
#[tokio::test]
async fn a_cut_grpc_waiter_retries_and_gets_its_answer() {
    for (server, _redis) in servers().await {
        server.cut_while_parked("cut", 2, "from a", "key-1").await;
        // The place is held: the partner pairs with it at once.
        let partner = server.client().await;
        let second = within(partner.wait("cut", "from b".into(), None))
            .await
            .unwrap();
        assert_eq!(told(&second), (Role::Second, &b"from a"[..]));
        let retry = server.client().await;
        for _ in 0..2 {
            let first = within(retry.wait_with_key("cut", "from a".into(), None, "key-1"))
                .await
                .unwrap();
            assert_eq!(told(&first), (Role::First, &b"from b"[..]));
        }
        let scrape = scrape(&server).await;
        let grpc = [("protocol", "grpc")];
        assert_eq!(value(&scrape, "rendezvous_reattached_total", &grpc), 1.0);
        assert_eq!(value(&scrape, "rendezvous_redelivered_total", &grpc), 1.0);
        // Counted once each, not once per delivery.
        assert_eq!(value(&scrape, "rendezvous_paired_total", &grpc), 2.0);
        assert_eq!(server.waiting(), 0);
    }
}

/// A waiter whose retry comes before its partner takes its place back: it
/// stays the first party, and the partner finds it there.
#[tokio::test]
async fn a_retry_before_the_partner_keeps_the_first_place() {
    for (server, _redis) in servers().await {
        server.cut_while_parked("keep", 2, "a", "key-2").await;
        let retry = keyed(server.client().await, "keep", "a", "key-2");
        // Still one caller parked: the retry did not park a second time.
        server.parked(1).await;
        let partner = server.client().await;
        let second = within(partner.wait("keep", "b".into(), None))
            .await
            .unwrap();
        assert_eq!(second.role(), Role::Second);
        let first = within(retry).await.unwrap().unwrap();
        assert_eq!(told(&first), (Role::First, &b"b"[..]));
    }
}

/// Over HTTP the key is `?attempt_key=`: a waiter cut while parked gets,
/// on retrying, the answer decided meanwhile; every retry after that gets
/// the same bytes.
#[tokio::test]
async fn an_http_retry_gets_the_same_answer_byte_for_byte() {
    for (server, _redis) in servers().await {
        let http = http_client();
        let url = server.url("/wait-for-second-party/web?attempt_key=k-3");
        let cut = tokio::spawn(http.post(&url).body("from a").send());
        server.parked(1).await;
        cut.abort();
        let _ = cut.await;
        let partner = within(
            http.post(server.url("/wait-for-second-party/web"))
                .body("from b")
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(partner.status(), 200);
        assert_eq!(partner.text().await.unwrap(), "Synced");
        let retry = || async {
            let answer = within(
                http.post(&url)
                    .header("accept", "application/json")
                    .body("from a")
                    .send(),
            )
            .await
            .unwrap();
            assert_eq!(answer.status(), 200);
            answer.bytes().await.unwrap()
        };
        let (once, twice) = (retry().await, retry().await);
        assert_eq!(once, twice);
        let json: serde_json::Value = serde_json::from_slice(&once).unwrap();
        assert_eq!(json["role"], "ROLE_FIRST");
        assert_eq!(json["peerPayload"], "ZnJvbSBi"); // "from b"
        // The legacy body, for a legacy retry.
        let legacy = within(http.post(&url).body("from a").send()).await.unwrap();
        assert_eq!(legacy.text().await.unwrap(), "Synced");
    }
}

/// A try that says how many came before it keeps its wait when an earlier
/// try's request reaches the server only after it: the late one is
/// answered ABORTED over gRPC and 409 over HTTP, and leaves the place
/// alone; the pair is decided once, for the later try, and then the late
/// one gets that answer too. A count that is not a number is refused.
#[tokio::test]
async fn a_late_earlier_try_is_aborted_and_the_later_keeps_the_wait() {
    for (server, _redis) in servers().await {
        let client = server.client().await;
        let later = {
            let client = client.clone();
            let attempt = Try {
                key: "key-7",
                previous: 1,
            };
            tokio::spawn(async move {
                client
                    .wait_with_key("late", "from a".into(), None, attempt)
                    .await
            })
        };
        server.parked(1).await;
        let late = within(client.wait_with_key("late", "from a".into(), None, "key-7")).await;
        assert_eq!(late.unwrap_err().code(), Code::Aborted);
        let http = http_client();
        let url = server.url("/wait-for-second-party/late?attempt_key=key-7&previous_attempts=0");
        let late = within(
            http.post(&url)
                .header("accept", "application/json")
                .body("from a")
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(late.status(), 409);
        let body: serde_json::Value = serde_json::from_slice(&late.bytes().await.unwrap()).unwrap();
        assert_eq!(body["code"], "ABORTED");
        assert!(!later.is_finished());
        server.parked(1).await;

        let partner = within(client.wait("late", "from b".into(), None))
            .await
            .unwrap();
        assert_eq!(told(&partner), (Role::Second, &b"from a"[..]));
        let later = within(later).await.unwrap().unwrap();
        assert_eq!(told(&later), (Role::First, &b"from b"[..]));
        let late = within(http.post(&url).body("from a").send()).await.unwrap();
        assert_eq!(
            (late.status().as_u16(), late.text().await.unwrap()),
            (200, "Synced".into())
        );

        let bad = server.url("/wait-for-second-party/late?attempt_key=key-8&previous_attempts=one");
        let bad = within(http.post(&bad).send()).await.unwrap();
        assert_eq!(bad.status(), 400);
        assert!(
            bad.text()
                .await
                .unwrap()
                .contains("?previous_attempts=one is not a count of tries")
        );
    }
}

/// A key is for one request: a retry with another payload or id is refused
/// and says why, and an older call still open is told a newer one took its
/// wait over. Bad keys are refused as bad arguments.
#[tokio::test]
async fn misused_keys_are_refused_with_their_reason() {
    for (server, _redis) in servers().await {
        let open = keyed(server.client().await, "mine", "p", "key-4");
        server.parked(1).await;
        let client = server.client().await;
        let other = client
            .wait_with_key("mine", "q".into(), None, "key-4")
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::FailedPrecondition);
        assert_eq!(
            other.message(),
            "this attempt key was first sent with another payload; send the same request on \
             every retry of one wait, and a new key for each new wait"
        );
        let http = http_client()
            .post(server.url("/wait-for-second-party/yours?attempt_key=key-4"))
            .header("accept", "application/json")
            .body("p")
            .send()
            .await
            .unwrap();
        assert_eq!(http.status(), 422);
        let json = http.json_body().await;
        assert_eq!(json["code"], "FAILED_PRECONDITION");
        assert!(
            json["message"].as_str().unwrap().contains("another id"),
            "{json}"
        );
        // A newer call with the key takes the wait over.
        let took_over = keyed(server.client().await, "mine", "p", "key-4");
        let superseded = within(open).await.unwrap().unwrap_err();
        assert_eq!(superseded.code(), Code::Aborted);
        assert_eq!(
            superseded.message(),
            "a newer call with the same attempt key took this wait over; its answer goes there"
        );
        let partner = server.client().await;
        within(partner.wait("mine", "r".into(), None))
            .await
            .unwrap();
        let first = within(took_over).await.unwrap().unwrap();
        assert_eq!(first.peer().payload, "r");
        let bad = client
            .wait_with_key("mine", "p".into(), None, "not a key")
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        let scrape = scrape(&server).await;
        let reason = |r| [("protocol", "grpc"), ("reason", r)];
        assert_eq!(
            value(
                &scrape,
                "rendezvous_rejections_total",
                &reason("attempt_reused")
            ),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "rendezvous_rejections_total",
                &reason("superseded")
            ),
            1.0
        );
    }
}

/// `Client::wait_retrying` (and so `rendezvous wait --retry`) makes a key
/// by itself: a proxy that cuts its first connection while it is parked
/// costs it nothing but a reconnect, and it keeps the first place.
#[tokio::test]
async fn the_retrying_client_survives_a_cut_connection() {
    let server = TestServer::start().await;
    let (proxy, cuts) = cutting_proxy(server.grpc_addr).await;
    let options = rendezvous::client::ClientOptions::new(&proxy.to_string()).unwrap();
    let client = rendezvous::client::Client::connect_lazily(&options).unwrap();
    let waiter = tokio::spawn(async move {
        let mut retries = Vec::new();
        let meeting = client
            .wait_retrying(
                "proxied",
                "a".into(),
                Duration::from_secs(30),
                "",
                |status: &tonic::Status, _| retries.push(status.code()),
            )
            .await;
        (meeting, retries)
    });
    server.parked(1).await;
    cuts.send_replace(true);
    // The cut caller's place is still there, for the retry to take back:
    // the partner, which comes only now, pairs with it.
    let partner = server.client().await;
    let second = within(partner.wait("proxied", Bytes::from_static(b"b"), None))
        .await
        .unwrap();
    assert_eq!(told(&second), (Role::Second, &b"a"[..]));
    let (meeting, retries) = within(waiter).await.unwrap();
    let meeting = meeting.unwrap();
    assert_eq!(told(&meeting), (Role::First, &b"b"[..]));
    assert!(!retries.is_empty(), "the cut was not retried");
}

/// A TCP proxy to `target` whose first connection is cut (both ways at
/// once) when the returned flag turns `true`; later ones pass untouched.
async fn cutting_proxy(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, _) = watch::channel(false);
    let cuts = cut.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(target).await.unwrap();
            let mut cut = cuts.subscribe();
            let cuttable = std::mem::take(&mut first);
            tokio::spawn(async move {
                let piped = pipe(client, server);
                if cuttable {
                    tokio::select! {
                        () = piped => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                } else {
                    piped.await;
                }
            });
        }
    });
    (addr, cut)
}

async fn pipe(mut a: TcpStream, mut b: TcpStream) {
    let (mut ar, mut aw) = a.split();
    let (mut br, mut bw) = b.split();
    let there = async {
        let mut buf = [0; 8192];
        while let Ok(n @ 1..) = ar.read(&mut buf).await {
            if bw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let back = async {
        let mut buf = [0; 8192];
        while let Ok(n @ 1..) = br.read(&mut buf).await {
            if aw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = there => {}
        () = back => {}
    }
}

/// On Redis, a pair's answer is kept where every replica finds it. A waiter
/// answered through one replica, whose answer never reached it, retries
/// through another and gets the same answer. A waiter whose replica was
/// SIGKILLed is paired by a partner that comes meanwhile, and its retry
/// through another replica gets that answer; and nothing is left behind.
#[tokio::test]
async fn on_redis_a_retry_through_another_replica_gets_the_answer() {
    let (redis, prefix, [a, b]) = replicas("attempts-across").await;
    let waiter = keyed(a.client().await, "across", "from a", "key-5");
    a.parked(1).await;
    let partner = b.client().await;
    within(partner.wait("across", "from b".into(), None))
        .await
        .unwrap();
    let answered = within(waiter).await.unwrap().unwrap();
    let again = within(
        b.client()
            .await
            .wait_with_key("across", "from a".into(), None, "key-5"),
    )
    .await
    .unwrap();
    assert_eq!(
        (again.role(), &again.peer().payload[..], again.waited),
        (Role::First, &b"from b"[..], answered.waited)
    );
    // Handed again, not paired again: the pair was counted once on each
    // side's replica.
    let counted = scrape(&b).await;
    let grpc = [("protocol", "grpc")];
    assert_eq!(value(&counted, "rendezvous_redelivered_total", &grpc), 1.0);
    assert_eq!(value(&counted, "rendezvous_paired_total", &grpc), 1.0);

    // The real binary, killed while its caller waits.
    let url = redis.url();
    let killed =
        crate::common::Process::start(&["--redis-url", &url, "--redis-key-prefix", &prefix]).await;
    killed.until_ready(200).await;
    let waiter = keyed(killed.client().await, "killed", "from a", "key-6");
    // Parked: its entry beside the answer kept from the pair above.
    redis.until_entries(&prefix, 2).await;
    let mut killed = killed;
    killed.child.kill().await.unwrap();
    assert!(within(waiter).await.unwrap().is_err());
    let partner = within(b.client().await.wait("killed", "from b".into(), None))
        .await
        .unwrap();
    assert_eq!(told(&partner), (Role::Second, &b"from a"[..]));
    let retry = within(
        b.client()
            .await
            .wait_with_key("killed", "from a".into(), None, "key-6"),
    )
    .await
    .unwrap();
    assert_eq!(told(&retry), (Role::First, &b"from b"[..]));
    // Only the two waiters' kept answers are left (the partners had no
    // key), and they go after the grace.
    redis.until_entries(&prefix, 2).await;
}

/// A replica drained by SIGTERM while 1,000 callers with attempt keys are
/// parked on it: each is answered `UNAVAILABLE`, and its place stays in
/// Redis. Partners for half of them come first and pair with the held
/// places; then every caller retries through another replica, where the
/// first half get their answers and the other half take their places back,
/// to pair with partners that come only then. Every caller keeps its role
/// and gets its partner's payload; nobody parks twice.
#[tokio::test]
async fn on_redis_a_drain_costs_keyed_callers_only_a_reconnect() {
    const CALLERS: usize = 1_000;
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("attempts-drain");
    // Graces and Redis timeouts no busy machine runs out of: a thousand
    // keyed callers each detach their place in Redis before they are
    // answered, their places and answers must outlast every step below, and
    // a command that a loaded Redis answers late must not answer a caller
    // UNAVAILABLE before it has parked.
    let mut config = replica_config(&redis, &prefix);
    config.attempt_grace = Duration::from_secs(600);
    config.redis.timeout = Duration::from_secs(30);
    let other = TestServer::with(config).await;
    other.ready().await;
    let url = redis.url();
    let args = ["--redis-url", &url, "--redis-key-prefix", &prefix];
    let graces = [
        "--shutdown-grace",
        "60s",
        "--attempt-grace",
        "10m",
        "--redis-timeout",
        "30s",
    ];
    let mut drained = crate::common::Process::start(&[&args[..], &graces].concat()).await;
    drained.until_ready(200).await;
    let client = drained.client().await;
    let id = |i: usize| format!("drain-{i}");
    let key = |i: usize| format!("key-{i}");
    // Every keyed caller's try, through `client`.
    let tries = |client: &rendezvous::client::Client| -> Vec<_> {
        (0..CALLERS)
            .map(|i| {
                let client = client.clone();
                let (id, key) = (id(i), key(i));
                tokio::spawn(async move {
                    client
                        .wait_with_key(&id, format!("a{i}").into(), None, &key)
                        .await
                })
            })
            .collect()
    };
    let waiters = tries(&client);
    redis.until_entries(&prefix, CALLERS).await;
    drained.signal("TERM");
    for waiter in waiters {
        let answered = tokio::time::timeout(Duration::from_secs(60), waiter);
        let status = answered.await.unwrap().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let exited = tokio::time::timeout(Duration::from_secs(60), drained.child.wait());
    assert_eq!(exited.await.unwrap().unwrap().code(), Some(0));
    // Every place is still there, detached.
    assert_eq!(redis.entries(&prefix).await.len(), CALLERS);

    let partner = other.client().await;
    let partners = |range: std::ops::Range<usize>| {
        range
            .map(|i| {
                let partner = partner.clone();
                let id = id(i);
                tokio::spawn(async move { partner.wait(&id, format!("b{i}").into(), None).await })
            })
            .collect::<Vec<_>>()
    };
    let check_second = |i: usize, meeting: rendezvous::pairing::Meeting| {
        assert_eq!(
            told(&meeting),
            (Role::Second, format!("a{i}").as_bytes()),
            "partner {i}"
        );
    };
    let half = CALLERS / 2;
    for (i, partner) in partners(0..half).into_iter().enumerate() {
        check_second(i, within(partner).await.unwrap().unwrap());
    }
    let retries = tries(&other.client().await);
    // The second half took their places back: parked once, not twice.
    other.parked(CALLERS - half).await;
    assert_eq!(redis.entries(&prefix).await.len(), CALLERS);
    for (i, partner) in partners(half..CALLERS).into_iter().enumerate() {
        check_second(half + i, within(partner).await.unwrap().unwrap());
    }
    for (i, retry) in retries.into_iter().enumerate() {
        let meeting = within(retry).await.unwrap().unwrap();
        assert_eq!(
            told(&meeting),
            (Role::First, format!("b{i}").as_bytes()),
            "caller {i}"
        );
    }
    assert_eq!(other.waiting(), 0);
    // What is left is each caller's kept answer, until the grace ends, and
    // each key's binding to its id.
    let left = redis.entries(&prefix).await;
    assert_eq!(left.len(), CALLERS);
    assert!(left.iter().all(|key| key.contains(":k:")), "{left:?}");
    assert_eq!(redis.bindings(&prefix).await, CALLERS);
}

/// A group member's call with attempt key `key` (none if empty), on
/// `client`, on a task of its own.
fn member(
    client: rendezvous::client::Client,
    id: &'static str,
    payload: &'static str,
    key: &'static str,
) -> Waiting {
    tokio::spawn(async move {
        client
            .gather_with_key(id, 3, payload.into(), None, key)
            .await
    })
}

/// What a group member was told: its position, and every payload.
fn grouped(meeting: &rendezvous::pairing::Meeting) -> (usize, Vec<Bytes>) {
    (meeting.position, meeting.payloads(&Bytes::new()))
}

/// On Redis, a group member's place is found by its key, through any
/// replica. A member cut on one replica retries through another and takes
/// its place back, with its position (its first try answered `ABORTED`);
/// the group completes with it; a retry after that, through the first
/// replica, gets the same answer byte for byte, and one that asks for
/// another group size is refused.
#[tokio::test]
async fn on_redis_a_group_member_retries_through_another_replica() {
    let (redis, prefix, [a, b]) = replicas("attempts-group").await;
    let first = member(a.client().await, "team", "m0", "g-0");
    a.parked(1).await;
    let second = member(b.client().await, "team", "m1", "");
    b.parked(1).await;
    let retry = member(b.client().await, "team", "m0", "g-0");
    let status = within(first).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    b.parked(2).await;
    a.parked(0).await;
    let last = within(member(a.client().await, "team", "m2", ""))
        .await
        .unwrap()
        .unwrap();
    let all: Vec<Bytes> = vec!["m0".into(), "m1".into(), "m2".into()];
    assert_eq!(grouped(&last), (2, all.clone()));
    let second = within(second).await.unwrap().unwrap();
    assert_eq!(grouped(&second), (1, all.clone()));
    let retried = within(retry).await.unwrap().unwrap();
    assert_eq!(grouped(&retried), (0, all.clone()));

    let again = within(member(a.client().await, "team", "m0", "g-0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((grouped(&again), again.waited), ((0, all), retried.waited));
    // Counted where each was handed: the retry that took its place back
    // as reattached, the retry after the answer as redelivered, and the
    // group's members as paired once each.
    let grpc = [("protocol", "grpc")];
    let (on_a, on_b) = (scrape(&a).await, scrape(&b).await);
    assert_eq!(value(&on_b, "rendezvous_reattached_total", &grpc), 1.0);
    assert_eq!(value(&on_b, "rendezvous_paired_total", &grpc), 2.0);
    assert_eq!(value(&on_a, "rendezvous_redelivered_total", &grpc), 1.0);
    assert_eq!(value(&on_a, "rendezvous_paired_total", &grpc), 1.0);
    let resized = within(
        b.client()
            .await
            .gather_with_key("team", 4, "m0".into(), None, "g-0"),
    )
    .await
    .unwrap_err();
    assert_eq!(resized.code(), Code::FailedPrecondition, "{resized:?}");
    // The kept answer is all that is left, until the grace ends.
    redis.until_entries(&prefix, 1).await;
    assert!(redis.entries(&prefix).await[0].contains(":k:"));
}

/// On Redis, a key reused with another payload is refused through any
/// replica, as one replica refuses it: while its first try is parked (the
/// place keeps its payload), after its pair was decided (the kept answer
/// keeps a digest of it), and for a group member in both states. The
/// refused call takes nothing over.
#[tokio::test]
async fn on_redis_a_key_reused_with_another_payload_is_refused_through_any_replica() {
    let (_redis, _prefix, [a, b]) = replicas("attempts-reused").await;
    let reused = |status: tonic::Status| {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("this attempt key was first sent with another payload"),
            "{status:?}"
        );
    };
    // A pair's waiter, parked through a.
    let open = keyed(a.client().await, "reuse", "p", "r-1");
    a.parked(1).await;
    reused(
        within(
            b.client()
                .await
                .wait_with_key("reuse", "q".into(), None, "r-1"),
        )
        .await
        .unwrap_err(),
    );
    a.parked(1).await;
    // The same payload takes the place over.
    let retry = keyed(b.client().await, "reuse", "p", "r-1");
    assert_eq!(
        within(open).await.unwrap().unwrap_err().code(),
        Code::Aborted
    );
    b.parked(1).await;
    let partner = within(a.client().await.wait("reuse", "r".into(), None))
        .await
        .unwrap();
    assert_eq!(told(&partner), (Role::Second, &b"p"[..]));
    assert_eq!(
        told(&within(retry).await.unwrap().unwrap()),
        (Role::First, &b"r"[..])
    );
    // Decided: the kept answer is refused to another payload, handed to the
    // same one.
    reused(
        within(
            a.client()
                .await
                .wait_with_key("reuse", "q".into(), None, "r-1"),
        )
        .await
        .unwrap_err(),
    );
    let again = within(
        a.client()
            .await
            .wait_with_key("reuse", "p".into(), None, "r-1"),
    )
    .await
    .unwrap();
    assert_eq!(told(&again), (Role::First, &b"r"[..]));

    // A group member, parked through a, then its group completed.
    let first = member(a.client().await, "crew", "m0", "g-9");
    a.parked(1).await;
    reused(
        within(member(b.client().await, "crew", "other", "g-9"))
            .await
            .unwrap()
            .unwrap_err(),
    );
    a.parked(1).await;
    b.parked(0).await;
    let second = member(b.client().await, "crew", "m1", "");
    b.parked(1).await;
    let last = within(member(b.client().await, "crew", "m2", ""))
        .await
        .unwrap()
        .unwrap();
    let all: Vec<Bytes> = vec!["m0".into(), "m1".into(), "m2".into()];
    assert_eq!(grouped(&last), (2, all.clone()));
    assert_eq!(
        grouped(&within(second).await.unwrap().unwrap()),
        (1, all.clone())
    );
    assert_eq!(
        grouped(&within(first).await.unwrap().unwrap()),
        (0, all.clone())
    );
    reused(
        within(member(b.client().await, "crew", "other", "g-9"))
            .await
            .unwrap()
            .unwrap_err(),
    );
    let kept = within(member(b.client().await, "crew", "m0", "g-9"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grouped(&kept), (0, all));
    let grpc = [("protocol", "grpc"), ("reason", "attempt_reused")];
    let refused = value(&scrape(&a).await, "rendezvous_rejections_total", &grpc)
        + value(&scrape(&b).await, "rendezvous_rejections_total", &grpc);
    assert_eq!(refused, 4.0);
}

/// On Redis, an attempt key is bound to the id and group size of its first
/// try, through any replica: a try through another replica that names
/// another id, or another size, is refused and says which, while the first
/// try waits and after its pair is decided. The refused tries take nothing:
/// the first try pairs, and its kept answer is still handed to its retry.
#[tokio::test]
async fn on_redis_a_key_reused_with_another_id_is_refused_through_any_replica() {
    let (redis, prefix, [a, b]) = replicas("attempts-other-id").await;
    let refused = |status: tonic::Status, what: &str| {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let first_sent = format!("this attempt key was first sent with {what};");
        assert!(status.message().starts_with(&first_sent), "{status:?}");
    };
    async fn other_id(server: &TestServer) -> tonic::Status {
        let client = server.client().await;
        let call = client.wait_with_key("other-id", "p".into(), None, "bound");
        within(call).await.unwrap_err()
    }
    let open = keyed(a.client().await, "first-id", "p", "bound");
    a.parked(1).await;
    refused(other_id(&b).await, "another id");
    let on_b = b.client().await;
    let resized = on_b.gather_with_key("first-id", 3, "p".into(), None, "bound");
    refused(within(resized).await.unwrap_err(), "another group size");
    b.parked(0).await;
    a.parked(1).await;

    let partner = within(b.client().await.wait("first-id", "q".into(), None))
        .await
        .unwrap();
    assert_eq!(told(&partner), (Role::Second, &b"p"[..]));
    let first = within(open).await.unwrap().unwrap();
    assert_eq!(told(&first), (Role::First, &b"q"[..]));
    // Decided: refused through either replica, the kept answer handed on.
    refused(other_id(&b).await, "another id");
    refused(other_id(&a).await, "another id");
    let again = on_b.wait_with_key("first-id", "p".into(), None, "bound");
    assert_eq!(
        told(&within(again).await.unwrap()),
        (Role::First, &b"q"[..])
    );
    let grpc = [("protocol", "grpc"), ("reason", "attempt_reused")];
    let refusals = value(&scrape(&a).await, "rendezvous_rejections_total", &grpc)
        + value(&scrape(&b).await, "rendezvous_rejections_total", &grpc);
    assert_eq!(refusals, 4.0);
    // The binding and the kept answer are what is left, each to expire.
    let (bindings, kept): (Vec<_>, Vec<_>) = (redis.keys(&prefix).await)
        .into_iter()
        .partition(|key| key.contains("}attempt:"));
    assert_eq!(
        (bindings.len(), kept.len()),
        (1, 1),
        "{bindings:?} {kept:?}"
    );
    assert!(kept[0].contains(":k:"), "{kept:?}");
    let ttl: i64 = redis.query(redis::cmd("PTTL").arg(&bindings[0])).await;
    assert!(ttl > 0, "the binding expires: {ttl}");
}

/// On Redis, each try of one wait may be part of a trace of its own: a
/// retry with the same payload and another trace id is the same request,
/// whether it finds its place (it takes it over) or its kept answer (it is
/// handed it); with another payload it is refused, whatever its trace.
#[tokio::test]
async fn on_redis_a_retry_in_another_trace_is_the_same_request() {
    use rendezvous::pairing::{
        Attempt, AttemptKey, Engine, Id, Joining, Offer, Parties, RedisEngine, Reuse, TryOrder,
        Withdrawing,
    };
    use rendezvous::trace::TraceContext;
    use std::{sync::Arc, time::SystemTime};

    let redis = RedisServer::start().await;
    let prefix = unique_prefix("attempts-traced");
    let engine = || start_engine(engine_config(redis.url(), &prefix, usize::MAX));
    let (a, b) = (Arc::new(engine().await), Arc::new(engine().await));
    // Try `n` of the wait with key "t", in trace `n`, through `engine`.
    let tried = |engine: &Arc<RedisEngine>, n: u32, payload: &'static str| {
        let engine = engine.clone();
        async move {
            let key = AttemptKey::in_namespace(None, "t").unwrap().unwrap();
            let attempt = Attempt {
                key: &key,
                grace: Duration::from_secs(5),
                order: TryOrder {
                    previous: n,
                    tried: SystemTime::now(),
                },
                withdrawing: &Withdrawing::default(),
            };
            let traceparent = format!("00-{:032x}-00f067aa0ba902b7-01", n + 1);
            let offer = Offer {
                payload: Bytes::from_static(payload.as_bytes()),
                trace: TraceContext::from_traceparent(traceparent.as_bytes()),
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let ask = Joining {
                id: Id::new("traced").unwrap(),
                parties: Parties::TWO,
                offer,
            };
            engine.gather_keyed(ask, deadline, attempt).await
        }
    };
    let first = tokio::spawn(tried(&a, 0, "p"));
    crate::common::eventually(|| a.waiting() == 1, "the first try parked").await;
    let reused = PairError::AttemptReused(Reuse::Payload);
    assert_eq!(within(tried(&b, 1, "q")).await.unwrap_err(), reused);
    let retry = tokio::spawn(tried(&b, 1, "p"));
    assert_eq!(
        within(first).await.unwrap().unwrap_err(),
        PairError::Superseded
    );
    crate::common::eventually(|| b.waiting() == 1, "the retry parked").await;
    let partner = within(a.meet(
        Id::new("traced").unwrap(),
        Bytes::from_static(b"r").into(),
        tokio::time::Instant::now() + Duration::from_secs(60),
    ))
    .await
    .unwrap();
    assert_eq!(told(&partner), (Role::Second, &b"p"[..]));
    let answered = within(retry).await.unwrap().unwrap();
    assert_eq!(told(&answered), (Role::First, &b"r"[..]));
    // Decided: the kept answer, through the other replica, in a third trace.
    assert_eq!(within(tried(&a, 2, "q")).await.unwrap_err(), reused);
    let kept = within(tried(&a, 2, "p")).await.unwrap();
    assert_eq!(told(&kept), (Role::First, &b"r"[..]));
}

/// On Redis, a keyed member's retry while its group's completion waits for
/// that member's confirmation: the retry (through another replica) takes the
/// place over, its first try is told so, the completion asks the retry to
/// confirm instead, and the group completes with the member at its first
/// position. The first try is a stand-in (the test's own subscriber), which
/// hears the offer and never confirms, so the completion stays pending
/// until the retry comes.
#[tokio::test]
async fn on_redis_a_members_retry_while_its_completion_is_pending_confirms_it() {
    let replicas = crate::common::redis::Replicas::start(2).await;
    let (a, b) = (&replicas.servers[0], &replicas.servers[1]);
    let mut first_try = replicas
        .stand_in_member("pending", 3, b"m0", "m0-key")
        .await;
    let m1 = member(a.client().await, "pending", "m1", "");
    a.parked(1).await;
    let m2 = member(a.client().await, "pending", "m2", "");
    let offer = first_try.next_offer().await;
    assert!(offer.starts_with(b"Oghost:1\n"), "{offer:?}");
    // The completion waits for the stand-in's confirmation, which never
    // comes: the last member is still on its way.
    let pending: Option<String> = (replicas.redis)
        .query(redis::cmd("HGET").arg(&first_try.key).arg("o"))
        .await;
    assert!(pending.is_some(), "a completion is pending");
    assert!(!m2.is_finished());

    let retry = member(b.client().await, "pending", "m0", "m0-key");
    let takeover = first_try.next_offer().await;
    assert!(takeover.starts_with(b"Xghost:1\n"), "{takeover:?}");
    let all: Vec<Bytes> = vec!["m0".into(), "m1".into(), "m2".into()];
    for (at, member) in [(2, m2), (1, m1), (0, retry)] {
        let meeting = within(member).await.unwrap().unwrap();
        assert_eq!(grouped(&meeting), (at, all.clone()));
    }
    let grpc = [("protocol", "grpc")];
    assert_eq!(
        value(&scrape(b).await, "rendezvous_reattached_total", &grpc),
        1.0
    );
    // The retry's kept answer and its key's binding are what is left.
    replicas.redis.until_entries(&replicas.prefix, 1).await;
    assert_eq!(replicas.redis.bindings(&replicas.prefix).await, 1);
}

/// On Redis, a keyed member whose replica goes away keeps its place in the
/// group: drained by SIGTERM (answered `UNAVAILABLE`, its place held for
/// the grace) or SIGKILLed (held while its deadline lasts). The group
/// completes without waiting for it, and its retry through another replica
/// gets its answer, or, if it comes first, takes its place back.
#[tokio::test]
async fn on_redis_a_group_outlives_its_members_replica() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("attempts-group-gone");
    let other = TestServer::with(replica_config(&redis, &prefix)).await;
    other.ready().await;
    let url = redis.url();
    // A grace that outlasts the test, so that the kept answers counted at
    // its end are all still there on a slow machine.
    let args = [
        "--redis-url",
        url.as_str(),
        "--redis-key-prefix",
        prefix.as_str(),
        "--attempt-grace",
        "60s",
    ];

    // Drained: both members parked on it are let go of, and held.
    let drained = crate::common::Process::start(&args).await;
    drained.until_ready(200).await;
    let client = drained.client().await;
    let m0 = member(client.clone(), "drained", "m0", "d-0");
    redis.until_entries(&prefix, 1).await;
    let m1 = member(client, "drained", "m1", "d-1");
    // Both members in the group's one hash.
    eventually_members(&redis, &prefix, 2).await;
    drained.signal("TERM");
    for waiter in [m0, m1] {
        let status = within(waiter).await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let mut drained = drained;
    assert_eq!(within(drained.child.wait()).await.unwrap().code(), Some(0));
    // The first member comes back before the group completes: its place,
    // and its position. The second is held, and the group completes
    // without it.
    let m0 = member(other.client().await, "drained", "m0", "d-0");
    other.parked(1).await;
    completes(&other, "drained", (m0, 0), ("m1", "d-1", 1)).await;

    // Killed while its member waits: nobody listens for it, and its place
    // is held all the same.
    let mut killed = crate::common::Process::start(&args).await;
    killed.until_ready(200).await;
    let m0 = member(killed.client().await, "killed", "m0", "k-0");
    eventually_members(&redis, &prefix, 1).await;
    let m1 = member(other.client().await, "killed", "m1", "");
    other.parked(1).await;
    killed.child.kill().await.unwrap();
    assert!(within(m0).await.unwrap().is_err());
    completes(&other, "killed", (m1, 1), ("m0", "k-0", 0)).await;
    // Each keyed member's kept answer is all that is left.
    let left = redis.entries(&prefix).await;
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().all(|key| key.contains(":k:")), "{left:?}");
}

/// The last member ("m2"), through `server`, completes group `id` of "m0"
/// and "m1": it, the member `waiting` at its position and a keyed member's
/// retry (its payload, key and position) each get the group's answer.
async fn completes(
    server: &TestServer,
    id: &'static str,
    (waiting, at): (Waiting, usize),
    (payload, key, position): (&'static str, &'static str, usize),
) {
    let all: Vec<Bytes> = vec!["m0".into(), "m1".into(), "m2".into()];
    let last = within(member(server.client().await, id, "m2", ""));
    assert_eq!(grouped(&last.await.unwrap().unwrap()), (2, all.clone()));
    let waiting = within(waiting).await.unwrap().unwrap();
    assert_eq!(grouped(&waiting), (at, all.clone()));
    let retry = within(member(server.client().await, id, payload, key));
    assert_eq!(grouped(&retry.await.unwrap().unwrap()), (position, all));
}

/// Until the group forming under some id of `prefix` has `n` members.
async fn eventually_members(redis: &RedisServer, prefix: &str, n: usize) {
    let what = format!("a group of {n} members under {prefix}");
    crate::common::until(&what, || async {
        for key in redis.entries(prefix).await {
            // A place's key, not a kept answer's (`...}HASH:k:...`).
            if key
                .rsplit_once('}')
                .is_some_and(|(_, hash)| !hash.contains(':'))
            {
                let k: Option<usize> = redis.query(redis::cmd("HGET").arg(&key).arg("k")).await;
                if k == Some(n) {
                    return Some(());
                }
            }
        }
        None
    })
    .await
}

/// On Redis, tries of one wait are ordered by when each reached its
/// replica, not by when each reached Redis. A cut try's arrival that gets
/// to Redis only after its retry (through another replica) has parked is
/// refused, and the retry keeps the place; a later try takes the place
/// over, and the one before is told it was superseded; the partner pairs
/// with the latest, once.
#[tokio::test]
async fn on_redis_a_late_arrival_of_an_older_try_leaves_the_place_to_its_retry() {
    use rendezvous::pairing::{
        Attempt, AttemptKey, Engine, Id, Joining, Parties, RedisEngine, TryOrder, Withdrawing,
    };
    use std::{sync::Arc, time::SystemTime};

    let redis = RedisServer::start().await;
    let prefix = unique_prefix("attempts-order");
    let engine = || start_engine(engine_config(redis.url(), &prefix, usize::MAX));
    let (a, b) = (Arc::new(engine().await), Arc::new(engine().await));
    let start = SystemTime::now();
    // A try of the wait with key "k", through `engine`, that reached it
    // `at` after `start`.
    let tried = |engine: &Arc<RedisEngine>, at: u64| {
        let engine = engine.clone();
        let tried = start + Duration::from_millis(at);
        async move {
            let key = AttemptKey::in_namespace(None, "k").unwrap().unwrap();
            // Counted alike, as by a client that does not count: only
            // when each reached its replica orders them.
            let attempt = Attempt {
                key: &key,
                grace: Duration::from_secs(5),
                order: TryOrder { previous: 0, tried },
                withdrawing: &Withdrawing::default(),
            };
            let ask = Joining {
                id: Id::new("order").unwrap(),
                parties: Parties::TWO,
                offer: Bytes::from_static(b"from a").into(),
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            engine.gather_keyed(ask, deadline, attempt).await
        }
    };
    let retry = tokio::spawn(tried(&b, 2));
    crate::common::eventually(|| b.waiting() == 1, "the retry parked").await;
    let first = within(tried(&a, 1)).await;
    assert_eq!(first.unwrap_err(), PairError::Superseded);
    assert_eq!(
        (a.waiting(), b.waiting()),
        (0, 1),
        "the retry keeps its place"
    );

    let latest = tokio::spawn(tried(&a, 3));
    let retry = within(retry).await.unwrap();
    assert_eq!(retry.unwrap_err(), PairError::Superseded);
    assert_eq!((a.waiting(), b.waiting()), (1, 0));
    let partner = within(b.gather(
        Id::new("order").unwrap(),
        Parties::TWO,
        Bytes::from_static(b"from b").into(),
        tokio::time::Instant::now() + Duration::from_secs(60),
    ))
    .await
    .unwrap();
    assert_eq!(told(&partner), (Role::Second, &b"from a"[..]));
    let latest = within(latest).await.unwrap().unwrap();
    assert_eq!(told(&latest), (Role::First, &b"from b"[..]));
    // Only the kept answer is left, for the grace.
    redis.until_entries(&prefix, 1).await;
}

/// `rendezvous-bench cuts`, as `scripts/cuts.sh` runs it, against `servers`
/// (on `redis`, if they share one under `prefix`): 1,000 pairs whose
/// callers are cut at random points and retry with their attempt keys on
/// random servers over both protocols. Every pair ends with both callers
/// told the same pair, once, however often they were cut, and nothing is
/// left behind. A failure prints the run's seed, which repeats its cuts.
async fn cuts(servers: &[TestServer], redis: Option<(&RedisServer, &str)>) {
    let list = |addr: fn(&TestServer) -> std::net::SocketAddr| {
        servers
            .iter()
            .map(|s| addr(s).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rendezvous-bench"));
    command.args(["--json", "cuts", "--pairs", "1000"]);
    command.args([
        "--grpc",
        &list(|s| s.grpc_addr),
        "--http",
        &list(|s| s.http_addr),
    ]);
    if let Some((redis, prefix)) = redis {
        command.args(["--redis-url", &redis.url(), "--redis-key-prefix", prefix]);
        command.args(["--keys-expire-within", "5s"]);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the run finishes")
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    // The tool names each bad pair, with what its callers were told.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let named: Vec<&str> = stderr.lines().take(10).collect();
    let why = format!("{report}\n{}", named.join("\n"));
    let run = &report["run"];
    let count = |field: &str| {
        run[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {why}"))
    };
    let bad = [
        "one_sided",
        "double_decisions",
        "wrong",
        "forgotten",
        "unpaired",
        "failed",
    ];
    assert_eq!(
        (count("pairs_ok"), bad.map(count)),
        (1000, [0; 6]),
        "one bad pair or more: {why}"
    );
    assert!(count("cuts") > 0, "callers were cut: {why}");
    assert_eq!(report["parked_gauge_after"], 0.0, "{why}");
    if redis.is_some() {
        assert_eq!(report["redis_keys_left"], 0, "{why}");
    }
}

/// Random cuts on one process, and on two replicas sharing a Redis, where
/// a cut try's arrival can reach Redis after its retry's through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cuts_never_leave_a_pair_one_sided() {
    let grace = |mut config: rendezvous::Config| {
        // Short, so that the kept answers are gone soon after the run.
        config.attempt_grace = Duration::from_secs(2);
        config
    };
    let local = TestServer::with(grace(crate::common::test_config())).await;
    cuts(&[local], None).await;

    let redis = RedisServer::start().await;
    let prefix = unique_prefix("cuts");
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let replica = TestServer::with(grace(replica_config(&redis, &prefix))).await;
        replica.ready().await;
        replicas.push(replica);
    }
    cuts(&replicas, Some((&redis, &prefix))).await;
}
