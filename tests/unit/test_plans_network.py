"""The network plan, without Pulumi: subnets per zone, least-privilege security group rules, the plan's tags."""

from __future__ import annotations

import ipaddress

import pytest
from aws_mocks import stack_settings

from fleet import ports
from fleet.plans.network import ROUTE53_HEALTHCHECKS_PREFIX_LIST, network_plan, plan_rules
from fleet.plans.subnets import plan_subnets
from fleet.stack_file import StackConfigError


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
        rules = plan_rules(stack_settings(stack))
        for rule in rules:
            if rule.direction == "ingress" and rule.peer_kind == "cidr" and ipaddress.ip_network(rule.peer).prefixlen == 0:
                assert rule.port not in ports.PRIVATE_PORTS, rule
                assert rule.group == "gateway" and rule.port in (443, 80), rule


def test_nodes_accept_only_the_gateway_and_never_expose_ollama_itself():
    rules = plan_rules(stack_settings("prod"))
    node_ingress = [r for r in rules if r.group == "node" and r.direction == "ingress"]
    assert {r.port for r in node_ingress} == {ports.METER, ports.METER_METRICS, ports.NODE_EXPORTER, ports.DCGM_EXPORTER}
    assert all(r.peer_kind == "group" and r.peer == "gateway" for r in node_ingress)
    assert not [r for r in rules if r.port == ports.OLLAMA]


def test_ssh_is_closed_by_default_and_opened_only_to_named_cidrs():
    assert not [r for r in plan_rules(stack_settings("prod")) if r.port == 22]
    settings = stack_settings("prod", {"aws.sshCidrs": ["198.51.100.7/32"]})
    ssh = [r for r in plan_rules(settings) if r.port == 22]
    assert {(r.group, r.peer) for r in ssh} == {("gateway", "198.51.100.7/32"), ("node", "198.51.100.7/32")}


def test_prometheus_follows_admin_cidrs_and_grafana_is_open_to_no_cidr():
    rules = plan_rules(stack_settings("prod"))
    prometheus = [r for r in rules if r.port == ports.PROMETHEUS]
    assert [(r.group, r.peer_kind, r.peer) for r in prometheus] == [("gateway", "cidr", "203.0.113.0/24")]
    # Grafana is served by the gateway over HTTPS: no range reaches its port.
    assert not [r for r in rules if r.port == ports.GRAFANA and r.peer_kind == "cidr"]

    closed = plan_rules(stack_settings("prod", {"gateway.adminCidrs": []}))
    assert not [r for r in closed if r.port == ports.PROMETHEUS]
    off = plan_rules(stack_settings("prod", {"monitoring.enabled": False}))
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
    rules = plan_rules(settings)
    https = [(r.peer, r.description) for r in rules if r.port == 443 and r.peer_kind == "cidr" and r.direction == "ingress"]
    # 198.51.100.7/32 is inside a client range already: one rule per range, no duplicate
    assert https == [
        ("192.0.2.0/24", "HTTPS API from clients"),
        ("198.51.100.0/24", "HTTPS API from clients"),
        ("203.0.113.0/24", "Grafana over HTTPS from admins"),
    ]
    assert len({r.slug for r in rules}) == len(rules)
    # With every address a client (prod's file), no extra rule; with TLS off Grafana is not served by the gateway.
    assert not [r for r in plan_rules(stack_settings("prod")) if "Grafana over HTTPS" in r.description]
    plain_http = stack_settings("prod", {"gateway.clientCidrs": ["192.0.2.0/24"], "gateway.tls": {"mode": "off"}})
    assert not [r for r in plan_rules(plain_http) if "Grafana" in r.description]


def test_the_second_gateway_reaches_grafana_on_the_first_in_ha_stacks():
    rules = plan_rules(stack_settings("prod"))
    assert stack_settings("prod").gateway.high_availability
    grafana = {(r.direction, r.group, r.peer_kind, r.peer) for r in rules if r.port == ports.GRAFANA}
    assert grafana == {("ingress", "gateway", "group", "gateway"), ("egress", "gateway", "group", "gateway")}
    single = plan_rules(stack_settings("prod", {"gateway.highAvailability": False}))
    assert not [r for r in single if r.port == ports.GRAFANA]


def test_restricted_clients_with_failover_still_admit_route53_health_checks():
    settings = stack_settings("prod", {"gateway.clientCidrs": ["192.0.2.0/24"]})
    rules = plan_rules(settings)
    checks = [r for r in rules if r.peer_kind == "prefix-list"]
    assert [(c.port, c.peer) for c in checks] == [(443, ROUTE53_HEALTHCHECKS_PREFIX_LIST)]
    assert not [r for r in plan_rules(stack_settings("prod")) if r.peer_kind == "prefix-list"]


def test_the_plan_carves_subnets_only_for_a_created_vpc_and_tags_like_every_aws_resource():
    settings = stack_settings("prod")
    plan = network_plan(settings, "prod")
    assert plan.zones == tuple(settings.aws.zones) and plan.vpc_id is None
    assert plan.subnet_cidrs == tuple(plan_subnets(settings.aws.vpc_cidr, len(settings.aws.zones)))
    assert plan.rules == tuple(plan_rules(settings))
    tags = plan.tags_of("net-vpc")
    assert tags["Name"] == "net-vpc" and tags["component"] == "network" and tags["stack"] == "prod"
    assert tags["cost-center"] == "ml-platform" and "Name" not in plan.tags

    subnets = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"]
    own = network_plan(stack_settings("prod", {"aws.vpcId": "vpc-0123456789abcdef0", "aws.subnetIds": subnets}), "prod")
    assert own.vpc_id == "vpc-0123456789abcdef0" and own.subnet_ids == tuple(subnets) and own.subnet_cidrs == ()


def test_a_stack_without_an_aws_section_has_no_network_plan():
    with pytest.raises(StackConfigError, match=r"Pulumi.dev.yaml[\s\S]*aws: the AWS network needs an `aws` section"):
        network_plan(stack_settings("dev"), "dev")
