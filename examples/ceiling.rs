//! The ceilings `rendezvous-bench` compares against: the least work this stack
//! can do per call, with no pairing at all.
//!
//! - gRPC: a bare tonic `Server` for `rendezvous.v1.Sync/WaitForSecondParty`
//!   that answers OK at once.
//! - HTTP: a bare hyper HTTP/1.1 server that answers `200 Synced` at once.
//!
//! `cargo run --release --example ceiling -- 127.0.0.1:50061 127.0.0.1:3031`

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rendezvous::proto::{
    Role, WaitForPartiesRequest, WaitForPartiesResponse, WaitForSecondPartyRequest,
    WaitForSecondPartyResponse, WithdrawRequest, WithdrawResponse, Withdrawal,
    sync_server::{Sync, SyncServer},
};
use tonic::{Request, Status};

struct Immediate;

#[tonic::async_trait]
impl Sync for Immediate {
    async fn wait_for_second_party(
        &self,
        request: Request<WaitForSecondPartyRequest>,
    ) -> Result<tonic::Response<WaitForSecondPartyResponse>, Status> {
        Ok(tonic::Response::new(WaitForSecondPartyResponse {
            role: Role::Second.into(),
            waited: Some(prost_types::Duration::default()),
            peer_payload: request.into_inner().payload,
        }))
    }

    /// The same for a group: answered at once, with the caller's own payload.
    async fn wait_for_parties(
        &self,
        request: Request<WaitForPartiesRequest>,
    ) -> Result<tonic::Response<WaitForPartiesResponse>, Status> {
        Ok(tonic::Response::new(WaitForPartiesResponse {
            position: 0,
            waited: Some(prost_types::Duration::default()),
            payloads: vec![request.into_inner().payload],
        }))
    }

    /// Nothing ever waits here: there is never anything to withdraw.
    async fn withdraw(
        &self,
        _: Request<WithdrawRequest>,
    ) -> Result<tonic::Response<WithdrawResponse>, Status> {
        Ok(tonic::Response::new(WithdrawResponse {
            withdrawal: Withdrawal::Unknown.into(),
            ..WithdrawResponse::default()
        }))
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let grpc: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:50061")
        .parse()
        .unwrap();
    let http: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:3031")
        .parse()
        .unwrap();

    let http_listener = tokio::net::TcpListener::bind(http).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = http_listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"Synced")));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    eprintln!("ceiling: gRPC on {grpc}, HTTP on {http}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(SyncServer::new(Immediate))
        .serve(grpc)
        .await
        .unwrap();
}
