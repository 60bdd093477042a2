//! W3C Trace Context (`traceparent`): which trace a call belongs to, so
//! that both parties' logs and spans can be found from either side's trace.
//!
//! A caller that sends `traceparent` (as gRPC metadata or an HTTP header)
//! has its trace id on its call's log span, and its exported span (with
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, see [`crate::telemetry`]) is that
//! header's child. Each call hands its partners a [`TraceContext`], so that
//! their logs name its trace and their spans link to its span. A malformed
//! header is ignored, never an error, as the specification asks; and
//! `tracestate` is not read: nothing here samples or routes by it.

use std::fmt;

use http::{HeaderMap, HeaderName};

use crate::hex::{Hex16, decode};

/// A span's place in a trace: its 16-byte trace id (never all zero), its
/// 8-byte span id (never all zero) and its flags (bit 0: sampled). From a
/// caller's valid `traceparent` it names the caller's span; handed to a
/// partner, the call's own exported span, if it has one.
///
/// Boxed, so that `Option<TraceContext>` is one pointer: every parked caller
/// carries one through several layers of futures, and most callers send
/// none, so 25 bytes inline would enlarge each of them for nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext(Box<[u8; TraceContext::LEN]>);

impl TraceContext {
    /// The length of [`TraceContext::to_bytes`].
    pub const LEN: usize = 25;

    /// The context of the one `traceparent` header in `headers`, if it is
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
        let flags = decode::<1>(&head[53..55])?;
        Self::new(trace, parent, flags[0])
    }

    /// A context from its parts; `None` if either id is all zero (never a
    /// valid id).
    pub fn new(trace: [u8; 16], span: [u8; 8], flags: u8) -> Option<Self> {
        if trace == [0; 16] || span == [0; 8] {
            return None;
        }
        let mut bytes = [0; Self::LEN];
        bytes[..16].copy_from_slice(&trace);
        bytes[16..24].copy_from_slice(&span);
        bytes[24] = flags;
        Some(Self(Box::new(bytes)))
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.0[..16].try_into().expect("16 bytes")
    }

    /// The span id.
    pub fn span_id(&self) -> [u8; 8] {
        self.0[16..24].try_into().expect("8 bytes")
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.0[24]
    }

    /// Trace id, span id and flags, for an engine to carry to the partner.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        *self.0
    }

    /// The context an engine carried, or `None` for bytes that are not one
    /// (an all-zero id).
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Option<Self> {
        let trace = bytes[..16].try_into().expect("16 bytes");
        let span = bytes[16..24].try_into().expect("8 bytes");
        Self::new(trace, span, bytes[24])
    }
}

/// The trace id's 32 lowercase hex digits, as they appear in `traceparent`
/// and in tracing back ends: what a log line needs to find the trace.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Hex16::new(&self.trace_id()).as_str())
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span: String = self.span_id().iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "TraceContext({self}-{span}-{:02x})", self.flags())
    }
}

/// The caller's trace context, from its `traceparent`, if anything would
/// use it: the exported span (its parent), or the per-call log span that
/// would show its trace id (`RUST_LOG=rendezvous=debug`). With both off,
/// the default, looking the header up would cost every call for nothing
/// (BENCHMARKS.md has the figure). So turn them on in every replica at
/// once: a replica with them off passes no trace on to its callers'
/// partners.
#[cfg(feature = "server")]
pub fn if_wanted(headers: &HeaderMap) -> Option<TraceContext> {
    // The same target and level as the call's log span in the service.
    use crate::telemetry::{CALLS, exporting};
    if !exporting() && !tracing::enabled!(target: CALLS, tracing::Level::DEBUG) {
        return None;
    }
    TraceContext::from_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(value: &str) -> Option<String> {
        TraceContext::from_traceparent(value.as_bytes()).map(|id| id.to_string())
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
        assert_eq!(TraceContext::from_headers(&headers), None);
        headers.insert("traceparent", VALID.parse().unwrap());
        assert_eq!(
            TraceContext::from_headers(&headers).map(|id| id.to_string()),
            parse(VALID)
        );
        headers.append("traceparent", VALID.parse().unwrap());
        assert_eq!(TraceContext::from_headers(&headers), None);
    }

    #[test]
    fn bytes_round_trip_and_zero_ids_are_none() {
        let context = TraceContext::from_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(
            TraceContext::from_bytes(context.to_bytes()),
            Some(context.clone())
        );
        assert_eq!(
            context.span_id(),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(context.flags(), 1);
        let mut zero_trace = context.to_bytes();
        zero_trace[..16].fill(0);
        assert_eq!(TraceContext::from_bytes(zero_trace), None);
        let mut zero_span = context.to_bytes();
        zero_span[16..24].fill(0);
        assert_eq!(TraceContext::from_bytes(zero_span), None);
        assert_eq!(
            format!("{context:?}"),
            "TraceContext(4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01)"
        );
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            TraceContext::from_traceparent(unsampled.as_bytes()).map(|c| c.flags()),
            Some(0)
        );
    }

    #[cfg(feature = "server")]
    #[test]
    fn traceparent_is_read_only_while_call_spans_are_on() {
        let mut headers = HeaderMap::new();
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        headers.insert("traceparent", traceparent.parse().unwrap());
        // Read only when the calls' own log lines are on: the filter users
        // set with RUST_LOG, by target.
        let at = |filter: &str| {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::sink)
                .finish();
            tracing::subscriber::with_default(subscriber, || if_wanted(&headers))
        };
        assert_eq!(at("info"), None);
        assert_eq!(at("rendezvous=info,rendezvous::trace=debug"), None);
        assert_eq!(
            at("rendezvous::service=debug")
                .map(|id| id.to_string())
                .as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
    }
}
