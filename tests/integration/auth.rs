//! Bearer tokens with namespaces, over both protocols.

use crate::common;

use std::{io::Write, time::Duration};

use bytes::Bytes;
use common::{RawGrpcAnswer, TestServer, assert_timed_out, raw_grpc_call, within};
use rendezvous::{
    Config,
    proto::{Role, WaitForSecondPartyRequest},
};
use tonic::{Code, metadata::MetadataValue};

const ALPHA: &str = "alpha-token-0123456789";
const ALPHA_TOO: &str = "alpha-second-token-0123";
const BETA: &str = "beta-token-0123456789";

fn token_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

async fn server_with_tokens(file: &tempfile::NamedTempFile) -> TestServer {
    TestServer::with(Config {
        auth_token_file: Some(file.path().to_owned()),
        max_wait: Duration::from_secs(5),
        ..common::test_config()
    })
    .await
}

fn request(
    id: &str,
    payload: &'static [u8],
    token: Option<&str>,
) -> tonic::Request<WaitForSecondPartyRequest> {
    let mut request = common::request(id, payload);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A call with `token` that the server gives up on after 100 ms: timed out
/// (let in, and nobody came) or refused. Only the server enforces the wait.
async fn raw_call_with(addr: std::net::SocketAddr, id: &str, token: &str) -> RawGrpcAnswer {
    let bearer = format!("Bearer {token}");
    within(raw_grpc_call(
        addr,
        &[("grpc-timeout", "100m"), ("authorization", &bearer)],
        WaitForSecondPartyRequest {
            id: id.into(),
            payload: Bytes::new(),
            ..Default::default()
        },
    ))
    .await
}

fn assert_refused(answer: &RawGrpcAnswer) {
    assert_eq!(answer.grpc_status, "16", "{answer:?}");
    assert_eq!(answer.grpc_message, "the bearer token is not valid");
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_on_both_protocols() {
    let file = token_file(&format!("{ALPHA} alpha\n"));
    let server = server_with_tokens(&file).await;

    let mut grpc = server.grpc().await;
    let missing = grpc
        .wait_for_second_party(request("x", b"", None))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(
        missing.message(),
        "missing credentials: send the header `authorization: Bearer <token>`"
    );
    let wrong = grpc
        .wait_for_second_party(request("x", b"", Some("not-the-token-at-all")))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), "the bearer token is not valid");

    let http = common::http_client();
    let url = server.url("/wait-for-second-party/x");
    let response = http.post(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="rendezvous""#
    );
    let response = http
        .post(&url)
        .bearer_auth("not-the-token-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="rendezvous", error="invalid_token""#
    );
    assert_eq!(
        response.text().await.unwrap(),
        "the bearer token is not valid"
    );
    assert_eq!(server.waiting(), 0);
}

/// Probes, metrics and reflection need no token, so that meshes, load
/// balancers and Prometheus can reach them.
#[tokio::test]
async fn probes_metrics_and_reflection_stay_open_with_tokens_on() {
    let file = token_file(&format!("{ALPHA} alpha\n"));
    let server = server_with_tokens(&file).await;
    let http = common::http_client();
    for path in ["/healthz", "/readyz"] {
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.unwrap(), "OK", "{path}");
    }
    let metrics = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("rendezvous_parked_callers"), "{text}");

    common::assert_serving(server.channel().await).await;

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a list: {response:?}");
    };
    assert!(
        list.service.iter().any(|s| s.name == "rendezvous.v1.Sync"),
        "{list:?}"
    );
}

#[tokio::test]
async fn namespaces_keep_tenants_apart_and_tokens_of_one_namespace_meet() {
    let file = token_file(&format!("{ALPHA} alpha\n{ALPHA_TOO} alpha\n{BETA} beta\n"));
    let server = server_with_tokens(&file).await;
    let mut waiter = server.grpc().await;
    let alpha = tokio::spawn(async move {
        waiter
            .wait_for_second_party(request("shared-id", b"alpha's secret", Some(ALPHA)))
            .await
    });
    server.parked(1).await;

    // Another tenant with the same id does not reach alpha's meeting: it
    // waits on its own, and times out.
    assert_timed_out(&raw_call_with(server.grpc_addr, "shared-id", BETA).await);
    assert_eq!(server.waiting(), 1, "alpha is still waiting");

    // A second token for the same namespace does, over HTTP too, and the
    // payloads cross.
    let response = common::http_client()
        .post(server.url("/wait-for-second-party/shared-id"))
        .bearer_auth(ALPHA_TOO)
        .header("accept", "application/json")
        .body("alpha's other half")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = common::JsonBody::json_body(response).await;
    assert_eq!(body["role"], "ROLE_SECOND");
    assert_eq!(body["peerPayload"], "YWxwaGEncyBzZWNyZXQ="); // "alpha's secret"
    let alpha = within(alpha).await.unwrap().unwrap().into_inner();
    assert_eq!(alpha.role(), Role::First);
    assert_eq!(alpha.peer_payload, "alpha's other half");
}

#[tokio::test]
async fn a_bad_token_file_is_a_clear_startup_error() {
    let file = token_file("tiny beta\n");
    let error = rendezvous::Application::build(Config {
        auth_token_file: Some(file.path().to_owned()),
        ..common::test_config()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.ends_with("line 1: the token is shorter than 16 characters"),
        "{error}"
    );
    assert!(!error.contains("tiny"), "the token never shows: {error}");
}

/// SIGHUP reloads the token file in a running server; a bad file on reload
/// keeps the old tokens and logs an error.
#[tokio::test]
async fn sighup_reloads_the_token_file_and_a_bad_one_keeps_the_old_tokens() {
    let file = token_file(&format!("{ALPHA} alpha\n"));
    let path = file.path().to_str().unwrap().to_owned();
    let mut server = common::Process::start(&["--auth-token-file", &path]).await;
    let addr = server.grpc.parse().unwrap();
    // Let in (and timed out, with nobody there) versus refused.
    assert_timed_out(&raw_call_with(addr, "reload", ALPHA).await);
    assert_refused(&raw_call_with(addr, "reload", BETA).await);

    std::fs::write(&path, format!("{BETA} beta\n")).unwrap();
    server.signal("HUP");
    let logged = server.next("reloaded the token file").await;
    assert_eq!(logged["fields"]["tokens"], 1);
    assert_refused(&raw_call_with(addr, "reload", ALPHA).await);
    assert_timed_out(&raw_call_with(addr, "reload", BETA).await);

    std::fs::write(&path, "tiny\n").unwrap();
    server.signal("HUP");
    let logged = server.next("kept the old tokens").await;
    assert_eq!(logged["level"], "ERROR");
    assert!(!logged.to_string().contains("tiny"), "{logged}");
    assert_timed_out(&raw_call_with(addr, "reload", BETA).await);
    assert_refused(&raw_call_with(addr, "reload", ALPHA).await);
}
