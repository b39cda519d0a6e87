#!/usr/bin/env bash
# Installs actionlint (the GitHub Actions workflow checker) at a pinned version, built with the Go toolchain
# from the Go module proxy, into ~/.cache/ollama-fleet/bin ($OLLAMA_FLEET_CACHE/bin when set). Idempotent:
# does nothing when that version is already there. tests/unit/test_workflows.py runs it on
# .github/workflows/*.yml; it also runs shellcheck on every `run:` block when shellcheck is on PATH.
set -euo pipefail

version=${ACTIONLINT_VERSION:-v1.7.12}
bin_dir=${OLLAMA_FLEET_CACHE:-$HOME/.cache/ollama-fleet}/bin
target="$bin_dir/actionlint"

if [ -x "$target" ] && [ "$("$target" -version 2>/dev/null | sed -n 1p)" = "$version" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "install-actionlint: the Go toolchain (go) is needed to build actionlint $version" >&2
  exit 1
fi
mkdir -p "$bin_dir"
GOBIN="$bin_dir" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install "github.com/rhysd/actionlint/cmd/actionlint@$version"
echo "actionlint $("$target" -version | sed -n 1p) installed in $bin_dir"
