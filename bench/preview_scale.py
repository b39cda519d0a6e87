"""Benchmark (f): offline preview time for 10, 50 and 100 nodes.

Stack files are generated from Pulumi.prod.yaml with the node count raised (groups of at most 50 nodes, the
prod group's settings copied), in a scratch project folder holding a copy of Pulumi.yaml; then
`fleet preview --stack <name> --no-tree` runs in a subprocess per stack, timed from start to exit, with the CPU
time (user + system) the subprocess used. The prod stack itself (2 nodes) is timed in the same run as the
baseline. With `--before TREE` (a checkout of an earlier commit, e.g. `git worktree add /tmp/before <commit>`),
the same stacks are previewed by that tree's code too, runs of the two trees taking turns so that both see the
same load, and a second table gives the ratios of this tree to it. Each figure is the median of `--repeat` runs.

Run: .venv/bin/python bench/preview_scale.py [--sizes 10,50,100] [--repeat 3] [--before TREE]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
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


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_preview(tree: Path, project: Path, stack: str) -> tuple[float, float, int, str]:
    """Wall and CPU seconds, exit code and output of `fleet preview` run with the code of `tree`."""
    fleet_cli = Path(sys.executable).with_name("fleet")
    env = dict(os.environ, PYTHONPATH=str(tree))
    cpu, started = children_cpu(), time.perf_counter()
    done = subprocess.run([str(fleet_cli), "preview", "--stack", stack, "--no-tree"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    return wall, children_cpu() - cpu, done.returncode, done.stdout + done.stderr


def resource_count(output: str) -> int | None:
    """The sum of the counts table `fleet preview` prints (resources registered)."""
    total = 0
    for line in output.splitlines():
        parts = [p.strip() for p in line.strip("│┃ ").split("│")]
        if len(parts) == 2 and parts[1].isdigit() and ":" in parts[0]:
            total += int(parts[1])
    return total or None


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a source tree (checkout) to compare with, run in turns")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    trees = {"this tree": REPO}
    if args.before:
        trees = {"before": args.before.resolve(), "this tree": REPO}
    print(machine_line())
    print(f"start: {load_line()}")

    with workdir("preview") as project:
        shutil.copy(REPO / "Pulumi.yaml", project / "Pulumi.yaml")
        shutil.copy(REPO / "Pulumi.prod.yaml", project / "Pulumi.prod.yaml")
        stacks = [("prod", 2)]
        for size in sizes:
            name = f"scale{size}"
            (project / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(scaled_stack(size), sort_keys=False))
            stacks.append((name, size))
        runs: dict[tuple[str, str], list[tuple[float, float, int, str]]] = {}
        for _ in range(args.repeat):
            for name, _nodes in stacks:
                for label, tree in trees.items():
                    runs.setdefault((label, name), []).append(time_preview(tree, project, name))
    print(f"end: {load_line()}")

    medians: dict[tuple[str, str], tuple[float, float, int | None]] = {}
    for label in trees:
        rows = []
        base_wall = base_cpu = base_count = None
        for name, nodes in stacks:
            done = runs[(label, name)]
            wall = statistics.median(r[0] for r in done)
            cpu = statistics.median(r[1] for r in done)
            count = resource_count(done[-1][3])
            medians[(label, name)] = (wall, cpu, count)
            codes = [r[2] for r in done]
            if base_wall is None:
                base_wall, base_cpu, base_count = wall, cpu, count
            per_resource = "-"
            if count and base_count and count > base_count:
                per_resource = f"{1000 * (cpu - base_cpu) / (count - base_count):.2f} ms"
            verdict = "ok" if set(codes) == {0} else f"exit {codes}"
            rows.append([f"{name} ({nodes} nodes)", count or "?", f"{wall:.2f} s", f"{cpu:.2f} s",
                         f"{wall / base_wall:.2f}", f"{cpu / base_cpu:.2f}", per_resource, verdict])
            if set(codes) != {0}:
                print(f"--- {label}, {name}: fleet preview failed; last lines ---\n"
                      + "\n".join(line[:300] for line in done[-1][3].splitlines()[-4:]))
        print_table(
            f"{label if trees[label] == REPO else f'{label} ({trees[label]})'}: fleet preview --no-tree in a subprocess, "
            f"median of {args.repeat}",
            ["stack", "resources", "wall", "CPU", "wall / prod", "CPU / prod", "CPU per resource past prod", "result"],
            rows,
        )
    if args.before:
        rows = []
        for name, nodes in stacks:
            b_wall, b_cpu, _ = medians[("before", name)]
            a_wall, a_cpu, _ = medians[("this tree", name)]
            rows.append([f"{name} ({nodes} nodes)", f"{b_wall:.2f} s", f"{a_wall:.2f} s", f"{a_wall / b_wall:.2f}",
                         f"{b_cpu:.2f} s", f"{a_cpu:.2f} s", f"{a_cpu / b_cpu:.2f}"])
        print_table(
            "this tree against before (same run, runs taking turns)",
            ["stack", "wall before", "wall now", "wall ratio", "CPU before", "CPU now", "CPU ratio"],
            rows,
        )


if __name__ == "__main__":
    main()
