//! What the servers under load cost: their CPU time and RSS from /proc, and
//! what Redis says of itself.

use std::time::{Duration, Instant};

/// Server CPU time and RSS, from /proc.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) cpu: Duration,
    pub(crate) rss_bytes: u64,
}

/// The servers' CPU time and RSS, added up.
pub(crate) fn usage_of(pids: &[u32]) -> Option<Usage> {
    if pids.is_empty() {
        return None;
    }
    let all = pids.iter().map(|&pid| usage(pid));
    Some(all.fold(
        Usage {
            cpu: Duration::ZERO,
            rss_bytes: 0,
        },
        |sum, one| Usage {
            cpu: sum.cpu + one.cpu,
            rss_bytes: sum.rss_bytes + one.rss_bytes,
        },
    ))
}

pub(crate) fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reads /proc/PID/stat");
    // Fields after the ")" that closes the command name; utime and stime are
    // fields 14 and 15 of the whole line, in clock ticks.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Usage {
        cpu: Duration::from_millis(ticks * 1000 / clock_ticks_per_second()),
        rss_bytes: rss_kib * 1024,
    }
}

pub(crate) fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Waits until the server has settled: no CPU tick and no RSS change for a
/// whole second, so that every request sent so far has been handled (and
/// every caller sent so far is parked). Gives up after 120 s.
pub(crate) async fn quiesce(pids: &[u32]) {
    let Some(mut last) = usage_of(pids) else {
        return;
    };
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut still = 0;
    while still < 10 && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = usage_of(pids).expect("pids given");
        let settled = now.cpu == last.cpu && now.rss_bytes == last.rss_bytes;
        still = if settled { still + 1 } else { 0 };
        last = now;
    }
}

/// What Redis says of itself: CPU, memory, and how often it ran each
/// command (scripts' own commands included).
#[derive(Debug, Clone, Default)]
pub(crate) struct RedisInfo {
    pub(crate) cpu: f64,
    pub(crate) used_memory: f64,
    pub(crate) calls: std::collections::BTreeMap<String, f64>,
}

impl RedisInfo {
    pub(crate) async fn read(url: Option<&str>) -> Option<Self> {
        let client = redis::Client::open(url?).expect("a valid --redis-url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connects to Redis");
        let text: String = redis::cmd("INFO")
            .arg("everything")
            .query_async(&mut connection)
            .await
            .expect("INFO");
        let mut info = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "used_cpu_sys" | "used_cpu_user" => info.cpu += value.parse::<f64>().unwrap_or(0.0),
                "used_memory" => info.used_memory = value.parse().unwrap_or(0.0),
                _ => {
                    if let Some(command) = key.strip_prefix("cmdstat_") {
                        let calls = value
                            .strip_prefix("calls=")
                            .and_then(|v| v.split(',').next())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0.0);
                        info.calls.insert(command.to_owned(), calls);
                    }
                }
            }
        }
        Some(info)
    }

    /// Per-pair figures between two readings, into `report`.
    pub(crate) fn per_pair(
        before: &Self,
        after: &Self,
        pairs: f64,
        report: &mut serde_json::Value,
    ) {
        report["redis_cpu_us_per_pair"] = ((after.cpu - before.cpu) * 1e6 / pairs).into();
        let per_pair = |name: &str| {
            (after.calls.get(name).copied().unwrap_or(0.0)
                - before.calls.get(name).copied().unwrap_or(0.0))
                / pairs
        };
        let commands: serde_json::Map<String, serde_json::Value> = after
            .calls
            .keys()
            .map(|name| (name.clone(), per_pair(name)))
            .filter(|(_, n)| *n > 0.0)
            .map(|(name, n)| (name, n.into()))
            .collect();
        // What the replicas send; the rest run inside the script.
        let sent: f64 = [
            "evalsha",
            "eval",
            "script|load",
            "unlink",
            "ping",
            "subscribe",
        ]
        .iter()
        .map(|name| per_pair(name))
        .sum();
        report["redis_round_trips_per_pair"] = sent.into();
        report["redis_commands_per_pair"] = commands.into();
    }
}
