#!/usr/bin/env bash
# What attempt keys cost (issue 23), side by side in one run: an OLD server
# binary (built from a commit before them) against this tree's, calls without
# a key on both and calls with a key (--attempt-keys) on this one, on the
# local engine and as a replica on a Redis of the script's own. CPU per pair
# over ROUNDS rounds (gRPC and HTTP), then memory per parked caller.
#
#   git worktree add /tmp/old f0f13e3
#   (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --bin rendezvous)
#   scripts/bench-attempts.sh /tmp/old-target/release/rendezvous
#
# KEYED_OLD=1 also runs the OLD binary with keys, for an OLD that has them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
old=$(realpath "$1")
cargo build --quiet --release --bin rendezvous --bin rendezvous-bench
ROUNDS=${ROUNDS:-5}
PAIRS=${PAIRS:-100000}
out=${OUT:-target/bench-attempts}; mkdir -p "$out"; results=$out/results.jsonl; : > "$results"
new=target/release/rendezvous
bench=("${load_cpu[@]}" target/release/rendezvous-bench)
redis_port=$(free_port)
redis-server --port "$redis_port" --save '' --appendonly no >/dev/null &
redis=$!
trap 'kill $redis 2>/dev/null; kill $server 2>/dev/null || true' EXIT
wait_for_port "$redis_port"
start() { "${server_cpu[@]}" "$1" --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:3030 "${@:2}" >$out/server.log 2>&1 & server=$!; wait_for_port 50051; wait_for_port 3030; sleep 0.3; }
stop() { kill $server; wait $server 2>/dev/null || true; }
record() { local label=$1; shift; "${bench[@]}" "$@" --json | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["label"]=sys.argv[1]; print(json.dumps(d))' "$label" | tee -a $results; }
for round in $(seq $ROUNDS); do
  for engine in local redis; do
    extra=(); load=(); [ $engine = redis ] && extra=(--redis-url "redis://127.0.0.1:$redis_port" --redis-key-prefix "ab$round:") && load=(--redis-url "redis://127.0.0.1:$redis_port")
    for which in old new; do
      bin=$old; [ $which = new ] && bin=$new
      start $bin "${extra[@]}"
      record "$engine-grpc-$which" pairs --protocol grpc --target 127.0.0.1:50051 --server-pid $server --pairs $PAIRS "${load[@]}"
      record "$engine-http-$which" pairs --protocol http --target 127.0.0.1:3030 --server-pid $server --pairs $PAIRS "${load[@]}"
      if [ $which = new ]; then
        record "$engine-grpc-keyed" pairs --protocol grpc --target 127.0.0.1:50051 --server-pid $server --pairs $PAIRS --attempt-keys "${load[@]}"
      elif [ -n "${KEYED_OLD:-}" ]; then
        # An OLD binary that has attempt keys too: what a change to them costs.
        record "$engine-grpc-keyed-old" pairs --protocol grpc --target 127.0.0.1:50051 --server-pid $server --pairs $PAIRS --attempt-keys "${load[@]}"
      fi
      stop
    done
  done
done
# Memory per parked caller: one run each (the figure varies little).
for engine in local redis; do
  extra=(--max-wait 10m); [ $engine = redis ] && extra+=(--redis-url "redis://127.0.0.1:$redis_port" --redis-key-prefix "abm:")
  for which in old new keyed; do
    bin=$old; [ $which != old ] && bin=$new
    keys=(); [ $which = keyed ] && keys=(--attempt-keys)
    start $bin "${extra[@]}"
    record "$engine-idle-$which" idle --protocol grpc --target 127.0.0.1:50051 --server-pid $server --waiters 20000 --connections 64 "${keys[@]}"
    stop
  done
done
