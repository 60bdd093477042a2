//! The replica's background tasks: the probe, which connects, subscribes
//! this replica's channels and decides whether Redis is reachable, and the
//! janitor, which removes result keys whose message arrived.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, Weak, atomic::Ordering},
    time::Duration,
};

use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{Instant, sleep, timeout},
};

use super::{
    COMMANDS_WAIT, Inner,
    links::{Links, Problem},
    slots::slot,
};

/// How often a replica checks that Redis answers, while nothing else would
/// tell it: a paused Redis (SIGSTOP) closes no connection.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How long a replica that has not reached Redis yet waits before it warns.
const STARTUP_PATIENCE: Duration = Duration::from_secs(10);

/// Removes the result keys whose message arrived, many at once when many
/// pairs complete together: one UNLINK for them all, or in a cluster one
/// per slot (a command's keys must share one), sent at once.
pub(super) async fn sweep(inner: Weak<Inner>, mut swept: mpsc::UnboundedReceiver<String>) {
    let mut keys = Vec::new();
    while swept.recv_many(&mut keys, 512).await > 0 {
        let Some(engine) = inner.upgrade() else {
            return;
        };
        let mut by_slot: HashMap<usize, Vec<String>> = HashMap::new();
        let sharded = engine.connector.sharded();
        for key in keys.drain(..) {
            let slot = if sharded { slot(key.as_bytes()) } else { 0 };
            by_slot.entry(slot).or_default().push(key);
        }
        let Some(links) = engine.links.load_full() else {
            continue;
        };
        let mut unlinks = JoinSet::new();
        for (_, keys) in by_slot {
            let mut connection = links.commands.clone();
            // UNLINK rather than DEL only so that Redis's command counts
            // tell these apart from the script's own DELs.
            let unlink = redis::cmd("UNLINK").arg(keys).to_owned();
            let wait = engine.timeout * COMMANDS_WAIT;
            unlinks.spawn(async move {
                let _ = timeout(wait, unlink.exec_async(&mut connection)).await;
            });
        }
        drop(engine);
        while unlinks.join_next().await.is_some() {}
    }
}

/// What the probe has said already, so that it says each thing once.
#[derive(Default)]
struct Said {
    /// "waiting for Redis", before the first answer.
    waiting: bool,
    /// "still cannot reach Redis", when that lasts.
    warned: bool,
    /// The misconfiguration reported last.
    misconfigured: Option<String>,
}

/// Connects and subscribes this replica's channels, then checks that Redis
/// answers, every [`PROBE_INTERVAL`]: readiness follows, and so do new
/// callers.
pub(super) async fn probe(inner: Weak<Inner>, cell: Arc<OnceLock<Weak<Inner>>>) {
    let mut reached_before = false;
    // Before the first answer, failing is normal for a moment (Redis may be
    // starting beside us): say so at info, and warn only if it lasts.
    let started = Instant::now();
    let mut told = Said::default();
    loop {
        let Some(engine) = inner.upgrade() else {
            return;
        };
        let was_reachable = *engine.reachable.borrow();
        let checked = match was_reachable {
            true => engine.check().await,
            false => engine.recover(&cell).await,
        };
        match checked {
            Ok(()) => {
                engine.set_misconfigured(None);
                if !engine.reachable.send_replace(true) {
                    tracing::info!(place = %engine.place(), "Redis is reachable");
                    engine.metrics.reachable.set(1);
                    if reached_before {
                        engine.metrics.reconnects.inc();
                    }
                    reached_before = true;
                }
            }
            Err(Problem {
                reason,
                misconfigured,
            }) => {
                engine.set_misconfigured(misconfigured.then(|| reason.clone()));
                if misconfigured {
                    // Said once, at error: it lasts until someone fixes it.
                    if told.misconfigured.as_ref() != Some(&reason) {
                        tracing::error!(
                            %reason,
                            "Redis is misconfigured; this replica stays unready until it is fixed"
                        );
                        told.misconfigured = Some(reason.clone());
                    }
                } else if !reached_before {
                    if !told.waiting {
                        tracing::info!(%reason, "waiting for Redis");
                        told.waiting = true;
                    } else if !told.warned && started.elapsed() > STARTUP_PATIENCE {
                        tracing::warn!(%reason, "still cannot reach Redis");
                        told.warned = true;
                    }
                } else {
                    tracing::debug!(%reason, "Redis is still unreachable");
                }
                engine.lost(reason);
            }
        }
        drop(engine);
        sleep(PROBE_INTERVAL).await;
    }
}

impl Inner {
    /// Where the links lead, for logs.
    fn place(&self) -> String {
        self.links
            .load()
            .as_ref()
            .map_or_else(String::new, |links| links.place.clone())
    }

    /// While Redis is reachable: it still answers, on every primary, and
    /// (under Sentinel) the primary still is one.
    async fn check(&self) -> Result<(), Problem> {
        let Some(links) = self.links.load_full() else {
            return Err(Problem::passing("not connected".into()));
        };
        let follows = self.connector.checks_role();
        let ask = || {
            let mut subscriber = links.subscriber.clone();
            timeout(self.timeout, async move {
                subscriber.ping().await?;
                Ok::<_, redis::RedisError>(!follows || subscriber.is_primary().await?)
            })
        };
        // A refusal or a broken connection is lost at once; one slow answer
        // is asked again first. Losing Redis answers every caller waiting
        // here UNAVAILABLE, and a busy machine can be slow once.
        let answered = match ask().await {
            Err(_) => ask().await,
            answered => answered,
        };
        let reason = match answered {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => format!("{} is no longer the primary (a failover)", links.place),
            Ok(Err(error)) => format!("cannot reach Redis: {error}"),
            Err(_) => format!(
                "Redis did not answer within {}, twice",
                humantime::format_duration(self.timeout)
            ),
        };
        Err(Problem::passing(reason))
    }

    /// While Redis is unreachable: connects (again, where a failover may
    /// have moved the primary), subscribes every channel of this replica,
    /// and makes sure that each is heard where its messages are published.
    async fn recover(&self, cell: &Arc<OnceLock<Weak<Inner>>>) -> Result<(), Problem> {
        let current = self.links.load_full();
        if current.is_none() || self.connector.remakes_links() {
            let generation = self.generation.load(Ordering::Acquire) + 1;
            let pushes = super::pushes_for(cell, generation);
            let links = self.connector.connect(&pushes, self.timeout).await?;
            let moved = current.as_ref().is_some_and(|old| old.place != links.place);
            if moved {
                tracing::info!(primary = %links.place, "following the primary");
                self.metrics.failovers.inc();
            }
            // Under Sentinel, the same primary keeps its links (they
            // reconnect by themselves); a cluster's are made afresh.
            if current.is_none() || moved || self.connector.sharded() {
                self.generation.store(generation, Ordering::Release);
                self.links.store(Some(Arc::new(links)));
            }
        }
        let links = self.links.load_full().expect("connected above");
        self.resubscribe(&links).await.map_err(Problem::passing)
    }

    /// Subscribes every channel of this replica, and checks (over the
    /// callers' connection) that a cluster serves all its slots and that
    /// each channel is heard.
    async fn resubscribe(&self, links: &Links) -> Result<(), String> {
        // Each step is a round trip per channel, all at once. A step that
        // takes longer is stuck on a node that is going away (a fresh
        // connection can still be routed to a dead primary for a moment):
        // the next probe starts afresh rather than wait for it.
        let budget = self.timeout * 2;
        let within = |what: &str| {
            format!(
                "Redis did not {what} within {}",
                humantime::format_duration(budget)
            )
        };
        timeout(budget, self.subscribe_all(links))
            .await
            .map_err(|_| within("confirm this replica's subscriptions"))?
            .map_err(|e| format!("cannot subscribe: {e}"))?;
        let mut commands = links.commands.clone();
        let whole = timeout(budget, commands.cluster_ok())
            .await
            .map_err(|_| within("answer"))?
            .map_err(|e| format!("cannot reach Redis: {e}"))?;
        if !whole {
            return Err(
                "the cluster does not serve all its slots yet (cluster_state is not ok)".into(),
            );
        }
        // Its checks go over the callers' connection: that it answered them
        // is what a PING would have said.
        timeout(budget, self.heard_everywhere(links))
            .await
            .map_err(|_| within("answer"))?
    }

    /// Subscribes every channel; a channel subscribed already stays so.
    async fn subscribe_all(&self, links: &Links) -> redis::RedisResult<()> {
        let mut tasks = JoinSet::new();
        for channel in &self.channels {
            let (mut subscriber, channel) = (links.subscriber.clone(), channel.clone());
            tasks.spawn(async move { subscriber.subscribe(&channel).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a subscription task does not panic")?;
        }
        Ok(())
    }

    /// Publishes an empty check to each channel: a count of 0 means that
    /// the node that serves its slot does not have this replica's
    /// subscription (it was made on another node, or lost in a reconnect),
    /// and offers to its callers would be lost.
    async fn heard_everywhere(&self, links: &Links) -> Result<(), String> {
        let publish = match self.connector.sharded() {
            true => "SPUBLISH",
            false => "PUBLISH",
        };
        let mut tasks = JoinSet::new();
        for channel in &self.channels {
            let (mut commands, channel) = (links.commands.clone(), channel.clone());
            tasks.spawn(async move {
                let heard: redis::RedisResult<u64> = redis::cmd(publish)
                    .arg(&channel)
                    .arg("K")
                    .query_async(&mut commands)
                    .await;
                (channel, heard)
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done.expect("a check task does not panic") {
                (_, Ok(n)) if n > 0 => {}
                (channel, Ok(_)) => {
                    return Err(format!(
                        "Redis does not deliver {channel} to this replica yet"
                    ));
                }
                (_, Err(error)) => return Err(format!("cannot reach Redis: {error}")),
            }
        }
        Ok(())
    }
}
