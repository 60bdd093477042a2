#!/usr/bin/env bash
# The soak: PAIRS pairs (default one million) over both protocols, with one
# caller in ten cancelling and one in ten timing out (see
# src/bin/rendezvous-bench/soak.rs). Passes when no pair was wrong, the
# parked-callers gauge is back to 0, and the server's RSS is within 10% of
# what it was after the warm-up.
#
# With REPLICAS=2, it runs two replicas on a Redis of its own, sends the two
# callers of each pair to different replicas, and also passes only if no key
# is left in Redis afterwards.
#
#   scripts/soak.sh
#   PAIRS=100000 scripts/soak.sh
#   REPLICAS=2 PAIRS=100000 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-1000000}
REPLICAS=${REPLICAS:-1}
out=${OUT:-target/soak}
mkdir -p "$out"

source scripts/lib.sh

cargo build --quiet --release --bin rendezvous --bin rendezvous-bench

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

engine=()
redis=()
if [ "$REPLICAS" -gt 1 ]; then
  redis_port=6391
  "${server_cpu[@]}" redis-server --port $redis_port --save '' --appendonly no --loglevel warning \
    >"$out/redis.log" 2>&1 &
  pids+=($!)
  wait_for_port $redis_port
  engine=(--redis-url "redis://127.0.0.1:$redis_port")
  redis=(--redis-url "redis://127.0.0.1:$redis_port")
fi

grpc=() http=() servers=()
for i in $(seq "$REPLICAS"); do
  # Below the ephemeral port range (32768 and up), where a client socket
  # could already hold the port.
  g=$((20150 + i)) h=$((20160 + i))
  "${server_cpu[@]}" target/release/rendezvous --grpc-addr 127.0.0.1:$g --http-addr 127.0.0.1:$h \
    "${engine[@]}" >"$out/server-$i.log" 2>&1 &
  pids+=($!)
  servers+=($!)
  wait_for_port $g
  wait_for_port $h
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$h/readyz" >/dev/null && break; sleep 0.1; done
  grpc+=("127.0.0.1:$g") http+=("127.0.0.1:$h")
done
join() { local IFS=,; echo "$*"; }

"${load_cpu[@]}" target/release/rendezvous-bench --json soak \
  --grpc "$(join "${grpc[@]}")" --http "$(join "${http[@]}")" --server-pid "$(join "${servers[@]}")" \
  "${redis[@]}" --pairs "$PAIRS" \
  | tee "$out/result.json"
python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["pass"] else 1)' "$out/result.json"
