//! `GET /metrics`: Prometheus series for parked callers, pairs, timeouts,
//! cancellations and rejections, by protocol, parsed by a Prometheus
//! text-format parser.

mod common;

use common::{TestServer, request, within};

/// One scrape, as Prometheus would read it.
async fn scrape(server: &TestServer) -> prometheus_parse::Scrape {
    let response = common::http_client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = response.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` with these labels (0 if absent).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected {other:?}"),
        })
        .sum()
}

#[tokio::test]
async fn metrics_count_every_outcome_by_protocol() {
    let server = TestServer::start().await;
    let grpc = [("protocol", "grpc")];
    let http = [("protocol", "http")];

    // Before anything: every series is there, at zero.
    let before = scrape(&server).await;
    assert_eq!(value(&before, "rendezvous_paired_total", &grpc), 0.0);
    assert_eq!(value(&before, "rendezvous_parked_callers", &grpc), 0.0);
    assert_eq!(value(&before, "rendezvous_parked_callers", &http), 0.0);

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
        .await;
    assert!(empty_id.is_err());

    // Cancellation is noticed by the server a moment after the client left.
    let mut after = scrape(&server).await;
    for _ in 0..200 {
        if value(&after, "rendezvous_cancellations_total", &grpc) == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        after = scrape(&server).await;
    }
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
