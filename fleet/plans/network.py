"""The network plan of an AWS stack: the VPC (created, or the stack's own), one subnet per zone, the two
security groups' rules least privilege first, and the tags every network resource carries.

components/network.py wires exactly this plan; why the rules are what they are is told there and below.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fleet import address_ranges, ports
from fleet.config import FleetSettings
from fleet.plans.subnets import plan_subnets
from fleet.stack_file import StackConfigError
from fleet.tags import NAME_KEY, fleet_tags

COMPONENT = "network"
# AWS-managed prefix list of the Route 53 health checkers (IPv4), for HA stacks with restricted client CIDRs.
ROUTE53_HEALTHCHECKS_PREFIX_LIST = "com.amazonaws.route53-healthchecks"
# Metrics ports Prometheus (on the gateway host) scrapes on every node.
NODE_METRICS_PORTS = (ports.METER_METRICS, ports.NODE_EXPORTER, ports.DCGM_EXPORTER)
# Ports the second gateway host exposes to the first one's Prometheus in HA stacks.
GATEWAY_METRICS_PORTS = (ports.NODE_EXPORTER, ports.NGINX_EXPORTER, ports.GATEWAY_LOG_EXPORTER)
# Outbound from every host: HTTPS (registries, Ollama's model store, SSM, NVIDIA's apt repository) and
# HTTP (Ubuntu's apt mirrors). DNS and NTP go to the VPC's own resolvers, which security groups do not filter.
EGRESS_PORTS = (443, 80)

Group = Literal["gateway", "node"]


@dataclass(frozen=True)
class RuleSpec:
    """One security group rule, before it becomes a resource."""

    direction: Literal["ingress", "egress"]
    group: Group  # the group the rule belongs to
    port: int
    peer_kind: Literal["cidr", "group", "prefix-list"]
    peer: str  # a CIDR, a group name ("gateway"/"node") or a prefix list name
    description: str

    @property
    def slug(self) -> str:
        peer = self.peer.replace(".", "-").replace("/", "-").replace(":", "-")
        return f"{self.group}-{self.direction}-{self.port}-{self.peer_kind}-{peer}"


@dataclass(frozen=True)
class NetworkPlan:
    """What the network component creates or adopts, and how it tags it."""

    stack_file: str  # named by the errors found only once the cloud answers (an existing subnet's zone)
    zones: tuple[str, ...]
    vpc_cidr: str
    # The stack's own VPC and its subnets (one per zone, in the order of `zones`); None: a VPC is created.
    vpc_id: str | None
    subnet_ids: tuple[str, ...]
    # The created VPC's subnets, one per zone in the order of `zones` (none with the stack's own VPC).
    subnet_cidrs: tuple[str, ...]
    rules: tuple[RuleSpec, ...]
    tags: Mapping[str, str]  # every network resource's tags but its Name

    def tags_of(self, name: str) -> dict[str, str]:
        return {**self.tags, NAME_KEY: name}


def _outside(cidrs: list[str], within: list[str]) -> list[str]:
    """The ranges of `cidrs` that no range of `within` holds whole."""
    containers = [ipaddress.ip_network(c, strict=False) for c in within]
    found = []
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        if not any(network.version == c.version and network.subnet_of(c) for c in containers):
            found.append(cidr)
    return found


def plan_rules(settings: FleetSettings) -> list[RuleSpec]:
    """Every security group rule the fleet needs, least privilege first."""
    gateway, aws_settings = settings.gateway, settings.aws
    assert aws_settings is not None
    rules: list[RuleSpec] = []

    # Clients reach the gateway on HTTPS, and on HTTP only to be redirected to HTTPS.
    for cidr in gateway.client_cidrs:
        rules.append(RuleSpec("ingress", "gateway", gateway.https_port, "cidr", cidr, "HTTPS API from clients"))
        if gateway.http_port != gateway.https_port:
            rules.append(RuleSpec("ingress", "gateway", gateway.http_port, "cidr", cidr, "HTTP redirect to HTTPS"))
    if gateway.high_availability and not address_ranges.is_world(gateway.client_cidrs):
        # Failover needs Route 53's health checkers to see /health even when clients are restricted.
        rules.append(
            RuleSpec("ingress", "gateway", gateway.https_port, "prefix-list", ROUTE53_HEALTHCHECKS_PREFIX_LIST, "Route 53 health checks")
        )

    # Prometheus (on the gateway host): from admin CIDRs only (never the whole internet: the config refuses it);
    # with none, through SSM port forwarding. Grafana's port is opened to no CIDR: the gateway serves it over
    # HTTPS to the admin CIDRs (nginx checks them), which may lie outside the client CIDRs.
    if settings.monitoring.enabled:
        for cidr in gateway.admin_cidrs:
            rules.append(RuleSpec("ingress", "gateway", ports.PROMETHEUS, "cidr", cidr, "Prometheus from admins"))
        if gateway.tls.mode != "off":
            for cidr in _outside(gateway.admin_cidrs, gateway.client_cidrs):
                rules.append(RuleSpec("ingress", "gateway", gateway.https_port, "cidr", cidr, "Grafana over HTTPS from admins"))

    # Nodes: the metering proxy (the gateway's upstream) and the metrics ports, from the gateway's group only.
    # Ollama's own port (11434) is not opened at all: only the metering proxy on the same host talks to it.
    rules.append(RuleSpec("ingress", "node", ports.METER, "group", "gateway", "Ollama (metered) from the gateway"))
    rules.append(RuleSpec("egress", "gateway", ports.METER, "group", "node", "Ollama (metered) on the nodes"))
    for port in NODE_METRICS_PORTS:
        rules.append(RuleSpec("ingress", "node", port, "group", "gateway", "metrics scraped by Prometheus"))
        rules.append(RuleSpec("egress", "gateway", port, "group", "node", "Prometheus scrapes the nodes"))
    if gateway.high_availability and settings.monitoring.enabled:
        for port in GATEWAY_METRICS_PORTS:
            rules.append(RuleSpec("ingress", "gateway", port, "group", "gateway", "metrics of the other gateway host"))
            rules.append(RuleSpec("egress", "gateway", port, "group", "gateway", "Prometheus scrapes the other gateway host"))
        if gateway.tls.mode != "off":
            # Grafana runs on the first gateway host; the second one's nginx serves it too.
            rules.append(RuleSpec("ingress", "gateway", ports.GRAFANA, "group", "gateway", "Grafana for the other gateway's nginx"))
            rules.append(RuleSpec("egress", "gateway", ports.GRAFANA, "group", "gateway", "nginx reaches Grafana on the first gateway host"))

    # SSH only where the stack names admin CIDRs; by default there is no port 22 at all (SSM).
    for cidr in aws_settings.ssh_cidrs:
        for group in ("gateway", "node"):
            rules.append(RuleSpec("ingress", group, 22, "cidr", cidr, "SSH from admins"))

    for group in ("gateway", "node"):
        for port in EGRESS_PORTS:
            rules.append(RuleSpec("egress", group, port, "cidr", "0.0.0.0/0", "outbound HTTPS/HTTP (images, models, SSM, packages)"))
    return rules


def network_plan(settings: FleetSettings, stack: str) -> NetworkPlan:
    """The network of an AWS stack (its settings have an `aws` section: the config requires it for `target: aws`)."""
    stack_file = f"Pulumi.{stack}.yaml"
    aws_settings = settings.aws
    if aws_settings is None:
        raise StackConfigError(stack_file, ["aws: the AWS network needs an `aws` section (region, zones)"])
    created = aws_settings.vpc_id is None
    return NetworkPlan(
        stack_file=stack_file,
        zones=tuple(aws_settings.zones),
        vpc_cidr=aws_settings.vpc_cidr,
        vpc_id=aws_settings.vpc_id,
        subnet_ids=tuple(aws_settings.subnet_ids),
        subnet_cidrs=tuple(plan_subnets(aws_settings.vpc_cidr, len(aws_settings.zones))) if created else (),
        rules=tuple(plan_rules(settings)),
        tags=fleet_tags(settings, stack, COMPONENT),
    )
