#!/usr/bin/env bash
# Instructions per pair, counted by valgrind (callgrind), for an OLD server
# binary against this tree's, over gRPC and HTTP. Instruction counts, unlike
# CPU time, do not move with what else the machine is doing: this is the
# figure to compare when the CPU measurements' noise is larger than the
# difference sought.
#
# Each server runs under callgrind twice, for SMALL and then LARGE pairs
# (after the load tool's warm-up); the difference of the two totals over
# LARGE - SMALL pairs leaves out start-up, warm-up and shutdown.
#
# ENGINE=redis runs each server as a replica on a redis-server of its own,
# itself under callgrind, and reports Redis's instructions per pair too.
# KEYED=1 sends an attempt key on every call (gRPC only).
#
#   scripts/bench-instructions.sh /tmp/old-target/release/rendezvous
#   ENGINE=redis KEYED=1 scripts/bench-instructions.sh /tmp/old-target/release/rendezvous
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
old=$(realpath "$1")
cargo build --quiet --release --bin rendezvous --bin rendezvous-bench
SMALL=${SMALL:-1000}
LARGE=${LARGE:-6000}
ENGINE=${ENGINE:-local}
out=${OUT:-target/bench-instructions}; mkdir -p "$out"
new=target/release/rendezvous
protocols=(grpc http); keys=()
[ -n "${KEYED:-}" ] && protocols=(grpc) && keys=(--attempt-keys)

for port in 50051 3030; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "something already listens on 127.0.0.1:$port" >&2; exit 1
  fi
done

total() { sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$1"; }

# "server redis" instructions of one run serving `pairs` pairs over
# `protocol` (redis 0 on the local engine).
instructions() {
  local bin=$1 protocol=$2 pairs=$3 name extra=() redis= port
  name=$out/callgrind.$(basename "$(dirname "$(dirname "$bin")")").$ENGINE.$protocol.$pairs
  if [ "$ENGINE" = redis ]; then
    port=$(free_port)
    valgrind --tool=callgrind --callgrind-out-file="$name.redis" \
      redis-server --port "$port" --save '' --appendonly no >"$out/redis.log" 2>&1 &
    redis=$!
    wait_for_port "$port"
    extra=(--redis-url "redis://127.0.0.1:$port")
  fi
  valgrind --tool=callgrind --callgrind-out-file="$name" "$bin" \
    --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:3030 "${extra[@]}" >"$out/server.log" 2>&1 &
  local server=$!
  wait_for_port 50051; wait_for_port 3030
  until [ "$(curl -s http://127.0.0.1:3030/readyz || true)" = OK ]; do sleep 0.2; done
  local target=127.0.0.1:50051; [ "$protocol" = http ] && target=127.0.0.1:3030
  target/release/rendezvous-bench pairs --protocol "$protocol" --target $target \
    --pairs "$pairs" --warmup 200 --concurrency 16 "${keys[@]}" >/dev/null
  kill -TERM $server; wait $server 2>/dev/null || true
  if [ -n "$redis" ]; then
    kill -TERM $redis; wait $redis 2>/dev/null || true
    echo "$(total "$name") $(total "$name.redis")"
  else
    echo "$(total "$name") 0"
  fi
}

for protocol in "${protocols[@]}"; do
  for which in old new; do
    bin=$old; [ $which = new ] && bin=$new
    read -r small small_redis < <(instructions "$bin" "$protocol" "$SMALL")
    read -r large large_redis < <(instructions "$bin" "$protocol" "$LARGE")
    python3 -c '
import json, sys
engine, keyed, which, protocol, s, l, rs, rl, n = sys.argv[1:]
d = {"label": f"instructions-{engine}-{protocol}{keyed}-{which}",
     "instructions_per_pair": (int(l) - int(s)) / int(n)}
if engine == "redis":
    d["redis_instructions_per_pair"] = (int(rl) - int(rs)) / int(n)
print(json.dumps(d))' "$ENGINE" "${KEYED:+-keyed}" "$which" "$protocol" \
      "$small" "$large" "$small_redis" "$large_redis" "$((LARGE - SMALL))"
  done
done
