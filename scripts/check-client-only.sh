#!/usr/bin/env bash
# The client-only build (`default-features = false`): what a Rust service
# that depends on this crate for its client and its generated types compiles.
# It must hold none of the server's dependencies (Redis, a hyper server,
# Prometheus, OpenTelemetry), and be warning-free with its tests passing.
# scripts/clients.sh runs its example (examples/client.rs) against the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

server_only=(redis prometheus-client opentelemetry opentelemetry_sdk opentelemetry-otlp
  tracing-opentelemetry tracing-subscriber tonic-reflection tonic-web tower-http axum clap)
tree=$(cargo tree --no-default-features --edges normal --prefix none)
found=0
for crate in "${server_only[@]}"; do
  if grep -q "^$crate v" <<<"$tree"; then
    echo "client-only build: depends on $crate, a server-only crate" >&2
    found=1
  fi
done
if cargo tree --no-default-features --edges features --invert hyper | grep -q 'hyper feature "server"'; then
  echo "client-only build: hyper is built with its server" >&2
  found=1
fi
[ "$found" = 0 ]

cargo clippy --no-default-features --all-targets -- -D warnings
cargo test --no-default-features
echo "client-only build: none of ${server_only[*]} nor hyper's server; clippy clean; tests pass"
