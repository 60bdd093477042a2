//! `rendezvous wait` and `rendezvous probe`, run as shells and CI jobs run
//! them: the real binary against a real server, checking stdout, stderr and
//! each documented exit code.

use crate::common;

use std::process::{Output, Stdio};

use common::{Process, within};
use tokio::{io::AsyncWriteExt, process::Command};

/// The binary, with none of the client's variables inherited from the
/// environment the tests run in.
fn rendezvous(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rendezvous"));
    command.args(args).kill_on_drop(true);
    for name in [
        "RENDEZVOUS_SERVER",
        "RENDEZVOUS_TLS_CA",
        "RENDEZVOUS_CLIENT_CERT",
        "RENDEZVOUS_CLIENT_KEY",
        "RENDEZVOUS_TLS_SERVER_NAME",
        "RENDEZVOUS_TOKEN_FILE",
        "RENDEZVOUS_TIMEOUT",
        "TRACEPARENT",
    ] {
        command.env_remove(name);
    }
    command
}

async fn run(args: &[&str]) -> Output {
    within(rendezvous(args).output()).await.unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&output.stdout)))
}

/// Three `wait --parties 3` form a barrier: each exits 0 once all three
/// are there, with its position and every payload in `--json`, or a line
/// on stderr without it.
#[tokio::test]
async fn three_waits_with_parties_form_a_group() {
    let mut server = Process::start(&[]).await;
    let grpc = server.grpc.clone();
    let member = |payload: &str, json: bool| {
        let mut args = vec![
            "wait",
            "barrier",
            "--server",
            &grpc,
            "--parties",
            "3",
            "--payload",
            payload,
        ];
        if json {
            args.push("--json");
        }
        rendezvous(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = member("a", true);
    server.next("arrived").await;
    let second = member("b", false);
    server.next("arrived").await;
    let third = within(member("c", true).wait_with_output()).await.unwrap();
    let first = within(first.wait_with_output()).await.unwrap();
    let second = within(second.wait_with_output()).await.unwrap();
    for output in [&first, &second, &third] {
        assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
    }
    // "a", "b", "c" in base64, in arrival order.
    let payloads = serde_json::json!(["YQ==", "Yg==", "Yw=="]);
    assert_eq!(json(&first)["payloads"], payloads);
    assert_eq!(json(&first)["position"], 0);
    assert_eq!(json(&third)["payloads"], payloads);
    assert_eq!(json(&third)["position"], 2);
    assert!(second.stdout.is_empty());
    assert!(
        stderr(&second).starts_with("completed a group of 3 at position 1 after "),
        "{}",
        stderr(&second)
    );
}

#[tokio::test]
async fn two_waits_pair_and_print_each_others_payload() {
    let mut server = Process::start(&[]).await;
    let first = rendezvous(&[
        "wait",
        "ci-job",
        "--server",
        &server.grpc,
        "--payload",
        "from first",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    server.next("arrived").await;

    // The second reads its payload, bytes that are not UTF-8, from stdin.
    let mut second = rendezvous(&[
        "wait",
        "ci-job",
        "--server",
        &server.grpc,
        "--payload-file",
        "-",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = second.stdin.take().unwrap();
    stdin.write_all(b"\xff\x00raw\n").await.unwrap();
    drop(stdin);

    let second = within(second.wait_with_output()).await.unwrap();
    let first = within(first.wait_with_output()).await.unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(first.stdout, b"\xff\x00raw\n", "raw, with nothing added");
    assert_eq!(second.stdout, b"from first");
    assert!(
        stderr(&first).starts_with("paired as the first party after "),
        "{}",
        stderr(&first)
    );
    assert_eq!(stderr(&second), "paired as the second party after 0s\n");
}

#[tokio::test]
async fn json_prints_the_answer_in_proto3_json() {
    let mut server = Process::start(&[]).await;
    let first = rendezvous(&[
        "wait",
        "j",
        "--server",
        &server.grpc,
        "--json",
        "--payload",
        "hello",
    ])
    .output();
    let first = tokio::spawn(first);
    server.next("arrived").await;
    let second = run(&[
        "wait",
        "j",
        "--server",
        &server.grpc,
        "--json",
        "--payload",
        "world",
    ])
    .await;
    let first = within(first).await.unwrap().unwrap();

    let (first, second) = (json(&first), json(&second));
    assert_eq!(first["role"], "ROLE_FIRST");
    assert_eq!(first["peerPayload"], "d29ybGQ=", "world, in base64");
    assert!(first["waited"].as_str().unwrap().ends_with('s'), "{first}");
    assert_eq!(second["role"], "ROLE_SECOND");
    assert_eq!(second["peerPayload"], "aGVsbG8=", "hello, in base64");
    assert_eq!(second["waited"], "0s");
}

/// Exit 3 when the server's --max-wait runs out (with the server's own
/// message, on stderr or as JSON), and when the caller's --timeout does.
#[tokio::test]
async fn a_lone_wait_times_out_with_exit_3() {
    let server = Process::start(&["--max-wait=200ms"]).await;
    let alone = run(&["wait", "alone", "--server", &server.grpc]).await;
    assert_eq!(alone.status.code(), Some(3));
    assert!(alone.stdout.is_empty());
    assert_eq!(
        stderr(&alone),
        "rendezvous: DEADLINE_EXCEEDED: nobody else arrived with this id within 200ms\n"
    );

    let alone = run(&["wait", "alone", "--server", &server.grpc, "--json"]).await;
    assert_eq!(alone.status.code(), Some(3));
    let answer = json(&alone);
    assert_eq!(answer["code"], "DEADLINE_EXCEEDED");
    assert_eq!(
        answer["message"],
        "nobody else arrived with this id within 200ms"
    );

    // The caller's own timeout: the server's answer or the client's timer,
    // whichever comes first (on a busy machine, either can), is exit 3.
    let server = Process::start(&[]).await;
    let alone = run(&[
        "wait",
        "alone",
        "--server",
        &server.grpc,
        "--timeout",
        "200ms",
    ])
    .await;
    assert_eq!(alone.status.code(), Some(3), "{}", stderr(&alone));
    assert!(
        stderr(&alone).starts_with("rendezvous: DEADLINE_EXCEEDED: "),
        "{}",
        stderr(&alone)
    );
}

/// Exit 2 for input the server refuses, or the client cannot use.
#[tokio::test]
async fn invalid_input_exits_2() {
    let server = Process::start(&["--max-payload=4B"]).await;
    let cases: [(&[&str], &str); 6] = [
        (
            &["wait", "", "--server", &server.grpc],
            "rendezvous: INVALID_ARGUMENT: id is empty: send the meeting id both parties agreed on\n",
        ),
        (
            &[
                "wait",
                "x",
                "--server",
                &server.grpc,
                "--payload",
                "too long",
            ],
            "rendezvous: INVALID_ARGUMENT: payload is 8 bytes; the limit is 4 bytes (--max-payload)\n",
        ),
        (
            &[
                "wait",
                "x",
                "--server",
                &server.grpc,
                "--payload-file",
                "/no/such/file",
            ],
            "rendezvous: INVALID_ARGUMENT: cannot read --payload-file /no/such/file: No such file or directory (os error 2)\n",
        ),
        (
            &["wait", "x", "--server", "localhost"],
            "rendezvous: INVALID_ARGUMENT: \"localhost\" is not a server address (it has no port); use HOST:PORT or https://HOST:PORT\n",
        ),
        (
            &[
                "wait",
                "x",
                "--server",
                &server.grpc,
                "--token-file",
                "/no/such/token",
            ],
            "rendezvous: INVALID_ARGUMENT: cannot read the token file /no/such/token: No such file or directory (os error 2)\n",
        ),
        (
            &[
                "wait",
                "x",
                "--server",
                &server.grpc,
                "--tls-ca",
                "/no/such/ca.pem",
            ],
            "rendezvous: INVALID_ARGUMENT: cannot read the CA certificate /no/such/ca.pem: No such file or directory (os error 2)\n",
        ),
    ];
    for (args, expected) in cases {
        let output = run(args).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_eq!(stderr(&output), expected, "{args:?}");
    }
    // A usage error is clap's, with its usage line, and exits 2 too.
    let output = run(&["wait", "x", "--retry"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--timeout"), "{}", stderr(&output));
}

/// Exit 4 when nothing listens, and when the server is full.
#[tokio::test]
async fn an_unavailable_or_full_server_exits_4() {
    let nobody = format!("127.0.0.1:{}", common::redis::free_port());
    let output = run(&["wait", "x", "--server", &nobody, "--timeout", "5s"]).await;
    assert_eq!(output.status.code(), Some(4));
    assert!(
        stderr(&output).starts_with(&format!(
            "rendezvous: UNAVAILABLE: cannot reach http://{nobody}/: "
        )),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("Connection refused"),
        "{}",
        stderr(&output)
    );

    let mut server = Process::start(&["--max-waiters=1"]).await;
    let parked = tokio::spawn(run_owned(vec![
        "wait".into(),
        "a".into(),
        "--server".into(),
        server.grpc.clone(),
    ]));
    server.next("arrived").await;
    let full = run(&["wait", "b", "--server", &server.grpc]).await;
    assert_eq!(full.status.code(), Some(4), "{}", stderr(&full));
    assert!(
        stderr(&full).starts_with("rendezvous: RESOURCE_EXHAUSTED: "),
        "{}",
        stderr(&full)
    );
    let partner = run(&["wait", "a", "--server", &server.grpc]).await;
    assert_eq!(partner.status.code(), Some(0));
    assert_eq!(within(parked).await.unwrap().status.code(), Some(0));
}

async fn run_owned(args: Vec<String>) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&args).await
}

/// Exit 5 without a token, or with one the server does not know; the right
/// one, from a file or its variable, pairs.
#[tokio::test]
async fn tokens_come_from_a_file_and_a_refused_one_exits_5() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::write(dir.path(), "tokens", "cli-token-0123456789 ns\n");
    let good = common::write(dir.path(), "good", "cli-token-0123456789\n");
    let bad = common::write(dir.path(), "bad", "not-the-token\n");
    let mut server = Process::start(&["--auth-token-file", tokens.to_str().unwrap()]).await;

    let output = run(&["wait", "x", "--server", &server.grpc]).await;
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with("rendezvous: UNAUTHENTICATED: "),
        "{}",
        stderr(&output)
    );
    let output = run(&[
        "wait",
        "x",
        "--server",
        &server.grpc,
        "--token-file",
        bad.to_str().unwrap(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));

    let first = rendezvous(&["wait", "t", "--server", &server.grpc, "--payload", "one"])
        .env("RENDEZVOUS_TOKEN_FILE", &good)
        .output();
    let first = tokio::spawn(first);
    server.next("arrived").await;
    let second = run(&[
        "wait",
        "t",
        "--server",
        &server.grpc,
        "--token-file",
        good.to_str().unwrap(),
    ])
    .await;
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(second.stdout, b"one");
    let first = within(first).await.unwrap().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
}

/// Exit 1 for anything else: here, a gRPC call sent to the HTTP port.
#[tokio::test]
async fn any_other_failure_exits_1() {
    let server = Process::start(&[]).await;
    let output = run(&["wait", "x", "--server", &server.http]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with("rendezvous: INTERNAL: protocol error: "),
        "{}",
        stderr(&output)
    );
}

/// With --retry, a wait started before its server survives until the
/// server is up, and then pairs.
#[tokio::test]
async fn retry_waits_out_a_server_that_is_not_up_yet() {
    let port = common::redis::free_port();
    let address = format!("127.0.0.1:{port}");
    let mut early = rendezvous(&[
        "wait",
        "early",
        "--server",
        &address,
        "--timeout",
        "60s",
        "--retry",
        "--payload",
        "early",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Its first refusal is reported, with the pause before the next try.
    let mut errors = tokio::io::BufReader::new(early.stderr.take().unwrap());
    let mut line = String::new();
    within(tokio::io::AsyncBufReadExt::read_line(
        &mut errors,
        &mut line,
    ))
    .await
    .unwrap();
    assert!(
        line.starts_with("rendezvous wait: UNAVAILABLE: cannot reach "),
        "{line}"
    );
    assert!(line.contains("; trying again in "), "{line}");

    let mut server = Process::start(&[&format!("--grpc-addr={address}")]).await;
    server.next("arrived").await;
    let partner = run(&["wait", "early", "--server", &address, "--payload", "late"]).await;
    assert_eq!(partner.status.code(), Some(0), "{}", stderr(&partner));
    assert_eq!(partner.stdout, b"early");
    let early = within(early.wait_with_output()).await.unwrap();
    assert_eq!(early.status.code(), Some(0));
    assert_eq!(early.stdout, b"late");
}

/// --retry without a server at all gives up at the timeout with the last
/// refusal's exit code.
#[tokio::test]
async fn retry_gives_up_at_the_timeout() {
    let nobody = format!("127.0.0.1:{}", common::redis::free_port());
    let output = run(&[
        "wait",
        "x",
        "--server",
        &nobody,
        "--timeout",
        "1s",
        "--retry",
    ])
    .await;
    assert_eq!(output.status.code(), Some(4));
    let last = stderr(&output).lines().last().unwrap().to_owned();
    assert!(
        last.starts_with("rendezvous: UNAVAILABLE: cannot reach "),
        "{last}"
    );
    assert!(last.ends_with("(still, after 1s of retries)"), "{last}");
}

#[tokio::test]
async fn wait_and_probe_speak_tls_and_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::Ca::new();
    let server_leaf = ca.leaf(&["localhost"]);
    let client_leaf = ca.leaf(&["client"]);
    let path = |name: &str, text: &str| {
        common::write(dir.path(), name, text)
            .to_str()
            .unwrap()
            .to_owned()
    };
    let (ca_pem, cert, key) = (
        path("ca.pem", &ca.pem),
        path("cert.pem", &server_leaf.cert),
        path("key.pem", &server_leaf.key),
    );
    let (client_cert, client_key) = (
        path("client.pem", &client_leaf.cert),
        path("client-key.pem", &client_leaf.key),
    );
    let mut server = Process::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_pem,
    ])
    .await;
    let port = server.grpc.rsplit(':').next().unwrap().to_owned();
    let https = format!("https://localhost:{port}");
    let tls = [
        "--tls-ca",
        &ca_pem,
        "--client-cert",
        &client_cert,
        "--client-key",
        &client_key,
    ];

    let probe = run(&[&["probe", "--server", &https, "--timeout", "30s"][..], &tls].concat()).await;
    assert_eq!(probe.status.code(), Some(0), "{}", stderr(&probe));
    assert_eq!(probe.stdout, b"SERVING\n");

    // An IP address, and the certificate's name given apart.
    let by_ip = format!("127.0.0.1:{port}");
    let first = rendezvous(
        &[
            &[
                "wait",
                "secure",
                "--server",
                &by_ip,
                "--tls-server-name",
                "localhost",
                "--payload",
                "a",
            ][..],
            &tls,
        ]
        .concat(),
    )
    .output();
    let first = tokio::spawn(first);
    server.next("arrived").await;
    let second = run(&[
        &["wait", "secure", "--server", &https, "--payload", "b"][..],
        &tls,
    ]
    .concat())
    .await;
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(second.stdout, b"a");
    let first = within(first).await.unwrap().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(first.stdout, b"b");

    // Without a client certificate, the server hangs up after the handshake.
    let refused = run(&["probe", "--server", &https, "--tls-ca", &ca_pem]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!(": cannot reach {https}/: ")),
        "{}",
        stderr(&refused)
    );
}

/// probe: 0 only for SERVING; NOT_SERVING (here, readiness of a replica
/// whose Redis is not there) is 4; an unknown service is 2.
#[tokio::test]
async fn probe_exits_0_only_when_serving() {
    let redis = format!("redis://127.0.0.1:{}", common::redis::free_port());
    let server = Process::start(&["--redis-url", &redis]).await;
    // A generous --timeout: a busy machine must not turn SERVING into 3.
    let live = run(&["probe", "--server", &server.grpc, "--timeout", "30s"]).await;
    assert_eq!(live.status.code(), Some(0), "{}", stderr(&live));
    assert_eq!(live.stdout, b"SERVING\n");

    server.until_ready(503).await;
    let ready = run(&[
        "probe",
        "--server",
        &server.grpc,
        "--service",
        "rendezvous.v1.Sync",
        "--timeout",
        "30s",
    ])
    .await;
    assert_eq!(ready.status.code(), Some(4), "{}", stderr(&ready));
    assert_eq!(ready.stdout, b"NOT_SERVING\n");

    let unknown = run(&[
        "probe",
        "--server",
        &server.grpc,
        "--service",
        "no.such.Service",
        "--timeout",
        "30s",
    ])
    .await;
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert_eq!(
        stderr(&unknown),
        "rendezvous: NOT_FOUND: service not registered\n"
    );

    let nobody = format!("127.0.0.1:{}", common::redis::free_port());
    let down = run(&["probe", "--server", &nobody]).await;
    assert_eq!(down.status.code(), Some(4), "{}", stderr(&down));
}

/// A server that never accepts the connection (its accept queue is full):
/// the probe gives up at its own timeout, as timed out.
#[tokio::test]
async fn probe_gives_up_on_a_server_that_never_accepts() {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue: later connection attempts get no answer at all.
    let mut queued = Vec::new();
    for _ in 0..4 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_nonblocking(true).unwrap();
        let _ = socket.connect(&addr.into());
        queued.push(socket);
    }
    let output = run(&["probe", "--server", &addr.to_string(), "--timeout", "500ms"]).await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "rendezvous: DEADLINE_EXCEEDED: no answer within 500ms\n"
    );
}

/// A CI job's `TRACEPARENT` goes with its wait, so that the server logs the
/// call (and its partner's) under the job's trace; `--traceparent` too. A
/// malformed one is not sent.
#[tokio::test]
async fn wait_sends_the_traceparent_from_its_environment() {
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const OTHER: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut server = Process::start(&[]).await;
    let traced = rendezvous(&["wait", "traced-job", "--server", &server.grpc])
        .env("TRACEPARENT", format!("00-{TRACE}-b7ad6b7169203331-01"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let arrived = server.next("arrived").await;
    assert_eq!(arrived["span"]["trace_id"], TRACE, "{arrived}");
    let flagged = run(&[
        "wait",
        "traced-job",
        "--server",
        &server.grpc,
        "--traceparent",
        &format!("00-{OTHER}-00f067aa0ba902b7-01"),
    ])
    .await;
    assert_eq!(flagged.status.code(), Some(0), "{}", stderr(&flagged));
    let first = within(traced.wait_with_output()).await.unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let finished = server.next("finished").await;
        let span = &finished["span"];
        seen.push((span["trace_id"].clone(), span["partner_trace_id"].clone()));
    }
    seen.sort_by_key(|pair| pair.0.to_string());
    assert_eq!(
        seen,
        [(TRACE.into(), OTHER.into()), (OTHER.into(), TRACE.into())]
    );

    let malformed = rendezvous(&["wait", "untraced-job", "--server", &server.grpc])
        .env("TRACEPARENT", "not-a-traceparent")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let arrived = server.next("arrived").await;
    assert!(arrived["span"].get("trace_id").is_none(), "{arrived}");
    let partner = run(&["wait", "untraced-job", "--server", &server.grpc]).await;
    assert_eq!(partner.status.code(), Some(0), "{}", stderr(&partner));
    assert_eq!(
        within(malformed.wait_with_output())
            .await
            .unwrap()
            .status
            .code(),
        Some(0)
    );
}
