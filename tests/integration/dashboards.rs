//! `deploy/grafana` and `deploy/prometheus` against what `/metrics` serves:
//! a dashboard panel or an alert on a series that does not exist shows
//! nothing, or never fires, and nobody notices until the day it matters.
//! (promtool checks the rules' syntax and runs their unit tests in
//! `scripts/check-deploy.sh`.)

use std::{collections::BTreeSet, path::PathBuf};

use serde_json::Value;

use crate::common::{
    TestServer, http_client,
    redis::{RedisServer, replica_config, unique_prefix},
};

fn read(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The project's series named in `text`: every `rendezvous_...` word.
/// Recording rules (`rendezvous:calls:rate5m`) have a colon, and are not.
fn series_named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("rendezvous_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + word.len()..];
        names.insert(word);
    }
    names
}

/// What a replica on Redis serves: every sample's name, as PromQL sees them
/// (`_total`, `_bucket`, `_sum`, `_count` included).
async fn served() -> BTreeSet<String> {
    let redis = RedisServer::start().await;
    let server = TestServer::with(replica_config(&redis, &unique_prefix("dashboards"))).await;
    let text = http_client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            line[..end].to_owned()
        })
        .collect()
}

/// The family a sample belongs to, as the README's table names it.
fn family(sample: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| sample.strip_suffix(suffix))
        .unwrap_or(sample)
}

fn exprs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query", Value::String(expr)) => found.push(expr.clone()),
                    _ => exprs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| exprs(item, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_served_series_and_show_every_one() {
    let served = served().await;
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/rendezvous.json")).unwrap();
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    let on_dashboard = series_named(&queries.join("\n"));
    let in_rules = series_named(&read("deploy/prometheus/rendezvous.rules.yaml"));

    let unknown: Vec<_> = on_dashboard
        .union(&in_rules)
        .filter(|name| !served.contains(*name))
        .collect();
    assert!(unknown.is_empty(), "not served by /metrics: {unknown:?}");
    // Every family is on the dashboard, so a new series cannot be left off.
    let families: BTreeSet<_> = served.iter().map(|name| family(name)).collect();
    let shown: BTreeSet<_> = on_dashboard.iter().map(|name| family(name)).collect();
    let missing: Vec<_> = families.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "on /metrics but not on the dashboard: {missing:?}"
    );
    // The names the parser found are the ones the panels use, not nothing.
    for expected in [
        "rendezvous_paired_total",
        "rendezvous_waited_seconds_bucket",
        "rendezvous_redis_round_trip_seconds_bucket",
        "rendezvous_ready",
    ] {
        assert!(on_dashboard.contains(expected), "{expected}");
    }
    assert!(in_rules.contains("rendezvous_redis_reachable"));
    assert!(in_rules.contains("rendezvous_max_waiters"));
}

/// What Grafana needs to import the dashboard: unique panel ids, each panel
/// placed on the grid and reading the dashboard's Prometheus variable, and
/// every query filtered by the job and replica variables.
#[test]
fn the_dashboard_can_be_imported_and_filters_by_job_and_replica() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/rendezvous.json")).unwrap();
    assert_eq!(dashboard["uid"], "rendezvous");
    let variables: Vec<_> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "job", "instance"]);
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut repeated_rows = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        for field in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][field].is_u64(), "{title}: gridPos.{field}");
        }
        if panel["type"] == "row" {
            repeated_rows += usize::from(panel["repeat"] == "instance");
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let selectors = expr.matches("rendezvous_").count();
            assert_eq!(
                expr.matches(r#"job=~"$job", instance=~"$instance""#)
                    .count(),
                selectors,
                "{title}: a series not filtered by $job and $instance in {expr}"
            );
        }
    }
    assert_eq!(repeated_rows, 1, "one row per replica");
}
