# Sourced by the scripts beside it, not run on its own.

# Servers on core 0 and the load on core 1, when there are two cores.
if [ "$(nproc)" -ge 2 ]; then
  server_cpu=(taskset -c 0)
  load_cpu=(taskset -c 1)
else
  server_cpu=()
  load_cpu=()
fi

# Waits up to 10 s for something to listen on 127.0.0.1:PORT.
wait_for_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on port $1" >&2
  return 1
}

# buf (from PyPI's buf-bin, pinned) in target/tools/bin, installed once.
BUF_VERSION=1.75.0
ensure_buf() {
  if [ "$(target/tools/bin/buf --version 2>/dev/null)" != "$BUF_VERSION" ]; then
    python3 -m venv target/tools
    target/tools/bin/pip install --quiet --disable-pip-version-check "buf-bin==$BUF_VERSION"
  fi
  buf="$PWD/target/tools/bin/buf"
}

# A TCP port nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# hadolint and kubernetes-validate (PyPI, pinned in scripts/deploy-tools.txt)
# in a venv of their own, target/deploy-tools, installed once per change of
# that file.
ensure_deploy_tools() {
  local venv=target/deploy-tools
  if ! cmp -s scripts/deploy-tools.txt "$venv/installed.txt"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/deploy-tools.txt
    cp scripts/deploy-tools.txt "$venv/installed.txt"
  fi
  hadolint="$PWD/$venv/bin/hadolint"
  kubernetes_validate="$PWD/$venv/bin/kubernetes-validate"
  deploy_python="$PWD/$venv/bin/python"
}

# Starts REPLICAS release servers, with gRPC on port BASE+i and HTTP on
# BASE+10+i (below the ephemeral range, where a client socket could hold the
# port), each on a Redis of its own on port BASE if there is more than one;
# logs go to $out. Sets grpc and http (comma-separated, in order), servers
# (their pids) and redis (the bench's --redis-url flag, if any), and adds
# every pid to pids for the caller's trap.
start_replicas() {
  local replicas=$1 base=$2 engine=()
  redis=() servers=()
  if [ "$replicas" -gt 1 ]; then
    "${server_cpu[@]}" redis-server --port "$base" --save '' --appendonly no --loglevel warning \
      >"$out/redis.log" 2>&1 &
    pids+=($!)
    wait_for_port "$base"
    engine=(--redis-url "redis://127.0.0.1:$base")
    redis=(--redis-url "redis://127.0.0.1:$base")
  fi
  local g h i grpc_list=() http_list=()
  for i in $(seq "$replicas"); do
    g=$((base + i)) h=$((base + 10 + i))
    "${server_cpu[@]}" target/release/rendezvous --grpc-addr 127.0.0.1:$g --http-addr 127.0.0.1:$h \
      "${engine[@]}" >"$out/server-$i.log" 2>&1 &
    pids+=($!)
    servers+=($!)
    wait_for_port $g
    wait_for_port $h
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$h/readyz" >/dev/null && break; sleep 0.1; done
    grpc_list+=("127.0.0.1:$g") http_list+=("127.0.0.1:$h")
  done
  grpc=$(IFS=,; echo "${grpc_list[*]}")
  http=$(IFS=,; echo "${http_list[*]}")
}
