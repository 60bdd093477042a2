//! The JSON shapes callers see outside gRPC: the HTTP gateway's
//! `Accept: application/json` answers and `rendezvous wait --json`. Both
//! follow proto3's JSON mapping, so that they read the same as grpcurl's
//! output for the same call.

use std::time::Duration;

use base64::Engine as _;

use crate::{pairing::Meeting, proto};

/// `WaitForSecondPartyResponse` in proto3's JSON mapping: enum names,
/// camelCase fields, a `Duration` as a string of seconds and bytes in base64.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsonMeeting {
    role: &'static str,
    waited: String,
    peer_payload: String,
}

impl From<&Meeting> for JsonMeeting {
    fn from(meeting: &Meeting) -> Self {
        Self {
            role: proto::Role::from(meeting.role()).as_str_name(),
            waited: proto3_duration(meeting.waited),
            peer_payload: base64::engine::general_purpose::STANDARD.encode(&meeting.peer().payload),
        }
    }
}

/// `WaitForPartiesResponse` in proto3's JSON mapping.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsonGroup {
    position: u32,
    waited: String,
    payloads: Vec<String>,
}

impl JsonGroup {
    /// The answer of a member whose own payload was `own`.
    pub(crate) fn new(meeting: &Meeting, own: &bytes::Bytes) -> Self {
        let base64 = base64::engine::general_purpose::STANDARD;
        Self {
            position: meeting.position as u32,
            waited: proto3_duration(meeting.waited),
            payloads: meeting
                .payloads(own)
                .iter()
                .map(|payload| base64.encode(payload))
                .collect(),
        }
    }
}

/// `WithdrawResponse` in proto3's JSON mapping: the answer's fields only
/// when the withdrawal came too late for a wait that met its partners.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsonWithdrawal {
    withdrawal: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    met: Option<JsonMet>,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonMet {
    position: u32,
    parties: u32,
    waited: String,
    peer_payloads: Vec<String>,
}

impl From<&proto::WithdrawResponse> for JsonWithdrawal {
    fn from(response: &proto::WithdrawResponse) -> Self {
        let base64 = base64::engine::general_purpose::STANDARD;
        let met = (response.withdrawal() == proto::Withdrawal::TooLateMet).then(|| JsonMet {
            position: response.position,
            parties: response.parties,
            waited: proto3_duration(
                (response.waited)
                    .and_then(|waited| Duration::try_from(waited).ok())
                    .unwrap_or_default(),
            ),
            peer_payloads: (response.peer_payloads.iter())
                .map(|payload| base64.encode(payload))
                .collect(),
        });
        Self {
            withdrawal: response.withdrawal().as_str_name(),
            met,
        }
    }
}

/// An error in the same shape everywhere, with the gRPC code's name.
#[derive(Debug, serde::Serialize)]
pub(crate) struct JsonError {
    pub code: &'static str,
    pub message: String,
}

/// proto3 JSON for a Duration: seconds with 0, 3, 6 or 9 fractional digits.
fn proto3_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    match nanos {
        0 => format!("{secs}s"),
        n if n % 1_000_000 == 0 => format!("{secs}.{:03}s", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{secs}.{:06}s", n / 1_000),
        n => format!("{secs}.{n:09}s"),
    }
}

/// A status code as gRPC names it (`DEADLINE_EXCEEDED`), as grpcurl and
/// the HTTP gateway's JSON errors print it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_proto3_json_form() {
        assert_eq!(proto3_duration(Duration::ZERO), "0s");
        assert_eq!(proto3_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(proto3_duration(Duration::from_micros(2)), "0.000002s");
        assert_eq!(
            proto3_duration(Duration::from_nanos(1_000_000_007)),
            "1.000000007s"
        );
    }
}
