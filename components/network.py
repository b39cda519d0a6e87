"""The network the hosts live in: a VPC with one public subnet per zone (or an existing VPC), and two
least-privilege security groups — the gateway's and the nodes'.

Why public subnets and no NAT gateway: GPU nodes pull tens of gigabytes of model weights and images. A NAT
gateway costs about 33 USD a month per zone plus 0.045 USD per GB processed (a 40 GB model pulled on four
nodes is about 7 USD per roll-out), while a public IPv4 address is about 3.6 USD a month. Nodes therefore get a
public address for outbound traffic only: their security group admits nothing from the internet (only the
gateway's group, on the metering and metrics ports), and no port 22 unless `aws.sshCidrs` is set — the
deployer reaches hosts through SSM Session Manager. A stack that must keep nodes off the internet brings its
own VPC (`aws.vpcId` + `aws.subnetIds`, e.g. private subnets behind its NAT); nodes then follow the subnet's
public-IP setting.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_aws as aws

from fleet import address_ranges, ports
from fleet.config import PROJECT, FleetSettings, plan_subnets
from fleet.stack_file import StackConfigError
from fleet.tags import fleet_tags

TOKEN = f"{PROJECT}:index:Network"
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


@dataclass
class NetworkArgs:
    settings: FleetSettings
    stack: str


def _error(stack: str, key: str, message: str) -> StackConfigError:
    return StackConfigError(f"Pulumi.{stack}.yaml", [f"{key}: {message}"])




def _outside(cidrs: list[str], within: list[str]) -> list[str]:
    """The ranges of `cidrs` that no range of `within` holds whole."""
    containers = [ipaddress.ip_network(c, strict=False) for c in within]
    found = []
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        if not any(network.version == c.version and network.subnet_of(c) for c in containers):
            found.append(cidr)
    return found


def plan_rules(settings: FleetSettings, stack: str) -> list[RuleSpec]:
    """Every security group rule the fleet needs, least privilege first. Pure: tested without Pulumi."""
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


class Network(pulumi.ComponentResource):
    """VPC, subnets (one per zone, index-aligned with `aws.zones`) and the gateway and node security groups."""

    vpc_id: pulumi.Output[str]
    subnet_ids: list[pulumi.Output[str]]
    gateway_sg_id: pulumi.Output[str]
    node_sg_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        settings, stack = args.settings, args.stack
        if settings.aws is None:
            raise _error(stack, "aws", "the AWS network needs an `aws` section (region, zones)")
        self._settings, self._stack = settings, stack
        child = pulumi.ResourceOptions(parent=self)

        if settings.aws.vpc_id:
            self.vpc_id, self.subnet_ids = self._existing(name)
        else:
            self.vpc_id, self.subnet_ids = self._created(name, child)

        self.gateway_sg_id = self._group(name, "gateway", "ollama-fleet gateway: HTTPS from clients").id
        self.node_sg_id = self._group(name, "node", "ollama-fleet nodes: metering and metrics from the gateway only").id
        groups = {"gateway": self.gateway_sg_id, "node": self.node_sg_id}

        prefix_lists: dict[str, pulumi.Output[str]] = {}
        for rule in plan_rules(settings, stack):
            kwargs: dict = {
                "security_group_id": groups[rule.group],
                "ip_protocol": "tcp",
                "from_port": rule.port,
                "to_port": rule.port,
                "description": rule.description,
                "tags": self._tags(f"{name}-{rule.slug}"),
            }
            if rule.peer_kind == "group":
                kwargs["referenced_security_group_id"] = groups[rule.peer]
            elif rule.peer_kind == "prefix-list":
                if rule.peer not in prefix_lists:
                    prefix_lists[rule.peer] = aws.ec2.get_managed_prefix_list_output(
                        name=rule.peer, opts=pulumi.InvokeOutputOptions(parent=self)
                    ).id
                kwargs["prefix_list_id"] = prefix_lists[rule.peer]
            elif ipaddress.ip_network(rule.peer, strict=False).version == 6:
                kwargs["cidr_ipv6"] = rule.peer
            else:
                kwargs["cidr_ipv4"] = rule.peer
            rule_type = aws.vpc.SecurityGroupIngressRule if rule.direction == "ingress" else aws.vpc.SecurityGroupEgressRule
            rule_type(f"{name}-{rule.slug}", **kwargs, opts=child)

        self.register_outputs(
            {
                "vpcId": self.vpc_id,
                "subnetIds": self.subnet_ids,
                "gatewaySecurityGroupId": self.gateway_sg_id,
                "nodeSecurityGroupId": self.node_sg_id,
            }
        )

    def _tags(self, name: str) -> dict[str, str]:
        return fleet_tags(self._settings, self._stack, COMPONENT, name)

    def _group(self, name: str, role: Group, description: str) -> aws.ec2.SecurityGroup:
        # No inline rules: every rule is its own resource (aws.vpc.SecurityGroup*Rule), so AWS's default
        # allow-all egress is removed and nothing is open that the plan does not list.
        return aws.ec2.SecurityGroup(
            f"{name}-{role}",
            vpc_id=self.vpc_id,
            description=description,
            revoke_rules_on_delete=True,
            tags=self._tags(f"{name}-{role}"),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _existing(self, name: str) -> tuple[pulumi.Output[str], list[pulumi.Output[str]]]:
        aws_settings = self._settings.aws
        # One subnet per zone is checked by the config (fleet.config.Aws).
        assert aws_settings is not None and aws_settings.vpc_id
        subnet_ids = []
        for index, (subnet_id, zone) in enumerate(zip(aws_settings.subnet_ids, aws_settings.zones)):
            found = aws.ec2.get_subnet_output(id=subnet_id, opts=pulumi.InvokeOutputOptions(parent=self))

            def check(result, subnet_id=subnet_id, zone=zone, index=index) -> str:
                # A subnet in another zone would put the host and its model volume in different zones.
                if result.availability_zone != zone:
                    raise _error(
                        self._stack,
                        f"aws.subnetIds[{index}]",
                        f"{subnet_id} is in {result.availability_zone}, not in aws.zones[{index}] = {zone}",
                    )
                if result.vpc_id != aws_settings.vpc_id:
                    raise _error(self._stack, f"aws.subnetIds[{index}]", f"{subnet_id} is not in {aws_settings.vpc_id}")
                return result.id

            subnet_ids.append(found.apply(check))
        return pulumi.Output.from_input(aws_settings.vpc_id), subnet_ids

    def _created(self, name: str, child: pulumi.ResourceOptions) -> tuple[pulumi.Output[str], list[pulumi.Output[str]]]:
        aws_settings = self._settings.aws
        assert aws_settings is not None
        cidrs = plan_subnets(aws_settings.vpc_cidr, len(aws_settings.zones))  # the config checked it fits
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=aws_settings.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=self._tags(f"{name}-vpc"),
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=self._tags(f"{name}-igw"), opts=child)
        table = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id, tags=self._tags(f"{name}-public"), opts=child)
        aws.ec2.Route(
            f"{name}-default-route", route_table_id=table.id, destination_cidr_block="0.0.0.0/0", gateway_id=igw.id, opts=child
        )
        subnet_ids = []
        for zone, cidr in zip(aws_settings.zones, cidrs):
            subnet = aws.ec2.Subnet(
                f"{name}-{zone}",
                vpc_id=vpc.id,
                cidr_block=cidr,
                availability_zone=zone,
                # Instances ask for a public address explicitly; nothing else launched here gets one.
                map_public_ip_on_launch=False,
                tags=self._tags(f"{name}-{zone}"),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(f"{name}-{zone}-public", subnet_id=subnet.id, route_table_id=table.id, opts=child)
            subnet_ids.append(subnet.id)
        return vpc.id, subnet_ids
