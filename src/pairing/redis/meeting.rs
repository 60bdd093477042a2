//! A caller's way through the engine: its arrival until it is placed (or
//! refused), then its wait, event by event, until it is decided, it leaves,
//! or Redis is lost.

use super::*;

/// The longest pause between two tries of an arrival that found the id busy.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What an arrival brings to Redis, used up by the time it waits.
pub(super) struct Arrival {
    pub(super) sealed: Bytes,
    pub(super) payload_len: usize,
    pub(super) attempt: Option<Keyed>,
}

/// What Redis keeps of a keyed call's [`Attempt`].
pub(super) struct Keyed {
    /// The key's hash ([`super::AttemptKey::hash`]).
    pub(super) hash: Digest,
    /// How long the answer is kept for.
    pub(super) grace: Duration,
    /// Which try it is ([`super::TryOrder`]): the tries before it, and
    /// when it reached its replica, in microseconds since the Unix epoch.
    /// A try earlier than the one holding the place is refused it.
    pub(super) previous: u32,
    pub(super) tried_us: u64,
}

/// How an arrival ended up.
pub(super) enum Placed {
    /// Parked, or offered to the waiter: its outcome is to come.
    /// `Reattached` if it took back the place of an earlier try with its
    /// attempt key.
    Waiting(Delivery),
    Refused(PairError),
    Answered(Verdict, Delivery),
}

/// What a caller's replica learned, the offers still sealed.
pub(super) struct Met {
    pub(super) position: usize,
    pub(super) offers: Sealed,
    pub(super) waited: Duration,
    pub(super) handed: Delivery,
}

/// The other members' sealed offers: a pair's partner's, or everyone's.
pub(super) enum Sealed {
    Peer(Bytes),
    All(Vec<Bytes>),
}

impl Inner {
    pub(super) async fn meet(
        self: Arc<Self>,
        digest: Digest,
        parties: Parties,
        arrival: Box<Arrival>,
        deadline: Instant,
    ) -> Result<Met, PairError> {
        if let Some(error) = self.unreachable_now() {
            return Err(error);
        }
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        // Registered before arriving: an offer can come before the answer.
        self.lock_slots().insert(ticket, slot.clone());
        let mut guard = Guard {
            inner: self.clone(),
            digest,
            ticket,
            deadline,
            parties: parties.get(),
            keyed: arrival.attempt.is_some(),
            place: false,
            parked: false,
            cleared: false,
        };
        let start = Instant::now();
        // The first turn is waited for here, before anything is built for the
        // arrival: in a burst, thousands of callers wait for it at once, and
        // the allocator keeps what a burst needed. (Boxing this wait, to
        // shrink the waiting future by 120 bytes, measured worse: each caller
        // in the burst then holds a box of its own.)
        let turn = match self.turn().await {
            Ok(turn) => turn,
            Err(error) => {
                guard.cleared = true;
                return Err(error);
            }
        };
        // Boxed: what arriving needs (the payload, a timer to back off with)
        // is then not part of the future that waits.
        let placed = Box::pin(self.arrive_until_placed(&mut guard, arrival, turn)).await?;
        let handed = match &placed {
            Placed::Waiting(handed) | Placed::Answered(_, handed) => *handed,
            Placed::Refused(_) => Delivery::Fresh,
        };

        // The payloads here are sealed offers; `gather` unseals them.
        let met = |verdict| {
            let (position, offers, waited) = match verdict {
                Verdict::Paired {
                    role: Role::First,
                    peer,
                    waited,
                } => (0, Sealed::Peer(peer), waited),
                // Zero, as the contract says and the local engine and the
                // kept answer for a retry do: it found its partner waiting.
                Verdict::Paired {
                    role: Role::Second,
                    peer,
                    ..
                } => (1, Sealed::Peer(peer), Some(Duration::ZERO)),
                Verdict::Grouped {
                    position,
                    all,
                    waited,
                } => (position, Sealed::All(all), waited),
                Verdict::Unpaired => return Err(PairError::TimedOut),
            };
            Ok(Met {
                position,
                offers,
                waited: waited.unwrap_or_else(|| start.elapsed()),
                handed,
            })
        };
        match placed {
            Placed::Waiting(_) => {}
            Placed::Refused(refused) => return Err(refused),
            Placed::Answered(answer, _) => return met(answer),
        }
        // A retry that took its place back keeps its first try's deadline.
        let deadline = guard.deadline;
        loop {
            let event = tokio::select! {
                event = slot.next() => event,
                () = sleep_until(deadline) => {
                    return met(Box::pin(self.at_deadline(&mut guard, &slot)).await?);
                }
            };
            match event {
                Event::Offer => {
                    let accepted = Box::pin(self.accept_in_turn(&guard)).await?;
                    if !matches!(accepted, Verdict::Unpaired) {
                        guard.cleared = true;
                        return met(accepted);
                    }
                }
                Event::Paired(peer_payload) => {
                    guard.cleared = true;
                    return met(Verdict::Paired {
                        role: Role::Second,
                        peer: peer_payload,
                        waited: None,
                    });
                }
                Event::Grouped(position) => {
                    let claimed = Box::pin(self.group_result(&guard)).await;
                    guard.cleared = true;
                    let (all, waited) = claimed?;
                    return met(Verdict::Grouped {
                        position,
                        all,
                        waited,
                    });
                }
                // Now a waiter, it takes a place against the cap like one;
                // with none left, it leaves (the guard removes it).
                Event::Promoted => {
                    if !guard.place {
                        if !self.places.take() {
                            return Err(self.limits.full());
                        }
                        guard.place = true;
                        self.parked.fetch_add(1, Ordering::Relaxed);
                        guard.parked = true;
                    }
                }
                // Nothing of it is left here: the retry holds its entry.
                Event::Superseded => {
                    guard.cleared = true;
                    return Err(PairError::Superseded);
                }
                // Nothing of it is left either: the withdrawal took it out.
                Event::Withdrawn => {
                    guard.cleared = true;
                    return Err(PairError::Withdrawn);
                }
                Event::Lost(reason) => return Err(PairError::Unavailable(reason)),
                Event::Closed if guard.keyed => {
                    return met(Box::pin(self.detach(&mut guard)).await?);
                }
                Event::Closed => return Err(PairError::ShuttingDown),
            }
        }
    }

    /// The deadline came: leave, unless an offer came first.
    pub(super) async fn at_deadline(
        &self,
        guard: &mut Guard,
        slot: &Slot,
    ) -> Result<Verdict, PairError> {
        let _turn = self.turn().await?;
        let verdict = self.leave(&guard.key(), &guard.token(), true).await?;
        guard.cleared = true;
        if !matches!(verdict, Verdict::Unpaired) {
            return Ok(verdict);
        }
        // Its result key is gone only if the message that paired it arrived,
        // and then that message is waiting in its slot.
        while let Some(event) = slot.try_next() {
            match event {
                Event::Paired(peer_payload) => {
                    return Ok(Verdict::Paired {
                        role: Role::Second,
                        peer: peer_payload,
                        waited: None,
                    });
                }
                Event::Grouped(position) => {
                    let (all, waited) = self.group_result(guard).await?;
                    return Ok(Verdict::Grouped {
                        position,
                        all,
                        waited,
                    });
                }
                _ => {}
            }
        }
        Ok(Verdict::Unpaired)
    }

    /// Shutting down, a waiter with an attempt key lets go of its place in
    /// Redis rather than take it out, so that a rolling restart costs it only
    /// a reconnect: its retry through another replica takes the place back
    /// within the grace, and a partner that comes first pairs with it and
    /// leaves the answer for the retry. An offer already made to it is
    /// accepted, and then the caller is answered here after all.
    pub(super) async fn detach(&self, guard: &mut Guard) -> Result<Verdict, PairError> {
        let _turn = self.turn().await?;
        let mut invocation = self.script.key(guard.key());
        invocation.arg("detach").arg(guard.token());
        let reply = self.run(&invocation).await?;
        if reply.first().map(Vec::as_slice) == Some(b"detached") {
            guard.cleared = true;
            return Err(PairError::ShuttingDown);
        }
        match verdict(reply)? {
            // Not its place (an offerer's, say): the guard takes it out.
            Verdict::Unpaired => Err(PairError::ShuttingDown),
            answered => {
                guard.cleared = true;
                Ok(answered)
            }
        }
    }

    /// The payloads of the member's completed group. Claimed through the
    /// member's own record of its group (not the key its message named), as
    /// its cleanup claims them if it goes first: either way once, so that
    /// the payloads go with their last reader.
    pub(super) async fn group_result(
        &self,
        guard: &Guard,
    ) -> Result<(Vec<Bytes>, Option<Duration>), PairError> {
        let _turn = self.turn().await?;
        let mut invocation = self.script.key(guard.key());
        invocation.arg("claim").arg(guard.token());
        let reply = self.run(&invocation).await?;
        match verdict(reply)? {
            Verdict::Grouped { all, waited, .. } => Ok((all, waited)),
            _ => Err(PairError::Unavailable(
                "the group completed, but its answer expired in Redis before it was read".into(),
            )),
        }
    }

    pub(super) async fn accept_in_turn(&self, guard: &Guard) -> Result<Verdict, PairError> {
        let _turn = self.turn().await?;
        self.accept(guard).await
    }

    /// Parks the caller in Redis, or offers it to the waiter there, trying
    /// again while the id is busy.
    pub(super) async fn arrive_until_placed(
        &self,
        guard: &mut Guard,
        arrival: Box<Arrival>,
        turn: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<Placed, PairError> {
        let deadline = guard.deadline;
        // On a cluster, a keyed caller's key is bound by a command of its
        // own, first; off one, the arrival's script binds it.
        if let Some(keyed) = arrival.attempt.as_ref().filter(|_| self.on_a_cluster()) {
            // Refused or failed, nothing of the caller is in Redis yet.
            match Box::pin(self.bind_key(guard, keyed)).await {
                Ok(None) => {}
                Ok(Some(reuse)) => {
                    guard.cleared = true;
                    return Ok(Placed::Refused(PairError::AttemptReused(reuse)));
                }
                Err(error) => {
                    guard.cleared = true;
                    return Err(error);
                }
            }
        }
        let mut first_turn = Some(turn);
        let mut backoff = Duration::from_millis(1);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                guard.cleared = true;
                return Ok(Placed::Refused(PairError::TimedOut));
            }
            let _turn = match first_turn.take() {
                Some(turn) => turn,
                None => self.turn().await?,
            };
            // A place against the cap, taken before asking, so that two
            // arrivals at once cannot both take the last one.
            let may_park = self.places.take();
            guard.place = may_park;
            // Each command's future is boxed, here and below: it lives for a
            // round trip, and inline it would size every waiting caller.
            let arrived = Box::pin(self.arrive(guard, &arrival, wait, may_park)).await;
            if let Ok(Arrived::Parked(left)) = arrived {
                if let Some(left) = left {
                    guard.deadline = guard.deadline.min(Instant::now() + left);
                }
                self.parked.fetch_add(1, Ordering::Relaxed);
                guard.parked = true;
            } else if guard.place {
                self.places.give_back();
                guard.place = false;
            }
            match arrived? {
                // Redis has the payload now: it (and the request buffer it
                // may be a slice of) is let go of as this returns.
                Arrived::Parked(Some(_)) => return Ok(Placed::Waiting(Delivery::Reattached)),
                Arrived::Parked(None) | Arrived::Offered => {
                    return Ok(Placed::Waiting(Delivery::Fresh));
                }
                Arrived::Answered(answer) => {
                    guard.cleared = true;
                    return Ok(Placed::Answered(answer, Delivery::Fresh));
                }
                Arrived::Kept(answer) => {
                    guard.cleared = true;
                    return Ok(Placed::Answered(answer, Delivery::Redelivered));
                }
                Arrived::Full => {
                    guard.cleared = true;
                    return Ok(Placed::Refused(self.limits.full()));
                }
                Arrived::Superseded => {
                    guard.cleared = true;
                    return Ok(Placed::Refused(PairError::Superseded));
                }
                Arrived::Withdrawn => {
                    guard.cleared = true;
                    return Ok(Placed::Refused(PairError::Withdrawn));
                }
                Arrived::Reused(reuse) => {
                    guard.cleared = true;
                    return Ok(Placed::Refused(PairError::AttemptReused(reuse)));
                }
                Arrived::Mismatch(forming) => {
                    guard.cleared = true;
                    return Ok(Placed::Refused(PairError::PartiesMismatch {
                        forming,
                        asked: guard.parties,
                    }));
                }
                Arrived::TooLarge(held) => {
                    guard.cleared = true;
                    let payload_len = arrival.payload_len;
                    return Ok(Placed::Refused(self.limits.too_large(held, payload_len)));
                }
                // Another caller is pairing with this id's waiter right now;
                // the id is free again within a round trip or two.
                Arrived::Busy => {
                    sleep_until(deadline.min(Instant::now() + backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
