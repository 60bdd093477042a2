//! The pairing engine: who is waiting for whom. No tonic, no HTTP.
//!
//! Everything transport-specific (deadline headers, status codes, bodies)
//! lives in the adapters; this module only knows ids, payloads and deadlines.
//! That keeps the one invariant the service promises in one small place:
//!
//! > A pair is decided once, for both sides. Nobody is told it paired unless
//! > its partner is told the same, and nothing is left behind.
//!
//! How [`LocalEngine`] keeps it:
//! - A pair is decided under the shard lock, by whoever removes the waiter's
//!   entry from the map. The second caller removes it and hands over its
//!   payload while still holding the lock; a waiter whose deadline fires
//!   removes it itself and reports a timeout. Whoever gets there first wins,
//!   and the other side learns the result from the same entry.
//! - A waiter is removed by its ticket, not by its id, so cleanup can never
//!   delete a newer caller that parked under the same id.
//! - Removal runs in `Drop`, because the transports drop a handler future when
//!   its caller goes away (RST_STREAM, a closed connection). A caller that left
//!   is therefore gone from the map before anyone can pair with it.
//!
//! The part where callers race, one shard, is in `local/shard.rs`;
//! `local/model.rs` model-checks that same file with loom (see the README's
//! "How it is tested").
//!
//! [`RedisEngine`] (`redis.rs`) keeps the same invariant for replicas that
//! meet in Redis: one Lua script decides each pair, and the waiter's replica
//! confirms that its caller is still there before it does. [`Engine`]
//! (`engine.rs`) spells out what each method means when the meeting place is
//! remote, and [`AnyEngine`] (`any.rs`) is the one type the rest of the crate
//! holds.
//!
//! The files, by concern:
//! - `values.rs`: what a call is made of and answers with (ids, group sizes,
//!   offers, meetings, a keyed call's attempt); `errors.rs`: why a call did
//!   not pair, and why a value was refused;
//! - `engine.rs`: the [`Engine`] seam and [`EngineLimits`];
//! - `local.rs` and `local/`: the in-process engine, its shards and their
//!   loom model; `redis.rs` and `redis/`: the Redis engine;
//! - `occupancy.rs`: the `--max-waiters` cap, as both engines count it;
//! - `attempts.rs`: attempt keys, over any engine ([`Attempts`]);
//! - `any.rs`: [`AnyEngine`], the one the configuration chose.

server! {
    mod any;
    mod attempts;
    mod engine;
    mod local;
    mod occupancy;
    mod redis;

    pub use any::{AnyEngine, EngineChoice, EngineError};
    pub use attempts::Attempts;
    pub use engine::{Engine, EngineLimits};
    pub use local::LocalEngine;
    pub use redis::{RedisArgs, RedisConfig, RedisEngine, RedisError};
    pub(crate) use values::half_sha256;
}

mod errors;
mod values;

pub use errors::{AttemptKeyError, IdError, PairError, PartiesError, Reuse};
pub(crate) use values::Offers;
pub use values::{
    Attempt, AttemptKey, Delivery, Id, Joining, MAX_ATTEMPT_KEY_BYTES, MAX_ID_BYTES, Meeting,
    Offer, Parties, Role, TryOrder, Withdrawal, Withdrawing,
};

/// The primitives the shards and the cap synchronise with. The loom model
/// swaps in its own versions of exactly these (see `local/model.rs`).
#[cfg(feature = "server")]
mod sync {
    pub(super) use std::sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    };
    pub(super) use tokio::sync::oneshot;
}
