#!/usr/bin/env bash
# The contract's checks, with buf (from PyPI's buf-bin, pinned):
# - `buf lint`: the STANDARD rules (buf.yaml says which one is excepted, and why);
# - `buf format`: no diff;
# - `buf breaking`: against every version of proto/ ever committed, so that a
#   rename, renumber or removal fails CI whichever commit it lands in. Versions
#   from before the language options were added (they were "" then) are
#   checked for the wire and JSON only (WIRE_JSON); later ones for generated
#   code too (FILE, buf.yaml's category).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
ensure_buf

"$buf" lint
"$buf" format --diff --exit-code

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
versions=0
for commit in $(git log --format=%H -- proto/); do
  mkdir "$work/$commit"
  git archive "$commit" proto | tar -x -C "$work/$commit"
  if grep -q '^option go_package' "$work/$commit/proto/rendezvous/v1/sync.proto"; then
    "$buf" breaking proto --against "$work/$commit/proto"
  else
    "$buf" breaking proto --against "$work/$commit/proto" \
      --config '{"version": "v2", "modules": [{"path": "proto"}], "breaking": {"use": ["WIRE_JSON"]}}'
  fi
  versions=$((versions + 1))
done
echo "proto: lint and format clean; compatible with all $versions committed versions"
