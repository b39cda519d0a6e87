"""Size the loopback data plane to this machine: how many CPU threads each Ollama node may use.

Every node of the local data plane runs on the same CPU. Ollama gives each model runner one thread per
physical core unless the model's `num_thread` says otherwise (Ollama v0.24.0 llm/server.go), and llama.cpp's
threads spin while they wait for each other: two nodes that each take every core run many times slower than
one, so a load test would measure contention, not the stack. Here the cores are shared out instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fleet.text import counted

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask, lowered by a cgroup v2 CPU quota when there is one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


@dataclass(frozen=True)
class ThreadPlan:
    """How the nodes share the CPU: the threads of each node's model runner."""

    cpus: int
    node_threads: tuple[int, ...]
    chosen: bool  # True: sized here from the CPUs; False: given by the stack or the user

    @property
    def nodes(self) -> int:
        return len(self.node_threads)

    @property
    def threads(self) -> int:
        return sum(self.node_threads)

    @property
    def oversubscribed(self) -> bool:
        return self.threads > self.cpus

    def _threads_text(self) -> str:
        if len(set(self.node_threads)) == 1:
            return f"{counted(self.nodes, 'node')} × {counted(self.node_threads[0], 'thread')}"
        return f"{counted(self.nodes, 'node')} with {' + '.join(map(str, self.node_threads))} threads"

    def warning(self) -> str | None:
        """What goes wrong when the nodes' threads exceed the CPUs, and what to do; None when they fit."""
        if not self.oversubscribed:
            return None
        return (
            f"{self._threads_text()} = {self.threads} threads on {counted(self.cpus, 'CPU')}: the nodes will slow "
            "each other down many times over, and load tests will measure that contention; use fewer nodes "
            f"(--nodes) or threads (--threads), at most {self.cpus} threads in all"
        )

    def describe(self) -> str:
        how = "shared out over this machine's CPUs" if self.chosen else "as configured"
        return f"{self._threads_text()} on {counted(self.cpus, 'CPU')} ({how})"


def plan_threads(nodes_per_group: list[int], configured: list[int | None], cpus: int,
                 threads_per_node: int | None = None) -> tuple[ThreadPlan, list[int]]:
    """Threads of each group's nodes: `threads_per_node` when given, else the group's configured `numThread`,
    else an equal share of the CPUs over all nodes (at least one). Returns the plan and the threads per group."""
    if len(nodes_per_group) != len(configured) or any(n < 1 for n in nodes_per_group):
        raise ValueError("one node count (at least 1) and one configured value per group")
    share = max(1, cpus // sum(nodes_per_group))
    per_group = [threads_per_node or given or share for given in configured]
    chosen = threads_per_node is None and any(given is None for given in configured)
    node_threads = tuple(t for n, t in zip(nodes_per_group, per_group) for _ in range(n))
    return ThreadPlan(cpus, node_threads, chosen), per_group


def default_node_count(stack_count: int, cpus: int, groups: int = 1) -> int:
    """Nodes of one group when `--nodes` is not given: the stack's count, but no more than the group's share of
    the CPUs, so every node keeps at least one core of its own."""
    return max(1, min(stack_count, cpus // max(1, groups)))
