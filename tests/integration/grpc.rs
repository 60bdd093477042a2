//! rendezvous.v1.Sync over gRPC, with a real tonic client on real TCP.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, assert_timed_out, raw_grpc_call, raw_wait, request, within};
use rendezvous::proto::{Role, WaitForSecondPartyRequest};
use tonic::Code;

#[tokio::test]
async fn two_callers_pair_and_swap_payloads() {
    let server = TestServer::start().await;
    let mut first_client = server.grpc().await;
    let mut second_client = server.grpc().await;

    let first = tokio::spawn(async move {
        first_client
            .wait_for_second_party(request("meet-1", b"hello from first"))
            .await
    });
    server.parked(1).await;
    let second = second_client
        .wait_for_second_party(request("meet-1", b"hello from second"))
        .await
        .expect("second caller pairs")
        .into_inner();
    let first = within(first)
        .await
        .unwrap()
        .expect("first caller pairs")
        .into_inner();

    assert_eq!(first.role(), Role::First);
    assert_eq!(first.peer_payload, Bytes::from_static(b"hello from second"));
    assert_eq!(second.role(), Role::Second);
    assert_eq!(second.peer_payload, Bytes::from_static(b"hello from first"));

    let first_waited = Duration::try_from(first.waited.unwrap()).unwrap();
    let second_waited = Duration::try_from(second.waited.unwrap()).unwrap();
    assert_eq!(
        second_waited,
        Duration::ZERO,
        "the second caller never waits"
    );
    assert!(first_waited > Duration::ZERO, "the first caller waited");
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn empty_payloads_are_fine_and_a_third_caller_starts_a_new_pair() {
    let server = TestServer::start().await;
    let client = server.grpc().await;

    let (mut one, mut two) = (client.clone(), client.clone());
    let (a, b) = tokio::join!(
        one.wait_for_second_party(request("trio", b"")),
        two.wait_for_second_party(request("trio", b"")),
    );
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    let mut roles = [a.role(), b.role()];
    roles.sort();
    assert_eq!(roles, [Role::First, Role::Second]);
    assert_eq!(a.peer_payload, Bytes::new());
    assert_eq!(b.peer_payload, Bytes::new());

    // The pair is complete, so a third caller waits for a fourth.
    assert_timed_out(&within(raw_wait(server.grpc_addr, "trio", b"", "100m")).await);
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn nobody_coming_is_deadline_exceeded_after_max_wait() {
    let server = TestServer::with(rendezvous::Config {
        max_wait: Duration::from_millis(500),
        ..common::test_config()
    })
    .await;
    // No deadline on the client, so only the server's --max-wait ends it.
    let status = within(
        server
            .grpc()
            .await
            .wait_for_second_party(request("alone", b"x")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status
            .message()
            .starts_with("nobody else arrived with this id within 500ms"),
        "{}",
        status.message()
    );
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn a_client_that_does_not_enforce_its_deadline_still_gets_deadline_exceeded() {
    let server = TestServer::with(rendezvous::Config {
        default_wait: Duration::from_secs(30),
        max_wait: Duration::from_secs(30),
        ..common::test_config()
    })
    .await;
    // tonic's own timeout would say CANCELLED "Timeout expired"; the server
    // answers DEADLINE_EXCEEDED itself, a little before the deadline (the
    // margin is unit-tested in src/grpc.rs). A tonic client enforces the
    // same deadline, so only a client that does not can see whose answer it
    // is without racing the margin.
    let answer = within(raw_wait(server.grpc_addr, "raw", b"", "300m")).await;
    assert_timed_out(&answer);
    assert!(
        answer.grpc_message.ends_with("within 285ms"),
        "the caller's deadline less the margin: {answer:?}"
    );
    assert_eq!(server.waiting(), 0);
}

/// A caller's own deadline is honoured up to `--max-wait`; a longer one is
/// cut there, and its message says so; a call with none waits
/// `--default-wait`. Exact status and message, from a raw client that does
/// not enforce its deadline, so that the answer is the server's.
#[tokio::test]
async fn a_callers_deadline_is_honoured_up_to_max_wait() {
    let server = TestServer::with(rendezvous::Config {
        default_wait: Duration::from_millis(200),
        max_wait: Duration::from_millis(400),
        ..common::test_config()
    })
    .await;
    let below = within(raw_wait(server.grpc_addr, "below", b"", "300m")).await;
    assert_eq!(
        (below.grpc_status.as_str(), below.grpc_message.as_str()),
        ("4", "nobody else arrived with this id within 285ms"),
        "the caller's deadline less the margin"
    );
    let above = within(raw_wait(server.grpc_addr, "above", b"", "1H")).await;
    assert_eq!(
        (above.grpc_status.as_str(), above.grpc_message.as_str()),
        (
            "4",
            "nobody else arrived with this id within 400ms, the server's --max-wait, which cut \
             the longer wait this call asked for"
        ),
    );
    let none = within(raw_grpc_call(
        server.grpc_addr,
        &[],
        WaitForSecondPartyRequest {
            id: "none".into(),
            ..Default::default()
        },
    ))
    .await;
    assert_eq!(
        (none.grpc_status.as_str(), none.grpc_message.as_str()),
        ("4", "nobody else arrived with this id within 200ms"),
    );
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn a_raw_client_pairs_and_reads_the_response_fields() {
    let server = TestServer::start().await;
    let waiter = tokio::spawn(raw_grpc_call(
        server.grpc_addr,
        &[],
        WaitForSecondPartyRequest {
            id: "raw-pair".into(),
            payload: Bytes::from_static(b"raw"),
            ..Default::default()
        },
    ));
    server.parked(1).await;
    let second = server
        .grpc()
        .await
        .wait_for_second_party(request("raw-pair", b"tonic"))
        .await
        .unwrap()
        .into_inner();
    let answer = within(waiter).await.unwrap();
    assert_eq!(answer.grpc_status, "0", "{answer:?}");
    let message = answer.message.unwrap();
    assert_eq!(message.role(), Role::First);
    assert_eq!(message.peer_payload, Bytes::from_static(b"tonic"));
    assert_eq!(second.peer_payload, Bytes::from_static(b"raw"));
}

#[tokio::test]
async fn a_malformed_grpc_timeout_is_invalid_argument() {
    let server = TestServer::start().await;
    let answer = within(raw_grpc_call(
        server.grpc_addr,
        &[("grpc-timeout", "soon")],
        WaitForSecondPartyRequest {
            id: "x".into(),
            payload: Bytes::new(),
            ..Default::default()
        },
    ))
    .await;
    assert_eq!(answer.grpc_status, "3", "{answer:?}");
    assert!(
        answer.grpc_message.contains("grpc-timeout header"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_cancelled_caller_leaves_no_waiter_behind() {
    let server = TestServer::start().await;
    let mut gone = server.grpc().await;
    let call = tokio::spawn(async move {
        gone.wait_for_second_party(request("cancel", b"stale"))
            .await
    });
    server.parked(1).await;

    // Dropping the call makes tonic send RST_STREAM.
    call.abort();
    server.parked(0).await;

    // The next caller with that id waits, rather than pairing with nobody.
    assert_timed_out(&within(raw_wait(server.grpc_addr, "cancel", b"fresh", "100m")).await);
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn a_closed_connection_leaves_no_waiter_behind() {
    let server = TestServer::start().await;
    let waiter = tokio::spawn(raw_grpc_call(
        server.grpc_addr,
        &[],
        WaitForSecondPartyRequest {
            id: "hang-up".into(),
            payload: Bytes::new(),
            ..Default::default()
        },
    ));
    server.parked(1).await;
    // Aborting drops the client's connection task too: the TCP connection closes.
    waiter.abort();
    server.parked(0).await;
    assert_timed_out(&within(raw_wait(server.grpc_addr, "hang-up", b"", "100m")).await);
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn bad_inputs_are_invalid_argument_with_a_message() {
    let server = TestServer::start().await;
    let client = server.grpc().await;
    let call = |id: String, payload: Vec<u8>| {
        let mut client = client.clone();
        async move {
            client
                .wait_for_second_party(WaitForSecondPartyRequest {
                    id,
                    payload: payload.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err()
        }
    };

    let empty = call(String::new(), vec![]).await;
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(
        empty.message(),
        "id is empty: send the meeting id both parties agreed on"
    );

    let long = call("x".repeat(257), vec![]).await;
    assert_eq!(long.code(), Code::InvalidArgument);
    assert_eq!(
        long.message(),
        "id is 257 bytes long; the limit is 256 bytes"
    );

    let big = call("big".into(), vec![0; 64 * 1024 + 1]).await;
    assert_eq!(big.code(), Code::InvalidArgument);
    assert_eq!(
        big.message(),
        "payload is 65537 bytes; the limit is 65536 bytes (--max-payload)"
    );

    // Far over the limit, the request is refused before it is all read.
    let huge = call("huge".into(), vec![0; 1 << 20]).await;
    assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");
    assert_eq!(
        huge.message(),
        "request message is over 66560 bytes: the payload limit is 65536 bytes (--max-payload)"
    );

    assert_eq!(server.waiting(), 0);

    // Exactly at the limits is fine: both sides' payloads go through whole.
    let edge_id = "y".repeat(256);
    let mut waiter = client.clone();
    let first = tokio::spawn({
        let id = edge_id.clone();
        async move {
            waiter
                .wait_for_second_party(WaitForSecondPartyRequest {
                    id,
                    payload: vec![1; 64 * 1024].into(),
                    ..Default::default()
                })
                .await
        }
    });
    server.parked(1).await;
    let second = client
        .clone()
        .wait_for_second_party(WaitForSecondPartyRequest {
            id: edge_id,
            payload: vec![2; 64 * 1024].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = within(first).await.unwrap().unwrap().into_inner();
    assert_eq!(second.role(), Role::Second);
    assert_eq!(second.peer_payload, vec![1; 64 * 1024]);
    assert_eq!(first.role(), Role::First);
    assert_eq!(first.peer_payload, vec![2; 64 * 1024]);
}

/// How a test caller reaches the server.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A tonic client, with no deadline of its own.
    Tonic,
    /// A raw HTTP/2 call whose `grpc-timeout` only the server enforces.
    Raw,
    /// `POST /wait-for-second-party/{id}?wait=..` with a JSON answer.
    Http,
}

#[derive(Debug, PartialEq)]
enum Answer {
    Paired(Bytes),
    TimedOut,
}

/// Callers of every kind for one server.
#[derive(Clone)]
struct Callers {
    grpc_addr: std::net::SocketAddr,
    http_addr: std::net::SocketAddr,
    tonic: rendezvous::proto::sync_client::SyncClient<tonic::transport::Channel>,
    http: reqwest::Client,
}

impl Callers {
    async fn of(server: &TestServer) -> Self {
        Self {
            grpc_addr: server.grpc_addr,
            http_addr: server.http_addr,
            tonic: server.grpc().await,
            http: common::http_client(),
        }
    }

    /// One call; `wait_ms` is sent as the caller's wait where the kind of
    /// caller can send one that the server alone enforces (not over tonic).
    async fn meet(mut self, via: Via, id: String, payload: &'static [u8], wait_ms: u64) -> Answer {
        match via {
            Via::Tonic => match self
                .tonic
                .wait_for_second_party(request(&id, payload))
                .await
            {
                Ok(response) => Answer::Paired(response.into_inner().peer_payload),
                Err(status) if status.code() == Code::DeadlineExceeded => Answer::TimedOut,
                Err(status) => panic!("{id}: {status:?}"),
            },
            Via::Raw => {
                let answer = raw_wait(self.grpc_addr, &id, payload, &format!("{wait_ms}m")).await;
                match answer.grpc_status.as_str() {
                    "0" => Answer::Paired(answer.message.unwrap().peer_payload),
                    "4" => Answer::TimedOut,
                    _ => panic!("{id}: {answer:?}"),
                }
            }
            Via::Http => {
                let url = format!(
                    "http://{}/wait-for-second-party/{id}?wait={wait_ms}ms",
                    self.http_addr
                );
                let response = self
                    .http
                    .post(url)
                    .header("accept", "application/json")
                    .body(payload)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body = common::JsonBody::json_body(response).await;
                match status.as_u16() {
                    200 => {
                        use base64::Engine as _;
                        let peer = base64::engine::general_purpose::STANDARD
                            .decode(body["peerPayload"].as_str().unwrap())
                            .unwrap();
                        Answer::Paired(peer.into())
                    }
                    408 => Answer::TimedOut,
                    _ => panic!("{id}: {status} {body}"),
                }
            }
        }
    }
}

const EVERY_KIND: [Via; 3] = [Via::Tonic, Via::Raw, Via::Http];

/// Every mix of protocols pairs both ways, with the payloads swapped.
#[tokio::test]
async fn every_kind_of_caller_pairs_with_every_other() {
    let server = TestServer::start().await;
    let callers = Callers::of(&server).await;
    for first in EVERY_KIND {
        for second in EVERY_KIND {
            let id = format!("{first:?}-{second:?}");
            let waiter = tokio::spawn(callers.clone().meet(first, id.clone(), b"one", 60_000));
            server.parked(1).await;
            let answer = callers
                .clone()
                .meet(second, id.clone(), b"two", 60_000)
                .await;
            assert_eq!(answer, Answer::Paired(Bytes::from_static(b"one")), "{id}");
            let answer = within(waiter).await.unwrap();
            assert_eq!(answer, Answer::Paired(Bytes::from_static(b"two")), "{id}");
            assert_eq!(server.waiting(), 0);
        }
    }
}

/// Hundreds of pairs whose second callers arrive around the first one's
/// deadline. Whatever the timing, each pair is decided once: for every id
/// both callers are told they paired, each with the other's payload, or
/// both time out.
///
/// The callers send a wait that only the server enforces (a raw gRPC call
/// with `grpc-timeout`, HTTP with `?wait=`), so every answer counted is the
/// server's own decision. How many pair is up to the machine's timing;
/// `every_kind_of_caller_pairs_with_every_other` covers the sure pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_straddling_the_deadline_are_decided_once() {
    const PAIRS: u64 = 300;
    const KINDS: [Via; 2] = [Via::Raw, Via::Http];
    let server = TestServer::start().await;
    let callers = Callers::of(&server).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..PAIRS {
        let id = format!("straddle-{i}");
        let (first, second) = (KINDS[i as usize % 2], KINDS[(i / 2) as usize % 2]);
        // The first caller's wait ends about 200 ms after it arrives...
        let first = tokio::spawn(callers.clone().meet(first, id.clone(), b"first", 200));
        // ...and the second callers set off 175 to 255 ms after the first,
        // which itself takes a few milliseconds to arrive (a new connection
        // for each raw call), so that their arrivals straddle its deadline:
        // the schedule of the experiment, not synchronisation.
        let delay = Duration::from_millis(175 + (i * 80) / PAIRS);
        let (second_caller, second_id) = (callers.clone(), id.clone());
        let second = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            second_caller.meet(second, second_id, b"second", 200).await
        });
        calls.spawn(async move { (id, first.await.unwrap(), second.await.unwrap()) });
    }
    let (mut paired, mut timed_out) = (0, 0);
    while let Some(joined) = within(calls.join_next()).await {
        match joined.unwrap() {
            (_, Answer::Paired(a), Answer::Paired(b)) if a == "second" && b == "first" => {
                paired += 1
            }
            (_, Answer::TimedOut, Answer::TimedOut) => timed_out += 1,
            (id, first, second) => panic!("{id}: decided twice: {first:?} and {second:?}"),
        }
    }
    assert_eq!(paired + timed_out, PAIRS);
    eprintln!("{paired} of {PAIRS} pairs met; {timed_out} timed out on both sides");
    server.parked(0).await;
}

/// Requests a generated client would never send, but a hand-rolled one might.
#[tokio::test]
async fn malformed_grpc_requests_get_a_status_that_says_why() {
    let server = TestServer::start().await;
    let message = WaitForSecondPartyRequest {
        id: "x".into(),
        payload: Bytes::new(),
        ..Default::default()
    };
    type Headers = &'static [(&'static str, &'static str)];
    let cases: [(Headers, Vec<u8>, &str, &str); 6] = [
        (
            &[("grpc-encoding", "gzip")],
            common::grpc_frame(0, &message),
            "12",
            "compressed requests are not supported; send them uncompressed (grpc-encoding: identity)",
        ),
        (
            &[],
            common::grpc_frame(1, &message),
            "12",
            "compressed requests are not supported; send them uncompressed (grpc-encoding: identity)",
        ),
        (
            &[],
            vec![0, 0, 0],
            "3",
            "request is not one gRPC message: it is shorter than the 5-byte message prefix",
        ),
        (
            &[],
            [
                common::grpc_frame(0, &message),
                common::grpc_frame(0, &message),
            ]
            .concat(),
            "3",
            "request is not one gRPC message: a unary call carries exactly one message",
        ),
        (
            &[],
            vec![0, 0, 0, 0, 9, 1, 2],
            "3",
            "request is not one gRPC message: the message is cut short",
        ),
        (
            &[],
            vec![0, 0, 0, 0, 2, 0xff, 0xff],
            "3",
            "request is not a valid rendezvous.v1.WaitForSecondPartyRequest: ",
        ),
    ];
    for (headers, body, status, message) in cases {
        let answer = within(common::raw_grpc_body(server.grpc_addr, headers, body)).await;
        assert_eq!(answer.grpc_status, status, "{answer:?}");
        assert!(answer.grpc_message.starts_with(message), "{answer:?}");
    }
    assert_eq!(server.waiting(), 0);
}

/// `grpc-encoding: identity` is no compression at all: served like a call
/// without the header.
#[tokio::test]
async fn identity_encoding_is_served() {
    let server = TestServer::start().await;
    let answer = within(raw_grpc_call(
        server.grpc_addr,
        &[("grpc-encoding", "identity"), ("grpc-timeout", "100m")],
        WaitForSecondPartyRequest {
            id: "identity".into(),
            payload: Bytes::new(),
            ..Default::default()
        },
    ))
    .await;
    assert_timed_out(&answer);
}

/// The rendezvous path answers only gRPC: anything else is told so with
/// 415, before its body is read.
#[tokio::test]
async fn a_request_that_is_not_grpc_is_unsupported_media_type() {
    let server = TestServer::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(format!(
            "http://{}/rendezvous.v1.Sync/WaitForSecondParty",
            server.grpc_addr
        ))
        .header("content-type", "application/json")
        .body(r#"{"id": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(server.waiting(), 0);
}

/// An unknown method, in a known service or an unknown one, is
/// `UNIMPLEMENTED` with a message that names it.
#[tokio::test]
async fn an_unknown_method_is_unimplemented_and_named() {
    let server = TestServer::start().await;
    for path in [
        "/rendezvous.v1.Sync/NoSuchMethod",
        "/no.such.Service/Method",
        "/grpc.health.v1.Health/NoSuchMethod",
    ] {
        let mut client = tonic::client::Grpc::new(server.channel().await);
        client.ready().await.unwrap();
        let status = client
            .unary::<_, WaitForSecondPartyRequest, _>(
                tonic::Request::new(WaitForSecondPartyRequest::default()),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
        assert_eq!(
            status.message(),
            format!(
                "unknown method {path}: this server serves \
                 /rendezvous.v1.Sync/WaitForSecondParty, /rendezvous.v1.Sync/WaitForParties, \
                 /rendezvous.v1.Sync/Withdraw, grpc.health.v1.Health and server reflection"
            ),
        );
    }
}

/// The crate's client receives the largest payload a server can be set to
/// pass on (`--max-payload 16MiB`): its message limit is not tonic's 4 MiB.
#[tokio::test]
async fn the_crates_client_takes_the_largest_payload_a_server_allows() {
    let server = TestServer::with(rendezvous::Config {
        max_payload: rendezvous::config::PAYLOAD_CEILING,
        ..common::test_config()
    })
    .await;
    let big = Bytes::from(vec![7u8; rendezvous::config::PAYLOAD_CEILING]);
    let (first, second) = (server.client().await, server.client().await);
    let waiter = tokio::spawn({
        let big = big.clone();
        async move { first.wait("big", big, None).await }
    });
    server.parked(1).await;
    let answer = second
        .wait("big", Bytes::from_static(b"small"), None)
        .await
        .unwrap();
    assert_eq!(answer.peer().payload.len(), big.len());
    assert!(answer.peer().payload == big);
    let answer = within(waiter).await.unwrap().unwrap();
    assert_eq!(answer.peer().payload, "small");
}
