#!/usr/bin/env bash
# Instructions per pair (callgrind's Ir count), for each binary given, over
# gRPC and the legacy HTTP endpoint: a figure that a busy machine does not
# move, unlike CPU time, for telling whether a change costs the hot path.
# Each binary runs twice, 500 and 2,500 pairs, and the difference is
# divided by 2,000, so that start-up and shutdown cancel out.
#
#   scripts/instructions.sh OLD/rendezvous target/release/rendezvous
#   LOAD_ARGS="--traceparent 00-...-01" scripts/instructions.sh target/release/rendezvous
#
# LOAD_ARGS go to the load tool, to compare what callers send rather than
# which binary serves them.
#
# To build the binary from before a change:
#   git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --bin rendezvous)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }
cargo build --quiet --release --bin rendezvous-bench

instructions() { # binary protocol port pairs
  local out
  out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$1" \
    --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:3030 >/dev/null 2>&1 &
  local pid=$!
  wait_for_port 50051
  wait_for_port 3030
  target/release/rendezvous-bench pairs --protocol "$2" --target "127.0.0.1:$3" \
    --pairs "$4" --warmup 0 --concurrency 16 --connections 2 ${LOAD_ARGS:-} >/dev/null
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
  rm -f "$out"
}

for protocol in grpc http; do
  port=50051
  [ "$protocol" = http ] && port=3030
  for binary in "$@"; do
    small=$(instructions "$binary" "$protocol" "$port" 500)
    large=$(instructions "$binary" "$protocol" "$port" 2500)
    echo "$protocol $binary: $(((large - small) / 2000)) instructions per pair"
  done
done
