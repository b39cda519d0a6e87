"""The policies judge facts, not declarations: the stack's name decides the environment, ranges count as the
world by the public addresses they hold together, admin ranges are checked whatever monitoring does, and the
containers' published ports are looked at."""

from __future__ import annotations

import copy

import pytest
from policy_builders import (
    CONTAINER,
    SG_INGRESS,
    changed_stack_file,
    find,
    ingress_rule,
    program_resources,
    refusal,
    restack,
    set_label,
    set_prop,
    violations,
)

from fleet import address_ranges, contract
from fleet.preview.policy_runner import evaluate
from fleet.stack_file import environment_of_stack, load_stack_file
from policies import rules


# ---- the stack's name decides the environment ------------------------------------------------------------------


@pytest.mark.parametrize(
    "stack, environment",
    [
        ("prod", "prod"), ("prod-eu", "prod"), ("eu.production", "prod"), ("prd2", "prod"), ("Team_PROD", "prod"),
        ("staging", "staging"), ("stage-2", "staging"), ("stg", "staging"),
        ("dev", "dev"), ("alice-development", "dev"),
        ("dev-prod-mirror", "prod"),  # words of several environments: the strictest
        ("sandbox", None), ("product", None), ("devops", None),
    ],
)
def test_the_stack_name_decides_the_environment(stack, environment):
    assert environment_of_stack(stack) == environment


def test_a_prod_stack_file_declaring_dev_is_refused_at_load(tmp_path):
    path = changed_stack_file(tmp_path, "prod", "prod", lambda f: f.update(environment="dev"))
    message = refusal(path)
    assert "Pulumi.prod.yaml" in message and "ollama-fleet:fleet.environment" in message and "allowed: prod" in message
    # The same file under a name that decides nothing keeps what it declares.
    assert load_stack_file(changed_stack_file(tmp_path, "sandbox", "prod", lambda f: f.update(environment="dev"))).settings.environment == "dev"


def test_a_prod_stack_running_dev_containers_is_refused():
    # What a dev stack file registers, run as stack `prod` (config load refuses that file, so the URNs are moved).
    resources = restack(program_resources("dev"), "prod")
    report = evaluate(resources, "prod", config={"all": "mandatory"})
    found = report.by_policy("environment-of-stack")
    assert len(found) == 1 and found[0].message.startswith("Pulumi.prod.yaml: ollama-fleet:fleet.environment: ")
    assert "allowed: prod" in found[0].message
    # Its other policies apply prod's rules, not the declared dev's: a self-signed certificate is refused.
    assert any("trusted certificate" in v.message for v in report.by_policy("tls-in-prod"))


def test_the_environment_label_is_required(resources_of):
    resources = resources_of("staging")
    set_label(find(resources, CONTAINER, "gateway")[0], contract.LABELS.environment, None)
    found = violations(resources, "staging", "environment-of-stack")
    assert len(found) == 1 and f"label {contract.LABELS.environment} is missing" in found[0].message


# ---- the world, however it is split ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cidrs, world",
    [
        (["0.0.0.0/0"], True),
        (["0.0.0.0/1", "128.0.0.0/1"], True),
        ([f"{i}.0.0.0/8" for i in range(256)], True),
        ([f"{i}.0.0.0/8" for i in range(11, 30)], True),
        (["11.0.0.0/8"], False),  # exactly one /8: not more
        (["11.0.0.0/8", "12.0.0.0/24"], True),
        (["11.0.0.0/8", "11.1.0.0/16"], False),  # overlaps count once
        (["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"], False),  # private and shared
        (["224.0.0.0/3"], False),  # multicast and reserved
        (["203.0.113.0/24", "198.51.100.7/32"], False),
        (["::/0"], True),
        (["::/1", "8000::/1"], True),
        (["2000::/4"], True),
        (["2001:db8::/32", "fc00::/7", "fe80::/10"], False),
        (["2a00::/16"], False),
    ],
)
def test_ranges_count_as_the_world_by_their_public_addresses(cidrs, world):
    assert address_ranges.is_world(cidrs) is world


def test_private_ports_open_to_the_world_in_pieces_are_refused(resources_of):
    halves = [ingress_rule("prod", f"half-{i}", 9090, cidr=cidr) for i, cidr in enumerate(["0.0.0.0/1", "128.0.0.0/1"])]
    found = violations(resources_of("prod") + halves, "prod", "no-public-inference-ports")
    assert {v.resource_name for v in found} == {"half-0", "half-1"}
    assert "ollama-fleet:fleet.gateway.adminCidrs" in found[0].message and "Pulumi.prod.yaml" in found[0].message
    # Two /8s: each alone is at the limit, together in one security group they exceed it.
    eights = [ingress_rule("prod", f"eight-{i}", 3000, cidr=f"{i}.0.0.0/8") for i in (11, 12)]
    assert {v.resource_name for v in violations(resources_of("prod") + eights, "prod", "no-public-inference-ports")} == {"eight-11", "eight-12"}
    # In two different security groups each host admits one /8: not the world for either.
    apart = [ingress_rule("prod", f"apart-{i}", 3000, cidr=f"{i}.0.0.0/8", group=f"sg-{i}") for i in (11, 12)]
    assert violations(resources_of("prod") + apart, "prod", "no-public-inference-ports") == []


def test_256_slash_8s_and_ipv6_halves_are_the_world(resources_of):
    eights = [ingress_rule("prod", f"ssh-{i}", 22, cidr=f"{i}.0.0.0/8") for i in range(256)]
    found = violations(resources_of("prod") + eights, "prod", "no-public-inference-ports")
    assert len(found) == 256 and "ollama-fleet:fleet.aws.sshCidrs" in found[0].message
    v6 = [ingress_rule("prod", f"v6-{i}", 11435, cidr6=c) for i, c in enumerate(["::/1", "8000::/1"])]
    assert len(violations(resources_of("prod") + v6, "prod", "no-public-inference-ports")) == 2


@pytest.mark.parametrize("key", ["gateway.adminCidrs", "aws.sshCidrs"])
@pytest.mark.parametrize("cidrs", [["0.0.0.0/0"], ["0.0.0.0/1", "128.0.0.0/1"], ["::/1", "8000::/1"]])
def test_config_load_refuses_world_admin_and_ssh_ranges(tmp_path, key, cidrs):
    section, field = key.split(".")
    path = changed_stack_file(tmp_path, "prod", "prod", lambda f: f[section].update({field: cidrs}))
    message = refusal(path)
    assert f"ollama-fleet:fleet.{key}" in message and "allowed: at most one /8" in message


def test_world_admin_ranges_are_refused_with_monitoring_off_too(tmp_path):
    def change(fleet):
        fleet["monitoring"]["enabled"] = False
        fleet["gateway"]["adminCidrs"] = ["0.0.0.0/1", "128.0.0.0/1"]

    assert "ollama-fleet:fleet.gateway.adminCidrs" in refusal(changed_stack_file(tmp_path, "prod", "prod", change))


@pytest.mark.parametrize("monitoring", [True, False])
def test_the_policy_checks_the_admin_ranges_whether_monitoring_is_on_or_off(resources_of, monitoring):
    # The admin key's ranges reach nginx whatever monitoring does; config load refuses world ranges, so the
    # gateway's label is edited.
    resources = resources_of("prod", {"monitoring.enabled": monitoring})
    assert violations(resources, "prod", "admin-routes-closed") == []
    for gateway in find(resources, CONTAINER, "gateway"):
        set_label(gateway, contract.LABELS.admin_cidrs, '["0.0.0.0/1","128.0.0.0/1"]')
    found = violations(resources, "prod", "admin-routes-closed")
    assert len(found) == 2 and "ollama-fleet:fleet.gateway.adminCidrs" in found[0].message
    assert "allowed: at most one /8" in found[0].message


# ---- published ports on the local Docker host --------------------------------------------------------------------


def test_a_bind_address_beyond_loopback_needs_the_opt_in(tmp_path):
    message = refusal(changed_stack_file(tmp_path, "dev", "dev", lambda f: f["local"].update(bindAddress="0.0.0.0")))
    assert "ollama-fleet:fleet.local.bindAddress" in message and "publishBeyondLoopback" in message
    allowed = changed_stack_file(tmp_path, "dev", "dev", lambda f: f["local"].update(bindAddress="0.0.0.0", publishBeyondLoopback=True))
    assert load_stack_file(allowed).settings.local.bind_address == "0.0.0.0"


def test_the_program_publishes_on_loopback_and_the_opt_in_is_honoured(resources_of):
    published = [c for c in find(resources_of("dev"), CONTAINER) if c.inputs.get("ports")]
    assert published and all(p["ip"] == "127.0.0.1" for c in published for p in c.inputs["ports"])
    opened = resources_of("dev", {"local.bindAddress": "0.0.0.0", "local.publishBeyondLoopback": True})
    assert any(p["ip"] == "0.0.0.0" for c in find(opened, CONTAINER) for p in c.inputs.get("ports") or [])
    assert violations(opened, "dev", "ports-on-loopback") == []


def test_published_ports_beyond_loopback_are_refused_without_the_opt_in(resources_of):
    # A hand edit: the program binds the dev stack's ports to loopback unless the stack opts in.
    resources = resources_of("dev")
    gateway = find(resources, CONTAINER, "gateway")[0]
    ports = copy.deepcopy(gateway.inputs["ports"])
    for port in ports:
        port["ip"] = "192.168.1.20"
    ports.append({"internal": 9999, "external": 9999})  # no address: Docker binds every one
    set_prop(gateway, "ports", ports)
    found = violations(resources, "dev", "ports-on-loopback")
    assert len(found) == 1 and "ollama-fleet:fleet.local.bindAddress" in found[0].message
    assert "9999" in found[0].message and "0.0.0.0" in found[0].message and "publishBeyondLoopback" in found[0].message
    set_label(gateway, contract.LABELS.publish_scope, None)
    assert "is missing" in violations(resources, "dev", "ports-on-loopback")[0].message


def test_aws_hosts_publish_under_their_security_groups(resources_of):
    resources = resources_of("prod")
    assert any(p.get("ip") == "0.0.0.0" for c in find(resources, CONTAINER, "gateway") for p in c.inputs["ports"])
    assert violations(resources, "prod", "ports-on-loopback") == []
