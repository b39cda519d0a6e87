"""The deployed gateway's plan: nginx's plan for the stack's ports, TLS and networks, where the token budgets
live, which ports clients reach, and the URL they use. components/gateway.py wires the containers from it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleet import ports
from fleet.config import FleetSettings
from fleet.render import nginx

# Shared by nginx and the token budget controller: the budget map files and nginx's pid file (the controller,
# in nginx's PID namespace, reloads it with SIGHUP).
STATE_DIR = "/var/lib/nginx-fleet"
BUDGET_PATHS = nginx.GatewayPaths(pid=f"{STATE_DIR}/nginx.pid", budget_dir=f"{STATE_DIR}/budget")

# Docker's embedded DNS server, which answers container names on a user-defined network.
DOCKER_DNS = "127.0.0.11"

# Docker's default address pools. A client on the Docker host itself reaches a port published on loopback
# through docker-proxy, so nginx sees the network's gateway address (in these pools), never 127.0.0.1.
DOCKER_ADDRESS_POOLS = ("172.16.0.0/12", "192.168.0.0/16")


def tls_on(settings: FleetSettings) -> bool:
    return settings.gateway.tls.mode != "off"


def gateway_hosts(settings: FleetSettings) -> int:
    """How many hosts run the gateway: two in two zones behind DNS failover (AWS, `highAvailability`), else one."""
    return 2 if settings.target == "aws" and settings.gateway.high_availability else 1


def server_name(settings: FleetSettings) -> str | None:
    """The name the gateway answers to: the stack's domain; on the local Docker host `localhost` without one."""
    if settings.target == "local":
        return settings.gateway.domain or "localhost"
    return settings.gateway.domain


def serves_grafana(settings: FleetSettings) -> bool:
    """Grafana is served by the gateways' TLS server only; with TLS off (dev) it keeps its operator port."""
    return settings.monitoring.enabled and tls_on(settings)


def token_budgets(settings: FleetSettings) -> dict[str, int]:
    """Client name -> tokens per day, for the clients that have a budget."""
    return {c.name: c.tokens_per_day for c in settings.gateway.clients if c.tokens_per_day}


def gateway_paths(enforce_budgets: bool) -> nginx.GatewayPaths:
    """nginx's files: the state volume's paths when the budget controller shares them, else nginx's defaults."""
    return BUDGET_PATHS if enforce_budgets else nginx.GatewayPaths()


def client_ports(settings: FleetSettings) -> list[int]:
    """The ports clients reach the gateway on: HTTPS and the plain-HTTP redirect, or plain HTTP with TLS off."""
    gateway = settings.gateway
    return [gateway.https_port, gateway.http_port] if tls_on(settings) else [gateway.http_port]


@dataclass(frozen=True)
class ClientUrl:
    """How clients address the gateway: the scheme and port by TLS mode; `at(address)` is the URL at a DNS name
    or an IP address (known once the cloud decides it), the scheme's default port left out."""

    scheme: str  # "https", or "http" with TLS off
    port: int

    def at(self, address: str) -> str:
        default = 443 if self.scheme == "https" else 80
        suffix = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{address}{suffix}"


def client_url(settings: FleetSettings) -> ClientUrl:
    """The scheme and port clients use: HTTPS on `gateway.httpsPort`, or plain HTTP on `gateway.httpPort` with TLS off."""
    gateway = settings.gateway
    return ClientUrl("https", gateway.https_port) if tls_on(settings) else ClientUrl("http", gateway.http_port)


def gateway_url(settings: FleetSettings, address: str) -> str:
    """The URL clients use at `address` (a DNS name or an IP address): the default port is left out."""
    return client_url(settings).at(address)


def _with_docker_loopback(cidrs: list[str]) -> list[str]:
    allows_loopback = any(ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(c, strict=False) for c in cidrs)
    return [*cidrs, *[p for p in DOCKER_ADDRESS_POOLS if p not in cidrs]] if allows_loopback else cidrs


def _is_address(host_port: str) -> bool:
    try:
        ipaddress.ip_address(host_port.rsplit(":", 1)[0].strip("[]"))
    except ValueError:
        return False
    return True


def gateway_plan(
    settings: FleetSettings,
    upstreams: Mapping[str, Sequence[str]],
    server_name: str | None,
    paths: nginx.GatewayPaths | None = None,
    grafana_upstream: str | None = None,
) -> nginx.GatewayPlan:
    """The plan of the deployed gateway: the stack's ports and TLS, stub_status reachable by the exporter
    container on the Docker network (private networks only), the given node addresses, and Grafana at
    `grafana_upstream` (a container name is looked up through Docker's DNS).

    On the local Docker host, CIDR lists that admit loopback also admit Docker's address pools, where
    loopback clients appear from (the published ports are bound to `local.bindAddress` all the same)."""
    gateway = settings.gateway
    updates: dict = {}
    if server_name and server_name != gateway.domain:
        updates["domain"] = server_name
    if settings.target == "local":
        updates["client_cidrs"] = _with_docker_loopback(gateway.client_cidrs)
        updates["admin_cidrs"] = _with_docker_loopback(gateway.admin_cidrs)
    if updates:
        settings = settings.model_copy(update={"gateway": gateway.model_copy(update=updates)})
    return nginx.build_gateway_plan(
        settings,
        upstreams,
        status_listen=f"0.0.0.0:{ports.NGINX_STATUS}",
        paths=paths,
        grafana_upstream=grafana_upstream,
        grafana_resolver=DOCKER_DNS if grafana_upstream and not _is_address(grafana_upstream) else None,
    )
