//! Groups of more than two (`WaitForParties`, `POST /wait-for-parties/{id}`)
//! over both protocols, on one server with the local engine and on three
//! replicas that meet in Redis, whose members each reach a replica of their
//! own.

use crate::common;

use base64::Engine as _;
use common::{JsonBody, TestServer, redis::RedisServer, scrape, test_config, value, within};
use rendezvous::{
    Config,
    proto::{
        WaitForPartiesRequest, WaitForPartiesResponse, WaitForSecondPartyRequest,
        sync_client::SyncClient,
    },
};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

/// Where a test's members meet: one local server, or replicas on a Redis.
struct Deployment {
    servers: Vec<TestServer>,
    /// Kept for as long as the replicas use it.
    _redis: Option<RedisServer>,
}

impl Deployment {
    async fn local(tweak: impl Fn(&mut Config)) -> Self {
        let mut config = test_config();
        tweak(&mut config);
        Self {
            servers: vec![TestServer::with(config).await],
            _redis: None,
        }
    }

    async fn replicas(n: usize, tweak: impl Fn(&mut Config)) -> Self {
        let redis = RedisServer::start().await;
        let prefix = common::redis::unique_prefix("groups");
        let mut servers = Vec::new();
        for _ in 0..n {
            let mut config = common::redis::replica_config(&redis, &prefix);
            tweak(&mut config);
            let server = TestServer::with(config).await;
            server.ready().await;
            servers.push(server);
        }
        Self {
            servers,
            _redis: Some(redis),
        }
    }

    /// The server the `n`th member reaches: round and round the replicas.
    fn server(&self, n: usize) -> &TestServer {
        &self.servers[n % self.servers.len()]
    }

    /// Waits until `n` members are parked, over every server.
    async fn parked(&self, n: usize) {
        common::eventually(
            || self.servers.iter().map(TestServer::waiting).sum::<usize>() == n,
            &format!("{n} parked members"),
        )
        .await;
    }
}

type GrpcAnswer = Result<WaitForPartiesResponse, Status>;

fn grpc_member(
    server: &TestServer,
    id: &str,
    parties: u32,
    payload: &str,
) -> JoinHandle<GrpcAnswer> {
    let endpoint = format!("http://{}", server.grpc_addr);
    let request = WaitForPartiesRequest {
        id: id.into(),
        payload: payload.to_owned().into(),
        parties,
        ..Default::default()
    };
    tokio::spawn(async move {
        let mut client = SyncClient::connect(endpoint).await.unwrap();
        client
            .wait_for_parties(request)
            .await
            .map(tonic::Response::into_inner)
    })
}

fn http_member(
    server: &TestServer,
    id: &str,
    parties: u32,
    payload: &str,
    json: bool,
) -> JoinHandle<reqwest::Response> {
    let mut request = common::http_client()
        .post(server.url(&format!("/wait-for-parties/{id}?parties={parties}")))
        .body(payload.to_owned());
    if json {
        request = request.header("accept", "application/json");
    }
    tokio::spawn(async move { request.send().await.unwrap() })
}

async fn grpc_answer(member: JoinHandle<GrpcAnswer>) -> GrpcAnswer {
    within(member).await.unwrap()
}

async fn http_answer(member: JoinHandle<reqwest::Response>) -> reqwest::Response {
    within(member).await.unwrap()
}

fn payloads_of(answer: &WaitForPartiesResponse) -> Vec<&str> {
    answer
        .payloads
        .iter()
        .map(|p| std::str::from_utf8(p).unwrap())
        .collect()
}

/// Five members, alternating gRPC and HTTP (text and JSON), one after
/// another: each learns its own position and everyone's payload in arrival
/// order, in its own protocol's shape.
async fn a_group_of_five_mixing_grpc_and_http(deployment: Deployment) {
    let d = &deployment;
    let grpc0 = grpc_member(d.server(0), "five", 5, "g0");
    d.parked(1).await;
    let text1 = http_member(d.server(1), "five", 5, "h1", false);
    d.parked(2).await;
    let grpc2 = grpc_member(d.server(2), "five", 5, "g2");
    d.parked(3).await;
    let json3 = http_member(d.server(3), "five", 5, "h3", true);
    d.parked(4).await;
    let last = grpc_answer(grpc_member(d.server(4), "five", 5, "g4"))
        .await
        .unwrap();
    let everyone = ["g0", "h1", "g2", "h3", "g4"];
    assert_eq!((last.position, payloads_of(&last)), (4, everyone.to_vec()));
    for (position, member) in [(0, grpc0), (2, grpc2)] {
        let answer = grpc_answer(member).await.unwrap();
        assert_eq!(
            (answer.position, payloads_of(&answer)),
            (position, everyone.to_vec())
        );
        assert!(answer.waited.is_some());
    }
    let text = http_answer(text1).await;
    assert_eq!(text.status(), 200);
    assert_eq!(text.text().await.unwrap(), "Synced");
    let json = http_answer(json3).await;
    assert_eq!(json.status(), 200);
    let body = json.json_body().await;
    let base64 = base64::engine::general_purpose::STANDARD;
    let encoded: Vec<String> = everyone.iter().map(|p| base64.encode(p)).collect();
    assert_eq!(body["position"], 3);
    assert_eq!(body["payloads"], serde_json::json!(encoded));
    assert!(body["waited"].as_str().unwrap().ends_with('s'), "{body}");
    d.parked(0).await;
}

#[tokio::test]
async fn a_group_of_five_mixing_grpc_and_http_on_one_server() {
    a_group_of_five_mixing_grpc_and_http(Deployment::local(|_| {}).await).await;
}

#[tokio::test]
async fn a_group_of_five_mixing_grpc_and_http_across_three_replicas() {
    a_group_of_five_mixing_grpc_and_http(Deployment::replicas(3, |_| {}).await).await;
}

/// Three members on three replicas complete together.
#[tokio::test]
async fn a_group_of_three_on_three_replicas_completes_together() {
    let d = Deployment::replicas(3, |_| {}).await;
    let a = grpc_member(d.server(0), "three", 3, "a");
    d.parked(1).await;
    let b = http_member(d.server(1), "three", 3, "b", true);
    d.parked(2).await;
    let c = grpc_answer(grpc_member(d.server(2), "three", 3, "c"))
        .await
        .unwrap();
    assert_eq!((c.position, payloads_of(&c)), (2, vec!["a", "b", "c"]));
    let a = grpc_answer(a).await.unwrap();
    assert_eq!((a.position, payloads_of(&a)), (0, vec!["a", "b", "c"]));
    let b = http_answer(b).await.json_body().await;
    assert_eq!(b["position"], 1);
    d.parked(0).await;
}

/// A gRPC member goes away (its call is dropped: RST_STREAM) just as the
/// last member arrives over HTTP. Either the group completed first and
/// counts it, or the last member waits in its place and a replacement
/// completes the group without it: the remaining member agrees either way.
async fn a_member_cancelling_while_the_last_arrives(deployment: Deployment) {
    let d = &deployment;
    let leaving = grpc_member(d.server(0), "race", 3, "leaving");
    d.parked(1).await;
    let staying = grpc_member(d.server(1), "race", 3, "staying");
    d.parked(2).await;
    let last = http_member(d.server(2), "race", 3, "last", true);
    leaving.abort();
    let _ = leaving.await;
    // The client is gone; the server learns it from a RST_STREAM. Settled
    // means: the last member was answered (the group counted the one that
    // left, which it did if it was decided first), or the server counted
    // the departure and the last member waits in its place.
    let gone = [("protocol", "grpc")];
    let what = "the last member answered, or the departure counted";
    let completed = common::until(what, || async {
        if last.is_finished() {
            return Some(true);
        }
        let cancelled = value(
            &scrape(d.server(0)).await,
            "rendezvous_cancellations_total",
            &gone,
        );
        let waiting: usize = d.servers.iter().map(TestServer::waiting).sum();
        (cancelled == 1.0 && waiting == 2).then_some(false)
    })
    .await;
    let (everyone, last_position) = match completed {
        true => (vec!["leaving", "staying", "last"], 2),
        false => {
            let replacement = grpc_answer(grpc_member(d.server(0), "race", 3, "replacement"))
                .await
                .unwrap();
            assert_eq!(replacement.position, 2);
            (vec!["staying", "last", "replacement"], 1)
        }
    };
    let body = http_answer(last).await.json_body().await;
    assert_eq!(body["position"], last_position, "{body}");
    assert_eq!(body["payloads"].as_array().unwrap().len(), 3, "{body}");
    let staying = grpc_answer(staying).await.unwrap();
    assert_eq!(payloads_of(&staying), everyone);
    d.parked(0).await;
}

#[tokio::test]
async fn a_member_cancelling_while_the_last_arrives_on_one_server() {
    a_member_cancelling_while_the_last_arrives(Deployment::local(|_| {}).await).await;
}

#[tokio::test]
async fn a_member_cancelling_while_the_last_arrives_across_replicas() {
    a_member_cancelling_while_the_last_arrives(Deployment::replicas(3, |_| {}).await).await;
}

/// A caller asking for another size than the group forming under its id
/// is refused in each protocol's terms, with both sizes; the group then
/// completes undisturbed.
async fn mismatched_parties_are_refused(deployment: Deployment) {
    let d = &deployment;
    let a = grpc_member(d.server(0), "sizes", 3, "a");
    d.parked(1).await;
    let status = grpc_answer(grpc_member(d.server(1), "sizes", 4, "x"))
        .await
        .unwrap_err();
    let message = "a group of 3 is forming under this id, and this call asks for 4; every \
                   member must ask for the same number of parties (WaitForSecondParty asks for 2)";
    assert_eq!(
        (status.code(), status.message()),
        (Code::FailedPrecondition, message)
    );
    let pair = d
        .server(2)
        .grpc()
        .await
        .wait_for_second_party(WaitForSecondPartyRequest {
            id: "sizes".into(),
            payload: Default::default(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(pair.code(), Code::FailedPrecondition);
    assert!(pair.message().contains("asks for 2"), "{}", pair.message());
    let text = http_answer(http_member(d.server(0), "sizes", 4, "x", false)).await;
    assert_eq!(text.status(), 409);
    assert_eq!(text.text().await.unwrap(), message);
    let json = http_answer(http_member(d.server(1), "sizes", 2, "x", true)).await;
    assert_eq!(json.status(), 409);
    assert_eq!(json.json_body().await["code"], "FAILED_PRECONDITION");

    let b = http_member(d.server(1), "sizes", 3, "b", false);
    d.parked(2).await;
    let c = grpc_answer(grpc_member(d.server(2), "sizes", 3, "c"))
        .await
        .unwrap();
    assert_eq!(payloads_of(&c), vec!["a", "b", "c"]);
    assert_eq!(grpc_answer(a).await.unwrap().position, 0);
    assert_eq!(http_answer(b).await.text().await.unwrap(), "Synced");
}

#[tokio::test]
async fn mismatched_parties_are_refused_on_one_server() {
    mismatched_parties_are_refused(Deployment::local(|_| {}).await).await;
}

#[tokio::test]
async fn mismatched_parties_are_refused_across_replicas() {
    mismatched_parties_are_refused(Deployment::replicas(3, |_| {}).await).await;
}

fn small_limits(config: &mut Config) {
    config.max_parties = 4;
    config.max_group_bytes = 8;
    config.max_waiters = 2;
}

/// `--max-parties`, `--max-group-bytes` and `--max-waiters`, each refused
/// in each protocol's terms with a message that names the flag.
async fn the_limits(deployment: Deployment) {
    let d = &deployment;
    let status = grpc_answer(grpc_member(d.server(0), "big", 5, ""))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "parties is 5; the limit is 4 (--max-parties)"
        )
    );
    let text = http_answer(http_member(d.server(0), "big", 5, "", false)).await;
    assert_eq!(text.status(), 400);
    assert_eq!(
        text.text().await.unwrap(),
        "parties is 5; the limit is 4 (--max-parties)"
    );

    let a = grpc_member(d.server(0), "bytes", 3, "123456");
    d.parked(1).await;
    let status = grpc_answer(grpc_member(d.server(1), "bytes", 3, "789"))
        .await
        .unwrap_err();
    let message = "the group forming under this id holds 6 bytes of payloads, and 3 more would \
                   take it over the limit of 8 bytes (--max-group-bytes); send a smaller payload";
    assert_eq!(
        (status.code(), status.message()),
        (Code::ResourceExhausted, message)
    );
    let json = http_answer(http_member(d.server(1), "bytes", 3, "789", true)).await;
    assert_eq!(json.status(), 413);
    let body = json.json_body().await;
    assert_eq!(
        (body["code"].as_str(), body["message"].as_str()),
        (Some("RESOURCE_EXHAUSTED"), Some(message))
    );

    // Parked members count against --max-waiters: with `a` and one more
    // waiting, a caller that would wait is turned away...
    let b = http_member(d.server(0), "bytes", 3, "78", false);
    d.parked(2).await;
    let status = grpc_answer(grpc_member(d.server(0), "other", 3, ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("--max-waiters"), "{status:?}");
    let full = http_answer(http_member(d.server(0), "other", 3, "", false)).await;
    assert_eq!(full.status(), 503);
    // ...but the caller that completes a group never waits.
    let c = grpc_answer(grpc_member(d.server(0), "bytes", 3, ""))
        .await
        .unwrap();
    assert_eq!(payloads_of(&c), vec!["123456", "78", ""]);
    assert!(grpc_answer(a).await.is_ok());
    assert_eq!(http_answer(b).await.status(), 200);
}

#[tokio::test]
async fn the_limits_on_one_server() {
    the_limits(Deployment::local(small_limits).await).await;
}

#[tokio::test]
async fn the_limits_on_a_replica() {
    the_limits(Deployment::replicas(1, small_limits).await).await;
}

/// A member whose wait runs out is told so in its protocol's terms, and is
/// not counted: the group forms on without it.
#[tokio::test]
async fn a_member_whose_wait_runs_out_is_not_counted() {
    let d = Deployment::local(|_| {}).await;
    let timed_out = common::http_client()
        .post(
            d.server(0)
                .url("/wait-for-parties/late?parties=3&wait=100ms"),
        )
        .body("gone")
        .send()
        .await
        .unwrap();
    assert_eq!(timed_out.status(), 408);
    assert_eq!(timed_out.text().await.unwrap(), "Timeout");
    let a = grpc_member(d.server(0), "late", 3, "a");
    d.parked(1).await;
    let b = grpc_member(d.server(0), "late", 3, "b");
    d.parked(2).await;
    let c = grpc_answer(grpc_member(d.server(0), "late", 3, "c"))
        .await
        .unwrap();
    assert_eq!(payloads_of(&c), vec!["a", "b", "c"]);
    assert!(grpc_answer(a).await.is_ok() && grpc_answer(b).await.is_ok());
}

/// A member whose replica is gone (killed: nobody listens on its channel)
/// is dropped when the group would complete, and the caller that would have
/// completed it waits in its place; the next caller completes the group
/// without the dead member, and nothing is left in Redis.
#[tokio::test]
async fn a_member_whose_replica_is_gone_is_dropped() {
    let replicas = common::redis::Replicas::start(1).await;
    let server = &replicas.servers[0];
    // The dead member, written as a replica would have written it, on a
    // channel nobody subscribes to.
    let key = replicas.key_of("dead");
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    let _: i64 = replicas
        .redis
        .query(
            ::redis::cmd("HSET")
                .arg(&key)
                .arg(&[
                    "n", "3", "k", "1", "b", "4", "t1", "ghost:1", "c1", "nobody", "l1", "4",
                ])
                .arg("p1")
                .arg(common::redis::sealed(b"dead"))
                .arg("e1")
                .arg(expires.to_string()),
        )
        .await;
    let _: i64 = replicas
        .redis
        .query(::redis::cmd("PEXPIRE").arg(&key).arg(60_000))
        .await;
    let a = grpc_member(server, "dead", 3, "a");
    server.parked(1).await;
    // "b" would complete the group with the dead member: instead it waits.
    let b = grpc_member(server, "dead", 3, "b");
    server.parked(2).await;
    let c = grpc_answer(grpc_member(server, "dead", 3, "c"))
        .await
        .unwrap();
    assert_eq!(payloads_of(&c), vec!["a", "b", "c"]);
    assert_eq!(grpc_answer(a).await.unwrap().position, 0);
    assert_eq!(grpc_answer(b).await.unwrap().position, 1);
    replicas.assert_nothing_left().await;
}

/// Issue 21 as a user met it: three replicas on one Redis, four members of a
/// group of three with empty payloads. The first three complete the group;
/// the fourth, alone, is told `408 Timeout` when its wait runs out (it was
/// answered 503, Redis refusing the script's arithmetic), and leaves nothing
/// behind: a pair caller with the id right after times out too, where the
/// group's leftovers made it a mismatch (409).
#[tokio::test]
async fn a_lone_member_with_an_empty_payload_times_out_across_replicas() {
    let d = Deployment::replicas(3, |_| {}).await;
    let a = grpc_member(d.server(0), "empty", 3, "");
    d.parked(1).await;
    let b = grpc_member(d.server(1), "empty", 3, "");
    d.parked(2).await;
    let c = grpc_answer(grpc_member(d.server(2), "empty", 3, ""))
        .await
        .unwrap();
    assert_eq!((c.position, payloads_of(&c)), (2, vec![""; 3]));
    assert_eq!(grpc_answer(a).await.unwrap().position, 0);
    assert_eq!(grpc_answer(b).await.unwrap().position, 1);
    let wait = |path: &str| common::http_client().post(d.server(0).url(path)).send();
    let fourth = wait("/wait-for-parties/empty?parties=3&wait=1500ms")
        .await
        .unwrap();
    assert_eq!(fourth.status(), 408);
    assert_eq!(fourth.text().await.unwrap(), "Timeout");
    d.parked(0).await;
    let pair = wait("/wait-for-second-party/empty?wait=100ms")
        .await
        .unwrap();
    assert_eq!(pair.status(), 408);
    assert_eq!(pair.text().await.unwrap(), "Timeout");
}
