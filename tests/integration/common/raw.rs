//! Bare HTTP/2 and gRPC on the wire, for tests that must send what no
//! client would, or see exactly what the server sent.

use super::*;

/// What a raw gRPC call answered: the status from the headers or trailers.
#[derive(Debug)]
pub struct RawGrpcAnswer {
    pub grpc_status: String,
    pub grpc_message: String,
    pub message: Option<WaitForSecondPartyResponse>,
}

/// A bare HTTP/2 gRPC call with hand-set headers. Unlike a tonic client it
/// enforces no deadline of its own, so whatever it sees came from the server.
pub async fn raw_grpc_call(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    request: WaitForSecondPartyRequest,
) -> RawGrpcAnswer {
    raw_grpc_body(addr, headers, grpc_frame(0, &request)).await
}

/// A call that asks the server to give up after `timeout` (a `grpc-timeout`
/// value such as `"100m"`) and does not enforce it itself: the answer,
/// however late a busy machine makes it, is the server's own.
pub async fn raw_wait(addr: SocketAddr, id: &str, payload: &[u8], timeout: &str) -> RawGrpcAnswer {
    raw_grpc_call(
        addr,
        &[("grpc-timeout", timeout)],
        WaitForSecondPartyRequest {
            id: id.into(),
            payload: Bytes::copy_from_slice(payload),
            ..Default::default()
        },
    )
    .await
}

/// The server's timeout answer: `DEADLINE_EXCEEDED`, nobody came.
pub fn assert_timed_out(answer: &RawGrpcAnswer) {
    assert_eq!(answer.grpc_status, "4", "{answer:?}");
    assert!(
        answer
            .grpc_message
            .starts_with("nobody else arrived with this id within"),
        "{answer:?}"
    );
}

/// One length-prefixed gRPC message; `flag` 1 claims it is compressed.
pub fn grpc_frame(flag: u8, message: &WaitForSecondPartyRequest) -> Vec<u8> {
    let message = message.encode_to_vec();
    let mut frame = vec![flag];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// A bare HTTP/2 gRPC call with any body at all.
pub async fn raw_grpc_body(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    frame: Vec<u8>,
) -> RawGrpcAnswer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    let mut builder = http::Request::post(format!(
        "http://{addr}/rendezvous.v1.Sync/WaitForSecondParty"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = sender
        .send_request(builder.body(Full::new(Bytes::from(frame))).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    let find = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    RawGrpcAnswer {
        grpc_status: find("grpc-status"),
        grpc_message: percent_decode(&find("grpc-message")),
        message: (data.len() > 5).then(|| WaitForSecondPartyResponse::decode(&data[5..]).unwrap()),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// One HTTP/2 frame, as read off the wire by the tests' own proxies and raw
/// clients.
#[derive(Debug)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub const H2_HEADERS: u8 = 0x1;
pub const H2_RST_STREAM: u8 = 0x3;
pub const H2_SETTINGS: u8 = 0x4;
pub const H2_PING: u8 = 0x6;
pub const H2_GOAWAY: u8 = 0x7;
pub const H2_WINDOW_UPDATE: u8 = 0x8;
pub const H2_ACK: u8 = 0x1;
pub const H2_END_HEADERS: u8 = 0x4;

/// Reads one frame (RFC 9113, section 4.1); `None` at the end of the stream.
pub async fn read_h2_frame(reader: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<H2Frame> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload).await.ok()?;
    Some(H2Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Encodes one frame.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}
