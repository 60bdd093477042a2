#!/usr/bin/env bash
# What traces cost (issue 24), side by side in one run, on the local engine:
# an OLD server binary (built from a commit before the OTLP exporter) and
# this tree's with exporting off, then this tree's exporting every span
# (OTEL_TRACES_SAMPLER=always_on) to scripts/otlp-receiver.py. CPU per pair
# over ROUNDS rounds (gRPC and HTTP); the receiver says how many spans came.
#
#   git worktree add /tmp/old f61961a~1
#   (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --bin rendezvous)
#   scripts/bench-traces.sh /tmp/old-target/release/rendezvous
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
old=$(realpath "$1")
cargo build --quiet --release --bin rendezvous --bin rendezvous-bench
ROUNDS=${ROUNDS:-5}
PAIRS=${PAIRS:-100000}
out=${OUT:-target/bench-traces}; mkdir -p "$out"; results=$out/results.jsonl; : > "$results"
venv=target/otlp-receiver
if ! cmp -s scripts/otlp-receiver.txt "$venv/installed.txt"; then
  rm -rf "$venv"; python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/otlp-receiver.txt
  cp scripts/otlp-receiver.txt "$venv/installed.txt"
fi
new=target/release/rendezvous
bench=("${load_cpu[@]}" target/release/rendezvous-bench)
server=; receiver=
trap 'kill $server $receiver 2>/dev/null || true' EXIT
start() { "${server_cpu[@]}" "$@" --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:3030 >$out/server.log 2>&1 & server=$!; wait_for_port 50051; wait_for_port 3030; sleep 0.3; }
stop() { kill $server; wait $server 2>/dev/null || true; }
record() { local label=$1; shift; "${bench[@]}" "$@" --json | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["label"]=sys.argv[1]; print(json.dumps(d))' "$label" | tee -a $results; }
pairs() {
  record "grpc-$1" pairs --protocol grpc --target 127.0.0.1:50051 --server-pid $server --pairs $PAIRS
  record "http-$1" pairs --protocol http --target 127.0.0.1:3030 --server-pid $server --pairs $PAIRS
}
for round in $(seq $ROUNDS); do
  start $old; pairs old; stop
  start $new; pairs off; stop
  port=$(free_port)
  "${load_cpu[@]}" "$venv/bin/python" scripts/otlp-receiver.py --listen "127.0.0.1:$port" --count >>$out/receiver.log 2>&1 & receiver=$!
  wait_for_port "$port"
  OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port" OTEL_TRACES_SAMPLER=always_on OTEL_BSP_MAX_QUEUE_SIZE=65536 start $new
  pairs on
  curl -s http://127.0.0.1:3030/metrics | grep '^rendezvous_trace_spans' | tee -a $out/spans.txt
  stop
  kill $receiver; wait $receiver 2>/dev/null || true
  tail -1 $out/receiver.log
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def median(label, key="server_cpu_us_per_pair"):
    return statistics.median(r[key] for r in rows if r["label"] == label)
for proto in ("grpc", "http"):
    old, off, on = (median(f"{proto}-{w}") for w in ("old", "off", "on"))
    print(f"{proto}: server CPU per pair (median, µs): old {old:.2f}, off {off:.2f} ({off/old:.3f}x), on {on:.2f} ({on/old:.3f}x)")
PY
