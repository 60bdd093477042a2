//! The one rendezvous call that both transports map onto.
//!
//! gRPC ([`crate::grpc`]) and HTTP ([`crate::gateway`]) each turn their
//! request into a [`Rendezvous::call`] and its [`CallError`] into their own
//! answer. Validation, the wait limit and the per-call span live here, once,
//! so the two protocols cannot drift apart, and so that an HTTP caller and a
//! gRPC caller with the same id meet in the same engine.
//!
//! Here: the call and the withdrawal. `service/operation.rs`: every RPC and
//! its names on each port; `service/request.rs`: a call as a transport read
//! it, and its limits; `service/error.rs`: every way a call fails, with its
//! gRPC and HTTP codes; `service/span.rs`: the exported span.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tracing::{Instrument, field::Empty};

use http::HeaderMap;

mod error;
mod operation;
mod request;
mod span;

#[cfg(test)]
pub(crate) use error::refused;
use error::refused_by_engine;
pub use error::{CallError, Codes, Refusal};
pub use operation::{HttpRoute, Operation};
pub use request::{CallRequest, Deadline, Limits, Namespace, WithdrawRequest};
use span::CallSpan;

use crate::{
    auth::Auth,
    metrics::{Metrics, Protocol, Rejection},
    pairing::{
        AnyEngine, AttemptKey, AttemptKeyError, Attempts, Delivery, Engine, Id, Joining, Meeting,
        Offer, PairError, Parties, Withdrawal,
    },
    proto, telemetry,
};

/// The rendezvous service, shared by every connection of both protocols.
///
/// Cheap to clone: clones share one engine, whichever the configuration
/// chose ([`AnyEngine`]).
#[derive(Debug, Clone)]
pub struct Rendezvous {
    engine: Arc<AnyEngine>,
    limits: Limits,
    /// `None` when `--auth-token-file` is not set: everyone may call.
    auth: Option<Arc<Auth>>,
    metrics: Arc<Metrics>,
    /// The waits of calls with attempt keys.
    attempts: Arc<Attempts>,
}

impl Rendezvous {
    /// A service over `engine`, holding every call to `limits`.
    pub fn new(engine: Arc<AnyEngine>, limits: Limits) -> Self {
        Self {
            engine,
            limits,
            auth: None,
            metrics: Arc::new(Metrics::new()),
            attempts: Attempts::new(limits.attempt_grace),
        }
    }

    /// The series this service counts its calls in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The same service, counting its calls in `metrics` (which may hold an
    /// engine's series too).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self { metrics, ..self }
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
        auth.namespace_in(headers)
            .map(Some)
            .map_err(|error| self.refuse(protocol, error.into()))
    }

    /// Counts a refusal, in the one place every refusal of the service is
    /// counted, and hands it back.
    fn refuse(&self, protocol: Protocol, error: CallError) -> CallError {
        if let Some(reason) = error.rejection() {
            self.rejected(protocol, reason, &error);
        }
        error
    }

    /// Records a refused call: its counter, and a `debug` line with the
    /// reason, the protocol and what was wrong. Every refusal, the service's
    /// own and each transport's, comes through here, so none goes unseen.
    pub fn rejected(&self, protocol: Protocol, reason: Rejection, error: &dyn std::fmt::Display) {
        self.metrics.rejected(protocol, reason);
        tracing::debug!(
            protocol = protocol.as_str(),
            reason = reason.as_str(),
            %error,
            "refused a call"
        );
    }

    /// The limits this service enforces, for adapters that check early (an
    /// HTTP `content-length`, a gRPC message size).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The engine behind this service, for tests.
    pub fn engine(&self) -> &Arc<AnyEngine> {
        &self.engine
    }

    /// A request's id, group size and attempt key, checked against the
    /// limits; the key is `None` under `--attempt-grace 0s`, where keys are
    /// checked and not kept.
    fn admit(
        &self,
        namespace: Option<&str>,
        id: String,
        parties: u32,
        payload: &Bytes,
        attempt_key: &str,
    ) -> Result<(Id, Parties, Option<AttemptKey>), CallError> {
        let id = Id::in_namespace(namespace, id)?;
        let parties = Parties::new(parties, self.limits.max_parties)?;
        if payload.len() > self.limits.max_payload {
            return Err(CallError::PayloadTooLarge {
                size: payload.len(),
                limit: self.limits.max_payload,
            });
        }
        let attempt = AttemptKey::in_namespace(namespace, attempt_key)?;
        Ok((
            id,
            parties,
            attempt.filter(|_| !self.limits.attempt_grace.is_zero()),
        ))
    }

    /// Withdraws a keyed wait whose caller gave up: its place is taken out,
    /// through any replica, so that nobody is paired with it; or, if it was
    /// decided first, what it was decided. A try with its key within the
    /// grace is refused. See [`Attempts::withdraw`].
    pub async fn withdraw(&self, request: WithdrawRequest) -> Result<Withdrawal, CallError> {
        let protocol = request.protocol;
        let namespace = request.namespace.as_deref();
        let admitted = Id::in_namespace(namespace, request.id)
            .map_err(CallError::from)
            .and_then(
                |id| match AttemptKey::in_namespace(namespace, &request.attempt_key) {
                    Ok(Some(key)) => Ok((id, key)),
                    Ok(None) => Err(AttemptKeyError::Missing.into()),
                    Err(error) => Err(error.into()),
                },
            );
        let named = admitted.map_err(|error| self.refuse(protocol, error))?;
        let (wait, _) = self.limits.wait(request.deadline);
        let deadline = request.deadline.arrived + wait;
        // Under `--attempt-grace 0s` keys are not kept: no wait holds a
        // place past its caller, and there is nothing to withdraw.
        let found = match self.limits.attempt_grace.is_zero() {
            true => Ok(Withdrawal::Unknown),
            false => self.attempts.withdraw(&*self.engine, named, deadline).await,
        };
        match found {
            Ok(found) => {
                self.metrics.withdrew(protocol, &found);
                tracing::debug!(protocol = protocol.as_str(), ?found, "withdrew a wait");
                Ok(found)
            }
            Err(error) => Err(self.refuse(protocol, refused_by_engine(error))),
        }
    }

    /// Meets the other `parties - 1` callers with the request's id (one,
    /// for `WaitForSecondParty`), by its deadline at the latest, or after
    /// `max_wait` if that comes sooner, handing them its payload. With an
    /// attempt key, a retry gets the first try's place or answer
    /// ([`Attempts`]).
    // Inlined, so that the future it returns is built where its caller
    // keeps it: returned from a call, it was copied whole once more, on
    // every call (see BENCHMARKS.md, instructions per pair).
    #[inline(always)]
    pub fn call(
        &self,
        mut request: CallRequest,
    ) -> impl Future<Output = Result<Meeting, CallError>> + Send + '_ {
        // Started here, not in an `async` wrapper, which would keep a copy of
        // the request in every parked caller's future. Boxed: a call that
        // exports nothing carries one pointer for it.
        let exported = telemetry::exporting().then(|| Box::new(CallSpan::start(&request)));
        // Its partners link to this call's span, not to its caller's.
        if let Some(own) = exported.as_ref().and_then(|span| span.own()) {
            request.trace = Some(own);
        }
        // An `async` block, not an `async fn`, which would keep the whole
        // request a second time (the crate doc's "What a parked caller
        // costs").
        async move {
            // Every way out ends the exported span with the outcome, and one
            // that never gets here (the caller went away) ends it as
            // cancelled. One summary feeds both spans; with neither on, none
            // is made.
            let ended = |result, delivery, log: Option<&tracing::Span>| {
                let log = log.filter(|span| !span.is_disabled());
                if log.is_none() && exported.is_none() {
                    return result;
                }
                let summary = Summary::of(&result);
                if let Some(span) = log {
                    record(span, &summary);
                }
                if let Some(exported) = exported {
                    CallSpan::finish(*exported, &result, &summary, delivery);
                }
                result
            };
            let protocol = request.protocol;
            let (wait, capped) = self.limits.wait(request.deadline);
            // A span per call, at debug level: with the default filter it is
            // never built, which keeps the hot path cheap (an info-level span cost
            // about 8% of the server's CPU per pair; see BENCHMARKS.md).
            // The caller's trace id goes on the span, so that its trace finds
            // this call's lines; its partner's, once known, too.
            let span = tracing::debug_span!(
                target: telemetry::CALLS,
                "rendezvous",
                protocol = protocol.as_str(),
                trace_id = Empty,
                outcome = Empty,
                parties = request.parties,
                role = Empty,
                position = Empty,
                partner_trace_id = Empty,
                waited = Empty,
                attempt = Empty,
            );
            // Counts the caller as parked, once admitted, until it leaves, and as
            // cancelled if its future is dropped before the outcome.
            let mut pending = Pending {
                admitted: None,
                protocol,
                settled: false,
            };
            // Everything the request holds is checked and handed to the engine in
            // this block, whose value is what the call waits on: what is left of
            // the request is then not kept, beside the engine call, for as long
            // as the caller waits.
            let (result, delivery) = {
                let CallRequest {
                    protocol: _,
                    operation: _,
                    namespace,
                    deadline,
                    trace,
                    id,
                    parties,
                    payload,
                    attempt_key,
                    previous_attempts,
                } = request;
                let admitted =
                    self.admit(namespace.as_deref(), id, parties, &payload, &attempt_key);
                let (id, parties, attempt) = match admitted {
                    Ok(admitted) => admitted,
                    Err(error) => {
                        return ended(Err(self.refuse(protocol, error)), Delivery::Fresh, None);
                    }
                };
                if let Some(trace) = &trace {
                    span.record("trace_id", tracing::field::display(trace));
                }
                // Ids can be secret pairing codes: only in this debug event,
                // never on the span, whose fields show up on every event in it.
                span.in_scope(|| tracing::debug!(target: telemetry::CALLS, id = id.as_str(), ?wait, "arrived"));
                self.metrics.arrived(protocol);
                pending.admitted = Some(&self.metrics);
                let offer = Offer { payload, trace };
                let deadline = deadline.arrived + wait;
                match attempt {
                    None => Engaged::Plain {
                        call: (self.engine.gather(id, parties, offer, deadline))
                            .instrument(span.clone()),
                    },
                    // Boxed: a keyed call's future is not the one most callers
                    // pay for while they wait.
                    Some(key) => Engaged::Keyed {
                        call: Box::pin(
                            (self.attempts)
                                .gather(
                                    &self.engine,
                                    (key, previous_attempts),
                                    Joining { id, parties, offer },
                                    deadline,
                                )
                                .instrument(span.clone()),
                        ),
                    },
                }
            }
            .await;
            pending.settled = true;
            match delivery {
                Delivery::Fresh => {}
                Delivery::Reattached => self.metrics.reattached(protocol),
                Delivery::Redelivered => self.metrics.redelivered(protocol),
            }
            if !span.is_disabled() {
                span.record("attempt", delivery.as_str());
            }
            let result = match result {
                // An answer handed out before was counted then.
                Ok(meeting) if delivery == Delivery::Redelivered => Ok(meeting),
                Ok(meeting) => {
                    self.metrics.paired(protocol, meeting.waited);
                    // Once per group: by its last member, which completed it.
                    if meeting.position + 1 == meeting.parties() {
                        self.metrics.group_completed(meeting.parties());
                    }
                    Ok(meeting)
                }
                Err(error) => match Refusal::new(error) {
                    None => {
                        if delivery != Delivery::Redelivered {
                            self.metrics.timed_out(protocol);
                        }
                        Err(CallError::TimedOut { wait, capped })
                    }
                    Some(refusal) => Err(self.refuse(protocol, CallError::Refused(refusal))),
                },
            };
            ended(result, delivery, Some(&span))
        }
    }
}

pin_project_lite::pin_project! {
    /// The engine call a [`Rendezvous::call`] waits on: its own, or, with an
    /// attempt key, its wait's ([`Attempts`]), which says how it was handed.
    #[project = EngagedNow]
    enum Engaged<P, K> {
        Plain { #[pin] call: P },
        Keyed { call: std::pin::Pin<Box<K>> },
    }
}

impl<P, K> Future for Engaged<P, K>
where
    P: Future<Output = Result<Meeting, PairError>>,
    K: Future<Output = (Result<Meeting, PairError>, Delivery)>,
{
    type Output = (Result<Meeting, PairError>, Delivery);

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            EngagedNow::Plain { call } => call.poll(cx).map(|answer| (answer, Delivery::Fresh)),
            EngagedNow::Keyed { call } => call.as_mut().poll(cx),
        }
    }
}

/// A call on its way, in the parked gauge from when it is admitted until
/// dropped; dropped unsettled, the caller went away.
struct Pending<'a> {
    /// The metrics it was counted in, once admitted.
    admitted: Option<&'a Metrics>,
    protocol: Protocol,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(metrics) = self.admitted else {
            return;
        };
        metrics.left(self.protocol);
        if !self.settled {
            metrics.cancelled(self.protocol);
        }
    }
}

/// Records how the call ended on its log span, and logs it.
fn record(span: &tracing::Span, summary: &Summary<'_>) {
    if let Some(meeting) = summary.meeting {
        span.record("position", meeting.position);
    }
    if let Some(role) = summary.role {
        span.record("role", role);
        // A pair's partner; in a larger group, every other member is a
        // partner, and the span has room for one.
        if let Some(partner) = summary
            .meeting
            .and_then(|meeting| meeting.peer().trace.as_ref())
        {
            span.record("partner_trace_id", tracing::field::display(partner));
        }
    }
    let Summary {
        outcome, waited, ..
    } = *summary;
    span.record("outcome", outcome);
    span.record("waited", tracing::field::debug(waited));
    span.in_scope(|| tracing::debug!(target: telemetry::CALLS, outcome, ?waited, "finished"));
}

/// How a call ended, as both its spans (the log span and the exported one)
/// record it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary<'a> {
    /// `paired`, `timed_out`, or the reason it was refused.
    outcome: &'static str,
    /// How long it waited.
    waited: Duration,
    /// What it was told, if it met its group.
    meeting: Option<&'a Meeting>,
    /// Its role, in a pair.
    role: Option<&'static str>,
}

impl<'a> Summary<'a> {
    pub(crate) fn of(result: &'a Result<Meeting, CallError>) -> Self {
        let (outcome, waited) = match result {
            Ok(meeting) => ("paired", meeting.waited),
            Err(CallError::TimedOut { wait, .. }) => ("timed_out", *wait),
            Err(error) => (
                error.rejection().map_or("timed_out", Rejection::as_str),
                Duration::ZERO,
            ),
        };
        let meeting = result.as_ref().ok();
        let role = meeting
            .filter(|meeting| meeting.parties() == 2)
            .map(|meeting| proto::Role::from(meeting.role()).as_str_name());
        Self {
            outcome,
            waited,
            meeting,
            role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::refused as refused_by;
    use super::*;
    use crate::pairing::LocalEngine;
    use crate::pairing::{IdError, PartiesError};
    use bytes::Bytes;
    use tokio::time::Instant;

    fn request(
        protocol: Protocol,
        id: impl Into<String>,
        parties: u32,
        payload: Bytes,
        deadline: Deadline,
    ) -> CallRequest {
        CallRequest {
            protocol,
            operation: match parties {
                2 => Operation::WaitForSecondParty,
                _ => Operation::WaitForParties,
            },
            namespace: None,
            deadline,
            trace: None,
            id: id.into(),
            parties,
            payload,
            attempt_key: String::new(),
            previous_attempts: 0,
        }
    }

    fn service(max_wait: Duration) -> Rendezvous {
        Rendezvous::new(
            Arc::new(LocalEngine::new().into()),
            Limits {
                default_wait: max_wait,
                max_wait,
                max_payload: 4,
                max_parties: 5,
                attempt_grace: crate::Config::default().attempt_grace,
            },
        )
    }

    #[tokio::test]
    async fn bad_inputs_are_refused_before_the_engine() {
        let svc = service(Duration::from_secs(1));
        let call = |id: &str, payload: &'static [u8]| {
            svc.call(request(
                Protocol::Grpc,
                id,
                2,
                Bytes::from_static(payload),
                Deadline::starting_now(None),
            ))
        };
        let group = |parties| {
            svc.call(request(
                Protocol::Grpc,
                "a",
                parties,
                Bytes::new(),
                Deadline::starting_now(None),
            ))
        };
        assert_eq!(
            group(1).await,
            Err(CallError::InvalidParties(PartiesError::TooFew(1)))
        );
        assert_eq!(
            group(0).await,
            Err(CallError::InvalidParties(PartiesError::TooFew(0)))
        );
        assert_eq!(
            group(6).await,
            Err(CallError::InvalidParties(PartiesError::TooMany {
                asked: 6,
                max: 5
            }))
        );
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
        svc.engine().close().await;
        let refused = svc
            .call(request(
                Protocol::Http,
                "a",
                2,
                Bytes::new(),
                Deadline::starting_now(None),
            ))
            .await;
        assert_eq!(refused, Err(refused_by(PairError::ShuttingDown)));
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
            let call = svc.call(request(
                Protocol::Grpc,
                "a",
                2,
                Bytes::new(),
                Deadline::starting_now(None),
            ));
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

    /// Every parked caller pays for its call's future, for as long as it
    /// waits: BENCHMARKS.md measures memory per parked caller with it at
    /// this size, and a change that grows it must say so there.
    #[test]
    fn a_plain_calls_future_stays_within_600_bytes() {
        let svc = service(Duration::from_secs(1));
        let call = svc.call(request(
            Protocol::Grpc,
            "a",
            2,
            Bytes::new(),
            Deadline::starting_now(None),
        ));
        assert!(
            std::mem::size_of_val(&call) <= 600,
            "{} bytes",
            std::mem::size_of_val(&call)
        );
    }

    /// A call without a wait of its own waits `--default-wait`; one that
    /// asks for a wait gets it, up to `--max-wait`, and a timeout cut by
    /// `--max-wait` says so, and what was asked for.
    #[tokio::test(start_paused = true)]
    async fn a_callers_own_wait_is_honoured_up_to_max_wait() {
        let svc = Rendezvous::new(
            Arc::new(LocalEngine::new().into()),
            Limits {
                default_wait: Duration::from_secs(10),
                max_wait: Duration::from_secs(60),
                max_payload: 4,
                max_parties: 5,
                attempt_grace: crate::Config::default().attempt_grace,
            },
        );
        let waited = |requested: Option<u64>| {
            svc.call(request(
                Protocol::Http,
                "a",
                2,
                Bytes::new(),
                Deadline::starting_now(requested.map(Duration::from_secs)),
            ))
        };
        let timed_out = |secs, capped| CallError::TimedOut {
            wait: Duration::from_secs(secs),
            capped,
        };
        for (requested, expected, message) in [
            (Some(2), timed_out(2, false), "within 2s"),
            (Some(60), timed_out(60, false), "within 1m"),
            (
                Some(90),
                timed_out(60, true),
                "within 1m, the server's --max-wait, which cut the longer wait this call \
                 asked for",
            ),
            (None, timed_out(10, false), "within 10s"),
        ] {
            let start = Instant::now();
            let error = waited(requested).await.unwrap_err();
            assert_eq!(error, expected, "{requested:?}");
            assert_eq!(
                error.to_string(),
                format!("nobody else arrived with this id {message}")
            );
            let CallError::TimedOut { wait, .. } = expected else {
                unreachable!()
            };
            assert_eq!(start.elapsed(), wait, "{requested:?}");
        }
    }
}
