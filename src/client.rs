//! The Rust client for `rendezvous.v1.Sync` and gRPC health: what
//! `rendezvous wait`, `rendezvous probe`, the load tool and the tests share,
//! so that each of them connects, trusts, authenticates and retries the same
//! way.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use rendezvous::client::{Client, ClientOptions, Ended};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let options = ClientOptions::new("http://127.0.0.1:50051")?;
//! let client = Client::connect(&options).await?;
//! // Waits (at most 30 s) for the other party with the same id.
//! let meeting = client
//!     .wait("build-1234", "ready".into(), Some(Duration::from_secs(30)))
//!     .await?;
//! println!(
//!     "{:?} after {:?}, the other sent {:?}",
//!     meeting.role(),
//!     meeting.waited,
//!     meeting.peer().payload
//! );
//! // Waits for a group of three, this caller included: every member's
//! // payload comes back, in arrival order.
//! let group = client
//!     .gather("deploy-7", 3, "eu".into(), Some(Duration::from_secs(30)))
//!     .await?;
//! println!(
//!     "arrived at position {} of {:?}",
//!     group.position,
//!     group.payloads(&"eu".into())
//! );
//! // Waits (at most 10 min, retrying through restarts) unless Ctrl-C
//! // comes first: then the wait is withdrawn, so that nobody is paired
//! // with a caller that gave up.
//! let key = rendezvous::client::attempt_key();
//! let wait = client.wait_retrying("job-7", "up".into(), Duration::from_secs(600), &key, |_, _| {});
//! let ctrl_c = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! match client
//!     .unless_given_up("job-7", &key, wait, ctrl_c, Duration::from_secs(2))
//!     .await
//! {
//!     Ended::Answered(answer) => println!("{:?}", answer?.role()),
//!     Ended::GaveUp(found) => println!("gave up; the withdrawal found {found:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Here: the client and its calls. `client/options.rs`: what a connection
//! needs (address, TLS, token); `client/retry.rs`: attempt keys, which
//! failures are retried, and the backoff; `client/answers.rs`: the server's
//! answers read back and checked.

use std::time::Duration;

use bytes::Bytes;
use tonic::{
    Code, Status,
    metadata::AsciiMetadataValue,
    transport::{Channel, Uri},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    human::whole_millis,
    pairing::{Meeting, Withdrawal},
    proto::{
        MESSAGE_OVERHEAD, PAYLOAD_CEILING, WaitForPartiesRequest, WaitForSecondPartyRequest,
        WithdrawRequest, sync_client::SyncClient,
    },
};

mod answers;
mod options;
mod retry;

use answers::{group, meeting, withdrawal};
pub use options::{ClientError, ClientOptions, DEFAULT_SERVER};
pub use retry::{Try, attempt_key, retryable};
use retry::{key_or_new, retrying};

/// A connection to a rendezvous server: its rendezvous method and its
/// health service. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    server: Uri,
    sync: SyncClient<Channel>,
    health: HealthClient<Channel>,
    authorization: Option<AsciiMetadataValue>,
    traceparent: Option<AsciiMetadataValue>,
}

impl Client {
    /// Connects now, so that an unreachable server is an error here rather
    /// than at the first call.
    pub async fn connect(options: &ClientOptions) -> Result<Self, ClientError> {
        let channel =
            options
                .endpoint()?
                .connect()
                .await
                .map_err(|source| ClientError::Connect {
                    server: options.server.clone(),
                    source,
                })?;
        Ok(Self::from_channel(channel, options))
    }

    /// Connects at the first call, and again after a connection is lost: for
    /// a caller that retries while a server restarts. Until the server
    /// answers, calls fail `UNAVAILABLE`.
    pub fn connect_lazily(options: &ClientOptions) -> Result<Self, ClientError> {
        Ok(Self::from_channel(
            options.endpoint()?.connect_lazy(),
            options,
        ))
    }

    /// A client on a channel made elsewhere (a tuned endpoint, a test's),
    /// sending `options`' token.
    pub fn from_channel(channel: Channel, options: &ClientOptions) -> Self {
        // The server accepts payloads up to PAYLOAD_CEILING; so must we.
        let limit = PAYLOAD_CEILING + MESSAGE_OVERHEAD;
        Self {
            server: options.server.clone(),
            sync: SyncClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            health: HealthClient::new(channel),
            authorization: options.authorization.clone(),
            traceparent: options.traceparent.clone(),
        }
    }

    /// Waits for the other party with `id`, sending `payload`, for at most
    /// `timeout` (sent as the call's deadline; the server's `--max-wait`
    /// applies too). A lone caller gets `DEADLINE_EXCEEDED`.
    pub async fn wait(
        &self,
        id: &str,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Meeting, Status> {
        self.wait_with_key(id, payload, timeout, "").await
    }

    /// [`Client::wait`] with an attempt key (see [`attempt_key`]): a try of
    /// the wait that an earlier call with the same key started, if the
    /// server still knows it. Empty for none. A key alone is the wait's
    /// first try; a [`Try`] says which try it is.
    pub async fn wait_with_key(
        &self,
        id: &str,
        payload: Bytes,
        timeout: Option<Duration>,
        attempt: impl Into<Try<'_>>,
    ) -> Result<Meeting, Status> {
        let attempt = attempt.into();
        let message = WaitForSecondPartyRequest {
            id: id.to_owned(),
            payload,
            attempt_key: attempt.key.to_owned(),
            previous_attempts: attempt.previous,
        };
        let response = self
            .unary(timeout, || {
                let mut sync = self.sync.clone();
                let request = self.request(message.clone(), timeout);
                async move { sync.wait_for_second_party(request).await }
            })
            .await?;
        meeting(response)
    }

    /// Waits until `parties` callers (this one included) have come with
    /// `id`, sending `payload` to each of them, for at most `timeout`. The
    /// [`Meeting`] holds this caller's position and every member's payload
    /// ([`Meeting::payloads`]). A group that does not fill up in time gets
    /// `DEADLINE_EXCEEDED`.
    pub async fn gather(
        &self,
        id: &str,
        parties: u32,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Meeting, Status> {
        self.gather_with_key(id, parties, payload, timeout, "")
            .await
    }

    /// [`Client::gather`] with an attempt key, as [`Client::wait_with_key`].
    pub async fn gather_with_key(
        &self,
        id: &str,
        parties: u32,
        payload: Bytes,
        timeout: Option<Duration>,
        attempt: impl Into<Try<'_>>,
    ) -> Result<Meeting, Status> {
        let attempt = attempt.into();
        let message = WaitForPartiesRequest {
            id: id.to_owned(),
            payload,
            parties,
            attempt_key: attempt.key.to_owned(),
            previous_attempts: attempt.previous,
        };
        let response = self
            .unary(timeout, || {
                let mut sync = self.sync.clone();
                let request = self.request(message.clone(), timeout);
                async move { sync.wait_for_parties(request).await }
            })
            .await?;
        group(response)
    }

    /// One unary call, as every call of this client is made: sent again if
    /// it never left (hyperium/tonic#2185), bounded by `timeout` connection
    /// included, and its failure read as [`Client::failed`] reads it.
    async fn unary<R, Fut>(
        &self,
        timeout: Option<Duration>,
        call: impl FnMut() -> Fut,
    ) -> Result<R, Status>
    where
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let response = within(timeout, resent_if_unsent(call))
            .await
            .map_err(|status| self.failed(status, timeout))?;
        Ok(response.into_inner())
    }

    /// A call's request: `message`, with the deadline, the token and the
    /// traceparent this client sends.
    fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        if let Some(traceparent) = &self.traceparent {
            request
                .metadata_mut()
                .insert("traceparent", traceparent.clone());
        }
        request
    }

    /// [`Client::wait`], retried while the server is unavailable or full
    /// (a rolling restart, a burst) or the call's connection broke, with
    /// exponential backoff and jitter, until `timeout` has passed since the
    /// first try. `on_retry` hears of each failure that will be retried, and
    /// the pause before the next try.
    ///
    /// Every try sends one attempt key: `attempt_key`, or one made here if
    /// that is empty. A try whose connection broke keeps its place on the
    /// server for a few seconds, and the next try takes it back, or gets
    /// the answer decided meanwhile. So a broken connection never costs the
    /// wait, nor pairs it twice.
    pub async fn wait_retrying(
        &self,
        id: &str,
        payload: Bytes,
        timeout: Duration,
        attempt_key: &str,
        on_retry: impl FnMut(&Status, Duration),
    ) -> Result<Meeting, Status> {
        let key = key_or_new(attempt_key);
        retrying(timeout, on_retry, |left, previous| {
            let attempt = Try {
                key: &key,
                previous,
            };
            self.wait_with_key(id, payload.clone(), Some(left), attempt)
        })
        .await
    }

    /// [`Client::gather`], retried as [`Client::wait_retrying`] retries.
    pub async fn gather_retrying(
        &self,
        id: &str,
        parties: u32,
        payload: Bytes,
        timeout: Duration,
        attempt_key: &str,
        on_retry: impl FnMut(&Status, Duration),
    ) -> Result<Meeting, Status> {
        let key = key_or_new(attempt_key);
        retrying(timeout, on_retry, |left, previous| {
            let attempt = Try {
                key: &key,
                previous,
            };
            self.gather_with_key(id, parties, payload.clone(), Some(left), attempt)
        })
        .await
    }

    /// Withdraws the wait sent with `id` and `attempt_key`, for a caller
    /// that gives up on it: its place is taken out at once (its connection
    /// alone going away keeps it for the server's `--attempt-grace`), and
    /// nobody is paired with it afterwards. Says what it found: withdrawn,
    /// too late (with what the wait was to be told; in a group, the others'
    /// payloads, its own left empty), or unknown.
    pub async fn withdraw(
        &self,
        id: &str,
        attempt_key: &str,
        timeout: Option<Duration>,
    ) -> Result<Withdrawal, Status> {
        let message = WithdrawRequest {
            id: id.to_owned(),
            attempt_key: attempt_key.to_owned(),
        };
        let response = self
            .unary(timeout, || {
                let mut sync = self.sync.clone();
                let request = self.request(message.clone(), timeout);
                async move { sync.withdraw(request).await }
            })
            .await?;
        withdrawal(response)
    }

    /// Runs `wait`, a wait of this client's sent with `id` and
    /// `attempt_key`, until it ends or `give_up` completes (a signal, a
    /// cancelled job). Giving up drops the call and withdraws its wait
    /// ([`Client::withdraw`]) within `withdraw_timeout`, so that a server
    /// that is gone cannot hold up the caller that gave up.
    pub async fn unless_given_up(
        &self,
        id: &str,
        attempt_key: &str,
        wait: impl Future<Output = Result<Meeting, Status>>,
        give_up: impl Future<Output = ()>,
        withdraw_timeout: Duration,
    ) -> Ended {
        tokio::select! {
            // A caller that said stop, stops: if its answer came at the
            // same moment, the withdrawal finds it, and says so.
            biased;
            () = give_up => {
                Ended::GaveUp(self.withdraw(id, attempt_key, Some(withdraw_timeout)).await)
            }
            answer = wait => Ended::Answered(answer),
        }
    }

    /// Asks the server's health service about `service` ("" for the whole
    /// server, `rendezvous.v1.Sync` for readiness to pair).
    pub async fn check(
        &self,
        service: &str,
        timeout: Option<Duration>,
    ) -> Result<ServingStatus, Status> {
        let response = self
            .unary(timeout, || {
                let mut request = tonic::Request::new(HealthCheckRequest {
                    service: service.into(),
                });
                if let Some(timeout) = timeout {
                    request.set_timeout(timeout);
                }
                let mut health = self.health.clone();
                async move { health.check(request).await }
            })
            .await?;
        Ok(response.status())
    }
}

impl Client {
    /// A failed call's status, as callers should read it: where the
    /// transport failed, and the client's own timer as a deadline.
    fn failed(&self, status: Status, timeout: Option<Duration>) -> Status {
        own_deadline(self.unreachable(status), timeout)
    }

    /// A status the transport made up (no connection) says only "tcp
    /// connect error"; this one says where, and why.
    fn unreachable(&self, status: Status) -> Status {
        let Some(source) = std::error::Error::source(&status) else {
            return status; // the server's own answer
        };
        // Layers of the chain often repeat the one below: say each once.
        let mut parts: Vec<String> = Vec::new();
        let mut cause: Option<&dyn std::error::Error> = Some(source);
        while let Some(error) = cause {
            let part = error.to_string();
            if parts.last() != Some(&part) {
                parts.push(part);
            }
            cause = error.source();
        }
        let mut said = Status::new(
            status.code(),
            format!("cannot reach {}: {}", self.server, parts.join(": ")),
        );
        // Still from the transport: `retryable` tells it from the server's
        // own answer by that.
        said.set_source(std::sync::Arc::new(status));
        said
    }
}

/// Makes a call once more if it failed without having been sent.
///
/// A server with `--max-connection-age` sends GOAWAY, and a tonic channel
/// hands its next call to that connection all the same (hyperium/tonic#2185):
/// the call fails `CANCELLED` without reaching the server, and the channel
/// connects anew for the call after. Making that call again is safe, since
/// the server never saw it.
async fn resent_if_unsent<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    match call().await {
        Err(status) if unsent(&status) => call().await,
        result => result,
    }
}

/// Whether hyper gave up on a call before sending it ("operation was
/// canceled": its connection was closing).
fn unsent(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        if let Some(error) = error.downcast_ref::<hyper::Error>() {
            return error.is_canceled();
        }
        cause = error.source();
    }
    false
}

/// A call, held to its deadline from start to end. tonic sends the deadline
/// to the server, but does not count the time spent opening a connection
/// against it: a server that never accepts would hold the call for the
/// whole connect timeout.
async fn within<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let Some(timeout) = timeout else {
        return call.await;
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(no_answer(timeout)))
}

/// A call that ran out of time on the client's side.
fn no_answer(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("no answer within {}", whole_millis(timeout)))
}

/// tonic enforces a call's deadline in the client too, and when its timer
/// fires before the server's answer arrives (the server answers a little
/// early, but a busy machine can lose that race) the call ends `CANCELLED
/// "Timeout expired"`. For the caller it is the same outcome as the server's
/// `DEADLINE_EXCEEDED`, and it is reported as one.
fn own_deadline(status: Status, timeout: Option<Duration>) -> Status {
    match (status.code(), timeout) {
        (Code::Cancelled, Some(timeout)) if status.message() == "Timeout expired" => {
            no_answer(timeout)
        }
        _ => status,
    }
}

/// How a wait that its caller could give up on ended
/// ([`Client::unless_given_up`]).
#[derive(Debug)]
pub enum Ended {
    /// The wait ended first: its answer.
    Answered(Result<Meeting, Status>),
    /// The caller gave up first: what the withdrawal found, or why it could
    /// not be made (then the server keeps the place for its grace).
    GaveUp(Result<Withdrawal, Status>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use retry::backoff;

    #[test]
    fn server_addresses() {
        let server = |s: &str| ClientOptions::new(s).map(|o| o.server().to_string());
        assert_eq!(
            server("localhost:50051").unwrap(),
            "http://localhost:50051/"
        );
        assert_eq!(server("http://10.0.0.1:1").unwrap(), "http://10.0.0.1:1/");
        assert_eq!(
            server("https://example.com:443").unwrap(),
            "https://example.com:443/"
        );
        for (bad, why) in [
            ("localhost", "it has no port"),
            ("ftp://host:21", "the scheme must be http or https"),
            ("http://host:1/path", "a server address has no path"),
        ] {
            let error = ClientOptions::new(bad).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "{bad:?} is not a server address ({why}); use HOST:PORT or https://HOST:PORT"
                )
            );
        }
        assert!(ClientOptions::new("a b:1").is_err());
    }

    #[test]
    fn tls_follows_the_scheme_or_any_tls_option() {
        let plain = ClientOptions::new("localhost:1").unwrap();
        assert!(!plain.uses_tls());
        assert!(
            ClientOptions::new("https://localhost:1")
                .unwrap()
                .uses_tls()
        );
        assert!(plain.clone().tls_ca("ca.pem").uses_tls());
        assert!(plain.clone().client_identity("c", "k").uses_tls());
        assert!(plain.clone().tls_server_name("x").uses_tls());
        // A file that is not there is an error before any connection.
        let error = plain.tls_ca("/no/such/ca.pem").endpoint().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read the CA certificate /no/such/ca.pem: "),
            "{error}"
        );
    }

    #[test]
    fn only_a_valid_traceparent_is_sent() {
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let options = ClientOptions::new("localhost:1").unwrap();
        assert_eq!(options.traceparent_header(), None);
        assert_eq!(
            options
                .clone()
                .traceparent(valid)
                .traceparent_header()
                .unwrap(),
            valid
        );
        assert_eq!(
            options
                .traceparent(&valid.to_uppercase())
                .traceparent_header(),
            None
        );
    }

    #[test]
    fn tokens_come_from_the_first_line_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret \nsecond line\n").unwrap();
        let options = ClientOptions::new("localhost:1")
            .unwrap()
            .token_file(&path)
            .unwrap();
        assert_eq!(options.authorization().unwrap(), "Bearer s3cret");
        assert_eq!(options.authorization.unwrap(), "Bearer s3cret");
        assert_eq!(
            ClientOptions::new("localhost:1").unwrap().authorization(),
            None
        );
        for (text, why) in [
            ("\n", "is empty"),
            ("a\u{7}b\n", "holds a character that cannot go in a header"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = ClientOptions::new("localhost:1")
                .unwrap()
                .token_file(&path)
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("the token in {} {why}", path.display())
            );
        }
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_with_jitter() {
        let pauses: Vec<Duration> = backoff().take(12).collect();
        let mut base = Duration::from_millis(50);
        for pause in &pauses {
            assert!(*pause >= base && *pause <= base * 2, "{pauses:?}");
            base = (base * 2).min(Duration::from_secs(2));
        }
        // Jitter: pauses with the same base differ.
        assert_ne!(pauses[10], pauses[11], "{pauses:?}");
    }

    #[test]
    fn the_clients_own_timer_is_a_deadline_exceeded() {
        let mine = own_deadline(
            Status::cancelled("Timeout expired"),
            Some(Duration::from_millis(300)),
        );
        assert_eq!(mine.code(), Code::DeadlineExceeded);
        assert_eq!(mine.message(), "no answer within 300ms");
        // Any other cancellation, or one without a deadline, stays as it was.
        let other = own_deadline(Status::cancelled("h2 reset"), Some(Duration::from_secs(1)));
        assert_eq!(
            (other.code(), other.message()),
            (Code::Cancelled, "h2 reset")
        );
        let other = own_deadline(Status::cancelled("Timeout expired"), None);
        assert_eq!(other.code(), Code::Cancelled);
    }

    /// A withdrawal's answer reads back as the server meant it: a pair's
    /// partner, a group's other members around this caller's own (empty)
    /// place; an answer whose counts do not add up is refused, never
    /// misread.
    #[test]
    fn a_withdrawals_answer_reads_back_or_is_refused() {
        let met = |position, parties, peers: &[&'static str]| proto::WithdrawResponse {
            withdrawal: proto::Withdrawal::TooLateMet.into(),
            position,
            parties,
            waited: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            peer_payloads: peers
                .iter()
                .map(|p| Bytes::from_static(p.as_bytes()))
                .collect(),
        };
        let Ok(Withdrawal::Met(pair)) = withdrawal(met(1, 2, &["a"])) else {
            panic!("a pair");
        };
        assert_eq!(
            (pair.role(), pair.parties()),
            (crate::pairing::Role::Second, 2)
        );
        assert_eq!(pair.peer().payload, "a");
        assert_eq!(pair.waited, Duration::from_secs(2));
        let Ok(Withdrawal::Met(group)) = withdrawal(met(1, 3, &["a", "c"])) else {
            panic!("a group");
        };
        assert_eq!((group.position, group.parties()), (1, 3));
        assert_eq!(group.payloads(&Bytes::new()), ["a", "", "c"]);
        let Ok(Withdrawal::Met(last)) = withdrawal(met(2, 3, &["a", "b"])) else {
            panic!("the last member");
        };
        assert_eq!(last.payloads(&Bytes::new()), ["a", "b", ""]);
        for bad in [
            met(3, 3, &["a", "b"]),
            met(0, 3, &["a"]),
            met(0, 3, &["a", "b", "c"]),
        ] {
            assert_eq!(withdrawal(bad).unwrap_err().code(), Code::Internal);
        }
        let plain = |found: proto::Withdrawal| proto::WithdrawResponse {
            withdrawal: found.into(),
            ..Default::default()
        };
        assert_eq!(
            withdrawal(plain(proto::Withdrawal::Withdrawn)).unwrap(),
            Withdrawal::Withdrawn
        );
        assert_eq!(
            withdrawal(plain(proto::Withdrawal::TooLateTimedOut)).unwrap(),
            Withdrawal::TimedOut
        );
        assert_eq!(
            withdrawal(plain(proto::Withdrawal::Unknown)).unwrap(),
            Withdrawal::Unknown
        );
        assert_eq!(
            withdrawal(plain(proto::Withdrawal::Unspecified))
                .unwrap_err()
                .code(),
            Code::Internal
        );
    }

    #[test]
    fn only_refusals_that_left_no_trace_are_retried() {
        assert!(retryable(&Status::unavailable("")));
        assert!(retryable(&Status::resource_exhausted("")));
        for code in [
            Code::DeadlineExceeded,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::Internal,
        ] {
            assert!(!retryable(&Status::new(code, "")), "{code:?}");
        }
    }
}
