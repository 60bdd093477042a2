//! A real server on 127.0.0.1:0 for each test, and real clients for it.

pub mod edges;
pub mod otlp;
mod process;
mod raw;
pub mod redis;
mod tls;
pub mod topology;

pub use process::*;
pub use raw::*;
pub use tls::*;

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

    /// A wait with attempt key `key` (`parties` 2 asks
    /// `WaitForSecondParty`), cut once it is parked: its task aborted, so
    /// that its client resets the stream and the server holds its place for
    /// the grace, as for a broken connection.
    pub async fn cut_while_parked(
        &self,
        id: &'static str,
        parties: u32,
        payload: &'static str,
        key: &'static str,
    ) {
        let client = self.client().await;
        let wait = tokio::spawn(async move {
            match parties {
                2 => client.wait_with_key(id, payload.into(), None, key).await,
                n => {
                    client
                        .gather_with_key(id, n, payload.into(), None, key)
                        .await
                }
            }
        });
        self.parked(1).await;
        wait.abort();
        let _ = wait.await;
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

/// How long a test waits for what a server does at its own pace: far
/// longer than a passing test ever waits, so that a busy machine does not
/// fail one.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `condition` until it holds; fails the test after [`PATIENCE`].
pub async fn eventually(mut condition: impl FnMut() -> bool, what: &str) {
    until(what, || std::future::ready(condition().then_some(()))).await
}

/// [`eventually`], for a check that must await (a scrape, a Redis query,
/// a probe): polls `check` until it finds what it looks for, and returns
/// that; fails the test after [`PATIENCE`], naming `what`.
pub async fn until<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
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
