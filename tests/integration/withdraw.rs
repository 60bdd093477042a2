//! Withdrawing a keyed wait: a caller that gives up (Ctrl-C, a cancelled
//! CI job, a client that stops waiting) says so, and nobody is paired with
//! it afterwards, on both engines, through any replica, over both
//! protocols. A connection that only breaks keeps the place for the grace,
//! as `attempts.rs` tests.

use std::{
    process::{Output, Stdio},
    time::Duration,
};

use rendezvous::{
    client::Client,
    pairing::{Role, Withdrawal},
};
use tokio::process::Command;
use tonic::Code;

use crate::common::{
    JsonBody, Process, TestServer, http_client,
    redis::{RedisServer, replica_config, unique_prefix},
    within,
};

/// What a try with a withdrawn wait's key is told.
const WITHDRAWN: &str =
    "this wait was withdrawn with its attempt key; a new wait needs a new attempt key";

/// How long, in milliseconds, a partner waits to show that nobody is there:
/// it times out whatever the machine's speed, and pairs at once if somebody
/// is. Sent as `grpc-timeout` or `?wait=`, the server enforces it, so the
/// answer is its own however late a busy machine makes it.
const ALONE_MS: u64 = 300;

/// [`ALONE_MS`] as a `grpc-timeout` value.
fn alone() -> String {
    format!("{ALONE_MS}m")
}

/// The binary as a shell runs it, with none of the client's variables
/// inherited from the tests' environment.
fn rendezvous(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rendezvous"));
    command.args(args).kill_on_drop(true);
    for name in [
        "RENDEZVOUS_SERVER",
        "RENDEZVOUS_TIMEOUT",
        "RENDEZVOUS_ATTEMPT_KEY",
        "RENDEZVOUS_TOKEN_FILE",
        "TRACEPARENT",
    ] {
        command.env_remove(name);
    }
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The commands, as a user runs them: a `wait` with an attempt
/// key (`--retry`'s own, or `--attempt-key`) stopped by SIGINT or SIGTERM
/// withdraws before it exits 130 or 143; the next caller with the id is
/// not paired with it, but waits alone and times out. On both engines.
#[tokio::test]
async fn a_wait_stopped_by_a_signal_withdraws_and_is_never_paired() {
    let redis = RedisServer::start().await;
    let (url, prefix) = (redis.url(), unique_prefix("withdraw-cli"));
    let engines = [
        vec![],
        vec!["--redis-url", &url, "--redis-key-prefix", &prefix],
    ];
    for engine in engines {
        let mut server = Process::start(&engine).await;
        let grpc = server.grpc.clone();
        for (signal, exit, name, how) in [
            ("INT", 130, "SIGINT", &["--retry"][..]),
            ("TERM", 143, "SIGTERM", &["--retry"]),
            ("INT", 130, "SIGINT", &["--attempt-key", "ci-job-7"]),
        ] {
            let id = format!("ghost-{signal}-{}", how.len());
            let mut args = vec![
                "wait",
                &id,
                "--server",
                &grpc,
                "--timeout",
                "30s",
                "--payload",
                "from-ghost",
            ];
            args.extend(how);
            let ghost = rendezvous(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Its own arrival, not the last partner's.
            while server.next("arrived").await["fields"]["id"] != id.as_str() {}
            let pid = ghost.id().unwrap().to_string();
            let killed = std::process::Command::new("kill")
                .args(["-s", signal, &pid])
                .status()
                .unwrap();
            assert!(killed.success());
            let ghost = within(ghost.wait_with_output()).await.unwrap();
            assert_eq!(ghost.status.code(), Some(exit), "{}", stderr(&ghost));
            assert!(ghost.stdout.is_empty());
            // The server logs the arrival a moment before it holds the
            // wait; a busy machine can let the withdrawal in between, and
            // then it finds nothing, and the wait is refused as it comes.
            // Either way nobody is paired with it (the partner, below).
            let said = stderr(&ghost);
            let found = said
                .strip_prefix(&format!("rendezvous: CANCELLED: {name}: "))
                .unwrap_or_else(|| panic!("{how:?}: {said}"));
            assert!(
                [
                    "withdrew the wait: nobody will be paired with it\n",
                    "the server knew no wait with this attempt key; a try with it within the \
                     server's --attempt-grace is refused\n",
                ]
                .contains(&found),
                "{how:?}: {said}"
            );
            let partner = within(
                rendezvous(&[
                    "wait",
                    &id,
                    "--server",
                    &grpc,
                    "--payload",
                    "partner",
                    "--timeout",
                    "300ms",
                ])
                .output(),
            )
            .await
            .unwrap();
            assert_eq!(partner.status.code(), Some(3), "{}", stderr(&partner));
            assert!(
                partner.stdout.is_empty(),
                "paired with a caller that gave up"
            );
        }
    }
}

/// A withdrawal after the decision is too late, and says what was decided:
/// the pair (the partner was told `OK`), or the timeout. On both engines,
/// through the replica that holds the answer. (How `wait` words each
/// finding is unit-tested in `src/cli.rs`.)
#[tokio::test]
async fn a_withdrawal_after_the_decision_is_told_it() {
    for (holder, other, _redis) in pairs_of_servers().await {
        // The answer is decided while nobody hears it: the first try is cut.
        holder.cut_while_parked("late", 2, "a", "late-key").await;
        let partner = holder.client().await;
        let paired = within(partner.wait("late", "b".into(), None))
            .await
            .unwrap();
        assert_eq!(paired.role(), Role::Second);
        let found = within(holder.client().await.withdraw("late", "late-key", None))
            .await
            .unwrap();
        let Withdrawal::Met(meeting) = found else {
            panic!("{found:?}");
        };
        assert_eq!(
            (
                meeting.role(),
                meeting.parties(),
                &meeting.peer().payload[..]
            ),
            (Role::First, 2, &b"b"[..])
        );
        // Through a replica that never saw the wait, the same; and a late
        // withdrawal leaves the answer to a retry there, not a refusal.
        if let Some(other) = &other {
            let client = other.client().await;
            let found = within(client.withdraw("late", "late-key", None)).await;
            assert!(matches!(found, Ok(Withdrawal::Met(_))), "{found:?}");
            let retry = within(client.wait_with_key("late", "a".into(), None, "late-key")).await;
            let retry = retry.unwrap();
            assert_eq!(
                (retry.role(), &retry.peer().payload[..]),
                (Role::First, &b"b"[..])
            );
        }
        // A wait that timed out: nothing to withdraw, and nothing lost.
        let client = holder.client().await;
        // The server's own deadline, as in `assert_alone`.
        let lone = rendezvous::proto::WaitForSecondPartyRequest {
            id: "lone".into(),
            payload: "a".into(),
            attempt_key: "lone-key".into(),
            ..Default::default()
        };
        let timeout = alone();
        let timeout = [("grpc-timeout", timeout.as_str())];
        let alone = within(crate::common::raw_grpc_call(
            holder.grpc_addr,
            &timeout,
            lone,
        ))
        .await;
        crate::common::assert_timed_out(&alone);
        let found = within(client.withdraw("lone", "lone-key", None)).await;
        assert_eq!(found.unwrap(), Withdrawal::TimedOut);
    }
}

/// The engines every scenario here runs on, as a pair of servers: the one
/// that holds a wait, and the one a withdrawal goes through. One process
/// is both; on Redis they are two replicas.
async fn pairs_of_servers() -> Vec<(TestServer, Option<TestServer>, Option<RedisServer>)> {
    let local = TestServer::start().await;
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("withdraw");
    let a = TestServer::with(replica_config(&redis, &prefix)).await;
    a.ready().await;
    let b = TestServer::with(replica_config(&redis, &prefix)).await;
    b.ready().await;
    vec![(local, None, None), (a, Some(b), Some(redis))]
}

/// A gRPC wait whose stream broke keeps its place (the grace); withdrawn
/// through the other replica (or the same process), it is gone at once:
/// the partner waits alone and times out, and a try with the key, through
/// either, is refused `CANCELLED`. A second withdrawal finds the first.
#[tokio::test]
async fn a_held_grpc_wait_is_withdrawn_through_any_replica() {
    for (holder, other, _redis) in pairs_of_servers().await {
        let through = other.as_ref().unwrap_or(&holder);
        holder
            .cut_while_parked("ghost", 2, "from-ghost", "ghost-key")
            .await;
        let withdrawer = through.client().await;
        let found = within(withdrawer.withdraw("ghost", "ghost-key", None)).await;
        assert_eq!(found.unwrap(), Withdrawal::Withdrawn);
        assert_alone(through, "ghost").await;
        for server in [&holder, through] {
            let retry = server.client().await;
            let refused =
                within(retry.wait_with_key("ghost", "from-ghost".into(), None, "ghost-key"))
                    .await
                    .unwrap_err();
            assert_eq!(
                (refused.code(), refused.message()),
                (Code::Cancelled, WITHDRAWN)
            );
        }
        let again = within(withdrawer.withdraw("ghost", "ghost-key", None)).await;
        assert_eq!(again.unwrap(), Withdrawal::Withdrawn);
        assert_eq!(holder.waiting(), 0);
        assert_eq!(through.waiting(), 0);
    }
}

/// The partner of a withdrawn wait, on `client`: it waits alone, and times
/// out.
async fn assert_alone(server: &TestServer, id: &str) {
    // The server's own deadline: a client enforcing its own can give up on
    // an answer that a busy machine delays.
    let partner = within(crate::common::raw_wait(
        server.grpc_addr,
        id,
        b"partner",
        &alone(),
    ))
    .await;
    crate::common::assert_timed_out(&partner);
}

/// Over HTTP: `DELETE` on the wait's route with its `?attempt_key=`, through
/// any replica, answers `200 Withdrawn` (JSON: `WITHDRAWAL_WITHDRAWN`); the
/// partner's `POST` waits alone and is answered `408 Timeout`; a retry of
/// the wait is `410` with the reason.
#[tokio::test]
async fn a_held_http_wait_is_withdrawn_with_delete() {
    for (holder, other, _redis) in pairs_of_servers().await {
        let through = other.as_ref().unwrap_or(&holder);
        let http = http_client();
        let route = "/wait-for-second-party/web-ghost?attempt_key=web-key";
        let cut = tokio::spawn(http.post(holder.url(route)).body("from-ghost").send());
        holder.parked(1).await;
        cut.abort();
        let _ = cut.await;
        let response = within(http.delete(through.url(route)).send())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        assert_eq!(response.text().await.unwrap(), "Withdrawn");
        let partner = within(
            http.post(through.url("/wait-for-second-party/web-ghost?wait=300ms"))
                .body("partner")
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(partner.status(), 408);
        assert_eq!(partner.text().await.unwrap(), "Timeout");
        let retry = within(http.post(holder.url(route)).body("from-ghost").send())
            .await
            .unwrap();
        assert_eq!(retry.status(), 410);
        assert_eq!(retry.text().await.unwrap(), WITHDRAWN);
        // In JSON, as grpcurl prints the gRPC answer.
        let again = within(
            http.delete(through.url(route))
                .header("accept", "application/json")
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(again.status(), 200);
        assert_eq!(
            again.json_body().await,
            serde_json::json!({"withdrawal": "WITHDRAWAL_WITHDRAWN"})
        );
        assert_eq!(holder.waiting(), 0);
    }
}

/// A withdrawal with a key nobody sent finds nothing (`Unknown`), and a
/// try with that key that comes after it, as one still on its way would,
/// is refused rather than parked. Keys are scoped to their namespace: a
/// withdrawal of a key the server holds, but for another id, is refused.
#[tokio::test]
async fn a_withdrawal_that_comes_first_refuses_the_try_behind_it() {
    for (holder, other, _redis) in pairs_of_servers().await {
        let through = other.as_ref().unwrap_or(&holder);
        let found = within(through.client().await.withdraw("early", "early-key", None)).await;
        assert_eq!(found.unwrap(), Withdrawal::Unknown);
        for server in [&holder, through] {
            let late = within(server.client().await.wait_with_key(
                "early",
                "x".into(),
                None,
                "early-key",
            ))
            .await
            .unwrap_err();
            assert_eq!((late.code(), late.message()), (Code::Cancelled, WITHDRAWN));
        }
        assert_eq!(holder.waiting(), 0);
    }
    let server = TestServer::start().await;
    let client = server.client().await;
    let held =
        tokio::spawn(async move { client.wait_with_key("mine", "a".into(), None, "k").await });
    server.parked(1).await;
    let other_id = within(server.client().await.withdraw("theirs", "k", None))
        .await
        .unwrap_err();
    assert_eq!(other_id.code(), Code::FailedPrecondition);
    assert_eq!(server.waiting(), 1, "the wait is untouched");
    held.abort();
}

/// A withdrawal that races the decision gets the decision, or withdraws
/// the wait before it: whichever it is, every side hears the same. Never
/// one-sided (a partner told `OK` while the withdrawal says withdrawn),
/// never doubled.
#[tokio::test]
async fn a_withdrawal_racing_the_decision_gets_it_or_wins() {
    for (holder, other, _redis) in pairs_of_servers().await {
        let through = other.as_ref().unwrap_or(&holder);
        let (mut met, mut withdrawn) = (0, 0);
        for round in 0..12 {
            let (id, key) = (format!("race-{round}"), format!("race-key-{round}"));
            let client = holder.client().await;
            let (waiter_id, waiter_key) = (id.clone(), key.clone());
            let waiter = tokio::spawn(async move {
                client
                    .wait_with_key(&waiter_id, "w".into(), None, &waiter_key)
                    .await
            });
            holder.parked(1).await;
            let withdrawer = through.client().await;
            // Each goes first in turn, the other after a gap that grows
            // from nothing, so that they meet at every point of the
            // decision: the invariants below hold whichever wins.
            let gap = Duration::from_micros(200 * (round / 2));
            let after = |first: bool| async move {
                if !first {
                    tokio::time::sleep(gap).await;
                }
            };
            let partner_first = round % 2 == 0;
            let (partner, found) = tokio::join!(
                async {
                    after(partner_first).await;
                    // The server's own deadline: a client enforcing its own
                    // can give up on an answer a busy machine delays.
                    crate::common::raw_wait(through.grpc_addr, &id, b"p", &alone()).await
                },
                async {
                    after(!partner_first).await;
                    withdrawer.withdraw(&id, &key, None).await
                },
            );
            let waiter = within(waiter).await.unwrap();
            match found.unwrap() {
                Withdrawal::Met(meeting) => {
                    met += 1;
                    assert_eq!(
                        (meeting.role(), &meeting.peer().payload[..]),
                        (Role::First, &b"p"[..])
                    );
                    assert_eq!(partner.grpc_status, "0", "{partner:?}");
                    let partner = partner.message.unwrap();
                    assert_eq!(
                        (partner.role(), &partner.peer_payload[..]),
                        (rendezvous::proto::Role::Second, &b"w"[..])
                    );
                    let waiter = waiter.unwrap();
                    assert_eq!(
                        (waiter.role(), &waiter.peer().payload[..]),
                        (Role::First, &b"p"[..])
                    );
                }
                Withdrawal::Withdrawn => {
                    withdrawn += 1;
                    // Not paired with the withdrawn wait: timed out.
                    crate::common::assert_timed_out(&partner);
                    let waiter = waiter.expect_err("a withdrawn wait was answered OK");
                    assert_eq!(
                        (waiter.code(), waiter.message()),
                        (Code::Cancelled, WITHDRAWN)
                    );
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(met + withdrawn, 12);
        assert_eq!(holder.waiting(), 0);
        assert_eq!(through.waiting(), 0);
    }
}

/// Keys are scoped to their namespace: another tenant's withdrawal with
/// the same id and key finds nothing (`Unknown`), and the wait it named is
/// untouched: its own partner pairs with it.
#[tokio::test]
async fn nobody_withdraws_another_namespaces_wait() {
    use rendezvous::client::ClientOptions;
    let dir = tempfile::tempdir().unwrap();
    let tokens = crate::common::write(
        dir.path(),
        "tokens",
        "team-a-token-0123456789 team-a\nteam-b-token-0123456789 team-b\n",
    );
    let server = TestServer::with(rendezvous::Config {
        auth_token_file: Some(tokens),
        ..crate::common::test_config()
    })
    .await;
    let client_of = |token: &'static str| {
        let server = &server;
        async move {
            let options = ClientOptions::new(&format!("http://{}", server.grpc_addr))
                .unwrap()
                .token(token)
                .unwrap();
            Client::from_channel(server.channel().await, &options)
        }
    };
    let a = client_of("team-a-token-0123456789").await;
    let held = tokio::spawn({
        let a = a.clone();
        async move {
            a.wait_with_key("shared", "a".into(), None, "shared-key")
                .await
        }
    });
    server.parked(1).await;
    let b = client_of("team-b-token-0123456789").await;
    let found = within(b.withdraw("shared", "shared-key", None)).await;
    assert_eq!(found.unwrap(), Withdrawal::Unknown);
    assert_eq!(server.waiting(), 1);
    let partner = within(a.wait("shared", "partner".into(), None))
        .await
        .unwrap();
    assert_eq!(
        (partner.role(), &partner.peer().payload[..]),
        (Role::Second, &b"a"[..])
    );
    let held = within(held).await.unwrap().unwrap();
    assert_eq!(
        (held.role(), &held.peer().payload[..]),
        (Role::First, &b"partner"[..])
    );
}

/// A group member withdrawn is out of its group, as one that left is: the
/// two members after it do not complete a group of three with it, and
/// time out. On both engines, through any replica.
#[tokio::test]
async fn a_withdrawn_member_is_not_counted_in_its_group() {
    for (holder, other, _redis) in pairs_of_servers().await {
        let through = other.as_ref().unwrap_or(&holder);
        holder
            .cut_while_parked("crew", 3, "ghost", "crew-key")
            .await;
        let found = within(through.client().await.withdraw("crew", "crew-key", None)).await;
        assert_eq!(found.unwrap(), Withdrawal::Withdrawn);
        // Over HTTP, with the server's own deadline (`?wait=`): a client
        // enforcing its own can give up on an answer a busy machine delays.
        let http = crate::common::http_client();
        let member = |payload: &'static str| {
            http.post(through.url(&format!(
                "/wait-for-parties/crew?parties=3&wait={ALONE_MS}ms"
            )))
            .body(payload)
            .send()
        };
        let (b, c) = tokio::join!(member("b"), member("c"));
        for member in [b, c] {
            let member = member.unwrap();
            assert_eq!(member.status(), 408, "a group counted a withdrawn member");
            assert_eq!(member.text().await.unwrap(), "Timeout");
        }
        assert_eq!(holder.waiting(), 0);
        assert_eq!(through.waiting(), 0);
    }
}
