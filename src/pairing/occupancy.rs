//! The `--max-waiters` cap, as every engine counts it: a place is taken
//! before a caller parks and given back on every way out, so that no flood
//! of callers can exhaust a replica's memory. A caller that completes a
//! meeting never takes one.
//!
//! Uses `super::sync`, like `shard.rs`: the loom model compiles this file
//! too, since the local engine's shards count through it.

use super::sync::{AtomicUsize, Ordering};

/// Places for parked callers, against the cap.
///
/// One counter for the whole local engine would put a cache line that every
/// core writes on every park (it cut the engine's two-core scaling from 1.55
/// to 1.23). So a shard that frees a place may keep it as a spare for its
/// next parked caller instead of handing it back. With large caps a shard
/// keeps at most one spare, so the cap holds to within one place per shard
/// (0.4% at the smallest cap that allows spares); below that, and in an
/// engine without shards ([`Occupancy::exact`]), every place goes through the
/// counter and the cap is exact.
pub(super) struct Occupancy {
    /// Places taken: parked callers plus the shards' spares.
    taken: CachePadded<AtomicUsize>,
    /// The cap on waiting callers.
    pub(super) capacity: usize,
    /// How many spares one shard may keep.
    spares_per_shard: usize,
}

/// Keeps a hot atomic on cache lines of its own.
#[repr(align(128))]
struct CachePadded<T>(T);

impl Occupancy {
    /// Room for `capacity` parked callers over `shards` shards. Shards keep
    /// spares only when the cap is large enough for the slack to be
    /// negligible.
    pub(super) fn new(capacity: usize, shards: usize) -> Self {
        Self {
            taken: CachePadded(AtomicUsize::new(0)),
            capacity,
            spares_per_shard: usize::from(capacity >= shards.saturating_mul(256)),
        }
    }

    /// Room for exactly `capacity` parked callers, counted one by one.
    pub(super) fn exact(capacity: usize) -> Self {
        Self {
            taken: CachePadded(AtomicUsize::new(0)),
            capacity,
            spares_per_shard: 0,
        }
    }

    /// Places taken, the shards' spares included.
    #[cfg(test)]
    pub(super) fn taken(&self) -> usize {
        self.taken.0.load(Ordering::Relaxed)
    }

    /// Takes a place for one more parked caller in a shard that keeps
    /// `spares`: its spare if it has one, or a new one if the cap allows.
    pub(super) fn admit(&self, spares: &mut usize) -> bool {
        if *spares > 0 {
            *spares -= 1;
            return true;
        }
        self.take()
    }

    /// Frees the place of a caller that left a shard that keeps `spares`.
    pub(super) fn release(&self, spares: &mut usize) {
        if *spares < self.spares_per_shard {
            *spares += 1;
        } else {
            self.give_back();
        }
    }

    /// Takes a place from the counter, if the cap allows one more.
    pub(super) fn take(&self) -> bool {
        // Relaxed: the count orders nothing else; a lock (or Redis) does.
        if self.taken.0.fetch_add(1, Ordering::Relaxed) < self.capacity {
            return true;
        }
        self.taken.0.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Gives back a place taken with [`Occupancy::take`].
    pub(super) fn give_back(&self) {
        self.taken.0.fetch_sub(1, Ordering::Relaxed);
    }
}
