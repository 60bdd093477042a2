#!/usr/bin/env bash
# The container image and the Kubernetes manifests, checked without a
# container engine or a cluster (neither is available in CI):
# - hadolint lints the Dockerfile (every rule, info level included);
# - kubernetes-validate checks each manifest against the Kubernetes schemas,
#   strictly (an unknown field fails), for the oldest version the manifests
#   need (1.30: the preStop `sleep` action) and for the newest it knows.
# - the image's build context, the files .dockerignore lets through, builds
#   on its own (`cargo check --locked`, as the Dockerfile builds), so that a
#   file the build needs is never left out of the image.
# - promtool checks the alert rules (deploy/prometheus) and runs their unit
#   tests, and the PrometheusRule manifest must hold the same groups; it
#   checks every query of the Grafana dashboard (deploy/grafana) too.
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

promtool check rules deploy/prometheus/rendezvous.rules.yaml
(cd deploy/prometheus && promtool test rules rendezvous.rules.test.yaml)
"$deploy_python" - <<'EOF'
import yaml
rules = yaml.safe_load(open("deploy/prometheus/rendezvous.rules.yaml"))
manifest = yaml.safe_load(open("deploy/prometheus/prometheusrule.yaml"))
assert manifest["kind"] == "PrometheusRule", manifest["kind"]
assert manifest["spec"] == rules, "prometheusrule.yaml and rendezvous.rules.yaml differ"
monitor = yaml.safe_load(open("deploy/prometheus/servicemonitor.yaml"))
service = yaml.safe_load(open("deploy/kubernetes/service.yaml"))
assert monitor["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]
ports = [port["name"] for port in service["spec"]["ports"]]
assert all(e["port"] in ports for e in monitor["spec"]["endpoints"]), ports
print("deploy/prometheus: the PrometheusRule and the ServiceMonitor match the rules and the Service")
EOF
# Every query of the Grafana dashboard is valid PromQL: promtool checks
# them as recording rules, with Grafana's variables filled in.
queries=$(mktemp --suffix .yaml)
"$deploy_python" - "$queries" <<'EOF'
import json, sys, yaml
dashboard = json.load(open("deploy/grafana/rendezvous.json"))
rules = []
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        expr = target["expr"].replace("$__rate_interval", "5m")
        expr = expr.replace('"$job"', '".+"').replace('"$instance"', '".+"')
        rules.append({"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
EOF
promtool check rules "$queries" | sed 's|^Checking .*|Checking the queries of deploy/grafana/rendezvous.json|'
rm -f "$queries"

# The build context: .dockerignore is an allowlist (`*`, then `!PATH` lines).
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
git ls-files | python3 -c '
import os, shutil, sys
lines = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
assert lines[0] == "*", ".dockerignore must start with * (an allowlist)"
allowed = [l[1:] for l in lines[1:] if l.startswith("!")]
for path in sys.stdin.read().split():
    if any(path == a or (a.endswith("/") and path.startswith(a)) for a in allowed):
        os.makedirs(os.path.join(sys.argv[1], os.path.dirname(path)), exist_ok=True)
        shutil.copy(path, os.path.join(sys.argv[1], path))
' "$context"
(cd "$context" && CARGO_TARGET_DIR="$OLDPWD/target/docker-context" cargo check --quiet --locked --bin rendezvous)
echo "the build context ($(cd "$context" && ls | tr '\n' ' ')) builds with --locked"
