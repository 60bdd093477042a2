#!/usr/bin/env python3
"""Runs every shell block of a README, in order, each checked on its own.

Usage: check_readme.py README.md /path/to/rendezvous

The line above each ```sh block is its marker, an HTML comment that readers
of the rendered page never see:

  <!-- skip: why it cannot run here -->
  <!-- check: [exit=N] [expect=TEXT]... [log=TEXT]... [allow=TEXT]... [server] [server=default] [exits=N] -->

  exit=N          the block's exit status (default 0)
  expect=TEXT     TEXT appears in the block's output; listed twice, twice
  log=TEXT        TEXT appears in the server's log during the block
  allow=TEXT      a WARN or ERROR line with TEXT in it is what the block
                  means to cause, and does not fail it
  server          the block starts a server and runs until stopped: the one
                  running is stopped first, and later blocks run against it
  server=default  the block needs the first server (the quick start's); it is
                  started again if another one took its place
  exits=N         the block stops the server, which must exit with status N

After every block, the server's log must hold no WARN or ERROR line. A block
without a marker, a port already taken, or a server that never listens fails
the run. Blocks run with `set -eo pipefail` in a scratch directory that holds
a copy of the checkout's proto/, deploy/, buf.yaml, scripts/redis-topology.sh
and scripts/otlp-receiver.* (so that commands written for a checkout's root
find them), with two helpers defined first:
  - `cargo run --release [-- ARGS]` runs the binary given on the command
    line (a debug build of the same code, so CI compiles once), which is
    also on PATH as `rendezvous`, as `cargo install` would put it (so that
    `timeout ... rendezvous` and the like find it);
  - a bare `wait` fails if the last background job failed (bash's own
    `wait` returns 0 whatever the jobs did; the README's blocks start one
    each).
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SHELLS = {"sh", "bash", "shell"}
PORTS = (50051, 3030)
PRELUDE = r"""
set -eo pipefail
cargo() {
  if [ "${1:-}" = run ] && [ "${2:-}" = --release ]; then
    shift 2
    if [ "${1:-}" = -- ]; then shift; fi
    exec "$RENDEZVOUS_BIN" "$@"
  fi
  command cargo "$@"
}
wait() {
  if [ $# -gt 0 ]; then builtin wait "$@"; return; fi
  if [ -n "${!:-}" ]; then builtin wait "$!" || return; fi
  builtin wait
}
"""
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BAD_LEVEL = re.compile(r'\b(WARN|ERROR)\b')


def blocks(text):
    """(line number, marker line, code) of every shell block."""
    lines = text.split("\n")
    found, i = [], 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in SHELLS:
            marker = lines[i - 1] if i > 0 else ""
            found.append((i + 1, marker, "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    return found


def parse_marker(line, marker):
    match = re.fullmatch(r"<!-- (check|skip):(.*?)-->", marker.strip())
    if not match:
        raise SystemExit(f"README.md:{line}: a shell block with no check or skip marker above it")
    kind, rest = match.groups()
    if kind == "skip":
        if not rest.strip():
            raise SystemExit(f"README.md:{line}: a skip marker must say why")
        return {"skip": rest.strip()}
    options = {"expect": [], "log": [], "allow": []}
    for token in shlex.split(rest):
        key, _, value = token.partition("=")
        if key in ("expect", "log", "allow"):
            options[key].append(value)
        elif key in ("exit", "exits"):
            options[key] = int(value)
        elif key == "server":
            options["server"] = value or "start"
        else:
            raise SystemExit(f"README.md:{line}: unknown marker option {key!r}")
    return options


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Server:
    """A server a block started, in a process group of its own."""

    def __init__(self, code, workdir, env, log_path):
        for port in PORTS:
            if listening(port):
                raise SystemExit(f"port {port} is already taken: stop whatever listens there")
        self.code = code
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            ["bash", "-c", PRELUDE + code], cwd=workdir, env=env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not all(listening(port) for port in PORTS):
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the server never listened on {PORTS}:\n{self.text()}")
            time.sleep(0.1)

    def text(self):
        with open(self.log_path) as log:
            return ANSI.sub("", log.read())

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def main():
    readme, binary = sys.argv[1], sys.argv[2]
    workdir = tempfile.mkdtemp(prefix="readme-")
    checkout = os.path.dirname(os.path.abspath(readme))
    for tree in ("proto", "deploy"):
        shutil.copytree(os.path.join(checkout, tree), os.path.join(workdir, tree))
    shutil.copy(os.path.join(checkout, "buf.yaml"), workdir)
    os.makedirs(os.path.join(workdir, "scripts"))
    for script in ("redis-topology.sh", "otlp-receiver.py", "otlp-receiver.txt"):
        shutil.copy(os.path.join(checkout, "scripts", script), os.path.join(workdir, "scripts"))
    bin_dir = os.path.join(workdir, ".bin")
    os.makedirs(bin_dir)
    os.symlink(os.path.abspath(binary), os.path.join(bin_dir, "rendezvous"))
    env = dict(os.environ, RENDEZVOUS_BIN=binary, PATH=bin_dir + os.pathsep + os.environ["PATH"])
    server, default_code, failures, logs = None, None, [], 0

    def start(code):
        nonlocal server, logs
        if server:
            server.stop()
        logs += 1
        server = Server(code, workdir, env, os.path.join(workdir, f".server-{logs}.log"))

    try:
        for line, marker, code in blocks(open(readme).read()):
            options = parse_marker(line, marker)
            title = f"README.md:{line}: {code.strip().splitlines()[0]}"
            if "skip" in options:
                print(f"skip | {title}\n     | ({options['skip']})")
                continue
            problems = []
            if options.get("server") == "start":
                default_code = default_code or code
                start(code)
                log_from, output, status = 0, "", 0
            else:
                if options.get("server") == "default" and (server is None or server.code != default_code):
                    start(default_code)
                log_from = len(server.text()) if server else 0
                try:
                    run = subprocess.run(["bash", "-c", PRELUDE + code], cwd=workdir, env=env,
                                         capture_output=True, text=True, timeout=240)
                    output, status = run.stdout + run.stderr, run.returncode
                except subprocess.TimeoutExpired as timeout:
                    output, status = str(timeout.stdout or "") + str(timeout.stderr or ""), "timeout"
                if status != options.get("exit", 0):
                    problems.append(f"exit status {status}, expected {options.get('exit', 0)}")
            for want in set(options["expect"]):
                times = options["expect"].count(want)
                if output.count(want) < times:
                    problems.append(f"expected {want!r} {times}x in the output")
            if "exits" in options:
                try:
                    code_seen = server.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    code_seen = "still running"
                if code_seen != options["exits"]:
                    problems.append(f"the server exited with {code_seen}, expected {options['exits']}")
            if server:
                # Log lines can trail the block that caused them.
                deadline = time.monotonic() + 10
                while any(w not in server.text()[log_from:] for w in options["log"]) and time.monotonic() < deadline:
                    time.sleep(0.1)
                log = server.text()[log_from:]
                problems += [f"expected {w!r} in the server's log" for w in options["log"] if w not in log]
                problems += [f"server log: {l}" for l in log.splitlines()
                             if BAD_LEVEL.search(l) and not any(a in l for a in options["allow"])]
            if "exits" in options:
                server.stop()
                server = None
            print(("FAIL" if problems else "ok  ") + " | " + title)
            if problems:
                failures.append(f"{title}\n" + "\n".join(f"  - {p}" for p in problems)
                                + f"\n  output:\n{output}" + (f"\n  server log:\n{server.text()}" if server else ""))
    finally:
        if server:
            server.stop()
    if failures:
        print("\n\n".join(failures))
        sys.exit(1)
    print("README examples: every block ran and matched, or was skipped with a reason")


if __name__ == "__main__":
    main()
