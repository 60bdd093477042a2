#!/usr/bin/env bash
# Runs the whole `cargo test` RUNS times (default 5) while every core is kept
# busy by a CPU hog, and reports each failure: a test that depends on a
# real-time margin a loaded machine cannot keep shows up here. Passes only
# if every run passes. Results: TESTING.md.
#
#   scripts/flake-hunt.sh
#   RUNS=20 scripts/flake-hunt.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
out=${OUT:-target/flake-hunt}
mkdir -p "$out"

# Build before the hogs start, so that every run only tests.
cargo test --no-run --quiet 2>/dev/null

hogs=()
cleanup() { kill "${hogs[@]}" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq "$(nproc)"); do
  (while :; do :; done) &
  hogs+=($!)
done

passed=0
for run in $(seq "$RUNS"); do
  log="$out/run-$run.log"
  start=$(date +%s)
  if cargo test >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "run $run of $RUNS: passed in $(($(date +%s) - start)) s"
  else
    echo "run $run of $RUNS: FAILED in $(($(date +%s) - start)) s (log: $log)"
    grep -E '^test .* FAILED$|^---- .* ----$|panicked at' "$log" | sed 's/^/    /' || true
  fi
done
echo "flake hunt: $passed of $RUNS runs passed with $(nproc) CPU hogs running"
[ "$passed" -eq "$RUNS" ]
