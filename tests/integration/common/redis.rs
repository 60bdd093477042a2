//! A `redis-server` of the test's own, on a free port, that the test can
//! kill, pause and restart. Tests never touch a Redis they did not start.

use std::{
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use rendezvous::{
    metrics::Metrics,
    pairing::{Engine, EngineLimits, RedisConfig, RedisEngine},
};

/// A private Redis: nothing on disk, gone with the test.
pub struct RedisServer {
    port: u16,
    /// More flags for `redis-server`: a password, TLS.
    extra: Vec<String>,
    /// The password the test's own connections use.
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port, and returns once it answers.
    pub async fn start() -> Self {
        Self::start_with(&[], None).await
    }

    /// One started with `extra` flags, which answers the test's own
    /// connections with `password`.
    pub async fn start_with(extra: &[String], password: Option<&str>) -> Self {
        for _ in 0..10 {
            let mut server = Self {
                port: free_port(),
                extra: extra.to_vec(),
                password: password.map(str::to_owned),
                child: None,
            };
            if server.spawn().await {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed?)");
    }

    /// Starts the process on `self.port`: `false` if it did not come up (the
    /// port was taken in the meantime).
    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping().await {
                return true;
            }
            if let Some(child) = &mut self.child
                && child.try_wait().unwrap().is_some()
            {
                self.child = None;
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.admin_url()) else {
            return false;
        };
        let connection = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        )
        .await;
        let Ok(Ok(mut connection)) = connection else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .is_ok()
    }

    /// The URL replicas use: without the password, for tests to add it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The URL the test's own connections use.
    fn admin_url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => self.url(),
        }
    }

    /// A command on a connection of the test's own.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let client = redis::Client::open(self.admin_url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        command.query_async(&mut connection).await.unwrap()
    }

    /// Every key that starts with `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.query(redis::cmd("KEYS").arg(format!("{prefix}*")))
            .await
    }

    /// The keys under `prefix` but attempt keys' bindings to their ids
    /// (`...}attempt:HASH`, one per keyed wait, which outlive its answer):
    /// the places, results and kept answers of ids.
    pub async fn entries(&self, prefix: &str) -> Vec<String> {
        let mut keys = self.keys(prefix).await;
        keys.retain(|key| !is_binding(key));
        keys
    }

    /// How many attempt keys are bound to their ids under `prefix`.
    pub async fn bindings(&self, prefix: &str) -> usize {
        let keys = self.keys(prefix).await;
        keys.iter().filter(|key| is_binding(key)).count()
    }

    /// Waits until exactly `n` [`RedisServer::entries`] are under `prefix`;
    /// fails after [`PATIENCE`](super::PATIENCE).
    pub async fn until_entries(&self, prefix: &str, n: usize) {
        self.until_counted(prefix, n, |key| !is_binding(key)).await;
    }

    /// Waits until exactly `n` keys start with `prefix`; fails after
    /// [`PATIENCE`](super::PATIENCE).
    /// (A pair's result key goes a moment after both callers are told, and
    /// a dead replica's entries when their TTL runs out.)
    pub async fn until_keys(&self, prefix: &str, n: usize) {
        self.until_counted(prefix, n, |_| true).await;
    }

    /// Waits until exactly `n` of the keys under `prefix` are `counted`.
    async fn until_counted(&self, prefix: &str, n: usize, counted: impl Fn(&str) -> bool) {
        let what = format!("{n} keys under {prefix}");
        super::until(&what, || async {
            let mut keys = self.keys(prefix).await;
            keys.retain(|key| counted(key));
            (keys.len() == n).then_some(())
        })
        .await
    }

    /// Watches what clients send this Redis (`MONITOR`), leaving out what
    /// scripts run, until [`Monitored::stop`].
    pub async fn monitor(&self) -> Monitored {
        use tokio_stream::StreamExt as _;
        let marker = format!("monitor-stop-{}", std::process::id());
        let client = redis::Client::open(self.admin_url()).unwrap();
        let mut lines = client
            .get_async_monitor()
            .await
            .unwrap()
            .into_on_message::<String>();
        let until = marker.clone();
        let task = tokio::spawn(async move {
            let mut sent = Vec::new();
            while let Some(line) = lines.next().await {
                if line.contains(&until) {
                    return sent;
                }
                // `1700000000.000001 [0 127.0.0.1:5000] "EVALSHA" ...`, or
                // `[0 lua]` for a script's own command.
                let Some((from, command)) = line.split_once("] \"") else {
                    continue;
                };
                if !from.ends_with(" lua") {
                    let name = command.split('"').next().unwrap_or_default();
                    sent.push(name.to_ascii_lowercase());
                }
            }
            sent
        });
        Monitored { marker, task }
    }

    /// How many times Redis has run `command` since it started.
    pub async fn calls(&self, command: &str) -> u64 {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats")).await;
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Kills it (SIGKILL): connections drop, everything in it is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    /// SIGSTOP: connections stay open, and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server would not die of SIGTERM; SIGKILL always works.
            let _ = Command::new("kill")
                .args(["-KILL", &child.id().to_string()])
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `ACL SETUSER` that SECURITY.md documents, with `password`.
pub fn documented_acl(password: &str) -> redis::Cmd {
    let security =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SECURITY.md")).unwrap();
    let acl = security
        .lines()
        .find_map(|line| line.trim().strip_prefix("`ACL SETUSER ")?.split('`').next())
        .expect("SECURITY.md documents an ACL");
    let mut command = redis::cmd("ACL");
    command.arg("SETUSER");
    for word in acl.split_whitespace() {
        command.arg(word.replace("PASSWORD", password));
    }
    command
}

/// A key prefix no other test uses, so that tests can share nothing.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test-{test}-{}-{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The engine's settings for tests: a Redis timeout long enough that a busy
/// machine is not mistaken for a lost Redis.
pub fn engine_config(url: String, key_prefix: &str, capacity: usize) -> RedisConfig {
    RedisConfig {
        url,
        password: None,
        key_prefix: key_prefix.to_owned(),
        timeout: Duration::from_secs(2),
        sentinel_password: None,
        limits: EngineLimits {
            max_waiters: capacity,
            max_group_bytes: usize::MAX,
        },
    }
}

/// A Redis engine with `config`, once it is ready.
pub async fn start_engine(config: RedisConfig) -> RedisEngine {
    let engine = RedisEngine::start(config, Metrics::new().registry_mut()).unwrap();
    ready(&engine).await;
    engine
}

/// Waits until `engine` reaches Redis.
pub async fn ready(engine: &RedisEngine) {
    let mut reachable = engine.reachable();
    super::within(reachable.wait_for(|up| *up)).await.unwrap();
}

/// A server's settings as a replica on `server`'s Redis, under `key_prefix`.
pub fn replica_config(server: &RedisServer, key_prefix: &str) -> rendezvous::Config {
    let mut config = super::test_config();
    config.redis = rendezvous::config::RedisArgs {
        url: Some(server.url()),
        key_prefix: key_prefix.to_owned(),
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    config
}

/// `n` replicas on one Redis of their own, each ready.
pub struct Replicas {
    pub redis: RedisServer,
    pub prefix: String,
    pub servers: Vec<super::TestServer>,
}

impl Replicas {
    pub async fn start(n: usize) -> Self {
        let redis = RedisServer::start().await;
        let prefix = unique_prefix("replicas");
        let mut servers = Vec::new();
        for _ in 0..n {
            let server = super::TestServer::with(replica_config(&redis, &prefix)).await;
            server.ready().await;
            servers.push(server);
        }
        Self {
            redis,
            prefix,
            servers,
        }
    }

    /// Nothing of any caller is left in Redis.
    pub async fn assert_nothing_left(&self) {
        self.redis.until_keys(&self.prefix, 0).await;
    }
}

impl Replicas {
    /// The key of `id`'s meeting place, named as the engine names it (half of
    /// the id's SHA-256, in a hash tag), for tests that write it by hand.
    pub fn key_of(&self, id: &str) -> String {
        RedisEngine::key_of(&self.prefix, &rendezvous::pairing::Id::new(id).unwrap())
    }

    /// A stand-in waiter for `id`: an entry written by hand whose "replica"
    /// is a subscriber of the test's own, which sees offers and never
    /// accepts them. Its token is `ghost:1` and its payload `ghost` (sealed,
    /// as the engine stores offers: [`sealed`]).
    pub async fn stand_in(&self, id: &str) -> StandIn {
        let StandIn {
            key,
            connection,
            offers,
        } = self.listening_stand_in(id).await;
        let entry = ["w", "ghost:1", "wc", "stand-in"];
        let _: i64 = self
            .redis
            .query(
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(&entry[..])
                    .arg("wp")
                    .arg(sealed(b"ghost"))
                    .arg("we")
                    .arg("0"),
            )
            .await;
        let _: i64 = self
            .redis
            .query(redis::cmd("PEXPIRE").arg(&key).arg(60_000))
            .await;
        StandIn {
            key,
            connection,
            offers,
        }
    }

    /// A stand-in member of a group of `parties` under `id`, joined through
    /// the engine's own script as a replica would, with `payload` (sealed)
    /// and attempt key `attempt_key` (no namespace), as try 0: its
    /// "replica" is the test's subscriber, which sees offers (and a retry's
    /// takeover) and never confirms them. Its token is `ghost:1`.
    pub async fn stand_in_member(
        &self,
        id: &str,
        parties: u32,
        payload: &[u8],
        attempt_key: &str,
    ) -> StandIn {
        use sha2::Digest as _;
        let mut stand_in = self.listening_stand_in(id).await;
        let hash = sha2::Sha256::digest(attempt_key.as_bytes());
        let digest: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        let joined: Vec<String> = script()
            .key(&stand_in.key)
            .arg(&["join", "ghost:1", "stand-in"][..])
            .arg(sealed(payload))
            .arg(60_000)
            .arg("1")
            .arg(parties)
            .arg(payload.len())
            .arg(1 << 20)
            .arg(&[digest.as_str(), "5000", "0", "0"][..])
            .invoke_async(&mut stand_in.connection)
            .await
            .unwrap();
        assert_eq!(joined, ["parked"]);
        stand_in
    }

    /// A subscriber on channel `stand-in`, for a stand-in caller of `id`.
    async fn listening_stand_in(&self, id: &str) -> StandIn {
        let url = format!("{}?protocol=resp3", self.redis.url());
        let client = redis::Client::open(url).unwrap();
        let (pushes, offers) = tokio::sync::mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new().set_push_sender(pushes);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        connection.subscribe("stand-in").await.unwrap();
        StandIn {
            key: self.key_of(id),
            connection,
            offers,
        }
    }
}

/// See [`RedisServer::monitor`].
pub struct Monitored {
    marker: String,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Monitored {
    /// The name of every command clients sent `redis` since the monitor
    /// started, in order.
    pub async fn stop(self, redis: &RedisServer) -> Vec<String> {
        let _: String = redis.query(redis::cmd("ECHO").arg(&self.marker)).await;
        super::within(self.task).await.unwrap()
    }
}

/// Whether `key` is an attempt key's binding to its id.
fn is_binding(key: &str) -> bool {
    key.contains("}attempt:")
}

/// The engine's script, to run as a replica would.
pub fn script() -> redis::Script {
    redis::Script::new(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/pairing/redis.lua"
    )))
}

/// A payload as the Redis engine stores an offer without a trace id.
pub fn sealed(payload: &[u8]) -> Vec<u8> {
    [&[0][..], payload].concat()
}

/// See [`Replicas::stand_in`].
pub struct StandIn {
    /// The meeting place it waits in.
    pub key: String,
    /// Its own connection, to run the engine's script as a replica would.
    pub connection: redis::aio::MultiplexedConnection,
    offers: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
}

impl StandIn {
    /// The next message on its channel: an offer, from a second caller (or
    /// a group's last member), or a retry's takeover.
    pub async fn next_offer(&mut self) -> Vec<u8> {
        super::within(async {
            loop {
                let push = self.offers.recv().await.unwrap();
                if let (redis::PushKind::Message, Some(redis::Value::BulkString(message))) =
                    (&push.kind, push.data.get(1))
                {
                    return message.clone();
                }
            }
        })
        .await
    }
}
