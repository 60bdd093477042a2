//! Graceful shutdown, in process and in a real process with real signals.

use crate::common;

use common::{Process, TestServer, request, within};
use tokio::process::Command;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A loopback address no other test listens on, so that once this server
/// has closed its listeners nothing else can answer there.
fn private_config() -> rendezvous::Config {
    rendezvous::Config {
        grpc_addr: "127.0.0.77:0".parse().unwrap(),
        http_addr: "127.0.0.77:0".parse().unwrap(),
        ..common::test_config()
    }
}

#[tokio::test]
async fn shutdown_goes_not_serving_answers_parked_callers_and_refuses_new_connections() {
    let mut server = TestServer::with(private_config()).await;
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
    for addr in [server.grpc_addr, server.http_addr] {
        let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}"
        );
    }
}

/// Parks a gRPC caller and returns its call: once it is answered
/// UNAVAILABLE, the engine is closed and connections have been told to
/// finish (the server does both before it next yields, and these tests run
/// it on their own single thread).
async fn parked_sentinel(
    server: &TestServer,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<rendezvous::proto::WaitForSecondPartyResponse>, tonic::Status>,
> {
    let mut client = server.grpc().await;
    let call =
        tokio::spawn(async move { client.wait_for_second_party(request("sentinel", b"")).await });
    server.parked(1).await;
    call
}

async fn assert_unavailable(
    call: tokio::task::JoinHandle<
        Result<tonic::Response<rendezvous::proto::WaitForSecondPartyResponse>, tonic::Status>,
    >,
) {
    let status = within(call).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

const SHUTTING_DOWN: &str = "the server is shutting down; retry against another instance";

/// Calls that reach the service once shutdown has begun, on connections
/// opened before it, are answered UNAVAILABLE over gRPC and 503 over HTTP,
/// with the reason, rather than parked.
#[tokio::test]
async fn calls_arriving_during_shutdown_are_answered_unavailable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start().await;

    // HTTP/1.1: a request whose head is in, and whose body the handler is
    // waiting for: `100 Continue` says so.
    let mut http = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    http.write_all(
        b"POST /wait-for-second-party/late HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\
          expect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut continued = [0u8; 25];
    within(http.read_exact(&mut continued)).await.unwrap();
    assert_eq!(&continued, b"HTTP/1.1 100 Continue\r\n\r\n");

    // gRPC: a stream whose headers are in (a PING answered after them says
    // so), and whose message has not been sent.
    let tcp = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    let (mut h2, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut ping_pong = connection.ping_pong().unwrap();
    tokio::spawn(connection);
    let head = common::grpc_request_head(server.grpc_addr);
    let (response, mut body) = h2.send_request(head, false).unwrap();
    within(ping_pong.ping(h2::Ping::opaque())).await.unwrap();

    let sentinel = parked_sentinel(&server).await;
    server.begin_shutdown();
    assert_unavailable(sentinel).await;

    let message = rendezvous::proto::WaitForSecondPartyRequest {
        id: "late".into(),
        payload: bytes::Bytes::new(),
        ..Default::default()
    };
    body.send_data(common::grpc_frame(0, &message).into(), true)
        .unwrap();
    let response = within(response).await.unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status.as_deref(), Some("14"), "{response:?}");
    let message = percent_encoding::percent_decode(response.headers()["grpc-message"].as_bytes());
    assert_eq!(message.decode_utf8().unwrap(), SHUTTING_DOWN);

    http.write_all(b"late").await.unwrap();
    let mut answer = String::new();
    within(http.read_to_string(&mut answer)).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with(&format!("\r\n\r\n{SHUTTING_DOWN}")),
        "{answer}"
    );
    within(&mut server.task).await.unwrap().unwrap();
}

/// A pair decided before shutdown is delivered in full during the grace
/// period, even to a caller that reads its answer slowly.
#[tokio::test]
async fn a_pair_in_flight_finishes_within_the_grace_period() {
    const PAYLOAD: usize = 60 * 1024;
    let mut server = TestServer::with(rendezvous::Config {
        shutdown_grace: std::time::Duration::from_secs(30),
        ..common::test_config()
    })
    .await;
    // The first caller grants the server 1 KiB of credit for its answer,
    // and no more until it chooses to.
    let tcp = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    let (mut h2, connection) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let head = common::grpc_request_head(server.grpc_addr);
    let (response, mut body) = h2.send_request(head, false).unwrap();
    let message = rendezvous::proto::WaitForSecondPartyRequest {
        id: "in-flight".into(),
        payload: vec![1u8; 16].into(),
        ..Default::default()
    };
    body.send_data(common::grpc_frame(0, &message).into(), true)
        .unwrap();
    server.parked(1).await;

    let partner = server
        .grpc()
        .await
        .wait_for_second_party(rendezvous::proto::WaitForSecondPartyRequest {
            id: "in-flight".into(),
            payload: vec![2u8; PAYLOAD].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(partner.peer_payload, vec![1u8; 16]);

    // The answer is on its way, stalled at the first kilobyte.
    let response = within(response).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let mut answer = response.into_body();
    let mut received = Vec::new();
    while received.len() < 1024 {
        received.extend_from_slice(&within(answer.data()).await.unwrap().unwrap());
    }
    assert_eq!(received.len(), 1024);

    let sentinel = parked_sentinel(&server).await;
    server.begin_shutdown();
    assert_unavailable(sentinel).await;

    // Now the rest, as fast as the caller takes it.
    answer
        .flow_control()
        .release_capacity(received.len())
        .unwrap();
    while let Some(chunk) = within(answer.data()).await {
        let chunk = chunk.unwrap();
        answer.flow_control().release_capacity(chunk.len()).unwrap();
        received.extend_from_slice(&chunk);
    }
    let trailers = within(answer.trailers()).await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    let decoded =
        <rendezvous::proto::WaitForSecondPartyResponse as prost::Message>::decode(&received[5..])
            .unwrap();
    assert_eq!(decoded.role(), rendezvous::proto::Role::First);
    assert_eq!(decoded.peer_payload, vec![2u8; PAYLOAD]);
    within(&mut server.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn sigterm_answers_parked_callers_and_exits_zero_within_the_grace_period() {
    // The health watch keeps the connection open for the whole grace period,
    // which is what ends the process; the answers go out well within it.
    let mut server = Process::start(&["--shutdown-grace=3s"]).await;
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
    // A grace period the second signal cannot miss, however slow the test.
    let mut server = Process::start(&["--shutdown-grace=60s"]).await;
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
    // Room to write 3,000 answers on a loaded machine (at 1 s, one was once
    // cut off mid-write): the process exits as soon as they are delivered.
    let mut server = Process::start(&["--shutdown-grace=30s"]).await;
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
