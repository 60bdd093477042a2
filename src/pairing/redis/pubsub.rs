//! The subscriber connection's pushes: messages on this replica's channels,
//! decoded and handed to their callers' mailboxes, and a dropped
//! connection or subscription, which loses Redis.

use super::*;

/// Hands the pushes of one generation of links to the engine, once it
/// exists.
pub(super) fn pushes_for(engine: &Arc<OnceLock<Weak<Inner>>>, generation: u64) -> Pushes {
    let engine = engine.clone();
    Arc::new(move |push: PushInfo| {
        if let Some(inner) = engine.get().and_then(Weak::upgrade)
            && generation == inner.generation.load(Ordering::Acquire)
        {
            inner.pushed(push);
        }
    })
}

impl Inner {
    /// What the subscriber connection hands over besides answers: a message
    /// on this replica's channel, or news that the connection dropped, which
    /// loses Redis: messages sent while it was down are gone, so no waiting
    /// caller can trust what it has not been told.
    pub(super) fn pushed(self: &Arc<Self>, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(Value::BulkString(message)) = push.data.get(1) {
                    self.received(message);
                }
            }
            PushKind::Disconnection => self.lost("lost the connection to Redis".into()),
            // This replica never unsubscribes: Redis dropped a subscription,
            // as a cluster does when a slot moves to another node. Messages
            // on it may be lost until the probe has it back.
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                self.metrics.failovers.inc();
                self.lost("Redis dropped this replica's subscription (a slot moved)".into());
            }
            _ => {}
        }
    }

    /// One message from this replica's channel.
    pub(super) fn received(self: &Arc<Self>, message: &[u8]) {
        let Some((&kind, rest)) = message.split_first() else {
            return;
        };
        let mut parts = rest.splitn(3, |&b| b == b'\n');
        let (Some(token), Some(key)) = (parts.next(), parts.next()) else {
            return;
        };
        let (Ok(token), Ok(key)) = (std::str::from_utf8(token), std::str::from_utf8(key)) else {
            return;
        };
        let Some(ticket) = token
            .strip_prefix(self.replica.as_str())
            .and_then(|t| t.strip_prefix(':'))
            .and_then(|t| t.parse::<u64>().ok())
        else {
            return;
        };
        let event = match kind {
            b'O' => Event::Offer,
            b'X' => Event::Superseded,
            b'W' => Event::Withdrawn,
            b'P' => Event::Promoted,
            b'R' => Event::Paired(Bytes::copy_from_slice(parts.next().unwrap_or_default())),
            // The position, then the result's key, which the member's
            // record of its group names too.
            b'G' => {
                let Some(Ok(position)) = parts.next().and_then(|rest| {
                    let (position, _result) = std::str::from_utf8(rest).ok()?.split_once('\n')?;
                    Some(position.parse())
                }) else {
                    return;
                };
                Event::Grouped(position)
            }
            _ => return,
        };
        let delivered = match self.lock_slots().get(&ticket) {
            Some(slot) => {
                slot.send(event);
                true
            }
            None => false,
        };
        match (kind, delivered) {
            // The result key was only for a missed message, and this one
            // arrived: remove it. Only after delivering the message, which a
            // caller that finds its result key gone relies on.
            (b'R', _) => {
                let _ = self.janitor.send(format!("{key}:r:{token}"));
            }
            // The member claims its copy of the payloads through its record
            // of the group, or its cleanup does, if it left as the group
            // completed (or leaves before it has read them): so that they
            // do not outstay their last reader.
            (b'G', _) => {}
            // Taken over by a retry: its entry is the retry's now. Or
            // withdrawn: the withdrawal took its entry out.
            (b'X' | b'W', _) => {}
            // An offer to (or a promotion of) a caller that is no longer
            // here: it left, or was answered when Redis was lost. Make sure
            // it is gone from Redis, which hands its place to the offerer.
            (_, false) => {
                self.spawn_cleanup(key.to_owned(), token.to_owned(), Instant::now());
            }
            (_, true) => {}
        }
    }
}
