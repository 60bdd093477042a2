//! Prometheus metrics, served at `GET /metrics` on the HTTP port.
//!
//! Every series is looked up once, at start-up, so a call pays a few atomic
//! operations: the parked gauge up and down, one counter, and when it pairs
//! one histogram observation. The gauge is kept by the service, per protocol,
//! because the engine knows nothing of protocols.

use std::time::Duration;

use crate::pairing::{PairError, Withdrawal};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Which transport a call came in on: a label on every series, and a field
/// on the call's span.
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    protocol: &'static str,
    reason: &'static str,
}

/// Which port a connection came in on: the `listener` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `--grpc-addr`: gRPC, and gRPC-Web.
    Grpc,
    /// `--http-addr`: the HTTP endpoint, probes and metrics.
    Http,
}

impl Listener {
    fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// Every series, registered once. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Indexed by [`Protocol`] (gRPC, then HTTP), like every array here.
    parked: [Gauge; 2],
    paired: [Counter; 2],
    timeouts: [Counter; 2],
    cancellations: [Counter; 2],
    reattached: [Counter; 2],
    redelivered: [Counter; 2],
    /// Indexed by protocol, then by [`WITHDRAWALS`]' order.
    withdrawals: [[Counter; WITHDRAWALS.len()]; 2],
    waited: [Histogram; 2],
    /// Indexed by protocol, then by [`Rejection`] in [`Rejection::ALL`]'s order.
    rejections: [[Counter; Rejection::ALL.len()]; 2],
    /// Indexed by [`Listener`] (gRPC, then HTTP).
    connections: [Counter; 2],
    aged: Counter,
    /// Indexed like [`GROUP_SIZES`].
    groups: [Counter; GROUP_SIZES.len()],
    /// `--max-waiters`, so a dashboard or an alert can say how full
    /// `parked_callers` is without knowing each replica's flags.
    max_waiters: Gauge,
    /// 1 while `/readyz` says ready. Set when scraped: a replica that cannot
    /// be scraped is not ready either, and Prometheus's `up` says so.
    ready: Gauge,
}

/// The `size` buckets of completed groups: the largest size in each, and
/// its label. A pair is a group of 2.
const GROUP_SIZES: [(usize, &str); 6] = [
    (2, "2"),
    (4, "3-4"),
    (8, "5-8"),
    (16, "9-16"),
    (64, "17-64"),
    (usize::MAX, "65+"),
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SizeLabel {
    size: &'static str,
}

/// What a withdrawal found, as the `outcome` label says it.
const WITHDRAWALS: [&str; 4] = ["withdrawn", "met", "timed_out", "unknown"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WithdrawalLabels {
    protocol: &'static str,
    outcome: &'static str,
}

/// Why a call was refused, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A bad id, payload, deadline header, body or request.
    InvalidArgument,
    /// No valid bearer token.
    Unauthenticated,
    /// `--max-waiters` callers were already waiting.
    Full,
    /// The server was shutting down.
    ShuttingDown,
    /// The meeting place (the engine's store) could not be reached.
    Unavailable,
    /// A group of another size was forming under the id.
    PartiesMismatch,
    /// The payload would take its group over `--max-group-bytes`.
    GroupTooLarge,
    /// The attempt key was first sent with another id, size or payload.
    AttemptReused,
    /// A newer call with the same attempt key took the wait over.
    Superseded,
    /// The wait was withdrawn with its attempt key.
    Withdrawn,
}

impl Rejection {
    /// Every reason, so that each one's series exists (at 0) from the start:
    /// an alert on a reason that has not happened yet still has data.
    pub const ALL: [Rejection; 10] = [
        Self::InvalidArgument,
        Self::Unauthenticated,
        Self::Full,
        Self::ShuttingDown,
        Self::Unavailable,
        Self::PartiesMismatch,
        Self::GroupTooLarge,
        Self::AttemptReused,
        Self::Superseded,
        Self::Withdrawn,
    ];

    /// How an engine's refusal is counted: `None` for a timeout, which is
    /// an outcome.
    pub fn of(error: &PairError) -> Option<Self> {
        Some(match error {
            PairError::TimedOut => return None,
            PairError::Full { .. } => Self::Full,
            PairError::ShuttingDown => Self::ShuttingDown,
            PairError::Unavailable(_) => Self::Unavailable,
            PairError::PartiesMismatch { .. } => Self::PartiesMismatch,
            PairError::GroupTooLarge { .. } => Self::GroupTooLarge,
            PairError::AttemptReused(_) => Self::AttemptReused,
            PairError::Superseded => Self::Superseded,
            PairError::Withdrawn => Self::Withdrawn,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::Unauthenticated => "unauthenticated",
            Self::Full => "full",
            Self::ShuttingDown => "shutting_down",
            Self::Unavailable => "unavailable",
            Self::PartiesMismatch => "parties_mismatch",
            Self::GroupTooLarge => "group_too_large",
            Self::AttemptReused => "attempt_reused",
            Self::Superseded => "superseded",
            Self::Withdrawn => "withdrawn",
        }
    }
}

const PROTOCOLS: [Protocol; 2] = [Protocol::Grpc, Protocol::Http];

fn index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Grpc => 0,
        Protocol::Http => 1,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series, with zero values, so a scrape shows them all
    /// from the start.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rendezvous");
        let parked = Family::<ProtocolLabel, Gauge>::default();
        registry.register(
            "parked_callers",
            "Callers waiting for their partner right now",
            parked.clone(),
        );
        let parked = PROTOCOLS.map(|p| {
            parked
                .get_or_create(&ProtocolLabel {
                    protocol: p.as_str(),
                })
                .clone()
        });
        let counters = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<ProtocolLabel, Counter>::default();
            registry.register(name, help, family.clone());
            PROTOCOLS.map(|p| {
                family
                    .get_or_create(&ProtocolLabel {
                        protocol: p.as_str(),
                    })
                    .clone()
            })
        };
        let paired = counters(&mut registry, "paired", "Callers that met their partner");
        let timeouts = counters(&mut registry, "timeouts", "Callers whose wait ran out");
        let cancellations = counters(
            &mut registry,
            "cancellations",
            "Callers that went away while waiting (cancel, closed connection, dead peer)",
        );
        let reattached = counters(
            &mut registry,
            "reattached",
            "Retries with an attempt key that took their wait over from an earlier try",
        );
        let redelivered = counters(
            &mut registry,
            "redelivered",
            "Answers handed again to a retry with the same attempt key",
        );
        let family = Family::<WithdrawalLabels, Counter>::default();
        registry.register(
            "withdrawals",
            "Keyed waits withdrawn by callers that gave up, by what the withdrawal found \
             (met and timed_out: too late, already decided)",
            family.clone(),
        );
        let withdrawals = PROTOCOLS.map(|p| {
            WITHDRAWALS.map(|outcome| {
                family
                    .get_or_create(&WithdrawalLabels {
                        protocol: p.as_str(),
                        outcome,
                    })
                    .clone()
            })
        });
        let waited = Family::<ProtocolLabel, Histogram>::new_with_constructor(|| {
            // 1 ms to about 16 min, in factors of 4.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 4.0, 11,
            ))
        });
        registry.register(
            "waited_seconds",
            "How long callers that paired waited for their partner",
            waited.clone(),
        );
        let waited = PROTOCOLS.map(|p| {
            waited
                .get_or_create(&ProtocolLabel {
                    protocol: p.as_str(),
                })
                .clone()
        });
        let family = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "rejections",
            "Calls refused before they could wait, by reason",
            family.clone(),
        );
        let rejections = PROTOCOLS.map(|p| {
            Rejection::ALL.map(|reason| {
                family
                    .get_or_create(&RejectionLabels {
                        protocol: p.as_str(),
                        reason: reason.as_str(),
                    })
                    .clone()
            })
        });
        let family = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections",
            "Connections accepted, by listener",
            family.clone(),
        );
        let connections = [Listener::Grpc, Listener::Http].map(|l| {
            family
                .get_or_create(&ListenerLabel {
                    listener: l.as_str(),
                })
                .clone()
        });
        let aged = Counter::default();
        registry.register(
            "connections_aged",
            "HTTP/2 connections sent GOAWAY at --max-connection-age",
            aged.clone(),
        );
        let family = Family::<SizeLabel, Counter>::default();
        registry.register(
            "groups_completed",
            "Groups that completed, by how many callers they had (pairs are groups of 2)",
            family.clone(),
        );
        let groups = GROUP_SIZES.map(|(_, size)| family.get_or_create(&SizeLabel { size }).clone());
        let max_waiters = Gauge::default();
        registry.register(
            "max_waiters",
            "The most callers that may wait at once here (--max-waiters)",
            max_waiters.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while this replica takes callers (/readyz answers 200), 0 while it does not",
            ready.clone(),
        );
        Self {
            groups,
            max_waiters,
            ready,
            registry,
            parked,
            paired,
            timeouts,
            cancellations,
            reattached,
            redelivered,
            withdrawals,
            waited,
            rejections,
            connections,
            aged,
        }
    }

    /// A connection was accepted (and not turned away by
    /// `--max-connections`).
    pub fn connection_accepted(&self, listener: Listener) {
        self.connections[listener as usize].inc();
    }

    /// A connection reached `--max-connection-age` and was sent GOAWAY.
    pub fn connection_aged(&self) {
        self.aged.inc();
    }

    /// A caller's call was accepted: from now until [`Metrics::left`], it
    /// counts as parked (a second party only for the instant it takes to
    /// pair).
    pub fn arrived(&self, protocol: Protocol) {
        self.parked[index(protocol)].inc();
    }

    /// A caller's call is over, however it ended.
    pub fn left(&self, protocol: Protocol) {
        self.parked[index(protocol)].dec();
    }

    /// A caller met its partner after `waited`.
    pub fn paired(&self, protocol: Protocol, waited: Duration) {
        self.paired[index(protocol)].inc();
        self.waited[index(protocol)].observe(waited.as_secs_f64());
    }

    /// A group of `parties` callers completed. Counted by its last member,
    /// so once per group.
    pub fn group_completed(&self, parties: usize) {
        let bucket = GROUP_SIZES
            .iter()
            .position(|&(largest, _)| parties <= largest)
            .expect("the last bucket takes any size");
        self.groups[bucket].inc();
    }

    /// A caller's wait ran out.
    pub fn timed_out(&self, protocol: Protocol) {
        self.timeouts[index(protocol)].inc();
    }

    /// A caller went away before its outcome.
    pub fn cancelled(&self, protocol: Protocol) {
        self.cancellations[index(protocol)].inc();
    }

    /// A retry with an attempt key took its wait over.
    pub fn reattached(&self, protocol: Protocol) {
        self.reattached[index(protocol)].inc();
    }

    /// A retry with an attempt key was handed an answer again.
    pub fn redelivered(&self, protocol: Protocol) {
        self.redelivered[index(protocol)].inc();
    }

    /// A withdrawal was answered.
    pub fn withdrew(&self, protocol: Protocol, found: &Withdrawal) {
        let outcome = match found {
            Withdrawal::Withdrawn => 0,
            Withdrawal::Met(_) => 1,
            Withdrawal::TimedOut => 2,
            Withdrawal::Unknown => 3,
        };
        self.withdrawals[index(protocol)][outcome].inc();
    }

    /// A call was refused.
    pub fn rejected(&self, protocol: Protocol, reason: Rejection) {
        self.rejections[index(protocol)][reason as usize].inc();
    }

    /// Records the `--max-waiters` limit, once, at start-up.
    pub fn set_max_waiters(&self, limit: usize) {
        self.max_waiters
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Records whether the server takes callers, just before a scrape.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The registry, for an engine to register series of its own: each
    /// engine's series belong to its module.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason's series is in the first scrape, at 0, and a refusal
    /// moves its own series and no other.
    #[test]
    fn every_rejection_series_exists_from_the_start() {
        let metrics = Metrics::new();
        metrics.rejected(Protocol::Http, Rejection::Full);
        let text = metrics.render();
        let mut series = 0;
        for protocol in PROTOCOLS {
            for reason in Rejection::ALL {
                let count = if (protocol, reason) == (Protocol::Http, Rejection::Full) {
                    1
                } else {
                    0
                };
                let line = format!(
                    "rendezvous_rejections_total{{protocol=\"{}\",reason=\"{}\"}} {count}\n",
                    protocol.as_str(),
                    reason.as_str()
                );
                assert!(text.contains(&line), "{line} is not in:\n{text}");
                series += 1;
            }
        }
        assert_eq!(series, 20);
        assert_eq!(text.matches("rendezvous_rejections_total{").count(), 20);
    }

    /// Each size lands in its own bucket, bounds included.
    #[test]
    fn groups_are_counted_by_size_bucket() {
        let metrics = Metrics::new();
        for parties in [2, 3, 4, 5, 8, 9, 16, 17, 64, 65, 1000, 2] {
            metrics.group_completed(parties);
        }
        let text = metrics.render();
        for (size, count) in [
            ("2", 2),
            ("3-4", 2),
            ("5-8", 2),
            ("9-16", 2),
            ("17-64", 2),
            ("65+", 2),
        ] {
            let line = format!("rendezvous_groups_completed_total{{size=\"{size}\"}} {count}\n");
            assert!(text.contains(&line), "{line} is not in:\n{text}");
        }
    }
}
