//! The Redis engine's series, registered only by a replica that meets
//! through Redis.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Handles into the server's registry.
#[derive(Debug, Clone)]
pub(super) struct RedisMetrics {
    /// Each command's round trip.
    pub(super) round_trips: Histogram,
    /// Times Redis came back after being unreachable.
    pub(super) reconnects: Counter,
    /// 1 while Redis is reachable.
    pub(super) reachable: Gauge,
    /// Times this replica found a new primary (Sentinel) or new shard
    /// owners for its subscriptions (Cluster).
    pub(super) failovers: Counter,
}

impl RedisMetrics {
    /// Registers the series in `registry`, at zero.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let round_trips = Histogram::new(
            // 50 µs to about 3.3 s, in factors of 4.
            prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 4.0, 9),
        );
        registry.register(
            "redis_round_trip_seconds",
            "How long each command to Redis took, from sending it to its answer",
            round_trips.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "redis_reconnects",
            "Times this replica got Redis back after losing it",
            reconnects.clone(),
        );
        let reachable = Gauge::default();
        registry.register(
            "redis_reachable",
            "1 while Redis answers this replica, 0 while it does not",
            reachable.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "redis_primary_changes",
            "Times this replica moved to another primary: a Sentinel failover, or a cluster's slots served elsewhere",
            failovers.clone(),
        );
        Self {
            round_trips,
            reconnects,
            reachable,
            failovers,
        }
    }
}
