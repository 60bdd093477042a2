//! `cuts`: pairs whose callers' connections are cut at random points, and
//! who retry with their attempt key, each try on a random replica and over a
//! random protocol. It checks what attempt keys promise: a cut costs a caller
//! nothing but the retry.
//!
//! Each pair's two callers start a few milliseconds apart, in random order,
//! each with its own key and payload. Every try may be cut (the call dropped:
//! gRPC's RST_STREAM, or the HTTP connection reset) at a random moment soon
//! after it starts, so that cuts fall before the arrival is recorded, while
//! parked, between the decision and the answer, and after the answer. A
//! caller that was answered sometimes asks again, to check that the answer
//! is kept. Every caller ends with one try that is not cut.
//!
//! Afterwards, for every pair:
//! - `one_sided`: one caller was told it paired, and the other was not;
//! - `double_decisions`: one caller was told two different things (another
//!   role or another partner's payload) by two of its tries;
//! - `wrong`: both paired, but not with each other (same role, or a payload
//!   that is not the partner's);
//! - `forgotten`: a caller's try after its answer did not get that answer;
//! - `unpaired`: neither was told it paired (both waits ran out).
//!
//! All must be 0: `pass` says so. With `--redis-url` the run also checks
//! that no key is left in Redis once the kept answers have expired.

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
use rendezvous::{
    client::{Client, ClientOptions, Try, retryable},
    pairing::Role,
};
use tokio::{net::TcpStream, task::JoinSet};

use crate::{fresh_id, load::grpc_clients, soak};

#[derive(Debug, Args)]
pub struct CutsArgs {
    /// The replicas' gRPC ports, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50051")]
    grpc: Vec<SocketAddr>,
    /// The replicas' HTTP ports, in the same order as --grpc.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3030")]
    http: Vec<SocketAddr>,
    /// Pairs to run.
    #[arg(long, default_value_t = 10_000)]
    pairs: u64,
    /// Pairs in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The chance that a try is cut, while the caller has cuts left.
    #[arg(long, default_value_t = 0.5)]
    cut_chance: f64,
    /// Cuts a caller may suffer, at most, before a try that is not cut.
    #[arg(long, default_value_t = 3)]
    max_cuts: u32,
    /// A cut falls at a random moment within this long after its try starts;
    /// the second caller of a pair starts within it too. Make it about a
    /// pair's latency, so that cuts fall on every point of a pair's life.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "4ms")]
    cut_within: Duration,
    /// The chance that an answered caller asks again, once.
    #[arg(long, default_value_t = 0.2)]
    ask_again: f64,
    /// Each try's wait (the server's --max-wait applies too).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    wait: Duration,
    /// The seed of the random cuts, to run the same cuts again (default:
    /// random, and reported).
    #[arg(long)]
    seed: Option<u64>,
    /// The replicas' Redis, to check that the run left no key behind.
    #[arg(long)]
    redis_url: Option<String>,
    /// The replicas' --redis-key-prefix.
    #[arg(long, default_value = "rendezvous:")]
    redis_key_prefix: String,
    /// How long kept answers may stay in Redis after the run: the replicas'
    /// --attempt-grace, and a little.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7s")]
    keys_expire_within: Duration,
}

/// What one try that was not cut was told.
#[derive(Debug, Clone, PartialEq)]
enum TryAnswer {
    Paired {
        role: Role,
        peer: Bytes,
        waited: Duration,
    },
    TimedOut,
    Failed(String),
}

/// Counts over the run; everything but `pairs_ok`, `cuts`, `asked_again`
/// and `retried` must stay 0.
#[derive(Debug, Default)]
struct CutsTally {
    pairs_ok: AtomicU64,
    cuts: AtomicU64,
    asked_again: AtomicU64,
    retried: AtomicU64,
    one_sided: AtomicU64,
    double_decisions: AtomicU64,
    wrong: AtomicU64,
    forgotten: AtomicU64,
    unpaired: AtomicU64,
    failed: AtomicU64,
    waited_changed: AtomicU64,
}

impl CutsTally {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn bad(&self) -> u64 {
        [
            &self.one_sided,
            &self.double_decisions,
            &self.wrong,
            &self.forgotten,
            &self.unpaired,
            &self.failed,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    fn json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "pairs_ok": get(&self.pairs_ok),
            "cuts": get(&self.cuts),
            "asked_again": get(&self.asked_again),
            "retried": get(&self.retried),
            "one_sided": get(&self.one_sided),
            "double_decisions": get(&self.double_decisions),
            "wrong": get(&self.wrong),
            "forgotten": get(&self.forgotten),
            "unpaired": get(&self.unpaired),
            "failed": get(&self.failed),
            "waited_changed": get(&self.waited_changed),
        })
    }
}

/// One replica's two ports.
struct ReplicaPorts {
    grpc: Arc<[Client]>,
    http: SocketAddr,
}

struct Run {
    replicas: Vec<ReplicaPorts>,
    args: CutsArgs,
    tally: CutsTally,
}

/// One logical wait: a caller, its key and its payload.
struct Caller {
    id: String,
    key: String,
    payload: Bytes,
}

impl Run {
    /// Every try of one caller, until one that is not cut has an answer
    /// (and, sometimes, one more to ask again); the answers of the tries
    /// that were not cut, in order.
    async fn wait(&self, caller: &Caller, rng: &mut fastrand::Rng) -> Vec<TryAnswer> {
        let (mut cuts, mut refusals, mut again) = (0, 0, false);
        let mut answers = Vec::new();
        for previous in 0.. {
            let replica = &self.replicas[rng.usize(..self.replicas.len())];
            let grpc = rng.bool();
            let cut = (cuts < self.args.max_cuts && rng.f64() < self.args.cut_chance)
                .then(|| random_within(rng, self.args.cut_within));
            let call = self.try_once(replica, grpc, caller, previous);
            let told = match cut {
                None => call.await,
                Some(after) => match tokio::time::timeout(after, call).await {
                    Ok(told) => told,
                    Err(_) => {
                        cuts += 1;
                        CutsTally::add(&self.tally.cuts);
                        continue;
                    }
                },
            };
            if let TryAnswer::Failed(error) = &told
                && error.starts_with("retry:")
                && refusals < 20
            {
                refusals += 1;
                CutsTally::add(&self.tally.retried);
                continue;
            }
            let answered = matches!(told, TryAnswer::Paired { .. });
            answers.push(told);
            if answered && !again && rng.f64() < self.args.ask_again {
                again = true;
                CutsTally::add(&self.tally.asked_again);
                continue;
            }
            return answers;
        }
        unreachable!("a caller makes a few dozen tries at most")
    }

    /// One try, after `previous` tries of the caller's wait, which it says
    /// (as `wait_retrying` does), so that the server can tell a late cut try
    /// from its retry.
    async fn try_once(
        &self,
        replica: &ReplicaPorts,
        grpc: bool,
        caller: &Caller,
        previous: u32,
    ) -> TryAnswer {
        if !grpc {
            return http_try(replica.http, caller, previous, self.args.wait).await;
        }
        let client = &replica.grpc[fastrand::usize(..replica.grpc.len())];
        let result = client
            .wait_with_key(
                &caller.id,
                caller.payload.clone(),
                Some(self.args.wait),
                Try {
                    key: &caller.key,
                    previous,
                },
            )
            .await;
        match result {
            Ok(meeting) => TryAnswer::Paired {
                role: meeting.role(),
                peer: meeting.peer().payload.clone(),
                waited: meeting.waited,
            },
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => TryAnswer::TimedOut,
            Err(status) if retryable(&status) => TryAnswer::Failed(format!("retry: grpc {status}")),
            Err(status) => TryAnswer::Failed(format!("grpc: {status}")),
        }
    }

    /// One pair: both callers, then the verdict.
    async fn pair(&self, i: u64, seed: u64) {
        let id = fresh_id("cuts", i);
        let mut rng = fastrand::Rng::with_seed(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (mut rng_a, mut rng_b) = (rng.fork(), rng.fork());
        let a = Caller {
            id: id.clone(),
            key: rendezvous::client::attempt_key(),
            payload: Bytes::from(format!("{id}/a")),
        };
        let b = Caller {
            id: id.clone(),
            key: rendezvous::client::attempt_key(),
            payload: Bytes::from(format!("{id}/b")),
        };
        let (a_late, b_late) = match rng.bool() {
            true => (
                Duration::ZERO,
                random_within(&mut rng, self.args.cut_within),
            ),
            false => (
                random_within(&mut rng, self.args.cut_within),
                Duration::ZERO,
            ),
        };
        let (a_told, b_told) = tokio::join!(
            async {
                tokio::time::sleep(a_late).await;
                self.wait(&a, &mut rng_a).await
            },
            async {
                tokio::time::sleep(b_late).await;
                self.wait(&b, &mut rng_b).await
            },
        );
        self.judge(&id, (&a, &a_told), (&b, &b_told));
    }

    fn judge(
        &self,
        id: &str,
        (a, a_told): (&Caller, &[TryAnswer]),
        (b, b_told): (&Caller, &[TryAnswer]),
    ) {
        let tally = &self.tally;
        let a_final = self.verdict_of(id, a_told);
        let b_final = self.verdict_of(id, b_told);
        let paired = |told: &Option<&TryAnswer>| matches!(told, Some(TryAnswer::Paired { .. }));
        match (a_final, b_final) {
            (
                Some(TryAnswer::Paired {
                    role: a_role,
                    peer: a_peer,
                    ..
                }),
                Some(TryAnswer::Paired {
                    role: b_role,
                    peer: b_peer,
                    ..
                }),
            ) => {
                if a_role != b_role && *a_peer == b.payload && *b_peer == a.payload {
                    CutsTally::add(&tally.pairs_ok);
                } else {
                    eprintln!("pair {id} wrong: {a_told:?} / {b_told:?}");
                    CutsTally::add(&tally.wrong);
                }
            }
            (a_final, b_final) if paired(&a_final) || paired(&b_final) => {
                eprintln!("pair {id} one-sided: {a_told:?} / {b_told:?}");
                CutsTally::add(&tally.one_sided);
            }
            (Some(TryAnswer::TimedOut), Some(TryAnswer::TimedOut)) => {
                eprintln!("pair {id} unpaired: both timed out");
                CutsTally::add(&tally.unpaired);
            }
            _ => {
                eprintln!("pair {id} failed: {a_told:?} / {b_told:?}");
                CutsTally::add(&tally.failed);
            }
        }
    }

    /// What one caller was told in the end: its first answer, once every
    /// later try is checked against it.
    fn verdict_of<'a>(&self, id: &str, told: &'a [TryAnswer]) -> Option<&'a TryAnswer> {
        let first = told.first()?;
        for later in &told[1..] {
            match (first, later) {
                (
                    TryAnswer::Paired { role, peer, waited },
                    TryAnswer::Paired {
                        role: again,
                        peer: again_peer,
                        waited: again_waited,
                    },
                ) => {
                    if (role, peer) != (again, again_peer) {
                        eprintln!("pair {id}: decided twice: {first:?}, then {later:?}");
                        CutsTally::add(&self.tally.double_decisions);
                    } else if waited != again_waited {
                        CutsTally::add(&self.tally.waited_changed);
                    }
                }
                (TryAnswer::Paired { .. }, _) => {
                    eprintln!("pair {id}: answer forgotten: {first:?}, then {later:?}");
                    CutsTally::add(&self.tally.forgotten);
                }
                _ => {}
            }
        }
        Some(first)
    }
}

/// A random moment within `bound`, to the microsecond.
fn random_within(rng: &mut fastrand::Rng, bound: Duration) -> Duration {
    Duration::from_micros(rng.u64(..=bound.as_micros() as u64))
}

/// One HTTP try, on a connection of its own that is reset (not closed: no
/// TIME_WAIT to pile up) when the try is dropped: the HTTP cut.
async fn http_try(addr: SocketAddr, caller: &Caller, previous: u32, wait: Duration) -> TryAnswer {
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(error) => return TryAnswer::Failed(format!("retry: http connect: {error}")),
    };
    stream.set_nodelay(true).unwrap();
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(handshake) => handshake,
            Err(error) => return TryAnswer::Failed(format!("retry: http handshake: {error}")),
        };
    let _connection = soak::AbortOnDrop(tokio::spawn(connection));
    let request = http::Request::post(format!(
        "/wait-for-second-party/{}?wait={}ms&attempt_key={}&previous_attempts={previous}",
        caller.id,
        wait.as_millis(),
        caller.key
    ))
    .header(http::header::HOST, addr.to_string())
    .header(http::header::ACCEPT, "application/json")
    .body(Full::new(caller.payload.clone()))
    .unwrap();
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(error) => return TryAnswer::Failed(format!("retry: http: {error}")),
    };
    let status = response.status().as_u16();
    let Ok(body) = response.into_body().collect().await else {
        return TryAnswer::Failed("retry: http: body cut short".into());
    };
    let body = body.to_bytes();
    match status {
        200 => {
            let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            let role = match json["role"].as_str() {
                Some("ROLE_FIRST") => Role::First,
                Some("ROLE_SECOND") => Role::Second,
                other => return TryAnswer::Failed(format!("http: role {other:?}")),
            };
            let peer = base64::engine::general_purpose::STANDARD
                .decode(json["peerPayload"].as_str().unwrap_or_default())
                .expect("base64");
            let waited = json["waited"]
                .as_str()
                .and_then(|w| w.strip_suffix('s')?.parse::<f64>().ok())
                .map(Duration::from_secs_f64)
                .unwrap_or_default();
            TryAnswer::Paired {
                role,
                peer: peer.into(),
                waited,
            }
        }
        408 => TryAnswer::TimedOut,
        503 => TryAnswer::Failed(format!(
            "retry: http 503: {}",
            String::from_utf8_lossy(&body)
        )),
        other => TryAnswer::Failed(format!("http {other}: {}", String::from_utf8_lossy(&body))),
    }
}

pub async fn cuts(args: CutsArgs) -> serde_json::Value {
    assert_eq!(
        args.grpc.len(),
        args.http.len(),
        "--grpc and --http pair up"
    );
    let mut replicas = Vec::new();
    for (&grpc, &http) in args.grpc.iter().zip(&args.http) {
        let options = ClientOptions::new(&grpc.to_string()).expect("a valid address");
        replicas.push(ReplicaPorts {
            grpc: grpc_clients(&options, 2).await,
            http,
        });
    }
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let (pairs, concurrency) = (args.pairs, args.concurrency);
    let run = Arc::new(Run {
        replicas,
        args,
        tally: CutsTally::default(),
    });
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (run, next) = (run.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pairs {
                    return;
                }
                run.pair(i, seed).await;
            }
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker.expect("a pair's task does not panic");
    }
    let elapsed = started.elapsed();

    let mut metrics = String::new();
    for replica in &run.replicas {
        metrics.push_str(&soak::scrape(replica.http).await);
    }
    let keys_left = match &run.args.redis_url {
        Some(url) => Some(
            soak::keys_left(
                url,
                &run.args.redis_key_prefix,
                run.args.keys_expire_within,
                // The bindings of the last waits' keys: their wait, the
                // grace and a second (what `keys_expire_within` allows).
                run.args.wait + run.args.keys_expire_within,
            )
            .await,
        ),
        None => None,
    };
    let parked = soak::metric(&metrics, "rendezvous_parked_callers");
    let bad = run.tally.bad();
    serde_json::json!({
        "mode": "cuts",
        "replicas": run.replicas.len(),
        "pairs": pairs,
        "seed": seed,
        "seconds": elapsed.as_secs_f64(),
        "run": run.tally.json(),
        "parked_gauge_after": parked,
        "redis_keys_left": keys_left,
        "server_reattached_total": soak::metric(&metrics, "rendezvous_reattached_total"),
        "server_redelivered_total": soak::metric(&metrics, "rendezvous_redelivered_total"),
        "server_paired_total": soak::metric(&metrics, "rendezvous_paired_total"),
        "pass": bad == 0 && parked == 0.0 && keys_left.unwrap_or(0) == 0,
    })
}
