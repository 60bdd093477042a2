#!/usr/bin/env bash
# Runs the loom model of the pairing engine (src/pairing/local/model.rs) in
# release mode, with a larger preemption bound than `cargo test` uses (3).
#
#   scripts/loom.sh                               # bound 4
#   RENDEZVOUS_LOOM_PREEMPTIONS=none scripts/loom.sh   # unbounded: the
#       two-caller models finish in seconds, the three-caller ones take hours
#
# Each model prints how many interleavings it explored, and how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
export RENDEZVOUS_LOOM_PREEMPTIONS=${RENDEZVOUS_LOOM_PREEMPTIONS:-4}
cargo test --release --lib pairing::local::model -- --nocapture --test-threads 1 2>&1 |
  grep -E '^(test |loom model|test result)|panicked|assertion'
