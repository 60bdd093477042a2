//! Sending commands: a turn among the commands in flight, and a bound on
//! each, so that no caller waits on a Redis that cannot answer.

use super::*;

/// A command may take this many `--redis-timeout`s: the probe, not one slow
/// command, decides that Redis is unreachable, since a command can queue
/// behind a burst of others while Redis is well.
pub(super) const COMMANDS_WAIT: u32 = 10;

impl Inner {
    /// A turn to send a command (see [`IN_FLIGHT`]). Taken before the
    /// command's future is built, so that a caller waiting for its turn holds
    /// no more than this.
    pub(super) async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PairError> {
        let mut reachable = self.reachable.subscribe();
        tokio::select! {
            turn = self.turns.acquire() => Ok(turn.expect("the semaphore is never closed")),
            _ = reachable.wait_for(|up| !up) => Err(PairError::Unavailable(UNREACHABLE.into())),
        }
    }

    /// Runs the script once and records the round trip. It fails at once
    /// when the probe finds Redis unreachable, so that no caller waits on a
    /// Redis that cannot answer; and after [`COMMANDS_WAIT`] timeouts in any
    /// case, since a command queued behind a burst may be slow while Redis
    /// is well.
    pub(super) async fn run(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<Vec<u8>>, PairError> {
        self.send(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await
    }

    /// Sends one command, made by `command` on a handle to the commands'
    /// connection, as [`Inner::run`] says.
    pub(super) async fn send<T, F>(&self, command: impl FnOnce(Conn) -> F) -> Result<T, PairError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let mut reachable = self.reachable.subscribe();
        let Some(links) = self.links.load_full() else {
            return Err(PairError::Unavailable(UNREACHABLE.into()));
        };
        let start = Instant::now();
        // Boxed: inline, this large future would be part of every waiting
        // caller's, though it lives only for a round trip.
        let command = Box::pin(command(links.commands.clone()));
        let reply = tokio::select! {
            reply = timeout(self.timeout * COMMANDS_WAIT, command) => reply,
            _ = reachable.wait_for(|up| !up) => {
                return Err(PairError::Unavailable(UNREACHABLE.into()));
            }
        };
        self.metrics
            .round_trips
            .observe(start.elapsed().as_secs_f64());
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            // This call fails; whether Redis is lost is for the probe and
            // the subscription to say (a broken subscriber connection pushes
            // a `Disconnection`, see `pushed`), not for one command.
            Ok(Err(error)) => Err(PairError::Unavailable(format!("Redis failed: {error}"))),
            Err(_) => Err(PairError::Unavailable(format!(
                "Redis did not answer within {}",
                humantime::format_duration(self.timeout * COMMANDS_WAIT)
            ))),
        }
    }
}
