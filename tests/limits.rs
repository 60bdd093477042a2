//! Limits that keep any input from exhausting the server: the cap on waiting
//! callers, over both protocols.

mod common;

use common::{TestServer, request, within};
use rendezvous::Config;
use tonic::Code;

const FULL: &str = "the server already has 1 callers waiting (--max-waiters); retry shortly, \
                    or against another instance";

#[tokio::test]
async fn past_max_waiters_callers_are_refused_but_partners_still_pair() {
    let server = TestServer::with(Config {
        max_waiters: 1,
        ..common::test_config()
    })
    .await;
    let mut first = server.grpc().await;
    let waiter =
        tokio::spawn(async move { first.wait_for_second_party(request("held", b"1")).await });
    server.parked(1).await;

    // gRPC: RESOURCE_EXHAUSTED, with what to do about it.
    let refused = server
        .grpc()
        .await
        .wait_for_second_party(request("another", b""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), FULL);

    // HTTP: 503 with Retry-After, as text and as JSON.
    let http = common::http_client();
    let response = http
        .post(server.url("/wait-for-second-party/another"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.text().await.unwrap(), FULL);
    let response = http
        .post(server.url("/wait-for-second-party/another"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED");

    // The server stays up, and a caller that completes a pair never waits,
    // so it is let in.
    let response = http
        .post(server.url("/wait-for-second-party/held"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Synced");
    assert!(within(waiter).await.unwrap().is_ok());

    // And the place is free again.
    let status = server
        .grpc()
        .await
        .wait_for_second_party(request("another", b""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
}
