//! An OTLP/gRPC trace receiver in the test process, on 127.0.0.1:0: what a
//! collector would be told, span by span.

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value::Value},
    trace::v1::Span,
};
use tokio::sync::mpsc;

/// One span as received, with the `service.name` of the process it came
/// from.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    /// Every resource attribute, as `key=value`.
    pub resource: Vec<String>,
    pub span: Span,
}

impl Received {
    /// The attribute `key`, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        let found = self.span.attributes.iter().find(|kv| kv.key == key)?;
        found.value.as_ref()?.value.as_ref()
    }

    pub fn string(&self, key: &str) -> &str {
        match self.attribute(key) {
            Some(Value::StringValue(value)) => value,
            other => panic!("{key} is not a string but {other:?}: {:?}", self.span),
        }
    }

    pub fn int(&self, key: &str) -> i64 {
        match self.attribute(key) {
            Some(Value::IntValue(value)) => *value,
            other => panic!("{key} is not an integer but {other:?}: {:?}", self.span),
        }
    }

    pub fn double(&self, key: &str) -> f64 {
        match self.attribute(key) {
            Some(Value::DoubleValue(value)) => *value,
            other => panic!("{key} is not a double but {other:?}: {:?}", self.span),
        }
    }

    /// `(trace id, span id)` of each link, in hex.
    pub fn links(&self) -> Vec<(String, String)> {
        let mut links: Vec<_> = self
            .span
            .links
            .iter()
            .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
            .collect();
        links.sort();
        links
    }

    /// `(trace id, span id)` of the span itself, in hex.
    pub fn id(&self) -> (String, String) {
        (hex(&self.span.trace_id), hex(&self.span.span_id))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiver: spans arrive in [`Collector::received`] as they come.
pub struct Collector {
    pub endpoint: String,
    spans: mpsc::UnboundedReceiver<Received>,
}

struct Service(mpsc::UnboundedSender<Received>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let attributes = resource_spans
                .resource
                .map(|resource| resource.attributes)
                .unwrap_or_default();
            let text =
                |value: &Option<AnyValue>| match value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(text)) => text.clone(),
                    other => format!("{other:?}"),
                };
            let service = attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            let resource: Vec<String> = attributes
                .iter()
                .map(|kv| format!("{}={}", kv.key, text(&kv.value)))
                .collect();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send(Received {
                        service: service.clone(),
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (sender, spans) = mpsc::unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Service(sender)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Self { endpoint, spans }
    }

    /// Every span received so far.
    pub fn received(&mut self) -> Vec<Received> {
        std::iter::from_fn(|| self.spans.try_recv().ok()).collect()
    }
}
