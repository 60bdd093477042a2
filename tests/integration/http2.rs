//! The HTTP/2 settings that let many callers park on one connection.

use crate::common;

use std::time::Duration;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use common::{H2_ACK, H2_PING, TestServer, read_h2_frame, request, within};
use rendezvous::{Config, config::Http2Config, proto::Role};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

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
        default_wait: Duration::from_secs(30),
        max_wait: Duration::from_secs(30),
        ..common::test_config()
    })
    .await;
    let client = server.grpc().await; // one channel: one connection
    let mut calls = tokio::task::JoinSet::new();
    let burst = |calls: &mut tokio::task::JoinSet<_>, side: &'static str| {
        for i in 0..CALLERS {
            let mut client = client.clone();
            calls.spawn(async move {
                let id = format!("burst-{i}");
                let payload = format!("{side}-{i}");
                let answer = client
                    .wait_for_second_party(rendezvous::proto::WaitForSecondPartyRequest {
                        id,
                        payload: payload.into(),
                        ..Default::default()
                    })
                    .await;
                (i, side, answer)
            });
        }
    };
    burst(&mut calls, "parked"); // every one of them parks...
    server.parked(CALLERS).await;
    burst(&mut calls, "partner"); // ...and then meets its partner
    let mut answered = 0;
    while let Some(call) = within(calls.join_next()).await {
        let (i, side, answer) = call.unwrap();
        let answer = answer.unwrap().into_inner();
        let (role, peer) = match side {
            "parked" => (Role::First, format!("partner-{i}")),
            _ => (Role::Second, format!("parked-{i}")),
        };
        assert_eq!((answer.role(), answer.peer_payload), (role, peer.into()));
        answered += 1;
    }
    assert_eq!(answered, 2 * CALLERS);
    assert_eq!(server.waiting(), 0);
}

/// A TCP proxy for one connection that counts the PINGs the server sends
/// (not their acknowledgements) on their way to the client.
async fn ping_counting_proxy(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pings = Arc::new(AtomicUsize::new(0));
    let counter = pings.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let upstream = tokio::io::copy(&mut client_read, &mut server_write);
        let downstream = async {
            // The server speaks first with frames: no preface that way.
            while let Some(frame) = read_h2_frame(&mut server_read).await {
                if frame.kind == H2_PING && frame.flags & H2_ACK == 0 {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let bytes = common::h2_frame(frame.kind, frame.flags, frame.stream, &frame.payload);
                if client_write.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::join!(upstream, downstream);
    });
    (addr, pings)
}

/// Keepalive PINGs must not cut a live caller that waits through several
/// of them: a live client answers each. The PINGs are counted on the wire,
/// so the test cannot pass without them; the timeout is generous, so a
/// busy machine that answers late is not mistaken for a dead peer.
#[tokio::test]
async fn keepalive_pings_do_not_cut_a_parked_caller() {
    let server = TestServer::with(Config {
        http2: Http2Config {
            keepalive_interval: Duration::from_millis(50),
            keepalive_timeout: Duration::from_secs(10),
            ..Http2Config::default()
        },
        ..common::test_config()
    })
    .await;
    let (proxy, pings) = ping_counting_proxy(server.grpc_addr).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut first = rendezvous::proto::sync_client::SyncClient::new(channel);
    let waiter =
        tokio::spawn(async move { first.wait_for_second_party(request("patient", b"1")).await });
    server.parked(1).await;
    let seen = pings.load(Ordering::SeqCst);
    common::eventually(
        || pings.load(Ordering::SeqCst) >= seen + 3,
        "three more PINGs",
    )
    .await;
    assert_eq!(server.waiting(), 1, "the parked caller is still there");
    let second = server
        .grpc()
        .await
        .wait_for_second_party(request("patient", b"2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.peer_payload, "1");
    let first = within(waiter).await.unwrap().unwrap().into_inner();
    assert_eq!(
        (first.role(), first.peer_payload),
        (Role::First, "2".into())
    );
}

/// One HPACK header field, a literal that is not indexed (RFC 7541, 6.2.2),
/// for names and values under 127 bytes.
fn literal_header(name: &str, value: &str) -> Vec<u8> {
    let mut field = vec![0x00, name.len() as u8];
    field.extend_from_slice(name.as_bytes());
    field.push(value.len() as u8);
    field.extend_from_slice(value.as_bytes());
    field
}

/// `--http2-max-streams`: the server announces the cap in its SETTINGS,
/// and refuses a stream past it (RST_STREAM REFUSED_STREAM) even from a
/// client that ignores the announcement, while the streams under the cap
/// stay open. The windows (`--http2-stream-window`,
/// `--http2-connection-window`) are announced alongside.
#[tokio::test]
async fn a_stream_past_http2_max_streams_is_refused() {
    const CAP: u32 = 4;
    let server = TestServer::with(Config {
        http2: Http2Config {
            max_concurrent_streams: CAP,
            stream_window: 128 << 10,
            connection_window: 2 << 20,
            ..Http2Config::default()
        },
        ..common::test_config()
    })
    .await;
    let stream = TcpStream::connect(server.grpc_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    writer
        .write_all(&common::h2_frame(common::H2_SETTINGS, 0, 0, &[]))
        .await
        .unwrap();

    // The server's SETTINGS carry the cap (identifier 3).
    let settings = within(read_h2_frame(&mut reader)).await.unwrap();
    assert_eq!(settings.kind, common::H2_SETTINGS);
    let setting = |id: u16| {
        settings
            .payload
            .chunks(6)
            .find(|entry| entry[..2] == id.to_be_bytes())
            .map(|entry| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
    };
    assert_eq!(setting(3), Some(CAP), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(setting(4), Some(128 << 10), "SETTINGS_INITIAL_WINDOW_SIZE");
    writer
        .write_all(&common::h2_frame(common::H2_SETTINGS, H2_ACK, 0, &[]))
        .await
        .unwrap();

    // CAP + 1 calls whose bodies never come, so all stay open.
    let headers: Vec<u8> = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/rendezvous.v1.Sync/WaitForSecondParty"),
        (":authority", "x"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .flat_map(|(name, value)| literal_header(name, value))
    .collect();
    for i in 0..=CAP {
        let frame = common::h2_frame(
            common::H2_HEADERS,
            common::H2_END_HEADERS,
            2 * i + 1,
            &headers,
        );
        writer.write_all(&frame).await.unwrap();
    }
    // The connection window grows from the protocol's 65,535 bytes to the
    // configured size with one WINDOW_UPDATE on stream 0.
    let mut connection_window = 65_535;
    let refused = within(async {
        loop {
            let frame = read_h2_frame(&mut reader)
                .await
                .expect("the connection stays open");
            if frame.kind == common::H2_WINDOW_UPDATE && frame.stream == 0 {
                let increment: [u8; 4] = frame.payload[..4].try_into().unwrap();
                connection_window += u32::from_be_bytes(increment);
            }
            if frame.kind == common::H2_RST_STREAM {
                return frame;
            }
            assert_ne!(frame.kind, common::H2_GOAWAY, "{frame:?}");
        }
    })
    .await;
    assert_eq!(connection_window, 2 << 20);
    assert_eq!(refused.stream, 2 * CAP + 1, "only the stream past the cap");
    assert_eq!(refused.payload, 7u32.to_be_bytes(), "REFUSED_STREAM");

    // The server goes on serving others.
    common::assert_pair(
        &server,
        server.client().await,
        server.client().await,
        "after",
    )
    .await;
    drop(reader);
}
