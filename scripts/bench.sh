#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md, in a few minutes:
#   1. CPU per pair and throughput, the project against its ceilings (a bare
#      tonic server, a bare hyper HTTP/1.1 server), alternating, ROUNDS rounds;
#   2. memory per parked caller, and mass parking and release;
#   3. throughput with 50,000 callers parked against none;
#   4. the pairing engine alone (criterion);
#   5. the Redis engine: two replicas on one Redis of the script's own, the
#      two callers of each pair on different replicas, against the local
#      engine in the same run; memory per parked caller; capacity;
#   6. what a traceparent on every call costs: the same server, calls with
#      and without one, alternating, ROUNDS rounds;
#   7. groups (WaitForParties): server CPU per member in groups of 2, 8 and
#      64 against per caller of a pair, alternating, ROUNDS rounds; a group
#      of 1,000 completing (last arrival to last answer); memory per parked
#      member;
#   8. the Redis engine on a cluster and under Sentinel
#      (tests/integration/redis_measure.rs, on topologies started by
#      scripts/redis-topology.sh): pair latency on one primary against a
#      cluster, side by side; failover time, five kills of each.
# Servers run on core 0 and the load on core 1 when there are two cores.
#
#   scripts/bench.sh                 # everything
#   ROUNDS=3 PAIRS=50000 scripts/bench.sh
#   ONLY=cpu scripts/bench.sh        # one part: cpu, memory, parked, engine, redis, trace, groups or topologies
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
PAIRS=${PAIRS:-100000}
ONLY=${ONLY:-all}
out=${OUT:-target/bench}
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

source scripts/lib.sh

# Two builds: an example pulls in the dev-dependencies, and their features
# (tokio's test-util, which puts a mutex in every clock read) would otherwise
# be unified into the server binary built by the same command.
cargo build --quiet --release --bin rendezvous --bin rendezvous-bench
cargo build --quiet --release --example ceiling
bin=target/release
bench=("${load_cpu[@]}" "$bin/rendezvous-bench")

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# A fresh project server with default settings plus "$@"; sets $server.
start_project() {
  "${server_cpu[@]}" "$bin/rendezvous" --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:3030 "$@" \
    >"$out/server.log" 2>&1 &
  server=$!
  pids+=("$server")
  wait_for_port 50051
  wait_for_port 3030
}

start_ceiling() {
  "${server_cpu[@]}" "$bin/examples/ceiling" 127.0.0.1:50061 127.0.0.1:3031 >"$out/ceiling.log" 2>&1 &
  ceiling=$!
  pids+=("$ceiling")
  wait_for_port 50061
  wait_for_port 3031
}

stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

# record LABEL -- bench args...: runs the load tool and tags its JSON line.
record() {
  local label=$1
  shift 2
  "${bench[@]}" "$@" --json | python3 -c '
import json, sys
d = json.loads(sys.stdin.read()); d["label"] = sys.argv[1]
print(json.dumps(d))' "$label" | tee -a "$results"
}

if [[ $ONLY == all || $ONLY == cpu ]]; then
  start_project
  start_ceiling
  for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS"
    record grpc-project -- pairs --protocol grpc --target 127.0.0.1:50051 --server-pid "$server" --pairs "$PAIRS"
    record grpc-ceiling -- pairs --protocol grpc --target 127.0.0.1:50061 --server-pid "$ceiling" --pairs "$PAIRS"
    record http-project -- pairs --protocol http --target 127.0.0.1:3030 --server-pid "$server" --pairs "$PAIRS"
    record http-ceiling -- pairs --protocol http --target 127.0.0.1:3031 --server-pid "$ceiling" --pairs "$PAIRS"
  done
  stop "$server"
  stop "$ceiling"
fi

if [[ $ONLY == all || $ONLY == trace ]]; then
  traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
  start_project
  for round in $(seq "$ROUNDS"); do
    echo "== traceparent, round $round of $ROUNDS"
    for protocol in grpc http; do
      port=50051
      [ "$protocol" = http ] && port=3030
      common=(pairs --protocol "$protocol" --target "127.0.0.1:$port" --server-pid "$server" --pairs "$PAIRS")
      record "$protocol-untraced" -- "${common[@]}"
      record "$protocol-traced" -- "${common[@]}" --traceparent "$traceparent"
    done
  done
  stop "$server"
fi

if [[ $ONLY == all || $ONLY == groups ]]; then
  members=$((PAIRS * 2))
  start_project --max-parties 1000 --max-wait 10m
  for round in $(seq "$ROUNDS"); do
    echo "== groups, round $round of $ROUNDS"
    record group-pair -- pairs --protocol grpc --target 127.0.0.1:50051 --server-pid "$server" --pairs "$PAIRS"
    for parties in 2 8 64; do
      record "group-$parties" -- groups --target 127.0.0.1:50051 --server-pid "$server" --parties "$parties" --members "$members"
    done
  done
  for round in $(seq "$ROUNDS"); do
    record gather-1000 -- gather --target 127.0.0.1:50051 --server-pid "$server" --parties 1000
  done
  stop "$server"
  start_project --max-parties 1000 --max-wait 10m
  record gather-64x320 -- gather --target 127.0.0.1:50051 --server-pid "$server" --parties 64 --groups 320
  stop "$server"
fi

if [[ $ONLY == all || $ONLY == memory ]]; then
  # Parked callers need longer than the default 10 s wait while the rest park.
  long=(--max-wait 10m)
  start_project "${long[@]}"
  record idle-grpc-20k-64conn -- idle --protocol grpc --target 127.0.0.1:50051 --server-pid "$server" --waiters 20000 --connections 64
  stop "$server"
  start_project "${long[@]}"
  record idle-grpc-20k-1conn -- idle --protocol grpc --target 127.0.0.1:50051 --server-pid "$server" --waiters 20000 --connections 1
  stop "$server"
  start_project "${long[@]}"
  # One connection per caller: bounded by the open-file limit of both sides.
  record idle-http-8k -- idle --protocol http --target 127.0.0.1:3030 --server-pid "$server" --waiters 8000
  stop "$server"
  start_project "${long[@]}"
  record idle-grpc-100k-64conn -- idle --protocol grpc --target 127.0.0.1:50051 --server-pid "$server" --waiters 100000 --connections 64
  stop "$server"
fi

if [[ $ONLY == all || $ONLY == parked ]]; then
  # The parked callers come from a process of their own, so that the pairs
  # run's client is not slowed by 50,000 calls pending beside its own.
  for round in $(seq "$ROUNDS"); do
    start_project --max-wait 10m
    record parked-0 -- pairs --protocol grpc --target 127.0.0.1:50051 --server-pid "$server" --pairs "$PAIRS"
    stop "$server"
    start_project --max-wait 10m
    "${bench[@]}" idle --protocol grpc --target 127.0.0.1:50051 --server-pid "$server" \
      --waiters 50000 --connections 64 --hold 10s --json >"$out/parked.json" 2>"$out/parked.err" &
    holder=$!
    for _ in $(seq 600); do grep -q '^parked' "$out/parked.err" && break; sleep 0.1; done
    record parked-50k -- pairs --protocol grpc --target 127.0.0.1:50051 --server-pid "$server" --pairs "$PAIRS"
    wait "$holder"
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1])); d["label"] = "parked-50k-holder"
print(json.dumps(d))' "$out/parked.json" | tee -a "$results"
    stop "$server"
  done
fi

if [[ $ONLY == all || $ONLY == redis ]]; then
  # Redis, both replicas and the local-engine server share core 0; the load
  # runs on core 1. Redis keeps nothing on disk.
  redis_port=6390
  "${server_cpu[@]}" redis-server --port $redis_port --save '' --appendonly no --loglevel warning \
    >"$out/redis.log" 2>&1 &
  pids+=($!)
  wait_for_port $redis_port
  redis=(--redis-url redis://127.0.0.1:$redis_port)
  start_replica() { # GRPC_PORT HTTP_PORT [ARGS]; sets $replica
    local grpc=$1 http=$2
    shift 2
    "${server_cpu[@]}" "$bin/rendezvous" "${redis[@]}" --grpc-addr 127.0.0.1:$grpc \
      --http-addr 127.0.0.1:$http "$@" >"$out/replica-$grpc.log" 2>&1 &
    replica=$!
    pids+=("$replica")
    wait_for_port "$grpc"
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && return; sleep 0.1; done
    echo "replica on $grpc never became ready" >&2
    return 1
  }
  start_replica 20081 20091
  a=$replica
  start_replica 20082 20092
  b=$replica
  start_project
  both=(--target 127.0.0.1:20081,127.0.0.1:20082 --server-pid "$a,$b" "${redis[@]}")
  for round in $(seq "$ROUNDS"); do
    echo "== redis round $round of $ROUNDS"
    record redis-1 -- pairs "${both[@]}" --concurrency 1 --pairs 5000 --warmup 500
    record local-1 -- pairs --target 127.0.0.1:50051 --server-pid "$server" --concurrency 1 --pairs 5000 --warmup 500
    record redis-128 -- pairs "${both[@]}" --concurrency 128 --pairs "$PAIRS"
    record local-128 -- pairs --target 127.0.0.1:50051 --server-pid "$server" --concurrency 128 --pairs "$PAIRS"
  done
  stop "$a"
  stop "$b"
  stop "$server"
  # Memory and capacity: 20,000 callers parked across both replicas (10,000
  # each), then all paired by partners on the other replica.
  start_replica 20081 20091 --max-wait 10m
  a=$replica
  start_replica 20082 20092 --max-wait 10m
  b=$replica
  both=(--target 127.0.0.1:20081,127.0.0.1:20082 --server-pid "$a,$b" "${redis[@]}")
  record redis-idle-20k -- idle "${both[@]}" --waiters 20000 --connections 64
  stop "$a"
  stop "$b"
fi

if [[ $ONLY == all || $ONLY == topologies ]]; then
  echo "== Redis topologies: pair latency (one primary against a cluster), failover"
  cargo test --quiet --release --test integration -- --ignored --nocapture --test-threads 1 \
    redis_measure 2>/dev/null | grep '^MEASURE' | tee "$out/topologies.txt"
fi

if [[ $ONLY == all || $ONLY == engine ]]; then
  cargo bench --quiet --bench engine -- --noplot 2>&1 | tee "$out/engine.txt"
fi

python3 - "$results" <<'PY'
import json, statistics, sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs[d["label"]].append(d)

def med(label, key):
    values = [r[key] for r in runs.get(label, []) if key in r]
    return statistics.median(values) if values else None

print("\n## Results (medians)\n")
if "grpc-project" in runs:
    print("| case | project | ceiling | project / ceiling |")
    print("| --- | --- | --- | --- |")
    for proto in ["grpc", "http"]:
        p, c = f"{proto}-project", f"{proto}-ceiling"
        for key, name in [("server_cpu_us_per_pair", "server CPU µs per pair"),
                          ("pairs_per_second", "pairs/s"),
                          ("latency_p50_us", "pair latency p50 µs"),
                          ("latency_p99_us", "pair latency p99 µs"),
                          ("latency_p999_us", "pair latency p999 µs"),
                          ("latency_max_us", "pair latency max µs")]:
            pv, cv = med(p, key), med(c, key)
            print(f"| {proto}: {name} | {pv:.1f} | {cv:.1f} | {pv / cv:.3f} |")
        errors = sum(r["errors"] + r["timeouts"] for r in runs[p] + runs[c])
        print(f"| {proto}: errors + timeouts, all rounds | {errors} | | |")
for label, r in ((l, rs[-1]) for l, rs in runs.items() if l.startswith("idle")):
    print(f"\n{label}: {r['waiters']} parked over {r['connections']} connections: "
          f"{r.get('bytes_per_parked_caller', float('nan')):.0f} B each "
          f"({r['bytes_per_parked_caller'] / 1024:.2f} KiB), "
          f"released in {r['release_seconds']:.2f} s, {r['answered_ok']} OK, {r['failed']} failed")
if "redis-128" in runs:
    print("\n| case | Redis engine, 2 replicas | local engine | Redis / local |")
    print("| --- | --- | --- | --- |")
    for c in ["1", "128"]:
        for key, name in [("latency_p50_us", "pair latency p50 µs"),
                          ("latency_p99_us", "pair latency p99 µs"),
                          ("pairs_per_second", "pairs/s"),
                          ("server_cpu_us_per_pair", "server CPU µs per pair")]:
            rv, lv = med(f"redis-{c}", key), med(f"local-{c}", key)
            print(f"| {c} in flight: {name} | {rv:.1f} | {lv:.1f} | {rv / lv:.3f} |")
        print(f"| {c} in flight: Redis CPU µs per pair | {med(f'redis-{c}', 'redis_cpu_us_per_pair'):.1f} | | |")
        print(f"| {c} in flight: Redis round trips per pair | {med(f'redis-{c}', 'redis_round_trips_per_pair'):.3f} | | |")
        errors = sum(r["errors"] + r["timeouts"] for r in runs[f"redis-{c}"] + runs[f"local-{c}"])
        print(f"| {c} in flight: errors + timeouts, all rounds | {errors} | | |")
    print("\ncommands per pair in Redis (128 in flight, last round):",
          json.dumps(runs["redis-128"][-1]["redis_commands_per_pair"]))
    if "redis-idle-20k" in runs:
        r = runs["redis-idle-20k"][-1]
        print(f"\nRedis engine, {r['waiters']} parked across two replicas: "
              f"{r['bytes_per_parked_caller']:.0f} B each in the replicas "
              f"({r['bytes_per_parked_caller'] / 1024:.2f} KiB), "
              f"{r['redis_bytes_per_parked_caller']:.0f} B each in Redis; "
              f"released in {r['release_seconds']:.2f} s, {r['answered_ok']} OK, {r['failed']} failed")
if "group-pair" in runs:
    per_caller = med("group-pair", "server_cpu_us_per_pair") / 2
    print("\n| group | server CPU µs per member | per caller of a pair | ratio | members/s | failed, all rounds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for parties in [2, 8, 64]:
        label = f"group-{parties}"
        per_member = med(label, "server_cpu_us_per_member")
        failed = sum(r["failed"] for r in runs[label])
        print(f"| {parties} | {per_member:.1f} | {per_caller:.1f} | {per_member / per_caller:.2f} "
              f"| {med(label, 'members_per_second'):.0f} | {failed} |")
if "gather-1000" in runs:
    times = sorted(r["last_arrival_to_last_answer_ms"] for r in runs["gather-1000"])
    failed = sum(r["failed"] for r in runs["gather-1000"])
    print(f"\na group of 1,000: last arrival to last answer {', '.join(f'{t:.1f}' for t in times)} ms "
          f"(median {statistics.median(times):.1f}), server CPU meanwhile "
          f"{med('gather-1000', 'server_cpu_ms_to_complete'):.0f} ms; {failed} failed; "
          f"{med('gather-1000', 'bytes_per_parked_member'):.0f} B per parked member")
if "gather-64x320" in runs:
    r = runs["gather-64x320"][-1]
    print(f"\n{r['parked_members']} members parked in {r['groups']} groups of {r['parties']}: "
          f"{r['bytes_per_parked_member']:.0f} B each ({r['bytes_per_parked_member'] / 1024:.2f} KiB); "
          f"the groups completed in {r['last_arrival_to_last_answer_ms']:.1f} ms, {r['failed']} failed")
if "parked-0" in runs:
    none, parked = med("parked-0", "pairs_per_second"), med("parked-50k", "pairs_per_second")
    failed = sum(r["failed"] for r in runs.get("parked-50k-holder", []))
    print(f"\npairs/s with 50,000 parked: {parked:.0f}; with none: {none:.0f}; "
          f"ratio {parked / none:.3f}; parked callers that failed: {failed}")
PY
