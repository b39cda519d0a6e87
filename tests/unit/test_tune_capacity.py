"""`fleet tune` takes every figure about a group's memory and slots from the capacity model: the values it
refuses, the largest numParallel it names, the slots and queue behind a concurrency knee and the busy slots of a
measured service time are the ones fleet.capacity computes, for groups of one and several nodes and resident
models, on a CPU host and on GPUs."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from fleet import capacity
from fleet.config import ModelSpec
from fleet.ops import loadtest as lt
from fleet.ops import tune as tn
from fleet.stack_file import load_stack

VALUES = (1, 2, 3, 4, 6, 8, 16, 32, 64, 65)


def _prod():
    return load_stack("prod").settings


def _long_context(settings):
    group = settings.node_groups[0]
    models = [m.model_copy(update={"num_ctx": 32768}) for m in group.models]
    return [group.model_copy(update={"models": models})]


def _two_resident(settings):
    """Three nodes, two resident models (each with numParallel slots) and one loaded on demand (no slots)."""
    group = settings.node_groups[0]
    models = [
        *group.models,
        ModelSpec(name="llama3.2", tag="3b", num_ctx=8192),
        ModelSpec(name="smollm2", tag="135m", quantization="q8_0", keep_loaded=False),
    ]
    knobs = group.ollama.model_copy(update={"num_parallel": 3})
    return [group.model_copy(update={"models": models, "count": 3, "ollama": knobs})]


STACKS = {
    "dev cpu": lambda: load_stack("dev").settings,
    "prod chat": _prod,
    "prod long context": lambda: (s := _prod()).model_copy(update={"node_groups": _long_context(s)}),
    "two resident models": lambda: (s := _prod()).model_copy(update={"node_groups": _two_resident(s)}),
}


@pytest.fixture(params=sorted(STACKS), scope="module")
def settings(request):
    return STACKS[request.param]()


def test_refused_values_and_the_largest_named_are_the_capacity_models(settings):
    group = settings.node_groups[0]
    headroom = settings.policy.vram_headroom
    version = tn.stack_ollama_version(settings, "Pulumi.test.yaml")
    fits = [v for v in VALUES if capacity.fits(capacity.with_num_parallel(group, v), headroom, ollama_version=version)]
    fitting, refused = tn.split_fitting(group, VALUES, headroom, version)
    assert fitting == fits
    assert sorted(refused) == sorted(set(VALUES) - set(fits))
    largest = capacity.max_num_parallel(group, headroom, ollama_version=version)
    for value, reason in refused.items():
        assert reason.startswith(f"numParallel {value} does not fit {group.instance_type}")
        named = f"the largest numParallel that fits is {largest}" if largest else "not even numParallel 1 fits"
        assert reason.endswith(named)


def test_a_concurrency_knee_becomes_the_capacity_models_slots_and_queue(settings):
    group = settings.node_groups[0]
    slots = capacity.slots_per_node(group)
    queue_now = capacity.queue_per_node(group, settings.gateway)
    for knee in sorted({1, 2, 5, capacity.slots_per_group(group), capacity.slots_per_group(group) + 7}):
        per_node = math.ceil(knee / group.count)
        rec = tn.recommend("concurrency", knee, settings, 0)
        changes = {c.key_path.rsplit(".", 1)[1]: c.value for c in rec.changes}
        if per_node >= slots:
            queue = changes.get("queuePerNode", queue_now)
            assert capacity.max_conns_per_node(group, queue) == per_node  # the gateway admits exactly the knee
            assert f"{per_node} per node = {slots} slots + {queue} queued" in rec.notes[0]
        else:
            parallel = changes.get("numParallel", group.ollama.num_parallel)
            assert parallel == capacity.num_parallel_for_slots(group, per_node)
            fewer = capacity.with_num_parallel(group, parallel)
            assert capacity.slots_per_node(fewer) <= max(per_node, capacity.slot_models(group))
            assert f"below the {slots} slots a node has" in rec.notes[0]


def test_the_measured_service_time_counts_the_capacity_models_slots(settings):
    group = settings.node_groups[0]
    busy = capacity.slots_per_group(group)
    base = lt.summarize("closed", 1, [], 10.0)
    points = [
        tn.Point(level, replace(base, level=level, requests=10, ok=10, throughput_rps=rps, ttft_p50_s=0.2))
        for level, rps in ((1, 0.5), (busy + 4, 4.0))
    ]
    measured = tn.measure_service(points, group)
    assert measured.service_time_seconds == round(busy / 4.0, 3)


def test_slots_and_num_parallel_are_inverse(settings):
    group = settings.node_groups[0]
    per_value = capacity.slot_models(group) * group.count
    assert capacity.slot_models(group) == max(1, len(group.resident_models))
    for value in (1, 2, 5, 16):
        trial = capacity.with_num_parallel(group, value)
        assert trial.ollama.num_parallel == value and trial.models == group.models
        assert capacity.slots_per_group(trial) == value * per_value
        assert capacity.num_parallel_for_slots(group, capacity.slots_per_node(trial)) == value
        assert capacity.num_parallel_for_slots(group, capacity.slots_per_node(trial) + capacity.slot_models(group) - 1) == value
    assert capacity.num_parallel_for_slots(group, 0) == 1
