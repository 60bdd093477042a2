//! The gRPC port: `rendezvous.v1.Sync`'s `WaitForSecondParty`,
//! `WaitForParties` and `Withdraw` on top of [`Rendezvous`], and tonic's
//! health and reflection services beside them.
//!
//! The rendezvous methods are served by a lean handler of its own rather than
//! by tonic's generated server, for three reasons:
//! - a parked call must cost little memory, and tonic's unary path boxes a
//!   future of about 1.6 KiB (plus our own, plus axum's routing) per call,
//!   for as long as the call waits;
//! - tonic's timeout layer answers `CANCELLED "Timeout expired"` (status 1)
//!   when `grpc-timeout` fires; callers must see `DEADLINE_EXCEEDED`
//!   (status 4), decided by the server a little before their deadline;
//! - a payload over the limit must be `INVALID_ARGUMENT` whatever its size.
//!
//! A unary gRPC call is small enough to handle directly: one length-prefixed
//! protobuf message in, one out, and the status in the trailers. Everything
//! else on the port (health, reflection) goes to tonic unchanged.

use std::{convert::Infallible, pin::Pin, time::Duration};

use bytes::{BufMut, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited, StreamBody};
use hyper::body::Frame;
use prost::Message;
use tonic::{Status, codegen::Service, service::Routes};

use crate::{
    metrics::{Protocol, Rejection},
    pairing::{Meeting, Role, Withdrawal},
    proto,
    service::{
        CallError, CallRequest, Deadline, Namespace, Operation, Rendezvous, WithdrawRequest,
    },
    trace::{self, TraceContext},
};

/// Room left for encoding and sending a `DEADLINE_EXCEEDED` answer before the
/// caller's own deadline: a twentieth of its timeout, at most this much.
pub(crate) const MAX_DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// Serves every request on the gRPC port. Cheap to clone per connection.
#[derive(Clone)]
pub struct GrpcService {
    service: Rendezvous,
    /// Health, reflection, and an `UNIMPLEMENTED` answer for anything else.
    routes: Routes,
    /// gRPC-Web and CORS preflights: this same service behind tonic-web's
    /// translation and the CORS layer. `None` inside it.
    web: Option<WebService>,
}

/// The gRPC-Web stack, type-erased: built once, cloned per request.
type WebService = tower::util::BoxCloneSyncService<
    Request<tonic::body::Body>,
    Response<tonic::body::Body>,
    Infallible,
>;

impl std::fmt::Debug for GrpcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcService")
            .field("service", &self.service)
            .field("web", &self.web.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything that can go wrong with a call, mapped to a [`Status`] in one
/// place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GrpcError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(
        "grpc-timeout header {0:?} is malformed: expected 1 to 8 digits and a unit \
         (H, M, S, m, u or n), as in \"500m\""
    )]
    BadTimeout(HeaderValue),
    #[error(
        "compressed requests are not supported; send them uncompressed (grpc-encoding: identity)"
    )]
    Compressed,
    #[error(
        "request message is over {limit} bytes: the payload limit is {payload_limit} bytes (--max-payload)"
    )]
    TooLarge { limit: usize, payload_limit: usize },
    #[error("request is not one gRPC message: {0}")]
    Framing(&'static str),
    #[error("request is not a valid rendezvous.v1.{0}: {1}")]
    Decode(&'static str, prost::DecodeError),
    #[error("could not read the request: {0}")]
    Body(String),
}

impl GrpcError {
    /// How the metrics count this refusal, if the service has not already:
    /// it counts its own, and a client that went away was not refused.
    fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::Call(_) | Self::Body(_) => None,
            Self::BadTimeout(_)
            | Self::Compressed
            | Self::TooLarge { .. }
            | Self::Framing(_)
            | Self::Decode(..) => Some(Rejection::InvalidArgument),
        }
    }
}

impl From<GrpcError> for Status {
    fn from(error: GrpcError) -> Self {
        let code = match &error {
            GrpcError::Call(error) => error.codes().grpc,
            GrpcError::BadTimeout(_)
            | GrpcError::TooLarge { .. }
            | GrpcError::Framing(_)
            | GrpcError::Decode(..) => tonic::Code::InvalidArgument,
            GrpcError::Compressed => tonic::Code::Unimplemented,
            GrpcError::Body(_) => tonic::Code::Cancelled,
        };
        Status::new(code, error.to_string())
    }
}

impl GrpcService {
    /// The gRPC port's service: `service` for the rendezvous method, `routes`
    /// for the rest, and gRPC-Web for browsers, with CORS headers for the
    /// origins `cors` allows.
    pub fn new(service: Rendezvous, routes: Routes, cors: tower_http::cors::CorsLayer) -> Self {
        let plain = Self {
            service,
            routes,
            web: None,
        };
        let inner = plain.clone();
        let web = tower::ServiceBuilder::new()
            .layer(cors)
            .layer(tonic_web::GrpcWebLayer::new())
            .service(tower::service_fn(move |request| inner.handle(request)));
        Self {
            web: Some(WebService::new(web)),
            ..plain
        }
    }

    /// Answers one request. The rendezvous method is handled here; gRPC-Web
    /// goes through tonic-web's translation and back here; anything else
    /// goes to tonic.
    ///
    /// Not an `async fn`: the request is taken apart before the returned
    /// future exists, so that a parked call's future holds only its body's
    /// handle, not the whole request.
    pub fn handle<B>(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<tonic::body::Body>, Infallible>> + Send + use<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let call = self.accept(request);
        let service = self.service.clone();
        // Returned as is, not wrapped in another `async` block by the caller
        // (the crate doc's "What a parked caller costs"): wrapped, it
        // doubled what each parked call cost.
        async move {
            match call {
                Accepted::Rpc {
                    operation: Operation::WaitForSecondParty,
                    head,
                    body,
                } => {
                    let result = wait::<proto::WaitForSecondPartyRequest, _>(&service, head, body);
                    Ok(respond(&service, result.await))
                }
                // Boxed: a group member's future is larger (it keeps its own
                // payload for its answer), and inline it would size every
                // parked pair's.
                Accepted::Rpc {
                    operation: Operation::WaitForParties,
                    head,
                    body,
                } => {
                    let result = wait::<proto::WaitForPartiesRequest, _>(&service, head, body);
                    Ok(respond(&service, Box::pin(result).await))
                }
                // Boxed, for the same reason: it is not what most calls are.
                Accepted::Rpc {
                    operation: Operation::Withdraw,
                    head,
                    body,
                } => {
                    let result = withdraw(&service, head, body);
                    Ok(respond(&service, Box::pin(result).await))
                }
                Accepted::Other(future) => future.await,
                Accepted::Refused(response) => Ok(response),
            }
        }
    }

    /// Routes a request and checks its headers, keeping only what the call
    /// needs from here on.
    fn accept<B>(&self, request: Request<B>) -> Accepted<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(web) = &self.web
            && is_web(&request)
        {
            // Boxed, like tonic's routes: a browser's call pays for it, and
            // a plain gRPC call's future stays as small as it was.
            let request = request.map(tonic::body::Body::new);
            return Accepted::Other(Box::pin(tower::ServiceExt::oneshot(web.clone(), request)));
        }
        // (Inside the gRPC-Web stack, `web` is `None`: its requests keep
        // the browser's HTTP version.)
        if self.web.is_some() && request.version() != http::Version::HTTP_2 {
            return Accepted::Refused(http1_refused());
        }
        let path = request.uri().path();
        let Some(operation) = Operation::from_grpc_path(path) else {
            // Boxed: tonic's routing future is large, and inline it would
            // make every parked rendezvous call as large.
            // A clone of the URI shares its bytes: no copy per health check.
            let uri = request.uri().clone();
            let routed = self.routes.clone().call(request);
            return Accepted::Other(Box::pin(async move {
                routed
                    .await
                    .map(|response| name_unknown_method(response, uri.path()))
            }));
        };
        if !is_grpc(request.headers()) {
            let mut response = Response::new(tonic::body::Body::empty());
            *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return Accepted::Refused(response);
        }
        let deadline = match caller_wait(request.headers()) {
            Ok(wait) => Deadline::starting_now(wait),
            Err(error) => return Accepted::Refused(refusal(&self.service, error)),
        };
        let namespace = match self.service.authenticate(Protocol::Grpc, request.headers()) {
            Ok(namespace) => namespace,
            Err(error) => return Accepted::Refused(refusal(&self.service, error.into())),
        };
        if request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e != "identity")
        {
            return Accepted::Refused(refusal(&self.service, GrpcError::Compressed));
        }
        let head = Head {
            namespace,
            deadline,
            trace: trace::if_wanted(request.headers()),
        };
        Accepted::Rpc {
            operation,
            head,
            body: request.into_body(),
        }
    }
}

/// tonic answers a method it does not serve with a bare `UNIMPLEMENTED`;
/// this one says which method was asked for, and what is served.
fn name_unknown_method(
    response: Response<tonic::body::Body>,
    path: &str,
) -> Response<tonic::body::Body> {
    let unimplemented = response
        .headers()
        .get("grpc-status")
        .is_some_and(|status| status == "12");
    if !unimplemented || response.headers().contains_key("grpc-message") {
        return response;
    }
    Status::unimplemented(format!(
        "unknown method {path}: this server serves {}, grpc.health.v1.Health and server \
         reflection",
        Operation::grpc_paths()
    ))
    .into_http()
}

/// CORS for gRPC-Web: pages from `origins` (or anywhere, for `*`) may send
/// what gRPC-Web clients send and read the status they get back.
pub fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = match origins.iter().any(|origin| origin == "*") {
        true => AllowOrigin::any(),
        false => AllowOrigin::list(
            origins
                .iter()
                .map(|origin| HeaderValue::from_str(origin).expect("validated by the flag")),
        ),
    };
    let name = http::HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([http::Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            name("x-grpc-web"),
            name("x-user-agent"),
            name("grpc-timeout"),
        ])
        .expose_headers([
            name("grpc-status"),
            name("grpc-message"),
            name("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 60 * 60))
}

/// A gRPC-Web call, or a browser's CORS preflight before one.
fn is_web<B>(request: &Request<B>) -> bool {
    let web_content = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web"));
    // gRPC never sends OPTIONS: on this port it is a browser's preflight
    // (the CORS layer answers it, or passes on what is not one).
    let preflight = request.method() == http::Method::OPTIONS;
    web_content || preflight
}

/// The answer to a request over HTTP/1.1 on the gRPC port that is not
/// gRPC-Web: gRPC itself needs HTTP/2.
fn http1_refused() -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from_static(
            b"gRPC needs HTTP/2 (prior knowledge, or ALPN h2 over TLS); over HTTP/1.1 \
              this port speaks only gRPC-Web (content-type application/grpc-web)\n",
        ),
    )));
    *response.status_mut() = StatusCode::HTTP_VERSION_NOT_SUPPORTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What is left of a request once its headers have been read.
enum Accepted<B> {
    /// A method of `rendezvous.v1.Sync`: which, what its headers said, and
    /// the body to read.
    Rpc {
        operation: Operation,
        head: Head,
        body: B,
    },
    /// Health or reflection, already handed to tonic.
    Other(Pin<Box<dyn Future<Output = Result<Response<tonic::body::Body>, Infallible>> + Send>>),
    /// Answered without reading the body.
    Refused(Response<tonic::body::Body>),
}

/// What a rendezvous call's headers said.
struct Head {
    namespace: Namespace,
    deadline: Deadline,
    /// From the caller's `traceparent`, if it sent a valid one.
    trace: Option<TraceContext>,
}

/// The answer to a rendezvous call. Kept out of the `async` block that awaits
/// the call, so that building it adds nothing to the future a parked call
/// keeps alive.
fn respond(
    service: &Rendezvous,
    result: Result<impl Message, GrpcError>,
) -> Response<tonic::body::Body> {
    match result {
        Ok(message) => ok_response(&message),
        Err(error) => refusal(service, error),
    }
}

/// The answer to a call that failed.
fn refusal(service: &Rendezvous, error: GrpcError) -> Response<tonic::body::Body> {
    if let Some(reason) = error.rejection() {
        service.rejected(Protocol::Grpc, reason, &error);
    }
    Status::from(error).into_http()
}

/// A rendezvous method: its request, and how its answer is made from the
/// meeting. One handler serves both methods through this.
trait Method: Message + Default {
    /// The message's name, for errors.
    const NAME: &'static str;
    type Response: Message;
    /// What the answer needs besides the meeting: nothing for a pair, and
    /// so nothing kept while a pair waits.
    type Keep: Send;

    /// The call this request asks for, and what its answer will need.
    fn into_call(self, head: Head) -> (CallRequest, Self::Keep);

    fn answer(meeting: Meeting, keep: Self::Keep) -> Self::Response;
}

impl Head {
    /// `attempt`: the key and `previous_attempts` fields.
    fn call(
        self,
        operation: Operation,
        id: String,
        parties: u32,
        payload: Bytes,
        attempt: (String, u32),
    ) -> CallRequest {
        CallRequest {
            protocol: Protocol::Grpc,
            operation,
            namespace: self.namespace,
            deadline: self.deadline,
            trace: self.trace,
            id,
            parties,
            payload,
            attempt_key: attempt.0,
            previous_attempts: attempt.1,
        }
    }
}

impl Method for proto::WaitForSecondPartyRequest {
    const NAME: &'static str = "WaitForSecondPartyRequest";
    type Response = proto::WaitForSecondPartyResponse;
    type Keep = ();

    fn into_call(self, head: Head) -> (CallRequest, ()) {
        let attempt = (self.attempt_key, self.previous_attempts);
        let call = head.call(
            Operation::WaitForSecondParty,
            self.id,
            2,
            self.payload,
            attempt,
        );
        (call, ())
    }

    fn answer(meeting: Meeting, (): ()) -> Self::Response {
        meeting.into()
    }
}

impl Method for proto::WaitForPartiesRequest {
    const NAME: &'static str = "WaitForPartiesRequest";
    type Response = proto::WaitForPartiesResponse;
    /// The caller's own payload, which a group of two does not hand back.
    type Keep = Bytes;

    fn into_call(self, head: Head) -> (CallRequest, Bytes) {
        let own = self.payload.clone();
        let attempt = (self.attempt_key, self.previous_attempts);
        let call = head.call(
            Operation::WaitForParties,
            self.id,
            self.parties,
            self.payload,
            attempt,
        );
        (call, own)
    }

    fn answer(meeting: Meeting, own: Bytes) -> Self::Response {
        proto::WaitForPartiesResponse {
            position: meeting.position as u32,
            waited: prost_types::Duration::try_from(meeting.waited).ok(),
            payloads: meeting.payloads(&own),
        }
    }
}

/// Reads, decodes and makes one call of method `M`.
///
/// An `async` block, not an `async fn` (the crate doc's "What a parked
/// caller costs").
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn wait<'a, M: Method, B>(
    service: &'a Rendezvous,
    head: Head,
    body: B,
) -> impl Future<Output = Result<M::Response, GrpcError>> + 'a
where
    B: http_body::Body<Data = Bytes> + 'a,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async move {
        let message = read_message(body, service.limits().max_payload).await?;
        let request: M = M::decode(message).map_err(|e| GrpcError::Decode(M::NAME, e))?;
        let (call, keep) = request.into_call(head);
        let meeting = service.call(call).await?;
        Ok(M::answer(meeting, keep))
    }
}

/// Reads, decodes and makes one withdrawal.
async fn withdraw<B>(
    service: &Rendezvous,
    head: Head,
    body: B,
) -> Result<proto::WithdrawResponse, GrpcError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let message = read_message(body, service.limits().max_payload).await?;
    let request = proto::WithdrawRequest::decode(message)
        .map_err(|e| GrpcError::Decode("WithdrawRequest", e))?;
    let found = service
        .withdraw(WithdrawRequest {
            protocol: Protocol::Grpc,
            namespace: head.namespace,
            deadline: head.deadline,
            id: request.id,
            attempt_key: request.attempt_key,
        })
        .await?;
    Ok(found.into())
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Reads a unary request body: one uncompressed, length-prefixed message.
/// (Generic only so that tests can feed it bodies hyper would not.)
async fn read_message<B>(body: B, payload_limit: usize) -> Result<Bytes, GrpcError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = payload_limit + proto::MESSAGE_OVERHEAD + 5;
    let mut bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(GrpcError::TooLarge {
                limit: limit - 5,
                payload_limit,
            });
        }
        Err(e) => return Err(GrpcError::Body(e.to_string())),
    };
    if bytes.len() < 5 {
        return Err(GrpcError::Framing(
            "it is shorter than the 5-byte message prefix",
        ));
    }
    let prefix = bytes.split_to(5);
    if prefix[0] != 0 {
        return Err(GrpcError::Compressed);
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    match len.cmp(&bytes.len()) {
        std::cmp::Ordering::Equal => Ok(bytes),
        std::cmp::Ordering::Greater => Err(GrpcError::Framing("the message is cut short")),
        std::cmp::Ordering::Less => Err(GrpcError::Framing(
            "a unary call carries exactly one message",
        )),
    }
}

/// A successful answer: the message, then `grpc-status: 0` in the trailers.
fn ok_response(message: &impl Message) -> Response<tonic::body::Body> {
    let len = message.encoded_len();
    let mut data = Vec::with_capacity(5 + len);
    data.put_u8(0);
    data.put_u32(len as u32);
    message
        .encode(&mut data)
        .expect("a Vec with the exact capacity has room");
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: [Result<Frame<Bytes>, Infallible>; 2] =
        [Ok(Frame::data(data.into())), Ok(Frame::trailers(trailers))];
    let body = StreamBody::new(tokio_stream::iter(frames));
    let mut response = Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// How long the caller can wait, from its `grpc-timeout` header, less the
/// margin the server needs to answer in time. `None` if it set no deadline.
pub(crate) fn caller_wait(headers: &HeaderMap) -> Result<Option<Duration>, GrpcError> {
    let Some(header) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let timeout = header
        .to_str()
        .ok()
        .and_then(parse_grpc_timeout)
        .ok_or_else(|| GrpcError::BadTimeout(header.clone()))?;
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
            role: proto::Role::from(meeting.role()).into(),
            waited: prost_types::Duration::try_from(meeting.waited).ok(),
            peer_payload: meeting.into_peer().payload,
        }
    }
}

impl From<Withdrawal> for proto::WithdrawResponse {
    fn from(found: Withdrawal) -> Self {
        let withdrawal = match &found {
            Withdrawal::Withdrawn => proto::Withdrawal::Withdrawn,
            Withdrawal::Met(_) => proto::Withdrawal::TooLateMet,
            Withdrawal::TimedOut => proto::Withdrawal::TooLateTimedOut,
            Withdrawal::Unknown => proto::Withdrawal::Unknown,
        };
        let mut response = Self {
            withdrawal: withdrawal.into(),
            ..Self::default()
        };
        if let Withdrawal::Met(meeting) = found {
            response.position = meeting.position as u32;
            response.parties = meeting.parties() as u32;
            response.waited = prost_types::Duration::try_from(meeting.waited).ok();
            response.peer_payloads = meeting.partners().map(|o| o.payload.clone()).collect();
        }
        response
    }
}

#[cfg(test)]
mod tests {
    /// The most a pair's request future may take, with a `Full` body: a
    /// little above what it takes today (BENCHMARKS.md).
    const FUTURE_BYTES: usize = 1_000;

    use super::*;

    /// A request the transport refuses is counted as invalid; one the
    /// service refused was counted there, and a body that failed to arrive
    /// (the client went away) is no refusal at all.
    #[test]
    fn transport_refusals_are_counted_as_invalid_arguments() {
        let invalid = Some(Rejection::InvalidArgument);
        for error in [
            GrpcError::BadTimeout(HeaderValue::from_static("soon")),
            GrpcError::Compressed,
            GrpcError::TooLarge {
                limit: 10,
                payload_limit: 5,
            },
            GrpcError::Framing("two messages"),
            GrpcError::Decode(
                "WaitForSecondPartyRequest",
                proto::WaitForSecondPartyRequest::decode(&b"\xff"[..]).unwrap_err(),
            ),
        ] {
            assert_eq!(error.rejection(), invalid, "{error}");
        }
        let gone = GrpcError::Body("connection reset".into());
        assert_eq!(gone.rejection(), None);
        let counted = GrpcError::Call(CallError::InvalidId(crate::pairing::IdError::Empty));
        assert_eq!(counted.rejection(), None);
    }

    fn grpc_service() -> GrpcService {
        let service = Rendezvous::new(
            std::sync::Arc::new(crate::pairing::LocalEngine::new().into()),
            crate::service::Limits::of(&crate::Config::default()),
        );
        GrpcService::new(service, tonic::service::Routes::default(), cors(&[]))
    }

    #[test]
    fn debug_names_the_service_and_whether_grpc_web_is_on() {
        let grpc = grpc_service();
        let debug = format!("{grpc:?}");
        assert!(debug.starts_with("GrpcService { service: "), "{debug}");
        assert!(debug.contains("web: true"), "{debug}");
    }

    /// What a parked gRPC caller costs is mostly its request's future (see
    /// `handle`): a pair's must not grow unnoticed. BENCHMARKS.md has the
    /// bytes per parked caller that this keeps.
    #[test]
    fn a_pair_requests_future_stays_within_its_bytes() {
        let request = Request::post(Operation::WaitForSecondParty.grpc_path())
            .header("content-type", "application/grpc")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let future = grpc_service().handle(request);
        let size = std::mem::size_of_val(&future);
        assert!(size <= FUTURE_BYTES, "{size} bytes");
    }

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
        let mut metadata = HeaderMap::new();
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
        let status = Status::from(caller_wait(&metadata).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("grpc-timeout"),
            "{}",
            status.message()
        );
    }

    /// A body that fails part-way (the client reset its stream) is a read
    /// error, not a message over the limit: the service counts the latter
    /// as a refusal, and a client that went away was not refused.
    #[tokio::test]
    async fn a_body_that_fails_is_a_read_error() {
        let frames: [Result<Frame<Bytes>, std::io::Error>; 2] = [
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 9]))),
            Err(std::io::Error::other("stream reset")),
        ];
        let body = StreamBody::new(tokio_stream::iter(frames));
        let error = read_message(body, 1024).await.unwrap_err();
        assert!(
            matches!(&error, GrpcError::Body(message) if message == "stream reset"),
            "{error:?}"
        );
        assert_eq!(Status::from(error).code(), tonic::Code::Cancelled);
    }

    #[test]
    fn errors_map_to_the_documented_codes() {
        use crate::pairing::IdError;
        let code = |e: CallError| Status::from(GrpcError::from(e)).code();
        assert_eq!(code(IdError::Empty.into()), tonic::Code::InvalidArgument);
        assert_eq!(
            code(CallError::PayloadTooLarge { size: 2, limit: 1 }),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(CallError::TimedOut {
                wait: Duration::ZERO,
                capped: false,
            }),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(
            code(crate::service::refused(
                crate::pairing::PairError::ShuttingDown
            )),
            tonic::Code::Unavailable
        );
        assert_eq!(
            code(crate::service::refused(
                crate::pairing::PairError::Unavailable("Redis".into())
            )),
            tonic::Code::Unavailable
        );
        assert_eq!(
            code(crate::service::refused(crate::pairing::PairError::Full {
                capacity: 1
            })),
            tonic::Code::ResourceExhausted
        );
    }
}
