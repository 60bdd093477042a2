//! Why an engine call did not pair, and why a value was refused at the
//! edge. The messages go to callers verbatim.

use super::{MAX_ATTEMPT_KEY_BYTES, MAX_ID_BYTES};

/// Why an id was refused. The messages go to callers verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The caller sent no id at all.
    #[error("id is empty: send the meeting id both parties agreed on")]
    Empty,
    /// The id is longer than [`MAX_ID_BYTES`].
    #[error("id is {len} bytes long; the limit is {MAX_ID_BYTES} bytes")]
    TooLong {
        /// The length the caller sent, in bytes.
        len: usize,
    },
}

/// Why an attempt key was refused. The messages go to callers verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptKeyError {
    /// A withdrawal sent none: a wait is withdrawn by its key.
    #[error(
        "attempt key is empty: a wait is withdrawn by the attempt key it was sent with, \
         so only a wait sent with one can be"
    )]
    Missing,
    /// The key is longer than [`MAX_ATTEMPT_KEY_BYTES`].
    #[error("attempt key is {len} bytes long; the limit is {MAX_ATTEMPT_KEY_BYTES} bytes")]
    TooLong {
        /// The length the caller sent, in bytes.
        len: usize,
    },
    /// The key holds a space, a control character or non-ASCII text.
    #[error(
        "attempt key may hold only visible ASCII characters (letters, digits, punctuation), \
         such as a UUID"
    )]
    NotPrintable,
}

/// What differs between a call and the first call that sent its attempt
/// key: one key stands for one wait, and a retry must ask for the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Another id.
    Id,
    /// Another group size (or the other method).
    Parties,
    /// Another payload.
    Payload,
}

impl Reuse {
    fn as_str(self) -> &'static str {
        match self {
            Self::Id => "another id",
            Self::Parties => "another group size",
            Self::Payload => "another payload",
        }
    }
}

/// Why a caller's `parties` was refused. The messages go to callers verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartiesError {
    /// Fewer than two: nobody to wait for.
    #[error("parties is {0}; a group needs at least 2 callers")]
    TooFew(u32),
    /// More than `--max-parties`.
    #[error("parties is {asked}; the limit is {max} (--max-parties)")]
    TooMany {
        /// What the caller asked for.
        asked: u32,
        /// The configured limit.
        max: u32,
    },
}

/// Why a caller did not pair. Every case leaves nothing behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// Nobody came with the same id before the deadline.
    #[error("nobody else arrived with this id before the deadline")]
    TimedOut,
    /// The engine was closed, by a server shutdown, before a partner came.
    #[error("the server is shutting down; retry against another instance")]
    ShuttingDown,
    /// The caller would have had to wait, and the engine already holds as
    /// many waiting callers as it may.
    #[error(
        "the server already has {capacity} callers waiting (--max-waiters); retry shortly, \
         or against another instance"
    )]
    Full {
        /// The cap on waiting callers.
        capacity: usize,
    },
    /// The shared store the replicas meet in cannot be reached, so this
    /// replica cannot tell whether a partner is waiting elsewhere. Never
    /// answered by pairing locally instead: two replicas doing that would
    /// pair one id twice.
    #[error("{0}; retry shortly")]
    Unavailable(String),
    /// A group of another size is forming under this id. The group is left
    /// as it was: callers meant for it are not turned away by a stray one.
    #[error(
        "a group of {forming} is forming under this id, and this call asks for {asked}; \
         every member must ask for the same number of parties (WaitForSecondParty asks for 2)"
    )]
    PartiesMismatch {
        /// The size of the group forming under the id.
        forming: u32,
        /// The size this caller asked for.
        asked: u32,
    },
    /// This caller's payload would take the group's over `--max-group-bytes`,
    /// and so the answer every member gets over what a client accepts.
    #[error(
        "the group forming under this id holds {held} bytes of payloads, and {payload} more \
         would take it over the limit of {limit} bytes (--max-group-bytes); send a smaller payload"
    )]
    GroupTooLarge {
        /// The payloads of the members already waiting, in bytes.
        held: usize,
        /// This caller's payload, in bytes.
        payload: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The call's attempt key was first sent with another id, group size or
    /// payload: a key stands for one wait, and its answer is that wait's.
    #[error(
        "this attempt key was first sent with {}; send the same request on every retry \
         of one wait, and a new key for each new wait",
        .0.as_str()
    )]
    AttemptReused(Reuse),
    /// A newer call with the same attempt key took this wait over: the
    /// answer goes to it.
    #[error("a newer call with the same attempt key took this wait over; its answer goes there")]
    Superseded,
    /// The wait was withdrawn ([`Engine::withdraw`](super::Engine::withdraw)): its caller gave up,
    /// and a try with its attempt key within the grace is refused.
    #[error("this wait was withdrawn with its attempt key; a new wait needs a new attempt key")]
    Withdrawn,
}
