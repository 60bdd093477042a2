//! The one rendezvous call that both transports map onto.
//!
//! gRPC ([`crate::grpc`]) and HTTP ([`crate::gateway`]) each turn their
//! request into a [`Rendezvous::call`] and its [`CallError`] into their own
//! answer. Validation, the wait limit and the per-call span live here, once,
//! so the two protocols cannot drift apart, and so that an HTTP caller and a
//! gRPC caller with the same id meet in the same engine.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tracing::{Instrument, field::Empty};

use http::{HeaderMap, header::AUTHORIZATION};

use crate::{
    auth::{Auth, AuthError},
    metrics::{Metrics, Rejection},
    pairing::{Engine, Id, IdError, LocalEngine, Meeting, PairError, Role},
};

/// The namespace a call meets in: `None` when tokens are not required.
pub type Namespace = Option<Arc<str>>;

/// The limits a call is held to; they come from [`crate::Config`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest any caller waits, whatever it asks for.
    pub max_wait: Duration,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
}

/// The rendezvous service, shared by every connection of both protocols.
///
/// Cheap to clone: clones share one engine.
#[derive(Debug)]
pub struct Rendezvous<E = LocalEngine> {
    engine: Arc<E>,
    limits: Limits,
    /// `None` when `--auth-token-file` is not set: everyone may call.
    auth: Option<Arc<Auth>>,
    metrics: Arc<Metrics>,
}

impl<E> Clone for Rendezvous<E> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            limits: self.limits,
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Which transport a call came in on; recorded on its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `rendezvous.v1.Sync/WaitForSecondParty`.
    Grpc,
    /// `POST /wait-for-second-party/{id}`.
    Http,
}

impl Protocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// Every way a call can fail. Each transport maps it to its own answer in
/// exactly one place; the messages are written for the caller to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The id is empty or too long.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// The payload is over `--max-payload`.
    #[error("payload is {size} bytes; the limit is {limit} bytes (--max-payload)")]
    PayloadTooLarge {
        /// The size the caller sent, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The caller sent no valid bearer token, and `--auth-token-file` is set.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// Nobody came in time, or the server is shutting down.
    #[error(transparent)]
    Pair(#[from] PairError),
}

impl<E: Engine> Rendezvous<E> {
    /// A service over `engine`, holding every call to `limits`.
    pub fn new(engine: Arc<E>, limits: Limits) -> Self {
        Self {
            engine,
            limits,
            auth: None,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The series this service counts its calls in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The same service, calls to which need a bearer token from `auth`.
    pub fn with_auth(self, auth: Option<Arc<Auth>>) -> Self {
        Self { auth, ..self }
    }

    /// Checks a call's `authorization` header, and returns the namespace it
    /// may meet in: `Ok(None)` when tokens are not required (and then the
    /// headers are not even looked at).
    pub fn authenticate(
        &self,
        protocol: Protocol,
        headers: &HeaderMap,
    ) -> Result<Namespace, CallError> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        match auth.namespace_of(headers.get(AUTHORIZATION)) {
            Ok(namespace) => Ok(Some(namespace)),
            Err(error) => {
                self.metrics.rejected(protocol, Rejection::Unauthenticated);
                Err(error.into())
            }
        }
    }

    /// The limits this service enforces, for adapters that check early (an
    /// HTTP `content-length`, a gRPC message size).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The engine behind this service, for shutdown and for tests.
    pub fn engine(&self) -> &Arc<E> {
        &self.engine
    }

    /// Meets the other caller with `id`.
    ///
    /// `wait` is how long the caller is willing to wait; it is capped at
    /// `max_wait`, and `None` means `max_wait`.
    pub async fn call(
        &self,
        protocol: Protocol,
        namespace: Namespace,
        id: String,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> Result<Meeting, CallError> {
        let invalid = |error: CallError| {
            self.metrics.rejected(protocol, Rejection::InvalidArgument);
            Err(error)
        };
        let id = match Id::in_namespace(namespace.as_deref(), id) {
            Ok(id) => id,
            Err(error) => return invalid(error.into()),
        };
        if payload.len() > self.limits.max_payload {
            return invalid(CallError::PayloadTooLarge {
                size: payload.len(),
                limit: self.limits.max_payload,
            });
        }
        let wait = wait.map_or(self.limits.max_wait, |w| w.min(self.limits.max_wait));

        // A span per call, at debug level: with the default filter it is
        // never built, which keeps the hot path cheap (an info-level span cost
        // about 8% of the server's CPU per pair; see BENCHMARKS.md).
        let span = tracing::debug_span!(
            "rendezvous",
            protocol = protocol.as_str(),
            outcome = Empty,
            role = Empty,
            waited = Empty,
        );
        // Ids can be secret pairing codes: only in this debug event, never on
        // the span, whose fields show up on every event inside it.
        span.in_scope(|| tracing::debug!(id = id.as_str(), ?wait, "arrived"));
        // Counts the caller as parked until it leaves, and as cancelled if
        // its future is dropped before the outcome.
        self.metrics.arrived(protocol);
        let mut pending = Pending {
            metrics: &self.metrics,
            protocol,
            settled: false,
        };
        let result = self
            .engine
            .meet(id, payload, wait)
            .instrument(span.clone())
            .await;
        pending.settled = true;
        match &result {
            Ok(meeting) => self.metrics.paired(protocol, meeting.waited),
            Err(PairError::TimedOut { .. }) => self.metrics.timed_out(protocol),
            Err(PairError::Full { .. }) => self.metrics.rejected(protocol, Rejection::Full),
            Err(PairError::ShuttingDown) => {
                self.metrics.rejected(protocol, Rejection::ShuttingDown)
            }
        }
        if !span.is_disabled() {
            record(&span, &result);
        }
        result.map_err(CallError::from)
    }
}

/// A call on its way, in the parked gauge until dropped; dropped unsettled,
/// the caller went away.
struct Pending<'a> {
    metrics: &'a Metrics,
    protocol: Protocol,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.metrics.left(self.protocol);
        if !self.settled {
            self.metrics.cancelled(self.protocol);
        }
    }
}

fn record(span: &tracing::Span, result: &Result<Meeting, PairError>) {
    let (outcome, waited) = match result {
        Ok(meeting) => {
            span.record(
                "role",
                match meeting.role {
                    Role::First => "first",
                    Role::Second => "second",
                },
            );
            ("paired", meeting.waited)
        }
        Err(PairError::TimedOut { wait }) => ("timed_out", *wait),
        Err(PairError::ShuttingDown) => ("shutting_down", Duration::ZERO),
        Err(PairError::Full { .. }) => ("full", Duration::ZERO),
    };
    span.record("outcome", outcome);
    span.record("waited", tracing::field::debug(waited));
    span.in_scope(|| tracing::debug!(outcome, ?waited, "finished"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(max_wait: Duration) -> Rendezvous {
        Rendezvous::new(
            Arc::new(LocalEngine::new()),
            Limits {
                max_wait,
                max_payload: 4,
            },
        )
    }

    #[tokio::test]
    async fn bad_inputs_are_refused_before_the_engine() {
        let svc = service(Duration::from_secs(1));
        let call = |id: &str, payload: &'static [u8]| {
            svc.call(
                Protocol::Grpc,
                None,
                id.into(),
                Bytes::from_static(payload),
                None,
            )
        };
        assert_eq!(
            call("", b"").await,
            Err(CallError::InvalidId(IdError::Empty))
        );
        assert_eq!(
            call(&"x".repeat(257), b"").await,
            Err(CallError::InvalidId(IdError::TooLong { len: 257 }))
        );
        assert_eq!(
            call("a", b"12345").await,
            Err(CallError::PayloadTooLarge { size: 5, limit: 4 })
        );
        assert_eq!(svc.engine().waiting(), 0);
    }

    /// The sample line for `series` in a scrape, e.g. its value.
    fn sample(svc: &Rendezvous, series: &str) -> Option<String> {
        svc.metrics().render().lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_owned)
        })
    }

    #[tokio::test]
    async fn a_call_after_close_is_refused_and_counted_as_shutting_down() {
        let svc = service(Duration::from_secs(1));
        svc.engine().close();
        let refused = svc
            .call(Protocol::Http, None, "a".into(), Bytes::new(), None)
            .await;
        assert_eq!(refused, Err(CallError::Pair(PairError::ShuttingDown)));
        assert_eq!(
            sample(
                &svc,
                r#"rendezvous_rejections_total{protocol="http",reason="shutting_down"}"#
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&svc, r#"rendezvous_parked_callers{protocol="http"}"#).as_deref(),
            Some("0")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_leaves_is_counted_as_cancelled_and_no_longer_parked() {
        let svc = service(Duration::from_secs(10));
        {
            let call = svc.call(Protocol::Grpc, None, "a".into(), Bytes::new(), None);
            tokio::pin!(call);
            let waker = std::task::Waker::noop();
            let polled = call
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker));
            assert!(polled.is_pending());
            assert_eq!(
                sample(&svc, r#"rendezvous_parked_callers{protocol="grpc"}"#).as_deref(),
                Some("1")
            );
        }
        assert_eq!(
            sample(&svc, r#"rendezvous_parked_callers{protocol="grpc"}"#).as_deref(),
            Some("0")
        );
        assert_eq!(
            sample(&svc, r#"rendezvous_cancellations_total{protocol="grpc"}"#).as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&svc, r#"rendezvous_timeouts_total{protocol="grpc"}"#).as_deref(),
            Some("0")
        );
        assert_eq!(svc.engine().waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_shorter_of_the_callers_wait_and_max_wait_wins() {
        let svc = service(Duration::from_secs(10));
        let timed_out = |secs| {
            Err(CallError::Pair(PairError::TimedOut {
                wait: Duration::from_secs(secs),
            }))
        };
        let short = svc.call(
            Protocol::Http,
            None,
            "a".into(),
            Bytes::new(),
            Some(Duration::from_secs(2)),
        );
        assert_eq!(short.await, timed_out(2));
        let long = svc.call(
            Protocol::Http,
            None,
            "a".into(),
            Bytes::new(),
            Some(Duration::from_secs(60)),
        );
        assert_eq!(long.await, timed_out(10));
        let default = svc.call(Protocol::Grpc, None, "a".into(), Bytes::new(), None);
        assert_eq!(default.await, timed_out(10));
    }
}
