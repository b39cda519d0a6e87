#!/usr/bin/env bash
# Smoke-test a deployed stack with its `ci` client key (or the first client's), read from the stack's secret
# outputs and masked in the log; on success tag the stack fleet:smoke-tested-commit and write its deployment
# record (outputs, tags, history) for `fleet promote --record`.
# Usage: smoke.sh STACK RECORD_FILE [fleet smoke options…]; SMOKE_METRICS=true also checks Prometheus.
set -euo pipefail
stack=${1:?usage: smoke.sh STACK RECORD_FILE [options]}
record=${2:?usage: smoke.sh STACK RECORD_FILE [options]}
shift 2
commit=${DEPLOY_SHA:?DEPLOY_SHA names the commit being tested}
fleet=${FLEET:-.venv/bin/fleet}
deployed=$(pulumi stack tag get fleet:deployed-commit --stack "$stack")
if [ "$deployed" != "$commit" ]; then
  echo "::error::$stack runs $deployed, not $commit: nothing to smoke-test" >&2
  exit 1
fi
outputs=$(pulumi stack output --json --show-secrets --stack "$stack")
api_key=$(printf '%s' "$outputs" | python3 -c 'import json, sys; keys = json.load(sys.stdin)["apiKeys"]; print(keys.get("ci") or next(iter(keys.values())))')
echo "::add-mask::$api_key"
output() { printf '%s' "$outputs" | python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1]) or "")' "$1"; }
gateway=$(output gatewayUrl)
metrics=()
prometheus_password=""
# Prometheus answers only from gateway.adminCidrs, and asks for its password (basic auth): check the metrics
# where the runner is allowed in, the password passed in the environment and masked.
if [ "${SMOKE_METRICS:-}" = "true" ] && [ -n "$(output prometheusUrl)" ]; then
  metrics=(--metrics-url "$(output prometheusUrl)")
  prometheus_password=$(output prometheusPassword)
  [ -n "$prometheus_password" ] && echo "::add-mask::$prometheus_password"
fi
FLEET_API_KEY="$api_key" FLEET_PROMETHEUS_PASSWORD="$prometheus_password" "$fleet" smoke "$gateway" "$@" "${metrics[@]}"
pulumi stack tag set fleet:smoke-tested-commit "$commit" --stack "$stack"
"$fleet" deployment-record "$stack" --out "$record"
