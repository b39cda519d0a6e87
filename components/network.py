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

import pulumi
import pulumi_aws as aws

from fleet.config import PROJECT
from fleet.plans.network import Group, NetworkPlan
from fleet.stack_file import StackConfigError

TOKEN = f"{PROJECT}:index:Network"


@dataclass
class NetworkArgs:
    plan: NetworkPlan  # fleet.plans.network.network_plan(settings, stack)


class Network(pulumi.ComponentResource):
    """VPC, subnets (one per zone, index-aligned with `aws.zones`) and the gateway and node security groups."""

    vpc_id: pulumi.Output[str]
    subnet_ids: list[pulumi.Output[str]]
    gateway_sg_id: pulumi.Output[str]
    node_sg_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        plan = self._plan = args.plan
        child = pulumi.ResourceOptions(parent=self)

        if plan.vpc_id:
            self.vpc_id, self.subnet_ids = self._existing()
        else:
            self.vpc_id, self.subnet_ids = self._created(name, child)

        self.gateway_sg_id = self._group(name, "gateway", "ollama-fleet gateway: HTTPS from clients").id
        self.node_sg_id = self._group(name, "node", "ollama-fleet nodes: metering and metrics from the gateway only").id
        groups = {"gateway": self.gateway_sg_id, "node": self.node_sg_id}

        prefix_lists: dict[str, pulumi.Output[str]] = {}
        for rule in plan.rules:
            kwargs: dict = {
                "security_group_id": groups[rule.group],
                "ip_protocol": "tcp",
                "from_port": rule.port,
                "to_port": rule.port,
                "description": rule.description,
                "tags": plan.tags_of(f"{name}-{rule.slug}"),
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

    def _group(self, name: str, role: Group, description: str) -> aws.ec2.SecurityGroup:
        # No inline rules: every rule is its own resource (aws.vpc.SecurityGroup*Rule), so AWS's default
        # allow-all egress is removed and nothing is open that the plan does not list.
        return aws.ec2.SecurityGroup(
            f"{name}-{role}",
            vpc_id=self.vpc_id,
            description=description,
            revoke_rules_on_delete=True,
            tags=self._plan.tags_of(f"{name}-{role}"),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _existing(self) -> tuple[pulumi.Output[str], list[pulumi.Output[str]]]:
        plan = self._plan
        # One subnet per zone is checked by the config (fleet.config.Aws).
        assert plan.vpc_id
        subnet_ids = []
        for index, (subnet_id, zone) in enumerate(zip(plan.subnet_ids, plan.zones)):
            found = aws.ec2.get_subnet_output(id=subnet_id, opts=pulumi.InvokeOutputOptions(parent=self))

            def check(result, subnet_id=subnet_id, zone=zone, index=index) -> str:
                # A subnet in another zone would put the host and its model volume in different zones.
                if result.availability_zone != zone:
                    raise StackConfigError(
                        plan.stack_file,
                        [f"aws.subnetIds[{index}]: {subnet_id} is in {result.availability_zone}, not in aws.zones[{index}] = {zone}"],
                    )
                if result.vpc_id != plan.vpc_id:
                    raise StackConfigError(plan.stack_file, [f"aws.subnetIds[{index}]: {subnet_id} is not in {plan.vpc_id}"])
                return result.id

            subnet_ids.append(found.apply(check))
        return pulumi.Output.from_input(plan.vpc_id), subnet_ids

    def _created(self, name: str, child: pulumi.ResourceOptions) -> tuple[pulumi.Output[str], list[pulumi.Output[str]]]:
        plan = self._plan
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=plan.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=plan.tags_of(f"{name}-vpc"),
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=plan.tags_of(f"{name}-igw"), opts=child)
        table = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id, tags=plan.tags_of(f"{name}-public"), opts=child)
        aws.ec2.Route(
            f"{name}-default-route", route_table_id=table.id, destination_cidr_block="0.0.0.0/0", gateway_id=igw.id, opts=child
        )
        subnet_ids = []
        for zone, cidr in zip(plan.zones, plan.subnet_cidrs):
            subnet = aws.ec2.Subnet(
                f"{name}-{zone}",
                vpc_id=vpc.id,
                cidr_block=cidr,
                availability_zone=zone,
                # Instances ask for a public address explicitly; nothing else launched here gets one.
                map_public_ip_on_launch=False,
                tags=plan.tags_of(f"{name}-{zone}"),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(f"{name}-{zone}-public", subnet_id=subnet.id, route_table_id=table.id, opts=child)
            subnet_ids.append(subnet.id)
        return vpc.id, subnet_ids
