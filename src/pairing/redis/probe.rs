//! The replica's background tasks: the probe, which subscribes this
//! replica's channel and decides whether Redis is reachable, and the
//! janitor, which removes result keys whose message arrived.

use std::{sync::Weak, time::Duration};

use tokio::{
    sync::mpsc,
    time::{Instant, sleep, timeout},
};

use super::{COMMANDS_WAIT, Inner};

/// How often a replica checks that Redis answers, while nothing else would
/// tell it: a paused Redis (SIGSTOP) closes no connection.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How long a replica that has not reached Redis yet waits before it warns.
const STARTUP_PATIENCE: Duration = Duration::from_secs(10);

/// Removes the result keys whose message arrived, many at once when many
/// pairs complete together: one pipeline, one write, one read.
pub(super) async fn sweep(inner: Weak<Inner>, mut swept: mpsc::UnboundedReceiver<String>) {
    let mut keys = Vec::new();
    while swept.recv_many(&mut keys, 512).await > 0 {
        let Some(engine) = inner.upgrade() else {
            return;
        };
        let mut pipeline = redis::pipe();
        for key in keys.drain(..) {
            // UNLINK rather than DEL only so that Redis's command counts
            // tell these apart from the script's own DELs.
            pipeline.cmd("UNLINK").arg(key).ignore();
        }
        let mut connection = engine.connection.clone();
        let _ = timeout(
            engine.timeout * COMMANDS_WAIT,
            pipeline.exec_async(&mut connection),
        )
        .await;
    }
}

/// Subscribes this replica's channel, then checks that Redis answers, every
/// [`PROBE_INTERVAL`]: readiness follows, and so do new callers.
pub(super) async fn probe(inner: Weak<Inner>) {
    let mut subscribed = false;
    let mut reached_before = false;
    // Before the first answer, failing is normal for a moment (Redis may be
    // starting beside us): say so at info, and warn only if it lasts.
    let started = Instant::now();
    let mut told = (false, false);
    loop {
        let Some(engine) = inner.upgrade() else {
            return;
        };
        let mut connection = engine.connection.clone();
        let mut subscriber = engine.subscriber.clone();
        let was_reachable = *engine.reachable.borrow();
        let answered = timeout(engine.timeout, async {
            if !subscribed {
                subscriber.subscribe(&engine.channel).await?;
                subscribed = true;
            }
            // Before saying Redis is back, make sure the callers' connection
            // is too (it reconnects on its first command after an outage).
            if !was_reachable {
                redis::cmd("PING").exec_async(&mut connection).await?;
            }
            redis::cmd("PING").exec_async(&mut subscriber).await
        })
        .await;
        let failure = match answered {
            Ok(Ok(())) => {
                if !engine.reachable.send_replace(true) {
                    tracing::info!("Redis is reachable");
                    engine.metrics.reachable.set(1);
                    if reached_before {
                        engine.metrics.reconnects.inc();
                    }
                    reached_before = true;
                }
                None
            }
            Ok(Err(error)) => Some(format!("cannot reach Redis: {error}")),
            Err(_) => Some(format!(
                "Redis did not answer within {}",
                humantime::format_duration(engine.timeout)
            )),
        };
        if let Some(reason) = failure {
            if !reached_before {
                if !told.0 {
                    tracing::info!(%reason, "waiting for Redis");
                    told.0 = true;
                } else if !told.1 && started.elapsed() > STARTUP_PATIENCE {
                    tracing::warn!(%reason, "still cannot reach Redis");
                    told.1 = true;
                }
            }
            engine.lost(reason);
        }
        drop(engine);
        sleep(PROBE_INTERVAL).await;
    }
}
