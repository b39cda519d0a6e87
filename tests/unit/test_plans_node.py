"""The plan of an Ollama node and of the local Docker host (fleet.plans.node, fleet.plans.placement): pure values
of the stack, without Pulumi."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from fleet import contract, ports
from fleet.config import ModelSpec
from fleet.local.ollama import smollm2_gguf
from fleet.node_runtime import NodeRuntime
from fleet.plans.naming import container_name
from fleet.plans.node import DCGM_EXPORTER, METER, NODE_EXPORTER, OLLAMA, node_plan
from fleet.plans.placement import LocalHostPlan, PlacementPlan
from fleet.stack_file import load_stack

CONFIG_PATH = "/etc/ollama-fleet"


@pytest.fixture(scope="module")
def staging():
    return load_stack("staging").settings


@pytest.fixture(scope="module")
def dev():
    return load_stack("dev").settings


def test_every_container_is_named_after_the_component_and_the_meter_proxies_ollama(staging):
    group = staging.node_groups[0]
    plan = node_plan(staging, group, 1, "ollama-chat-1", CONFIG_PATH)
    assert plan.node == f"{group.name}-1" and plan.group == group.name
    for role in (OLLAMA, METER, NODE_EXPORTER, DCGM_EXPORTER):
        assert plan.container(role) == container_name("ollama-chat-1", role) == f"ollama-chat-1-{role}"
    with pytest.raises(KeyError, match="gateway"):
        plan.container("gateway")
    assert plan.runtime == NodeRuntime.of(group, plan.node, [c.name for c in staging.gateway.clients], plan.container(OLLAMA))
    assert plan.runtime.meter.upstream == f"http://ollama-chat-1-ollama:{ports.OLLAMA}"
    assert plan.images.ollama == staging.images.ollama and plan.images.python == staging.images.python
    assert plan.images.dcgm_exporter == staging.images.dcgm_exporter
    assert plan.docker_host == staging.local.docker_host
    assert plan.placement == PlacementPlan("aws", staging.local.bind_address, {contract.LABELS.environment: "staging"})


def test_the_labels_carry_the_node_contract_and_read_back(staging):
    group = staging.node_groups[0]
    plan = node_plan(staging, group, 0, "ollama-chat-0", CONFIG_PATH)
    ollama = plan.labels[OLLAMA]
    assert ollama[contract.LABELS.role] == OLLAMA and ollama[contract.LABELS.environment] == "staging"
    decoded = contract.decode_node(ollama, plan.runtime.container_environment())
    assert decoded == contract.NodeContract.of(staging, group, 0)
    assert ollama[contract.LABELS.models] == plan.models == contract.models_value(group)
    for role in (METER, NODE_EXPORTER, DCGM_EXPORTER):
        assert plan.labels[role][contract.LABELS.role] == role
        assert plan.labels[role][contract.LABELS.node] == plan.node
    assert plan.labels[METER][contract.LABELS.node_group] == group.name


def test_a_group_outside_the_stack_is_refused(staging):
    stray = staging.node_groups[0].model_copy(update={"name": "elsewhere"})
    with pytest.raises(ValueError, match="elsewhere"):
        node_plan(staging, stray, 0, "ollama-elsewhere-0", CONFIG_PATH)


def test_gguf_files_are_staged_under_the_hosts_imports_folder(tmp_path, dev):
    gguf = tmp_path / "my.model.gguf"
    gguf.symlink_to(smollm2_gguf())  # the warm-up step reads the header (embedding or not)
    custom = ModelSpec(name="custom", tag="1.5b", quantization="q4_0", gguf=str(gguf), num_ctx=2048)
    group = dev.node_groups[0]
    group = group.model_copy(update={"models": [*group.models, custom]})
    config_path = tmp_path / "host config"
    plan = node_plan(dev, group, 0, "ollama-cpu-0", str(config_path))

    (step,) = plan.staging  # only the GGUF model; the catalog model is pulled
    assert step.resource == "ollama-cpu-0-stage-custom-1-5b" and step.source == str(gguf)
    assert step.path == f"{config_path}/imports/my.model.gguf"
    # The pull step copies from where the file is: on the deployer's disk, or where the staging put it.
    assert f"docker cp {shlex.quote(str(gguf))} " in plan.pull_script(remote=False)
    assert f"docker cp {shlex.quote(step.path)} " in plan.pull_script(remote=True)
    assert str(gguf) not in plan.pull_script(remote=True)

    # What ssh runs on the host (one argument, unquoted by the remote shell) writes the file from stdin.
    (command,) = shlex.split(step.receive)
    received = subprocess.run(["sh", "-c", command], input=b"GGUF-bytes", capture_output=True, timeout=30)
    assert received.returncode == 0, received.stderr
    assert (config_path / "imports" / "my.model.gguf").read_bytes() == b"GGUF-bytes"


def test_a_group_without_resident_models_has_no_warm_up(dev):
    group = dev.node_groups[0]
    assert node_plan(dev, group, 0, "ollama-cpu-0", CONFIG_PATH).warm is not None
    cold = group.model_copy(update={"models": [m.model_copy(update={"keep_loaded": False}) for m in group.models]})
    plan = node_plan(dev, cold, 0, "ollama-cpu-0", CONFIG_PATH)
    assert plan.warm is None and plan.staging == ()
    assert plan.pull_script(remote=True) == plan.pull_script(remote=False)


def test_the_local_host_plan_names_its_network_and_volume(dev):
    plan = LocalHostPlan.of(dev, "ollama-local")
    assert (plan.network, plan.models_volume) == ("ollama-local-net", "ollama-local-models")
    assert plan.docker_host == dev.local.docker_host and plan.bind_address == dev.local.bind_address
    assert plan.labels == contract.environment_labels(dev)
    assert PlacementPlan.of(dev) == PlacementPlan("local", dev.local.bind_address, plan.labels)
