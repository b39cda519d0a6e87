#!/usr/bin/env bash
# One pull-request comment per stack with the verdict of its `pulumi preview`, passed or failed: a failing
# push replaces the previous push's passing comment instead of leaving it up. The comment is found again by
# its first line (a hidden marker naming the stack).
# Usage: preview-comment.sh STACK EXIT_CODE PREVIEW_FILE   (GH_TOKEN, GITHUB_REPOSITORY, PR_NUMBER, RUN_URL)
set -euo pipefail
stack=${1:?usage: preview-comment.sh STACK EXIT_CODE PREVIEW_FILE}
code=${2:?usage: preview-comment.sh STACK EXIT_CODE PREVIEW_FILE}
file=${3:?usage: preview-comment.sh STACK EXIT_CODE PREVIEW_FILE}
repo=${GITHUB_REPOSITORY:?}
pr=${PR_NUMBER:?}
marker="<!-- ollama-fleet preview: $stack -->"
if [ "$code" = 0 ]; then
  verdict=":white_check_mark: **passed** (policies and preview)"
elif [ "$code" = missing ]; then
  verdict=":x: **did not run** (see the job log)"
else
  verdict=":x: **FAILED** (exit $code): a mandatory policy or the preview itself failed; merging would not deploy"
fi
body=$(mktemp)
{
  echo "$marker"
  echo "#### \`pulumi preview --refresh --diff\` of \`$stack\`: $verdict"
  echo
  echo "Commit ${HEAD_SHA:-unknown} · [run log](${RUN_URL:-})"
  echo
  echo "<details><summary>preview output (policy violations, diff)</summary>"
  echo
  echo '```diff'
  if [ -f "$file" ]; then tail -c 60000 "$file"; else echo "(no output)"; fi
  echo '```'
  echo "</details>"
} > "$body"
existing=$(gh api "repos/$repo/issues/$pr/comments" --paginate \
  --jq ".[] | select(.body | startswith(\"$marker\")) | .id" | head -n 1)
if [ -n "$existing" ]; then
  gh api --method PATCH "repos/$repo/issues/comments/$existing" -F "body=@$body" > /dev/null
else
  gh api --method POST "repos/$repo/issues/$pr/comments" -F "body=@$body" > /dev/null
fi
rm -f "$body"
