//! Every way a call can fail, and the one table of how each failure reads
//! on each protocol.

use std::time::Duration;

use http::StatusCode;
use tonic::Code;

use crate::human::whole_millis;
use crate::{
    auth::AuthError,
    metrics::Rejection,
    pairing::{AttemptKeyError, IdError, PairError, PartiesError},
};

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
    /// `parties` is below 2 or over `--max-parties`.
    #[error(transparent)]
    InvalidParties(#[from] PartiesError),
    /// The attempt key is too long, or not printable ASCII.
    #[error(transparent)]
    InvalidAttemptKey(#[from] AttemptKeyError),
    /// The caller sent no valid bearer token, and `--auth-token-file` is set.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// Nobody came with the same id before the caller's deadline.
    #[error(
        "nobody else arrived with this id within {}{}",
        whole_millis(*wait),
        if *capped { CAPPED } else { "" }
    )]
    TimedOut {
        /// The wait the caller was allowed: from its arrival to its deadline.
        wait: Duration,
        /// Whether `--max-wait` cut the wait the caller asked for to `wait`.
        capped: bool,
    },
    /// The engine refused the call, for a reason other than a timeout.
    #[error(transparent)]
    Refused(Refusal),
}

/// The end of a timeout's message when `--max-wait` cut the caller's wait
/// short: a caller that asked for two hours and was answered after one
/// must learn why, and which setting it ran into.
const CAPPED: &str = ", the server's --max-wait, which cut the longer wait this call asked for";

/// An engine's refusal: any [`PairError`] but a timeout, which is an
/// outcome ([`CallError::TimedOut`], with the wait in it). Only
/// [`Refusal::new`] builds one, so no table needs a row for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct Refusal(PairError);

impl Refusal {
    /// `error` as a refusal, or `None` for a timeout.
    pub fn new(error: PairError) -> Option<Self> {
        match error {
            PairError::TimedOut => None,
            error => Some(Self(error)),
        }
    }

    /// What the engine said.
    pub fn error(&self) -> &PairError {
        &self.0
    }
}

/// An engine's refusal of something other than a wait, which cannot time
/// out: a withdrawal.
pub(crate) fn refused_by_engine(error: PairError) -> CallError {
    match Refusal::new(error) {
        Some(refusal) => CallError::Refused(refusal),
        None => CallError::TimedOut {
            wait: Duration::ZERO,
            capped: false,
        },
    }
}

/// `error` as the service reports it, for tests: a refusal, never a timeout.
#[cfg(test)]
pub(crate) fn refused(error: PairError) -> CallError {
    CallError::Refused(Refusal::new(error).expect("not a timeout"))
}

/// How a failure reads on each protocol: its gRPC code, which the HTTP
/// gateway's JSON bodies name too, and its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codes {
    /// The gRPC status code.
    pub grpc: Code,
    /// The HTTP status.
    pub http: StatusCode,
}

impl CallError {
    /// The one table of how each failure is answered, on both protocols.
    pub fn codes(&self) -> Codes {
        let (grpc, http) = match self {
            Self::InvalidId(_) | Self::InvalidParties(_) | Self::InvalidAttemptKey(_) => {
                (Code::InvalidArgument, StatusCode::BAD_REQUEST)
            }
            Self::PayloadTooLarge { .. } => (Code::InvalidArgument, StatusCode::PAYLOAD_TOO_LARGE),
            Self::Unauthenticated(_) => (Code::Unauthenticated, StatusCode::UNAUTHORIZED),
            Self::TimedOut { .. } => return engine_codes(&PairError::TimedOut),
            Self::Refused(refusal) => return engine_codes(refusal.error()),
        };
        Codes { grpc, http }
    }

    /// How the metrics count this failure: `None` for a timeout, which is an
    /// outcome, not a refusal.
    pub fn rejection(&self) -> Option<Rejection> {
        Some(match self {
            Self::InvalidId(_)
            | Self::PayloadTooLarge { .. }
            | Self::InvalidParties(_)
            | Self::InvalidAttemptKey(_) => Rejection::InvalidArgument,
            Self::Unauthenticated(_) => Rejection::Unauthenticated,
            Self::TimedOut { .. } => return None,
            Self::Refused(refusal) => return Rejection::of(refusal.error()),
        })
    }
}

/// How each of the engines' answers reads on each protocol.
fn engine_codes(error: &PairError) -> Codes {
    let (grpc, http) = match error {
        PairError::TimedOut => (Code::DeadlineExceeded, StatusCode::REQUEST_TIMEOUT),
        PairError::ShuttingDown | PairError::Unavailable(_) => {
            (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
        }
        PairError::Full { .. } => (Code::ResourceExhausted, StatusCode::SERVICE_UNAVAILABLE),
        PairError::GroupTooLarge { .. } => (Code::ResourceExhausted, StatusCode::PAYLOAD_TOO_LARGE),
        PairError::PartiesMismatch { .. } => (Code::FailedPrecondition, StatusCode::CONFLICT),
        PairError::AttemptReused(_) => (Code::FailedPrecondition, StatusCode::UNPROCESSABLE_ENTITY),
        PairError::Superseded => (Code::Aborted, StatusCode::CONFLICT),
        // The caller gave up, as it said: the wait is gone.
        PairError::Withdrawn => (Code::Cancelled, StatusCode::GONE),
    };
    Codes { grpc, http }
}
