//! [`AnyEngine`]: whichever engine the configuration chose, the one type
//! the service, the transports and the server hold.

use std::time::Duration;

use tokio::{sync::watch, time::Instant};

use super::{
    Attempt, AttemptKey, Engine, EngineLimits, Id, LocalEngine, Meeting, Offer, PairError, Parties,
    RedisArgs, RedisEngine, RedisError, Withdrawal,
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

impl AnyEngine {
    /// The one place the engine is chosen: Redis with `--redis-url`, this
    /// process otherwise. An engine with series of its own registers them
    /// in `registry`.
    pub fn build(
        redis: &RedisArgs,
        limits: EngineLimits,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Self, EngineError> {
        Ok(match redis.engine_config(limits)? {
            None => LocalEngine::with_limits(limits).into(),
            Some(config) => RedisEngine::start(config, registry)?.into(),
        })
    }
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
        match self {
            Self::Local(engine) => Meet::Local {
                call: engine.gather(id, parties, offer, deadline),
            },
            Self::Redis(engine) => Meet::Redis {
                call: engine.gather(id, parties, offer, deadline),
            },
        }
    }

    fn gather_keyed(
        &self,
        call: (Id, Parties, Offer),
        deadline: Instant,
        attempt: Attempt<'_>,
    ) -> impl Future<Output = Result<Meeting, PairError>> + Send {
        match self {
            Self::Local(engine) => Meet::Local {
                call: engine.gather_keyed(call, deadline, attempt),
            },
            Self::Redis(engine) => Meet::Redis {
                call: engine.gather_keyed(call, deadline, attempt),
            },
        }
    }

    fn withdraw(
        &self,
        id: Id,
        key: &AttemptKey,
        grace: Duration,
    ) -> impl Future<Output = Result<Withdrawal, PairError>> + Send {
        match self {
            Self::Local(engine) => Meet::Local {
                call: engine.withdraw(id, key, grace),
            },
            Self::Redis(engine) => Meet::Redis {
                call: engine.withdraw(id, key, grace),
            },
        }
    }

    async fn close(&self) {
        match self {
            Self::Local(engine) => engine.close().await,
            Self::Redis(engine) => engine.close().await,
        }
    }

    fn waiting(&self) -> usize {
        match self {
            Self::Local(engine) => engine.waiting(),
            Self::Redis(engine) => engine.waiting(),
        }
    }

    fn reachable(&self) -> watch::Receiver<bool> {
        match self {
            Self::Local(engine) => engine.reachable(),
            Self::Redis(engine) => engine.reachable(),
        }
    }

    fn unreachable_reason(&self) -> &'static str {
        match self {
            Self::Local(engine) => engine.unreachable_reason(),
            Self::Redis(engine) => engine.unreachable_reason(),
        }
    }
}
