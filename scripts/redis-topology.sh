#!/usr/bin/env bash
# Starts a Redis topology on loopback, for trying the Redis engine's modes
# by hand and for the tests, which run this same script:
#
#   scripts/redis-topology.sh sentinel PRIMARY REPLICA SENTINEL SENTINEL SENTINEL
#       a primary, its replica, and three Sentinels that watch it as "main"
#   scripts/redis-topology.sh cluster PORT PORT PORT PORT PORT PORT
#       a cluster of three primaries, each with a replica (a node's bus port
#       is its port + 10000, so keep ports under 55536)
#
# It prints a line per process ("node PORT PID"), then "ready URL" with the
# --redis-url to use, and keeps everything running until its standard input
# closes (Enter or Ctrl-D in a terminal; the test's end in a test), or, run
# in the background (its input /dev/null), until it is signalled. Then it stops every process and removes its directory:
# nothing is kept on disk (no RDB, no AOF; a cluster's nodes.conf lives in a
# temporary directory that goes with it).
set -euo pipefail

mode=${1:-}
shift || true
case "$mode:$#" in
  sentinel:5 | cluster:6) ;;
  *)
    sed -n '2,16p' "$0" >&2
    exit 2
    ;;
esac
for port in "$@"; do
  [[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || {
    echo "not a port: $port" >&2
    exit 2
  }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/rendezvous-redis.XXXXXX")
pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT TERM

# Every data node: loopback only, nothing on disk, and a replica synced at
# once (not after diskless replication's default wait of 5 s for more
# replicas), so that the topology is ready, and fails over, in seconds.
start_node() {
  local port=$1
  shift
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" --dbfilename "dump-$port.rdb" --logfile "$dir/$port.log" \
    --repl-diskless-sync-delay 0 --daemonize no "$@" &
  pids+=($!)
  echo "node $port $!"
}

until_answers() {
  local port=$1
  for _ in $(seq 1 200); do
    redis-cli -p "$port" PING >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "Redis on port $port did not start; its log:" >&2
  cat "$dir/$port.log" >&2 || true
  exit 1
}

# Waits until `command` (a shell snippet) succeeds, for up to 30 s.
until_true() {
  local what=$1 command=$2
  for _ in $(seq 1 300); do
    eval "$command" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "timed out waiting for $what" >&2
  exit 1
}

case $mode in
  sentinel)
    primary=$1 replica=$2
    start_node "$primary"
    until_answers "$primary"
    start_node "$replica" --replicaof 127.0.0.1 "$primary"
    until_answers "$replica"
    for port in "$3" "$4" "$5"; do
      # Sentinel rewrites its configuration file: give each one of its own.
      cat >"$dir/sentinel-$port.conf" <<EOF
port $port
bind 127.0.0.1
dir $dir
logfile $dir/$port.log
sentinel monitor main 127.0.0.1 $primary 2
sentinel down-after-milliseconds main 1000
sentinel failover-timeout main 10000
sentinel parallel-syncs main 1
EOF
      redis-server "$dir/sentinel-$port.conf" --sentinel &
      pids+=($!)
      echo "node $port $!"
    done
    for port in "$3" "$4" "$5"; do until_answers "$port"; done
    until_true "the replica to sync" \
      "redis-cli -p $replica INFO replication | grep -q 'master_link_status:up'"
    # A failover needs the Sentinels to know the replica and each other.
    for port in "$3" "$4" "$5"; do
      until_true "Sentinel $port to see the replica and the other Sentinels" \
        "redis-cli -p $port SENTINEL master main | tr -d '\r' | grep -A1 -x -e num-slaves -e num-other-sentinels | grep -v -e '^num' -e '^--' | tr '\n' ' ' | grep -q '^1 2 $'"
    done
    echo "ready redis+sentinel://127.0.0.1:$3,127.0.0.1:$4,127.0.0.1:$5/main"
    ;;
  cluster)
    for port in "$@"; do
      start_node "$port" --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
        --cluster-node-timeout 1000
    done
    for port in "$@"; do until_answers "$port"; done
    nodes=()
    for port in "$@"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
      >"$dir/create.log" 2>&1 || {
      cat "$dir/create.log" >&2
      exit 1
    }
    # Every node must agree on the slots before a client can trust any.
    for port in "$@"; do
      until_true "node $port to see the whole cluster" \
        "redis-cli -p $port CLUSTER INFO | grep -q 'cluster_state:ok'"
    done
    # A replica that never synced refuses to take over its primary.
    for port in "$@"; do
      until_true "node $port to be a primary or a synced replica" \
        "redis-cli -p $port INFO replication | grep -q -e 'role:master' -e 'master_link_status:up'"
    done
    until_true "the nodes to agree on the slots" \
      "redis-cli --cluster check 127.0.0.1:$1 | grep -q 'All 16384 slots covered' && \
       ! redis-cli --cluster check 127.0.0.1:$1 | grep -q 'Nodes don.t agree'"
    echo "ready redis+cluster://127.0.0.1:$1,127.0.0.1:$2,127.0.0.1:$3"
    ;;
esac

# Until standard input closes, or a signal.
if [ -t 0 ] || [ -p /dev/stdin ]; then
  cat >/dev/null || true
else
  sleep infinity &
  pids+=($!)
  wait $! || true
fi
