//! A caller whose network silently vanishes (no FIN, no RST) must not stay
//! parked until --max-wait, and must not be paired with a later caller.

use crate::common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{TestServer, assert_timed_out, raw_wait, request, within};
use rendezvous::{Config, config::Http2Config, proto::sync_client::SyncClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A TCP proxy for one connection that forwards both ways until `cut` is
/// set; from then on it reads and drops every byte, keeping both sockets
/// open, as a network that vanished would.
async fn vanishing_proxy(target: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_flag = cut.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let forward = |mut from: tokio::net::tcp::OwnedReadHalf,
                       mut to: tokio::net::tcp::OwnedWriteHalf,
                       cut: Arc<AtomicBool>| async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !cut.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        tokio::join!(
            forward(client_read, server_write, cut_flag.clone()),
            forward(server_read, client_write, cut_flag),
        );
    });
    (addr, cut)
}

#[tokio::test]
async fn a_vanished_grpc_caller_is_removed_by_keepalive_and_never_paired() {
    let server = TestServer::with(Config {
        default_wait: Duration::from_secs(60),
        max_wait: Duration::from_secs(60),
        // A PING after 200 ms of silence, and two seconds to answer it: short
        // enough for the test, long enough that a busy machine's live
        // client is never taken for a dead one.
        http2: Http2Config {
            keepalive_interval: Duration::from_millis(200),
            keepalive_timeout: Duration::from_secs(2),
            ..Http2Config::default()
        },
        ..common::test_config()
    })
    .await;
    let (proxy, cut) = vanishing_proxy(server.grpc_addr).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut vanishing = SyncClient::new(channel);
    let lost =
        tokio::spawn(async move { vanishing.wait_for_second_party(request("gone", b"")).await });
    server.parked(1).await;

    cut.store(true, Ordering::SeqCst);
    // Unanswered PINGs close the connection, which drops the waiter: within
    // interval + timeout, far sooner than the 60 s --max-wait.
    server.parked(0).await;
    lost.abort();

    // The next caller with that id waits on its own, and times out.
    assert_timed_out(&within(raw_wait(server.grpc_addr, "gone", b"", "100m")).await);
    assert_eq!(server.waiting(), 0);
}
