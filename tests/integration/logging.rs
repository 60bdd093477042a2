//! What the binary logs about a call: at `debug`, its arrival (with its id)
//! and its outcome (protocol, outcome, role, time waited), and the id
//! nowhere else, since an id can be a secret pairing code.

use crate::common;

use common::{Process, within};

#[tokio::test]
async fn a_pair_logs_each_callers_arrival_and_outcome() {
    let mut server = Process::start(&[]).await;
    let http = common::http_client();
    let url = format!(
        "http://{}/wait-for-second-party/secret-code-42",
        server.http
    );
    let first = tokio::spawn(http.post(&url).send());
    let arrived = server.next("arrived").await;
    assert_eq!(arrived["fields"]["id"], "secret-code-42");
    assert_eq!(arrived["span"]["protocol"], "http");
    let second = http.post(&url).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(within(first).await.unwrap().unwrap().status(), 200);

    let mut roles = Vec::new();
    for _ in 0..2 {
        let finished = server.next("finished").await;
        assert_eq!(finished["fields"]["outcome"], "paired", "{finished}");
        assert_eq!(finished["span"]["outcome"], "paired", "{finished}");
        assert_eq!(finished["span"]["protocol"], "http", "{finished}");
        assert!(finished["fields"]["waited"].is_string(), "{finished}");
        assert!(
            !finished.to_string().contains("secret-code-42"),
            "{finished}"
        );
        roles.push(finished["span"]["role"].as_str().unwrap().to_owned());
    }
    roles.sort();
    assert_eq!(roles, ["ROLE_FIRST", "ROLE_SECOND"]);
}

#[tokio::test]
async fn a_timeout_logs_its_outcome_and_wait() {
    let mut server = Process::start(&[]).await;
    let url = format!(
        "http://{}/wait-for-second-party/alone?wait=100ms",
        server.http
    );
    let response = common::http_client().post(&url).send().await.unwrap();
    assert_eq!(response.status(), 408);
    let finished = server.next("finished").await;
    assert_eq!(finished["fields"]["outcome"], "timed_out", "{finished}");
    assert_eq!(finished["fields"]["waited"], "100ms", "{finished}");
    assert!(finished["span"].get("role").is_none(), "{finished}");
}

/// Every refusal leaves a `debug` line that says why, and over which
/// protocol, so a refused caller's complaint can be matched to the server.
#[tokio::test]
async fn a_refused_call_logs_its_reason_and_protocol() {
    let mut server = Process::start(&[]).await;
    let url = format!("http://{}/wait-for-second-party/x?wait=abc", server.http);
    let response = common::http_client().post(&url).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let refused = server.next("refused a call").await;
    assert_eq!(refused["fields"]["protocol"], "http", "{refused}");
    assert_eq!(refused["fields"]["reason"], "invalid_argument", "{refused}");
    assert!(
        refused["fields"]["error"].as_str().unwrap().contains("abc"),
        "{refused}"
    );

    let mut client = rendezvous::proto::sync_client::SyncClient::new(server.channel().await);
    let status = client
        .wait_for_second_party(common::request("", b""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let refused = server.next("refused a call").await;
    assert_eq!(refused["fields"]["protocol"], "grpc", "{refused}");
    assert_eq!(refused["fields"]["reason"], "invalid_argument", "{refused}");
    assert_eq!(refused["fields"]["error"], status.message(), "{refused}");
}

/// Text logs carry no colour codes when stderr is a file or a pipe.
#[tokio::test]
async fn text_logs_to_a_pipe_have_no_colour_codes() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rendezvous"))
        .args([
            "--grpc-addr=127.0.0.1:0",
            "--http-addr=127.0.0.1:0",
            "--log-format=text",
        ])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = within(lines.next_line()).await.unwrap().unwrap();
    assert!(line.contains("listening"), "{line:?}");
    assert!(line.contains(" INFO "), "{line:?}");
    assert!(!line.contains('\u{1b}'), "{line:?}");
}

/// A caller's `traceparent` puts its trace id on its span, and its
/// partner's on the pair: from either side's trace, both lines are found,
/// across protocols. A malformed `traceparent` is ignored, not refused.
#[tokio::test]
async fn trace_ids_from_traceparent_are_logged_on_both_sides_of_a_pair() {
    const GRPC_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const HTTP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut server = Process::start(&[]).await;
    let mut grpc = rendezvous::proto::sync_client::SyncClient::new(server.channel().await);
    let mut request = common::request("traced", b"");
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{GRPC_TRACE}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    let first = tokio::spawn(async move { grpc.wait_for_second_party(request).await });
    server.next("arrived").await;
    let url = format!("http://{}/wait-for-second-party/traced", server.http);
    let second = common::http_client()
        .post(&url)
        .header(
            "traceparent",
            format!("00-{HTTP_TRACE}-00f067aa0ba902b7-00"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    within(first).await.unwrap().unwrap();

    let mut seen = Vec::new();
    for _ in 0..2 {
        let finished = server.next("finished").await;
        let span = &finished["span"];
        seen.push((
            span["protocol"].as_str().unwrap().to_owned(),
            span["trace_id"].as_str().unwrap().to_owned(),
            span["partner_trace_id"].as_str().unwrap().to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("grpc".into(), GRPC_TRACE.into(), HTTP_TRACE.into()),
            ("http".into(), HTTP_TRACE.into(), GRPC_TRACE.into()),
        ]
    );

    // Malformed (uppercase hex): the call goes ahead, without a trace id,
    // and its partner's line names none.
    let url = format!("http://{}/wait-for-second-party/untraced", server.http);
    let malformed = common::http_client()
        .post(&url)
        .header(
            "traceparent",
            format!("00-{}-00f067aa0ba902b7-01", HTTP_TRACE.to_uppercase()),
        )
        .send();
    let first = tokio::spawn(malformed);
    server.next("arrived").await;
    let second = common::http_client().post(&url).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(within(first).await.unwrap().unwrap().status(), 200);
    for _ in 0..2 {
        let finished = server.next("finished").await;
        assert!(finished["span"].get("trace_id").is_none(), "{finished}");
        assert!(
            finished["span"].get("partner_trace_id").is_none(),
            "{finished}"
        );
    }
}
