//! What probes and tools see: gRPC health, HTTP probes, and reflection (so
//! grpcurl works with no proto file at hand).

use crate::common;

use common::TestServer;
use prost::Message;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::{v1, v1alpha};

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_service() {
    let server = TestServer::start().await;
    common::assert_serving(server.channel().await).await;
    let mut health = HealthClient::new(server.channel().await);
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_v1_lists_the_services() {
    let server = TestServer::start().await;
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("not a list: {response:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert!(
        names.contains(&"rendezvous.v1.Sync".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

/// `grpcurl describe` shows the proto comments, which are the API docs: the
/// descriptor served must carry them, and its imports must resolve.
#[tokio::test]
async fn reflection_v1alpha_serves_the_proto_with_its_comments() {
    let server = TestServer::start().await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let ask = |request| v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    use v1alpha::server_reflection_request::MessageRequest;
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([
            ask(MessageRequest::FileContainingSymbol(
                "rendezvous.v1.Sync".into(),
            )),
            // What a client asks next, to resolve the import.
            ask(MessageRequest::FileByFilename(
                "google/protobuf/duration.proto".into(),
            )),
        ]))
        .await
        .unwrap()
        .into_inner();
    let mut files = Vec::new();
    for _ in 0..2 {
        let response = responses.message().await.unwrap().unwrap();
        let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            found,
        )) = response.message_response
        else {
            panic!("not a file descriptor: {response:?}");
        };
        files.extend(
            found
                .file_descriptor_proto
                .iter()
                .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap()),
        );
    }
    let sync = files
        .iter()
        .find(|f| f.name() == "rendezvous/v1/sync.proto")
        .expect("the rendezvous proto is served");
    assert_eq!(sync.dependency, ["google/protobuf/duration.proto"]);
    assert!(
        files
            .iter()
            .any(|f| f.name() == "google/protobuf/duration.proto"),
        "its import is served too, so clients can resolve it"
    );
    let comments: String = sync
        .source_code_info
        .as_ref()
        .expect("source info is kept")
        .location
        .iter()
        .filter_map(|l| l.leading_comments.as_deref())
        .collect();
    for documented in [
        "DEADLINE_EXCEEDED",
        "INVALID_ARGUMENT",
        "UNAVAILABLE",
        "peer_payload",
    ] {
        assert!(comments.contains(documented), "{documented} is documented");
    }
}
