#!/usr/bin/env bash
# The policy config `pulumi preview/up --policy-pack-config` gets for a stack, as `fleet preview` picks it:
# policies/config.<stack>.json, else the one of the environment the stack's name decides (fleet/stack_names.py:
# `prodeu` → policies/config.prod.json, `preprod` → policies/config.staging.json). Prints the path (relative to
# the project), or nothing when there is none: the pack then runs every policy at its own level (mandatory).
# Usage: policy-config.sh STACK
set -euo pipefail
stack=${1:?usage: policy-config.sh STACK}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$root/.venv/bin/python" -m fleet.policy_config config-path "$stack"
