//! A Rust service's use of the client alone: built without the server
//! (`default-features = false`, so no Redis, no hyper server, no Prometheus
//! and no OpenTelemetry), against a running server:
//!
//! ```text
//! cargo run --no-default-features --example client -- http://127.0.0.1:50051
//! ```
//!
//! Two callers pair and swap payloads, a group of three gathers, a lone
//! caller with a deadline gets `DEADLINE_EXCEEDED`, a caller that gives up
//! withdraws its wait, and the server's health says `SERVING`. Exits
//! non-zero, saying why, if anything is not as the proto documents it.

use std::time::Duration;

use rendezvous::{
    client::{Client, ClientOptions, Ended, attempt_key},
    pairing::{Role, Withdrawal},
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::args()
        .nth(1)
        .ok_or("usage: client SERVER, such as http://127.0.0.1:50051")?;
    let client = Client::connect(&ClientOptions::new(&server)?).await?;
    // Unique ids, so that a run never meets another run's callers.
    let run = attempt_key();

    // A pair: each gets the other's payload, one first and one second.
    let id = format!("rust-pair-{run}");
    let (a, b) = tokio::join!(
        client.wait(&id, "from a".into(), TIMEOUT),
        client.wait(&id, "from b".into(), TIMEOUT),
    );
    let (a, b) = (a?, b?);
    assert_eq!(a.peer().payload, "from b");
    assert_eq!(b.peer().payload, "from a");
    let mut roles = [a.role(), b.role()];
    roles.sort_by_key(|role| *role == Role::Second);
    assert_eq!(roles, [Role::First, Role::Second]);
    println!("paired: {:?} and {:?}", a.role(), b.role());

    // A group of three: every member's payload, in arrival order.
    let id = format!("rust-group-{run}");
    let members = ["x", "y", "z"].map(|name| client.gather(&id, 3, name.into(), TIMEOUT));
    let [x, y, z] = members;
    let (x, y, z) = tokio::join!(x, y, z);
    let (x, y, z) = (x?, y?, z?);
    let mut positions = [x.position, y.position, z.position];
    positions.sort();
    assert_eq!(positions, [0, 1, 2]);
    assert_eq!(x.parties(), 3);
    let everyone = x.payloads(&"x".into());
    assert_eq!(everyone, y.payloads(&"y".into()));
    assert_eq!(everyone, z.payloads(&"z".into()));
    println!("gathered: {everyone:?}");

    // Alone, with a 300 ms deadline.
    let alone = client
        .wait(
            &format!("rust-alone-{run}"),
            "".into(),
            Some(Duration::from_millis(300)),
        )
        .await;
    let status = alone.expect_err("a lone caller was answered OK");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    println!("alone: {:?}: {}", status.code(), status.message());

    // A caller that gives up withdraws its wait: nobody is paired with it.
    let id = format!("rust-withdrawn-{run}");
    let key = attempt_key();
    let wait = client.wait_with_key(&id, "gone".into(), TIMEOUT, key.as_str());
    let given_up = tokio::time::sleep(Duration::from_millis(200));
    match client
        .unless_given_up(&id, &key, wait, given_up, Duration::from_secs(2))
        .await
    {
        // Unknown if the wait had not reached the server yet: a try with
        // its key that gets there later is refused all the same.
        Ended::GaveUp(found) => match found? {
            found @ (Withdrawal::Withdrawn | Withdrawal::Unknown) => {
                println!("withdrawn: {found:?}")
            }
            found => panic!("a lone wait's withdrawal found {found:?}"),
        },
        Ended::Answered(answer) => panic!("a lone wait was answered: {answer:?}"),
    }
    let after = client
        .wait(&id, "late".into(), Some(Duration::from_millis(300)))
        .await;
    assert_eq!(
        after.expect_err("paired with a caller that gave up").code(),
        Code::DeadlineExceeded
    );
    println!("after: the next caller with its id waits alone");

    let health = client.check("rendezvous.v1.Sync", TIMEOUT).await?;
    assert_eq!(health, ServingStatus::Serving);
    println!("health: {health:?}");
    Ok(())
}
