"""The gateway's public name in Route 53: which hosted zone is looked up and how, which records point at which
gateway host, with which TTL, and the health checks that fail an HA stack over between its two gateway hosts
(trade-offs in docs/architecture.md). components/dns.py wires exactly this plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleet.config import FleetSettings, domain_in_zone
from fleet.config_text import is_zone_id
from fleet.plans.gateway import ClientUrl, client_url, gateway_hosts, tls_on
from fleet.stack_file import StackConfigError
from fleet.tags import NAME_KEY, fleet_tags

COMPONENT = "dns"
RECORD_TYPE = "A"
# Short TTL: a replaced or failed-over gateway is found within a minute.
RECORD_TTL = 60
HEALTH_PATH = "/health"
# Standard interval (30 s) and 3 failures: failover in about 1.5 minutes, at the cheaper health check price.
HEALTH_INTERVAL_S = 30
HEALTH_FAILURES = 3
FAILOVER_ROLES = ("primary", "secondary")


@dataclass(frozen=True)
class ZoneLookup:
    """How the existing hosted zone is found: by its id (`Z…`), or by its name among the public zones."""

    reference: str  # as the stack names it (gateway.hostedZone)
    by_id: bool


@dataclass(frozen=True)
class HealthCheck:
    """A Route 53 health check of one gateway host's /health, asked with the API's name as Host header and SNI
    (the certificate is not validated by Route 53: self-signed works too)."""

    resource: str  # suffix of the resource name: `<component>-<resource>`
    type: str  # "HTTPS", or "HTTP" with TLS off
    port: int
    resource_path: str
    fqdn: str
    enable_sni: bool
    request_interval: int
    failure_threshold: int


@dataclass(frozen=True)
class Record:
    """One A record of the gateway's name, answering with the address of gateway host `host`."""

    resource: str  # suffix of the resource name: `<component>-<resource>`
    host: int  # index of the gateway host whose public address it holds
    name: str
    type: str = RECORD_TYPE
    ttl: int = RECORD_TTL
    # Failover routing (HA stacks): PRIMARY or SECONDARY, its set identifier and the health check it follows.
    failover: str | None = None
    set_identifier: str | None = None
    health_check: HealthCheck | None = None


@dataclass(frozen=True)
class DnsPlan:
    """What the DNS component looks up and creates. Without a domain (`fqdn` None) it creates nothing and clients
    use the first gateway host's address."""

    stack_file: str  # named by the error found only once the zone is looked up
    gateway_hosts: int  # how many gateway hosts the records point at
    high_availability: bool
    fqdn: str | None
    zone: ZoneLookup | None
    client_url: ClientUrl
    records: tuple[Record, ...]
    tags: Mapping[str, str]  # every health check's tags but its Name

    def tags_of(self, name: str) -> dict[str, str]:
        return {**self.tags, NAME_KEY: name}

    def check_hosts(self, addresses: int, instance_ids: int) -> None:
        """Refuse gateway hosts other than the plan's count (one, or two for failover)."""
        if addresses != self.gateway_hosts or instance_ids != self.gateway_hosts:
            raise ValueError(
                f"Dns needs {self.gateway_hosts} gateway host(s) (gateway.highAvailability={self.high_availability}), "
                f"got {addresses} address(es) and {instance_ids} instance id(s)"
            )

    def zone_id_of(self, zone_name: str, zone_id: str) -> str:
        """The looked-up zone's id, once the domain is known to lie inside the zone (the config checks that only
        when the zone is named; a zone given by id is known by name only here)."""
        assert self.fqdn is not None and self.zone is not None
        if not domain_in_zone(self.fqdn, zone_name):
            raise StackConfigError(
                self.stack_file,
                [f"gateway.domain: {self.fqdn} is not inside the hosted zone {zone_name} ({self.zone.reference})"],
            )
        return zone_id


def _failover_records(settings: FleetSettings, fqdn: str) -> tuple[Record, ...]:
    """Two gateway hosts, one per zone: Route 53 answers with the primary while its /health answers, with the
    secondary otherwise. Clients follow within the TTL plus the detection time."""
    gateway = settings.gateway
    tls = tls_on(settings)
    records = []
    for host, role in enumerate(FAILOVER_ROLES):
        check = HealthCheck(
            resource=f"{role}-health",
            type="HTTPS" if tls else "HTTP",
            port=gateway.https_port if tls else gateway.http_port,
            resource_path=HEALTH_PATH,
            fqdn=fqdn,
            enable_sni=tls,
            request_interval=HEALTH_INTERVAL_S,
            failure_threshold=HEALTH_FAILURES,
        )
        records.append(
            Record(
                resource=role,
                host=host,
                name=fqdn,
                failover=role.upper(),
                set_identifier=f"{fqdn}-{role}",
                health_check=check,
            )
        )
    return tuple(records)


def dns_plan(settings: FleetSettings, stack: str) -> DnsPlan:
    """The DNS of a stack: one A record for one gateway host, or health-checked failover records for two."""
    gateway = settings.gateway
    base = dict(
        stack_file=f"Pulumi.{stack}.yaml",
        gateway_hosts=gateway_hosts(settings),
        high_availability=gateway.high_availability,
        client_url=client_url(settings),
        tags=fleet_tags(settings, stack, COMPONENT),
    )
    if not gateway.domain:
        return DnsPlan(fqdn=None, zone=None, records=(), **base)
    # The config checked that a domain comes with its zone, and lies inside it when the zone is named.
    assert gateway.hosted_zone is not None
    fqdn = gateway.domain.rstrip(".").lower()
    zone = ZoneLookup(reference=gateway.hosted_zone, by_id=is_zone_id(gateway.hosted_zone))
    if gateway.high_availability:
        records = _failover_records(settings, fqdn)
    else:
        records = (Record(resource="gateway", host=0, name=fqdn),)
    return DnsPlan(fqdn=fqdn, zone=zone, records=records, **base)
