"""The deployed gateway's plan: nginx's plan for the stack's ports, TLS and networks, where the token budgets
live, which ports clients reach, and the URL they use; and each gateway host's containers as data
(`GatewayHostPlan`: names, images, labels, commands, files, volumes). components/gateway.py wires them.
"""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleet import contract, ports
from fleet.config import FleetSettings
from fleet.exporters import budget, gateway_log
from fleet.plans.naming import container_name
from fleet.plans.node_exporter import NodeExporterPlan, node_exporter_plan
from fleet.plans.placement import PlacementPlan
from fleet.render import nginx
from fleet.render.prometheus_web import PROMETHEUS_USER

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


# ---- a gateway host's containers ---------------------------------------------------------------------------

# The roles of a gateway host's containers (fleet.contract.ROLES).
GATEWAY, NGINX_EXPORTER, LOG_EXPORTER, BUDGET_CONTROLLER = "gateway", "nginx-exporter", "gateway-log-exporter", "budget-controller"
# The container names' suffixes (the Docker name is `<component>-<suffix>`).
CONTAINERS = {GATEWAY: "gateway", NGINX_EXPORTER: "nginx-exporter", LOG_EXPORTER: "gateway-log-exporter", BUDGET_CONTROLLER: "budget"}
NGINX_CONF = "/etc/nginx/nginx.conf"
# Run by the nginx image's entrypoint before nginx starts (official images run /docker-entrypoint.d/*.sh).
LOG_ROTATION_SCRIPT = "/docker-entrypoint.d/40-fleet-log-rotate.sh"
# The access-log file is renamed above this size (the volume holds at most about twice it), checked every minute.
LOG_ROTATE_BYTES = 64 << 20
LOG_ROTATE_INTERVAL_S = 60
BUDGET_INTERVAL_S = 15
# The Python modules the metering exporter's image runs beside nginx.
LOG_EXPORTER_MODULE = "fleet.exporters.gateway_log"
BUDGET_MODULE = "fleet.exporters.budget"


@dataclass(frozen=True)
class GatewayImages:
    nginx: str
    nginx_exporter: str
    python: str  # the base of the metering exporter's image (the log exporter, the budget controller)


@dataclass(frozen=True)
class GatewayHostPlan:
    """The gateway on one host, wired as component `component`: nginx, its exporter, the gateway log exporter,
    the budget controller where budgets are enforced, and the host's node exporter where monitoring runs."""

    component: str
    tls_mode: str
    client_ports: tuple[int, ...]  # published on the placement's public address
    health_probe: tuple[str, ...]  # nginx's /health on the plain-HTTP server (busybox wget is in nginx:alpine)
    # The name clients use (`server_name`: the domain, or localhost on the local host); None: the host's public
    # (else private) address.
    address: str | None
    client_url: ClientUrl
    images: GatewayImages
    labels: Mapping[str, Mapping[str, str]]  # each container's labels, by role
    paths: nginx.GatewayPaths  # nginx's files (the state volume's when budgets are enforced)
    router_script: str  # the njs router nginx.conf imports (its routing table is in nginx.conf)
    log_rotation: str  # the entrypoint script that rotates the access-log file
    nginx_exporter_command: tuple[str, ...]
    log_exporter_command: tuple[str, ...]
    budgets: Mapping[str, int]  # client -> tokens per day, enforced by the budget controller; empty: none runs
    node_exporter: NodeExporterPlan | None  # the host's own, where monitoring runs (and the host is its own)
    placement: PlacementPlan

    @property
    def tls(self) -> bool:
        return self.tls_mode != "off"

    @property
    def log_dir(self) -> str:
        """The access-log file's folder, a volume shared with the gateway log exporter (read-only there)."""
        return posixpath.dirname(self.paths.access_log_file)

    def container(self, role: str) -> str:
        """The Docker name of the `role` container; on the shared network also its address."""
        return container_name(self.component, CONTAINERS[role])

    def check_certificate(self, given: bool) -> None:
        if self.tls and not given:
            raise ValueError(
                f"gateway.tls.mode {self.tls_mode!r} needs a certificate and private key; only mode `off` runs without them"
            )

    def budget_command(self, prometheus_url: str, authenticated: bool) -> list[str]:
        """The budget controller's arguments: it asks Prometheus at `prometheus_url` (as PROMETHEUS_USER when
        `authenticated`; the password comes from the environment) and writes the map nginx reads."""
        return budget.controller_arguments(
            prometheus_url,
            self.budgets,
            f"{BUDGET_PATHS.budget_dir}/clients.map",
            BUDGET_PATHS.pid,
            BUDGET_INTERVAL_S,
            prometheus_user=PROMETHEUS_USER if authenticated else None,
        )


def budgets_enforced(settings: FleetSettings) -> bool:
    """Token budgets are enforced where some client has one and Prometheus (monitoring) counts the tokens."""
    return bool(token_budgets(settings)) and settings.monitoring.enabled


def nginx_plan(
    settings: FleetSettings, upstreams: Mapping[str, Sequence[str]], grafana_upstream: str | None = None
) -> nginx.GatewayPlan:
    """nginx's plan on every gateway host of the stack, once the nodes' (and Grafana's) addresses are known."""
    return gateway_plan(
        settings, upstreams, server_name(settings), gateway_paths(budgets_enforced(settings)), grafana_upstream
    )


def gateway_host_plan(settings: FleetSettings, component: str, node: str) -> GatewayHostPlan:
    """The gateway host wired as `component`, whose node exporter Prometheus labels `node` (`gateway-<i>`)."""
    enforced = budgets_enforced(settings)
    paths = gateway_paths(enforced)
    gateway_contract = contract.GatewayContract.of(settings)
    nginx_name = container_name(component, CONTAINERS[GATEWAY])
    labels = {
        GATEWAY: contract.container_labels(settings, GATEWAY, gateway_contract.labels()),
        NGINX_EXPORTER: contract.container_labels(settings, NGINX_EXPORTER),
        LOG_EXPORTER: contract.container_labels(settings, LOG_EXPORTER),
        BUDGET_CONTROLLER: contract.container_labels(settings, BUDGET_CONTROLLER),
    }
    images = settings.images
    return GatewayHostPlan(
        component=component,
        tls_mode=settings.gateway.tls.mode,
        client_ports=tuple(client_ports(settings)),
        health_probe=("CMD", "wget", "-qO", "/dev/null", f"http://127.0.0.1:{settings.gateway.http_port}/health"),
        address=server_name(settings),
        client_url=client_url(settings),
        images=GatewayImages(images.nginx, images.nginx_exporter, images.python),
        labels=labels,
        paths=paths,
        router_script=nginx.router_script(),
        log_rotation=nginx.render_log_rotation(
            paths.access_log_file, max_bytes=LOG_ROTATE_BYTES, interval_s=LOG_ROTATE_INTERVAL_S
        ),
        nginx_exporter_command=(
            f"--nginx.scrape-uri=http://{nginx_name}:{ports.NGINX_STATUS}/stub_status",
            f"--web.listen-address=:{ports.NGINX_EXPORTER}",
        ),
        log_exporter_command=tuple(
            gateway_log.exporter_arguments(
                paths.access_log_file,
                f"0.0.0.0:{ports.GATEWAY_LOG_EXPORTER}",
                component,
                [c.name for c in settings.gateway.clients],
            )
        ),
        budgets=token_budgets(settings) if enforced else {},
        node_exporter=node_exporter_plan(settings, component, node) if settings.monitoring.enabled else None,
        placement=PlacementPlan.of(settings),
    )
