//! `rendezvous-bench`: load for a rendezvous server, or for a ceiling that
//! answers at once (`examples/ceiling.rs`), so the two can be compared.
//!
//! - `pairs`: many pairs (two callers with one fresh id, sent together);
//!   reports pairs/s, pair latency, errors, timeouts, and with `--server-pid`
//!   the server's CPU per pair and RSS, from /proc.
//! - `idle`: parks W callers, reads the server's RSS, then releases them all
//!   by sending their partners; reports bytes per parked caller and the
//!   release time. With `--hold`, it keeps them parked a while first, so that
//!   another run of `pairs` can measure throughput with them in place.
//! - `soak`: a long mixed run over both ports, with cancellations and
//!   timeouts, checking every pair's payloads, the RSS and the parked gauge
//!   (see `soak.rs`).
//! - `cuts`: pairs whose callers are cut off at random points and retry with
//!   their attempt keys across replicas; checks that no answer is lost and
//!   none decided twice (see `cuts.rs`).
//!
//! Not a test: nothing here asserts a timing. `scripts/bench.sh` runs it.
//!
//! Here: the flags and the modes. `load.rs`: connections to the targets and
//! one call over them; `usage.rs`: what the servers cost (/proc, and Redis's
//! own INFO).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rendezvous::client::Client;
use tokio::task::JoinSet;

mod cuts;
mod load;
use load::{Load, client_options, grpc_clients};
mod soak;
mod usage;
use usage::{RedisInfo, quiesce, usage_of};

#[derive(Debug, Parser)]
#[command(
    about = "Load for a rendezvous server (or a ceiling), with server CPU and RSS from /proc"
)]
struct BenchCli {
    #[command(subcommand)]
    mode: Mode,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Run pairs as fast as the concurrency allows.
    Pairs(PairsArgs),
    /// Park callers, measure memory, then release them.
    Idle(IdleArgs),
    /// A long mixed run that checks correctness, leaks and the gauge.
    Soak(soak::SoakArgs),
    /// Pairs whose callers are cut off at random points and retry with
    /// their attempt keys on random replicas: checks that no answer is lost
    /// and none decided twice.
    Cuts(cuts::CutsArgs),
    /// Run groups (WaitForParties) as fast as the concurrency allows: server
    /// CPU per member.
    Groups(GroupsArgs),
    /// Park all members but the last of some groups, measure memory, then
    /// send every group's last member at once: how long until the last
    /// member is answered.
    Gather(GatherArgs),
}

#[derive(Debug, Args)]
struct Target {
    /// grpc: rendezvous.v1.Sync over HTTP/2. http: the legacy endpoint over HTTP/1.1.
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    protocol: Transport,
    /// The server's address (its gRPC or HTTP port, to match --protocol).
    /// Several, comma-separated, for replicas: the two callers of each pair
    /// go to different ones.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50051")]
    target: Vec<SocketAddr>,
    /// Connections to open. gRPC multiplexes calls over them; HTTP/1.1 needs
    /// one per call in flight (default: twice the calls in flight).
    #[arg(long)]
    connections: Option<usize>,
    /// The server's pid, to read its CPU time and RSS from /proc. Several,
    /// comma-separated, for replicas: their CPU and RSS are added up.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Send the bearer token in this file, for a server run with
    /// --auth-token-file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Connect with TLS, trusting this PEM CA, to a server whose
    /// certificate is for "localhost".
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Send this W3C traceparent with every call, to measure what reading
    /// it costs the server.
    #[arg(long, value_name = "TRACEPARENT")]
    traceparent: Option<String>,
    /// Send a new attempt key with every call (gRPC only), to measure what
    /// keeping the call's place and answer costs the server.
    #[arg(long)]
    attempt_keys: bool,
    /// The replicas' Redis, to report its CPU, memory and commands per pair
    /// (from its own INFO).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
}

#[derive(Debug, Args)]
struct PairsArgs {
    #[command(flatten)]
    target: Target,
    /// Pairs to run (after the warm-up).
    #[arg(long, default_value_t = 100_000)]
    pairs: u64,
    /// Pairs in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Pairs to run first, unmeasured.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
}

#[derive(Debug, Args)]
struct GroupsArgs {
    #[command(flatten)]
    target: Target,
    /// Callers in each group.
    #[arg(long)]
    parties: u32,
    /// Members to run in all (after the warm-up), in groups of --parties.
    #[arg(long, default_value_t = 200_000)]
    members: u64,
    /// Members in flight at once (whole groups: at least one).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

#[derive(Debug, Args)]
struct GatherArgs {
    #[command(flatten)]
    target: Target,
    /// Callers in each group.
    #[arg(long)]
    parties: u32,
    /// Groups to park.
    #[arg(long, default_value_t = 1)]
    groups: usize,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Callers to park.
    #[arg(long, default_value_t = 20_000)]
    waiters: usize,
    /// How long to keep them parked after measuring, before releasing them:
    /// time to take a heap profile or a look at the server.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    hold: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Grpc,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallOutcome {
    Ok,
    Timeout,
    Error,
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// A fresh id per pair, unique across runs against the same server.
fn fresh_id(tag: &str, i: u64) -> String {
    let run = RUN.load(Ordering::Relaxed);
    format!("{tag}-{run:x}-{i}")
}

async fn run_pairs(client: &Load, pairs: u64, concurrency: usize, tag: &str) -> PairStats {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    let started = Instant::now();
    for _ in 0..concurrency {
        let (client, next, tag) = (client.clone(), next.clone(), tag.to_owned());
        workers.spawn(async move {
            let mut stats = PairStats::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pairs {
                    return stats;
                }
                let id = fresh_id(&tag, i);
                let t = Instant::now();
                let slot = i as usize * 2;
                let (a, b) = tokio::join!(client.call(slot, id.clone()), client.call(slot + 1, id));
                stats.latencies.push(t.elapsed());
                for outcome in [a, b] {
                    match outcome {
                        CallOutcome::Ok => {}
                        CallOutcome::Timeout => stats.timeouts += 1,
                        CallOutcome::Error => stats.errors += 1,
                    }
                }
            }
        });
    }
    let mut total = PairStats::default();
    while let Some(stats) = workers.join_next().await {
        let stats = stats.unwrap();
        total.latencies.extend(stats.latencies);
        total.timeouts += stats.timeouts;
        total.errors += stats.errors;
    }
    total.elapsed = started.elapsed();
    total
}

#[derive(Debug, Default)]
struct PairStats {
    latencies: Vec<Duration>,
    timeouts: u64,
    errors: u64,
    elapsed: Duration,
}

/// Parks `n` callers with ids nobody else uses; returns them as tasks, and
/// their ids so that partners can release them.
fn park(client: &Load, n: usize, tag: &str) -> (JoinSet<CallOutcome>, Vec<String>) {
    let mut parked = JoinSet::new();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = fresh_id(tag, i as u64);
        ids.push(id.clone());
        let client = client.clone();
        parked.spawn(async move { client.call(i, id).await });
    }
    (parked, ids)
}

/// Sends a partner for every id (to the next target, with replicas), and
/// waits for both sides of every pair.
async fn release(
    client: &Load,
    parked: &mut JoinSet<CallOutcome>,
    ids: Vec<String>,
) -> (Duration, u64, u64) {
    let started = Instant::now();
    let mut partners = JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let client = client.clone();
        partners.spawn(async move { client.call(i + 1, id).await });
    }
    let (mut ok, mut failed) = (0, 0);
    for set in [&mut partners, parked] {
        while let Some(outcome) = set.join_next().await {
            match outcome.unwrap() {
                CallOutcome::Ok => ok += 1,
                _ => failed += 1,
            }
        }
    }
    (started.elapsed(), ok, failed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let cli = BenchCli::parse();
    RUN.store(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        Ordering::Relaxed,
    );
    let report = match cli.mode {
        Mode::Pairs(args) => pairs(args).await,
        Mode::Idle(args) => idle(args).await,
        Mode::Soak(args) => soak::soak(args).await,
        Mode::Cuts(args) => cuts::cuts(args).await,
        Mode::Groups(args) => groups(args).await,
        Mode::Gather(args) => gather(args).await,
    };
    if cli.json {
        println!("{report}");
    } else {
        for (key, value) in report.as_object().unwrap() {
            println!("{key:>24}: {value}");
        }
    }
}

async fn pairs(args: PairsArgs) -> serde_json::Value {
    let connections = args
        .target
        .connections
        .unwrap_or(match args.target.protocol {
            Transport::Grpc => 4,
            Transport::Http => 2 * args.concurrency,
        });
    let client = Load::connect(&args.target, connections).await;
    run_pairs(&client, args.warmup, args.concurrency, "warmup").await;
    let redis_url = args.target.redis_url.as_deref();
    let redis_before = RedisInfo::read(redis_url).await;
    let before = usage_of(&args.target.server_pid);
    let mut stats = run_pairs(&client, args.pairs, args.concurrency, "pair").await;
    let after = usage_of(&args.target.server_pid);
    let redis_after = RedisInfo::read(redis_url).await;

    stats.latencies.sort_unstable();
    let l = &stats.latencies;
    let mut report = serde_json::json!({
        "mode": "pairs",
        "protocol": format!("{:?}", args.target.protocol).to_lowercase(),
        "targets": args.target.target.len(),
        "pairs": args.pairs,
        "concurrency": args.concurrency,
        "connections": connections,
        "seconds": stats.elapsed.as_secs_f64(),
        "pairs_per_second": args.pairs as f64 / stats.elapsed.as_secs_f64(),
        "latency_p50_us": micros(percentile(l, 50.0)),
        "latency_p99_us": micros(percentile(l, 99.0)),
        "latency_p999_us": micros(percentile(l, 99.9)),
        "latency_max_us": micros(l.last().copied().unwrap_or_default()),
        "timeouts": stats.timeouts,
        "errors": stats.errors,
    });
    if let (Some(before), Some(after)) = (before, after) {
        let cpu = after.cpu.saturating_sub(before.cpu);
        report["server_cpu_us_per_pair"] = (micros(cpu) / args.pairs as f64).into();
        report["server_cpu_utilisation"] = (cpu.as_secs_f64() / stats.elapsed.as_secs_f64()).into();
        report["server_rss_bytes"] = after.rss_bytes.into();
    }
    if let (Some(before), Some(after)) = (redis_before, redis_after) {
        RedisInfo::per_pair(&before, &after, args.pairs as f64, &mut report);
    }
    report
}

/// One group's members, all at once, from `slot` on; each member's payload
/// is its number, as a member's would be.
async fn run_group(clients: &[Client], parties: u32, id: String, slot: usize) -> (u64, u64) {
    let mut calls = JoinSet::new();
    for m in 0..parties as usize {
        let (client, id) = (clients[(slot + m) % clients.len()].clone(), id.clone());
        calls.spawn(async move {
            let answer = client.gather(&id, parties, Bytes::from(m.to_string()), None);
            answer.await.is_ok_and(|m| m.parties() == parties as usize)
        });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            true => ok += 1,
            false => failed += 1,
        }
    }
    (ok, failed)
}

/// `count` groups of `parties`, `concurrency` members in flight at once.
async fn run_groups(
    clients: &Arc<[Client]>,
    parties: u32,
    count: u64,
    concurrency: usize,
    tag: &str,
) -> (Duration, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    let started = Instant::now();
    for _ in 0..(concurrency / parties as usize).max(1) {
        let (clients, next, tag) = (clients.clone(), next.clone(), tag.to_owned());
        workers.spawn(async move {
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return failed;
                }
                let slot = i as usize * parties as usize;
                failed += run_group(&clients, parties, fresh_id(&tag, i), slot)
                    .await
                    .1;
            }
        });
    }
    let mut failed = 0;
    while let Some(f) = workers.join_next().await {
        failed += f.unwrap();
    }
    (started.elapsed(), failed)
}

fn grpc_only(target: &Target) {
    assert!(
        target.protocol == Transport::Grpc && target.target.len() == 1,
        "groups run over gRPC, against one target"
    );
}

async fn groups(args: GroupsArgs) -> serde_json::Value {
    grpc_only(&args.target);
    let connections = args.target.connections.unwrap_or(4);
    let options = client_options(&args.target, args.target.target[0]);
    let clients = grpc_clients(&options, connections).await;
    let count = args.members / u64::from(args.parties);
    let members = count * u64::from(args.parties);
    run_groups(
        &clients,
        args.parties,
        (count / 20).max(1),
        args.concurrency,
        "warmup",
    )
    .await;
    let before = usage_of(&args.target.server_pid);
    let (elapsed, failed) =
        run_groups(&clients, args.parties, count, args.concurrency, "group").await;
    let after = usage_of(&args.target.server_pid);
    let mut report = serde_json::json!({
        "mode": "groups",
        "parties": args.parties,
        "groups": count,
        "members": members,
        "concurrency": args.concurrency,
        "connections": connections,
        "seconds": elapsed.as_secs_f64(),
        "members_per_second": members as f64 / elapsed.as_secs_f64(),
        "failed": failed,
    });
    if let (Some(before), Some(after)) = (before, after) {
        let cpu = after.cpu.saturating_sub(before.cpu);
        report["server_cpu_us_per_member"] = (micros(cpu) / members as f64).into();
        report["server_cpu_utilisation"] = (cpu.as_secs_f64() / elapsed.as_secs_f64()).into();
    }
    report
}

async fn gather(args: GatherArgs) -> serde_json::Value {
    grpc_only(&args.target);
    let options = client_options(&args.target, args.target.target[0]);
    // As many connections as a group has members, up to 64: the members of
    // a group arrive as separate callers would.
    let clients = grpc_clients(&options, (args.parties as usize).min(64)).await;
    run_groups(&clients, 2, 2_000, 64, "warmup").await;
    let pids = &args.target.server_pid;
    quiesce(pids).await;
    let before = usage_of(pids);
    let parties = args.parties;
    let ids: Vec<String> = (0..args.groups)
        .map(|g| fresh_id("gather", g as u64))
        .collect();
    let mut parked = JoinSet::new();
    for (g, id) in ids.iter().enumerate() {
        for m in 0..parties as usize - 1 {
            let (client, id) = (clients[m % clients.len()].clone(), id.clone());
            let slot = g * parties as usize + m;
            parked.spawn(async move {
                let answer = client.gather(&id, parties, Bytes::from(slot.to_string()), None);
                answer.await.is_ok_and(|m| m.parties() == parties as usize)
            });
        }
    }
    quiesce(pids).await;
    let during = usage_of(pids);
    let members = args.groups * (parties as usize - 1);
    eprintln!("parked {members}");
    let started = Instant::now();
    let sending = usage_of(pids);
    let mut last = JoinSet::new();
    for id in ids {
        let client = clients[0].clone();
        last.spawn(async move {
            let answer = client.gather(&id, parties, Bytes::from_static(b"last"), None);
            answer.await.is_ok_and(|m| m.parties() == parties as usize)
        });
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    for set in [&mut last, &mut parked] {
        while let Some(done) = set.join_next().await {
            if done.unwrap() {
                ok += 1;
            } else {
                failed += 1;
            }
        }
    }
    let completed = started.elapsed();
    let done = usage_of(pids);
    let mut report = serde_json::json!({
        "mode": "gather",
        "parties": parties,
        "groups": args.groups,
        "parked_members": members,
        "last_arrival_to_last_answer_ms": completed.as_secs_f64() * 1e3,
        "answered_ok": ok,
        "failed": failed,
    });
    if let (Some(before), Some(during)) = (before, during) {
        let delta = during.rss_bytes.saturating_sub(before.rss_bytes);
        report["bytes_per_parked_member"] = (delta as f64 / members as f64).into();
    }
    if let (Some(sending), Some(done)) = (sending, done) {
        let cpu = done.cpu.saturating_sub(sending.cpu);
        report["server_cpu_ms_to_complete"] = (cpu.as_secs_f64() * 1e3).into();
    }
    report
}

async fn idle(args: IdleArgs) -> serde_json::Value {
    let connections = args
        .target
        .connections
        .unwrap_or(match args.target.protocol {
            Transport::Grpc => 64,
            Transport::Http => args.waiters,
        });
    // Warm the server's allocator first, on a few connections of its own, so
    // that the RSS delta is what the parked callers (and, over HTTP/1.1, their
    // connections) cost, not first-use growth.
    let warmup = Load::connect(&args.target, 64).await;
    run_pairs(&warmup, 2_000, 64, "warmup").await;
    let pids = &args.target.server_pid;
    quiesce(pids).await;
    let before = usage_of(pids);
    let redis_url = args.target.redis_url.as_deref();
    let redis_before = RedisInfo::read(redis_url).await;

    let client = Load::connect(&args.target, connections).await;
    let park_started = Instant::now();
    let (mut parked, ids) = park(&client, args.waiters, "idle");
    quiesce(pids).await;
    let park_time = park_started.elapsed();
    let during = usage_of(pids);
    let redis_during = RedisInfo::read(redis_url).await;
    // For scripts that run other load while these are parked: a line that
    // says they are all in place.
    eprintln!("parked {}", args.waiters);
    tokio::time::sleep(args.hold).await;
    // Over HTTP/1.1 the parked callers hold every connection: partners need
    // their own (few: each partner's call completes at once).
    let partners = match args.target.protocol {
        Transport::Grpc => client.clone(),
        Transport::Http => warmup,
    };
    let (release_time, ok, failed) = release(&partners, &mut parked, ids).await;

    let mut report = serde_json::json!({
        "mode": "idle",
        "protocol": format!("{:?}", args.target.protocol).to_lowercase(),
        "targets": args.target.target.len(),
        "waiters": args.waiters,
        "connections": connections,
        "park_seconds": park_time.as_secs_f64(),
        "release_seconds": release_time.as_secs_f64(),
        "answered_ok": ok,
        "failed": failed,
    });
    if let (Some(before), Some(during)) = (before, during) {
        let delta = during.rss_bytes.saturating_sub(before.rss_bytes);
        report["server_rss_before_bytes"] = before.rss_bytes.into();
        report["server_rss_parked_bytes"] = during.rss_bytes.into();
        report["bytes_per_parked_caller"] = (delta as f64 / args.waiters as f64).into();
    }
    if let (Some(before), Some(during)) = (redis_before, redis_during) {
        report["redis_bytes_per_parked_caller"] =
            ((during.used_memory - before.used_memory) / args.waiters as f64).into();
    }
    report
}
