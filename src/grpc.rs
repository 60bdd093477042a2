//! The gRPC adapter: `rendezvous.v1.Sync` on top of [`Rendezvous`].
//!
//! Its two jobs are the caller's deadline and the mapping of [`CallError`] to
//! [`Status`]. The deadline is handled here rather than by tonic's timeout
//! layer because that layer answers `CANCELLED "Timeout expired"` (status 1)
//! when `grpc-timeout` fires; callers must see `DEADLINE_EXCEEDED` (status 4),
//! and the server, not the network, must decide the outcome.

use std::time::Duration;

use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    pairing::{LocalEngine, Meeting, PairError, Role},
    proto::{self, sync_server::SyncServer},
    service::{CallError, Protocol, Rendezvous},
};

/// Room left for encoding and sending a `DEADLINE_EXCEEDED` answer before the
/// caller's own deadline: a twentieth of its timeout, at most this much.
const MAX_DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// How much bigger than `--max-payload` a request message may be before tonic
/// refuses to decode it: room for the id (at most 256 bytes) and the framing.
pub const MESSAGE_OVERHEAD: usize = 1024;

/// The `rendezvous.v1.Sync` service, ready to add to a router.
pub fn server(service: Rendezvous<LocalEngine>) -> SyncServer<GrpcSync> {
    let limit = service.limits().max_payload + MESSAGE_OVERHEAD;
    SyncServer::new(GrpcSync(service)).max_decoding_message_size(limit)
}

/// The tonic implementation of `rendezvous.v1.Sync`.
#[derive(Debug, Clone)]
pub struct GrpcSync(Rendezvous<LocalEngine>);

#[tonic::async_trait]
impl proto::sync_server::Sync for GrpcSync {
    async fn wait_for_second_party(
        &self,
        request: Request<proto::WaitForSecondPartyRequest>,
    ) -> Result<Response<proto::WaitForSecondPartyResponse>, Status> {
        let wait = caller_wait(request.metadata())?;
        // Let the metadata go now: it would otherwise stay alive, per parked
        // caller, for the whole wait.
        let proto::WaitForSecondPartyRequest { id, payload } = request.into_inner();
        let meeting = self.0.call(Protocol::Grpc, id, payload, wait).await?;
        Ok(Response::new(meeting.into()))
    }
}

/// How long the caller can wait, from its `grpc-timeout` header, less the
/// margin the server needs to answer in time. `None` if it set no deadline.
fn caller_wait(metadata: &MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(header) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let timeout = header
        .to_str()
        .ok()
        .and_then(parse_grpc_timeout)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "grpc-timeout header {header:?} is malformed: expected 1 to 8 digits and a unit \
                 (H, M, S, m, u or n), as in \"500m\""
            ))
        })?;
    let margin = (timeout / 20).min(MAX_DEADLINE_MARGIN);
    Ok(Some(timeout - margin))
}

/// Parses a `grpc-timeout` value as the gRPC over HTTP/2 spec defines it:
/// at most eight ASCII digits followed by one unit letter.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl From<CallError> for Status {
    fn from(error: CallError) -> Self {
        let message = error.to_string();
        match error {
            CallError::InvalidId(_) | CallError::PayloadTooLarge { .. } => {
                Status::invalid_argument(message)
            }
            CallError::Pair(PairError::TimedOut { .. }) => Status::deadline_exceeded(message),
            CallError::Pair(PairError::ShuttingDown) => Status::unavailable(message),
        }
    }
}

impl From<Role> for proto::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::First => proto::Role::First,
            Role::Second => proto::Role::Second,
        }
    }
}

impl From<Meeting> for proto::WaitForSecondPartyResponse {
    fn from(meeting: Meeting) -> Self {
        Self {
            role: proto::Role::from(meeting.role).into(),
            waited: prost_types::Duration::try_from(meeting.waited).ok(),
            peer_payload: meeting.peer_payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_follows_the_spec() {
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            "",
            "m",
            "5",
            "123456789m",
            "5x",
            "-5m",
            "5 m",
            "5mm",
            "５m",
            "+5m",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_server_answers_before_the_callers_deadline() {
        let mut metadata = MetadataMap::new();
        assert_eq!(caller_wait(&metadata).unwrap(), None);
        metadata.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(
            caller_wait(&metadata).unwrap(),
            Some(Duration::from_millis(190))
        );
        metadata.insert("grpc-timeout", "10S".parse().unwrap());
        assert_eq!(
            caller_wait(&metadata).unwrap(),
            Some(Duration::from_millis(9950))
        );
        metadata.insert("grpc-timeout", "soon".parse().unwrap());
        let status = caller_wait(&metadata).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("grpc-timeout"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn errors_map_to_the_documented_codes() {
        use crate::pairing::IdError;
        let code = |e: CallError| Status::from(e).code();
        assert_eq!(code(IdError::Empty.into()), tonic::Code::InvalidArgument);
        assert_eq!(
            code(CallError::PayloadTooLarge { size: 2, limit: 1 }),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(
                PairError::TimedOut {
                    wait: Duration::ZERO
                }
                .into()
            ),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(
            code(PairError::ShuttingDown.into()),
            tonic::Code::Unavailable
        );
    }
}
