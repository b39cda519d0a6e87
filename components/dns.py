"""The gateway's public name: Route 53 records in an existing hosted zone, with health-checked failover
between two gateway hosts when `gateway.highAvailability` is set (trade-offs in docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from fleet.config import PROJECT, FleetSettings, domain_in_zone
from fleet.config_text import is_zone_id
from fleet.plans.gateway import gateway_hosts, gateway_url
from fleet.stack_file import StackConfigError
from fleet.tags import fleet_tags

TOKEN = f"{PROJECT}:index:Dns"
COMPONENT = "dns"
# Short TTL: a replaced or failed-over gateway is found within a minute.
RECORD_TTL = 60
HEALTH_PATH = "/health"
# Standard interval (30 s) and 3 failures: failover in about 1.5 minutes, at the cheaper health check price.
HEALTH_INTERVAL_S = 30
HEALTH_FAILURES = 3


@dataclass
class DnsArgs:
    settings: FleetSettings
    gateway_public_ips: list[pulumi.Output[str]]
    gateway_instance_ids: list[pulumi.Output[str]]


class Dns(pulumi.ComponentResource):
    fqdn: pulumi.Output[str]
    url: pulumi.Output[str]
    zone_id: pulumi.Output[str] | None

    def __init__(self, name: str, args: DnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        settings = args.settings
        gateway = settings.gateway
        stack = pulumi.get_stack()
        stack_file = f"Pulumi.{stack}.yaml"
        child = pulumi.ResourceOptions(parent=self)
        expected = gateway_hosts(settings)
        if len(args.gateway_public_ips) != expected or len(args.gateway_instance_ids) != expected:
            raise ValueError(
                f"Dns needs {expected} gateway host(s) (gateway.highAvailability={gateway.high_availability}), "
                f"got {len(args.gateway_public_ips)} address(es) and {len(args.gateway_instance_ids)} instance id(s)"
            )

        if not gateway.domain:
            # No DNS name: clients use the (first) gateway's address.
            self.zone_id = None
            self.fqdn = args.gateway_public_ips[0]
            self.url = self.fqdn.apply(lambda ip: gateway_url(settings, ip))
            self.register_outputs({"fqdn": self.fqdn, "url": self.url})
            return
        # The config checked that a domain comes with its zone, and lies inside it when the zone is named.
        assert gateway.hosted_zone is not None
        fqdn = gateway.domain.rstrip(".").lower()
        zone_ref = gateway.hosted_zone
        by_id = is_zone_id(zone_ref)
        lookup = (
            aws.route53.get_zone_output(zone_id=zone_ref, opts=pulumi.InvokeOutputOptions(parent=self))
            if by_id
            else aws.route53.get_zone_output(name=zone_ref, private_zone=False, opts=pulumi.InvokeOutputOptions(parent=self))
        )

        def checked(zone) -> str:
            if not domain_in_zone(fqdn, zone.name):
                raise StackConfigError(stack_file, [f"gateway.domain: {fqdn} is not inside the hosted zone {zone.name} ({zone_ref})"])
            return zone.zone_id

        self.zone_id = lookup.apply(checked)
        self.fqdn = pulumi.Output.from_input(fqdn)
        self.url = pulumi.Output.from_input(gateway_url(settings, fqdn))

        def tags(resource: str) -> dict[str, str]:
            return fleet_tags(settings, stack, COMPONENT, f"{name}-{resource}")

        if not gateway.high_availability:
            aws.route53.Record(
                f"{name}-gateway",
                zone_id=self.zone_id,
                name=fqdn,
                type="A",
                ttl=RECORD_TTL,
                records=[args.gateway_public_ips[0]],
                opts=child,
            )
        else:
            # Two gateway hosts, one per zone: Route 53 answers with the primary while its /health answers,
            # with the secondary otherwise. Clients follow within the TTL plus the detection time.
            for role, ip, instance_id in zip(("primary", "secondary"), args.gateway_public_ips, args.gateway_instance_ids):
                check = aws.route53.HealthCheck(
                    f"{name}-{role}-health",
                    type="HTTPS" if gateway.tls.mode != "off" else "HTTP",
                    ip_address=ip,
                    port=gateway.https_port if gateway.tls.mode != "off" else gateway.http_port,
                    resource_path=HEALTH_PATH,
                    # Host header and SNI, so nginx answers as the API's server; the certificate is not
                    # validated by Route 53 (self-signed works too).
                    fqdn=fqdn,
                    enable_sni=gateway.tls.mode != "off",
                    request_interval=HEALTH_INTERVAL_S,
                    failure_threshold=HEALTH_FAILURES,
                    tags={**tags(f"{role}-health"), "instance": instance_id},
                    opts=child,
                )
                aws.route53.Record(
                    f"{name}-{role}",
                    zone_id=self.zone_id,
                    name=fqdn,
                    type="A",
                    ttl=RECORD_TTL,
                    records=[ip],
                    set_identifier=f"{fqdn}-{role}",
                    failover_routing_policies=[aws.route53.RecordFailoverRoutingPolicyArgs(type=role.upper())],
                    health_check_id=check.id,
                    opts=child,
                )
        self.register_outputs({"fqdn": self.fqdn, "url": self.url, "zoneId": self.zone_id})
