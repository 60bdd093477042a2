//! The bodies of the fuzz targets, shared by cargo-fuzz (`fuzz/`) and by
//! `cargo test`, which replays the committed corpus (`fuzz/corpus/<target>/`)
//! through them in `tests/integration/fuzz_corpus.rs`. One body per target, so a case the
//! fuzzer found fails the same way in both.
//!
//! Each target takes arbitrary bytes and panics when a property the service
//! relies on does not hold: not just "does not crash", but "reads back what
//! a client sent" and "answers with a documented status". Not a stable API.

use std::{convert::Infallible, sync::Arc, time::Duration};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::{
    auth::{DEFAULT_NAMESPACE, Tokens},
    gateway::{self, Gateway},
    grpc::{self, MAX_DEADLINE_MARGIN},
    health::Health,
    pairing::{AnyEngine, Engine as _, Id, IdError, LocalEngine, MAX_ID_BYTES},
    service::{Limits, Operation, Rendezvous},
};

/// A target: it panics on an input that breaks one of its properties.
pub type FuzzTarget = fn(&[u8]);

/// Every target, by the name of its corpus directory and cargo-fuzz binary.
pub const TARGETS: &[(&str, FuzzTarget)] = &[
    ("id", id),
    ("grpc_timeout", grpc_timeout),
    ("http_target", http_target),
    ("gateway", gateway),
    ("auth", auth),
];

/// Id validation: the verdict depends on the length in bytes alone, a valid
/// id is kept as sent, a namespace changes nothing but the prefix, and
/// `Debug` never shows the id.
pub fn id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let id = Id::new(text);
    match text.len() {
        0 => assert_eq!(id, Err(IdError::Empty)),
        len if len > MAX_ID_BYTES => assert_eq!(id, Err(IdError::TooLong { len })),
        len => {
            let id = id.expect("an id of 1 to 256 bytes is valid");
            assert_eq!(id.as_str(), text);
            assert_eq!(format!("{id:?}"), format!("Id({len} bytes)"));
        }
    }
    let namespaced = Id::in_namespace(Some("tenant"), text.to_owned());
    match (&namespaced, Id::new(text)) {
        (Ok(namespaced), Ok(_)) => assert_eq!(namespaced.as_str(), format!("tenant/{text}")),
        (Err(a), Err(b)) => assert_eq!(*a, b),
        _ => panic!("a namespace changed the verdict on {text:?}"),
    }
}

/// `grpc-timeout`: accepted exactly when the gRPC spec allows the value
/// (1 to 8 ASCII digits and a unit), read to the nanosecond, and the wait
/// left after the server's margin is never longer than the caller's timeout.
pub fn grpc_timeout(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("grpc-timeout", value);
    let spec = spec_grpc_timeout_nanos(data);
    match grpc::caller_wait(&headers) {
        Ok(Some(wait)) => {
            let timeout =
                spec.unwrap_or_else(|| panic!("accepted {data:?}, which the spec refuses"));
            let wait = wait.as_nanos();
            assert!(
                wait <= timeout,
                "{data:?}: a wait of {wait}ns outlasts the timeout"
            );
            let margin = timeout - wait;
            assert!(margin <= MAX_DEADLINE_MARGIN.as_nanos() && margin <= timeout / 20 + 1);
        }
        Ok(None) => panic!("the header is there, but the deadline was ignored"),
        Err(_) => assert_eq!(spec, None, "refused {data:?}, which the spec allows"),
    }
}

/// The spec's grammar, read independently of `grpc.rs`:
/// `TimeoutValue = 1*8DIGIT`, `TimeoutUnit = "H" / "M" / "S" / "m" / "u" / "n"`.
fn spec_grpc_timeout_nanos(data: &[u8]) -> Option<u128> {
    let (&unit, digits) = data.split_last()?;
    if !(1..=8).contains(&digits.len()) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
    let nanos_per_unit: u128 = match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    Some(value * nanos_per_unit)
}

/// The legacy route's path and `?wait=`. Read as a request target, any bytes
/// are parsed without a panic, and an id is the percent-decoded segment.
/// Read as an id and a wait that a client encodes the usual way (percent
/// encoding, a humantime duration), the server reads back exactly those.
pub fn http_target(data: &[u8]) {
    if let Ok(uri) = Uri::try_from(data)
        && let Some(segment) = uri
            .path()
            .strip_prefix(Operation::WaitForSecondParty.http().prefix)
        && let Ok((id, _)) = gateway::call_target(segment, uri.query())
    {
        assert_eq!(
            Ok(id.as_str()),
            percent_decode_str(segment).decode_utf8().as_deref()
        );
    }

    let (wait, id) = data.split_at(data.len().min(8));
    let mut nanos = [0; 8];
    nanos[..wait.len()].copy_from_slice(wait);
    let wait = Duration::from_nanos(u64::from_le_bytes(nanos));
    let id = String::from_utf8_lossy(id);
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("wait", &humantime::format_duration(wait).to_string())
        .finish();
    let target = format!(
        "{}{}?{query}",
        Operation::WaitForSecondParty.http().prefix,
        utf8_percent_encode(&id, NON_ALPHANUMERIC)
    );
    let uri = Uri::try_from(&target).expect("a percent-encoded target is a valid URI");
    let segment = uri
        .path()
        .strip_prefix(Operation::WaitForSecondParty.http().prefix)
        .unwrap();
    let read = gateway::call_target(segment, uri.query())
        .unwrap_or_else(|e| panic!("{target} was refused: {e}"));
    assert_eq!(read, (id.into_owned(), Some(wait)), "{target}");
}

/// The whole HTTP gateway, from a request to its response, with a real
/// engine behind it on paused time.
///
/// The input is a request: a flags byte, a method byte, then the request
/// target, header lines (`name: value`) and, after an empty line, the body.
/// Flag bit 0 streams the body in small chunks instead of sending it whole
/// (with a length); bit 1 sends a twin request at the same time, with the
/// body reversed, so that a valid rendezvous pairs.
///
/// Properties: every answer has a documented status, a content type and a
/// body (JSON when asked for); twins get the same status; twins that pair
/// swap payloads and take opposite roles; and nothing is left parked.
pub fn gateway(data: &[u8]) {
    let Some(input) = GatewayInput::parse(data) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let engine = Arc::new(AnyEngine::from(LocalEngine::with_capacity(4)));
        let limits = Limits {
            default_wait: Duration::from_secs(10),
            max_wait: Duration::from_secs(10),
            max_payload: 64,
            max_parties: 64,
            attempt_grace: crate::Config::default().attempt_grace,
        };
        let (health, _) = Health::serving().await;
        let gateway = Gateway::new(Rendezvous::new(engine.clone(), limits), Arc::new(health));

        let reversed: Vec<u8> = input.body.iter().rev().copied().collect();
        let answer = |body: Vec<u8>| {
            let request = input.request(body);
            let response = gateway.handle(request);
            async move {
                let response = response.await.unwrap_or_else(|never| match never {});
                let (head, body) = response.into_parts();
                let body = body.collect().await.unwrap_or_else(|never| match never {});
                (head, body.to_bytes())
            }
        };
        let answers = match input.twin {
            false => vec![(answer(input.body.clone()).await, &input.body)],
            true => {
                let (a, b) = tokio::join!(answer(input.body.clone()), answer(reversed.clone()));
                vec![(a, &input.body), (b, &reversed)]
            }
        };

        for ((head, body), _) in &answers {
            assert!(
                [200, 400, 404, 405, 408, 413].contains(&head.status.as_u16()),
                "undocumented status {} for {input:?}: {body:?}",
                head.status
            );
            assert!(head.headers.contains_key(header::CONTENT_TYPE));
            assert!(!body.is_empty(), "an empty answer for {input:?}");
            if input.json {
                let _: serde_json::Value = serde_json::from_slice(body)
                    .unwrap_or_else(|e| panic!("not JSON ({e}) for {input:?}: {body:?}"));
            }
        }
        if let [((a, a_body), a_sent), ((b, b_body), b_sent)] = &answers[..] {
            assert_eq!(
                a.status, b.status,
                "twins were answered differently: {input:?}"
            );
            let route = input
                .uri
                .path()
                .starts_with(Operation::WaitForSecondParty.http().prefix);
            if a.status == StatusCode::OK && route && input.json {
                let (a, b) = (meeting(a_body), meeting(b_body));
                assert_eq!(&a.0, *b_sent, "{input:?}");
                assert_eq!(&b.0, *a_sent, "{input:?}");
                assert_ne!(a.1, b.1, "both twins took the same role");
            }
        }
        assert_eq!(engine.waiting(), 0, "a caller was left parked: {input:?}");
    });
}

/// The peer payload and the role in a JSON rendezvous answer.
fn meeting(body: &[u8]) -> (Vec<u8>, String) {
    let json: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(json["peerPayload"].as_str().expect("peerPayload"))
        .expect("base64");
    (payload, json["role"].as_str().expect("role").to_owned())
}

/// A request decoded from fuzz input.
#[derive(Debug)]
struct GatewayInput {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Vec<u8>,
    chunked: bool,
    twin: bool,
    json: bool,
}

impl GatewayInput {
    fn parse(data: &[u8]) -> Option<Self> {
        let [flags, method, rest @ ..] = data else {
            return None;
        };
        let method = match method % 8 {
            0..=2 => Method::POST,
            3 => Method::GET,
            4 => Method::HEAD,
            5 => Method::PUT,
            6 => Method::DELETE,
            _ => Method::from_bytes(b"BREW").ok()?,
        };
        let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
            Some(at) => (&rest[..at], &rest[at + 2..]),
            None => (rest, &[][..]),
        };
        let mut lines = head.split(|&b| b == b'\n');
        let uri = Uri::try_from(lines.next()?).ok()?;
        let mut headers = HeaderMap::new();
        for line in lines {
            let at = line.iter().position(|&b| b == b':')?;
            let name = HeaderName::from_bytes(&line[..at]).ok()?;
            let value = HeaderValue::from_bytes(line[at + 1..].trim_ascii()).ok()?;
            headers.append(name, value);
        }
        let json = gateway::wants_json(&headers);
        Some(Self {
            method,
            uri,
            headers,
            body: body.to_vec(),
            chunked: flags & 1 != 0,
            twin: flags & 2 != 0,
            json,
        })
    }

    fn request(&self, body: Vec<u8>) -> Request<BoxBody<Bytes, Infallible>> {
        let body = match self.chunked {
            false => Full::new(Bytes::from(body)).boxed(),
            true => {
                let chunks: Vec<Result<_, Infallible>> = body
                    .chunks(7)
                    .map(|chunk| Ok(http_body::Frame::data(Bytes::copy_from_slice(chunk))))
                    .collect();
                StreamBody::new(tokio_stream::iter(chunks)).boxed()
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Token files and `authorization` headers. The input is a token file, then
/// a NUL and a header value. Any header against any file is refused or let
/// in without a panic; a file that loads lets in every token it lists, under
/// the namespace it gives that token, whatever the case of `Bearer`.
pub fn auth(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (file, header) = text.split_once('\0').unwrap_or((&text, ""));
    let Ok(tokens) = Tokens::parse(file, std::path::Path::new("tokens")) else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(header) {
        let _ = tokens.namespace_of(Some(&value));
    }
    let listed = file
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    for line in listed {
        let mut words = line.split_whitespace();
        let token = words.next().unwrap();
        let namespace = words.next().unwrap_or(DEFAULT_NAMESPACE);
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let header = HeaderValue::from_str(&format!("{scheme} {token}"))
                .unwrap_or_else(|_| panic!("{token:?} loaded, but no header can carry it"));
            assert_eq!(
                tokens.namespace_of(Some(&header)).as_deref(),
                Ok(namespace),
                "{scheme} {token:?} from {file:?}"
            );
        }
    }
}
