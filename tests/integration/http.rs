//! The HTTP gateway with a real HTTP client: the legacy answers byte for byte,
//! JSON on request, every error with its status and message, and probes.

use crate::common;

use std::time::Duration;

use common::{JsonBody, TestServer, within};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEXT: &str = "text/plain; charset=utf-8";

async fn text_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn two_callers_pair_with_the_legacy_answer() {
    let server = TestServer::start().await;
    let http = common::http_client();
    let url = server.url("/wait-for-second-party/legacy");

    let first = tokio::spawn(http.post(&url).send());
    server.parked(1).await;
    let second = http.post(&url).send().await.unwrap();
    let first = within(first).await.unwrap().unwrap();

    for response in [first, second] {
        assert_eq!(
            text_of(response).await,
            (StatusCode::OK, TEXT.into(), "Synced".into())
        );
    }
}

#[tokio::test]
async fn nobody_coming_is_408_timeout() {
    let server = TestServer::with(rendezvous::Config {
        max_wait: Duration::from_millis(300),
        ..common::test_config()
    })
    .await;
    let response = within(
        common::http_client()
            .post(server.url("/wait-for-second-party/alone"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(
        text_of(response).await,
        (StatusCode::REQUEST_TIMEOUT, TEXT.into(), "Timeout".into())
    );
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn wait_shortens_the_wait() {
    let server = TestServer::with(rendezvous::Config {
        default_wait: Duration::from_secs(30),
        max_wait: Duration::from_secs(30),
        ..common::test_config()
    })
    .await;
    let response = within(
        common::http_client()
            .post(server.url("/wait-for-second-party/short?wait=200ms"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(response.text().await.unwrap(), "Timeout");
}

/// `?wait=` is honoured up to `--max-wait`; past it the wait is cut there,
/// the legacy plain body stays `Timeout` byte for byte, and the JSON
/// message says the cap cut it. Without `?wait=`, `--default-wait`.
#[tokio::test]
async fn wait_is_honoured_up_to_max_wait() {
    let server = TestServer::with(rendezvous::Config {
        default_wait: Duration::from_millis(200),
        max_wait: Duration::from_millis(400),
        ..common::test_config()
    })
    .await;
    let http = common::http_client();
    let post = |path: &str, json: bool| {
        let mut request = http.post(server.url(path));
        if json {
            request = request.header("accept", "application/json");
        }
        within(request.send())
    };
    for path in [
        "/wait-for-second-party/legacy",
        "/wait-for-second-party/long?wait=1h",
    ] {
        assert_eq!(
            text_of(post(path, false).await.unwrap()).await,
            (StatusCode::REQUEST_TIMEOUT, TEXT.into(), "Timeout".into()),
            "{path}"
        );
    }
    for (path, message) in [
        (
            "/wait-for-second-party/legacy",
            "nobody else arrived with this id within 200ms",
        ),
        (
            "/wait-for-second-party/short?wait=300ms",
            "nobody else arrived with this id within 300ms",
        ),
        (
            "/wait-for-second-party/long?wait=1h",
            "nobody else arrived with this id within 400ms, the server's --max-wait, which cut \
             the longer wait this call asked for",
        ),
    ] {
        let response = post(path, true).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT, "{path}");
        assert_eq!(
            response.json_body().await,
            serde_json::json!({"code": "DEADLINE_EXCEEDED", "message": message}),
        );
    }
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn json_carries_role_time_waited_and_the_peers_payload_both_ways() {
    let server = TestServer::start().await;
    let http = common::http_client();
    let url = server.url("/wait-for-second-party/json");

    let first = tokio::spawn(
        http.post(&url)
            .header("accept", "application/json")
            .body("payload one")
            .send(),
    );
    server.parked(1).await;
    let second = http
        .post(&url)
        .header("accept", "application/json")
        .body(vec![0u8, 255, 7])
        .send()
        .await
        .unwrap();
    let first = within(first).await.unwrap().unwrap();

    for response in [&first, &second] {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
    }
    let first: serde_json::Value = first.json_body().await;
    let second: serde_json::Value = second.json_body().await;
    assert_eq!(first["role"], "ROLE_FIRST");
    assert_eq!(first["peerPayload"], "AP8H"); // base64 of [0, 255, 7]
    assert_eq!(second["role"], "ROLE_SECOND");
    assert_eq!(second["peerPayload"], "cGF5bG9hZCBvbmU="); // "payload one"
    assert_eq!(second["waited"], "0s");
    let waited = first["waited"].as_str().unwrap();
    let seconds: f64 = waited.strip_suffix('s').unwrap().parse().unwrap();
    assert!(seconds > 0.0, "the first caller waited: {waited}");
}

#[tokio::test]
async fn json_errors_say_what_is_wrong() {
    let server = TestServer::start().await;
    let response = common::http_client()
        .post(server.url("/wait-for-second-party/alone?wait=100ms"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let body = response.json_body().await;
    assert_eq!(body["code"], "DEADLINE_EXCEEDED");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("nobody else arrived"),
        "{body}"
    );
}

#[tokio::test]
async fn every_bad_request_has_its_status_and_a_message() {
    let server = TestServer::start().await;
    let http = common::http_client();
    let long_id = "x".repeat(257);
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            http.post(server.url("/wait-for-second-party/a?wait=soon")),
            StatusCode::BAD_REQUEST,
            "?wait=soon is not a duration: it does not start with a number; use a number and a unit, such as 250ms, 2s or 1m",
        ),
        (
            http.post(server.url("/wait-for-second-party/")),
            StatusCode::BAD_REQUEST,
            "id is empty: send the meeting id both parties agreed on",
        ),
        (
            http.post(server.url(&format!("/wait-for-second-party/{long_id}"))),
            StatusCode::BAD_REQUEST,
            "id is 257 bytes long; the limit is 256 bytes",
        ),
        (
            http.post(server.url("/wait-for-second-party/%FF")),
            StatusCode::BAD_REQUEST,
            "bad id: the path segment is not valid UTF-8 once percent-decoded",
        ),
        (
            http.post(server.url("/wait-for-second-party/big"))
                .body(vec![0u8; 64 * 1024 + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload is 65537 bytes; the limit is 65536 bytes (--max-payload)",
        ),
        (
            http.get(server.url("/wait-for-second-party/a")),
            StatusCode::METHOD_NOT_ALLOWED,
            "GET is not allowed on /wait-for-second-party/{id}; use POST, DELETE",
        ),
        (
            http.put(server.url("/wait-for-second-party/a")),
            StatusCode::METHOD_NOT_ALLOWED,
            "PUT is not allowed on /wait-for-second-party/{id}; use POST, DELETE",
        ),
        (
            http.post(server.url("/wait-for-second-party/a/b")),
            StatusCode::NOT_FOUND,
            "no such route; the rendezvous endpoints are POST /wait-for-second-party/{id} and \
             POST /wait-for-parties/{id}?parties=N, and DELETE on either with ?attempt_key=K",
        ),
        (
            http.post(server.url("/")),
            StatusCode::NOT_FOUND,
            "no such route; the rendezvous endpoints are POST /wait-for-second-party/{id} and \
             POST /wait-for-parties/{id}?parties=N, and DELETE on either with ?attempt_key=K",
        ),
        (
            http.post(server.url("/wait-for-parties/a")),
            StatusCode::BAD_REQUEST,
            "?parties=N is required: how many callers make up the group, at least 2",
        ),
        (
            http.post(server.url("/wait-for-parties/a?parties=three")),
            StatusCode::BAD_REQUEST,
            "?parties=three is not a number of callers; use a whole number such as 3",
        ),
        (
            http.post(server.url("/wait-for-parties/a?parties=-3")),
            StatusCode::BAD_REQUEST,
            "?parties=-3 is not a number of callers; use a whole number such as 3",
        ),
        (
            http.post(server.url("/wait-for-parties/a?parties=1")),
            StatusCode::BAD_REQUEST,
            "parties is 1; a group needs at least 2 callers",
        ),
        (
            http.post(server.url("/wait-for-parties/a?parties=65")),
            StatusCode::BAD_REQUEST,
            "parties is 65; the limit is 64 (--max-parties)",
        ),
        (
            http.post(server.url("/wait-for-parties/?parties=3")),
            StatusCode::BAD_REQUEST,
            "id is empty: send the meeting id both parties agreed on",
        ),
        (
            http.get(server.url("/wait-for-parties/a?parties=3")),
            StatusCode::METHOD_NOT_ALLOWED,
            "GET is not allowed on /wait-for-parties/{id}; use POST, DELETE",
        ),
        (
            http.post(server.url("/healthz")),
            StatusCode::METHOD_NOT_ALLOWED,
            "POST is not allowed on /healthz; use GET, HEAD",
        ),
        (
            http.delete(server.url("/wait-for-second-party/a")),
            StatusCode::BAD_REQUEST,
            "attempt key is empty: a wait is withdrawn by the attempt key it was sent with, \
             so only a wait sent with one can be",
        ),
        (
            http.delete(server.url("/wait-for-parties/?attempt_key=k")),
            StatusCode::BAD_REQUEST,
            "id is empty: send the meeting id both parties agreed on",
        ),
        (
            http.delete(server.url("/wait-for-parties/a?attempt_key=k&wait=soon")),
            StatusCode::BAD_REQUEST,
            "?wait=soon is not a duration: it does not start with a number; use a number and \
             a unit, such as 250ms, 2s or 1m",
        ),
    ];
    for (request, status, message) in cases {
        let response = request.send().await.unwrap();
        let allow = response.headers().get("allow").cloned();
        let (got_status, content_type, body) = text_of(response).await;
        assert_eq!((got_status, body.as_str()), (status, message));
        assert_eq!(content_type, TEXT);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            let expected = if message.contains("healthz") {
                "GET, HEAD"
            } else {
                "POST, DELETE"
            };
            assert_eq!(allow.unwrap(), expected);
        }
    }
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_refused_without_reading_it_all() {
    let server = TestServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    // Chunked, so the size is not known up front: the limit applies as it streams.
    stream
        .write_all(
            b"POST /wait-for-second-party/chunked HTTP/1.1\r\nhost: x\r\n\
              transfer-encoding: chunked\r\n\r\n10000\r\n",
        )
        .await
        .unwrap();
    stream.write_all(&[b'a'; 0x10000]).await.unwrap();
    stream
        .write_all(b"\r\n10\r\n0123456789abcdef\r\n")
        .await
        .unwrap();
    // The rest of the body never comes: the answer must not wait for it.
    // Its head and body may arrive in separate reads.
    let body = "request body is over the limit of 65536 bytes (--max-payload)";
    let mut answer = Vec::new();
    within(async {
        let mut buf = [0u8; 4096];
        while !answer.ends_with(body.as_bytes()) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("\r\n\r\nrequest body is over the limit of 65536 bytes (--max-payload)"),
        "{answer}"
    );
}

/// A body the server cannot read (here, a chunk size that is not hex) is a
/// 400 that says so, not a 413 or a call.
#[tokio::test]
async fn an_unreadable_body_is_400() {
    let server = TestServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /wait-for-second-party/bad-chunk HTTP/1.1\r\nhost: x\r\n\
              transfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = within(stream.read_to_string(&mut answer)).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\n\r\ncould not read the request body: "),
        "{answer}"
    );
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn percent_encoded_ids_are_decoded() {
    let server = TestServer::start().await;
    let http = common::http_client();
    let first = tokio::spawn(
        http.post(server.url("/wait-for-second-party/a%20b%2Fc"))
            .body("from http")
            .send(),
    );
    server.parked(1).await;
    // The same id over gRPC, decoded: "a b/c".
    let second = server
        .grpc()
        .await
        .wait_for_second_party(common::request("a b/c", b"from grpc"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.role(), rendezvous::proto::Role::Second);
    assert_eq!(second.peer_payload, "from http");
    assert_eq!(
        text_of(within(first).await.unwrap().unwrap()).await,
        (StatusCode::OK, TEXT.into(), "Synced".into())
    );
}

#[tokio::test]
async fn a_closed_connection_leaves_no_waiter_behind() {
    let server = TestServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    stream
        .write_all(b"POST /wait-for-second-party/hang-up HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nstale")
        .await
        .unwrap();
    server.parked(1).await;
    drop(stream);
    server.parked(0).await;

    // The next caller waits instead of being told "Synced" with nobody there.
    let response = common::http_client()
        .post(server.url("/wait-for-second-party/hang-up?wait=100ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
}

#[tokio::test]
async fn probes_answer_while_serving() {
    let server = TestServer::start().await;
    let http = common::http_client();
    for path in ["/healthz", "/readyz"] {
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(
            text_of(response).await,
            (StatusCode::OK, TEXT.into(), "OK".into())
        );
    }
}

/// The legacy service also spoke HTTP/2 with prior knowledge (h2c) on this
/// port; so does this one, and a payload at the limit goes through.
#[tokio::test]
async fn http2_prior_knowledge_pairs_with_a_payload_at_the_limit() {
    let server = TestServer::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = server.url("/wait-for-second-party/h2c");
    let full = vec![7u8; 64 * 1024];
    let first = tokio::spawn(h2.post(&url).body(full.clone()).send());
    server.parked(1).await;
    let second = h2
        .post(&url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(second.version(), reqwest::Version::HTTP_2);
    assert_eq!(second.status(), StatusCode::OK);
    let body = second.json_body().await;
    use base64::Engine as _;
    let peer = base64::engine::general_purpose::STANDARD
        .decode(body["peerPayload"].as_str().unwrap())
        .unwrap();
    assert_eq!(peer, full);
    let first = within(first).await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.text().await.unwrap(), "Synced");
}

/// `?parties=` means something on the group route's `POST` alone: the pair
/// route ignores it, as the old service ignored every parameter it did not
/// know, and a withdrawal on either route names its wait by id and key.
#[tokio::test]
async fn parties_is_read_only_where_a_group_is_asked_for() {
    let server = TestServer::start().await;
    let http = common::http_client();
    let pair = within(
        http.post(server.url("/wait-for-second-party/p?parties=x&wait=200ms"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(
        text_of(pair).await,
        (StatusCode::REQUEST_TIMEOUT, TEXT.into(), "Timeout".into())
    );
    let withdrawn = within(
        http.delete(server.url("/wait-for-parties/g?parties=x&attempt_key=k"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(
        text_of(withdrawn).await,
        (StatusCode::OK, TEXT.into(), "Unknown".into())
    );
}
