//! A real server on 127.0.0.1:0 for each test, and real clients for it.

pub mod edges;
pub mod otlp;
pub mod redis;
pub mod topology;

use std::{future::Future, net::SocketAddr, process::Stdio, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rendezvous::client::{Client, ClientOptions};
use rendezvous::{
    Application, Config,
    pairing::{AnyEngine, Engine},
    proto::{WaitForSecondPartyRequest, WaitForSecondPartyResponse, sync_client::SyncClient},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
    task::JoinHandle,
};
use tonic::transport::Channel;

/// A running server and the handles a test needs to drive it.
pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub engine: Arc<AnyEngine>,
    /// What SIGHUP calls in the binary.
    pub reloader: rendezvous::Reloader,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), rendezvous::ServerError>>,
}

/// Settings for tests: ports picked by the OS, and a `--default-wait` (and
/// `--max-wait`) far longer than any test, so that no parked caller can time
/// out while a busy machine is slow to send its partner. A test that wants a timeout asks for one per
/// call (`grpc-timeout` from a client that does not enforce it, or `?wait=`),
/// or sets a short `max_wait` with nothing racing it.
pub fn test_config() -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        default_wait: Duration::from_secs(60),
        max_wait: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(test_config()).await
    }

    pub async fn with(config: Config) -> Self {
        let app = Application::build(config).await.expect("binds on port 0");
        let (stop, stopped) = oneshot::channel::<()>();
        let grpc_addr = app.grpc_addr();
        let http_addr = app.http_addr();
        let engine = app.engine();
        let reloader = app.reloader();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            grpc_addr,
            http_addr,
            engine,
            reloader,
            stop: Some(stop),
            task,
        }
    }

    pub async fn grpc(&self) -> SyncClient<Channel> {
        SyncClient::new(self.channel().await)
    }

    /// The crate's own client, as users' Rust code would connect.
    pub async fn client(&self) -> Client {
        let options = ClientOptions::new(&self.grpc_addr.to_string()).unwrap();
        Client::connect(&options)
            .await
            .expect("connects to the test server")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("connects to the test server")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    /// Begins shutdown, as a signal would in the binary.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// How many callers are parked in the server right now.
    pub fn waiting(&self) -> usize {
        self.engine.waiting()
    }

    /// Waits until the engine can reach its meeting place (at once for the
    /// local engine; a Redis engine once it has connected).
    pub async fn ready(&self) {
        let mut reachable = self.engine.reachable();
        within(reachable.wait_for(|up| *up)).await.unwrap();
    }

    /// Waits until exactly `n` callers are parked. The engine count is the
    /// signal; the short pause between looks is only the polling interval.
    pub async fn parked(&self, n: usize) {
        eventually(
            || self.engine.waiting() == n,
            &format!("{n} parked callers"),
        )
        .await;
    }
}

/// Polls `condition` until it holds; fails the test after 10 s.
pub async fn eventually(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the binary with `args` and `env`, which it must refuse to start
/// with (exit status 1, "cannot start"), and returns its log.
pub async fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = within(
        Command::new(env!("CARGO_BIN_EXE_rendezvous"))
            .args([
                "--grpc-addr=127.0.0.1:0",
                "--http-addr=127.0.0.1:0",
                "--log-format=json",
            ])
            .args(args)
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{args:?} {env:?}: {log}");
    assert!(log.contains("cannot start"), "{log}");
    log
}

/// Fails the test instead of hanging if `future` takes longer than 10 s.
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("finished within 10 s")
}

pub fn request(id: &str, payload: &'static [u8]) -> tonic::Request<WaitForSecondPartyRequest> {
    tonic::Request::new(WaitForSecondPartyRequest {
        id: id.into(),
        payload: Bytes::from_static(payload),
        ..Default::default()
    })
}

/// The crate's own client on a channel a test set up itself (with TLS, say).
pub fn client_on(channel: Channel) -> Client {
    Client::from_channel(channel, &ClientOptions::new("localhost:0").unwrap())
}

/// Pairs a caller on `first` with one on `second` under `id` (the first
/// parked before the second arrives), and checks that each is told its role
/// and the other's payload.
pub async fn assert_pair(server: &TestServer, first: Client, second: Client, id: &str) {
    use rendezvous::pairing::Role;
    let first_id = id.to_owned();
    let waiter = tokio::spawn(async move {
        first
            .wait(&first_id, Bytes::from_static(b"from first"), None)
            .await
    });
    server.parked(1).await;
    let answer = second
        .wait(id, Bytes::from_static(b"from second"), None)
        .await
        .unwrap();
    assert_eq!(
        (answer.role(), answer.peer().payload.clone()),
        (Role::Second, "from first".into())
    );
    let answer = within(waiter).await.unwrap().unwrap();
    assert_eq!(
        (answer.role(), answer.peer().payload.clone()),
        (Role::First, "from second".into())
    );
}

/// A gRPC call's head for a raw HTTP/2 client, to `addr`.
pub fn grpc_request_head(addr: SocketAddr) -> http::Request<()> {
    http::Request::post(format!(
        "http://{addr}/rendezvous.v1.Sync/WaitForSecondParty"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap()
}

/// `GET /healthz` on an open HTTP/2 connection to either of `server`'s
/// ports, answered over that connection: `200` from the HTTP port, and from
/// the gRPC port tonic's answer to a method it does not have (`grpc-status:
/// 12`).
pub async fn assert_h2_connection_serves(
    h2: h2::client::SendRequest<Bytes>,
    server: &TestServer,
    addr: SocketAddr,
    scheme: &str,
) {
    let mut h2 = h2.ready().await.unwrap();
    let probe = http::Request::get(format!("{scheme}://{addr}/healthz"))
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(probe, true).unwrap();
    let response = within(response).await.unwrap();
    if addr == server.http_addr {
        assert_eq!(response.status(), 200);
    } else {
        assert_eq!(response.headers()["grpc-status"], "12");
    }
}

/// gRPC health says `SERVING` for the whole server and for
/// `rendezvous.v1.Sync`, as a mesh's probes ask.
pub async fn assert_serving(channel: Channel) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(channel);
    for service in ["", "rendezvous.v1.Sync"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
}

/// One scrape, as Prometheus would read it.
pub async fn scrape(server: &TestServer) -> prometheus_parse::Scrape {
    scrape_url(&server.url("/metrics")).await
}

/// [`scrape`], of any server's `/metrics` (a process's, say).
pub async fn scrape_url(url: &str) -> prometheus_parse::Scrape {
    let response = http_client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = response.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` with these labels (0 if absent).
pub fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected {other:?}"),
        })
        .sum()
}

/// A throwaway CA, and certificates it signs. Nothing is committed.
pub struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pub pem: String,
}

pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        Leaf {
            cert: params.signed_by(&key, &issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }
}

pub fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// reqwest's `json()` needs a feature we do not otherwise use.
pub trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// What a raw gRPC call answered: the status from the headers or trailers.
#[derive(Debug)]
pub struct RawGrpcAnswer {
    pub grpc_status: String,
    pub grpc_message: String,
    pub message: Option<WaitForSecondPartyResponse>,
}

/// A bare HTTP/2 gRPC call with hand-set headers. Unlike a tonic client it
/// enforces no deadline of its own, so whatever it sees came from the server.
pub async fn raw_grpc_call(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    request: WaitForSecondPartyRequest,
) -> RawGrpcAnswer {
    raw_grpc_body(addr, headers, grpc_frame(0, &request)).await
}

/// A call that asks the server to give up after `timeout` (a `grpc-timeout`
/// value such as `"100m"`) and does not enforce it itself: the answer,
/// however late a busy machine makes it, is the server's own.
pub async fn raw_wait(addr: SocketAddr, id: &str, payload: &[u8], timeout: &str) -> RawGrpcAnswer {
    raw_grpc_call(
        addr,
        &[("grpc-timeout", timeout)],
        WaitForSecondPartyRequest {
            id: id.into(),
            payload: Bytes::copy_from_slice(payload),
            ..Default::default()
        },
    )
    .await
}

/// The server's timeout answer: `DEADLINE_EXCEEDED`, nobody came.
pub fn assert_timed_out(answer: &RawGrpcAnswer) {
    assert_eq!(answer.grpc_status, "4", "{answer:?}");
    assert!(
        answer
            .grpc_message
            .starts_with("nobody else arrived with this id within"),
        "{answer:?}"
    );
}

/// One length-prefixed gRPC message; `flag` 1 claims it is compressed.
pub fn grpc_frame(flag: u8, message: &WaitForSecondPartyRequest) -> Vec<u8> {
    let message = message.encode_to_vec();
    let mut frame = vec![flag];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// A bare HTTP/2 gRPC call with any body at all.
pub async fn raw_grpc_body(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    frame: Vec<u8>,
) -> RawGrpcAnswer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    let mut builder = http::Request::post(format!(
        "http://{addr}/rendezvous.v1.Sync/WaitForSecondParty"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = sender
        .send_request(builder.body(Full::new(Bytes::from(frame))).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    let find = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    RawGrpcAnswer {
        grpc_status: find("grpc-status"),
        grpc_message: percent_decode(&find("grpc-message")),
        message: (data.len() > 5).then(|| WaitForSecondPartyResponse::decode(&data[5..]).unwrap()),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The binary, started as users start it, with its addresses read from its
/// own startup log line.
pub struct Process {
    pub child: Child,
    /// The log, parsed, line by line. A task drains the pipe all the time:
    /// a server whose stderr fills up blocks on its next log line.
    events: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    /// Lines read before "listening" (which [`Process::next`] looks at
    /// first): the engine may log before the server does.
    early: std::collections::VecDeque<serde_json::Value>,
    pub grpc: String,
    pub http: String,
    /// The startup line, with every setting in force: the server's, and the
    /// engine's merged in (see [`settings`]).
    pub listening: serde_json::Value,
}

/// Collects the fields of the engine's startup line, if `event` is it: the
/// settings a server logs come in two lines, its own and its engine's.
pub fn settings(
    event: &serde_json::Value,
    engine: &mut serde_json::Map<String, serde_json::Value>,
) {
    if event["fields"]["message"] == "meeting through Redis" {
        for (name, value) in event["fields"].as_object().unwrap() {
            if name != "message" {
                engine.insert(name.clone(), value.clone());
            }
        }
    }
}

impl Process {
    /// Starts the binary on port 0 with `args`, and the defaults here for
    /// any flag `args` does not set.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// [`Process::start`], with more environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let defaults = [
            "--grpc-addr=127.0.0.1:0",
            "--http-addr=127.0.0.1:0",
            "--log-format=json",
            "--shutdown-grace=1s",
            "--default-wait=30s",
            "--max-wait=30s",
        ];
        let unset = defaults.into_iter().filter(|default| {
            let flag = default.split('=').next().unwrap();
            !args.iter().any(|arg| arg.split('=').next() == Some(flag))
        });
        let mut child = Command::new(env!("CARGO_BIN_EXE_rendezvous"))
            .args(unset)
            .args(args)
            .env("RUST_LOG", "info,rendezvous::service=debug")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = sender.send(serde_json::from_str(&line).unwrap());
            }
        });
        let mut process = Self {
            child,
            events,
            early: std::collections::VecDeque::new(),
            grpc: String::new(),
            http: String::new(),
            listening: serde_json::Value::Null,
        };
        let listening = process.settings().await;
        let field = |name: &str| listening["fields"][name].as_str().unwrap().to_owned();
        (process.grpc, process.http) = (field("grpc"), field("http"));
        process.listening = listening;
        process
    }

    /// Waits until `/readyz` answers `status` (200: ready; 503: not).
    pub async fn until_ready(&self, status: u16) {
        let readyz = format!("http://{}/readyz", self.http);
        let http = http_client();
        for _ in 0..1000 {
            if let Ok(response) = http.get(&readyz).send().await
                && response.status() == status
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("/readyz never answered {status}");
    }

    /// Every log line the process has written so far and not yet read.
    pub fn drain_log(&mut self) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    /// Waits for the next log line with this message.
    /// The "listening" line, with the fields of the engine's own startup
    /// line ("meeting through Redis") merged in.
    async fn settings(&mut self) -> serde_json::Value {
        within(async {
            let mut engine = serde_json::Map::new();
            loop {
                let event = self.events.recv().await.expect("the server starts");
                settings(&event, &mut engine);
                self.early.push_back(event.clone());
                if event["fields"]["message"] == "listening" {
                    let mut event = event;
                    let fields = event["fields"].as_object_mut().unwrap();
                    fields.extend(engine);
                    return event;
                }
            }
        })
        .await
    }

    /// The next log line whose message is `message`, skipping others.
    pub async fn next(&mut self, message: &str) -> serde_json::Value {
        while let Some(event) = self.early.pop_front() {
            if event["fields"]["message"] == message {
                return event;
            }
        }
        within(async {
            loop {
                let event = self
                    .events
                    .recv()
                    .await
                    .expect("the server is still running");
                if event["fields"]["message"] == message {
                    return event;
                }
            }
        })
        .await
    }

    /// The crate's own client, connected to the process.
    pub async fn client(&self) -> Client {
        Client::connect(&ClientOptions::new(&self.grpc).unwrap())
            .await
            .expect("connects to the process")
    }

    /// A gRPC connection to the process.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Sends a signal by name, as `kill -s NAME` would.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// One HTTP/2 frame, as read off the wire by the tests' own proxies and raw
/// clients.
#[derive(Debug)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub const H2_HEADERS: u8 = 0x1;
pub const H2_RST_STREAM: u8 = 0x3;
pub const H2_SETTINGS: u8 = 0x4;
pub const H2_PING: u8 = 0x6;
pub const H2_GOAWAY: u8 = 0x7;
pub const H2_WINDOW_UPDATE: u8 = 0x8;
pub const H2_ACK: u8 = 0x1;
pub const H2_END_HEADERS: u8 = 0x4;

/// Reads one frame (RFC 9113, section 4.1); `None` at the end of the stream.
pub async fn read_h2_frame(reader: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<H2Frame> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload).await.ok()?;
    Some(H2Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Encodes one frame.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}
