"""`fleet tune`: sweep client concurrency or OLLAMA_NUM_PARALLEL, pick the knee, name the config change.

The knee is the value with the highest throughput among those whose p95 time to first token, p95 latency,
median decode speed per request and error rate stay within the bounds (and none of whose requests had to be
cut at the level's end); on a plateau (within `tolerance` of the best) the smallest such value wins, since
more concurrency there buys latency, not throughput.

What the knee means for the stack:

* `num_parallel`: the value itself, at `nodeGroups[i].ollama.numParallel`. Values the capacity model
  (fleet/capacity.py) says do not fit the group's GPUs are refused before any load is sent, and never
  recommended.
* `concurrency`: the number of requests in flight that the group serves within the bounds. The gateway admits
  `max_conns` per node (fleet.capacity.max_conns_per_node: slots plus `gateway.queuePerNode`) and refuses the
  rest fast, so the knee becomes `queuePerNode`; when the knee is below the slots a node already has, fewer
  slots (`numParallel`) are recommended instead.

A sweep whose load generator ran on the machine that runs the nodes, with that machine's CPUs saturated,
measures their contention rather than the slots: it never leads to fewer slots (`shared_cpu` says why).
"""

from __future__ import annotations

import ipaddress
import math
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from fleet import capacity
from fleet.config import FLEET_KEY, FleetSettings, Measured, NodeGroup
from fleet.ops.loadtest import LevelSummary, LoadResult, LoadSpec, ProgressSink, run_load

Param = Literal["concurrency", "num_parallel"]
Metric = Literal["tokens", "requests"]
DEFAULT_VALUES: dict[str, tuple[int, ...]] = {"concurrency": (1, 2, 4, 8, 16, 32), "num_parallel": (1, 2, 4, 8, 16)}


class TuneError(ValueError):
    """A sweep that cannot run or a value that cannot be recommended (the message says why)."""


@dataclass(frozen=True)
class Bounds:
    """What a level must stay within to count: time to first token, whole-request latency, decode speed per
    request and errors. A level that only keeps its first token fast while each answer crawls is not served."""

    max_p95_ttft_s: float = 2.0
    max_error_rate: float = 0.01
    max_p95_latency_s: float | None = 30.0
    min_decode_tps: float | None = 5.0  # median tokens/s of one answer; about reading speed

    def describe(self) -> str:
        parts = [f"p95 TTFT ≤ {self.max_p95_ttft_s:g}s"]
        if self.max_p95_latency_s is not None:
            parts.append(f"p95 latency ≤ {self.max_p95_latency_s:g}s")
        if self.min_decode_tps is not None:
            parts.append(f"decode ≥ {self.min_decode_tps:g} tok/s")
        parts.append(f"errors ≤ {self.max_error_rate:.1%}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Point:
    """One swept value and what the load test measured at it."""

    value: int
    summary: LevelSummary

    def throughput(self, metric: Metric) -> float:
        if metric == "tokens" and self.summary.tokens_per_s > 0:
            return self.summary.tokens_per_s
        return self.summary.throughput_rps

    def violations(self, bounds: Bounds) -> list[str]:
        out = []
        p95 = self.summary.ttft_p95_s
        if p95 is None:
            out.append("no request produced a token")
        elif p95 > bounds.max_p95_ttft_s:
            out.append(f"p95 TTFT {p95:.3f}s > {bounds.max_p95_ttft_s:g}s")
        latency = self.summary.latency_p95_s
        if bounds.max_p95_latency_s is not None and latency is not None and latency > bounds.max_p95_latency_s:
            out.append(f"p95 latency {latency:.1f}s > {bounds.max_p95_latency_s:g}s")
        decode = self.summary.decode_tps_p50
        if bounds.min_decode_tps is not None and decode is not None and decode < bounds.min_decode_tps:
            out.append(f"decode {decode:.1f} tok/s < {bounds.min_decode_tps:g}")
        if self.summary.error_rate > bounds.max_error_rate:
            out.append(f"error rate {self.summary.error_rate:.1%} > {bounds.max_error_rate:.1%}")
        if self.summary.cut:
            out.append(f"{self.summary.cut} still running after the level (cut)")
        return out


@dataclass(frozen=True)
class Knee:
    point: Point | None  # None: no value stays within the bounds
    eligible: tuple[int, ...]
    reasons: dict[int, list[str]]  # value -> why it is out of bounds


def pick_knee(points: Sequence[Point], bounds: Bounds, metric: Metric = "tokens", tolerance: float = 0.05) -> Knee:
    """The in-bounds value with the highest throughput; the smallest within `tolerance` of it on a plateau."""
    if not 0 <= tolerance < 1:
        raise TuneError("tolerance must be in [0, 1)")
    reasons = {p.value: p.violations(bounds) for p in points}
    eligible = sorted((p for p in points if not reasons[p.value]), key=lambda p: p.value)
    if not eligible:
        return Knee(None, (), {v: r for v, r in reasons.items() if r})
    best = max(p.throughput(metric) for p in eligible)
    chosen = next(p for p in eligible if p.throughput(metric) >= best * (1 - tolerance))
    return Knee(chosen, tuple(p.value for p in eligible), {v: r for v, r in reasons.items() if r})


# ---------------------------------------------------------------------------------------------------------
# A sweep measured on the machine that runs the nodes
# ---------------------------------------------------------------------------------------------------------
# Above this share of busy CPUs, the load generator and a node on the same machine wait for each other.
SHARED_CPU_BUSY = 0.85


def is_local_endpoint(url: str) -> bool:
    """The endpoint's host is this machine: a loopback address, `localhost`, or one of this host's addresses."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    try:
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
        theirs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(own & theirs)


def shared_cpu(url: str, points: Sequence[Point], param: str) -> str | None:
    """Why the sweep cannot judge the slots, when the load generator ran on the machine that runs the nodes and
    its CPUs were saturated (the levels out of bounds then measure the contention); None otherwise."""
    if not is_local_endpoint(url):
        return None
    saturated = [p for p in points if p.summary.host_cpu_busy is not None and p.summary.host_cpu_busy >= SHARED_CPU_BUSY]
    if not saturated:
        return None
    worst = max(saturated, key=lambda p: p.summary.host_cpu_busy or 0.0)
    summary = worst.summary
    cpus = f"{summary.host_cpus} CPUs" if summary.host_cpus else "CPUs"
    generator = f", {summary.generator_cpus:.2f} of them used by the load generator" if summary.generator_cpus is not None else ""
    return (
        f"the load generator and the nodes shared this machine's {cpus} ({url} is local): "
        f"{summary.host_cpu_busy:.0%} busy at {param} {worst.value}{generator}. Levels out of bounds there measure "
        "that contention, not the stack, so fewer slots are not recommended; load from another machine to judge them"
    )


# ---------------------------------------------------------------------------------------------------------
# The stack side: key paths, capacity checks, the change to make
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigChange:
    key_path: str  # as written in Pulumi.<stack>.yaml, e.g. ollama-fleet:fleet.nodeGroups[0].ollama.numParallel
    current: Any
    value: Any

    @property
    def pulumi_path(self) -> str:
        """The path `pulumi config set --path` takes (the project namespace is implied)."""
        return self.key_path.split(":", 1)[1]

    def command(self, stack: str) -> str:
        return f"pulumi config set --stack {shlex.quote(stack)} --path {shlex.quote(self.pulumi_path)} {self.value}"


@dataclass
class Recommendation:
    param: Param
    knee_value: int | None
    changes: list[ConfigChange] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # value -> capacity reason
    notes: list[str] = field(default_factory=list)


def find_group(settings: FleetSettings, name: str, stack_file: str) -> tuple[int, NodeGroup]:
    for index, group in enumerate(settings.node_groups):
        if group.name == name:
            return index, group
    known = ", ".join(g.name for g in settings.node_groups)
    raise TuneError(f"{stack_file}: no node group {name!r} at {FLEET_KEY}.nodeGroups; groups: {known}")


def stack_ollama_version(settings: FleetSettings, stack_file: str) -> str:
    """The Ollama release the stack deploys (the tag of images.ollama), whose capacity rules apply."""
    try:
        return capacity.supported_version_of_image(settings.images.ollama)
    except capacity.CapacityError as error:
        raise TuneError(f"{stack_file}: {FLEET_KEY}.images.ollama: {error}") from None


def capacity_refusal(group: NodeGroup, num_parallel: int, headroom: float, ollama_version: str | None = None) -> str | None:
    """Why the capacity model refuses `num_parallel` for the group under the rules of the Ollama release
    the stack deploys (None when it fits)."""
    trial = capacity.with_num_parallel(group, num_parallel)
    estimate = capacity.estimate_node(trial, headroom, ollama_version=ollama_version, suggest=False)
    if estimate.fits:
        return None
    largest = capacity.max_num_parallel(group, headroom, ollama_version=ollama_version)
    detail = "; ".join(estimate.problems) or (
        f"needs {capacity.human(estimate.total)} of {capacity.human(estimate.usable)} usable "
        f"({estimate.gpus} × {estimate.gpu_model}, {headroom:.0%} headroom)"
    )
    limit = f"the largest numParallel that fits is {largest}" if largest else "not even numParallel 1 fits"
    return f"numParallel {num_parallel} does not fit {group.instance_type}: {detail}; {limit}"


def split_fitting(
    group: NodeGroup, values: Sequence[int], headroom: float, ollama_version: str | None = None
) -> tuple[list[int], dict[int, str]]:
    """The values the capacity model accepts, and the refused ones with the reason."""
    fitting, refused = [], {}
    for value in values:
        reason = capacity_refusal(group, value, headroom, ollama_version)
        if reason:
            refused[value] = reason
        else:
            fitting.append(value)
    return fitting, refused


def measure_service(points: Sequence[Point], group: NodeGroup) -> Measured | None:
    """The group's service speed from a concurrency sweep against it (gateway.ttftTargetSeconds uses it).

    First token: the p50 at the lowest load (a request that finds a free slot). Service time: how long a request
    holds a slot, by Little's law at the level that keeps the most slots busy: busy slots (the level, at most the
    group's slots) ÷ requests served per second."""
    slots = capacity.slots_per_group(group)
    served = [p for p in points if p.summary.ok > 0 and p.summary.throughput_rps > 0]
    lowest = min(served, key=lambda p: p.value, default=None)
    if lowest is None or lowest.summary.ttft_p50_s is None:
        return None
    busiest = max(served, key=lambda p: (min(p.value, slots), p.summary.throughput_rps))
    service = min(busiest.value, slots) / busiest.summary.throughput_rps
    return Measured(service_time_seconds=round(service, 3), first_token_seconds=round(lowest.summary.ttft_p50_s, 3))


def recommend(
    param: Param,
    knee_value: int | None,
    settings: FleetSettings,
    group_index: int,
    refused: dict[int, str] | None = None,
    contention: str | None = None,
    measured: Measured | None = None,
) -> Recommendation:
    """The config change that puts the knee (and, from a concurrency sweep, the measured service speed) into the
    stack, checked against the capacity model.

    `contention` (from `shared_cpu`) says the sweep shared the CPU with the nodes: then no change lowers the slots,
    and its service speed is not recorded (it measured the shared CPU, not the nodes)."""
    group = settings.node_groups[group_index]
    headroom = settings.policy.vram_headroom
    version = capacity.version_of_image(settings.images.ollama)  # checked by stack_ollama_version first
    base = f"{FLEET_KEY}.nodeGroups[{group_index}]"
    rec = Recommendation(param=param, knee_value=knee_value, refused=dict(refused or {}))
    if measured is not None and contention:
        rec.notes.append(f"measured service speed not recorded: {contention}")
        measured = None
    if measured is not None:
        now = group.measured
        for key, value in (("serviceTimeSeconds", measured.service_time_seconds),
                           ("firstTokenSeconds", measured.first_token_seconds)):
            current = now.model_dump(by_alias=True)[key] if now else None
            if current != value:
                rec.changes.append(ConfigChange(f"{base}.measured.{key}", current, value))
        if settings.gateway.ttft_target_seconds is not None and settings.gateway.queue_per_node is None:
            target = settings.gateway.ttft_target_seconds
            queue = capacity.queue_for_ttft_target(group.model_copy(update={"measured": measured}), target)
            rec.notes.append(f"gateway.ttftTargetSeconds {target:g}: each node queues {queue} request(s) with these "
                             "measurements; queuePerNode is left unset")
            return rec
    if knee_value is None:
        return rec
    if param == "num_parallel":
        reason = capacity_refusal(group, knee_value, headroom, version)
        if reason:
            raise TuneError(f"refusing to recommend {reason}")
        if knee_value == group.ollama.num_parallel:
            rec.notes.append(f"numParallel {knee_value} is already configured: no change")
        elif contention and knee_value < group.ollama.num_parallel:
            rec.notes.append(f"numParallel stays {group.ollama.num_parallel}: {contention}")
        else:
            rec.changes.append(ConfigChange(f"{base}.ollama.numParallel", group.ollama.num_parallel, knee_value))
        return rec

    # concurrency: in-flight requests the whole group serves within the bounds
    per_node = math.ceil(knee_value / group.count)
    slots = capacity.slots_per_node(group)
    queue_now = capacity.queue_per_node(group, settings.gateway)
    if per_node >= slots:
        queue = per_node - slots
        rec.notes.append(
            f"{knee_value} requests in flight over {group.count} node(s): {per_node} per node = {slots} slots "
            f"+ {queue} queued; the gateway sheds beyond that (max_conns {capacity.max_conns_per_node(group, queue)})"
        )
        if contention and queue < queue_now:
            rec.notes.append(f"gateway.queuePerNode stays {queue_now}: {contention}")
        elif queue != queue_now:
            rec.changes.append(ConfigChange(f"{FLEET_KEY}.gateway.queuePerNode", queue_now, queue))
        else:
            rec.notes.append("gateway.queuePerNode already matches: no change")
        if len(settings.node_groups) > 1:
            rec.notes.append("gateway.queuePerNode applies to every node group")
        return rec
    if contention:
        rec.notes.append(f"the knee ({per_node} per node) is below the {slots} slots a node has, but {contention}")
        return rec
    parallel = capacity.num_parallel_for_slots(group, per_node)
    rec.notes.append(
        f"the knee ({per_node} per node) is below the {slots} slots a node has: fewer slots keep the levels within bounds"
    )
    if parallel != group.ollama.num_parallel:
        reason = capacity_refusal(group, parallel, headroom, version)
        if reason:
            raise TuneError(f"refusing to recommend {reason}")
        rec.changes.append(ConfigChange(f"{base}.ollama.numParallel", group.ollama.num_parallel, parallel))
    if queue_now != 0:
        rec.changes.append(ConfigChange(f"{FLEET_KEY}.gateway.queuePerNode", queue_now, 0))
    return rec


# ---------------------------------------------------------------------------------------------------------
# Running the sweep
# ---------------------------------------------------------------------------------------------------------
def restart_with_command(template: str, value: int, timeout_s: float = 600.0) -> None:
    """Run the user's restart command with `{value}` filled in; fail with its output when it fails."""
    if "{value}" not in template:
        raise TuneError("--restart-cmd must contain {value} (the numParallel to restart with)")
    command = template.replace("{value}", str(int(value)))
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise TuneError(f"restart command failed (exit {done.returncode}): {command}\n{(done.stderr or done.stdout)[-2000:]}")


def wait_ready(url: str, *, api_key: str | None, verify: bool | str, timeout_s: float = 300.0, probe_path: str = "/api/version") -> None:
    """Poll the endpoint until it answers 200 (a restarted server takes a while)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url.rstrip("/") + probe_path, headers=headers, verify=verify, timeout=5.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise TuneError(f"{url}{probe_path} not ready within {timeout_s:.0f}s after restart ({last})")


def sweep_concurrency(spec: LoadSpec, values: Sequence[int], sink: ProgressSink | None = None) -> tuple[list[Point], LoadResult]:
    result = run_load(LoadSpec(**{**_spec_fields(spec), "concurrency": tuple(values), "rate": ()}), sink)
    return [Point(int(s.level), s) for s in result.levels], result


def sweep_num_parallel(
    spec: LoadSpec,
    values: Sequence[int],
    apply_value: Callable[[int], str | None],
    clients_for: Callable[[int], int],
    sink: ProgressSink | None = None,
    warmup: bool = True,
) -> list[Point]:
    """For each value: `apply_value(v)` restarts the server(s) with it (returning the URL to load, or None for
    `spec.url`), one warm-up request loads the model, then a closed-loop run at `clients_for(v)` clients."""
    points = []
    for value in values:
        url = apply_value(value) or spec.url
        fields_ = {**_spec_fields(spec), "url": url, "rate": ()}
        if warmup:
            run_load(LoadSpec(**{**fields_, "concurrency": (1,), "requests": 1, "duration_s": None}))
        result = run_load(LoadSpec(**{**fields_, "concurrency": (clients_for(value),)}), sink)
        points.append(Point(value, result.levels[0]))
    return points


def sweep_result(spec: LoadSpec, points: Sequence[Point]) -> LoadResult:
    """A num_parallel sweep as a LoadResult whose levels are the swept values (for the plot and the CSV)."""
    return LoadResult(spec=spec, levels=[replace(p.summary, level=p.value) for p in points], records={})


def _spec_fields(spec: LoadSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}
