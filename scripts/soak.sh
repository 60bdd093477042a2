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

start_replicas "$REPLICAS" 20150

"${load_cpu[@]}" target/release/rendezvous-bench --json soak \
  --grpc "$grpc" --http "$http" --server-pid "$(IFS=,; echo "${servers[*]}")" \
  "${redis[@]}" --pairs "$PAIRS" \
  | tee "$out/result.json"
python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["pass"] else 1)' "$out/result.json"
