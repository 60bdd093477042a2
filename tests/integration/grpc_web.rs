//! gRPC-Web on the gRPC port, as a browser sends it: HTTP/1.1, the
//! `application/grpc-web+proto` content type, the status in a trailer frame
//! at the end of the body, and CORS for the origins `--cors-allow-origin`
//! names. (`examples/clients/node` checks the same with a real gRPC-Web
//! client, in CI.)

use crate::common;

use bytes::Bytes;
use common::{TestServer, grpc_frame, within};
use prost::Message;
use rendezvous::proto::{Role, WaitForSecondPartyRequest, WaitForSecondPartyResponse};

async fn web_server(origins: &[&str]) -> TestServer {
    TestServer::with(rendezvous::Config {
        cors_allow_origin: origins.iter().map(|o| o.to_string()).collect(),
        ..common::test_config()
    })
    .await
}

/// One gRPC-Web call over HTTP/1.1: the HTTP status, the response message
/// if any, and the trailers from the body's last frame.
async fn web_call(
    server: &TestServer,
    id: &str,
    payload: &'static [u8],
    timeout: Option<&str>,
) -> (u16, Option<WaitForSecondPartyResponse>, String) {
    let request = WaitForSecondPartyRequest {
        id: id.into(),
        payload: Bytes::from_static(payload),
        ..Default::default()
    };
    let mut builder = common::http_client()
        .post(format!(
            "http://{}/rendezvous.v1.Sync/WaitForSecondParty",
            server.grpc_addr
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(grpc_frame(0, &request));
    if let Some(timeout) = timeout {
        builder = builder.header("grpc-timeout", timeout);
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.bytes().await.unwrap();
    let (mut message, mut trailers) = (None, String::new());
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let frame = body.slice(5..5 + len);
        body = body.slice(5 + len..);
        match flag {
            0 => message = Some(WaitForSecondPartyResponse::decode(frame).unwrap()),
            0x80 => trailers = String::from_utf8(frame.to_vec()).unwrap(),
            other => panic!("unexpected frame flag {other}"),
        }
    }
    // A trailers-only answer carries its status in the headers.
    if let Some(status) = headers.get("grpc-status") {
        trailers = format!("grpc-status:{}\r\n", status.to_str().unwrap());
        if let Some(message) = headers.get("grpc-message") {
            let message = percent_encoding::percent_decode(message.as_bytes()).decode_utf8_lossy();
            trailers += &format!("grpc-message:{message}\r\n");
        }
    }
    (status, message, trailers)
}

#[tokio::test]
async fn grpc_web_callers_pair_with_grpc_callers() {
    let server = web_server(&[]).await;
    let waiter = tokio::spawn({
        let server_grpc = server.client().await;
        async move {
            server_grpc
                .wait("web", Bytes::from_static(b"native"), None)
                .await
        }
    });
    server.parked(1).await;
    let (status, answer, trailers) = web_call(&server, "web", b"browser", None).await;
    assert_eq!(status, 200);
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let answer = answer.unwrap();
    assert_eq!(
        (answer.role(), answer.peer_payload),
        (Role::Second, Bytes::from_static(b"native"))
    );
    let native = within(waiter).await.unwrap().unwrap();
    assert_eq!(native.peer().payload, "browser");
}

#[tokio::test]
async fn a_lone_grpc_web_caller_gets_deadline_exceeded() {
    let server = web_server(&[]).await;
    let (status, answer, trailers) = web_call(&server, "alone", b"", Some("200m")).await;
    assert_eq!(status, 200);
    assert!(answer.is_none());
    assert!(trailers.contains("grpc-status:4"), "{trailers:?}");
    assert!(trailers.contains("nobody else arrived"), "{trailers:?}");
    assert_eq!(server.waiting(), 0);
}

/// A preflight from an allowed origin is answered with what the browser
/// needs; one from any other origin gets no permission.
#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let server = web_server(&["https://app.example"]).await;
    let preflight = |origin: &'static str| {
        common::http_client()
            .request(
                reqwest::Method::OPTIONS,
                format!(
                    "http://{}/rendezvous.v1.Sync/WaitForSecondParty",
                    server.grpc_addr
                ),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,grpc-timeout",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(allowed.status(), 200);
    let header = |name: &str| {
        allowed
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        header("access-control-allow-methods").as_deref(),
        Some("POST")
    );
    // A browser may reuse the answer for a day.
    assert_eq!(header("access-control-max-age").as_deref(), Some("86400"));
    let allowed_headers = header("access-control-allow-headers").unwrap();
    for name in [
        "content-type",
        "x-grpc-web",
        "grpc-timeout",
        "authorization",
    ] {
        assert!(allowed_headers.contains(name), "{allowed_headers}");
    }

    let other = preflight("https://evil.example").await.unwrap();
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        other.headers()
    );

    // The call itself, from the allowed origin, exposes the status headers.
    let response = common::http_client()
        .post(format!(
            "http://{}/rendezvous.v1.Sync/WaitForSecondParty",
            server.grpc_addr
        ))
        .header("origin", "https://app.example")
        .header("content-type", "application/grpc-web+proto")
        .header("grpc-timeout", "100m")
        .body(grpc_frame(0, &WaitForSecondPartyRequest::default()))
        .send()
        .await
        .unwrap();
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("grpc-status"), "{exposed}");
    assert!(exposed.contains("grpc-message"), "{exposed}");
}

/// Plain gRPC needs HTTP/2: over HTTP/1.1 the port says so.
#[tokio::test]
async fn grpc_over_http1_is_refused_with_a_reason() {
    let server = web_server(&[]).await;
    let response = common::http_client()
        .post(format!(
            "http://{}/rendezvous.v1.Sync/WaitForSecondParty",
            server.grpc_addr
        ))
        .header("content-type", "application/grpc")
        .body(grpc_frame(0, &WaitForSecondPartyRequest::default()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 505);
    let body = response.text().await.unwrap();
    assert!(body.starts_with("gRPC needs HTTP/2"), "{body}");
    assert_eq!(server.waiting(), 0);
}
