//! Trying a wait again, safely: attempt keys, which failures are worth
//! another try, and the backoff between tries.

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};

use crate::{human::whole_millis, pairing::Meeting};

/// The least time left for which [`Client::wait_retrying`] tries again.
pub(super) const MIN_TRY: Duration = Duration::from_millis(250);

/// One try of a wait with an attempt key: the key, and how many tries of
/// the wait this client made before this one. The server orders a wait's
/// tries by the count, so that a cut try that reaches it late does not take
/// the wait back from its retry.
#[derive(Debug, Clone, Copy)]
pub struct Try<'a> {
    /// The wait's attempt key; empty for none.
    pub key: &'a str,
    /// The tries before this one: 0 for the first.
    pub previous: u32,
}

impl<'a> From<&'a str> for Try<'a> {
    /// The first try of the wait with `key`.
    fn from(key: &'a str) -> Self {
        Self { key, previous: 0 }
    }
}

impl<'a> From<&'a String> for Try<'a> {
    /// The first try of the wait with `key`.
    fn from(key: &'a String) -> Self {
        Self::from(key.as_str())
    }
}

/// A new attempt key: a random UUID, so that no other wait has it, and so
/// that nobody can guess it.
pub fn attempt_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `key`, or a new one if it is empty.
pub(super) fn key_or_new(key: &str) -> String {
    match key {
        "" => attempt_key(),
        key => key.to_owned(),
    }
}

/// Whether a failed call may be tried again with the same attempt key:
/// refusals that left no trace (the server was unreachable, shutting down
/// or full), and calls whose stream broke before an answer came back (the
/// key gets the broken try's place or answer back).
pub fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted => true,
        // From the transport, not the server: the stream was cut (a proxy's
        // route timeout, a connection reset). The client's own deadline is
        // reported as DEADLINE_EXCEEDED, and is not retried.
        Code::Cancelled | Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Makes `attempt` (given the time left) until it succeeds, fails in a way
/// that retrying cannot mend, or `timeout` has passed since the first.
pub(super) async fn retrying<F>(
    timeout: Duration,
    mut on_retry: impl FnMut(&Status, Duration),
    mut attempt: impl FnMut(Duration, u32) -> F,
) -> Result<Meeting, Status>
where
    F: Future<Output = Result<Meeting, Status>>,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = backoff();
    let mut previous = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = match attempt(left, previous).await {
            Ok(meeting) => return Ok(meeting),
            Err(status) => status,
        };
        if !retryable(&status) {
            return Err(status);
        }
        let pause = backoff.next().expect("retries without end");
        let left = deadline.saturating_duration_since(Instant::now());
        // A try needs time to be worth making: one that its own deadline
        // cuts short says only "timed out", and hides why the tries before
        // it failed.
        if pause + MIN_TRY >= left {
            return Err(Status::new(
                status.code(),
                format!(
                    "{} (still, after {} of retries)",
                    status.message(),
                    whole_millis(timeout),
                ),
            ));
        }
        on_retry(&status, pause);
        tokio::time::sleep(pause).await;
        previous = previous.saturating_add(1);
    }
}

/// Exponential backoff with jitter, from 50 ms up to 2 s a pause (each
/// pause up to twice that, at random), so that callers turned away together
/// do not come back together.
pub(super) fn backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}
