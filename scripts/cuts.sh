#!/usr/bin/env bash
# Random cuts: PAIRS pairs (default 10,000) whose callers' connections are
# cut at random points, each retrying with its attempt key on a random
# replica over a random protocol (see src/bin/rendezvous-bench/cuts.rs).
# Passes when no pair was one-sided, decided twice or wrong, the parked
# gauge is back to 0, and (with replicas) no key is left in Redis once the
# kept answers have expired.
#
# With REPLICAS=1 (default 2) it runs one server on the local engine; with
# more, that many replicas on a Redis of their own. SEED repeats a run.
#
#   scripts/cuts.sh
#   REPLICAS=1 scripts/cuts.sh
#   SEED=42 PAIRS=1000 scripts/cuts.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-10000}
REPLICAS=${REPLICAS:-2}
out=${OUT:-target/cuts}
mkdir -p "$out"

source scripts/lib.sh

cargo build --quiet --release --bin rendezvous --bin rendezvous-bench

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

start_replicas "$REPLICAS" 20250

seed=()
[ -n "${SEED:-}" ] && seed=(--seed "$SEED")
"${load_cpu[@]}" target/release/rendezvous-bench --json cuts \
  --grpc "$grpc" --http "$http" \
  "${redis[@]}" "${seed[@]}" --pairs "$PAIRS" \
  | tee "$out/result.json"
python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["pass"] else 1)' "$out/result.json"
