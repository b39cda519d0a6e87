#!/usr/bin/env bash
# `pulumi up` of one stack after a refresh (the state matches the cloud before anything changes), with the
# policy pack; with PLAN set, exactly that saved plan (the update fails if anything else would change).
# Tags the stack with the commit it now runs (fleet:deployed-commit); `fleet promote` reads the tag.
# Usage: pulumi-up.sh STACK
set -euo pipefail
stack=${1:?usage: pulumi-up.sh STACK}
commit=${DEPLOY_SHA:?DEPLOY_SHA names the commit being deployed}
plan=()
if [ -n "${PLAN:-}" ]; then
  planned=$(cat "$(dirname "$PLAN")/commit")
  if [ "$planned" != "$commit" ]; then
    echo "::error::the saved plan is for $planned, this run deploys $commit" >&2
    exit 1
  fi
  export PULUMI_EXPERIMENTAL=true # update plans are behind this switch
  plan=(--plan "$PLAN")
fi
# A new deployment is not smoke-tested yet: drop the old claim before anything changes.
pulumi stack tag rm fleet:smoke-tested-commit --stack "$stack" >/dev/null 2>&1 || true
# The stack's policy config, or its environment's (a custom stack name: `prodeu` is judged as prod).
policy=(--policy-pack policies)
config=$(bash "$(dirname "${BASH_SOURCE[0]}")/policy-config.sh" "$stack")
if [ -n "$config" ]; then policy+=(--policy-pack-config "$config"); fi
pulumi up --stack "$stack" --yes --non-interactive --refresh --diff --suppress-outputs "${policy[@]}" "${plan[@]}"
pulumi stack tag set fleet:deployed-commit "$commit" --stack "$stack"
