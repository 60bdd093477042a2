//! One engine behind both protocols: a gRPC caller and an HTTP caller with
//! the same id meet each other, and swap payloads.

use crate::common;

use bytes::Bytes;
use common::{TestServer, request, within};
use rendezvous::proto::Role;

#[tokio::test]
async fn grpc_waits_and_http_completes() {
    let server = TestServer::start().await;
    let mut grpc = server.grpc().await;
    let waiter = tokio::spawn(async move {
        grpc.wait_for_second_party(request("mixed-1", b"from grpc"))
            .await
    });
    server.parked(1).await;

    let response = common::http_client()
        .post(server.url("/wait-for-second-party/mixed-1"))
        .header("accept", "application/json")
        .body("from http")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = common::JsonBody::json_body(response).await;
    assert_eq!(body["role"], "ROLE_SECOND");
    assert_eq!(body["peerPayload"], "ZnJvbSBncnBj"); // "from grpc"

    let waiter = within(waiter).await.unwrap().unwrap().into_inner();
    assert_eq!(waiter.role(), Role::First);
    assert_eq!(waiter.peer_payload, Bytes::from_static(b"from http"));
}

#[tokio::test]
async fn http_waits_and_grpc_completes() {
    let server = TestServer::start().await;
    let waiter = tokio::spawn(
        common::http_client()
            .post(server.url("/wait-for-second-party/mixed-2"))
            .body("legacy")
            .send(),
    );
    server.parked(1).await;

    let second = server
        .grpc()
        .await
        .wait_for_second_party(request("mixed-2", b"new"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.role(), Role::Second);
    assert_eq!(second.peer_payload, Bytes::from_static(b"legacy"));

    let waiter = within(waiter).await.unwrap().unwrap();
    assert_eq!(waiter.status(), 200);
    assert_eq!(waiter.text().await.unwrap(), "Synced");
}
