//! A call as the transports read it, before it is checked: the request,
//! which call it is, its namespace and its deadline, and the limits it is
//! held to.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::time::Instant;

use super::Operation;
use crate::{metrics::Protocol, trace::TraceContext};

/// One rendezvous call as a transport read it, not validated yet: the one
/// request both transports build, from a gRPC message or from an HTTP path,
/// query and body, and hand to [`Rendezvous::call`](super::Rendezvous::call).
#[derive(Debug)]
pub struct CallRequest {
    /// The transport it came in on.
    pub protocol: Protocol,
    /// Which call it is, as its transport named it.
    pub operation: Operation,
    /// Where its token lets it meet.
    pub namespace: Namespace,
    /// When it must be answered by.
    pub deadline: Deadline,
    /// From the caller's `traceparent`, if it sent a valid one.
    pub trace: Option<TraceContext>,
    /// The meeting id, as sent.
    pub id: String,
    /// How many callers make up its group: 2 for `WaitForSecondParty`.
    pub parties: u32,
    /// What it brings for the others.
    pub payload: Bytes,
    /// Its attempt key, as sent; empty for none.
    pub attempt_key: String,
    /// How many tries of its wait came before it, as its client counts:
    /// what orders the tries of one key (see [`Attempts`](crate::pairing::Attempts)).
    pub previous_attempts: u32,
}

/// A withdrawal as a transport read it, not validated yet: a caller that
/// gave up on its keyed wait says so ([`Rendezvous::withdraw`](super::Rendezvous::withdraw)).
#[derive(Debug)]
pub struct WithdrawRequest {
    /// The transport it came in on.
    pub protocol: Protocol,
    /// Where its token lets it meet: only its own namespace's waits are
    /// found.
    pub namespace: Namespace,
    /// How long it may wait for a wait held here to end.
    pub deadline: Deadline,
    /// The id the wait was sent with.
    pub id: String,
    /// The attempt key the wait was sent with.
    pub attempt_key: String,
}

/// The namespace a call meets in: `None` when tokens are not required.
pub type Namespace = Option<Arc<str>>;

/// The limits a call is held to; they come from [`crate::Config`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a caller that asks for no wait of its own waits.
    pub default_wait: Duration,
    /// The longest any caller waits, whatever it asks for.
    pub max_wait: Duration,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// The largest group a caller may ask for.
    pub max_parties: u32,
    /// How long a keyed wait keeps its place after its caller went away,
    /// and its answer after the decision (`--attempt-grace`).
    pub attempt_grace: Duration,
}

impl Limits {
    /// The limits `config`'s flags set.
    pub fn of(config: &crate::Config) -> Self {
        Self {
            default_wait: config.default_wait(),
            max_wait: config.max_wait,
            max_payload: config.max_payload,
            max_parties: config.max_parties,
            attempt_grace: config.attempt_grace,
        }
    }

    /// How long a call that arrived by `deadline` waits, and whether
    /// `--max-wait` cut what it asked for.
    pub(super) fn wait(&self, deadline: Deadline) -> (Duration, bool) {
        match deadline.requested {
            None => (self.default_wait, false),
            Some(asked) if asked > self.max_wait => (self.max_wait, true),
            Some(asked) => (asked, false),
        }
    }
}

/// When a call must be answered by, fixed when its request arrives, so that
/// time spent reading the request counts against the caller's wait.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub(super) arrived: Instant,
    pub(super) requested: Option<Duration>,
}

impl Deadline {
    /// A call arriving now, willing to wait `requested` (`None`: as long as
    /// the server allows).
    pub fn starting_now(requested: Option<Duration>) -> Self {
        Self {
            arrived: Instant::now(),
            requested,
        }
    }
}
