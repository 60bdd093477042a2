//! The script's operations as the engine calls them, and their replies read
//! back: arrive (and join), accept (and confirm), leave, claim, withdraw,
//! and an attempt key's binding.

use super::*;

/// How long an attempt key's binding to its id outlives the longest its
/// answer can be kept (its wait, then the grace), as the script's entries
/// outlive their callers' deadlines (`SLACK_MS` in `redis.lua`).
pub(super) const BINDING_SLACK: Duration = Duration::from_secs(1);

/// What `arrive` decided.
pub(super) enum Arrived {
    /// Parked; or, for a retry that took its place back, parked until its
    /// first try's deadline, this far off.
    Parked(Option<Duration>),
    Offered,
    Busy,
    Full,
    /// A group of this size is forming under the id.
    Mismatch(u32),
    /// The group's payloads already take this many bytes.
    TooLarge(usize),
    /// Decided as it arrived (a keyed caller that paired with a waiter
    /// whose replica is gone, or completed a group).
    Answered(Verdict),
    /// A retry with an attempt key: the answer Redis kept for it.
    Kept(Verdict),
    /// A try with an attempt key older than the one that holds its place.
    Superseded,
    /// A try with an attempt key whose wait was withdrawn.
    Withdrawn,
    /// A retry with an attempt key whose place or kept answer is another
    /// payload's, or whose key is bound to another id or group size.
    Reused(Reuse),
}

/// What `accept`, `confirm` and `leave` decided.
pub(super) enum Verdict {
    /// Paired.
    Paired {
        role: Role,
        /// The partner's sealed offer.
        peer: Bytes,
        /// How long Redis says the caller waited, where it keeps that (for
        /// an answer that a retry may be handed again).
        waited: Option<Duration>,
    },
    /// The group completed.
    Grouped {
        /// This caller's position.
        position: usize,
        /// Every member's sealed offer.
        all: Vec<Bytes>,
        /// How long Redis says it waited, for a caller with an attempt key
        /// (as for a pair).
        waited: Option<Duration>,
    },
    /// No pair: `accept` found the offer withdrawn, or `leave` removed the
    /// caller (or found it gone already).
    Unpaired,
}

impl Inner {
    /// Withdraws the keyed wait whose attempt key hashes to `hash`, if it is
    /// still undecided (the script's `withdraw`).
    pub(super) async fn withdraw(
        &self,
        digest: Digest,
        hash: Digest,
        grace: Duration,
    ) -> Result<Withdrawal, PairError> {
        if let Some(error) = self.unreachable_now() {
            return Err(error);
        }
        let _turn = self.turn().await?;
        let mut invocation = self.script.key(self.key(&digest));
        invocation
            .arg("withdraw")
            .arg("")
            .arg(Hex16::new(&hash).as_str())
            .arg(wait_ms(grace));
        let reply = self.run(&invocation).await?;
        let decided = match reply.first().map(Vec::as_slice) {
            Some(b"withdrawn") => return Ok(Withdrawal::Withdrawn),
            Some(b"unknown") => return Ok(Withdrawal::Unknown),
            Some(b"kept") => verdict(reply.into_iter().skip(1).collect())?,
            // Found, and taken out as it was leaving.
            _ => verdict(reply)?,
        };
        Ok(meeting_of(decided).map_or(Withdrawal::Withdrawn, Withdrawal::Met))
    }

    pub(super) async fn arrive(
        &self,
        guard: &Guard,
        arrival: &Arrival,
        wait: Duration,
        may_park: bool,
    ) -> Result<Arrived, PairError> {
        let (payload, payload_len) = (&arrival.sealed, arrival.payload_len);
        let (key, token) = (guard.key(), guard.token());
        let mut invocation = self.script.key(&key);
        let group = guard.parties > 2;
        invocation
            .arg(if group { "join" } else { "arrive" })
            .arg(&token)
            .arg(self.channel(&guard.digest))
            .arg(payload.as_ref())
            .arg(wait_ms(wait))
            .arg(if may_park { "1" } else { "0" });
        if group {
            invocation
                .arg(guard.parties)
                .arg(payload_len)
                .arg(self.limits.meeting_bytes(guard.parties));
        }
        let mut binding = None;
        if let Some(keyed) = &arrival.attempt {
            invocation
                .arg(Hex16::new(&keyed.hash).as_str())
                .arg(wait_ms(keyed.grace))
                .arg(keyed.previous)
                .arg(keyed.tried_us);
            if !self.on_a_cluster() {
                let (key, ours) = self.binding(guard, keyed);
                invocation
                    .key(key)
                    .arg(&ours)
                    .arg(binding_ms(wait, keyed.grace));
                binding = Some(ours);
            }
        }
        let reply = self.run(&invocation).await?;
        let number = || {
            reply
                .get(1)
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
                .ok_or_else(|| unexpected(&reply))
        };
        match reply.first().map(Vec::as_slice) {
            Some(b"parked") => Ok(Arrived::Parked(
                reply
                    .get(1)
                    .map(|_| number())
                    .transpose()?
                    .map(Duration::from_millis),
            )),
            Some(b"offered") => Ok(Arrived::Offered),
            Some(b"busy") => Ok(Arrived::Busy),
            Some(b"superseded") => Ok(Arrived::Superseded),
            Some(b"withdrawn") => Ok(Arrived::Withdrawn),
            Some(b"reused") => Ok(Arrived::Reused(Reuse::Payload)),
            Some(b"rebound") => {
                let ours = binding.as_ref().map(String::as_bytes);
                (reply.get(1).zip(ours))
                    .and_then(|(first, ours)| bound_to_another(first, ours))
                    .map(Arrived::Reused)
                    .ok_or_else(|| unexpected(&reply))
            }
            Some(b"full") => Ok(Arrived::Full),
            Some(b"mismatch") => Ok(Arrived::Mismatch(number()? as u32)),
            Some(b"toolarge") => Ok(Arrived::TooLarge(number()? as usize)),
            Some(b"first" | b"second" | b"group") => Ok(Arrived::Answered(verdict(reply)?)),
            Some(b"kept") => Ok(Arrived::Kept(verdict(reply.into_iter().skip(1).collect())?)),
            _ => Err(unexpected(&reply)),
        }
    }

    /// Binds a keyed call's attempt key to its id and group size in Redis,
    /// for as long as its wait and then its kept answer can last: a try
    /// that names another id or size is then refused through any replica,
    /// as the replica that saw the first try refuses it. On a cluster, with
    /// a command of its own (`SET NX GET`): the binding is in its key's
    /// slot, which a try with another id can find, not in the id's, where
    /// the script runs. (Off a cluster, the script binds it.)
    pub(super) async fn bind_key(
        &self,
        guard: &Guard,
        keyed: &Keyed,
    ) -> Result<Option<Reuse>, PairError> {
        let wait = guard.deadline.saturating_duration_since(Instant::now());
        let (key, ours) = self.binding(guard, keyed);
        let mut command = redis::cmd("SET");
        command
            .arg(key)
            .arg(&ours)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(binding_ms(wait, keyed.grace));
        let first: Option<Vec<u8>> = self
            .send(|mut connection| async move { command.query_async(&mut connection).await })
            .await?;
        Ok(first.and_then(|first| bound_to_another(&first, ours.as_bytes())))
    }

    pub(super) async fn accept(&self, guard: &Guard) -> Result<Verdict, PairError> {
        let (key, token) = (guard.key(), guard.token());
        let mut invocation = self.script.key(&key);
        let confirm = guard.parties > 2;
        invocation
            .arg(if confirm { "confirm" } else { "accept" })
            .arg(&token);
        verdict(self.run(&invocation).await?)
    }

    pub(super) async fn leave(
        &self,
        key: &str,
        token: &str,
        can_accept: bool,
    ) -> Result<Verdict, PairError> {
        let mut invocation = self.script.key(key);
        invocation
            .arg("leave")
            .arg(token)
            .arg(if can_accept { "1" } else { "0" });
        verdict(self.run(&invocation).await?)
    }

    /// Where a keyed caller's attempt key is bound to its id, and what the
    /// binding says: the id's hash, then the group size.
    pub(super) fn binding(&self, guard: &Guard, keyed: &Keyed) -> (String, String) {
        let id = Hex16::new(&guard.digest);
        (
            slots::binding(&self.key_prefix, &keyed.hash),
            format!("{} {}", id.as_str(), guard.parties),
        )
    }
}

/// What a decided caller is told, from what Redis kept of the decision;
/// `None` if it was not paired.
pub(super) fn meeting_of(verdict: Verdict) -> Option<Meeting> {
    let (position, offers, waited) = match verdict {
        Verdict::Paired {
            role: Role::First,
            peer,
            waited,
        } => (0, Offers::Peer(unseal(peer)), waited),
        Verdict::Paired {
            role: Role::Second,
            peer,
            waited,
        } => (1, Offers::Peer(unseal(peer)), waited),
        Verdict::Grouped {
            position,
            all,
            waited,
        } => {
            let all = all.into_iter().map(unseal).collect();
            (position, Offers::All(all), waited)
        }
        Verdict::Unpaired => return None,
    };
    Some(Meeting::new(position, offers, waited.unwrap_or_default()))
}

/// How long a keyed try's binding lasts, in ms: as long as its wait (what
/// is left of it), then its kept answer, can last, and [`BINDING_SLACK`].
pub(super) fn binding_ms(wait: Duration, grace: Duration) -> u64 {
    wait_ms(wait + grace + BINDING_SLACK)
}

/// What an attempt key's binding says of a try whose own binding, `ours`,
/// is another: `first` (the id's hash, then the group size) names another
/// id, or the same id with another size. `None` if it is the same.
pub(super) fn bound_to_another(first: &[u8], ours: &[u8]) -> Option<Reuse> {
    fn id(binding: &[u8]) -> Option<&[u8]> {
        binding.split(|&b| b == b' ').next()
    }
    if first == ours {
        None
    } else if id(first) == id(ours) {
        Some(Reuse::Parties)
    } else {
        Some(Reuse::Id)
    }
}
