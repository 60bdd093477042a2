//! Limits that keep any input from exhausting the server: the caps on
//! waiting callers and on connections, and the slowloris timeout.

use crate::common;

use std::time::Duration;

use common::{TestServer, assert_timed_out, raw_wait, request, within};
use rendezvous::Config;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
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
    let body = common::JsonBody::json_body(response).await;
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
    let waiter = within(waiter).await.unwrap().unwrap().into_inner();
    assert_eq!(waiter.role(), rendezvous::proto::Role::First);
    assert_eq!(waiter.peer_payload, "");

    // And the place is free again: the next caller waits (and, alone, times
    // out) instead of being refused.
    assert_timed_out(&within(raw_wait(server.grpc_addr, "another", b"", "100m")).await);
}

#[tokio::test]
async fn past_max_connections_new_connections_are_turned_away_with_a_reason() {
    let server = TestServer::with(Config {
        max_connections: 1,
        ..common::test_config()
    })
    .await;
    // The one allowed connection, held open (keep-alive).
    let mut held = TcpStream::connect(server.http_addr).await.unwrap();
    held.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 64];
    let n = held.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));

    let mut refused = TcpStream::connect(server.http_addr).await.unwrap();
    let mut answer = String::new();
    within(refused.read_to_string(&mut answer)).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    assert!(
        answer.ends_with(
            "\r\n\r\nthe server has --max-connections connections open; retry in a moment\n"
        ),
        "{answer}"
    );

    // The cap counts both listeners: the gRPC port turns a client away too
    // (the same plain answer; a gRPC client sees the connection close).
    let mut refused = TcpStream::connect(server.grpc_addr).await.unwrap();
    let mut answer = String::new();
    within(refused.read_to_string(&mut answer)).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );

    // Once the held connection closes, there is room again. The server
    // notices the close asynchronously, so until it does, probes are still
    // turned away: each answer is one or the other, and never anything else.
    drop(held);
    let mut healthy = false;
    for _ in 0..500 {
        let mut probe = TcpStream::connect(server.http_addr).await.unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        // A refused probe may be reset while it is still writing.
        let _ = within(probe.read_to_string(&mut answer)).await;
        if answer.starts_with("HTTP/1.1 200 OK") {
            assert!(answer.ends_with("\r\n\r\nOK"), "{answer}");
            healthy = true;
            break;
        }
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthy, "a connection slot came free");
}

/// Slowloris: a client that sends its request head a byte at a time is cut
/// off once --header-timeout has passed, and so are silent connections on
/// either port and an HTTP/2 preface that stops halfway, on either port; the
/// server keeps pairing others. The timeout is long enough that a live
/// client on a loaded machine always makes it; the stalled ones run side by
/// side, so the test takes it once.
#[tokio::test]
async fn a_request_head_sent_byte_by_byte_is_cut_off() {
    let server = TestServer::with(Config {
        header_timeout: Duration::from_secs(2),
        ..common::test_config()
    })
    .await;
    let dribbled = async {
        let stream = TcpStream::connect(server.http_addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let dribble = tokio::spawn(async move {
            for byte in b"POST /wait-for-second-party/slow HTTP/1.1\r\nhost: x\r\nx-padding: "
                .iter()
                .cycle()
            {
                if writer.write_all(&[*byte]).await.is_err() {
                    return;
                }
                // The experiment, not synchronisation: a byte every 20 ms.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut rest = Vec::new();
        // The server closes the connection, without an answer: the read ends.
        closed_without_an_answer(within(reader.read_to_end(&mut rest)).await, &rest);
        dribble.abort();
    };
    let stalled = |addr, start: &'static [u8]| async move {
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(start).await.unwrap();
        let mut nothing = Vec::new();
        closed_without_an_answer(within(stalled.read_to_end(&mut nothing)).await, &nothing);
    };
    tokio::join!(
        dribbled,
        stalled(server.http_addr, b""),
        stalled(server.grpc_addr, b""),
        stalled(server.grpc_addr, b"PRI * HTTP/2.0\r\n"),
        stalled(server.http_addr, b"PRI * HTTP/2.0\r\n"),
    );
    assert_eq!(server.waiting(), 0);

    let http = common::http_client();
    let url = server.url("/wait-for-second-party/fine");
    let first = tokio::spawn(http.post(&url).body("1").send());
    server.parked(1).await;
    let second = http.post(&url).body("2").send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.text().await.unwrap(), "Synced");
    let first = within(first).await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "Synced");
}

/// The end of a connection the server cut off: end of stream or a reset,
/// and nothing read before it.
fn closed_without_an_answer(read: std::io::Result<usize>, data: &[u8]) {
    match read {
        Ok(_) => {}
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
    }
    assert_eq!(String::from_utf8_lossy(data), "");
}

/// A request head over 8 KiB is refused (431) before the handler runs, and
/// the server keeps serving.
#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.http_addr).await.unwrap();
    let padding = "x".repeat(16 * 1024);
    let head = format!(
        "POST /wait-for-second-party/big-head HTTP/1.1\r\nhost: x\r\nx-padding: {padding}\r\n\r\n"
    );
    // The server may stop reading (and close) before it has all of it.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = within(stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    assert_eq!(server.waiting(), 0);
    let healthy = common::http_client()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthy.status(), 200);
}

/// An HTTP/2 header list over hyper's 16 KiB limit is refused (431) on both
/// ports, before the handler runs, and the connection keeps serving.
#[tokio::test]
async fn an_oversized_http2_header_list_is_refused() {
    let server = TestServer::start().await;
    for addr in [server.grpc_addr, server.http_addr] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut h2 = h2.ready().await.unwrap();
        let mut head = common::grpc_request_head(addr);
        head.headers_mut()
            .insert("x-padding", "x".repeat(20 * 1024).parse().unwrap());
        let (response, _) = h2.send_request(head, true).unwrap();
        let response = within(response).await.unwrap();
        assert_eq!(response.status(), 431, "{addr}");

        // The same connection, a request of a sane size: answered.
        common::assert_h2_connection_serves(h2, &server, addr, "http").await;
    }
    assert_eq!(server.waiting(), 0);
}

/// `--tcp-keepalive` reaches the accepted sockets of both listeners, as
/// the kernel reports them (`ss` shows the keepalive timer of each).
#[tokio::test]
async fn tcp_keepalive_is_set_on_accepted_connections() {
    let server = TestServer::with(Config {
        tcp_keepalive: Duration::from_secs(77),
        ..common::test_config()
    })
    .await;
    let mut grpc = TcpStream::connect(server.grpc_addr).await.unwrap();
    grpc.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An idle HTTP/1.1 connection that has been served once.
    let mut http = TcpStream::connect(server.http_addr).await.unwrap();
    http.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 15];
    within(http.read_exact(&mut answer)).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200 OK");
    for addr in [server.grpc_addr, server.http_addr] {
        // The server's side of the connection: source port = the listener's.
        let filter = format!("sport = :{}", addr.port());
        let output = tokio::process::Command::new("ss")
            .args(["-tnoH", "state", "established", &filter])
            .output()
            .await
            .expect("ss (iproute2) is installed");
        let output = String::from_utf8_lossy(&output.stdout);
        assert!(output.contains("timer:(keepalive,"), "{addr}: {output}");
        // The first probe is due after at most the configured idle time.
        // As `1min17sec`, or `59sec`.
        let timer = output
            .split("timer:(keepalive,")
            .nth(1)
            .and_then(|rest| rest.split("sec").next())
            .unwrap_or_else(|| panic!("{addr}: {output}"));
        let (minutes, seconds) = timer.split_once("min").unwrap_or(("0", timer));
        let due = minutes.parse::<u64>().unwrap() * 60 + seconds.parse::<u64>().unwrap();
        assert!((60..=77).contains(&due), "{addr}: {output}");
    }
}
