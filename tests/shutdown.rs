//! Graceful shutdown, in process and in a real process with real signals.

mod common;

use std::process::Stdio;

use common::{TestServer, request, within};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
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

/// The binary, started as users start it, with its addresses read from its
/// own startup log line.
struct Process {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    grpc: String,
    http: String,
}

impl Process {
    async fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rendezvous"))
            .args(["--grpc-addr=127.0.0.1:0", "--http-addr=127.0.0.1:0"])
            .args(["--log-format=json", "--shutdown-grace=1s", "--max-wait=30s"])
            .env("RUST_LOG", "info,rendezvous::service=debug")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = within(Self::line_with(&mut lines, "listening")).await;
        let field = |name: &str| listening["fields"][name].as_str().unwrap().to_owned();
        let (grpc, http) = (field("grpc"), field("http"));
        Self {
            child,
            lines,
            grpc,
            http,
        }
    }

    async fn line_with(
        lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
        message: &str,
    ) -> serde_json::Value {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the server is still running");
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            if event["fields"]["message"] == message {
                return event;
            }
        }
    }

    async fn next(&mut self, message: &str) -> serde_json::Value {
        within(Self::line_with(&mut self.lines, message)).await
    }

    /// A gRPC connection to the process.
    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[tokio::test]
async fn sigterm_answers_parked_callers_and_exits_zero_within_the_grace_period() {
    let mut server = Process::start().await;
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
    let mut server = Process::start().await;
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
