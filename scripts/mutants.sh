#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of the files where the logic lives: each
# mutant is a small change to the code (a `>` made `>=`, a function body
# replaced by a default), and the test suite must fail for every one of
# them. A mutant that survives is either a missing test or a change that
# cannot matter; the latter are excluded in .cargo/mutants.toml, each with
# its reason. Results and counts: TESTING.md.
#
#   scripts/mutants.sh                  # every file, about 3.5 hours here
#   scripts/mutants.sh -f src/grpc.rs   # one file of either group
#
# It installs cargo-mutants and cargo-nextest if they are missing. The
# reports go to target/mutants/{engine,transports}/mutants.out/.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

out=${OUT:-target/mutants}
mkdir -p "$out/engine" "$out/redis" "$out/transports"
common=(--test-tool nextest --profile mutants --timeout 120 --no-shuffle)
engine=(-f src/pairing.rs -f src/pairing/values.rs -f src/pairing/errors.rs -f src/pairing/engine.rs
  -f src/pairing/any.rs -f src/pairing/local.rs -f src/pairing/local/shard.rs -f src/pairing/attempts.rs)
redis=(-f src/pairing/redis.rs -f 'src/pairing/redis/*.rs')
transports=(-f src/service.rs -f src/grpc.rs -f src/gateway.rs -f src/auth.rs -f src/health.rs
  -f src/server.rs -f src/metrics.rs -f src/json.rs -f src/config.rs -f src/client.rs -f src/cli.rs)
if [ $# -gt 0 ]; then
  # Files named on the command line: run each group only on its own.
  engine=() redis=() transports=()
  for arg in "$@"; do
    case $arg in
      src/pairing/redis.rs | src/pairing/redis/*) redis+=(-f "$arg") ;;
      src/pairing*) engine+=(-f "$arg") ;;
      -f) ;;
      *) transports+=(-f "$arg") ;;
    esac
  done
fi

status=0
if [ ${#engine[@]} -gt 0 ]; then
  # The engine: the whole suite, the loom model included.
  cargo mutants "${common[@]}" -o "$out/engine" "${engine[@]}" || status=$?
fi
if [ ${#redis[@]} -gt 0 ]; then
  # The Redis engine: only the tests that run it (the engine suite's Redis,
  # Sentinel and cluster parts, the replicas, the faults and failovers, the
  # Redis unit tests) can catch a mutant there, and the others would triple
  # the time.
  cargo mutants "${common[@]}" -o "$out/redis" "${redis[@]}" \
    -- -E 'test(/redis|replicas|sentinel|cluster/)' || status=$?
fi
if [ ${#transports[@]} -gt 0 ]; then
  # The rest: the whole suite but the loom model, which runs the local
  # engine's shard code alone and so cannot catch a mutant anywhere else.
  cargo mutants "${common[@]}" -o "$out/transports" "${transports[@]}" \
    -- -E 'not test(/^pairing::local::model::/)' || status=$?
fi

python3 - "$out" <<'PY'
import json, pathlib, sys
for report in sorted(pathlib.Path(sys.argv[1]).glob("*/mutants.out/outcomes.json")):
    d = json.loads(report.read_text())
    print(f"{report.parent.parent.name}: {d['total_mutants']} mutants: {d['caught']} caught, "
          f"{d['missed']} missed, {d['unviable']} unviable, {d['timeout']} timed out")
    missed = report.parent / "missed.txt"
    if missed.exists() and missed.read_text().strip():
        print("  missed:\n" + "".join(f"    {l}\n" for l in missed.read_text().splitlines()))
PY
exit $status
