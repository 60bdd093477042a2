//! The edges of what callers may send, for the generators and scenarios
//! that run against every engine: empty payloads, payloads of exactly
//! `--max-payload` bytes, ids of 1 and 256 bytes, and groups of
//! `--max-parties` members. Issue 21 was a bug that only an empty payload
//! found; the suites had only ever sent short, non-empty ones.

use proptest::prelude::*;
use rendezvous::{Config, pairing::MAX_ID_BYTES};

/// The byte that pads a payload to a size: 0xFF never occurs in UTF-8, so
/// the tag a test writes before it stays readable.
const PAD: u8 = 0xFF;

/// `--max-payload`'s default: the largest payload a caller can send.
pub fn max_payload() -> usize {
    Config::default().max_payload
}

/// `--max-parties`' default: the largest group a caller can ask for.
pub fn max_parties() -> u32 {
    Config::default().max_parties
}

/// `--max-group-bytes`' default.
pub fn max_group_bytes() -> usize {
    Config::default().max_group_bytes
}

/// An id of exactly [`MAX_ID_BYTES`] bytes made from `name`, mostly of
/// two-byte characters (so that bytes and characters differ). Names without
/// a `/` give distinct ids.
pub fn longest_id(name: &str) -> String {
    assert!(!name.contains('/') && name.len() < MAX_ID_BYTES - 1);
    let mut id = format!("{name}/");
    while id.len() + 'é'.len_utf8() <= MAX_ID_BYTES {
        id.push('é');
    }
    while id.len() < MAX_ID_BYTES {
        id.push('.');
    }
    id
}

/// `tag` padded to exactly `len` bytes; [`tag_of`] reads the tag back.
pub fn padded(tag: &[u8], len: usize) -> Vec<u8> {
    assert!(tag.len() <= len, "a tag of {} bytes in {len}", tag.len());
    let mut payload = tag.to_vec();
    payload.resize(len, PAD);
    payload
}

/// What [`padded`] padded, with the padding taken off.
pub fn tag_of(payload: &[u8]) -> &[u8] {
    let end = payload.iter().rposition(|&b| b != PAD).map_or(0, |i| i + 1);
    &payload[..end]
}

/// A payload as a failing test prints it: its tag, and its length when it
/// is padded, so that a 64 KiB payload reads as one line.
pub fn describe(payload: &[u8]) -> String {
    let tag = String::from_utf8_lossy(tag_of(payload));
    if tag.len() == payload.len() {
        tag.into_owned()
    } else {
        format!("{tag}+{} bytes", payload.len())
    }
}

/// What a caller sends: a payload that says who it is, none, or one of
/// exactly `--max-payload` bytes that starts by saying who it is.
#[derive(Debug, Clone, Copy)]
pub enum Sent {
    Tagged,
    Empty,
    Largest,
}

impl Sent {
    /// Caller `i`'s payload.
    pub fn payload(self, i: usize) -> Vec<u8> {
        match self {
            Self::Tagged => i.to_string().into_bytes(),
            Self::Empty => Vec::new(),
            Self::Largest => padded(i.to_string().as_bytes(), max_payload()),
        }
    }
}

/// How long an id of the schedule is: 1 byte, a few, or the most allowed.
#[derive(Debug, Clone, Copy)]
pub enum IdKind {
    Shortest,
    Short,
    Longest,
}

impl IdKind {
    /// The id in the schedule's slot `slot` (0 to 2): distinct per slot.
    pub fn id(self, slot: u8) -> String {
        match self {
            Self::Shortest => char::from(b'a' + slot).to_string(),
            Self::Short => format!("id-{slot}"),
            Self::Longest => longest_id(&format!("id-{slot}")),
        }
    }
}

pub fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![3 => Just(Sent::Tagged), 2 => Just(Sent::Empty), 1 => Just(Sent::Largest)]
}

pub fn id_kind() -> impl Strategy<Value = IdKind> {
    prop_oneof![
        Just(IdKind::Shortest),
        Just(IdKind::Short),
        Just(IdKind::Longest)
    ]
}

/// A group size: mostly 2 to 4, which complete within a schedule, and
/// sometimes `--max-parties`, which forms, loses members and closes.
pub fn size() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 2u32..5, 1 => Just(max_parties())]
}

#[test]
fn edges_are_what_they_say() {
    let id = longest_id("a");
    assert_eq!((id.len(), id.starts_with("a/é")), (MAX_ID_BYTES, true));
    assert_ne!(longest_id("a"), longest_id("ab"));
    let payload = padded(b"7", max_payload());
    assert_eq!(payload.len(), 64 * 1024);
    assert_eq!(tag_of(&payload), b"7");
    assert_eq!(tag_of(b""), b"");
    assert_eq!(describe(&payload), "7+65536 bytes");
    assert_eq!(describe(b"12"), "12");
}
