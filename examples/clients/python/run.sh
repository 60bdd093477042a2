#!/usr/bin/env bash
# Installs the pinned packages into a virtualenv, generates the stubs from
# proto/ into gen/ (never committed), and runs client.py against SERVER
# (default 127.0.0.1:50051).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
venv=${VENV:-$root/target/clients/python}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
rm -rf "$here/gen" && mkdir "$here/gen"
"$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$here/gen" --grpc_python_out="$here/gen" rendezvous/v1/sync.proto
"$venv/bin/python" "$here/client.py" "${1:-127.0.0.1:50051}"
