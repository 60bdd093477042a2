//! The HTTP gateway: the legacy `POST /wait-for-second-party/{id}` endpoint
//! and `POST /wait-for-parties/{id}?parties=N` for groups, mapped onto the
//! same [`Rendezvous`] call as gRPC; `DELETE` on either, with
//! `?attempt_key=`, to withdraw a keyed wait; plus probes.
//!
//! Legacy callers must not notice the switch, so the default answers are the
//! old service's to the byte: `200 Synced` or `408 Timeout`, as
//! `text/plain; charset=utf-8`. `Accept: application/json` opts into a JSON
//! body with the response fields, in proto3's JSON mapping.

use std::{borrow::Cow, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tonic::Code;

use crate::{
    auth::AuthError,
    health::{Health, NotReady},
    json::{JsonError, JsonGroup, JsonMeeting, JsonWithdrawal, code_name},
    metrics::{Protocol, Rejection},
    pairing::{Meeting, PairError, Withdrawal},
    proto,
    service::{CallError, CallRequest, Codes, Deadline, Operation, Rendezvous, WithdrawRequest},
    trace,
};

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves every HTTP request on the HTTP port. Cheap to clone per connection.
#[derive(Debug, Clone)]
pub struct Gateway {
    service: Rendezvous,
    health: Arc<Health>,
}

/// What went wrong with an HTTP request, mapped to a response in one place
/// ([`HttpError::into_response`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(
        "?wait={0} is not a duration: {problem}; use a number and a unit, such as 250ms, 2s or 1m",
        problem = crate::config::duration_problem(.1)
    )]
    BadWait(String, humantime::DurationError),
    #[error("bad id: the path segment is not valid UTF-8 once percent-decoded")]
    IdNotUtf8,
    #[error("could not read the request body: {0}")]
    Body(String),
    #[error("request body is over the limit of {limit} bytes (--max-payload)")]
    BodyTooLarge { limit: usize },
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        method: Method,
        path: &'static str,
        allow: Cow<'static, str>,
    },
    #[error(
        "no such route; the rendezvous endpoints are {pair} and {group}?parties=N, and {} on \
         either with ?attempt_key=K",
        Operation::Withdraw.http().method,
        pair = Operation::WaitForSecondParty.http().name,
        group = Operation::WaitForParties.http().name,
    )]
    NotFound,
    #[error("?parties=N is required: how many callers make up the group, at least 2")]
    NoParties,
    #[error("?parties={0} is not a number of callers; use a whole number such as 3")]
    BadParties(String),
    #[error(
        "?previous_attempts={0} is not a count of tries; use a whole number: 0 on the first \
         try of a wait, 1 on its first retry"
    )]
    BadPreviousAttempts(String),
}

impl Gateway {
    /// A gateway onto `service`, whose probes report `health`.
    pub fn new(service: Rendezvous, health: Arc<Health>) -> Self {
        Self { service, health }
    }

    /// Answers one request. Never fails: every error becomes a response with
    /// a body that says what is wrong.
    ///
    /// Not an `async fn`: the request's head is read and dropped, and the
    /// route chosen, before the returned future exists, so that a parked
    /// caller's future is the call's alone (its id, wait and body), not the
    /// whole request, nor the route it was taken from beside the call.
    pub fn handle<B>(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + use<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let json = wants_json(request.headers());
        let service = self.service.clone();
        match self.route(request) {
            Ok(Route::Answered(response)) => Handling::Answered {
                response: Some(response),
            },
            // Boxed, as on the gRPC port: a member keeps its own payload for
            // its answer, and inline that would size every pair's.
            Ok(Route::Call { call, body }) if call.operation == Operation::WaitForParties => {
                Handling::Group {
                    call: Box::pin(wait::<GroupRoute, _>(service, call, body, json)),
                }
            }
            Ok(Route::Call { call, body }) => Handling::Pair {
                call: wait::<PairRoute, _>(service, call, body, json),
            },
            Ok(Route::Withdraw(request)) => Handling::Withdraw {
                call: Box::pin(withdraw(service, request, json)),
            },
            Err(error) => Handling::Answered {
                response: Some(error_response(&service, error, json)),
            },
        }
    }

    /// Everything that can be decided from the request's head.
    fn route<B>(&self, request: Request<B>) -> Result<Route<B>, HttpError> {
        let path = request.uri().path();
        if path == "/healthz" {
            return self.probe(request.method(), "/healthz", Ok(()));
        }
        if path == "/readyz" {
            return self.probe(request.method(), "/readyz", self.health.readiness());
        }
        if path == "/metrics" {
            only_get(request.method(), "/metrics")?;
            let metrics = self.service.metrics();
            metrics.set_ready(self.health.readiness().is_ok());
            let text = metrics.render();
            return Ok(Route::Answered(respond(
                StatusCode::OK,
                OPENMETRICS,
                Bytes::from(text),
            )));
        }
        let Some((operation, segment)) = route(request.method(), path)? else {
            return Err(HttpError::NotFound);
        };
        if segment.contains('/') {
            return Err(HttpError::NotFound);
        }
        let namespace = self
            .service
            .authenticate(Protocol::Http, request.headers())?;
        // A withdrawal names its wait by id and key alone, on either route.
        let group = operation == Operation::WaitForParties;
        let query = Query::parse(request.uri().query(), group)?;
        if operation == Operation::Withdraw {
            return Ok(Route::Withdraw(WithdrawRequest {
                protocol: Protocol::Http,
                namespace,
                deadline: Deadline::starting_now(query.wait),
                id: decode_id(segment)?,
                attempt_key: query.attempt_key,
            }));
        }
        let parties = match group {
            true => query.parties.ok_or(HttpError::NoParties)?,
            false => 2,
        };
        let call = CallRequest {
            protocol: Protocol::Http,
            operation,
            namespace,
            deadline: Deadline::starting_now(query.wait),
            trace: trace::if_wanted(request.headers()),
            id: decode_id(segment)?,
            parties,
            // Read from the body once the route is known.
            payload: Bytes::new(),
            attempt_key: query.attempt_key,
            previous_attempts: query.previous_attempts,
        };
        Ok(Route::Call {
            call,
            body: request.into_body(),
        })
    }

    fn probe<B>(
        &self,
        method: &Method,
        path: &'static str,
        up: Result<(), NotReady>,
    ) -> Result<Route<B>, HttpError> {
        only_get(method, path)?;
        Ok(Route::Answered(match up {
            Ok(()) => text(StatusCode::OK, "OK"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why.as_str()),
        }))
    }
}

/// Probes and metrics are read-only: GET and HEAD.
fn only_get(method: &Method, path: &'static str) -> Result<(), HttpError> {
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    Err(HttpError::MethodNotAllowed {
        method: method.clone(),
        path,
        allow: "GET, HEAD".into(),
    })
}

/// The operation that `method` on `path` asks for, with the id's segment:
/// `None` if `path` is on no route of the service's.
fn route<'p>(method: &Method, path: &'p str) -> Result<Option<(Operation, &'p str)>, HttpError> {
    let mut own = None;
    for (operation, route, segment) in Operation::http_routes(path) {
        if method == route.method {
            return Ok(Some((operation, segment)));
        }
        own.get_or_insert(route);
    }
    let Some(own) = own else {
        return Ok(None);
    };
    // Only for a 405: every method served on the path.
    let allow: Vec<_> = Operation::http_routes(path)
        .map(|(_, route, _)| route.method)
        .collect();
    Err(HttpError::MethodNotAllowed {
        method: method.clone(),
        path: own.route,
        allow: allow.join(", ").into(),
    })
}

/// What is left of a request once its head has been read.
enum Route<B> {
    /// A probe, answered from the head alone.
    Answered(Response<Full<Bytes>>),
    /// A rendezvous or group call: all of it but the payload, which is in
    /// the body.
    Call { call: CallRequest, body: B },
    /// A withdrawal, which needs nothing from the body.
    Withdraw(WithdrawRequest),
}

/// A route's answer: how it is made from the meeting. One handler serves
/// both routes through this.
trait Shape {
    /// What the answer needs besides the meeting: nothing for a pair, and so
    /// nothing kept while a pair waits.
    type Keep: Send;
    fn keep(payload: &Bytes) -> Self::Keep;
    fn json(meeting: &Meeting, keep: &Self::Keep) -> Response<Full<Bytes>>;
}

/// `POST /wait-for-second-party/{id}`.
struct PairRoute;

impl Shape for PairRoute {
    type Keep = ();

    fn keep(_: &Bytes) {}

    fn json(meeting: &Meeting, (): &()) -> Response<Full<Bytes>> {
        json_response(StatusCode::OK, &JsonMeeting::from(meeting))
    }
}

/// `POST /wait-for-parties/{id}?parties=N`.
struct GroupRoute;

impl Shape for GroupRoute {
    /// The caller's own payload, which a group of two does not hand back.
    type Keep = Bytes;

    fn keep(payload: &Bytes) -> Bytes {
        payload.clone()
    }

    fn json(meeting: &Meeting, own: &Bytes) -> Response<Full<Bytes>> {
        json_response(StatusCode::OK, &JsonGroup::new(meeting, own))
    }
}

/// Reads the payload and makes the call, answering as route `S` does.
///
/// An `async` block, not an `async fn`, which would keep the request a
/// second time (the crate doc's "What a parked caller costs").
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn wait<S: Shape, B>(
    service: Rendezvous,
    mut call: CallRequest,
    body: B,
    json: bool,
) -> impl Future<Output = Response<Full<Bytes>>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    async move {
        call.payload = match read_body(body, service.limits().max_payload).await {
            Ok(payload) => payload,
            Err(error) => return error_response(&service, error, json),
        };
        let keep = S::keep(&call.payload);
        match service.call(call).await {
            Ok(meeting) if json => S::json(&meeting, &keep),
            Ok(_) => text(StatusCode::OK, "Synced"),
            Err(error) => error_response(&service, error.into(), json),
        }
    }
}

/// Withdraws a keyed wait. The plain body is one word, as the legacy
/// answers are: `Withdrawn`, or, too late, the wait's own answer (`Synced`,
/// `Timeout`), or `Unknown`.
async fn withdraw(
    service: Rendezvous,
    request: WithdrawRequest,
    json: bool,
) -> Response<Full<Bytes>> {
    match service.withdraw(request).await {
        Ok(found) if json => json_response(
            StatusCode::OK,
            &JsonWithdrawal::from(&proto::WithdrawResponse::from(found)),
        ),
        Ok(found) => text(
            StatusCode::OK,
            match found {
                Withdrawal::Withdrawn => "Withdrawn",
                Withdrawal::Met(_) => "Synced",
                Withdrawal::TimedOut => "Timeout",
                Withdrawal::Unknown => "Unknown",
            },
        ),
        Err(error) => error_response(&service, error.into(), json),
    }
}

/// The response to a request that failed, counted if it was refused.
fn error_response(service: &Rendezvous, error: HttpError, json: bool) -> Response<Full<Bytes>> {
    if let Some(reason) = error.rejection() {
        service.rejected(Protocol::Http, reason, &error);
    }
    error.into_response(json)
}

pin_project_lite::pin_project! {
    /// What [`Gateway::handle`] returns: a response known from the head, or
    /// a call of either route's. An enum rather than an `async` block, which
    /// would keep the route beside the call it was taken from.
    #[project = Handled]
    enum Handling<P, G, W> {
        Answered { response: Option<Response<Full<Bytes>>> },
        Pair { #[pin] call: P },
        Group { call: std::pin::Pin<Box<G>> },
        Withdraw { call: std::pin::Pin<Box<W>> },
    }
}

impl<P, G, W> Future for Handling<P, G, W>
where
    P: Future<Output = Response<Full<Bytes>>>,
    G: Future<Output = Response<Full<Bytes>>>,
    W: Future<Output = Response<Full<Bytes>>>,
{
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            Handled::Answered { response } => {
                std::task::Poll::Ready(Ok(response.take().expect("polled after it was ready")))
            }
            Handled::Pair { call } => call.poll(cx).map(Ok),
            Handled::Group { call } => call.as_mut().poll(cx).map(Ok),
            Handled::Withdraw { call } => call.as_mut().poll(cx).map(Ok),
        }
    }
}

/// What a rendezvous request's query asks for. Other parameters are
/// ignored, as they always were.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Query {
    /// `?wait=<duration>`.
    pub(crate) wait: Option<Duration>,
    /// `?parties=N`, which a group call must send (and the pair route
    /// ignores, as it always did).
    pub(crate) parties: Option<u32>,
    /// `?attempt_key=K`: the same on every retry of one wait.
    pub(crate) attempt_key: String,
    /// `?previous_attempts=N`: how many tries of the wait came before.
    pub(crate) previous_attempts: u32,
}

impl Query {
    /// The query of a call on the group route (`group`) or the pair route.
    pub(crate) fn parse(query: Option<&str>, group: bool) -> Result<Self, HttpError> {
        let mut parsed = Self::default();
        // Most calls have no query: nothing to set up a parser for.
        let Some(query) = query else {
            return Ok(parsed);
        };
        let mut seen_previous = false;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "wait" if parsed.wait.is_none() => {
                    let wait = humantime::parse_duration(&value)
                        .map_err(|e| HttpError::BadWait(value.clone().into_owned(), e))?;
                    parsed.wait = Some(wait);
                }
                "parties" if group && parsed.parties.is_none() => {
                    let parties = value
                        .parse()
                        .map_err(|_| HttpError::BadParties(value.clone().into_owned()))?;
                    parsed.parties = Some(parties);
                }
                "attempt_key" if parsed.attempt_key.is_empty() => {
                    parsed.attempt_key = value.into_owned();
                }
                "previous_attempts" if !seen_previous => {
                    seen_previous = true;
                    parsed.previous_attempts = value
                        .parse()
                        .map_err(|_| HttpError::BadPreviousAttempts(value.clone().into_owned()))?;
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// The id and the wait a legacy rendezvous request asks for, from the path
/// segment after the route and the query: what the fuzz targets check.
#[cfg(feature = "fuzzing")]
pub(crate) fn call_target(
    segment: &str,
    query: Option<&str>,
) -> Result<(String, Option<Duration>), HttpError> {
    Ok((decode_id(segment)?, Query::parse(query, false)?.wait))
}

/// The id, percent-decoded but not yet validated, from the path segment
/// after the route.
pub(crate) fn decode_id(segment: &str) -> Result<String, HttpError> {
    Ok(percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| HttpError::IdNotUtf8)?
        .into_owned())
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes
/// rather than after buffering all of it.
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, HttpError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // A declared length over the limit is refused before reading a byte; an
    // empty body (the legacy callers' usual) needs no reading at all.
    match body.size_hint().exact() {
        Some(0) => return Ok(Bytes::new()),
        Some(size) => {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > limit {
                return Err(CallError::PayloadTooLarge { size, limit }.into());
            }
        }
        None => {}
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(HttpError::BodyTooLarge { limit }),
        Err(e) => Err(HttpError::Body(e.to_string())),
    }
}

pub(crate) fn wants_json(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let media = range.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case(JSON)
        })
}

impl HttpError {
    /// How the metrics count this refusal, if the service has not already:
    /// it counts its own. Wrong routes and methods, and clients that went
    /// away, are not refusals.
    fn rejection(&self) -> Option<Rejection> {
        match self {
            // The service refuses a payload it is handed; one the gateway
            // refuses from its content-length never reaches the service.
            Self::BadWait(..)
            | Self::IdNotUtf8
            | Self::NoParties
            | Self::BadParties(_)
            | Self::BadPreviousAttempts(_)
            | Self::BodyTooLarge { .. }
            | Self::Call(CallError::PayloadTooLarge { .. }) => Some(Rejection::InvalidArgument),
            Self::Call(_) | Self::Body(_) | Self::MethodNotAllowed { .. } | Self::NotFound => None,
        }
    }

    /// How this failure reads: the call's own failures as the service's one
    /// table says; the gateway's own ones, here. The gRPC code is for the
    /// JSON body, so that both protocols speak alike.
    fn codes(&self) -> Codes {
        let (grpc, http) = match self {
            Self::Call(error) => return error.codes(),
            Self::BadWait(..)
            | Self::IdNotUtf8
            | Self::NoParties
            | Self::BadParties(_)
            | Self::BadPreviousAttempts(_)
            | Self::Body(_) => (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            Self::BodyTooLarge { .. } => (Code::InvalidArgument, StatusCode::PAYLOAD_TOO_LARGE),
            Self::MethodNotAllowed { .. } => (Code::Unimplemented, StatusCode::METHOD_NOT_ALLOWED),
            Self::NotFound => (Code::NotFound, StatusCode::NOT_FOUND),
        };
        Codes { grpc, http }
    }

    fn into_response(self, json: bool) -> Response<Full<Bytes>> {
        let codes = self.codes();
        let status = codes.http;
        let mut response = match (json, &self) {
            (true, _) => json_response(
                status,
                &JsonError {
                    code: code_name(codes.grpc),
                    message: self.to_string(),
                },
            ),
            // The legacy body, byte for byte.
            (false, Self::Call(CallError::TimedOut { .. })) => text(status, "Timeout"),
            (false, _) => text(status, self.to_string()),
        };
        match self {
            // Method names: always a valid header value.
            Self::MethodNotAllowed { allow, .. } => {
                if let Ok(allow) = HeaderValue::try_from(allow.as_ref()) {
                    response.headers_mut().insert(header::ALLOW, allow);
                }
            }
            // RFC 6750: say which scheme, and whether the token was wrong.
            Self::Call(CallError::Unauthenticated(error)) => {
                let challenge = match error {
                    AuthError::Unknown => r#"Bearer realm="rendezvous", error="invalid_token""#,
                    AuthError::Missing | AuthError::Malformed => r#"Bearer realm="rendezvous""#,
                };
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            // Places free up as pairs complete, and a lost connection to
            // Redis is retried within a second: a second is plenty to wait.
            Self::Call(CallError::Refused(refusal))
                if matches!(
                    refusal.error(),
                    PairError::Full { .. } | PairError::Unavailable(_)
                ) =>
            {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

fn text(status: StatusCode, body: impl Into<Cow<'static, str>>) -> Response<Full<Bytes>> {
    let body = match body.into() {
        Cow::Borrowed(s) => Bytes::from_static(s.as_bytes()),
        Cow::Owned(s) => Bytes::from(s),
    };
    respond(status, TEXT, body)
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("plain structs always serialize");
    respond(status, JSON, body.into())
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    /// The most a pair's request future may take, with a `Full` body: a
    /// little above what it takes today (BENCHMARKS.md).
    const FUTURE_BYTES: usize = 1_000;

    use super::*;

    #[test]
    fn accept_parsing() {
        let accepts = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().unwrap());
            wants_json(&h)
        };
        assert!(accepts("application/json"));
        assert!(accepts("text/html, Application/JSON;q=0.9"));
        assert!(!accepts("text/plain"));
        assert!(!accepts("*/*"));
        assert!(!wants_json(&http::HeaderMap::new()));
    }

    /// What a parked HTTP caller costs is mostly its request's future (see
    /// `handle`): a pair's must not grow unnoticed. BENCHMARKS.md has the
    /// bytes per parked caller that this keeps.
    #[tokio::test]
    async fn a_pair_requests_future_stays_within_its_bytes() {
        let (health, _server) = Health::serving().await;
        let service = Rendezvous::new(
            Arc::new(crate::pairing::LocalEngine::new().into()),
            crate::service::Limits::of(&crate::Config::default()),
        );
        let gateway = Gateway::new(service, Arc::new(health));
        let request = Request::post("/wait-for-second-party/a")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let future = gateway.handle(request);
        let size = std::mem::size_of_val(&future);
        assert!(size <= FUTURE_BYTES, "{size} bytes");
    }

    #[tokio::test]
    async fn readyz_turns_503_when_draining_while_healthz_stays_200() {
        use std::time::Duration;

        use crate::{pairing::LocalEngine, service::Limits};
        let (health, _server) = Health::serving().await;
        let health = Arc::new(health);
        let limits = Limits {
            default_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(1),
            max_payload: 1,
            max_parties: 64,
            attempt_grace: crate::Config::default().attempt_grace,
        };
        let gateway = Gateway::new(
            Rendezvous::new(Arc::new(LocalEngine::new().into()), limits),
            health.clone(),
        );
        let get = |path: &'static str| {
            let gateway = gateway.clone();
            async move {
                let request = Request::get(path).body(Full::new(Bytes::new())).unwrap();
                let Ok(response) = gateway.handle(request).await;
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
            }
        };
        assert_eq!(get("/readyz").await, (200, "OK".into()));
        health.drain().await;
        assert_eq!(get("/readyz").await, (503, "shutting down".into()));
        assert_eq!(get("/healthz").await, (200, "OK".into()));
    }

    /// With the default settings, a legacy call (no `?wait=`) waits the old
    /// service's 10 s and is answered its `408 Timeout` byte for byte; a
    /// caller's own `?wait=` is honoured up to `--max-wait` (1 h), and one
    /// that `--max-wait` cut says so.
    #[tokio::test(start_paused = true)]
    async fn a_legacy_call_waits_10s_and_an_asked_wait_is_cut_at_max_wait() {
        use crate::{pairing::LocalEngine, service::Limits};
        let limits = Limits::of(&crate::Config::default());
        let (health, _server) = Health::serving().await;
        let gateway = Gateway::new(
            Rendezvous::new(Arc::new(LocalEngine::new().into()), limits),
            Arc::new(health),
        );
        let post = |uri: &'static str, json: bool| {
            let gateway = gateway.clone();
            async move {
                let mut request = Request::post(uri);
                if json {
                    request = request.header(header::ACCEPT, JSON);
                }
                let request = request.body(Full::new(Bytes::new())).unwrap();
                let start = tokio::time::Instant::now();
                let Ok(response) = gateway.handle(request).await;
                let waited = start.elapsed();
                let (status, kind) = (
                    response.status(),
                    response.headers()[header::CONTENT_TYPE].clone(),
                );
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (
                    status.as_u16(),
                    kind,
                    String::from_utf8(body.to_vec()).unwrap(),
                    waited,
                )
            }
        };
        let secs = Duration::from_secs;
        assert_eq!(
            post("/wait-for-second-party/legacy", false).await,
            (
                408,
                HeaderValue::from_static(TEXT),
                "Timeout".into(),
                secs(10)
            )
        );
        assert_eq!(
            post("/wait-for-second-party/ci?wait=30m", false).await,
            (
                408,
                HeaderValue::from_static(TEXT),
                "Timeout".into(),
                secs(30 * 60)
            )
        );
        let (status, kind, body, waited) = post("/wait-for-second-party/long?wait=2h", true).await;
        assert_eq!(
            (status, kind, waited),
            (408, HeaderValue::from_static(JSON), secs(3600))
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({
                "code": "DEADLINE_EXCEEDED",
                "message": "nobody else arrived with this id within 1h, the server's --max-wait, \
                            which cut the longer wait this call asked for",
            })
        );
    }

    /// Every error has its documented HTTP status, and in JSON the gRPC
    /// code name for the same failure.
    #[test]
    fn every_error_has_its_status_and_code() {
        use crate::{auth::AuthError, pairing::IdError};
        let cases: Vec<(HttpError, u16, &str)> = vec![
            (
                CallError::InvalidId(IdError::Empty).into(),
                400,
                "INVALID_ARGUMENT",
            ),
            (
                HttpError::BadWait("x".into(), humantime::parse_duration("x").unwrap_err()),
                400,
                "INVALID_ARGUMENT",
            ),
            (HttpError::IdNotUtf8, 400, "INVALID_ARGUMENT"),
            (HttpError::Body("reset".into()), 400, "INVALID_ARGUMENT"),
            (
                CallError::PayloadTooLarge { size: 2, limit: 1 }.into(),
                413,
                "INVALID_ARGUMENT",
            ),
            (
                HttpError::BodyTooLarge { limit: 1 },
                413,
                "INVALID_ARGUMENT",
            ),
            (
                CallError::TimedOut {
                    wait: Duration::from_secs(1),
                    capped: false,
                }
                .into(),
                408,
                "DEADLINE_EXCEEDED",
            ),
            (
                crate::service::refused(PairError::ShuttingDown).into(),
                503,
                "UNAVAILABLE",
            ),
            (
                crate::service::refused(PairError::Unavailable("cannot reach Redis".into())).into(),
                503,
                "UNAVAILABLE",
            ),
            (
                crate::service::refused(PairError::Full { capacity: 1 }).into(),
                503,
                "RESOURCE_EXHAUSTED",
            ),
            (
                CallError::Unauthenticated(AuthError::Missing).into(),
                401,
                "UNAUTHENTICATED",
            ),
            (
                HttpError::MethodNotAllowed {
                    method: Method::GET,
                    path: "/x",
                    allow: "POST".into(),
                },
                405,
                "UNIMPLEMENTED",
            ),
            (HttpError::NotFound, 404, "NOT_FOUND"),
        ];
        for (error, status, code) in cases {
            let message = error.to_string();
            let response = error.into_response(true);
            assert_eq!(response.status().as_u16(), status, "{message}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], JSON);
            let body = response.into_body();
            let body = futures_body(body);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["code"], code, "{message}");
            assert_eq!(json["message"], message);
        }
    }

    fn futures_body(body: Full<Bytes>) -> Bytes {
        use std::task::{Context, Poll, Waker};
        let mut body = std::pin::pin!(body);
        match http_body::Body::poll_frame(body.as_mut(), &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap(),
            other => panic!("a full body is ready at once: {other:?}"),
        }
    }

    #[test]
    fn query_parsing() {
        let wait = |query| Query::parse(query, false).map(|q| q.wait);
        assert_eq!(wait(None).unwrap(), None);
        assert_eq!(wait(Some("x=1")).unwrap(), None);
        assert_eq!(
            wait(Some("wait=250ms")).unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            wait(Some("a=b&wait=1m&wait=x")).unwrap(),
            Some(Duration::from_secs(60))
        );
        assert!(matches!(
            wait(Some("wait=soon")),
            Err(HttpError::BadWait(..))
        ));
        assert!(matches!(wait(Some("wait=")), Err(HttpError::BadWait(..))));
        // The pair route ignores ?parties, as it always did; the group
        // route reads it.
        assert_eq!(
            Query::parse(Some("parties=x"), false).unwrap(),
            Query::default()
        );
        assert!(matches!(
            Query::parse(Some("parties=x"), true),
            Err(HttpError::BadParties(p)) if p == "x"
        ));
        assert_eq!(
            Query::parse(
                Some("parties=3&attempt_key=k%201&attempt_key=2&previous_attempts=2&previous_attempts=x"),
                true
            )
            .unwrap(),
            Query {
                wait: None,
                parties: Some(3),
                attempt_key: "k 1".into(),
                previous_attempts: 2,
            }
        );
        for bad in ["x", "-1", "4294967296", ""] {
            assert!(matches!(
                Query::parse(Some(&format!("previous_attempts={bad}")), false),
                Err(HttpError::BadPreviousAttempts(p)) if p == bad
            ));
        }
    }
}
