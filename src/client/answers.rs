//! The server's answers, read back into the crate's own types, and checked
//! on the way: an answer that does not add up is an error, never misread.

use std::time::Duration;

use tonic::Status;

use crate::{
    pairing::{Meeting, Offer, Offers, Withdrawal},
    proto,
};

pub(super) fn meeting(response: proto::WaitForSecondPartyResponse) -> Result<Meeting, Status> {
    let position = match response.role() {
        proto::Role::First => 0,
        proto::Role::Second => 1,
        proto::Role::Unspecified => {
            return Err(Status::internal("the server's answer has no role"));
        }
    };
    let waited = response
        .waited
        .and_then(|waited| Duration::try_from(waited).ok())
        .unwrap_or_default();
    // The server does not tell a caller its partner's trace id.
    let peer = Offer::from(response.peer_payload);
    Ok(Meeting::new(position, Offers::Peer(peer), waited))
}

pub(super) fn group(response: proto::WaitForPartiesResponse) -> Result<Meeting, Status> {
    let position = response.position as usize;
    if position >= response.payloads.len() {
        return Err(Status::internal(format!(
            "the server's answer puts this caller at position {position} of a group of {}",
            response.payloads.len()
        )));
    }
    let waited = response
        .waited
        .and_then(|waited| Duration::try_from(waited).ok())
        .unwrap_or_default();
    let offers = response.payloads.into_iter().map(Offer::from).collect();
    Ok(Meeting::new(position, Offers::All(offers), waited))
}

pub(super) fn withdrawal(response: proto::WithdrawResponse) -> Result<Withdrawal, Status> {
    Ok(match response.withdrawal() {
        proto::Withdrawal::Withdrawn => Withdrawal::Withdrawn,
        proto::Withdrawal::TooLateTimedOut => Withdrawal::TimedOut,
        proto::Withdrawal::Unknown => Withdrawal::Unknown,
        proto::Withdrawal::Unspecified => {
            return Err(Status::internal(
                "the server's answer says nothing of the withdrawal",
            ));
        }
        proto::Withdrawal::TooLateMet => {
            let position = response.position as usize;
            let waited = response
                .waited
                .and_then(|waited| Duration::try_from(waited).ok())
                .unwrap_or_default();
            let mut peers = response.peer_payloads.into_iter().map(Offer::from);
            let offers = match (response.parties, peers.len()) {
                (2, 1) => Offers::Peer(peers.next().expect("one")),
                (parties, others)
                    if others + 1 == parties as usize && position < parties as usize =>
                {
                    let mut all: Vec<Offer> = peers.collect();
                    // Its own payload is the caller's to know.
                    all.insert(position, Offer::default());
                    Offers::All(all.into())
                }
                (parties, others) => {
                    return Err(Status::internal(format!(
                        "the server's answer puts this caller at position {position} of a \
                         group of {parties}, with {others} other payloads"
                    )));
                }
            };
            Withdrawal::Met(Meeting::new(position, offers, waited))
        }
    })
}
