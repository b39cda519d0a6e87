"""The network component under mocks: it creates (or adopts) the planned VPC, subnets and rules, tagged."""

from __future__ import annotations

import ipaddress

import pulumi
import pytest
from aws_mocks import AwsMocks, deploy, plain, stack_settings

from components.network import Network, NetworkArgs
from fleet import ports
from fleet.preview.mock_cloud import fake_outputs
from fleet.plans.network import network_plan, plan_rules
from fleet.stack_file import StackConfigError

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SG = "aws:ec2/securityGroup:SecurityGroup"
UNTAGGABLE = {
    "aws:ec2/route:Route",
    "aws:ec2/routeTableAssociation:RouteTableAssociation",
}


def build_network(settings, stack="prod", mocks=None):
    def build():
        network = Network("net", NetworkArgs(plan=network_plan(settings, stack)))
        return {
            "vpc": network.vpc_id,
            "subnets": pulumi.Output.all(*network.subnet_ids),
            "gateway_sg": network.gateway_sg_id,
            "node_sg": network.node_sg_id,
        }

    return deploy(build, stack=stack, mocks=mocks)


def world(inputs: dict) -> bool:
    return any(
        inputs.get(key) and ipaddress.ip_network(inputs[key], strict=False).prefixlen == 0 for key in ("cidrIpv4", "cidrIpv6")
    )


def test_created_network_under_mocks_has_separate_rule_resources_and_tags():
    settings = stack_settings("prod")
    result = build_network(settings)
    vpc = result.one("aws:ec2/vpc:Vpc")
    assert plain(vpc.inputs)["cidrBlock"] == "10.70.0.0/16"
    subnets = result.of_type("aws:ec2/subnet:Subnet")
    # subnet_ids are index-aligned with aws.zones (hosts and their volumes rely on it).
    id_by_zone = {plain(s.inputs)["availabilityZone"]: fake_outputs(s.type, s.name, {})[0] for s in subnets}
    assert result.values["subnets"] == [id_by_zone[zone] for zone in settings.aws.zones]
    cidr_by_zone = {plain(s.inputs)["availabilityZone"]: plain(s.inputs)["cidrBlock"] for s in subnets}
    assert [cidr_by_zone[zone] for zone in settings.aws.zones] == ["10.70.0.0/20", "10.70.16.0/20"]
    assert all(plain(s.inputs).get("mapPublicIpOnLaunch") is False for s in subnets)
    routes = result.of_type("aws:ec2/route:Route")
    assert [plain(r.inputs)["destinationCidrBlock"] for r in routes] == ["0.0.0.0/0"]
    assert not result.of_type("aws:ec2/natGateway:NatGateway")

    groups = result.of_type(SG)
    assert len(groups) == 2
    for group in groups:
        inputs = plain(group.inputs)
        assert not inputs.get("ingress") and not inputs.get("egress"), "rules must be separate resources"
    sg_ids = {result.values["gateway_sg"], result.values["node_sg"]}
    rules = result.of_type(INGRESS) + result.of_type(EGRESS)
    assert len(rules) == len(plan_rules(settings))
    for rule in rules:
        inputs = plain(rule.inputs)
        assert inputs["securityGroupId"] in sg_ids
        assert inputs["ipProtocol"] == "tcp" and inputs["fromPort"] == inputs["toPort"]
        if world(inputs) and rule.type == INGRESS:
            assert int(inputs["fromPort"]) not in ports.PRIVATE_PORTS
        if "referencedSecurityGroupId" in inputs:
            assert inputs["referencedSecurityGroupId"] in sg_ids

    for resource in result.resources:
        if resource.custom and resource.type not in UNTAGGABLE:
            tags = plain(resource.inputs).get("tags") or {}
            assert tags.get("project") == "ollama-fleet", resource.name
            assert tags.get("stack") == "prod" and tags.get("component") == "network", resource.name
            assert tags.get("cost-center") == "ml-platform", resource.name


def test_existing_vpc_is_used_as_given_and_checked_zone_by_zone():
    changes = {
        "aws.vpcId": "vpc-0123456789abcdef0",
        "aws.subnetIds": ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"],
    }
    settings = stack_settings("prod", changes)
    subnets = {
        "subnet-0aaaaaaaaaaaaaaa1": ("us-east-1a", "vpc-0123456789abcdef0"),
        "subnet-0bbbbbbbbbbbbbbb2": ("us-east-1b", "vpc-0123456789abcdef0"),
    }
    result = build_network(settings, mocks=AwsMocks(subnets=subnets))
    assert not result.of_type("aws:ec2/vpc:Vpc") and not result.of_type("aws:ec2/subnet:Subnet")
    assert result.values["vpc"] == "vpc-0123456789abcdef0"
    assert result.values["subnets"] == changes["aws.subnetIds"]
    assert sorted(c["id"] for c in result.invoked("aws:ec2/getSubnet:getSubnet")) == sorted(changes["aws.subnetIds"])
    assert {plain(g.inputs)["vpcId"] for g in result.of_type(SG)} == {"vpc-0123456789abcdef0"}

    swapped = dict(subnets)
    swapped["subnet-0aaaaaaaaaaaaaaa1"] = ("us-east-1b", "vpc-0123456789abcdef0")
    with pytest.raises(Exception, match=r"aws.subnetIds\[0\]: subnet-0aaaaaaaaaaaaaaa1 is in us-east-1b"):
        build_network(settings, mocks=AwsMocks(subnets=swapped))


def test_existing_vpc_needs_one_subnet_per_zone():
    with pytest.raises(StackConfigError, match=r"Pulumi.prod.yaml[\s\S]*aws.subnetIds: with aws.vpcId, give one subnet per zone"):
        stack_settings("prod", {"aws.vpcId": "vpc-0123456789abcdef0", "aws.subnetIds": ["subnet-0aaaaaaaaaaaaaaa1"]})
