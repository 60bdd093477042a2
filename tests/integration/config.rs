//! Configuration from the environment: every flag can be set by its
//! environment variable alone, as a container spec would set it. The binary
//! logs the settings in force when it starts listening; this test sets every
//! variable to a value other than its default, and reads them back there.
//! (`src/config.rs` checks that every flag has its variable.)

use crate::common;

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn every_setting_can_come_from_its_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let cert = write("cert.pem", &certified.cert.pem());
    let key = write("key.pem", &certified.signing_key.serialize_pem());
    let tokens = write("tokens", "environment-token-0123 ns\n");
    let password = write("redis-password", "environment-password\n");

    // Each variable, its value, and the field of the startup line that
    // shows it in force.
    let settings: [(&str, &str, &str, serde_json::Value); 26] = [
        ("GRPC_ADDR", "127.0.0.1:0", "grpc", "".into()),
        ("HTTP_ADDR", "127.0.0.1:0", "http", "".into()),
        ("MAX_WAIT", "42s", "max_wait", "42s".into()),
        ("MAX_PAYLOAD", "1KiB", "max_payload", 1024.into()),
        ("LOG_FORMAT", "json", "", "".into()),
        ("SHUTDOWN_GRACE", "3s", "shutdown_grace", "3s".into()),
        ("MAX_WAITERS", "77", "max_waiters", 77.into()),
        ("AUTH_TOKEN_FILE", &tokens, "tokens", true.into()),
        ("TLS_CERT", &cert, "tls", true.into()),
        ("TLS_KEY", &key, "", "".into()),
        ("TLS_CLIENT_CA", &cert, "client_certificates", true.into()),
        ("MAX_CONNECTIONS", "99", "max_connections", 99.into()),
        ("HEADER_TIMEOUT", "4s", "header_timeout", "4s".into()),
        ("TCP_KEEPALIVE", "6s", "tcp_keepalive", "6s".into()),
        (
            "MAX_CONNECTION_AGE",
            "9m",
            "max_connection_age",
            "9m".into(),
        ),
        (
            "MAX_CONNECTION_AGE_GRACE",
            "11s",
            "max_connection_age_grace",
            "11s".into(),
        ),
        ("HTTP2_MAX_STREAMS", "55", "http2_max_streams", 55.into()),
        (
            "HTTP2_CONNECTION_WINDOW",
            "2MiB",
            "http2_connection_window",
            (2 << 20).into(),
        ),
        (
            "HTTP2_STREAM_WINDOW",
            "128KiB",
            "http2_stream_window",
            (128 << 10).into(),
        ),
        (
            "HTTP2_KEEPALIVE_INTERVAL",
            "7s",
            "http2_keepalive_interval",
            "7s".into(),
        ),
        (
            "HTTP2_KEEPALIVE_TIMEOUT",
            "8s",
            "http2_keepalive_timeout",
            "8s".into(),
        ),
        // Nothing listens on port 1: the server starts all the same, not
        // ready, and says which Redis it waits for, its password hidden.
        (
            "REDIS_URL",
            "redis://user:secret@127.0.0.1:1",
            "redis",
            "redis://user:***@127.0.0.1:1".into(),
        ),
        (
            "REDIS_PASSWORD_FILE",
            &password,
            "redis_password_file",
            true.into(),
        ),
        (
            "REDIS_KEY_PREFIX",
            "env:",
            "redis_key_prefix",
            "env:".into(),
        ),
        ("REDIS_TIMEOUT", "750ms", "redis_timeout", "750ms".into()),
        (
            "CORS_ALLOW_ORIGIN",
            "https://a.example,http://localhost:8080",
            "cors_allow_origin",
            "https://a.example,http://localhost:8080".into(),
        ),
    ];
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rendezvous"));
    command
        .env_clear()
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value, _, _) in &settings {
        command.env(format!("RENDEZVOUS_{name}"), value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = common::within(async {
        let mut engine = serde_json::Map::new();
        loop {
            let line = lines.next_line().await.unwrap().expect("the server starts");
            // RENDEZVOUS_LOG_FORMAT=json: every line is JSON.
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            common::settings(&event, &mut engine);
            if event["fields"]["message"] == "listening" {
                let mut fields = event["fields"].as_object().unwrap().clone();
                fields.extend(engine);
                return serde_json::Value::Object(fields);
            }
        }
    })
    .await;
    for (name, _, field, expected) in &settings {
        match *field {
            "" => {}
            "grpc" | "http" => {
                let addr = listening[field].as_str().unwrap();
                assert!(addr.starts_with("127.0.0.1:"), "{name}: {listening}");
            }
            _ => assert_eq!(&listening[field], expected, "{name}: {listening}"),
        }
    }
    child.kill().await.unwrap();
}

/// `--grpc-addr` and `--http-addr` take host names, as users write them.
#[tokio::test]
async fn listen_addresses_can_be_host_names() {
    let server =
        common::Process::start(&["--grpc-addr=localhost:0", "--http-addr=localhost:0"]).await;
    common::assert_serving(server.channel().await).await;
    let response = common::http_client()
        .get(format!("http://{}/healthz", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
