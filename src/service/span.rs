//! A call's exported span: one server span per call, named after its RPC
//! or route, the child of the caller's `traceparent`, linked to the spans
//! of the callers it met.
//!
//! Built only while traces are exported ([`crate::telemetry::exporting`]), and apart
//! from the call's log span: the log span keeps the fields people read in
//! logs, this one OpenTelemetry's semantic conventions for RPC and HTTP
//! server spans, and the attributes under `rendezvous.*`. Neither holds the
//! id, which can be a secret.

use opentelemetry::{
    Context, KeyValue,
    trace::{SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use tonic::Code;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    metrics::Protocol,
    pairing::{Delivery, Meeting},
    service::{CallError, CallRequest, Operation, Summary},
    telemetry::EXPORTED,
    trace::TraceContext,
};

/// One call's exported span, ended when dropped.
#[derive(Debug)]
pub(crate) struct CallSpan {
    span: tracing::Span,
    /// The span's own context, once started.
    own: Option<TraceContext>,
    protocol: Protocol,
    finished: bool,
}

impl CallSpan {
    /// Starts the span of `request`, as the child of the caller's
    /// `traceparent` if it sent one.
    pub(crate) fn start(request: &CallRequest) -> Self {
        let operation = request.operation;
        let name = match request.protocol {
            Protocol::Grpc => operation.grpc_name(),
            Protocol::Http => operation.http().name,
        };
        let span =
            tracing::info_span!(target: EXPORTED, "call", otel.name = name, otel.kind = "server");
        let attributes = match request.protocol {
            Protocol::Grpc => vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", Operation::GRPC_SERVICE),
                KeyValue::new("rpc.method", operation.grpc_method()),
            ],
            Protocol::Http => vec![
                KeyValue::new("http.request.method", operation.http().method),
                KeyValue::new("http.route", operation.http().route),
            ],
        };
        for KeyValue { key, value, .. } in attributes {
            span.set_attribute(key, value);
        }
        span.set_attribute("rendezvous.protocol", request.protocol.as_str());
        span.set_attribute("rendezvous.parties", i64::from(request.parties));
        if let Some(parent) = &request.trace {
            let parent = Context::new().with_remote_span_context(span_context(parent));
            // Fails only without the exporter's layer, which this span
            // would not be built without.
            let _ = span.set_parent(parent);
        }
        // Starts it: from here it has its own span id.
        let context = span.context();
        let own = context.span().span_context().clone();
        let own = TraceContext::new(
            own.trace_id().to_bytes(),
            own.span_id().to_bytes(),
            own.trace_flags().to_u8(),
        );
        Self {
            span,
            own,
            protocol: request.protocol,
            finished: false,
        }
    }

    /// The span's own trace context: what the call's partners link to, and
    /// what its log lines name, in place of its caller's.
    pub(crate) fn own(&self) -> Option<TraceContext> {
        self.own.clone()
    }

    /// Records how the call ended: its status code, outcome, time waited,
    /// its place and role, and a link to each partner's span.
    pub(crate) fn finish(
        mut self,
        result: &Result<Meeting, CallError>,
        summary: &Summary<'_>,
        delivery: Delivery,
    ) {
        self.finished = true;
        let span = &self.span;
        let (grpc, http) = match result {
            Ok(_) => (Code::Ok, http::StatusCode::OK),
            Err(error) => {
                let codes = error.codes();
                (codes.grpc, codes.http)
            }
        };
        match self.protocol {
            Protocol::Grpc => span.set_attribute("rpc.grpc.status_code", grpc as i64),
            Protocol::Http => {
                span.set_attribute("http.response.status_code", i64::from(http.as_u16()))
            }
        }
        // What the conventions count as a server's error: a caller's
        // mistakes (INVALID_ARGUMENT, 4xx) are not.
        let failed = match self.protocol {
            Protocol::Grpc => matches!(
                grpc,
                Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unavailable
                    | Code::DataLoss
            ),
            Protocol::Http => http.is_server_error(),
        };
        if let (true, Err(error)) = (failed, result) {
            span.set_status(Status::error(error.to_string()));
        }
        span.set_attribute("rendezvous.outcome", summary.outcome);
        span.set_attribute("rendezvous.waited", summary.waited.as_secs_f64());
        if delivery != Delivery::Fresh {
            span.set_attribute("rendezvous.attempt", delivery.as_str());
        }
        if let Some(role) = summary.role {
            span.set_attribute("rendezvous.role", role);
        }
        if let Some(meeting) = summary.meeting {
            span.set_attribute("rendezvous.position", meeting.position as i64);
            for partner in meeting.partners() {
                if let Some(trace) = &partner.trace {
                    span.add_link(span_context(trace));
                }
            }
        }
    }
}

/// A call whose caller went away before its answer ends its span too.
impl Drop for CallSpan {
    fn drop(&mut self) {
        if !self.finished {
            self.span.set_attribute("rendezvous.outcome", "cancelled");
        }
    }
}

fn span_context(trace: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(trace.trace_id()),
        SpanId::from_bytes(trace.span_id()),
        TraceFlags::new(trace.flags()),
        true,
        TraceState::default(),
    )
}
