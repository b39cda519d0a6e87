#!/usr/bin/env bash
# Build (or reuse from ~/.cache/ollama-fleet, or $OLLAMA_FLEET_CACHE) the Ollama server used by the loopback
# test bed. Idempotent: a cached, working binary is reused; concurrent runs wait for one build.
# Prints the binary's path. Options: --tag vX.Y.Z, --force, --print-path.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=python3
[ -x .venv/bin/python ] && python_bin=.venv/bin/python
# The builder uses the standard library only, so it runs before the virtualenv has its packages.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$python_bin" -m fleet.local.ollama_build "$@"
