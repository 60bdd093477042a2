//! Traces over OTLP/gRPC, from the real binary to a receiver in the test
//! ([`Collector`]): one server span per call, under the caller's
//! `traceparent`, linked to its partners' spans (across replicas on Redis
//! too), with the conventions' attributes and no id; and a collector that
//! is down or stuck changes nothing for callers.

use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use rendezvous::proto::{WaitForPartiesRequest, sync_client::SyncClient};

use crate::common::{
    self, Process,
    otlp::{Collector, Received, hex},
    redis::RedisServer,
    within,
};

const A: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const B: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn trace_of(traceparent: &str) -> (String, String) {
    (
        traceparent[3..35].to_owned(),
        traceparent[36..52].to_owned(),
    )
}

/// What a server that exports to `collector` is started with. The batch
/// is never sent on a timer, so that spans reach the collector only by the
/// flush at shutdown, which these tests check by it.
fn exporting_to(collector: &Collector) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000".into()),
    ]
}

async fn start(args: &[&str], env: &[(&'static str, String)]) -> Process {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = args.to_vec();
    args.push("--shutdown-grace=10s");
    Process::start_with_env(&args, &env).await
}

/// SIGTERM, and the exit status: the spans are flushed before it exits.
async fn stop(mut server: Process) -> Vec<serde_json::Value> {
    server.signal("TERM");
    let status = within(server.child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    server.drain_log()
}

fn with_traceparent<T>(mut request: tonic::Request<T>, traceparent: &str) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

fn the_one<'a>(
    spans: &'a [Received],
    what: &str,
    pick: impl Fn(&Received) -> bool,
) -> &'a Received {
    let found: Vec<_> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {spans:#?}");
    found[0]
}

fn status(span: &Received) -> (i32, &str) {
    span.span
        .status
        .as_ref()
        .map_or((StatusCode::Unset as i32, ""), |s| {
            (s.code, s.message.as_str())
        })
}

#[tokio::test]
async fn each_call_is_a_server_span_under_its_traceparent_linked_to_its_partner() {
    let mut collector = Collector::start().await;
    let mut server = start(&[], &exporting_to(&collector)).await;
    let started = server.next("exporting traces over OTLP/gRPC").await;
    assert_eq!(
        started["fields"]["endpoint"],
        collector.endpoint.as_str(),
        "{started}"
    );
    assert_eq!(started["fields"]["queue"], 2048, "{started}");
    let id = "secret-meeting-code";

    // A pair: gRPC first (under A), HTTP second (under B).
    let mut grpc = SyncClient::new(server.channel().await);
    let request = with_traceparent(common::request(id, b"from grpc"), A);
    let first = tokio::spawn(async move { grpc.wait_for_second_party(request).await });
    until_metric(&server, "rendezvous_parked_callers", 1.0).await;
    let http = common::http_client();
    let url = format!("http://{}/wait-for-second-party/{id}", server.http);
    let second = http
        .post(&url)
        .header("traceparent", B)
        .body("from http")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    let first = within(first).await.unwrap().unwrap().into_inner();
    assert_eq!(first.peer_payload, Bytes::from_static(b"from http"));

    // Nobody comes: over HTTP (408) and over gRPC (DEADLINE_EXCEEDED).
    let alone = format!(
        "http://{}/wait-for-second-party/alone?wait=100ms",
        server.http
    );
    assert_eq!(http.post(&alone).send().await.unwrap().status(), 408);
    // A client that does not enforce its deadline, so that the answer is
    // the server's whatever a busy machine does to the client's own timer.
    let addr = server.grpc.parse().unwrap();
    let alone = within(common::raw_wait(addr, "alone-too", b"", "100m")).await;
    common::assert_timed_out(&alone);
    let mut grpc = SyncClient::new(server.channel().await);
    // Refused: the caller's mistake.
    let refused = grpc
        .wait_for_second_party(common::request("", b""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // A keyed caller's retry after its answer: handed the answer again.
    let mut waiter = SyncClient::new(server.channel().await);
    let keyed = common::request("keyed", b"waiter");
    let keyed = tokio::spawn(async move { waiter.wait_for_second_party(keyed).await });
    until_metric(&server, "rendezvous_parked_callers", 1.0).await;
    let keyed_url = format!(
        "http://{}/wait-for-second-party/keyed?attempt_key=k-1",
        server.http
    );
    let first_try = http.post(&keyed_url).body("keyed").send().await.unwrap();
    assert_eq!(first_try.status(), 200);
    within(keyed).await.unwrap().unwrap();
    let again = http.post(&keyed_url).body("keyed").send().await.unwrap();
    assert_eq!(again.status(), 200);
    // A caller that goes away while it waits.
    let mut gone = SyncClient::new(server.channel().await);
    let gone = tokio::spawn(async move {
        gone.wait_for_second_party(common::request("gone", b""))
            .await
    });
    until_metric(&server, "rendezvous_parked_callers", 1.0).await;
    gone.abort();
    until_metric(&server, "rendezvous_cancellations_total", 1.0).await;

    assert!(collector.received().is_empty(), "sent before shutdown");
    let log = stop(server).await;
    assert!(
        !log.iter()
            .any(|line| line["fields"]["message"] == "spans not exported at shutdown"),
        "{log:?}"
    );
    let spans = collector.received();
    assert_eq!(spans.len(), 9, "{spans:#?}");
    assert!(
        !format!("{spans:?}").contains(id),
        "an id in a span: {spans:#?}"
    );

    let outcome = |span: &Received, want: &str| {
        span.attribute("rendezvous.outcome").is_some() && span.string("rendezvous.outcome") == want
    };
    let paired: Vec<&Received> = spans.iter().filter(|s| outcome(s, "paired")).collect();
    assert_eq!(paired.len(), 5, "{spans:#?}");
    let under = |s: &Received, traceparent: &str| hex(&s.span.trace_id) == trace_of(traceparent).0;
    let g = the_one(&spans, "the gRPC pair", |s| {
        outcome(s, "paired") && under(s, A)
    });
    let h = the_one(&spans, "the HTTP pair", |s| {
        outcome(s, "paired") && under(s, B)
    });

    for span in &spans {
        assert_eq!(span.span.kind, SpanKind::Server as i32, "{span:?}");
        assert_eq!(span.service, "rendezvous", "{span:?}");
        assert!(
            span.resource
                .contains(&format!("service.version={}", env!("CARGO_PKG_VERSION"))),
            "{:?}",
            span.resource
        );
    }

    // Children of their callers' spans, and linked to each other.
    let (a_trace, a_parent) = trace_of(A);
    assert_eq!(
        (hex(&g.span.trace_id), hex(&g.span.parent_span_id)),
        (a_trace, a_parent)
    );
    let (b_trace, b_parent) = trace_of(B);
    assert_eq!(
        (hex(&h.span.trace_id), hex(&h.span.parent_span_id)),
        (b_trace, b_parent)
    );
    assert_eq!(g.links(), [h.id()]);
    assert_eq!(h.links(), [g.id()]);

    assert_eq!(g.span.name, "rendezvous.v1.Sync/WaitForSecondParty");
    assert_eq!(g.string("rpc.system"), "grpc");
    assert_eq!(g.string("rpc.service"), "rendezvous.v1.Sync");
    assert_eq!(g.string("rpc.method"), "WaitForSecondParty");
    assert_eq!(g.int("rpc.grpc.status_code"), 0);
    assert_eq!(g.string("rendezvous.protocol"), "grpc");
    assert_eq!(g.string("rendezvous.role"), "ROLE_FIRST");
    assert_eq!(g.int("rendezvous.position"), 0);
    assert_eq!(g.int("rendezvous.parties"), 2);
    assert!(g.double("rendezvous.waited") > 0.0, "{g:?}");
    assert_eq!(status(g), (StatusCode::Unset as i32, ""));

    assert_eq!(h.span.name, "POST /wait-for-second-party/{id}");
    assert_eq!(h.string("http.request.method"), "POST");
    assert_eq!(h.string("http.route"), "/wait-for-second-party/{id}");
    assert_eq!(h.int("http.response.status_code"), 200);
    assert_eq!(h.string("rendezvous.protocol"), "http");
    assert_eq!(h.string("rendezvous.role"), "ROLE_SECOND");
    assert_eq!(h.int("rendezvous.position"), 1);
    assert_eq!(h.double("rendezvous.waited"), 0.0);

    // A timeout over HTTP is the caller's 408, not the server's error; a
    // root span, since its caller sent no traceparent.
    let late = the_one(&spans, "the HTTP timeout", |s| {
        outcome(s, "timed_out") && s.attribute("http.route").is_some()
    });
    assert_eq!(late.int("http.response.status_code"), 408);
    assert_eq!(late.double("rendezvous.waited"), 0.1);
    assert_eq!(status(late), (StatusCode::Unset as i32, ""));
    assert!(
        late.span.parent_span_id.is_empty() && late.links().is_empty(),
        "{late:?}"
    );
    assert!(late.attribute("rendezvous.role").is_none(), "{late:?}");
    // DEADLINE_EXCEEDED is an error for a gRPC server, as the conventions say.
    let deadline = the_one(&spans, "the gRPC timeout", |s| {
        outcome(s, "timed_out") && s.attribute("rpc.system").is_some()
    });
    assert_eq!(deadline.int("rpc.grpc.status_code"), 4);
    let (code, message) = status(deadline);
    assert_eq!(code, StatusCode::Error as i32);
    assert!(
        message.starts_with("nobody else arrived with this id within "),
        "{message}"
    );
    let refused = the_one(&spans, "the refusal", |s| outcome(s, "invalid_argument"));
    assert_eq!(refused.int("rpc.grpc.status_code"), 3);
    assert_eq!(status(refused), (StatusCode::Unset as i32, ""));
    // Only a keyed call handed an answer again says how.
    let attempts: Vec<&str> = spans
        .iter()
        .filter_map(|s| {
            s.attribute("rendezvous.attempt")
                .map(|_| s.string("rendezvous.attempt"))
        })
        .collect();
    assert_eq!(attempts, ["redelivered"], "{spans:#?}");
    let cancelled = the_one(&spans, "the caller that went away", |s| {
        outcome(s, "cancelled")
    });
    assert_eq!(cancelled.string("rpc.method"), "WaitForSecondParty");
}

/// One series of a process's `/metrics`, summed over the labels not given.
async fn metric(server: &Process, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = common::scrape_url(&format!("http://{}/metrics", server.http)).await;
    common::value(&scrape, name, labels)
}

/// Waits until `name` reads `want` (the server says so at its own pace).
async fn until_metric(server: &Process, name: &str, want: f64) {
    let what = format!("{name} to read {want}");
    common::until(&what, || async {
        (metric(server, name, &[]).await == want).then_some(())
    })
    .await
}

/// On Redis, partners on two replicas link to each other: a pair, and each
/// member of a group of three to the two others.
#[tokio::test]
async fn on_redis_partners_on_other_replicas_are_linked() {
    let redis = RedisServer::start().await;
    let mut collector = Collector::start().await;
    let url = redis.url();
    let replica = |name: &str| {
        let mut env = exporting_to(&collector);
        env.push(("OTEL_SERVICE_NAME", name.to_owned()));
        env.push((
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test".into(),
        ));
        env
    };
    let args = ["--redis-url", &url, "--redis-key-prefix", "traces:"];
    let mut a = start(&args, &replica("replica-a")).await;
    let b = start(&args, &replica("replica-b")).await;
    a.until_ready(200).await;
    b.until_ready(200).await;

    // A pair: gRPC on A under A, HTTP on B with no traceparent.
    let mut grpc = SyncClient::new(a.channel().await);
    let request = with_traceparent(common::request("pair", b"on a"), A);
    let first = tokio::spawn(async move { grpc.wait_for_second_party(request).await });
    a.next("arrived").await;
    let http = common::http_client();
    let second = http
        .post(format!("http://{}/wait-for-second-party/pair", b.http))
        .body("on b")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    let first = within(first).await.unwrap().unwrap().into_inner();
    assert_eq!(first.peer_payload, Bytes::from_static(b"on b"));

    // A group of three: two on A (one under B), one on B over HTTP.
    let group = |traceparent: Option<&str>, payload: &'static [u8]| {
        let request = tonic::Request::new(WaitForPartiesRequest {
            id: "group".into(),
            parties: 3,
            payload: Bytes::from_static(payload),
            ..Default::default()
        });
        match traceparent {
            Some(traceparent) => with_traceparent(request, traceparent),
            None => request,
        }
    };
    let mut on_a = Vec::new();
    for request in [group(Some(B), b"one"), group(None, b"two")] {
        let mut grpc = SyncClient::new(a.channel().await);
        on_a.push(tokio::spawn(
            async move { grpc.wait_for_parties(request).await },
        ));
        a.next("arrived").await;
    }
    let third = http
        .post(format!(
            "http://{}/wait-for-parties/group?parties=3",
            b.http
        ))
        .header("accept", "application/json")
        .body("three")
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 200);
    for member in on_a {
        let answer = within(member).await.unwrap().unwrap().into_inner();
        assert_eq!(answer.payloads.len(), 3);
    }

    stop(a).await;
    stop(b).await;
    let spans = collector.received();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    for span in &spans {
        assert!(
            span.resource
                .contains(&"deployment.environment=test".to_owned()),
            "{:?}",
            span.resource
        );
    }
    let on = |replica: &str, route: &str| -> Vec<&Received> {
        spans
            .iter()
            .filter(|s| s.service == replica && s.span.name.contains(route))
            .collect()
    };

    let [pair_a] = on("replica-a", "WaitForSecondParty")[..] else {
        panic!("{spans:#?}")
    };
    let [pair_b] = on("replica-b", "/wait-for-second-party/")[..] else {
        panic!("{spans:#?}")
    };
    assert_eq!(hex(&pair_a.span.trace_id), trace_of(A).0);
    assert!(pair_b.span.parent_span_id.is_empty(), "{pair_b:?}");
    assert_ne!(
        pair_b.id().0,
        pair_a.id().0,
        "a root span has a trace of its own"
    );
    assert_eq!(pair_a.links(), [pair_b.id()]);
    assert_eq!(pair_b.links(), [pair_a.id()]);

    let mut members = on("replica-a", "WaitForParties");
    members.extend(on("replica-b", "/wait-for-parties/"));
    assert_eq!(members.len(), 3, "{spans:#?}");
    let mut positions: Vec<i64> = members
        .iter()
        .map(|m| m.int("rendezvous.position"))
        .collect();
    positions.sort();
    assert_eq!(positions, [0, 1, 2]);
    for member in &members {
        let mut others: Vec<_> = members
            .iter()
            .filter(|other| other.id() != member.id())
            .map(|other| other.id())
            .collect();
        others.sort();
        assert_eq!(member.links(), others, "{member:?}");
        assert_eq!(member.int("rendezvous.parties"), 3);
        assert_eq!(member.string("rendezvous.outcome"), "paired");
        assert!(member.attribute("rendezvous.role").is_none(), "{member:?}");
    }
    assert_eq!(
        members
            .iter()
            .filter(|m| hex(&m.span.trace_id) == trace_of(B).0)
            .count(),
        1
    );
}

/// The exporter's own series, from a process's `/metrics`: exported, and
/// dropped for a full queue and for failed exports.
async fn spans_counted(server: &Process) -> [f64; 3] {
    let dropped = "rendezvous_trace_spans_dropped_total";
    [
        metric(server, "rendezvous_trace_spans_exported_total", &[]).await,
        metric(server, dropped, &[("reason", "queue_full")]).await,
        metric(server, dropped, &[("reason", "export_failed")]).await,
    ]
}

/// Pairs `n` ids on `server` over gRPC, and checks every answer.
async fn pairs(server: &Process, n: usize) {
    let client = server.client().await;
    let mut calls = Vec::new();
    for i in 0..n {
        for side in ["left", "right"] {
            let (client, id) = (client.clone(), format!("pair-{i}"));
            let payload = Bytes::from(format!("{side} {i}"));
            calls.push(tokio::spawn(async move {
                (side, client.wait(&id, payload, None).await)
            }));
        }
    }
    for (i, call) in calls.into_iter().enumerate() {
        let (side, meeting) = within(call).await.unwrap();
        let meeting = meeting.unwrap_or_else(|error| panic!("{side} {}: {error}", i / 2));
        let other = if side == "left" { "right" } else { "left" };
        assert_eq!(
            meeting.peer().payload,
            format!("{other} {}", i / 2).as_bytes()
        );
    }
}

/// A collector that accepts connections and never answers: callers are
/// answered as ever, the spans past the queue are dropped and counted, and
/// shutdown still ends within its grace, saying how many were lost.
#[tokio::test]
async fn a_stuck_collector_changes_nothing_for_callers() {
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", stuck.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stuck.accept().await {
            held.push(socket);
        }
    });
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000".into()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Process::start_with_env(&["--shutdown-grace=2s"], &env).await;
    pairs(&server, 20).await;
    assert_eq!(spans_counted(&server).await, [0.0, 36.0, 0.0]);

    server.signal("TERM");
    let status = within(server.child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    let lost = server
        .drain_log()
        .into_iter()
        .find(|line| line["fields"]["message"] == "spans not exported at shutdown")
        .expect("the loss is logged");
    assert_eq!(lost["fields"]["lost"], 4, "{lost}");
}

/// A collector that is down (nothing listens): the same for callers, and
/// each batch that could not be sent is counted.
#[tokio::test]
async fn a_collector_that_is_down_changes_nothing_for_callers() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "200"),
    ];
    let server = Process::start_with_env(&[], &env).await;
    pairs(&server, 10).await;
    let counted = common::until("20 spans exported", || async {
        let counted = spans_counted(&server).await;
        (counted[2] == 20.0).then_some(counted)
    })
    .await;
    assert_eq!(counted, [0.0, 0.0, 20.0]);
}

/// Settings this build cannot honour stop it at startup, and say which.
#[tokio::test]
async fn trace_settings_it_cannot_honour_stop_it_from_starting() {
    for (env, expected) in [
        (
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            "OTEL_EXPORTER_OTLP_PROTOCOL is \\\"http/protobuf\\\"; traces are exported over OTLP/gRPC only",
        ),
        (
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            "OTEL_BSP_MAX_QUEUE_SIZE is \\\"0\\\"",
        ),
        (
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
            "cannot export traces to the OTLP endpoint",
        ),
    ] {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let log = common::refused_start(&[], &[endpoint, env]).await;
        assert!(log.contains(expected), "{env:?}: {log}");
    }
}
