//! The values an engine call is made of and answers with: ids, group
//! sizes, offers, meetings, and a keyed call's attempt. Each validates at
//! the edge, so that the engines never see an invalid one.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::sync::watch;

use super::{AttemptKeyError, IdError, PartiesError};
use crate::trace::TraceContext;

/// The longest id accepted, in bytes. Ids are meeting codes, not documents;
/// the bound also caps the memory a parked caller can pin with its id.
pub const MAX_ID_BYTES: usize = 256;

/// A validated meeting id: 1 to [`MAX_ID_BYTES`] bytes of UTF-8.
///
/// Only [`Id::new`] builds one, so the engine never sees an invalid id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    /// Validates `id` at the edge, so the rest of the code can rely on it.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        match id.len() {
            0 => Err(IdError::Empty),
            len if len > MAX_ID_BYTES => Err(IdError::TooLong { len }),
            _ => Ok(Self(id)),
        }
    }

    /// Validates `id` and scopes it to `namespace`, so that callers in
    /// different namespaces never meet. Namespace names contain no `/`, so
    /// `namespace/id` is unambiguous.
    pub fn in_namespace(namespace: Option<&str>, id: String) -> Result<Self, IdError> {
        let id = Self::new(id)?;
        Ok(match namespace {
            None => id,
            Some(namespace) => Self(format!("{namespace}/{}", id.0)),
        })
    }

    /// The id as the caller sent it (prefixed by its namespace, if any).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// An id can be a secret pairing code, so `Debug` does not print it; log it
// deliberately with `as_str` at debug level instead.
impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({} bytes)", self.0.len())
    }
}

/// The first half of `bytes`' SHA-256: how ids and attempt keys, which can
/// be secrets, are named where they are stored.
#[cfg(feature = "server")]
pub(crate) fn half_sha256(bytes: &[u8]) -> [u8; 16] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bytes);
    let mut half = [0; 16];
    half.copy_from_slice(&digest[..16]);
    half
}

/// The longest attempt key accepted, in bytes: room for a UUID or a
/// 256-bit random value in any common spelling, and a bound on what a held
/// answer pins besides its payloads.
pub const MAX_ATTEMPT_KEY_BYTES: usize = 128;

/// A validated attempt key, scoped to its caller's namespace: what makes a
/// retry of one logical wait safe.
///
/// A client makes one at random for each wait and sends it on every try of
/// that wait. A try that finds the key still known gets the first try's
/// place back, or its answer ([`Attempts`](super::Attempts)). Keys are scoped like ids, so
/// that one tenant cannot read another's answer by guessing its key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AttemptKey(String);

impl AttemptKey {
    /// The key as Redis stores it: hashed (the first half of its SHA-256),
    /// since a key stands for a caller's answer.
    #[cfg(feature = "server")]
    pub(crate) fn hash(&self) -> [u8; 16] {
        half_sha256(self.0.as_bytes())
    }

    /// Validates `key` at the edge, and scopes it to `namespace`. An empty
    /// key (proto3's default, or no query parameter) is no key: `Ok(None)`.
    pub fn in_namespace(
        namespace: Option<&str>,
        key: &str,
    ) -> Result<Option<Self>, AttemptKeyError> {
        if key.is_empty() {
            return Ok(None);
        }
        if key.len() > MAX_ATTEMPT_KEY_BYTES {
            return Err(AttemptKeyError::TooLong { len: key.len() });
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AttemptKeyError::NotPrintable);
        }
        Ok(Some(Self(match namespace {
            None => key.to_owned(),
            Some(namespace) => format!("{namespace}/{key}"),
        })))
    }
}

// A key stands for a caller's answer: `Debug` does not print it.
impl fmt::Debug for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttemptKey({} bytes)", self.0.len())
    }
}

/// A keyed engine call's attempt: its key, how long its answer is kept,
/// and which try of the wait it runs for.
///
/// A cut try can reach the meeting place after its retry (its request was
/// still on its way, or its engine call on another replica's), and must
/// not take the wait back from it. So tries are ordered by [`TryOrder`],
/// not by when each gets there.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The wait's key.
    pub key: &'a AttemptKey,
    /// How long the answer is kept for a retry.
    pub grace: Duration,
    /// Which try this is.
    pub order: TryOrder,
    /// Set when the wait is withdrawn through this process. An engine whose
    /// place lives in this process ends the call on it, as it would at the
    /// deadline; one that replicas share ends it when the meeting place
    /// says so ([`Engine::withdraw`](super::Engine::withdraw)).
    pub withdrawing: &'a Withdrawing,
}

/// The signal that a keyed wait is being withdrawn (see [`Attempt`]): set
/// once, and never unset.
#[derive(Debug)]
pub struct Withdrawing(watch::Sender<bool>);

impl Default for Withdrawing {
    fn default() -> Self {
        Self(watch::Sender::new(false))
    }
}

impl Withdrawing {
    /// Asks the wait's engine call to end, unless it is decided first.
    pub fn request(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`Withdrawing::request`] was called.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once [`Withdrawing::request`] has been called.
    pub async fn requested(&self) {
        let mut requested = self.0.subscribe();
        // The sender lives in `self`: `wait_for` cannot fail here.
        let _ = requested.wait_for(|requested| *requested).await;
    }
}

/// What a withdrawal found ([`Engine::withdraw`](super::Engine::withdraw), [`Attempts::withdraw`](super::Attempts::withdraw)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    /// The wait's place was taken out before anything was decided: nobody
    /// is paired with it now.
    Withdrawn,
    /// Too late: the wait had met its partner or group, and they were told
    /// `OK`. What this caller was to be told.
    Met(Meeting),
    /// Too late, and nothing lost: the wait had timed out already.
    TimedOut,
    /// Nothing under this key was found waiting or decided (never seen, or
    /// forgotten after the grace). A try with the key that comes within the
    /// grace is refused all the same, so that one still on its way does not
    /// park after its caller gave up.
    Unknown,
}

impl Withdrawal {
    /// A wait's answer, as a withdrawal that came after it reads it.
    #[cfg(feature = "server")]
    pub(crate) fn after(answer: &Result<Meeting, super::PairError>) -> Self {
        use super::PairError;
        match answer {
            Ok(meeting) => Self::Met(meeting.clone()),
            Err(PairError::TimedOut) => Self::TimedOut,
            Err(PairError::Withdrawn) => Self::Withdrawn,
            Err(_) => Self::Unknown,
        }
    }
}

/// Where a try stands among the tries of its wait: by how many tries its
/// client says came before it, then by when it reached its replica (for
/// clients that do not count, and across replicas as good as their clocks).
/// A later try takes a wait over; an earlier one that comes late is told
/// [`PairError::Superseded`](super::PairError::Superseded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TryOrder {
    /// The client's count of the tries before this one.
    pub previous: u32,
    /// When the try reached this replica.
    pub tried: SystemTime,
}

impl TryOrder {
    /// A try that has just reached this replica, after `previous` others.
    pub fn now(previous: u32) -> Self {
        Self {
            previous,
            tried: SystemTime::now(),
        }
    }
}

/// Which side of a pair a caller took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Arrived first and waited for the second party.
    First,
    /// Arrived second and completed the pair.
    Second,
}

/// What a caller brings to the meeting, for its partner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// The payload, delivered exactly as sent.
    pub payload: Bytes,
    /// The caller's trace context, so that its partner's log can name its
    /// trace, and its partner's span link to its span.
    pub trace: Option<TraceContext>,
}

impl From<Bytes> for Offer {
    /// A payload without a trace id.
    fn from(payload: Bytes) -> Self {
        Self {
            payload,
            trace: None,
        }
    }
}

/// A keyed engine call's caller ([`Engine::gather_keyed`](super::Engine::gather_keyed)):
/// the id it meets under, how many make up its group, and what it brings.
#[derive(Debug, Clone)]
pub struct Joining {
    /// The meeting id.
    pub id: Id,
    /// How many callers make up its group.
    pub parties: Parties,
    /// What it brings for the others.
    pub offer: Offer,
}

/// How many callers make up a group: 2 (a pair, `WaitForSecondParty`) or
/// more (`WaitForParties`). Only [`Parties::new`] builds one, so the engines
/// never see a group of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Parties(u32);

impl Parties {
    /// A pair: what `WaitForSecondParty` asks for.
    pub const TWO: Self = Self(2);

    /// Validates a caller's `parties` at the edge, against `--max-parties`.
    pub fn new(parties: u32, max: u32) -> Result<Self, PartiesError> {
        match parties {
            0 | 1 => Err(PartiesError::TooFew(parties)),
            n if n > max => Err(PartiesError::TooMany { asked: n, max }),
            n => Ok(Self(n)),
        }
    }

    /// The number of callers.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// What a caller learns when its group completes.
#[derive(Debug, Clone)]
pub struct Meeting {
    /// This caller's place in the group's arrival order, from 0. In a pair,
    /// 0 is the first party, which waited.
    pub position: usize,
    /// The offers, as the engine handed them over.
    offers: Offers,
    /// How long this caller waited for the group.
    pub waited: Duration,
    /// How an engine that replicas share handed it to a keyed call: a
    /// retry through another replica than its first try's takes the place
    /// back there, or is handed the answer kept there. For the metrics
    /// alone, so it is not part of what two meetings are compared on.
    #[cfg(feature = "server")]
    pub(crate) handed: Delivery,
}

/// What was decided, not how it was handed over.
impl PartialEq for Meeting {
    fn eq(&self, other: &Self) -> bool {
        (self.position, &self.offers, self.waited) == (other.position, &other.offers, other.waited)
    }
}

impl Eq for Meeting {}

/// The other members' offers. A pair hands over its partner's alone, so
/// that the most common group allocates nothing to deliver it; larger groups
/// share one list of everyone's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Offers {
    /// The partner's offer, in a pair.
    Peer(Offer),
    /// Every member's offer, this caller's own included, in arrival order.
    All(Arc<[Offer]>),
}

impl Meeting {
    /// The meeting of the caller at `position`, handed `offers`.
    pub(crate) fn new(position: usize, offers: Offers, waited: Duration) -> Self {
        Self {
            position,
            offers,
            waited,
            #[cfg(feature = "server")]
            handed: Delivery::Fresh,
        }
    }

    /// Which side of a pair this caller took: the first (position 0), which
    /// waited, or the one after it.
    pub fn role(&self) -> Role {
        match self.position {
            0 => Role::First,
            _ => Role::Second,
        }
    }

    /// How many callers the group had.
    pub fn parties(&self) -> usize {
        match &self.offers {
            Offers::Peer(_) => 2,
            Offers::All(all) => all.len(),
        }
    }

    /// The partner's offer, in a pair. In a larger group, that of the first
    /// other member: callers who want them all ask for [`Meeting::payloads`].
    pub fn peer(&self) -> &Offer {
        match &self.offers {
            Offers::Peer(peer) => peer,
            Offers::All(all) => &all[usize::from(self.position == 0)],
        }
    }

    /// Every other member's offer, in arrival order: the partner's alone in
    /// a pair.
    pub fn partners(&self) -> impl Iterator<Item = &Offer> {
        let (all, own): (&[Offer], _) = match &self.offers {
            Offers::Peer(peer) => (std::slice::from_ref(peer), None),
            Offers::All(all) => (all, Some(self.position)),
        };
        all.iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != own)
            .map(|(_, offer)| offer)
    }

    /// [`Meeting::peer`], taken out of the meeting rather than copied.
    pub fn into_peer(self) -> Offer {
        match self.offers {
            Offers::Peer(peer) => peer,
            Offers::All(all) => all[usize::from(self.position == 0)].clone(),
        }
    }

    /// Every member's payload in arrival order, this caller's own (`own`,
    /// which a pair does not hand back) at [`Meeting::position`].
    pub fn payloads(&self, own: &Bytes) -> Vec<Bytes> {
        match &self.offers {
            Offers::Peer(peer) => match self.position {
                0 => vec![own.clone(), peer.payload.clone()],
                _ => vec![peer.payload.clone(), own.clone()],
            },
            Offers::All(all) => all.iter().map(|offer| offer.payload.clone()).collect(),
        }
    }
}

/// How a keyed call got its answer, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The first call with its key, or a retry after the key was forgotten.
    Fresh,
    /// A retry that took over a wait still undecided, or decided while
    /// nobody was there to hear it.
    Reattached,
    /// A retry handed an answer that an earlier try was handed already.
    Redelivered,
}

impl Delivery {
    /// As the call's span records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Reattached => "reattached",
            Self::Redelivered => "redelivered",
        }
    }
}
