//! Redis behind a password, an ACL user and TLS, as production runs it; and
//! the password never in a log line.

use crate::common;

use common::{
    Ca, Process, TestServer, assert_pair, raw_wait,
    redis::{RedisServer, free_port, replica_config, unique_prefix},
    within, write,
};
use rendezvous::Config;

const PASSWORD: &str = "s3cret-redis-password-1234";

/// Starts the binary with `args`, and waits until `/readyz` says `want`.
async fn replica(args: &[&str], want: u16) -> Process {
    let process = Process::start(args).await;
    process.until_ready(want).await;
    process
}

/// The log so far must not contain `secret`.
fn assert_never_logged(process: &mut Process, secret: &str) {
    for line in process.drain_log() {
        assert!(!line.to_string().contains(secret), "logged: {line}");
    }
}

#[tokio::test]
async fn a_password_protected_redis_pairs_and_the_password_is_never_logged() {
    let redis =
        RedisServer::start_with(&["--requirepass".into(), PASSWORD.into()], Some(PASSWORD)).await;
    let prefix = unique_prefix("auth");
    let dir = tempfile::tempdir().unwrap();

    // One replica with the password in its URL, one with it in a file.
    let url = format!(
        "--redis-url=redis://:{PASSWORD}@{}",
        redis.url().trim_start_matches("redis://")
    );
    let mut in_url = replica(&[&url, &format!("--redis-key-prefix={prefix}")], 200).await;
    let shown = in_url.listening["fields"]["redis"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!in_url.listening.to_string().contains(PASSWORD));
    assert_eq!(
        shown,
        format!(
            "redis://:***@{}",
            redis.url().trim_start_matches("redis://")
        )
    );
    let in_file = TestServer::with(Config {
        redis: rendezvous::config::RedisArgs {
            password_file: Some(write(dir.path(), "password", &format!("{PASSWORD}\n"))),
            ..replica_config(&redis, &prefix).redis
        },
        ..replica_config(&redis, &prefix)
    })
    .await;
    in_file.ready().await;

    assert_pair(
        &in_file,
        in_file.client().await,
        in_url.client().await,
        "with-a-password",
    )
    .await;
    assert_never_logged(&mut in_url, PASSWORD);

    // A wrong password: the replica starts, is not ready, refuses calls with
    // a message that names Redis, and logs neither password.
    let wrong = "not-the-password-5678";
    let url = format!(
        "--redis-url=redis://:{wrong}@{}",
        redis.url().trim_start_matches("redis://")
    );
    let mut refused = replica(&[&url], 503).await;
    let addr = refused.grpc.parse().unwrap();
    let answer = within(raw_wait(addr, "refused", b"", "30S")).await;
    assert_eq!(answer.grpc_status, "14", "{answer:?}");
    assert!(answer.grpc_message.contains("Redis"), "{answer:?}");
    assert!(!answer.grpc_message.contains(wrong), "{answer:?}");
    // The log says why, without the password.
    let waiting = refused.next("waiting for Redis").await;
    let reason = waiting["fields"]["reason"].as_str().unwrap();
    assert!(reason.contains("WRONGPASS"), "{reason}");
    assert!(!reason.contains(wrong), "{reason}");
    assert_never_logged(&mut refused, wrong);
}

/// The ACL that SECURITY.md documents is enough to run a replica.
#[tokio::test]
async fn the_documented_acl_is_enough() {
    let redis = RedisServer::start().await;
    let prefix = "rendezvous:";
    let _: String = redis
        .query(&crate::common::redis::documented_acl(PASSWORD))
        .await;

    let server = TestServer::with(Config {
        redis: rendezvous::config::RedisArgs {
            url: Some(format!(
                "redis://rendezvous:{PASSWORD}@{}",
                redis.url().trim_start_matches("redis://")
            )),
            key_prefix: prefix.into(),
            ..replica_config(&redis, prefix).redis
        },
        ..replica_config(&redis, prefix)
    })
    .await;
    server.ready().await;
    assert_pair(&server, server.client().await, server.client().await, "acl").await;
    let timed_out = within(raw_wait(server.grpc_addr, "acl-alone", b"", "200m")).await;
    assert_eq!(timed_out.grpc_status, "4", "{timed_out:?}");
    // A group of three, whose script uses commands a pair's does not.
    let client = server.client().await;
    let member = |payload: &'static str| {
        let client = client.clone();
        tokio::spawn(async move { client.gather("acl-group", 3, payload.into(), None).await })
    };
    let (a, b) = (member("a"), member("b"));
    server.parked(2).await;
    let c = within(member("c")).await.unwrap().unwrap();
    assert_eq!(c.position, 2);
    for member in [a, b] {
        let meeting = within(member).await.unwrap().unwrap();
        assert_eq!(meeting.payloads(&Default::default()).len(), 3);
    }
    common::eventually(|| server.waiting() == 0, "no member waiting").await;
    redis.until_keys(prefix, 0).await;
    // A pair of keyed callers: their keys are bound to the id (a `SET` of
    // its own, outside the script), and the answers kept in the script.
    let keyed = |payload: &'static str, key: &'static str| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .wait_with_key("acl-keyed", payload.into(), None, key)
                .await
        })
    };
    let first = keyed("a", "acl-a");
    server.parked(1).await;
    let second = within(keyed("b", "acl-b")).await.unwrap().unwrap();
    assert_eq!(second.peer().payload, "a");
    assert_eq!(within(first).await.unwrap().unwrap().peer().payload, "b");
    assert_eq!(redis.bindings(prefix).await, 2);
}

/// `rediss://`: TLS to Redis, trusting a CA given in `SSL_CERT_FILE`.
#[tokio::test]
async fn rediss_pairs_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let tls_port = free_port();
    let redis = RedisServer::start_with(
        &[
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            write(dir.path(), "redis.pem", &leaf.cert)
                .display()
                .to_string(),
            "--tls-key-file".into(),
            write(dir.path(), "redis.key", &leaf.key)
                .display()
                .to_string(),
            "--tls-ca-cert-file".into(),
            write(dir.path(), "ca.pem", &ca.pem).display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
        None,
    )
    .await;
    let prefix = unique_prefix("tls");
    let url = format!("--redis-url=rediss://localhost:{tls_port}");
    let prefix_flag = format!("--redis-key-prefix={prefix}");
    let ca_file = dir.path().join("ca.pem");
    let a = replica_with_env(
        &[&url, &prefix_flag],
        ("SSL_CERT_FILE", ca_file.to_str().unwrap()),
    )
    .await;
    let b = replica_with_env(
        &[&url, &prefix_flag],
        ("SSL_CERT_FILE", ca_file.to_str().unwrap()),
    )
    .await;
    let (a_addr, b_addr) = (a.grpc.parse().unwrap(), b.grpc.parse().unwrap());
    let first = tokio::spawn(async move { raw_wait(a_addr, "over-tls", b"one", "30S").await });
    // The first is parked once its key is in Redis.
    redis.until_keys(&prefix, 1).await;
    let second = within(raw_wait(b_addr, "over-tls", b"two", "30S")).await;
    assert_eq!(second.message.unwrap().peer_payload, "one");
    assert_eq!(
        within(first).await.unwrap().message.unwrap().peer_payload,
        "two"
    );
}

async fn replica_with_env(args: &[&str], env: (&str, &str)) -> Process {
    let process = Process::start_with_env(args, &[env]).await;
    process.until_ready(200).await;
    process
}
