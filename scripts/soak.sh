#!/usr/bin/env bash
# The soak: PAIRS pairs (default one million) over both protocols, with one
# caller in ten cancelling and one in ten timing out (see
# src/bin/rendezvous-bench/soak.rs). Passes when no pair was wrong, the
# parked-callers gauge is back to 0, and the server's RSS is within 10% of
# what it was after the warm-up.
#
#   scripts/soak.sh
#   PAIRS=100000 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-1000000}
out=${OUT:-target/soak}
mkdir -p "$out"

source scripts/lib.sh

cargo build --quiet --release --bin rendezvous --bin rendezvous-bench

"${server_cpu[@]}" target/release/rendezvous --grpc-addr 127.0.0.1:50151 --http-addr 127.0.0.1:3131 \
  >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait 2>/dev/null || true' EXIT
wait_for_port 50151
wait_for_port 3131

"${load_cpu[@]}" target/release/rendezvous-bench --json soak \
  --grpc 127.0.0.1:50151 --http 127.0.0.1:3131 --server-pid "$server" --pairs "$PAIRS" \
  | tee "$out/result.json"
python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["pass"] else 1)' "$out/result.json"
