#!/usr/bin/env bash
# The container image and the Kubernetes manifests, checked without a
# container engine or a cluster (neither is available in CI):
# - hadolint lints the Dockerfile (every rule, info level included);
# - kubernetes-validate checks each manifest against the Kubernetes schemas,
#   strictly (an unknown field fails), for the oldest version the manifests
#   need (1.30: the preStop `sleep` action) and for the newest it knows.
# What they set against the binary itself (flags, variables, ports, probes,
# grace periods) is `cargo test`'s job: tests/integration/deployment.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
ensure_deploy_tools

"$hadolint" Dockerfile
echo "hadolint: Dockerfile passed"

manifests=()
for file in deploy/kubernetes/*.yaml; do
  # kustomization.yaml is kustomize's, not an API object.
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
for version in 1.30.0 1.37.0; do
  "$kubernetes_validate" --strict --quiet -k "$version" "${manifests[@]}"
  echo "kubernetes-validate $version: ${manifests[*]} passed"
done
