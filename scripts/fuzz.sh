#!/usr/bin/env bash
# Fuzzes each target for MINUTES minutes (default 5) with cargo-fuzz
# (libFuzzer), starting from the committed corpus in fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh                     # every target, 5 minutes each
#   MINUTES=1 scripts/fuzz.sh gateway   # one target
#
# New inputs go to fuzz/corpus-scratch/<target>/ (not committed). A failing
# input lands in fuzz/artifacts/<target>/: fix the bug, then copy the input
# into fuzz/corpus/<target>/, where `cargo test` replays it from then on
# (tests/integration/fuzz_corpus.rs).
#
# cargo-fuzz needs a nightly toolchain (for the sanitizer flags); the script
# installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-5}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(id grpc_timeout http_target gateway auth)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

cargo +nightly fuzz build -O
for target in "${targets[@]}"; do
  scratch="fuzz/corpus-scratch/$target"
  mkdir -p "$scratch"
  echo "== $target: $MINUTES min"
  cargo +nightly fuzz run -O "$target" "$scratch" "fuzz/corpus/$target" -- \
    -max_total_time=$((MINUTES * 60)) -print_final_stats=1 -timeout=10 2>&1 |
    grep -E '^(#[0-9]+ +DONE|stat::|Done|==[0-9]+== ERROR|SUMMARY|artifact_prefix|Test unit written)' || true
  test -z "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" || {
    echo "$target: failing inputs in fuzz/artifacts/$target" >&2
    exit 1
  }
done
