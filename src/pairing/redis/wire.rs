//! The wire format: what Redis keeps and sends for a caller (its sealed
//! offer), and how the script's replies read back into Rust values.

use std::time::Duration;

use bytes::Bytes;

use super::{PairError, Role, Verdict};
use crate::{pairing::Offer, trace::TraceContext};

/// A caller's offer as Redis keeps and sends it, one string: a first byte
/// of 1 and a trace context (trace id, span id, flags: 25 bytes), or a 0
/// and none; then the payload. The Lua script looks past the trace context
/// only to check that a retry with an attempt key sends its first try's
/// payload (each try may be part of its own trace).
pub(super) fn seal(offer: Offer) -> Bytes {
    let trace = offer.trace.as_ref().map(TraceContext::to_bytes);
    let mut sealed = Vec::with_capacity(1 + TraceContext::LEN + offer.payload.len());
    match trace {
        Some(trace) => {
            sealed.push(1);
            sealed.extend_from_slice(&trace);
        }
        None => sealed.push(0),
    }
    sealed.extend_from_slice(&offer.payload);
    sealed.into()
}

/// The payload and trace context of a sealed offer. Anything else (nothing
/// this version writes) is all payload.
pub(super) fn unseal(sealed: Bytes) -> Offer {
    const END: usize = 1 + TraceContext::LEN;
    match sealed.first() {
        Some(0) => Offer::from(sealed.slice(1..)),
        Some(1) if sealed.len() >= END => {
            let trace = sealed[1..END].try_into().expect("the length of a context");
            Offer {
                payload: sealed.slice(END..),
                trace: TraceContext::from_bytes(trace),
            }
        }
        _ => Offer::from(sealed),
    }
}

pub(super) fn verdict(reply: Vec<Vec<u8>>) -> Result<Verdict, PairError> {
    let role = match reply.first().map(Vec::as_slice) {
        Some(b"first") => Role::First,
        Some(b"second") => Role::Second,
        Some(b"group") => {
            let mut parts = reply.into_iter().skip(1);
            let position = parts
                .next()
                .and_then(|p| String::from_utf8(p).ok()?.parse().ok());
            let list = parts.next();
            return match (position, list) {
                (Some(position), Some(list)) => Ok(Verdict::Grouped {
                    position,
                    all: unpack(Bytes::from(list))?,
                    waited: waited(parts.next()),
                }),
                _ => Err(PairError::Unavailable(
                    "Redis answered a group without its payloads".into(),
                )),
            };
        }
        Some(b"none" | b"left" | b"gone") => return Ok(Verdict::Unpaired),
        _ => return Err(unexpected(&reply)),
    };
    let mut parts = reply.into_iter().skip(1);
    let payload = parts.next();
    let waited = waited(parts.next());
    match payload {
        Some(payload) => Ok(Verdict::Paired {
            role,
            peer: Bytes::from(payload),
            waited,
        }),
        None => Err(PairError::Unavailable(
            "Redis answered a pair without a payload".into(),
        )),
    }
}

/// How long Redis says the caller waited, in ms, where it keeps that (for
/// a caller with an attempt key; empty or absent for the others).
fn waited(ms: Option<Vec<u8>>) -> Option<Duration> {
    ms.and_then(|ms| String::from_utf8(ms).ok()?.parse().ok())
        .map(Duration::from_millis)
}

/// A group's sealed offers, from the list the script writes: each as its
/// length in decimal, a colon, and its bytes.
pub(super) fn unpack(mut list: Bytes) -> Result<Vec<Bytes>, PairError> {
    let mut offers = Vec::new();
    while !list.is_empty() {
        let colon = list.iter().position(|&b| b == b':');
        let len = colon.and_then(|colon| {
            std::str::from_utf8(&list[..colon])
                .ok()?
                .parse::<usize>()
                .ok()
        });
        let (Some(colon), Some(len)) = (colon, len) else {
            return Err(PairError::Unavailable(
                "Redis answered a malformed list of payloads".into(),
            ));
        };
        let end = colon + 1 + len;
        if end > list.len() {
            return Err(PairError::Unavailable(
                "Redis answered a list of payloads cut short".into(),
            ));
        }
        offers.push(list.slice(colon + 1..end));
        let _ = list.split_to(end);
    }
    Ok(offers)
}

pub(super) fn unexpected(reply: &[Vec<u8>]) -> PairError {
    let first = reply
        .first()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    PairError::Unavailable(format!("unexpected answer from Redis: {first:?}"))
}

/// A wait as the script takes it: whole milliseconds, at least 1, and at
/// most 2^50 (about 35,000 years), so that the script's sums of it and
/// Redis's clock stay integers a Lua number holds exactly.
pub(super) fn wait_ms(wait: Duration) -> u64 {
    wait.as_millis().clamp(1, 1 << 50) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group's list of sealed offers reads back as written, empty ones
    /// and ones holding the separator included; a list cut short or
    /// malformed is refused, never misread.
    #[test]
    fn group_lists_unpack_to_what_the_script_packs() {
        let list = Bytes::from_static(b"3:a:b0:5:12345");
        assert_eq!(
            unpack(list).unwrap(),
            [&b"a:b"[..], b"", b"12345"].map(Bytes::from_static)
        );
        assert_eq!(unpack(Bytes::new()).unwrap(), Vec::<Bytes>::new());
        for bad in [&b"4:abc"[..], b"x:abc", b"3abc", b":abc"] {
            assert!(
                unpack(Bytes::from_static(bad)).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Offers are sealed with their trace context and unsealed whole; a
    /// string this version would not write (too short for the context it claims,
    /// or unknown) is all payload, never a panic.
    #[test]
    fn offers_unseal_to_what_was_sealed() {
        let unsealed = |sealed: Bytes| {
            let offer = unseal(sealed);
            (offer.payload, offer.trace)
        };
        let trace = TraceContext::from_bytes([7; TraceContext::LEN]);
        assert!(trace.is_some());
        for offer in [
            Offer::from(Bytes::from_static(b"payload")),
            Offer {
                payload: Bytes::from_static(b"\x01\x02"),
                trace,
            },
            Offer::default(),
        ] {
            assert_eq!(unsealed(seal(offer.clone())), (offer.payload, offer.trace));
        }
        for foreign in [
            &b"\x01short"[..],
            &[1; TraceContext::LEN],
            b"\x02other",
            b"",
        ] {
            assert_eq!(
                unsealed(Bytes::from_static(foreign)),
                (Bytes::from_static(foreign), None)
            );
        }
    }

    /// The script adds a wait to Redis's clock in milliseconds: never 0
    /// (an entry must outlive its own arrival), and never so large that the
    /// sum stops being an integer in Lua.
    #[test]
    fn waits_reach_the_script_as_whole_milliseconds_in_range() {
        assert_eq!(wait_ms(Duration::ZERO), 1);
        assert_eq!(wait_ms(Duration::from_micros(1_500_900)), 1500);
        assert_eq!(wait_ms(Duration::MAX), 1 << 50);
    }
}
