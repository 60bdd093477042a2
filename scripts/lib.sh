# Sourced by bench.sh and soak.sh, not run on its own.

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
