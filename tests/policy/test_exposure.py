"""A host is exposed to what all of its security groups admit together: `no-public-inference-ports` adds up the
ranges of every group attached to each instance, launch template and network interface, whatever rule resource
opens them (inline `ingress`, `aws.vpc.SecurityGroupIngressRule`, `aws.ec2.SecurityGroupRule`), and knows a group
by its URN in a preview, before its id exists."""

from __future__ import annotations

import pytest
from policy_builders import (
    INSTANCE,
    SECURITY_GROUP,
    SG_RULE,
    attach,
    find,
    ingress_rule,
    resource,
    security_group,
)

from fleet.preview.policy_runner import evaluate
from policies import rules

POLICY = "no-public-inference-ports"


def violations(resources):
    return evaluate(resources, "prod").by_policy(POLICY)


def node_instance(resources):
    return next(r for r in find(resources, INSTANCE) if "chat-host-0" in r.name)


def node_group(resources):
    return next(r for r in find(resources, SECURITY_GROUP) if r.name.endswith("-node"))


def test_the_program_attaches_its_groups_by_property_dependency(resources_of):
    # What the engine tells a policy about a group a preview has not created: its URN, through the property.
    resources = resources_of("prod")
    instance = node_instance(resources)
    assert instance.property_dependencies["vpcSecurityGroupIds"] == [node_group(resources).urn]
    assert violations(resources) == []


# Each group alone admits one /8 (not the world); together, on one host, they admit more than a /8.
SPLITS = {
    "two /8s": (["11.0.0.0/8"], ["12.0.0.0/8"]),
    "IPv4 and IPv4 written as IPv6": (["11.0.0.0/8"], ["::ffff:12.0.0.0/104"]),
    "halves of a /7": (["12.0.0.0/8"], ["13.0.0.0/9", "13.128.0.0/9"]),
}


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("port", [11434, 11435, 9090, 22])
def test_an_instance_in_two_groups_that_each_admit_part_of_the_world_is_exposed(resources_of, split, port):
    first, second = SPLITS[split]
    resources = resources_of("prod")
    instance, node = node_instance(resources), node_group(resources)
    (node_id,) = instance.inputs["vpcSecurityGroupIds"]
    # The program's node group gets a separate rule; a second group (another program's) opens the rest inline.
    extra = security_group("prod", "shared-ops", "sg-0aaaaaaaaaaaaaaa1", [(port, second)])
    rule = ingress_rule("prod", "ops-rule", port, group=node_id, **_cidr_kwargs(first))
    rule.property_dependencies["securityGroupId"] = [node.urn]
    resources += [extra, rule]
    assert violations(resources) == []  # each group alone is within a /8
    attach(instance, "vpcSecurityGroupIds", [node, extra], [node_id, "sg-0aaaaaaaaaaaaaaa1"])
    found = violations(resources)
    assert [v.resource_name for v in found] == [instance.name]
    message = found[0].message
    assert message.startswith("Pulumi.prod.yaml: ") and f"ports {port} " in message
    assert "shared-ops" in message and node.name in message and "the world" in message
    if port == 22:
        assert "ollama-fleet:fleet.aws.sshCidrs" in message
    # The node's other instance is in the node group only: not exposed.
    assert all("chat-host-1" not in v.resource_name for v in found)


def _cidr_kwargs(cidrs):
    (cidr,) = cidrs
    return {"cidr6": cidr} if ":" in cidr else {"cidr": cidr}


def test_groups_unknown_until_created_are_known_by_their_urns(resources_of):
    # In a preview the groups' ids are unknown: the instance's vpcSecurityGroupIds are, and so are the rules'
    # securityGroupId; the engine's property dependencies still say which groups they are.
    resources = resources_of("prod")
    instance = node_instance(resources)
    first = security_group("prod", "first", "unused")
    second = security_group("prod", "second", "unused")
    for group in (first, second):
        group.outputs = {}
    rules_ = []
    for name, group, cidr in (("a", first, "11.0.0.0/8"), ("b", second, "12.0.0.0/8")):
        rule = ingress_rule("prod", f"rule-{name}", 11434, cidr=cidr)
        attach(rule, "securityGroupId", [group])
        rule.inputs["securityGroupId"] = rule.inputs["securityGroupId"][0]
        rules_.append(rule)
    attach(instance, "vpcSecurityGroupIds", [first, second])
    found = violations(resources + [first, second] + rules_)
    assert [v.resource_name for v in found] == [instance.name]
    assert "11.0.0.0/8, 12.0.0.0/8" in found[0].message


def test_launch_templates_network_interfaces_and_attachments_count_every_group(resources_of):
    a = security_group("prod", "ga", "sg-a", [(9100, ["11.0.0.0/8"])])
    b = security_group("prod", "gb", "sg-b", [(9100, ["12.0.0.0/8"])])
    c = security_group("prod", "gc", "sg-c")
    template = resource("prod", rules.LAUNCH_TEMPLATE, "nodes", {
        "metadataOptions": {"httpTokens": "required"},
        "networkInterfaces": [{"securityGroups": ["sg-a"]}, {"securityGroups": ["sg-b"]}],
    })
    interface = resource("prod", rules.NETWORK_INTERFACE, "eni", {"securityGroups": ["sg-a"]}, {"id": "eni-1"})
    attachment = resource("prod", rules.SG_ATTACHMENT, "eni-gb", {"networkInterfaceId": "eni-1", "securityGroupId": "sg-b"})
    # A separate aws.ec2.SecurityGroupRule adds a third /8 to group c; an instance in a and c is exposed too.
    rule = resource("prod", SG_RULE, "gc-rule", {"type": "ingress", "securityGroupId": "sg-c", "fromPort": 9100,
                                                  "toPort": 9100, "protocol": "tcp", "cidrBlocks": ["13.0.0.0/8"]})
    host = resource("prod", INSTANCE, "host", {"vpcSecurityGroupIds": ["sg-a", "sg-c"]})
    lone = resource("prod", INSTANCE, "lone", {"vpcSecurityGroupIds": ["sg-b"]})
    found = violations(resources_of("prod") + [a, b, c, template, interface, attachment, rule, host, lone])
    assert sorted(v.resource_name for v in found) == ["eni", "host", "nodes"]
    assert all("ports 9100 " in v.message for v in found)


def test_a_group_open_to_the_world_alone_is_reported_once_on_its_rule(resources_of):
    resources = resources_of("prod")
    instance, node = node_instance(resources), node_group(resources)
    (node_id,) = instance.inputs["vpcSecurityGroupIds"]
    extra = security_group("prod", "other", "sg-other", [(11434, ["0.0.0.0/0"])])
    attach(instance, "vpcSecurityGroupIds", [node, extra], [node_id, "sg-other"])
    assert [v.resource_name for v in violations(resources + [extra])] == ["other"]


def test_inline_rules_and_separate_rules_of_one_group_count_together(resources_of):
    group = security_group("prod", "mixed", "sg-mixed", [(3000, ["11.0.0.0/8"])])
    rule = ingress_rule("prod", "mixed-rule", 3000, cidr="12.0.0.0/8", group="sg-mixed")
    found = violations(resources_of("prod") + [group, rule])
    assert sorted(v.resource_name for v in found) == ["mixed", "mixed-rule"]
