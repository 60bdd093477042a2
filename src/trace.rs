//! Trace ids from W3C Trace Context (`traceparent`), so that both parties'
//! logs can be found from either side's trace.
//!
//! A caller that sends `traceparent` (as gRPC metadata or an HTTP header)
//! has its trace id on its call's span, and its partner's trace id is logged
//! when they pair. Nothing else of Trace Context is used: no span is
//! exported, and a malformed header is ignored, never an error, as the
//! specification asks.

use std::fmt;

use http::{HeaderMap, HeaderName};

use crate::hex::{Hex16, decode};

/// A trace id from a valid `traceparent`: 16 bytes, not all zero.
///
/// Boxed, so that `Option<TraceId>` is one pointer: every parked caller
/// carries one through several layers of futures, and most callers send
/// none, so 16 bytes inline would enlarge each of them for nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceId(Box<[u8; 16]>);

impl TraceId {
    /// The trace id of the one `traceparent` header in `headers`, if it is
    /// valid. Several `traceparent` headers are as good as none.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        // A `HeaderName`, not a `&str`, which would be checked and
        // lowercased again on every call.
        const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
        let mut values = headers.get_all(TRACEPARENT).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::from_traceparent(value.as_bytes())
    }

    /// Parses `version-traceid-parentid-flags`, as Trace Context Level 1
    /// reads it: lowercase hex only; version `ff`, an all-zero trace id or
    /// parent id, or anything after a version 00 header is invalid. Later
    /// versions may add fields after a `-`.
    pub fn from_traceparent(value: &[u8]) -> Option<Self> {
        const LEN: usize = 55;
        let head = value.get(..LEN)?;
        let version = decode::<1>(&head[0..2])?;
        let well_formed = match version[0] {
            0xff => false,
            0x00 => value.len() == LEN,
            _ => value.len() == LEN || value[LEN] == b'-',
        };
        if !well_formed || head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
            return None;
        }
        let trace = decode::<16>(&head[3..35])?;
        let parent = decode::<8>(&head[36..52])?;
        decode::<1>(&head[53..55])?;
        if trace == [0; 16] || parent == [0; 8] {
            return None;
        }
        Some(Self(Box::new(trace)))
    }

    /// The id as 16 bytes, for an engine to carry to the partner.
    pub fn to_bytes(&self) -> [u8; 16] {
        *self.0
    }

    /// The id an engine carried, or `None` for 16 zero bytes (never a valid
    /// id).
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then(|| Self(Box::new(bytes)))
    }
}

/// The 32 lowercase hex digits, as they appear in `traceparent` and in
/// tracing back ends.
impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Hex16::new(&self.0).as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(value: &str) -> Option<String> {
        TraceId::from_traceparent(value.as_bytes()).map(|id| id.to_string())
    }

    #[test]
    fn a_valid_traceparent_gives_its_trace_id() {
        assert_eq!(
            parse(VALID).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // Unsampled, and a later version with a field of its own.
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").is_some());
        assert_eq!(
            parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
    }

    #[test]
    fn anything_malformed_is_ignored() {
        for bad in [
            "",
            "garbage",
            &VALID[..54],
            // Version 00 has nothing after its flags.
            &format!("{VALID}-extra"),
            &format!("{VALID}0"),
            // A later version's extra fields start with '-'.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // Version ff is invalid; versions are hex.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Uppercase hex, or none at all.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Separators in the wrong places.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_header_counts_and_two_are_ignored() {
        let mut headers = HeaderMap::new();
        assert_eq!(TraceId::from_headers(&headers), None);
        headers.insert("traceparent", VALID.parse().unwrap());
        assert_eq!(
            TraceId::from_headers(&headers).map(|id| id.to_string()),
            parse(VALID)
        );
        headers.append("traceparent", VALID.parse().unwrap());
        assert_eq!(TraceId::from_headers(&headers), None);
    }

    #[test]
    fn bytes_round_trip_and_zero_is_none() {
        let id = TraceId::from_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(TraceId::from_bytes(id.to_bytes()), Some(id.clone()));
        assert_eq!(TraceId::from_bytes([0; 16]), None);
        assert_eq!(
            format!("{id:?}"),
            "TraceId(4bf92f3577b34da6a3ce929d0e0e4736)"
        );
    }
}
