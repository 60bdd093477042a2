//! The HTTP/2 settings that let many callers park on one connection.

mod common;

use std::time::Duration;

use common::{TestServer, request, within};
use rendezvous::{Config, config::Http2Config};

/// Twenty thousand calls arriving at once on one HTTP/2 connection. With
/// h2's budget for small DATA frames at half of hyper's default 1 MiB
/// connection window, such a burst gets the connection closed with GOAWAY
/// ENHANCE_YOUR_CALM "too_many_data_frames", and every caller on it fails
/// (this test fails so with `connection_window: 1 << 20`, and failed at 16
/// MiB too); the default `--http2-connection-window` leaves room for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_callers_park_and_pair_on_one_connection() {
    const CALLERS: usize = 4_000;
    let server = TestServer::with(Config {
        max_wait: Duration::from_secs(30),
        ..common::test_config()
    })
    .await;
    let client = server.grpc().await; // one channel: one connection
    let mut calls = tokio::task::JoinSet::new();
    let burst = |calls: &mut tokio::task::JoinSet<_>| {
        for i in 0..CALLERS {
            let mut client = client.clone();
            let id = format!("burst-{i}");
            calls.spawn(async move { client.wait_for_second_party(request(&id, b"")).await });
        }
    };
    burst(&mut calls); // every one of them parks...
    server.parked(CALLERS).await;
    burst(&mut calls); // ...and then meets its partner
    let mut ok = 0;
    while let Some(call) = within(calls.join_next()).await {
        let answer = call.unwrap();
        assert!(answer.is_ok(), "{answer:?}");
        ok += 1;
    }
    assert_eq!(ok, 2 * CALLERS);
    assert_eq!(server.waiting(), 0);
}

/// Keepalive PINGs must not cut a live caller that waits longer than several
/// PING intervals: a live client answers them.
#[tokio::test]
async fn keepalive_pings_do_not_cut_a_parked_caller() {
    let server = TestServer::with(Config {
        max_wait: Duration::from_secs(5),
        http2: Http2Config {
            keepalive_interval: Duration::from_millis(50),
            keepalive_timeout: Duration::from_millis(50),
            ..Http2Config::default()
        },
        ..common::test_config()
    })
    .await;
    let mut first = server.grpc().await;
    let waiter =
        tokio::spawn(async move { first.wait_for_second_party(request("patient", b"")).await });
    server.parked(1).await;
    // The experiment, not synchronisation: stay parked across ten intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.waiting(), 1, "the parked caller is still there");
    server
        .grpc()
        .await
        .wait_for_second_party(request("patient", b""))
        .await
        .unwrap();
    assert!(within(waiter).await.unwrap().is_ok());
}
