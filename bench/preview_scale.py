"""Benchmark (f): offline preview time for 10, 50 and 100 nodes.

Stack files are generated from Pulumi.prod.yaml with the node count raised (groups of at most 50 nodes, the
prod group's settings copied), in a scratch project folder holding a copy of Pulumi.yaml; then
`fleet preview --stack <name> --no-tree` runs in a subprocess per stack, timed from start to exit. The prod
stack itself (2 nodes) is timed in the same run as the baseline.

Run: .venv/bin/python bench/preview_scale.py [--sizes 10,50,100] [--repeat 1]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from common import REPO, machine_line, print_table, workdir

from fleet.config import FLEET_KEY

GROUP_MAX = 50


def scaled_stack(nodes: int) -> dict:
    """Pulumi.prod.yaml with `nodes` GPU nodes spread over groups of at most GROUP_MAX."""
    document = yaml.safe_load((REPO / "Pulumi.prod.yaml").read_text())
    fleet = document["config"][FLEET_KEY]
    template = fleet["nodeGroups"][0]
    groups, left, index = [], nodes, 0
    while left > 0:
        group = copy.deepcopy(template)
        group["name"] = template["name"] if index == 0 else f"{template['name']}-{index}"
        group["count"] = min(GROUP_MAX, left)
        groups.append(group)
        left -= group["count"]
        index += 1
    fleet["nodeGroups"] = groups
    return document


def time_preview(project: Path, stack: str) -> tuple[float, int, str]:
    fleet_cli = Path(sys.executable).with_name("fleet")
    started = time.perf_counter()
    done = subprocess.run([str(fleet_cli), "preview", "--stack", stack, "--no-tree"], cwd=project, capture_output=True,
                          text=True, timeout=600)
    return time.perf_counter() - started, done.returncode, done.stdout + done.stderr


def resource_count(output: str) -> str:
    """The sum of the counts table `fleet preview` prints (resources registered)."""
    total = 0
    for line in output.splitlines():
        parts = [p.strip() for p in line.strip("│┃ ").split("│")]
        if len(parts) == 2 and parts[1].isdigit() and ":" in parts[0]:
            total += int(parts[1])
    return str(total) if total else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(machine_line())

    rows = []
    with workdir("preview") as project:
        shutil.copy(REPO / "Pulumi.yaml", project / "Pulumi.yaml")
        shutil.copy(REPO / "Pulumi.prod.yaml", project / "Pulumi.prod.yaml")
        stacks = [("prod", 2)]
        for size in sizes:
            name = f"scale{size}"
            (project / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(scaled_stack(size), sort_keys=False))
            stacks.append((name, size))
        baseline = None
        for name, nodes in stacks:
            times, codes, output = [], [], ""
            for _ in range(args.repeat):
                seconds, code, output = time_preview(project, name)
                times.append(seconds)
                codes.append(code)
            median = statistics.median(times)
            baseline = baseline or median
            verdict = "ok" if set(codes) == {0} else f"exit {codes}"
            rows.append([f"{name} ({nodes} nodes)", resource_count(output), f"{median:.1f} s", f"{median / baseline:.2f}", verdict])
            if set(codes) != {0}:
                print(f"--- {name}: fleet preview failed; last lines ---\n" + "\n".join(line[:300] for line in output.splitlines()[-4:]))
    print_table(
        f"fleet preview --no-tree, subprocess wall time (median of {args.repeat})",
        ["stack", "resources", "time", "ratio to prod (2 nodes)", "result"],
        rows,
    )


if __name__ == "__main__":
    main()
