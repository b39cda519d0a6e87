"""The gateway's public name: Route 53 records in an existing hosted zone, with health-checked failover
between two gateway hosts when `gateway.highAvailability` is set, as `fleet.plans.dns` plans them (trade-offs in
docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from fleet.config import PROJECT
from fleet.plans.dns import DnsPlan, Record

TOKEN = f"{PROJECT}:index:Dns"


@dataclass
class DnsArgs:
    plan: DnsPlan  # fleet.plans.dns.dns_plan(settings, stack)
    gateway_public_ips: Sequence[pulumi.Input[str]]  # one per gateway host, in the plan's order
    gateway_instance_ids: Sequence[pulumi.Input[str]]


class Dns(pulumi.ComponentResource):
    fqdn: pulumi.Output[str]
    url: pulumi.Output[str]
    zone_id: pulumi.Output[str] | None

    def __init__(self, name: str, args: DnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        plan = args.plan
        plan.check_hosts(len(args.gateway_public_ips), len(args.gateway_instance_ids))

        if plan.fqdn is None or plan.zone is None:
            # No DNS name: clients use the (first) gateway's address.
            self.zone_id = None
            self.fqdn = pulumi.Output.from_input(args.gateway_public_ips[0])
            self.url = self.fqdn.apply(plan.client_url.at)
            self.register_outputs({"fqdn": self.fqdn, "url": self.url})
            return
        zone = plan.zone
        invoke = pulumi.InvokeOutputOptions(parent=self)
        lookup = (
            aws.route53.get_zone_output(zone_id=zone.reference, opts=invoke)
            if zone.by_id
            else aws.route53.get_zone_output(name=zone.reference, private_zone=False, opts=invoke)
        )
        self.zone_id = lookup.apply(lambda found: plan.zone_id_of(found.name, found.zone_id))
        self.fqdn = pulumi.Output.from_input(plan.fqdn)
        self.url = pulumi.Output.from_input(plan.client_url.at(plan.fqdn))
        for record in plan.records:
            self._record(name, record, args)
        self.register_outputs({"fqdn": self.fqdn, "url": self.url, "zoneId": self.zone_id})

    def _record(self, name: str, record: Record, args: DnsArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        address = args.gateway_public_ips[record.host]
        failover: dict = {}
        if record.health_check is not None:
            check = record.health_check
            health = aws.route53.HealthCheck(
                f"{name}-{check.resource}",
                type=check.type,
                ip_address=address,
                port=check.port,
                resource_path=check.resource_path,
                fqdn=check.fqdn,
                enable_sni=check.enable_sni,
                request_interval=check.request_interval,
                failure_threshold=check.failure_threshold,
                tags={**args.plan.tags_of(f"{name}-{check.resource}"), "instance": args.gateway_instance_ids[record.host]},
                opts=child,
            )
            failover["health_check_id"] = health.id
        if record.failover is not None:
            failover["set_identifier"] = record.set_identifier
            failover["failover_routing_policies"] = [aws.route53.RecordFailoverRoutingPolicyArgs(type=record.failover)]
        aws.route53.Record(
            f"{name}-{record.resource}",
            zone_id=self.zone_id,
            name=record.name,
            type=record.type,
            ttl=record.ttl,
            records=[address],
            opts=child,
            **failover,
        )
