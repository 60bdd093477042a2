//! A Sentinel set or a cluster of the test's own, started by
//! `scripts/redis-topology.sh` (the script the README shows users) on free
//! loopback ports. The script stops everything when its standard input
//! closes: when the topology is dropped, or when the test binary exits,
//! however it exits.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Duration,
};

/// Which topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A primary, its replica, and three Sentinels watching it as `main`.
    Sentinel,
    /// Three primaries, each with a replica.
    Cluster,
}

/// One running topology.
pub struct Topology {
    pub kind: Kind,
    /// The `--redis-url` that reaches it.
    pub url: String,
    /// Every process: its port and pid. Data nodes first; for Sentinel, the
    /// primary, the replica, then the Sentinels.
    pub nodes: Vec<(u16, u32)>,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Topology {
    /// Starts one, and returns once it is ready for clients (a cluster's
    /// nodes agree on its slots; the Sentinels know the replica and each
    /// other). Blocking: it takes a few seconds.
    pub fn start(kind: Kind) -> Self {
        let count = match kind {
            Kind::Sentinel => 5,
            Kind::Cluster => 6,
        };
        for _ in 0..5 {
            let ports = free_ports(count);
            if let Some(topology) = Self::try_start(kind, &ports) {
                return topology;
            }
        }
        panic!("could not start a Redis {kind:?} (is redis-server installed?)");
    }

    /// One per test binary, for the scenarios that do no harm to it: each
    /// uses a key prefix of its own.
    pub fn shared(kind: Kind) -> &'static Self {
        static SENTINEL: OnceLock<Topology> = OnceLock::new();
        static CLUSTER: OnceLock<Topology> = OnceLock::new();
        let cell = match kind {
            Kind::Sentinel => &SENTINEL,
            Kind::Cluster => &CLUSTER,
        };
        cell.get_or_init(|| Self::start(kind))
    }

    fn try_start(kind: Kind, ports: &[u16]) -> Option<Self> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-topology.sh");
        let mode = match kind {
            Kind::Sentinel => "sentinel",
            Kind::Cluster => "cluster",
        };
        let mut child = Command::new(script)
            .arg(mode)
            .args(ports.iter().map(u16::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("scripts/redis-topology.sh runs");
        let stdin = child.stdin.take();
        let mut nodes = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["node", port, pid] => nodes.push((port.parse().unwrap(), pid.parse().unwrap())),
                ["ready", url] => {
                    return Some(Self {
                        kind,
                        url: (*url).to_owned(),
                        nodes,
                        child,
                        stdin,
                    });
                }
                _ => {}
            }
        }
        // The script failed (a port taken in the meantime): it cleaned up.
        let _ = child.wait();
        None
    }

    /// The data nodes' ports (not the Sentinels').
    pub fn data_ports(&self) -> Vec<u16> {
        let data = match self.kind {
            Kind::Sentinel => 2,
            Kind::Cluster => 6,
        };
        self.nodes[..data].iter().map(|&(port, _)| port).collect()
    }

    /// The Sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        match self.kind {
            Kind::Sentinel => self.nodes[2..].iter().map(|&(port, _)| port).collect(),
            Kind::Cluster => Vec::new(),
        }
    }

    /// The data nodes that say they are primaries now.
    pub async fn primaries(&self) -> Vec<u16> {
        let mut primaries = Vec::new();
        for port in self.data_ports() {
            if let Ok(role) = try_query::<Vec<redis::Value>>(port, &redis::cmd("ROLE")).await
                && matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
            {
                primaries.push(port);
            }
        }
        primaries
    }

    /// `command` on the node at `port`, on a connection of the test's own.
    pub async fn query<T: redis::FromRedisValue>(&self, port: u16, command: &redis::Cmd) -> T {
        try_query(port, command).await.unwrap()
    }

    /// Every key under `prefix`, over every primary.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for port in self.primaries().await {
            let found: Vec<String> = self
                .query(port, redis::cmd("KEYS").arg(format!("{prefix}*")))
                .await;
            keys.extend(found);
        }
        keys.sort();
        keys
    }

    /// Waits until exactly `n` keys are under `prefix`: removals run in
    /// tasks of their own, after the callers are answered.
    pub async fn until_keys(&self, prefix: &str, n: usize) {
        let mut left = Vec::new();
        for _ in 0..500 {
            left = self.keys(prefix).await;
            if left.len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("expected {n} keys under {prefix}, found {left:?}");
    }

    /// The slot ranges the primary on `port` serves, as `CLUSTER NODES` says.
    pub async fn slots_of(&self, port: u16) -> Vec<std::ops::RangeInclusive<u32>> {
        let nodes: String = self.query(port, redis::cmd("CLUSTER").arg("NODES")).await;
        // `ID IP:PORT@BUS FLAGS PRIMARY PING PONG EPOCH STATE SLOTS...`
        let line = nodes
            .lines()
            .find(|line| {
                line.split_whitespace()
                    .nth(2)
                    .is_some_and(|f| f.contains("myself"))
            })
            .unwrap();
        line.split_whitespace()
            .skip(8)
            .filter_map(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                Some(start.parse().ok()?..=end.parse().ok()?)
            })
            .collect()
    }

    /// The cluster slot of `key`, as a live primary computes it.
    pub async fn keyslot(&self, key: &str) -> u32 {
        let port = self.primaries().await[0];
        self.query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await
    }

    /// Pauses writes on every primary for `ms` milliseconds.
    pub async fn pause_writes(&self, ms: u64) {
        for port in self.primaries().await {
            let paused: String = self
                .query(port, redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("WRITE"))
                .await;
            assert_eq!(paused, "OK");
        }
    }

    /// SIGKILLs the process on `port`: the kernel closes its sockets, as
    /// when a node is OOM-killed.
    pub fn kill(&self, port: u16) {
        let pid = self
            .nodes
            .iter()
            .find(|&&(p, _)| p == port)
            .map(|&(_, pid)| pid)
            .expect("a node of this topology");
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -9 {pid}");
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // The script stops everything when its standard input closes.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

async fn try_query<T: redis::FromRedisValue>(
    port: u16,
    command: &redis::Cmd,
) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut connection = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| redis::RedisError::from(std::io::Error::other("connect timed out")))??;
    tokio::time::timeout(Duration::from_secs(5), command.query_async(&mut connection))
        .await
        .map_err(|_| redis::RedisError::from(std::io::Error::other("timed out")))?
}

/// `n` ports, each free with its cluster bus port (+10000) free too, and
/// none handed out before in this process: from 20000 to 32000, below the
/// kernel's ephemeral range, where other tests' servers on port 0 land.
fn free_ports(n: usize) -> Vec<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = 20000 + fastrand::u16(..12000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !given.contains(&port) && free(port) && free(port + 10000) {
            given.insert(port);
            ports.push(port);
        }
    }
    ports
}
