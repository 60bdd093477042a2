#!/usr/bin/env bash
# Instructions per pair, counted by valgrind (callgrind), for an OLD server
# binary against this tree's, on the local engine over gRPC and HTTP, with
# calls without attempt keys. Instruction counts, unlike CPU time, do not
# move with what else the machine is doing: this is the figure to compare
# when the CPU measurements' noise is larger than the difference sought.
#
# Each server runs under callgrind twice, for SMALL and then LARGE pairs
# (after the load tool's warm-up); the difference of the two totals over
# LARGE - SMALL pairs leaves out start-up, warm-up and shutdown.
#
#   scripts/bench-instructions.sh /tmp/old-target/release/rendezvous
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
old=$(realpath "$1")
cargo build --quiet --release --bin rendezvous --bin rendezvous-bench
SMALL=${SMALL:-1000}
LARGE=${LARGE:-6000}
out=${OUT:-target/bench-instructions}; mkdir -p "$out"
new=target/release/rendezvous

# Total instructions of one server run under callgrind, serving `pairs`
# pairs over `protocol`.
instructions() {
  local bin=$1 protocol=$2 pairs=$3 file
  file=$out/callgrind.$(basename "$(dirname "$(dirname "$bin")")").$protocol.$pairs
  valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" \
    --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:3030 >"$out/server.log" 2>&1 &
  local server=$!
  wait_for_port 50051; wait_for_port 3030
  local target=127.0.0.1:50051; [ "$protocol" = http ] && target=127.0.0.1:3030
  target/release/rendezvous-bench pairs --protocol "$protocol" --target $target \
    --pairs "$pairs" --warmup 200 --concurrency 16 >/dev/null
  kill -TERM $server; wait $server 2>/dev/null || true
  sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$file"
}

for protocol in grpc http; do
  for which in old new; do
    bin=$old; [ $which = new ] && bin=$new
    small=$(instructions "$bin" $protocol "$SMALL")
    large=$(instructions "$bin" $protocol "$LARGE")
    python3 -c 'import json,sys; w,p,s,l,n=sys.argv[1:]; print(json.dumps({"label": f"instructions-{p}-{w}", "instructions_per_pair": (int(l)-int(s))/int(n)}))' \
      "$which" $protocol "$small" "$large" "$((LARGE - SMALL))"
  done
done
