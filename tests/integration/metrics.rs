//! `GET /metrics`: Prometheus series for parked callers, pairs, timeouts,
//! cancellations and rejections, by protocol, parsed by a Prometheus
//! text-format parser.

use crate::common;

use common::{TestServer, request, scrape, test_config, value, within};
use rendezvous::Config;

#[tokio::test]
async fn metrics_count_every_outcome_by_protocol() {
    let server = TestServer::with(Config {
        max_waiters: 1234,
        ..test_config()
    })
    .await;
    let grpc = [("protocol", "grpc")];
    let http = [("protocol", "http")];

    // Before anything: every series is there, at zero.
    let before = scrape(&server).await;
    assert_eq!(value(&before, "rendezvous_paired_total", &grpc), 0.0);
    assert_eq!(value(&before, "rendezvous_parked_callers", &grpc), 0.0);
    assert_eq!(value(&before, "rendezvous_parked_callers", &http), 0.0);
    assert_eq!(value(&before, "rendezvous_max_waiters", &[]), 1234.0);
    assert_eq!(value(&before, "rendezvous_ready", &[]), 1.0);

    // A parked caller shows in the gauge, under its protocol.
    let mut first = server.grpc().await;
    let waiter = tokio::spawn(async move { first.wait_for_second_party(request("m", b"")).await });
    server.parked(1).await;
    let parked = scrape(&server).await;
    assert_eq!(value(&parked, "rendezvous_parked_callers", &grpc), 1.0);
    assert_eq!(value(&parked, "rendezvous_parked_callers", &http), 0.0);

    // It pairs with an HTTP caller: one pair per protocol, and the waiter's
    // time in the histogram.
    let response = common::http_client()
        .post(server.url("/wait-for-second-party/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    within(waiter).await.unwrap().unwrap();

    // A timeout over HTTP, a cancel over gRPC, and refusals on both.
    let timed_out = common::http_client()
        .post(server.url("/wait-for-second-party/alone?wait=50ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(timed_out.status(), 408);
    let mut leaving = server.grpc().await;
    let gone =
        tokio::spawn(async move { leaving.wait_for_second_party(request("gone", b"")).await });
    server.parked(1).await;
    gone.abort();
    server.parked(0).await;
    for bad in [
        "/wait-for-second-party/?wait=1s",
        "/wait-for-second-party/x?wait=soon",
    ] {
        let response = common::http_client()
            .post(server.url(bad))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
    let empty_id = server
        .grpc()
        .await
        .wait_for_second_party(request("", b""))
        .await
        .unwrap_err();
    assert_eq!(empty_id.code(), tonic::Code::InvalidArgument);

    // The cancelled caller's handler was dropped with its waiter (the
    // parked count said so), and the count goes with it.
    let after = scrape(&server).await;
    assert_eq!(value(&after, "rendezvous_paired_total", &grpc), 1.0);
    assert_eq!(value(&after, "rendezvous_paired_total", &http), 1.0);
    assert_eq!(value(&after, "rendezvous_timeouts_total", &http), 1.0);
    assert_eq!(value(&after, "rendezvous_timeouts_total", &grpc), 0.0);
    assert_eq!(value(&after, "rendezvous_cancellations_total", &grpc), 1.0);
    let invalid = |protocol| [("protocol", protocol), ("reason", "invalid_argument")];
    assert_eq!(
        value(&after, "rendezvous_rejections_total", &invalid("http")),
        2.0
    );
    assert_eq!(
        value(&after, "rendezvous_rejections_total", &invalid("grpc")),
        1.0
    );
    assert_eq!(value(&after, "rendezvous_parked_callers", &grpc), 0.0);
    assert_eq!(value(&after, "rendezvous_parked_callers", &http), 0.0);
    let histogram = after
        .samples
        .iter()
        .find(|s| {
            s.metric == "rendezvous_waited_seconds" && s.labels.get("protocol") == Some("grpc")
        })
        .expect("the waited histogram is exported");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {:?}", histogram.value);
    };
    assert_eq!(buckets.last().unwrap().count, 1.0, "one gRPC caller waited");
}

/// Refusals for a missing token and for a full server are counted under
/// their own reasons, per protocol. (`shutting_down` cannot be scraped from
/// a server whose listeners have closed: `src/service.rs` tests it.)
#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut tokens, b"metrics-token-0123456789 ns\n").unwrap();
    let server = TestServer::with(rendezvous::Config {
        auth_token_file: Some(tokens.path().to_owned()),
        max_waiters: 1,
        ..common::test_config()
    })
    .await;
    let before = scrape(&server).await;
    for protocol in ["grpc", "http"] {
        for reason in [
            "invalid_argument",
            "unauthenticated",
            "full",
            "shutting_down",
        ] {
            let labels = [("protocol", protocol), ("reason", reason)];
            assert_eq!(value(&before, "rendezvous_rejections_total", &labels), 0.0);
        }
    }

    let http = common::http_client();
    let unauthenticated = http
        .post(server.url("/wait-for-second-party/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let status = server
        .grpc()
        .await
        .wait_for_second_party(request("x", b""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // One caller fills the server; the next one over each protocol is refused.
    let mut first = server.grpc().await;
    let mut held = request("held", b"");
    held.metadata_mut().insert(
        "authorization",
        "Bearer metrics-token-0123456789".parse().unwrap(),
    );
    let waiter = tokio::spawn(async move { first.wait_for_second_party(held).await });
    server.parked(1).await;
    let full = http
        .post(server.url("/wait-for-second-party/other"))
        .bearer_auth("metrics-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 503);
    let mut other = request("other", b"");
    other.metadata_mut().insert(
        "authorization",
        "Bearer metrics-token-0123456789".parse().unwrap(),
    );
    let status = server
        .grpc()
        .await
        .wait_for_second_party(other)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);

    let after = scrape(&server).await;
    for protocol in ["grpc", "http"] {
        for (reason, count) in [
            ("unauthenticated", 1.0),
            ("full", 1.0),
            ("invalid_argument", 0.0),
        ] {
            let labels = [("protocol", protocol), ("reason", reason)];
            assert_eq!(
                value(&after, "rendezvous_rejections_total", &labels),
                count,
                "{protocol} {reason}"
            );
        }
    }
    assert_eq!(
        value(&after, "rendezvous_parked_callers", &[("protocol", "grpc")]),
        1.0
    );
    waiter.abort();
}

/// Group members show in the parked gauge while they wait; a completed
/// group is counted once, in its size's bucket; pairs are groups of 2; a
/// mismatched size is a rejection of its own.
#[tokio::test]
async fn groups_are_counted_once_by_size_and_their_members_as_parked() {
    let server = TestServer::start().await;
    let grpc = [("protocol", "grpc")];
    let http = [("protocol", "http")];
    let group = |parties: u32, payload: &str| {
        let url = server.url(&format!("/wait-for-parties/g?parties={parties}"));
        let request = common::http_client().post(url).body(payload.to_owned());
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    let waiting: Vec<_> = (0..4).map(|n| group(5, &n.to_string())).collect();
    server.parked(4).await;
    let parked = scrape(&server).await;
    assert_eq!(value(&parked, "rendezvous_parked_callers", &http), 4.0);
    let mismatched = group(3, "x");
    assert_eq!(within(mismatched).await.unwrap().status(), 409);
    let mut last = server.grpc().await;
    let answer = last
        .wait_for_parties(rendezvous::proto::WaitForPartiesRequest {
            id: "g".into(),
            payload: "4".into(),
            parties: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.position, 4);
    for member in waiting {
        assert_eq!(within(member).await.unwrap().status(), 200);
    }
    let mut first = server.grpc().await;
    let pair = tokio::spawn(async move { first.wait_for_second_party(request("p", b"")).await });
    server.parked(1).await;
    server
        .grpc()
        .await
        .wait_for_second_party(request("p", b""))
        .await
        .unwrap();
    within(pair).await.unwrap().unwrap();

    let after = scrape(&server).await;
    let completed = |size| {
        value(
            &after,
            "rendezvous_groups_completed_total",
            &[("size", size)],
        )
    };
    assert_eq!(completed("5-8"), 1.0);
    assert_eq!(completed("2"), 1.0);
    assert_eq!(completed("3-4"), 0.0);
    assert_eq!(value(&after, "rendezvous_parked_callers", &http), 0.0);
    assert_eq!(value(&after, "rendezvous_paired_total", &http), 4.0);
    assert_eq!(value(&after, "rendezvous_paired_total", &grpc), 3.0);
    let mismatch = [("protocol", "http"), ("reason", "parties_mismatch")];
    assert_eq!(value(&after, "rendezvous_rejections_total", &mismatch), 1.0);
}
