//! Bearer tokens with namespaces, over both protocols.

mod common;

use std::{io::Write, time::Duration};

use common::{TestServer, within};
use rendezvous::{Config, proto::WaitForSecondPartyRequest};
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

fn request(id: &str, token: Option<&str>) -> tonic::Request<WaitForSecondPartyRequest> {
    let mut request = common::request(id, b"");
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_on_both_protocols() {
    let file = token_file(&format!("{ALPHA} alpha\n"));
    let server = server_with_tokens(&file).await;

    let mut grpc = server.grpc().await;
    let missing = grpc
        .wait_for_second_party(request("x", None))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(
        missing.message(),
        "missing credentials: send the header `authorization: Bearer <token>`"
    );
    let wrong = grpc
        .wait_for_second_party(request("x", Some("not-the-token-at-all")))
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

    // Probes stay open without a token.
    assert_eq!(
        http.get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    assert!(
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn namespaces_keep_tenants_apart_and_tokens_of_one_namespace_meet() {
    let file = token_file(&format!("{ALPHA} alpha\n{ALPHA_TOO} alpha\n{BETA} beta\n"));
    let server = server_with_tokens(&file).await;
    let mut waiter = server.grpc().await;
    let alpha = tokio::spawn(async move {
        waiter
            .wait_for_second_party(request("shared-id", Some(ALPHA)))
            .await
    });
    server.parked(1).await;

    // Another tenant with the same id does not reach alpha's meeting.
    let mut beta = request("shared-id", Some(BETA));
    beta.set_timeout(Duration::from_millis(300));
    let beta = server
        .grpc()
        .await
        .wait_for_second_party(beta)
        .await
        .unwrap_err();
    assert_eq!(beta.code(), Code::DeadlineExceeded);
    assert_eq!(server.waiting(), 1, "alpha is still waiting");

    // A second token for the same namespace does, over HTTP too.
    let response = common::http_client()
        .post(server.url("/wait-for-second-party/shared-id"))
        .bearer_auth(ALPHA_TOO)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(within(alpha).await.unwrap().is_ok());
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
    let grpc = server.channel().await;
    let code = |token: &'static str| {
        let mut client = rendezvous::proto::sync_client::SyncClient::new(grpc.clone());
        async move {
            let mut call = request("reload", Some(token));
            call.set_timeout(Duration::from_millis(200));
            client.wait_for_second_party(call).await.unwrap_err().code()
        }
    };
    // Let in (and timed out, with nobody there) versus refused.
    assert_eq!(code(ALPHA).await, Code::DeadlineExceeded);
    assert_eq!(code(BETA).await, Code::Unauthenticated);

    std::fs::write(&path, format!("{BETA} beta\n")).unwrap();
    server.signal("HUP");
    server.next("reloaded the token file").await;
    assert_eq!(code(ALPHA).await, Code::Unauthenticated);
    assert_eq!(code(BETA).await, Code::DeadlineExceeded);

    std::fs::write(&path, "tiny\n").unwrap();
    server.signal("HUP");
    let logged = server.next("kept the old tokens").await;
    assert_eq!(logged["level"], "ERROR");
    assert!(!logged.to_string().contains("tiny"), "{logged}");
    assert_eq!(code(BETA).await, Code::DeadlineExceeded);
}
