"""fleet.contract: what the components write onto containers reads back as the settings it came from, for every
stack file, for generated variations of them, and for what the real program registers; renaming a key in the
contract changes nothing end to end."""

from __future__ import annotations

import dataclasses
import random

import pytest
from policy_builders import CONTAINER, find, program_resources, set_models

from fleet import capacity, catalog, contract
from fleet.config import FleetSettings, NodeGroup
from fleet.contract import GatewayContract, NodeContract
from fleet.preview.policy_runner import evaluate
from fleet.stack_file import load_stack
from policies import rules

STACKS = ("dev", "staging", "prod")


def sized(group: NodeGroup, headroom: float):
    """The estimate's verdict and bytes (where each context size is read from, and the advice, depend on how
    the group is spelled)."""
    found = capacity.estimate_node(group, headroom)
    models = tuple(dataclasses.replace(m, num_ctx_source="") for m in found.models)
    return dataclasses.replace(found, models=models, suggestions=())


def round_trip(settings: FleetSettings) -> None:
    for group in settings.node_groups:
        for index in range(group.count):
            written = NodeContract.of(settings, group, index)
            # Other labels and variables on the container do not disturb the reading.
            labels = {**contract.container_labels(settings, "ollama"), **written.labels()}
            env = {"OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_MODELS": "/models", **written.environment()}
            assert contract.decode_node(labels, env) == written
            assert contract.decode_publish_scope(labels) == contract.publish_scope(settings)
        # The knobs come back as the node runs them, which the capacity model sizes as the config.
        assert sized(written.group, written.headroom) == sized(group, written.headroom)
    gateway = GatewayContract.of(settings)
    assert contract.decode_gateway({**contract.container_labels(settings, "gateway"), **gateway.labels()}) == gateway


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_reads_back(stack):
    round_trip(load_stack(stack).settings)


def _random_group(rng: random.Random, name: str, instance_type: str) -> dict:
    models = []
    for ref in rng.sample(sorted(catalog.MODELS), rng.randint(1, 3)):
        arch = catalog.find_model(ref)
        spec = {"name": ref.split(":")[0], "tag": ref.split(":")[1], "quantization": rng.choice(arch.quantizations())}
        if rng.random() < 0.7:
            spec["numCtx"] = rng.randint(256, arch.max_context)
        if rng.random() < 0.3:
            spec["keepLoaded"] = False
        if rng.random() < 0.3:
            spec["digest"] = "sha256:" + "".join(rng.choice("0123456789abcdef") for _ in range(64))
        models.append(spec)
    flash = rng.random() < 0.7
    knobs = {
        "numParallel": rng.randint(1, 64),
        "maxQueue": rng.randint(1, 65_536),
        "keepAlive": rng.choice(["5m", "24h", "-1", "0", "90s", "1500ms"]),
        "flashAttention": flash,
        "kvCacheType": rng.choice(["f16", "q8_0", "q4_0"]) if flash else "f16",
        "gpuOverheadBytes": rng.choice([0, 1, 512 << 20, 3 << 30]),
        "schedSpread": rng.random() < 0.5,
    }
    if rng.random() < 0.5:
        knobs["maxLoadedModels"] = rng.randint(1, 64)
    if rng.random() < 0.4:
        knobs["contextLength"] = rng.randint(256, 1_048_576)
    return {
        "name": name,
        "instanceType": instance_type,
        "count": rng.randint(1, 64),
        "models": models,
        "ollama": knobs,
        "modelVolumeGb": rng.randint(20, 16_384),
        "rootVolumeGb": rng.randint(30, 2_048),
    }


@pytest.mark.parametrize("seed", range(40))
def test_generated_variations_read_back(seed):
    rng = random.Random(seed)
    base = load_stack(rng.choice(STACKS[1:])).raw_config["ollama-fleet:fleet"]
    gpu_types = sorted(i for i in catalog.INSTANCES if i != catalog.LOCAL_INSTANCE)
    data = dict(base)
    data["nodeGroups"] = [_random_group(rng, f"g{i}", rng.choice(gpu_types)) for i in range(rng.randint(1, 3))]
    data["policy"] = {**base.get("policy", {}), "vramHeadroom": rng.choice([0, 0.05, 0.1, 0.333, rng.random() * 0.89])}
    data["gateway"] = {
        **base["gateway"],
        "queuePerNode": rng.randint(0, 10_000),
        "adminCidrs": rng.sample(["203.0.113.0/24", "198.51.100.7/32", "10.0.0.0/8", "2001:db8::/48"], rng.randint(0, 3)),
    }
    round_trip(FleetSettings.model_validate(data))


def test_groups_outside_the_stack_have_no_contract():
    settings = load_stack("prod").settings
    stranger = NodeGroup.model_validate({**settings.node_groups[0].model_dump(by_alias=True), "name": "other"})
    with pytest.raises(ValueError, match="not in the stack"):
        NodeContract.of(settings, stranger, 0)


@pytest.mark.parametrize("stack", STACKS)
def test_the_program_writes_the_contract(stack):
    settings = load_stack(stack).settings
    resources = program_resources(stack)
    nodes = find(resources, CONTAINER, "ollama")
    expected = [NodeContract.of(settings, g, i) for g in settings.node_groups for i in range(g.count)]
    assert sorted((contract.decode_node(n.label_map, n.env_map) for n in nodes), key=lambda c: c.node) == sorted(
        expected, key=lambda c: c.node
    )
    for gateway in find(resources, CONTAINER, "gateway"):
        assert contract.decode_gateway(gateway.label_map) == GatewayContract.of(settings)
    for container in find(resources, CONTAINER):
        assert contract.role_of(container.label_map) in contract.ROLES
        assert contract.declared_environment(container.label_map) == settings.environment
        assert contract.decode_publish_scope(container.label_map) == ("security-groups" if settings.target == "aws" else "loopback")


def test_renamed_label_keys_still_work_end_to_end(monkeypatch):
    # Every key of the contract renamed: the program writes the new keys, the policies read them, and nothing
    # anywhere else still spells the old ones.
    renamed = {f.name: f"fleet.renamed/{f.name}" for f in dataclasses.fields(contract.LABELS)}
    old_keys = set(contract.label_keys())
    monkeypatch.setattr(contract, "LABELS", dataclasses.replace(contract.LABELS, **renamed))
    resources = program_resources("prod", renamed_labels=renamed)
    for container in find(resources, CONTAINER):
        assert container.label_map and not set(container.label_map) & old_keys
    report = evaluate(resources, "prod")
    assert report.violations == []
    assert set(report.passed()) == set(rules.POLICY_NAMES)
    for node in find(resources, CONTAINER, "ollama"):
        set_models(node, [{"name": "llama3.1", "tag": "70b", "quantization": "q8_0", "numCtx": 8192}])
    assert evaluate(resources, "prod").by_policy("vram-fit")
