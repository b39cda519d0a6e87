"""The network component under mocks: subnets per zone, least-privilege security groups, tags."""

from __future__ import annotations

import ipaddress

import pulumi
import pytest
from aws_mocks import AwsMocks, deploy, plain, stack_settings

from components.network import (
    ROUTE53_HEALTHCHECKS_PREFIX_LIST,
    Network,
    NetworkArgs,
    plan_rules,
    plan_subnets,
)
from fleet import ports
from fleet.mock_cloud import fake_outputs
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
        network = Network("net", NetworkArgs(settings=settings, stack=stack))
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


def test_subnets_are_carved_per_zone_without_overlap():
    cidrs = plan_subnets("10.70.0.0/16", 3)
    assert cidrs == ["10.70.0.0/20", "10.70.16.0/20", "10.70.32.0/20"]
    nets = [ipaddress.ip_network(c) for c in cidrs]
    assert all(n.subnet_of(ipaddress.ip_network("10.70.0.0/16")) for n in nets)
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
    with pytest.raises(ValueError, match="holds only 16 subnets"):
        plan_subnets("10.0.0.0/24", 17)
    with pytest.raises(ValueError, match="/16 to /28"):
        plan_subnets("10.0.0.0/8", 2)


def test_no_private_port_is_ever_open_to_the_world():
    for stack in ("staging", "prod"):
        rules = plan_rules(stack_settings(stack), stack)
        for rule in rules:
            if rule.direction == "ingress" and rule.peer_kind == "cidr" and ipaddress.ip_network(rule.peer).prefixlen == 0:
                assert rule.port not in ports.PRIVATE_PORTS, rule
                assert rule.group == "gateway" and rule.port in (443, 80), rule


def test_nodes_accept_only_the_gateway_and_never_expose_ollama_itself():
    rules = plan_rules(stack_settings("prod"), "prod")
    node_ingress = [r for r in rules if r.group == "node" and r.direction == "ingress"]
    assert {r.port for r in node_ingress} == {ports.METER, ports.METER_METRICS, ports.NODE_EXPORTER, ports.DCGM_EXPORTER}
    assert all(r.peer_kind == "group" and r.peer == "gateway" for r in node_ingress)
    assert not [r for r in rules if r.port == ports.OLLAMA]


def test_ssh_is_closed_by_default_and_opened_only_to_named_cidrs():
    assert not [r for r in plan_rules(stack_settings("prod"), "prod") if r.port == 22]
    settings = stack_settings("prod", {"aws.sshCidrs": ["198.51.100.7/32"]})
    ssh = [r for r in plan_rules(settings, "prod") if r.port == 22]
    assert {(r.group, r.peer) for r in ssh} == {("gateway", "198.51.100.7/32"), ("node", "198.51.100.7/32")}


def test_prometheus_follows_admin_cidrs_and_grafana_is_open_to_no_cidr():
    rules = plan_rules(stack_settings("prod"), "prod")
    prometheus = [r for r in rules if r.port == ports.PROMETHEUS]
    assert [(r.group, r.peer_kind, r.peer) for r in prometheus] == [("gateway", "cidr", "203.0.113.0/24")]
    # Grafana is served by the gateway over HTTPS: no range reaches its port.
    assert not [r for r in rules if r.port == ports.GRAFANA and r.peer_kind == "cidr"]

    closed = plan_rules(stack_settings("prod", {"gateway.adminCidrs": []}), "prod")
    assert not [r for r in closed if r.port == ports.PROMETHEUS]
    off = plan_rules(stack_settings("prod", {"monitoring.enabled": False}), "prod")
    assert not [r for r in off if r.port in (ports.GRAFANA, ports.PROMETHEUS)]

    # Refused by the config itself (so `fleet validate` reports it), however split, monitoring on or off.
    for monitoring in (True, False):
        for cidrs in (["0.0.0.0/0"], ["0.0.0.0/1", "128.0.0.0/1"]):
            with pytest.raises(StackConfigError, match=r"gateway.adminCidrs: .*admin key would work from the whole internet"):
                stack_settings("prod", {"gateway.adminCidrs": cidrs, "monitoring.enabled": monitoring})


def test_admins_outside_the_client_cidrs_reach_grafana_over_https_only():
    settings = stack_settings(
        "prod",
        {"gateway.clientCidrs": ["192.0.2.0/24", "198.51.100.0/24"], "gateway.adminCidrs": ["203.0.113.0/24", "198.51.100.7/32"]},
    )
    rules = plan_rules(settings, "prod")
    https = [(r.peer, r.description) for r in rules if r.port == 443 and r.peer_kind == "cidr" and r.direction == "ingress"]
    # 198.51.100.7/32 is inside a client range already: one rule per range, no duplicate
    assert https == [
        ("192.0.2.0/24", "HTTPS API from clients"),
        ("198.51.100.0/24", "HTTPS API from clients"),
        ("203.0.113.0/24", "Grafana over HTTPS from admins"),
    ]
    assert len({r.slug for r in rules}) == len(rules)
    # With every address a client (prod's file), no extra rule; with TLS off Grafana is not served by the gateway.
    assert not [r for r in plan_rules(stack_settings("prod"), "prod") if "Grafana over HTTPS" in r.description]
    plain_http = stack_settings("prod", {"gateway.clientCidrs": ["192.0.2.0/24"], "gateway.tls": {"mode": "off"}})
    assert not [r for r in plan_rules(plain_http, "prod") if "Grafana" in r.description]


def test_the_second_gateway_reaches_grafana_on_the_first_in_ha_stacks():
    rules = plan_rules(stack_settings("prod"), "prod")
    assert stack_settings("prod").gateway.high_availability
    grafana = {(r.direction, r.group, r.peer_kind, r.peer) for r in rules if r.port == ports.GRAFANA}
    assert grafana == {("ingress", "gateway", "group", "gateway"), ("egress", "gateway", "group", "gateway")}
    single = plan_rules(stack_settings("prod", {"gateway.highAvailability": False}), "prod")
    assert not [r for r in single if r.port == ports.GRAFANA]


def test_restricted_clients_with_failover_still_admit_route53_health_checks():
    settings = stack_settings("prod", {"gateway.clientCidrs": ["192.0.2.0/24"]})
    rules = plan_rules(settings, "prod")
    checks = [r for r in rules if r.peer_kind == "prefix-list"]
    assert [(c.port, c.peer) for c in checks] == [(443, ROUTE53_HEALTHCHECKS_PREFIX_LIST)]
    assert not [r for r in plan_rules(stack_settings("prod"), "prod") if r.peer_kind == "prefix-list"]


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
    assert len(rules) == len(plan_rules(settings, "prod"))
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
