#!/usr/bin/env bash
# The example clients, each against the real binary: Rust with the crate
# built as a client alone (examples/client.rs), Python (grpcio) and Node
# (@grpc/grpc-js) over gRPC, and Node over gRPC-Web
# (@connectrpc/connect-node). Installs their pinned dependencies, generates
# their code from proto/ (nothing generated is committed), and starts one
# server for all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_buf

cargo build --quiet --bin rendezvous
grpc=$(free_port)
http=$(free_port)
origin=https://app.example
log=$(mktemp)
target/debug/rendezvous --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" \
  --cors-allow-origin "$origin" 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null; rm -f "$log"' EXIT
wait_for_port "$grpc"

echo "== Rust, the client-only build (examples/client.rs)"
cargo run --quiet --no-default-features --example client -- "127.0.0.1:$grpc"

echo "== Python (grpcio)"
examples/clients/python/run.sh "127.0.0.1:$grpc"

cd examples/clients/node
npm ci --silent --no-audit --no-fund
rm -rf gen
"$buf" generate
echo "== Node (@grpc/grpc-js)"
node grpc.mjs "127.0.0.1:$grpc"
echo "== Node, gRPC-Web (@connectrpc/connect-node)"
node grpc-web.mjs "http://127.0.0.1:$grpc" "$origin"
