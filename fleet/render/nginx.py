"""The nginx gateway: a plan built from the stack settings plus runtime addresses, and its rendered config.

Two files come out:

* `nginx.conf` (`render_nginx`): upstreams, routes, limits, TLS, logs. It holds no secret, so it can be
  uploaded as plain content and read by the policy pack.
* the API-key include (`render_api_keys`): the only place keys appear; deployed as a secret file.

Besides core modules (map, geo, limit_req, upstream zone, ssl, stub_status) it loads the njs module, which
routes each request by its model (`fleet/render/njs/fleet_router.js`, deployed beside nginx.conf): it must
load on Debian 12's nginx 1.22 with `libnginx-mod-http-js` (loopback tests) and on the official
nginx:1.28-alpine image, which ships the module (deployment).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet import ports
from fleet.capacity import max_conns_per_node, queue_per_node  # the one source of max_conns
from fleet.config import FleetSettings

# Routes, the admin client name and upstream names are shared with the access-log reader (fleet.exporters.gateway_log);
# they stay importable from here.
from fleet.gateway_routes import (
    ADMIN_CLIENT,
    ADMIN_PREFIXES,
    CLIENT_HEADER,
    ADMIN_ROUTES,
    GRAFANA_PATH,
    INFERENCE_ROUTES,
    MODEL_BODY_ROUTES,
    MODEL_LIST_ROUTES,
    MODEL_PATH_PREFIX,
    READ_ONLY_PREFIXES,
    READ_ONLY_ROUTES,
    upstream_name,
)
from fleet.model_names import short_name
from fleet.render.jinja import render_template

# The router the njs module runs; a static file (the routing table is rendered into nginx.conf).
ROUTER_SCRIPT_SOURCE = Path(__file__).parent / "njs" / "fleet_router.js"

# Private ranges allowed to read stub_status by default (the exporter runs beside nginx).
PRIVATE_NETWORKS = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
_LISTEN = re.compile(r"^((\[[0-9A-Fa-f:.]+\]|[0-9.]+):)?([0-9]{1,5})$")
_PATH = re.compile(r"^[A-Za-z0-9_./-]+$")
# API keys are matched by anchored regexes in the include: allow only characters that need no quoting
# (pulumi_random and `openssl rand -hex` keys fit).
_API_KEY = re.compile(r"^[A-Za-z0-9_.~-]{16,256}$")
# Model names go into nginx strings and JSON unquoted: Ollama's name characters only.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,349}$")


# Internal URIs of the JSON error pages for errors nginx raises while reading a request.
ERROR_PAGES = "/.fleet-errors"


class GatewayPlanError(ValueError):
    """A value the gateway config cannot be rendered with (names the field and what is allowed)."""


@dataclass(frozen=True)
class GatewayPaths:
    """Files and folders nginx uses. Defaults are those of the official nginx image (deployment)."""

    api_keys_include: str = "/etc/nginx/fleet/api-keys.conf"
    certificate: str = "/etc/nginx/tls/fullchain.pem"
    certificate_key: str = "/etc/nginx/tls/privkey.pem"
    pid: str = "/var/run/nginx.pid"
    error_log: str = "/var/log/nginx/error.log"  # the image links it to stderr
    access_log: str = "/var/log/nginx/access.log"  # the image links it to stdout
    # The same JSON lines as a plain file, in a folder the gateway log exporter (fleet.exporters.gateway_log) shares;
    # written only when it differs from `access_log`.
    access_log_file: str = "/var/log/nginx/fleet/access.log"
    temp_dir: str = "/var/cache/nginx"  # client_temp, proxy_temp, ... are created under it
    # The njs module: Debian's libnginx-mod-http-js and the official image put it at the same path.
    njs_module: str = "/usr/lib/nginx/modules/ngx_http_js_module.so"
    router_script: str = "/etc/nginx/fleet/router.js"  # fleet/render/njs/fleet_router.js, uploaded
    # Clients over their token budget: `*.map` files written by the budget controller (fleet.exporters.budget), read at
    # every (re)load; a folder with none means nobody is over budget.
    budget_dir: str = "/var/lib/nginx-fleet/budget"

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not _PATH.fullmatch(value):
                raise GatewayPlanError(f"paths.{name}: {value!r} must be a path of letters, digits and ._/-")

    @classmethod
    def under(cls, prefix: str) -> "GatewayPaths":
        """Every file below one folder: a non-root nginx (tests, `fleet local`)."""
        prefix = prefix.rstrip("/")
        return cls(
            api_keys_include=f"{prefix}/api-keys.conf",
            certificate=f"{prefix}/tls/fullchain.pem",
            certificate_key=f"{prefix}/tls/privkey.pem",
            pid=f"{prefix}/nginx.pid",
            error_log=f"{prefix}/logs/error.log",
            access_log=f"{prefix}/logs/access.log",
            access_log_file=f"{prefix}/logs/access.log",  # already a file: written once
            temp_dir=f"{prefix}/temp",
            router_script=str(ROUTER_SCRIPT_SOURCE),  # read where the package is installed
            budget_dir=f"{prefix}/budget",
        )


@dataclass(frozen=True)
class UpstreamServer:
    address: str  # host:port of the node's metering pass-through
    max_conns: int


@dataclass(frozen=True)
class UpstreamGroup:
    """One node group: its nodes, balanced by least connections, each capped at max_conns."""

    name: str
    servers: tuple[UpstreamServer, ...]
    keepalive: int
    next_upstream_tries: int
    is_default: bool  # the first group also serves the bare admin routes and /api/version
    models: tuple[str, ...] = ()  # served models, short names (`fleet.model_names.short_name`)
    # (alias, served model) of the models' aliases, short names: each node knows the alias as a name of the model
    aliases: tuple[tuple[str, str], ...] = ()

    @property
    def upstream(self) -> str:
        return upstream_name(self.name)

    @property
    def capacity(self) -> int:
        """Requests the group's nodes admit at once (sum of max_conns)."""
        return sum(server.max_conns for server in self.servers)

    @property
    def prefix(self) -> str:
        """The group's own routes, for operators and the merged model lists."""
        return f"/groups/{self.name}"

    @property
    def location(self) -> str:
        """The named location the router sends the group's requests to."""
        return f"@fleet_group_{self.name}"


@dataclass(frozen=True)
class RateZone:
    """A limit_req zone for the keys that share one rate (keyed by client name, never by the key)."""

    rate_per_minute: int
    burst: int
    clients: tuple[str, ...]

    @property
    def zone(self) -> str:
        return f"fleet_key_{self.rate_per_minute}rpm"

    @property
    def variable(self) -> str:
        return f"$fleet_key_{self.rate_per_minute}rpm"


@dataclass(frozen=True)
class GatewayPlan:
    """Everything `nginx.conf` is rendered from. Build it with `build_gateway_plan`."""

    groups: tuple[UpstreamGroup, ...]
    server_name: str
    tls: bool
    hsts: bool
    listen_address: str | None  # None: all addresses
    https_port: int
    http_port: int
    status_listen: str  # stub_status server, `address:port`
    status_allow: tuple[str, ...]
    paths: GatewayPaths
    user: str | None  # `user` directive (only meaningful when the master runs as root)
    worker_processes: str
    worker_connections: int
    key_zones: tuple[RateZone, ...]
    ip_rate_per_minute: int
    ip_burst: int
    client_cidrs: tuple[str, ...]  # empty: every address
    admin_cidrs: tuple[str, ...]  # empty: admin routes closed for everyone
    max_body_size: str
    client_body_buffer_size: str
    connect_timeout_s: int
    read_timeout_s: int
    send_timeout_s: int
    next_upstream_timeout_s: int
    max_fails: int
    fail_timeout_s: int
    retry_after_s: int
    upstream_host: str  # Host header sent upstream (Ollama accepts `localhost` whatever it listens on)
    client_header_timeout_s: int = 10
    client_body_timeout_s: int = 30
    max_connections_per_ip: int = 256
    clients: tuple[str, ...] = field(default=())
    budgets: tuple[tuple[str, int], ...] = field(default=())  # (client, tokensPerDay) of clients with a budget
    # Grafana's `host:port`, served under GRAFANA_PATH by the TLS server only; None: not served.
    grafana_upstream: str | None = None
    # The DNS server nginx asks at request time when Grafana's address is a name (a container name).
    grafana_resolver: str | None = None

    @property
    def grafana_path_regex(self) -> str:
        """nginx regex of Grafana's path, with or without its trailing slash."""
        return f"^{re.escape(GRAFANA_PATH.rstrip('/'))}(/|$)"

    @property
    def inference_uri_regex(self) -> str:
        """nginx regex of every inference route, bare or under a group prefix (the admin key is refused there)."""
        routes = "|".join(re.escape(route) for route in INFERENCE_ROUTES)
        return f"~^(/groups/[a-z0-9-]+)?({routes})$"

    def model_routes(self) -> dict[str, list[tuple[str, int]]]:
        """The router's table: served model or alias (short name) -> the groups serving it, each weighted by the
        connections its nodes admit together (a model on several groups is spread in that proportion). An alias
        goes where its model goes: the config gives a model the same aliases in every group that serves it."""
        routes: dict[str, list[tuple[str, int]]] = {}
        for group in self.groups:
            for name in (*group.models, *(alias for alias, _ in group.aliases)):
                routes.setdefault(name, []).append((group.name, group.capacity))
        return routes

    @property
    def model_routes_json(self) -> str:
        return json.dumps(self.model_routes(), separators=(",", ":"), sort_keys=True)

    @property
    def groups_json(self) -> str:
        return json.dumps([g.name for g in self.groups], separators=(",", ":"))

    def max_conns_by_group(self) -> dict[str, int]:
        """max_conns per node of each group (the gateway container's `upstream-max-conns` label)."""
        return {g.name: g.servers[0].max_conns for g in self.groups}

    @property
    def listen_prefix(self) -> str:
        return f"{self.listen_address}:" if self.listen_address else ""

    @property
    def https_authority_suffix(self) -> str:
        return "" if self.https_port == 443 else f":{self.https_port}"


def _check_address(value: str, where: str) -> str:
    match = _ADDRESS.fullmatch(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise GatewayPlanError(f"{where}: {value!r} must be `host:port` (an IP address or DNS name and a port)")
    return value


def _check_listen(value: str, where: str) -> str:
    match = _LISTEN.fullmatch(value)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise GatewayPlanError(f"{where}: {value!r} must be `address:port` or a port")
    return value


def _check_cidrs(values: Sequence[str], where: str) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise GatewayPlanError(f"{where}: {value!r} is not a CIDR such as 10.0.0.0/8") from None
    return tuple(values)


def _group_models(group: str, models: Sequence) -> tuple[str, ...]:
    """The short names of a group's models (the router's table keys)."""
    for model in models:
        for name in (model.ref, *model.aliases):
            if not _MODEL_NAME.match(name):
                raise GatewayPlanError(
                    f"nodeGroups[{group}].models: `{name}` is not an Ollama model name (letters, digits and _.:/-)"
                )
    return tuple(short_name(model.ref) for model in models)


def _group_aliases(models: Sequence) -> tuple[tuple[str, str], ...]:
    """(alias, served model) of a group's aliases, short names (more router table keys; checked by `_group_models`)."""
    return tuple((short_name(alias), short_name(model.ref)) for model in models for alias in model.aliases)


def _key_zones(settings: FleetSettings) -> tuple[RateZone, ...]:
    limits = settings.gateway.rate_limits
    by_rate: dict[int, list[str]] = defaultdict(list)
    for client in settings.gateway.clients:
        by_rate[client.per_minute or limits.per_key_per_minute].append(client.name)
    by_rate[limits.per_key_per_minute].append(ADMIN_CLIENT)
    return tuple(
        RateZone(rate_per_minute=rate, burst=limits.per_key_burst, clients=tuple(names))
        for rate, names in sorted(by_rate.items())
    )


def build_gateway_plan(
    settings: FleetSettings,
    upstreams: Mapping[str, Sequence[str]],
    *,
    paths: GatewayPaths | None = None,
    tls: bool | None = None,
    listen_address: str | None = None,
    https_port: int | None = None,
    http_port: int | None = None,
    status_listen: str | None = None,
    status_allow: Sequence[str] = PRIVATE_NETWORKS,
    user: str | None = "nginx",
    worker_processes: str = "auto",
    worker_connections: int = 4096,
    next_upstream_timeout_s: int = 30,
    max_fails: int = 2,
    fail_timeout_s: int = 10,
    client_body_buffer_size: str = "1m",
    upstream_host: str = "localhost",
    grafana_upstream: str | None = None,
    grafana_resolver: str | None = None,
) -> GatewayPlan:
    """The gateway plan of a stack, given the runtime upstream addresses.

    `upstreams` maps each node group's name to the `host:port` of its nodes' metering pass-through (port
    `ports.METER` in deployment; any port on loopback). Ports, paths, listen addresses and TLS default to the
    stack's deployment values and may be overridden (the loopback data plane changes only those).

    `grafana_upstream` (`host:port`) puts Grafana under GRAFANA_PATH on the TLS server, for admin networks only;
    with TLS off it is not served at all (its login would cross the network in clear). A name needs
    `grafana_resolver`, the DNS server nginx asks at request time (Docker's embedded DNS on a shared network).
    """
    gateway = settings.gateway
    names = [g.name for g in settings.node_groups]
    unknown = sorted(set(upstreams) - set(names))
    if unknown:
        raise GatewayPlanError(f"upstreams: unknown node group(s) {', '.join(unknown)}; groups: {', '.join(names)}")
    groups = []
    for index, group in enumerate(settings.node_groups):
        addresses = list(upstreams.get(group.name, ()))
        if not addresses:
            raise GatewayPlanError(f"upstreams[{group.name!r}]: at least one node address is needed")
        if len(set(addresses)) != len(addresses):
            raise GatewayPlanError(f"upstreams[{group.name!r}]: addresses repeat: {addresses}")
        max_conns = max_conns_per_node(group, queue_per_node(group, gateway))
        servers = tuple(
            UpstreamServer(address=_check_address(a, f"upstreams[{group.name!r}]"), max_conns=max_conns)
            for a in addresses
        )
        groups.append(
            UpstreamGroup(
                name=group.name,
                servers=servers,
                # idle connections kept per worker: enough for the parallel slots, bounded
                keepalive=max(2, min(64, group.ollama.num_parallel * len(group.models) * len(servers))),
                # retry every other node once (before the first byte only; nginx never retries after it)
                next_upstream_tries=len(servers),
                is_default=index == 0,
                models=_group_models(group.name, group.models),
                aliases=_group_aliases(group.models),
            )
        )

    server_name = gateway.domain or "_"
    if server_name != "_" and not _HOSTNAME.fullmatch(server_name):
        raise GatewayPlanError(f"gateway.domain: {server_name!r} is not a DNS name")
    tls_on = gateway.tls.mode != "off" if tls is None else tls
    if listen_address is not None:
        try:
            ipaddress.ip_address(listen_address.strip("[]"))
        except ValueError:
            raise GatewayPlanError(f"listen_address: {listen_address!r} is not an IP address") from None
    status = _check_listen(status_listen or f"127.0.0.1:{ports.NGINX_STATUS}", "status_listen")
    if user is not None and not re.fullmatch(r"^[a-z_][a-z0-9_-]*( [a-z_][a-z0-9_-]*)?$", user):
        raise GatewayPlanError(f"user: {user!r} must be `user` or `user group`")
    client_cidrs = _check_cidrs(gateway.client_cidrs, "gateway.clientCidrs")
    grafana, resolver = _grafana(grafana_upstream, grafana_resolver) if tls_on else (None, None)
    if any(ipaddress.ip_network(c).prefixlen == 0 for c in client_cidrs):
        client_cidrs = ()  # open to all: no check rendered

    return GatewayPlan(
        groups=tuple(groups),
        server_name=server_name,
        tls=tls_on,
        # HSTS only with a certificate browsers trust; a self-signed one would lock people out
        hsts=tls_on and gateway.tls.mode in ("acme", "provided"),
        listen_address=listen_address,
        https_port=https_port or gateway.https_port,
        http_port=http_port or gateway.http_port,
        status_listen=status,
        status_allow=_check_cidrs(status_allow, "status_allow"),
        paths=paths or GatewayPaths(),
        user=user,
        worker_processes=worker_processes,
        worker_connections=worker_connections,
        key_zones=_key_zones(settings),
        budgets=tuple((c.name, c.tokens_per_day) for c in gateway.clients if c.tokens_per_day),
        ip_rate_per_minute=gateway.rate_limits.per_ip_per_minute,
        ip_burst=gateway.rate_limits.per_ip_burst,
        client_cidrs=client_cidrs,
        admin_cidrs=_check_cidrs(gateway.admin_cidrs, "gateway.adminCidrs"),
        max_body_size=gateway.max_body_size,
        client_body_buffer_size=client_body_buffer_size,
        connect_timeout_s=gateway.connect_timeout_s,
        read_timeout_s=gateway.read_timeout_s,
        send_timeout_s=gateway.send_timeout_s,
        next_upstream_timeout_s=next_upstream_timeout_s,
        max_fails=max_fails,
        fail_timeout_s=fail_timeout_s,
        retry_after_s=gateway.retry_after_s,
        upstream_host=upstream_host,
        client_header_timeout_s=gateway.client_header_timeout_s,
        client_body_timeout_s=gateway.client_body_timeout_s,
        max_connections_per_ip=gateway.max_connections_per_ip,
        clients=tuple(c.name for c in gateway.clients),
        grafana_upstream=grafana,
        grafana_resolver=resolver,
    )


def _grafana(upstream: str | None, resolver: str | None) -> tuple[str | None, str | None]:
    if upstream is None:
        return None, None
    _check_address(upstream, "grafana_upstream")
    if resolver is not None:
        try:
            ipaddress.IPv4Address(resolver)
        except ValueError:
            raise GatewayPlanError(f"grafana_resolver: {resolver!r} must be an IPv4 address") from None
    host = upstream.rsplit(":", 1)[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if resolver is None:
            raise GatewayPlanError(
                f"grafana_upstream: {upstream!r} names a host: give grafana_resolver, the DNS server nginx asks for it"
            ) from None
    return upstream, resolver


def placeholder_upstreams(settings: FleetSettings, port: int = ports.METER) -> dict[str, list[str]]:
    """Documentation addresses (192.0.2.0/24, RFC 5737) standing in for node addresses known only after
    deployment: what `fleet render` shows a reviewer. nginx accepts them without resolving anything."""
    upstreams: dict[str, list[str]] = {}
    host = 10
    for group in settings.node_groups:
        upstreams[group.name] = [f"192.0.2.{host + i}:{port}" for i in range(group.count)]
        host += group.count
    return upstreams


def render_nginx(plan: GatewayPlan) -> str:
    """The main nginx.conf (no secrets: keys come from `plan.paths.api_keys_include`)."""
    return render_template(
        "nginx.conf.j2",
        plan=plan,
        admin_client=ADMIN_CLIENT,
        error_pages=ERROR_PAGES,
        client_header=CLIENT_HEADER,
        inference_routes=INFERENCE_ROUTES,
        model_body_routes=MODEL_BODY_ROUTES,
        model_path_prefix=MODEL_PATH_PREFIX,
        model_list_routes=MODEL_LIST_ROUTES,
        read_only_routes=READ_ONLY_ROUTES,
        read_only_prefixes=READ_ONLY_PREFIXES,
        admin_routes=ADMIN_ROUTES,
        admin_prefixes=ADMIN_PREFIXES,
        grafana_path=GRAFANA_PATH,
    )


def router_script() -> str:
    """The njs router deployed at `GatewayPaths.router_script` beside nginx.conf."""
    return ROUTER_SCRIPT_SOURCE.read_text()


def render_log_rotation(
    log_path: str,
    *,
    max_bytes: int = 64 << 20,
    interval_s: int = 60,
    reopen: Sequence[str] = ("nginx", "-s", "reopen"),
) -> str:
    """A shell script rotating the access-log file (`GatewayPaths.access_log_file`) by rename and
    `nginx -s reopen`, for the nginx image's /docker-entrypoint.d/ (it backgrounds itself)."""
    if not _PATH.fullmatch(log_path):
        raise GatewayPlanError(f"log_path: {log_path!r} must be a path of letters, digits and ._/-")
    if max_bytes < 1 or interval_s < 1:
        raise GatewayPlanError("max_bytes and interval_s must be at least 1")
    return render_template(
        "gateway-log-rotate.sh.j2",
        log=log_path,
        max_bytes=max_bytes,
        interval_s=interval_s,
        reopen=" ".join(shlex.quote(arg) for arg in reopen),
    )


def render_api_keys(clients: Mapping[str, str], admin_key: str) -> str:
    """The secret include: maps the presented key to the client name (`$fleet_client`).

    Keys are matched case-sensitively by anchored regexes (nginx's plain map keys are case-insensitive).
    """
    entries: list[tuple[str, str]] = []
    for name, key in sorted(clients.items()):
        if name == ADMIN_CLIENT or not re.fullmatch(r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?", name, flags=re.ASCII):
            raise GatewayPlanError(f"api key client name {name!r} must be a DNS label (a-z, 0-9, '-')")
        entries.append((name, key))
    entries.append((ADMIN_CLIENT, admin_key))
    seen: dict[str, str] = {}
    for name, key in entries:
        label = "admin key" if name == ADMIN_CLIENT else f"api key of {name!r}"
        if not _API_KEY.fullmatch(key):
            raise GatewayPlanError(f"{label}: must be 16 to 256 characters of A-Z a-z 0-9 _ . ~ -")
        if key in seen:
            raise GatewayPlanError(f"{label}: the same key is also given to {seen[key]!r}; keys must differ")
        seen[key] = name
    return render_template(
        "api-keys.conf.j2",
        entries=[(re.escape(key), name) for name, key in entries],
    )
