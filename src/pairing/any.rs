//! [`AnyEngine`]: whichever engine the configuration chose, the one type
//! the service, the transports and the server hold.
//!
//! Each engine is named once in each of three places here: a variant of
//! [`AnyEngine`] (with its `From`), of [`EngineChoice`] (what
//! [`AnyEngine::build`] builds it from), and of [`Meet`], whose arms
//! [`dispatch!`] writes for every method. A new engine adds one line to
//! each, and to `dispatch!`.

use std::time::Duration;

use tokio::{sync::watch, time::Instant};

use super::{
    Attempt, AttemptKey, Engine, EngineLimits, Id, Joining, LocalEngine, Meeting, Offer, PairError,
    Parties, RedisConfig, RedisEngine, RedisError, Withdrawal,
};

/// Whichever engine the configuration chose: the one type the service, the
/// transports and the server hold, so none of them names an engine.
///
/// An enum rather than a trait object, so that a local call's future is not
/// boxed: every byte of it is paid once per parked caller.
#[derive(Debug)]
// One per process: its size does not matter, and boxing would add a pointer
// chase to every call.
#[allow(clippy::large_enum_variant)]
pub enum AnyEngine {
    /// One process is the meeting place (the default).
    Local(LocalEngine),
    /// Replicas meet in Redis (`--redis-url`).
    Redis(RedisEngine),
}

impl From<LocalEngine> for AnyEngine {
    fn from(engine: LocalEngine) -> Self {
        Self::Local(engine)
    }
}

impl From<RedisEngine> for AnyEngine {
    fn from(engine: RedisEngine) -> Self {
        Self::Redis(engine)
    }
}

/// Why no engine could be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `--redis-url` or its companions are not usable.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// Which engine to build, with its settings: what the configuration chose
/// (`Config::engine`).
#[derive(Debug)]
pub enum EngineChoice {
    /// This process, holding its callers to these limits.
    Local(EngineLimits),
    /// Redis, as configured (its limits included).
    Redis(RedisConfig),
}

impl AnyEngine {
    /// Builds the chosen engine. An engine with series of its own
    /// registers them in `registry`.
    pub fn build(
        choice: EngineChoice,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Self, EngineError> {
        Ok(match choice {
            EngineChoice::Local(limits) => LocalEngine::with_limits(limits).into(),
            EngineChoice::Redis(config) => RedisEngine::start(config, registry)?.into(),
        })
    }
}

/// Calls `$call` on whichever engine `$any` is, as `$engine`; with a
/// `$meet` given, wraps the call's future in that variant of [`Meet`], so
/// that the futures of different engines are one type.
macro_rules! dispatch {
    ($any:expr, $engine:ident => $call:expr) => {
        match $any {
            AnyEngine::Local($engine) => $call,
            AnyEngine::Redis($engine) => $call,
        }
    };
    ($any:expr, meet $engine:ident => $call:expr) => {
        match $any {
            AnyEngine::Local($engine) => Meet::Local { call: $call },
            AnyEngine::Redis($engine) => Meet::Redis { call: $call },
        }
    };
}

pin_project_lite::pin_project! {
    /// [`AnyEngine::gather`]'s future: the chosen engine's, unboxed.
    #[project = MeetProj]
    enum Meet<L, R> {
        /// The local engine's call.
        Local { #[pin] call: L },
        /// The Redis engine's call.
        Redis { #[pin] call: R },
    }
}

impl<L, R, T> Future for Meet<L, R>
where
    L: Future<Output = T>,
    R: Future<Output = T>,
{
    type Output = T;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            MeetProj::Local { call } => call.poll(cx),
            MeetProj::Redis { call } => call.poll(cx),
        }
    }
}

impl Engine for AnyEngine {
    fn gather(
        &self,
        id: Id,
        parties: Parties,
        offer: Offer,
        deadline: Instant,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        dispatch!(self, meet engine => engine.gather(id, parties, offer, deadline))
    }

    fn gather_keyed(
        &self,
        call: Joining,
        deadline: Instant,
        attempt: Attempt<'_>,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        dispatch!(self, meet engine => engine.gather_keyed(call, deadline, attempt))
    }

    fn withdraw(
        &self,
        id: Id,
        key: &AttemptKey,
        grace: Duration,
    ) -> impl Future<Output = Result<Withdrawal, PairError>> + Send {
        dispatch!(self, meet engine => engine.withdraw(id, key, grace))
    }

    fn close(&self) -> impl Future<Output = ()> + Send {
        dispatch!(self, meet engine => engine.close())
    }

    fn waiting(&self) -> usize {
        dispatch!(self, engine => engine.waiting())
    }

    fn reachable(&self) -> watch::Receiver<bool> {
        dispatch!(self, engine => engine.reachable())
    }

    fn unreachable_reason(&self) -> &'static str {
        dispatch!(self, engine => engine.unreachable_reason())
    }
}
