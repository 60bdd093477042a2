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
//!     .unless_given_up(("job-7", &key), wait, ctrl_c, Duration::from_secs(2))
//!     .await
//! {
//!     Ended::Answered(answer) => println!("{:?}", answer?.role()),
//!     Ended::GaveUp(found) => println!("gave up; the withdrawal found {found:?}"),
//! }
//! # Ok(())
//! # }
//! ```

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;
use tonic::{
    Code, Status,
    metadata::AsciiMetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    config::PAYLOAD_CEILING,
    grpc::MESSAGE_OVERHEAD,
    pairing::{Meeting, Offer, Offers, Withdrawal},
    proto::{
        self, WaitForPartiesRequest, WaitForSecondPartyRequest, WithdrawRequest,
        sync_client::SyncClient,
    },
    service::whole_millis,
    trace::TraceContext,
};

/// The server a client talks to when it is given none: the server's own
/// default gRPC address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// The least time left for which [`Client::wait_retrying`] tries again.
const MIN_TRY: Duration = Duration::from_millis(250);

/// The longest a connection may take to open, whatever the calls' deadlines.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client could not be set up. Errors from calls are `tonic::Status`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not `HOST:PORT` or an `http(s)://` URI.
    #[error("{address:?} is not a server address ({why}); use HOST:PORT or https://HOST:PORT")]
    BadServer {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        why: String,
    },
    /// A file named in the options could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// Which file: "token file", "CA certificate", ...
        what: &'static str,
        /// The file named in the options.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The token is empty, or cannot be a header value.
    #[error("the token{} {why}", match path {
        Some(path) => format!(" in {}", path.display()),
        None => String::new(),
    })]
    BadToken {
        /// The file it came from, if it came from one.
        path: Option<PathBuf>,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The TLS settings could not be used (a bad certificate, say).
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The server could not be reached.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server's URI.
        server: Uri,
        /// What went wrong, from the transport.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Where the server is, how to trust it, and what to prove to it: all that a
/// connection needs, checked before any connection is made.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    server: Uri,
    tls_ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    tls_server_name: Option<String>,
    /// `Bearer <token>`, ready to send.
    authorization: Option<AsciiMetadataValue>,
    /// A valid W3C `traceparent`, ready to send.
    traceparent: Option<AsciiMetadataValue>,
}

impl ClientOptions {
    /// Options for the server at `server`: `HOST:PORT` (plain HTTP/2),
    /// `http://HOST:PORT`, or `https://HOST:PORT` (TLS, trusting the
    /// system's CAs unless [`ClientOptions::tls_ca`] says otherwise).
    pub fn new(server: &str) -> Result<Self, ClientError> {
        let bad = |why: String| ClientError::BadServer {
            address: server.into(),
            why,
        };
        let with_scheme = match server.contains("://") {
            true => server.to_owned(),
            false => format!("http://{server}"),
        };
        let uri: Uri = with_scheme.parse().map_err(|e| bad(format!("{e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad("the scheme must be http or https".into()));
        }
        if uri.port_u16().is_none() {
            return Err(bad("it has no port".into()));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(bad("a server address has no path".into()));
        }
        Ok(Self {
            server: uri,
            tls_ca: None,
            identity: None,
            tls_server_name: None,
            authorization: None,
            traceparent: None,
        })
    }

    /// Trusts the server's certificate only if it chains to these PEM CA
    /// certificates, and speaks TLS whatever the address's scheme.
    pub fn tls_ca(self, ca: impl Into<PathBuf>) -> Self {
        Self {
            tls_ca: Some(ca.into()),
            ..self
        }
    }

    /// Presents this PEM certificate chain and key, for a server that
    /// requires client certificates (mTLS). Implies TLS.
    pub fn client_identity(self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            identity: Some((cert.into(), key.into())),
            ..self
        }
    }

    /// Expects the server's certificate to be for `name` rather than for the
    /// address's host (an address that is an IP, a tunnel). Implies TLS.
    pub fn tls_server_name(self, name: impl Into<String>) -> Self {
        Self {
            tls_server_name: Some(name.into()),
            ..self
        }
    }

    /// Sends this bearer token with every rendezvous call, for a server run
    /// with `--auth-token-file`.
    pub fn token(self, token: &str) -> Result<Self, ClientError> {
        let bad = |why| ClientError::BadToken { path: None, why };
        if token.trim().is_empty() {
            return Err(bad("is empty"));
        }
        let authorization = AsciiMetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| bad("holds a character that cannot go in a header"))?;
        Ok(Self {
            authorization: Some(authorization),
            ..self
        })
    }

    /// [`ClientOptions::token`], read from the first line of a file, so that
    /// it never shows in a command line or a process list.
    pub fn token_file(self, path: &Path) -> Result<Self, ClientError> {
        let text = read("token file", path)?;
        let text = String::from_utf8_lossy(&text);
        let first = text.lines().next().unwrap_or_default();
        self.token(first).map_err(|error| match error {
            ClientError::BadToken { why, .. } => ClientError::BadToken {
                path: Some(path.to_owned()),
                why,
            },
            other => other,
        })
    }

    /// Sends this W3C `traceparent` with every rendezvous call, so that the
    /// server's log lines for the call, and its partner's, carry this trace
    /// id. A malformed one is dropped, not sent, as Trace Context asks of
    /// anyone who would pass one on.
    pub fn traceparent(self, value: &str) -> Self {
        let valid = TraceContext::from_traceparent(value.as_bytes()).is_some();
        Self {
            traceparent: valid.then(|| value.parse().expect("a valid traceparent is ASCII")),
            ..self
        }
    }

    /// The `traceparent` header these options send, if any: for a caller
    /// that also speaks HTTP to the gateway (the load tool).
    pub fn traceparent_header(&self) -> Option<http::HeaderValue> {
        http_header(self.traceparent.as_ref())
    }

    /// The `authorization` header these options send, if any: for a caller
    /// that also speaks HTTP to the gateway (the load tool).
    pub fn authorization(&self) -> Option<http::HeaderValue> {
        http_header(self.authorization.as_ref())
    }

    /// The server's URI.
    pub fn server(&self) -> &Uri {
        &self.server
    }

    /// Whether connections use TLS: an `https` address, or any TLS option.
    pub fn uses_tls(&self) -> bool {
        self.server.scheme_str() == Some("https")
            || self.tls_ca.is_some()
            || self.identity.is_some()
            || self.tls_server_name.is_some()
    }

    /// The endpoint these options describe, for a caller that wants to tune
    /// it further (the load tool sets flow-control windows) before
    /// connecting. Reads the TLS files now, so a bad one fails here.
    pub fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let uri = match self.uses_tls() && self.server.scheme_str() == Some("http") {
            // TLS was asked for by an option: the address's scheme follows.
            true => {
                let authority = self.server.authority().expect("checked in new").as_str();
                format!("https://{authority}")
                    .parse()
                    .expect("a valid URI with another scheme")
            }
            false => self.server.clone(),
        };
        let mut endpoint = Endpoint::from(uri)
            // A call's own deadline, when shorter, ends it sooner.
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if self.uses_tls() {
            endpoint = endpoint
                .tls_config(self.tls_config()?)
                .map_err(ClientError::Tls)?;
        }
        Ok(endpoint)
    }

    fn tls_config(&self) -> Result<ClientTlsConfig, ClientError> {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("CA certificate", ca)?)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name);
        }
        Ok(tls)
    }
}

/// A gRPC metadata value as the HTTP header it is on the wire.
fn http_header(value: Option<&AsciiMetadataValue>) -> Option<http::HeaderValue> {
    let value = value?;
    Some(http::HeaderValue::from_bytes(value.as_bytes()).expect("a valid metadata value"))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

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
        (id, attempt_key): (&str, &str),
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
fn key_or_new(key: &str) -> String {
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

fn meeting(response: proto::WaitForSecondPartyResponse) -> Result<Meeting, Status> {
    let position = match response.role() {
        proto::Role::First => 0,
        proto::Role::Second => 1,
        proto::Role::Unspecified => {
            return Err(Status::internal("the server's answer has no role"));
        }
    };
    let waited = response
        .waited
        .and_then(|waited| Duration::try_from(waited).ok())
        .unwrap_or_default();
    // The server does not tell a caller its partner's trace id.
    let peer = Offer::from(response.peer_payload);
    Ok(Meeting::new(position, Offers::Peer(peer), waited))
}

fn group(response: proto::WaitForPartiesResponse) -> Result<Meeting, Status> {
    let position = response.position as usize;
    if position >= response.payloads.len() {
        return Err(Status::internal(format!(
            "the server's answer puts this caller at position {position} of a group of {}",
            response.payloads.len()
        )));
    }
    let waited = response
        .waited
        .and_then(|waited| Duration::try_from(waited).ok())
        .unwrap_or_default();
    let offers = response.payloads.into_iter().map(Offer::from).collect();
    Ok(Meeting::new(position, Offers::All(offers), waited))
}

fn withdrawal(response: proto::WithdrawResponse) -> Result<Withdrawal, Status> {
    Ok(match response.withdrawal() {
        proto::Withdrawal::Withdrawn => Withdrawal::Withdrawn,
        proto::Withdrawal::TooLateTimedOut => Withdrawal::TimedOut,
        proto::Withdrawal::Unknown => Withdrawal::Unknown,
        proto::Withdrawal::Unspecified => {
            return Err(Status::internal(
                "the server's answer says nothing of the withdrawal",
            ));
        }
        proto::Withdrawal::TooLateMet => {
            let position = response.position as usize;
            let waited = response
                .waited
                .and_then(|waited| Duration::try_from(waited).ok())
                .unwrap_or_default();
            let mut peers = response.peer_payloads.into_iter().map(Offer::from);
            let offers = match (response.parties, peers.len()) {
                (2, 1) => Offers::Peer(peers.next().expect("one")),
                (parties, others)
                    if others + 1 == parties as usize && position < parties as usize =>
                {
                    let mut all: Vec<Offer> = peers.collect();
                    // Its own payload is the caller's to know.
                    all.insert(position, Offer::default());
                    Offers::All(all.into())
                }
                (parties, others) => {
                    return Err(Status::internal(format!(
                        "the server's answer puts this caller at position {position} of a \
                         group of {parties}, with {others} other payloads"
                    )));
                }
            };
            Withdrawal::Met(Meeting::new(position, offers, waited))
        }
    })
}

/// Makes `attempt` (given the time left) until it succeeds, fails in a way
/// that retrying cannot mend, or `timeout` has passed since the first.
async fn retrying<F>(
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
fn backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

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
