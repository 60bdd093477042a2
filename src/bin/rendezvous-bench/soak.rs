//! `soak`: a long mixed run that checks the server stays correct and does
//! not leak. `scripts/soak.sh` starts a server and runs it.
//!
//! The work comes in rounds of six jobs, so that of every ten callers eight
//! pair, one cancels and one times out:
//! - four pairs, over gRPC + gRPC, HTTP + HTTP, gRPC + HTTP and HTTP + gRPC,
//!   each caller sending its own payload and checking it got its partner's;
//! - one caller that goes away mid-wait (gRPC: RST_STREAM; HTTP: the
//!   connection is reset), with an id nobody else uses;
//! - one caller with an id nobody else uses and a short wait, which must
//!   time out.
//!
//! With several replicas (`--grpc` and `--http` lists, in the same order),
//! the two callers of each pair go to different replicas, and with
//! `--redis-url` the run also checks that no key is left in Redis.
//!
//! A wrong pair is any caller told it paired when it should not have been
//! (the cancelling and the timing-out ones), or paired with a payload other
//! than its partner's. After a warm-up, the RSS is read; after the run, once
//! the server is idle, it is read again, and `/metrics` is scraped for the
//! parked-callers gauge and the counters.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rendezvous::client::{Client, ClientOptions};
use tokio::{net::TcpStream, task::JoinSet};
use tonic::Code;

use crate::{
    fresh_id,
    load::{HttpPool, HttpSender, grpc_clients},
    usage::{quiesce, usage},
};

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// The server's gRPC port; several, comma-separated, for replicas.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50051")]
    grpc: Vec<SocketAddr>,
    /// The server's HTTP port; several, in the same order as --grpc.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3030")]
    http: Vec<SocketAddr>,
    /// The server's pid, for its RSS; several, in the same order as --grpc.
    #[arg(long, value_delimiter = ',', required = true)]
    server_pid: Vec<u32>,
    /// The replicas' Redis, to check that the run left no key behind.
    #[arg(long)]
    redis_url: Option<String>,
    /// The replicas' --redis-key-prefix.
    #[arg(long, default_value = "rendezvous:")]
    redis_key_prefix: String,
    /// Pairs to complete in the measured run (callers: 2.5 times as many).
    #[arg(long, default_value_t = 1_000_000)]
    pairs: u64,
    /// Pairs in the warm-up, before the first RSS reading.
    #[arg(long, default_value_t = 100_000)]
    warmup_pairs: u64,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The wait of the callers that must time out.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    timeout_wait: Duration,
    /// How long the cancelling callers wait before they go away.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20ms")]
    cancel_after: Duration,
}

/// What one caller was told.
#[derive(Debug)]
enum SoakAnswer {
    Paired(Bytes),
    TimedOut,
    Failed(String),
}

/// Tallies of a run; `wrong` must stay 0.
#[derive(Debug, Default)]
struct SoakTally {
    pairs_ok: AtomicU64,
    timeouts_ok: AtomicU64,
    cancels_ok: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
}

impl SoakTally {
    fn json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "pairs_ok": get(&self.pairs_ok),
            "timeouts_ok": get(&self.timeouts_ok),
            "cancels_ok": get(&self.cancels_ok),
            "wrong": get(&self.wrong),
            "failed": get(&self.failed),
        })
    }
}

/// Connections to every replica.
#[derive(Clone)]
struct Clients {
    replicas: Arc<[ReplicaClients]>,
    timeout_wait: Duration,
    cancel_after: Duration,
}

/// Connections to one replica's two ports.
#[derive(Clone)]
struct ReplicaClients {
    grpc: Arc<[Client]>,
    http: HttpPool,
    http_addr: SocketAddr,
}

impl Clients {
    /// The replica for a call in `slot`: consecutive slots, different
    /// replicas.
    fn replica(&self, slot: u64) -> &ReplicaClients {
        &self.replicas[slot as usize % self.replicas.len()]
    }

    async fn grpc_call(
        &self,
        slot: u64,
        id: String,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> SoakAnswer {
        let grpc = &self.replica(slot).grpc;
        let client = &grpc[slot as usize / self.replicas.len() % grpc.len()];
        match client.wait(&id, payload, wait).await {
            Ok(meeting) => SoakAnswer::Paired(meeting.peer().payload.clone()),
            // (Also when tonic's own timer won the race with the server's
            // answer: the client reports that as DEADLINE_EXCEEDED too, and
            // the server counts a cancellation.)
            Err(status) if status.code() == Code::DeadlineExceeded => SoakAnswer::TimedOut,
            Err(status) => SoakAnswer::Failed(format!("grpc: {status}")),
        }
    }

    async fn http_call(
        &self,
        slot: u64,
        id: &str,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> SoakAnswer {
        let replica = self.replica(slot);
        let mut sender = replica.http.take().await;
        let told = http_call(&mut sender, replica.http_addr, id, payload, wait).await;
        replica.http.put_back(sender).await;
        told
    }

    async fn call(
        &self,
        grpc: bool,
        slot: u64,
        id: String,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> SoakAnswer {
        match grpc {
            true => self.grpc_call(slot, id, payload, wait).await,
            false => self.http_call(slot, &id, payload, wait).await,
        }
    }

    /// One job: see the module docs for the mix.
    async fn job(&self, j: u64, tag: &str, tally: &SoakTally) {
        let id = fresh_id(tag, j);
        let (round, kind) = (j / 6, j % 6);
        match kind {
            0..=3 => {
                let (a_grpc, b_grpc) =
                    [(true, true), (false, false), (true, false), (false, true)][kind as usize];
                let (a_sent, b_sent) = (
                    Bytes::from(format!("{id}/a")),
                    Bytes::from(format!("{id}/b")),
                );
                let (a, b) = tokio::join!(
                    self.call(a_grpc, j, id.clone(), a_sent.clone(), None),
                    self.call(b_grpc, j + 1, id.clone(), b_sent.clone(), None),
                );
                match (a, b) {
                    (SoakAnswer::Paired(a_got), SoakAnswer::Paired(b_got))
                        if a_got == b_sent && b_got == a_sent =>
                    {
                        tally.pairs_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    (SoakAnswer::Paired(_), _) | (_, SoakAnswer::Paired(_)) => {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    (a, b) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("pair {id} failed: {a:?} / {b:?}");
                    }
                }
            }
            4 => {
                let grpc = round % 2 == 0;
                let call = async {
                    match grpc {
                        true => {
                            self.grpc_call(j, id.clone(), Bytes::from_static(b"cancel"), None)
                                .await
                        }
                        false => self.http_cancelled_call(j, &id).await,
                    }
                };
                match tokio::time::timeout(self.cancel_after, call).await {
                    // Dropped mid-wait: that is the cancellation.
                    Err(_) => tally.cancels_ok.fetch_add(1, Ordering::Relaxed),
                    Ok(SoakAnswer::Paired(_)) => tally.wrong.fetch_add(1, Ordering::Relaxed),
                    Ok(other) => {
                        eprintln!("cancelling caller {id} was answered first: {other:?}");
                        tally.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            _ => {
                let grpc = round % 2 == 1;
                let wait = Some(self.timeout_wait);
                match self
                    .call(grpc, j, id.clone(), Bytes::from_static(b"alone"), wait)
                    .await
                {
                    SoakAnswer::TimedOut => tally.timeouts_ok.fetch_add(1, Ordering::Relaxed),
                    SoakAnswer::Paired(_) => tally.wrong.fetch_add(1, Ordering::Relaxed),
                    SoakAnswer::Failed(error) => {
                        eprintln!("timing-out caller {id}: {error}");
                        tally.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
    }

    /// An HTTP caller on a connection of its own, which is reset (not
    /// closed: no TIME_WAIT to pile up) when the caller is dropped.
    async fn http_cancelled_call(&self, slot: u64, id: &str) -> SoakAnswer {
        let http_addr = self.replica(slot).http_addr;
        let stream = TcpStream::connect(http_addr).await.expect("connects");
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        // Aborted with this future, taking the socket with it.
        let connection = AbortOnDrop(tokio::spawn(connection));
        let told = http_call(
            &mut sender,
            http_addr,
            id,
            Bytes::from_static(b"cancel"),
            None,
        )
        .await;
        drop(connection);
        told
    }
}

pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The legacy endpoint in JSON mode, which carries the peer's payload.
async fn http_call(
    sender: &mut HttpSender,
    host: SocketAddr,
    id: &str,
    payload: Bytes,
    wait: Option<Duration>,
) -> SoakAnswer {
    let query = wait
        .map(|w| format!("?wait={}ms", w.as_millis()))
        .unwrap_or_default();
    let request = http::Request::post(format!("/wait-for-second-party/{id}{query}"))
        .header(http::header::HOST, host.to_string())
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(payload))
        .unwrap();
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(error) => return SoakAnswer::Failed(format!("http: {error}")),
    };
    let status = response.status();
    let Ok(body) = response.into_body().collect().await else {
        return SoakAnswer::Failed("http: body cut short".into());
    };
    match status.as_u16() {
        200 => {
            let json: serde_json::Value = serde_json::from_slice(&body.to_bytes()).expect("JSON");
            let payload = base64::engine::general_purpose::STANDARD
                .decode(json["peerPayload"].as_str().unwrap_or_default())
                .expect("base64");
            SoakAnswer::Paired(payload.into())
        }
        408 => SoakAnswer::TimedOut,
        other => SoakAnswer::Failed(format!("http: status {other}")),
    }
}

async fn run(
    clients: &Clients,
    rounds: u64,
    concurrency: usize,
    tag: &str,
) -> (SoakTally, Duration) {
    let tally = Arc::new(SoakTally::default());
    let next = Arc::new(AtomicU64::new(0));
    let jobs = rounds * 6;
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (clients, next, tally, tag) =
            (clients.clone(), next.clone(), tally.clone(), tag.to_owned());
        workers.spawn(async move {
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= jobs {
                    return;
                }
                clients.job(j, &tag, &tally).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    (Arc::into_inner(tally).unwrap(), elapsed)
}

/// The value of an unlabelled series, or the sum of a labelled one.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, value| sum + value)
}

pub(crate) async fn scrape(addr: SocketAddr) -> String {
    let mut sender = HttpPool::open(addr, None).await;
    let request = http::Request::get("/metrics")
        .header(http::header::HOST, addr.to_string())
        .body(Full::default())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .expect("scrapes /metrics");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

pub async fn soak(args: SoakArgs) -> serde_json::Value {
    assert_eq!(
        args.grpc.len(),
        args.http.len(),
        "--grpc and --http pair up"
    );
    let mut replicas = Vec::new();
    for (&grpc, &http) in args.grpc.iter().zip(&args.http) {
        replicas.push(ReplicaClients {
            grpc: grpc_clients(
                &ClientOptions::new(&grpc.to_string()).expect("a valid address"),
                4,
            )
            .await,
            // Each job holds at most two pooled connections.
            http: HttpPool::connect(http, 2 * args.concurrency, http::HeaderMap::new(), None).await,
            http_addr: http,
        });
    }
    let clients = Clients {
        replicas: replicas.into(),
        timeout_wait: args.timeout_wait,
        cancel_after: args.cancel_after,
    };
    let pids = &args.server_pid;

    let (warmup, _) = run(
        &clients,
        args.warmup_pairs.div_ceil(4),
        args.concurrency,
        "soak-warmup",
    )
    .await;
    quiesce(pids).await;
    let after_warmup: Vec<_> = pids.iter().map(|&pid| usage(pid)).collect();
    eprintln!(
        "warm-up done: {}; RSS {:?} KiB",
        warmup.json(),
        after_warmup
            .iter()
            .map(|u| u.rss_bytes / 1024)
            .collect::<Vec<_>>()
    );

    let rounds = args.pairs.div_ceil(4);
    let (tally, elapsed) = run(&clients, rounds, args.concurrency, "soak").await;
    quiesce(pids).await;
    let after: Vec<_> = pids.iter().map(|&pid| usage(pid)).collect();
    let mut metrics = String::new();
    for &http in &args.http {
        metrics.push_str(&scrape(http).await);
    }
    let keys_left = match &args.redis_url {
        Some(url) => {
            let within = Duration::from_secs(5);
            Some(keys_left(url, &args.redis_key_prefix, within, Duration::ZERO).await)
        }
        None => None,
    };

    let rss_ratio = after
        .iter()
        .zip(&after_warmup)
        .map(|(after, warm)| after.rss_bytes as f64 / warm.rss_bytes as f64)
        .fold(0.0, f64::max);
    let parked = metric(&metrics, "rendezvous_parked_callers");
    let wrong = tally.wrong.load(Ordering::Relaxed) + warmup.wrong.load(Ordering::Relaxed);
    serde_json::json!({
        "mode": "soak",
        "replicas": args.grpc.len(),
        "rounds": rounds,
        "callers": rounds * 10,
        "seconds": elapsed.as_secs_f64(),
        "run": tally.json(),
        "warmup": warmup.json(),
        "wrong_pairs": wrong,
        "rss_after_warmup_bytes": after_warmup.iter().map(|u| u.rss_bytes).collect::<Vec<_>>(),
        "rss_after_bytes": after.iter().map(|u| u.rss_bytes).collect::<Vec<_>>(),
        "rss_ratio": rss_ratio,
        "parked_gauge_after": parked,
        "redis_keys_left": keys_left,
        "server_paired_total": metric(&metrics, "rendezvous_paired_total"),
        "server_timeouts_total": metric(&metrics, "rendezvous_timeouts_total"),
        "server_cancellations_total": metric(&metrics, "rendezvous_cancellations_total"),
        "server_rejections_total": metric(&metrics, "rendezvous_rejections_total"),
        "pass": wrong == 0 && parked == 0.0 && rss_ratio <= 1.10 && keys_left.unwrap_or(0) == 0,
    })
}

/// Keys under `prefix` once they have had `within` to go: for the replicas
/// to remove their last result keys, or for kept answers to expire; and
/// attempt keys' bindings that would outlive `bindings_within` from now.
pub(crate) async fn keys_left(
    url: &str,
    prefix: &str,
    within: Duration,
    bindings_within: Duration,
) -> usize {
    let client = redis::Client::open(url).expect("a valid --redis-url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects to Redis");
    let give_up = Instant::now() + within;
    let (bindings, keys) = loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut connection)
            .await
            .expect("KEYS");
        // An attempt key's binding to its id lasts as long as its wait could
        // (see the README): it is checked to expire in time, not waited for.
        let (bindings, keys): (Vec<_>, Vec<_>) =
            keys.into_iter().partition(|key| key.contains("}attempt:"));
        if keys.is_empty() || Instant::now() >= give_up {
            break (bindings, keys);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut left = keys;
    for binding in bindings {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&binding)
            .query_async(&mut connection)
            .await
            .expect("PTTL");
        // -2: expired meanwhile; -1: it would never expire.
        if ttl == -1 || u128::try_from(ttl).is_ok_and(|ttl| ttl > bindings_within.as_millis()) {
            left.push(binding);
        }
    }
    if !left.is_empty() {
        eprintln!("keys left in Redis: {:?}", &left[..left.len().min(10)]);
    }
    left.len()
}
