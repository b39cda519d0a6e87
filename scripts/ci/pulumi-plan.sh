#!/usr/bin/env bash
# The reviewed plan of one stack: `pulumi preview` with refresh (drift shows), a full diff (values, not only
# counts) and the policy pack, saved as an update plan that `pulumi-up.sh` applies after approval.
# Usage: pulumi-plan.sh STACK OUT_DIR. Writes OUT_DIR/plan.json, OUT_DIR/preview.txt, OUT_DIR/commit.
set -euo pipefail
stack=${1:?usage: pulumi-plan.sh STACK OUT_DIR}
out=${2:?usage: pulumi-plan.sh STACK OUT_DIR}
commit=${DEPLOY_SHA:?DEPLOY_SHA names the commit being planned}
export PULUMI_EXPERIMENTAL=true # update plans (--save-plan / --plan) are behind this switch
mkdir -p "$out"
printf '%s\n' "$commit" > "$out/commit"
# The stack's policy config, or its environment's (a custom stack name: `prodeu` is judged as prod).
policy=(--policy-pack policies)
config=$(bash "$(dirname "${BASH_SOURCE[0]}")/policy-config.sh" "$stack")
if [ -n "$config" ]; then policy+=(--policy-pack-config "$config"); fi
set +e
pulumi preview --stack "$stack" --non-interactive --refresh --diff "${policy[@]}" \
  --save-plan "$out/plan.json" > "$out/preview.txt" 2>&1
code=$?
set -e
cat "$out/preview.txt"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  verdict=$([ "$code" = 0 ] && echo "plan saved: approve the production deployment to apply exactly this" || echo "FAILED (exit $code): nothing will be applied")
  {
    echo "### Plan for \`$stack\` at \`$commit\` — $verdict"
    echo '```diff'
    tail -c 60000 "$out/preview.txt"
    echo '```'
  } >> "$GITHUB_STEP_SUMMARY"
fi
exit "$code"
