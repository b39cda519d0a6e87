"""Stack files and registrations that say one thing and deploy another: each is refused, by config load or by the
policy that reads what the program registers, naming the stack file, the key and what is allowed."""

from __future__ import annotations

import pytest
from policy_builders import (
    CONTAINER,
    REMOTE_IMAGE,
    changed_stack_file,
    find,
    ingress_rule,
    refusal,
    restack,
    set_env,
    set_label,
    set_prop,
    violations,
)

from fleet import address_ranges, contract
from fleet import policy_config
from fleet.policy_config import load_config_file

DIGEST = "@sha256:" + "5" * 64


# ---- a stack named for an environment is judged by that environment's policy config --------------------------


@pytest.mark.parametrize("stack, config", [("stg", "staging"), ("staging-eu", "staging"), ("prod-eu", "prod"), ("Production", "prod")])
def test_a_stack_without_its_own_policy_config_takes_its_environments(stack, config):
    assert policy_config.config_path(stack).name == f"config.{config}.json"
    assert load_config_file(stack) == load_config_file(config)
    assert policy_config.config_path("sandbox") is None and load_config_file("sandbox") == {}


def test_a_staging_stack_of_another_name_needs_digests_as_staging_does(resources_of):
    unpinned = [{"name": "llama3.1", "tag": "8b", "quantization": "q4_K_M", "numCtx": 8192}]
    resources = restack(resources_of("staging", {"nodeGroups.0.models": unpinned}), "staging-eu")
    found = violations(resources, "staging-eu", "pinned-images")
    assert found and all(v.enforcement == "mandatory" for v in found)
    assert found[0].message.startswith("Pulumi.staging-eu.yaml: ollama-fleet:fleet.nodeGroups[0].models[0].digest: ")
    assert "required in prod, staging" in found[0].message


# ---- IPv6 ranges that hold IPv4 addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cidrs, world",
    [
        (["::ffff:0.0.0.0/96"], True),  # IPv4-mapped: 0.0.0.0/0 written as IPv6
        (["::ffff:0.0.0.0/97", "::ffff:128.0.0.0/97"], True),
        (["::/80"], True),  # holds the IPv4-mapped block
        (["64:ff9b::/96"], True),  # NAT64
        (["2002::/16"], True),  # 6to4
        (["::ffff:11.0.0.0/104"], False),  # one /8
        (["::ffff:11.0.0.0/104", "12.0.0.0/24"], True),  # with an IPv4 range beside it: more than a /8
        (["::ffff:11.0.0.0/104", "11.0.0.0/8"], False),  # the same /8 twice counts once
        (["::ffff:10.0.0.0/104", "2002:c0a8::/32"], False),  # private addresses, however written
        (["2002:cb00:7100::/40"], False),  # 203.0.113.0/24, documentation
    ],
)
def test_ipv6_ranges_count_the_ipv4_addresses_they_embed(cidrs, world):
    assert address_ranges.is_world(cidrs) is world


@pytest.mark.parametrize("key", ["gateway.adminCidrs", "aws.sshCidrs"])
def test_config_load_refuses_the_ipv4_internet_written_as_ipv6(tmp_path, key):
    section, field = key.split(".")
    message = refusal(changed_stack_file(tmp_path, "prod", "prod", lambda f: f[section].update({field: ["::ffff:0.0.0.0/96"]})))
    assert "Pulumi.prod.yaml" in message and f"ollama-fleet:fleet.{key}" in message and "allowed: at most one /8" in message


def test_a_security_group_open_to_mapped_ipv4_is_the_world(resources_of):
    rule = ingress_rule("prod", "mapped", 11434, cidr6="::ffff:0:0/96")
    found = violations(resources_of("prod") + [rule], "prod", "no-public-inference-ports")
    assert [v.resource_name for v in found] == ["mapped"] and "allowed: at most one /8" in found[0].message


# ---- the Ollama image decides the rules: it must run on the GPUs and be the one the label names ------------------


def test_a_rocm_image_on_nvidia_gpus_is_refused_at_load(tmp_path):
    message = refusal(changed_stack_file(tmp_path, "prod", "prod", lambda f: f.setdefault("images", {}).update(ollama="ollama/ollama:0.32.15-rocm" + DIGEST)))
    assert "Pulumi.prod.yaml" in message and "ollama-fleet:fleet.images.ollama" in message
    assert "ROCm" in message and "allowed on NVIDIA GPU instance types" in message


def test_a_rocm_image_on_a_gpu_node_is_refused_by_vram_fit(resources_of):
    resources = resources_of("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_label(node, contract.LABELS.ollama_image, "ollama/ollama:0.32.15-rocm" + DIGEST)
    found = violations(resources, "prod", "vram-fit")
    assert found and all("ollama-fleet:fleet.images.ollama" in v.message and "ROCm" in v.message for v in found)
    # On the CPU host of the dev stack the ROCm build runs as the main one does.
    dev = resources_of("dev")
    for node in find(dev, CONTAINER, "ollama"):
        set_label(node, contract.LABELS.ollama_image, "ollama/ollama:0.32.15-rocm" + DIGEST)
    assert violations(dev, "dev", "vram-fit") == []


def test_an_ollama_container_running_another_image_than_its_label_is_refused(resources_of):
    resources = resources_of("prod")
    assert violations(resources, "prod", "concurrency-bounds") == []
    older = "ollama/ollama:0.24.0" + DIGEST
    for image in find(resources, REMOTE_IMAGE):
        if image.name.endswith("-ollama-image"):
            set_prop(image, "name", older)
    found = violations(resources, "prod", "concurrency-bounds")
    assert len(found) == len(find(resources, CONTAINER, "ollama"))
    assert found[0].message.startswith("Pulumi.prod.yaml: ollama-fleet:fleet.images.ollama: ")
    assert f"runs {older}" in found[0].message and "allowed: the image the label names" in found[0].message


# ---- what the Ollama container is given beyond the contract ------------------------------------------------------


@pytest.mark.parametrize("variable, value", [("CUDA_VISIBLE_DEVICES", "0"), ("OLLAMA_NEW_ENGINE", "1"), ("OLLAMA_LLM_LIBRARY", "cpu")])
def test_variables_the_capacity_model_does_not_size_are_refused(resources_of, variable, value):
    resources = resources_of("prod")
    set_env(find(resources, CONTAINER, "ollama")[0], variable, value)
    found = violations(resources, "prod", "vram-fit")
    assert len(found) == 1 and f"{variable} is set" in found[0].message and "allowed: OLLAMA_CONTEXT_LENGTH" in found[0].message


@pytest.mark.parametrize("requests", [[], [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], [{"driver": "nvidia", "deviceIds": ["0", "1"], "capabilities": ["gpu"]}]])
def test_an_ollama_container_given_fewer_gpus_than_the_estimate_places_on_is_refused(resources_of, requests):
    resources = resources_of("prod", {"nodeGroups.0.instanceType": "g5.12xlarge"})
    assert violations(resources, "prod", "vram-fit") == []
    set_prop(find(resources, CONTAINER, "ollama")[0], "deviceRequests", requests)
    found = violations(resources, "prod", "vram-fit")
    assert len(found) == 1 and "ollama-fleet:fleet.nodeGroups[0].instanceType" in found[0].message
    assert "of the 4 GPUs of g5.12xlarge" in found[0].message and "allowed: every GPU of the host" in found[0].message


def test_a_container_in_the_host_network_publishes_beyond_loopback(resources_of):
    resources = resources_of("dev")
    set_prop(find(resources, CONTAINER, "ollama")[0], "networkMode", "host")
    found = violations(resources, "dev", "ports-on-loopback")
    assert len(found) == 1 and "ollama-fleet:fleet.local.bindAddress" in found[0].message
    assert "networkMode host" in found[0].message and "publishBeyondLoopback" in found[0].message


@pytest.mark.parametrize("key, port", [("httpsPort", 22), ("httpsPort", 11434), ("httpPort", 11435), ("httpPort", 9400)])
def test_the_gateways_public_ports_are_none_of_the_private_ones(tmp_path, key, port):
    # The security groups open the gateway's ports to clientCidrs (the world in prod): SSH or Ollama there would
    # be the world's.
    message = refusal(changed_stack_file(tmp_path, "prod", "prod", lambda f: f["gateway"].update({key: port})))
    assert f"ollama-fleet:fleet.gateway.{key}: {port} is used by the fleet's own services" in message
    assert "allowed: any port from 1 to 65535 except 22, " in message


# ---- a contract label or variable given twice, and the Ollama server under another role ------------------------


def test_an_ollama_variable_given_twice_is_refused(resources_of):
    # Ollama (Go) reads the first copy, a dict the last: a repeated knob says nothing for sure.
    resources = resources_of("prod")
    node = find(resources, CONTAINER, "ollama")[0]
    set_prop(node, "envs", ["OLLAMA_NUM_PARALLEL=64", *node.inputs["envs"]])
    found = violations(resources, "prod", "vram-fit")
    assert len(found) == 1 and "OLLAMA_NUM_PARALLEL given more than once" in found[0].message


def test_a_gateway_label_given_twice_is_refused(resources_of):
    resources = resources_of("prod")
    gateway = find(resources, CONTAINER, "gateway")[0]
    set_prop(gateway, "labels", [{"label": contract.LABELS.tls_mode, "value": "off"}, *gateway.inputs["labels"]])
    found = violations(resources, "prod", "tls-in-prod")
    assert len(found) == 1 and f"label {contract.LABELS.tls_mode} given more than once" in found[0].message


def test_the_ollama_image_under_another_role_is_refused(resources_of):
    resources = resources_of("prod")
    ollama_image = next(i for i in find(resources, REMOTE_IMAGE) if i.name.endswith("-ollama-image"))
    meter = find(resources, CONTAINER, "meter")[0]
    set_prop(meter, "image", ollama_image.outputs["imageId"])
    found = violations(resources, "prod", "concurrency-bounds")
    assert len(found) == 1 and found[0].resource_name == meter.name
    assert "runs the Ollama image ollama/ollama:" in found[0].message and "is 'meter'" in found[0].message
