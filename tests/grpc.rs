//! rendezvous.v1.Sync over gRPC, with a real tonic client on real TCP.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, raw_grpc_call, request, within};
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
    let mut roles = [
        a.unwrap().into_inner().role(),
        b.unwrap().into_inner().role(),
    ];
    roles.sort();
    assert_eq!(roles, [Role::First, Role::Second]);

    // The pair is complete, so a third caller waits for a fourth.
    let status = client
        .clone()
        .wait_for_second_party(request("trio", b""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn nobody_coming_is_deadline_exceeded_after_max_wait() {
    let server = TestServer::start().await;
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
async fn the_callers_shorter_deadline_wins_and_is_answered_by_the_server() {
    let server = TestServer::with(rendezvous::Config {
        max_wait: Duration::from_secs(30),
        ..common::test_config()
    })
    .await;
    let mut req = request("short", b"");
    req.set_timeout(Duration::from_millis(300));
    let status = within(server.grpc().await.wait_for_second_party(req))
        .await
        .unwrap_err();
    // tonic's own timeout would say CANCELLED "Timeout expired"; the server
    // answers first, a little before the deadline, with its own message.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().starts_with("nobody else arrived"),
        "{status:?}"
    );
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn a_client_that_does_not_enforce_its_deadline_still_gets_deadline_exceeded() {
    let server = TestServer::with(rendezvous::Config {
        max_wait: Duration::from_secs(30),
        ..common::test_config()
    })
    .await;
    let answer = within(raw_grpc_call(
        server.grpc_addr,
        &[("grpc-timeout", "300m")],
        WaitForSecondPartyRequest {
            id: "raw".into(),
            payload: Bytes::new(),
        },
    ))
    .await;
    assert_eq!(answer.grpc_status, "4", "{answer:?}");
    assert!(
        answer.grpc_message.starts_with("nobody else arrived"),
        "{answer:?}"
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
    let status = server
        .grpc()
        .await
        .wait_for_second_party(request("cancel", b"fresh"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
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
        },
    ));
    server.parked(1).await;
    // Aborting drops the client's connection task too: the TCP connection closes.
    waiter.abort();
    server.parked(0).await;
    let status = server
        .grpc()
        .await
        .wait_for_second_party(request("hang-up", b""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
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

    // Exactly at the limits is fine: it waits (and times out) like any call.
    let edge = call("y".repeat(256), vec![0; 64 * 1024]).await;
    assert_eq!(edge.code(), Code::DeadlineExceeded);
    assert_eq!(server.waiting(), 0);
}

/// Hundreds of pairs whose second callers arrive around the first one's
/// deadline. Whatever the timing, each pair is decided once: for every id
/// both callers are answered OK, or neither is.
///
/// The callers are ones that do not enforce a deadline locally (a raw gRPC
/// call with `grpc-timeout`, a tonic call without one, HTTP with `?wait=`), so
/// every answer counted is the server's own decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_straddling_the_deadline_are_decided_once() {
    const PAIRS: u64 = 300;
    let server = TestServer::with(rendezvous::Config {
        max_wait: Duration::from_millis(200),
        ..common::test_config()
    })
    .await;
    let client = server.grpc().await;
    let http = common::http_client();
    let grpc_ok = |id: String| {
        let mut client = client.clone();
        async move {
            client
                .wait_for_second_party(request(&id, b""))
                .await
                .is_ok()
        }
    };
    let raw_ok = |id: String| async move {
        let request = WaitForSecondPartyRequest {
            id,
            payload: Bytes::new(),
        };
        raw_grpc_call(server.grpc_addr, &[("grpc-timeout", "200m")], request)
            .await
            .grpc_status
            == "0"
    };
    let http_ok = |id: String| {
        let request = http.post(server.url(&format!("/wait-for-second-party/{id}?wait=190ms")));
        async move { request.send().await.unwrap().status() == 200 }
    };

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..PAIRS {
        let id = format!("straddle-{i}");
        // The first caller's wait ends about 190-200 ms after it arrives.
        let first = match i % 3 {
            0 => tokio::spawn(grpc_ok(id.clone())),
            1 => tokio::spawn(raw_ok(id.clone())),
            _ => tokio::spawn(http_ok(id.clone())),
        };
        // The schedule of the experiment, not synchronisation: the second
        // arrivals spread from 40 ms before to 40 ms after that deadline.
        let delay = Duration::from_millis(155 + (i * 80) / PAIRS);
        let second: std::pin::Pin<Box<dyn Future<Output = bool> + Send>> = match (i / 3) % 3 {
            0 => Box::pin(grpc_ok(id.clone())),
            1 => Box::pin(raw_ok(id.clone())),
            _ => Box::pin(http_ok(id.clone())),
        };
        let second = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            second.await
        });
        calls.spawn(async move {
            let (first, second) = tokio::join!(first, second);
            (id, u32::from(first.unwrap()) + u32::from(second.unwrap()))
        });
    }
    let mut paired = 0;
    while let Some(joined) = within(calls.join_next()).await {
        let (id, oks) = joined.unwrap();
        assert!(
            oks != 1,
            "{id}: one side was answered OK, the other was not"
        );
        paired += usize::from(oks == 2);
    }
    eprintln!("{paired} of {PAIRS} pairs met; the rest timed out on both sides");
    server.parked(0).await;
}

/// Requests a generated client would never send, but a hand-rolled one might.
#[tokio::test]
async fn malformed_grpc_requests_get_a_status_that_says_why() {
    let server = TestServer::start().await;
    let message = WaitForSecondPartyRequest {
        id: "x".into(),
        payload: Bytes::new(),
    };
    type Headers = &'static [(&'static str, &'static str)];
    let cases: [(Headers, Vec<u8>, &str, &str); 5] = [
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

#[tokio::test]
async fn an_unknown_method_is_unimplemented() {
    let server = TestServer::start().await;
    let mut client = tonic::client::Grpc::new(server.channel().await);
    client.ready().await.unwrap();
    let status = client
        .unary::<_, WaitForSecondPartyRequest, _>(
            tonic::Request::new(WaitForSecondPartyRequest::default()),
            "/rendezvous.v1.Sync/NoSuchMethod".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}
