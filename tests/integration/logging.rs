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
