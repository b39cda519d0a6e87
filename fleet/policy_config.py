"""Which policy config judges a stack, and the VRAM headroom it sets: one lookup for the offline preview, CI's
`--policy-pack-config`, `fleet plan` and `fleet promote`.

A stack is judged with policies/config.<stack>.json, else with the config of the environment its name decides
(fleet/stack_names.py: `prod-eu` and `production` as `prod`, `preprod` as `staging`), else with none (every
policy at the pack's own level). vram-fit's `minHeadroom` there raises the stack's `policy.vramHeadroom`, so a
plan or a promotion that calls a group a fit passes vram-fit too.

`python -m fleet.policy_config config-path STACK` prints the path CI hands the Pulumi CLI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fleet.stack_names import environment_of_stack

POLICIES_DIR = Path(__file__).resolve().parents[1] / "policies"
VRAM_FIT = "vram-fit"


class PolicyConfigError(ValueError):
    """A policy config file that the Pulumi CLI would refuse."""


def config_path(stack: str, folder: Path = POLICIES_DIR) -> Path | None:
    """The policy config of a stack: policies/config.<stack>.json, else the one of the environment the stack's
    name decides, else None."""
    for name in (stack, environment_of_stack(stack)):
        if name and (folder / f"config.{name}.json").is_file():
            return folder / f"config.{name}.json"
    return None


def load_config_file(stack: str, folder: Path = POLICIES_DIR) -> dict[str, Any]:
    """The stack's policy config (`config_path`), or {} when there is none (every policy at its default level)."""
    path = config_path(stack, folder)
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PolicyConfigError(f"{path.name}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PolicyConfigError(f"{path.name}: must be a JSON object of policy name -> level or settings")
    return data


def judged_headroom(stack: str, stack_headroom: float, folder: Path = POLICIES_DIR) -> float:
    """The VRAM headroom the pack judges the stack with: its own `policy.vramHeadroom`, raised to vram-fit's
    `minHeadroom` in its policy config."""
    entry = load_config_file(stack, folder).get(VRAM_FIT)
    floor = entry.get("minHeadroom") if isinstance(entry, dict) else None
    if isinstance(floor, (int, float)) and not isinstance(floor, bool):
        return max(stack_headroom, float(floor))
    return stack_headroom


def main(argv: list[str] | None = None) -> int:
    """`python -m fleet.policy_config config-path STACK`: print the policy config `config_path` picks, as a path
    relative to the project (nothing when there is none), for CI's `--policy-pack-config`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "config-path":
        print("usage: python -m fleet.policy_config config-path STACK", file=sys.stderr)
        return 2
    path = config_path(args[1])
    if path is not None:
        print(path.relative_to(POLICIES_DIR.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
