//! Graceful shutdown, in process and in a real process with real signals.

mod common;

use common::{Process, TestServer, request, within};
use tokio::process::Command;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn shutdown_goes_not_serving_answers_parked_callers_and_refuses_new_connections() {
    let mut server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "rendezvous.v1.Sync".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let mut grpc = server.grpc().await;
    let parked_grpc =
        tokio::spawn(async move { grpc.wait_for_second_party(request("a", b"")).await });
    let parked_http = tokio::spawn(
        common::http_client()
            .post(server.url("/wait-for-second-party/b"))
            .send(),
    );
    server.parked(2).await;

    server.begin_shutdown();

    assert_eq!(
        within(watch.message()).await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    let status = within(parked_grpc).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "the server is shutting down; retry against another instance"
    );
    let response = within(parked_http).await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.text().await.unwrap(),
        "the server is shutting down; retry against another instance"
    );

    // The health watch stream never ends by itself; the grace period bounds it.
    within(&mut server.task).await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(server.grpc_addr)
            .await
            .is_err()
    );
    assert!(
        tokio::net::TcpStream::connect(server.http_addr)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn sigterm_answers_parked_callers_and_exits_zero_within_the_grace_period() {
    let mut server = Process::start(&[]).await;
    let channel = server.channel().await;
    // A health watch never ends on its own: the grace period has to end it.
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let mut grpc = rendezvous::proto::sync_client::SyncClient::new(channel);
    let parked_grpc =
        tokio::spawn(async move { grpc.wait_for_second_party(request("p", b"")).await });
    server.next("arrived").await;
    let parked_http = tokio::spawn(
        common::http_client()
            .post(format!("http://{}/wait-for-second-party/q", server.http))
            .send(),
    );
    server.next("arrived").await;

    server.signal("TERM");

    let status = within(parked_grpc).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let response = within(parked_http).await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        within(watch.message()).await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    let exit = within(server.child.wait()).await.unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut server = Process::start(&[]).await;
    // Keep a connection open so the first signal has a grace period to wait out.
    let _watch = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap();
    server.signal("INT");
    server
        .next("shutdown requested; a second signal exits at once")
        .await;
    server.signal("TERM");
    server.next("second signal: exiting without waiting").await;
    let exit = within(server.child.wait()).await.unwrap();
    assert_eq!(exit.code(), Some(130));
}

#[tokio::test]
async fn a_taken_port_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_rendezvous"))
        .args([
            format!("--grpc-addr={addr}"),
            "--http-addr=127.0.0.1:0".into(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen for gRPC on {addr}")),
        "{stderr}"
    );
}

/// SIGTERM with thousands of callers parked: every one of them gets an
/// answer (UNAVAILABLE), none hangs, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_thousands_parked_answers_every_one() {
    const PARKED: usize = 3_000;
    let mut server = Process::start(&[]).await;
    let channel = server.channel().await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..PARKED {
        let mut client = rendezvous::proto::sync_client::SyncClient::new(channel.clone());
        calls.spawn(async move {
            client
                .wait_for_second_party(request(&format!("many-{i}"), b""))
                .await
        });
    }
    // Every caller has reached the server once each has logged its arrival.
    for _ in 0..PARKED {
        server.next("arrived").await;
    }
    server.signal("TERM");
    let mut unavailable = 0;
    while let Some(call) = within(calls.join_next()).await {
        let status = call.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        unavailable += 1;
    }
    assert_eq!(unavailable, PARKED);
    assert_eq!(within(server.child.wait()).await.unwrap().code(), Some(0));
}
