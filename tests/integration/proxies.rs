//! Behind proxies and L4 balancers: connections that age out
//! (`--max-connection-age`) so that clients rebalance, and streams a proxy
//! resets while their connection carries on.

use std::time::Duration;

use bytes::Bytes;
use rendezvous::pairing::Role;

use crate::common::{
    TestServer, assert_timed_out, grpc_frame, grpc_request_head, raw_wait, scrape, test_config,
    value, within,
};
use rendezvous::proto::WaitForSecondPartyRequest;

/// A server whose HTTP/2 connections age after `age`, with `grace` for
/// their calls in flight.
async fn aging_server(age: Duration, grace: Duration) -> TestServer {
    TestServer::with(rendezvous::Config {
        max_connection_age: Some(age),
        max_connection_age_grace: Some(grace),
        ..test_config()
    })
    .await
}

/// Waits until `n` connections have been sent GOAWAY for their age.
async fn aged(server: &TestServer, n: f64) {
    within(async {
        while value(
            &scrape(server).await,
            "rendezvous_connections_aged_total",
            &[],
        ) < n
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn grpc_connections(server: &TestServer) -> f64 {
    value(
        &scrape(server).await,
        "rendezvous_connections_total",
        &[("listener", "grpc")],
    )
}

#[tokio::test]
async fn an_aged_connection_finishes_its_call_and_the_next_call_takes_a_new_connection() {
    // An age long enough (at least 0.9 s) for a call to be sent on a fresh
    // connection well before it, however busy the machine; the grace far
    // longer than the test, so that only the GOAWAY can matter.
    let server = aging_server(Duration::from_secs(1), Duration::from_secs(3600)).await;
    // The crate's client, which makes a call again that tonic's channel gave
    // to the connection that had said GOAWAY (see `rendezvous::client`).
    let client = server.client().await;
    assert_eq!(grpc_connections(&server).await, 1.0);

    let first = client.clone();
    let waiter = tokio::spawn(async move {
        first
            .wait("aged", Bytes::from_static(b"on the old connection"), None)
            .await
    });
    server.parked(1).await;
    aged(&server, 1.0).await;

    // Same client, same channel: the old connection has said GOAWAY, so
    // this call can only have gone over a new one.
    let answer = within(client.wait("aged", Bytes::from_static(b"on a new connection"), None))
        .await
        .expect("the call after GOAWAY is served");
    assert_eq!(
        (answer.role(), answer.peer().payload.clone()),
        (Role::Second, Bytes::from_static(b"on the old connection"))
    );
    let answer = within(waiter)
        .await
        .unwrap()
        .expect("the call in flight finished");
    assert_eq!(
        (answer.role(), answer.peer().payload.clone()),
        (Role::First, Bytes::from_static(b"on a new connection"))
    );
    assert!(grpc_connections(&server).await >= 2.0);
}

#[tokio::test]
async fn an_aged_connection_whose_call_outlives_the_grace_is_closed_and_the_caller_removed() {
    // The call is parked well within the age (at least 0.9 s), then cut
    // 200 ms after it.
    let server = aging_server(Duration::from_secs(1), Duration::from_millis(200)).await;
    let mut grpc = server.grpc().await;
    let waiter = tokio::spawn(async move {
        grpc.wait_for_second_party(crate::common::request("outlived", b""))
            .await
    });
    server.parked(1).await;
    let status = within(waiter).await.unwrap().unwrap_err();
    // The connection closed under the call, which tonic reports as UNKNOWN
    // "transport error" (a broken pipe) or UNAVAILABLE, depending on when.
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unknown | tonic::Code::Unavailable
        ),
        "{status:?}"
    );
    server.parked(0).await;
    assert!(
        value(
            &scrape(&server).await,
            "rendezvous_connections_aged_total",
            &[]
        ) >= 1.0
    );
}

/// A proxy such as Envoy multiplexes many callers over one upstream
/// connection, and resets one caller's stream (its route timeout, or the
/// caller hung up) while the others carry on. The reset caller must be gone
/// at once, and its neighbours on the connection unharmed.
#[tokio::test]
async fn a_stream_reset_by_a_proxy_is_cleaned_up_and_its_neighbours_carry_on() {
    let server = TestServer::start().await;
    // The proxy's one upstream connection.
    let tcp = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    let (upstream, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let call = |id: &str, payload: &'static [u8]| {
        let upstream = upstream.clone();
        let frame = grpc_frame(
            0,
            &WaitForSecondPartyRequest {
                id: id.into(),
                payload: Bytes::from_static(payload),
                ..Default::default()
            },
        );
        let addr = server.grpc_addr;
        async move {
            let mut upstream = upstream.ready().await.unwrap();
            let (response, mut body) = upstream
                .send_request(grpc_request_head(addr), false)
                .unwrap();
            body.send_data(frame.into(), true).unwrap();
            (response, body)
        }
    };
    let (_reset, mut reset_stream) = call("reset", b"stale").await;
    let (neighbour, _neighbour_stream) = call("neighbour", b"stays").await;
    server.parked(2).await;

    reset_stream.send_reset(h2::Reason::CANCEL);
    server.parked(1).await;
    // The next caller with the reset caller's id waits rather than pairing
    // with it.
    assert_timed_out(&within(raw_wait(server.grpc_addr, "reset", b"fresh", "100m")).await);

    // The neighbour, on the same upstream connection, still pairs.
    let partner = within(crate::common::raw_grpc_call(
        server.grpc_addr,
        &[],
        WaitForSecondPartyRequest {
            id: "neighbour".into(),
            payload: Bytes::from_static(b"partner"),
            ..Default::default()
        },
    ))
    .await;
    assert_eq!(partner.grpc_status, "0", "{partner:?}");
    assert_eq!(partner.message.unwrap().peer_payload, &b"stays"[..]);
    let response = within(neighbour).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let data = within(body.data()).await.unwrap().unwrap();
    let answer =
        <rendezvous::proto::WaitForSecondPartyResponse as prost::Message>::decode(&data[5..])
            .unwrap();
    assert_eq!(answer.role(), rendezvous::proto::Role::First);
    assert_eq!(answer.peer_payload, &b"partner"[..]);
    assert_eq!(server.waiting(), 0);
}

/// Only a call that never left the client is made again after a GOAWAY:
/// one the server answered, even with a refusal, is made once.
#[tokio::test]
async fn a_call_the_server_answered_is_not_made_again() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let status = within(client.wait("", Bytes::new(), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let refused = value(
        &scrape(&server).await,
        "rendezvous_rejections_total",
        &[("protocol", "grpc"), ("reason", "invalid_argument")],
    );
    assert_eq!(refused, 1.0);
}
