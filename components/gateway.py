"""The nginx gateway on a host: nginx with the rendered config, the nginx exporter reading its stub_status, and
the gateway log exporter counting nginx's answers from its JSON access log.

nginx.conf holds no secret and is uploaded as plain content (the policy pack reads it), with the njs router it
imports (fleet/render/njs/fleet_router.js, which sends each request to the group serving its model); the API-key include
and the TLS certificate and key are uploaded as secret content. Both are rendered from Outputs with
`Output.all(...).apply(render)` and handed to the container as inputs: a change of keys, certificate or node
addresses replaces the container with the new files.

nginx also writes the access log as a file into a named volume that the gateway log exporter mounts read-only
(`python -m fleet.exporters.gateway_log`, from the metering exporter's image); a script in the nginx image's
/docker-entrypoint.d/ rotates that file by rename and `nginx -s reopen`, so the volume stays bounded.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components import containers
from components.containers import Placement, container_name, healthcheck, metrics_healthcheck, labels, resolve_grouped
from components.host import Host
from components.images import exporter_image, pinned_image
from components.node_exporter import node_exporter
from fleet import contract, ports
from fleet.exporters import budget
from fleet.exporters import gateway_log
from fleet.config import PROJECT, FleetSettings
from fleet.plans.gateway import (
    BUDGET_PATHS,
    STATE_DIR,
    client_ports,
    gateway_paths,
    gateway_plan,
    gateway_url,
    tls_on,
    token_budgets,
)
from fleet.plans.node_exporter import node_exporter_plan
from fleet.render import nginx
from fleet.render.prometheus_web import PROMETHEUS_USER
from fleet.usage import PASSWORD_ENV

TOKEN = f"{PROJECT}:index:Gateway"
NGINX_CONF = "/etc/nginx/nginx.conf"
# Secret files: readable by nginx's master process (root) only.
SECRET_MODE = "0600"
PLAIN_MODE = "0644"
# Run by the nginx image's entrypoint before nginx starts (official images run /docker-entrypoint.d/*.sh).
LOG_ROTATION_SCRIPT = "/docker-entrypoint.d/40-fleet-log-rotate.sh"
SCRIPT_MODE = "0755"
# The access-log file is renamed above this size (the volume holds at most about twice it), checked every minute.
LOG_ROTATE_BYTES = 64 << 20
LOG_ROTATE_INTERVAL_S = 60
BUDGET_INTERVAL_S = 15


@dataclass
class GatewayArgs:
    settings: FleetSettings
    host: Host
    upstreams: dict[str, list[pulumi.Output[str]]]  # node group -> `address:port` of each node's meter
    api_keys: pulumi.Output[dict[str, str]]  # secret: client name -> key
    admin_key: pulumi.Output[str]  # secret
    certificate_pem: pulumi.Output[str] | None = None  # secret
    private_key_pem: pulumi.Output[str] | None = None  # secret
    server_name: str | None = None
    host_label: str = "gateway-0"  # the `node` label of this gateway host's node exporter
    # Prometheus' base URL as seen from this host's containers; with it, clients' token budgets are enforced.
    prometheus_url: pulumi.Input[str] | None = None
    prometheus_password: pulumi.Output[str] | None = None  # secret: Prometheus' basic auth, for the controller
    # Grafana's `address:port` as this host's containers reach it, served under /grafana/ on the TLS server to
    # admin networks; None: not served (monitoring off, or TLS off).
    grafana_upstream: pulumi.Input[str] | None = None


class Gateway(pulumi.ComponentResource):
    url: pulumi.Output[str]
    status_target: pulumi.Output[str]  # the nginx exporter (job `nginx`)
    log_target: pulumi.Output[str]  # the gateway log exporter (job `gateway-log`)
    container: docker.Container

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        settings, host = args.settings, args.host
        gateway = settings.gateway
        tls = tls_on(settings)
        if tls and (args.certificate_pem is None or args.private_key_pem is None):
            raise ValueError(
                f"gateway.tls.mode {gateway.tls.mode!r} needs a certificate and private key; "
                "only mode `off` runs without them"
            )
        place = Placement(name, settings, host, self)
        budgets = token_budgets(settings)
        enforce_budgets = bool(budgets) and args.prometheus_url is not None
        paths = gateway_paths(enforce_budgets)
        # The plan depends on the node addresses (known after their containers exist), not on any secret.
        plan = pulumi.Output.all(resolve_grouped(args.upstreams), args.grafana_upstream).apply(
            lambda values: gateway_plan(settings, values[0], args.server_name, paths, values[1])
        )
        nginx_conf = plan.apply(nginx.render_nginx)
        api_keys_conf = pulumi.Output.secret(
            pulumi.Output.all(args.api_keys, args.admin_key).apply(lambda v: nginx.render_api_keys(v[0], v[1]))
        )
        uploads = [
            docker.ContainerUploadArgs(file=NGINX_CONF, content=nginx_conf, permissions=PLAIN_MODE),
            # the njs router nginx.conf imports (its routing table is in nginx.conf)
            docker.ContainerUploadArgs(file=paths.router_script, content=nginx.router_script(), permissions=PLAIN_MODE),
            docker.ContainerUploadArgs(file=paths.api_keys_include, content=api_keys_conf, permissions=SECRET_MODE),
            docker.ContainerUploadArgs(
                file=LOG_ROTATION_SCRIPT,
                content=nginx.render_log_rotation(
                    paths.access_log_file, max_bytes=LOG_ROTATE_BYTES, interval_s=LOG_ROTATE_INTERVAL_S
                ),
                permissions=SCRIPT_MODE,
            ),
        ]
        if tls:
            uploads += [
                docker.ContainerUploadArgs(
                    file=paths.certificate, content=pulumi.Output.secret(args.certificate_pem), permissions=PLAIN_MODE
                ),
                docker.ContainerUploadArgs(
                    file=paths.certificate_key, content=pulumi.Output.secret(args.private_key_pem), permissions=SECRET_MODE
                ),
            ]

        # The access-log file's folder, shared with the gateway log exporter (read-only there).
        log_dir = posixpath.dirname(paths.access_log_file)
        self.log_volume = containers.volume(f"{name}-access-log", place, self)

        volumes = [docker.ContainerVolumeArgs(volume_name=self.log_volume.name, container_path=log_dir)]
        self.state_volume = None
        if enforce_budgets:
            self.state_volume = containers.volume(f"{name}-state", place, self)
            volumes.append(docker.ContainerVolumeArgs(volume_name=self.state_volume.name, container_path=STATE_DIR))

        image = pinned_image(f"{name}-nginx-image", settings.images.nginx, place, self)
        nginx_name = container_name(name, "gateway")
        self.container = docker.Container(
            f"{name}-nginx",
            name=nginx_name,
            image=image.image_id,
            uploads=uploads,
            volumes=volumes,
            networks_advanced=place.networks(nginx_name),
            ports=place.public_ports(*client_ports(settings)),
            **containers.RUNTIME,
            # /health is answered by nginx itself on the plain-HTTP server (busybox wget is in nginx:alpine).
            healthcheck=healthcheck(
                ["CMD", "wget", "-qO", "/dev/null", f"http://127.0.0.1:{gateway.http_port}/health"], start_period="10s"
            ),
            wait=True,
            wait_timeout=120,
            labels=labels(settings, "gateway", contract.GatewayContract.of(settings).labels()),
            opts=place.resource_options(self),
        )

        exporter_name = container_name(name, "nginx-exporter")
        exporter_image = pinned_image(f"{name}-nginx-exporter-image", settings.images.nginx_exporter, place, self)
        self.exporter = docker.Container(
            f"{name}-nginx-exporter",
            name=exporter_name,
            image=exporter_image.image_id,
            command=[
                f"--nginx.scrape-uri=http://{nginx_name}:{ports.NGINX_STATUS}/stub_status",
                f"--web.listen-address=:{ports.NGINX_EXPORTER}",
            ],
            networks_advanced=place.networks(exporter_name),
            ports=place.private_ports(ports.NGINX_EXPORTER),
            **containers.RUNTIME,
            # A distroless image (no shell, no wget): Prometheus' `up` for this job is its health signal.
            labels=labels(settings, "nginx-exporter"),
            opts=place.resource_options(self, depends_on=[self.container]),
        )

        self.log_exporter = self._log_exporter(name, settings, place, paths.access_log_file, log_dir)
        self.budget_controller = None
        if enforce_budgets:
            self.budget_controller = self._budget_controller(name, settings, place, budgets, args)

        # The host's own CPU, memory and disks. A gateway on the local Docker host shares it with the nodes,
        # whose exporters already report it.
        self.node_exporter = None
        self.node_target: pulumi.Output[str] | None = None
        if settings.monitoring.enabled and not place.shared:
            self.node_exporter = node_exporter(node_exporter_plan(settings, name, args.host_label), place, self)
            self.node_target = place.peer_address(container_name(name, "node-exporter"), ports.NODE_EXPORTER)

        self.status_target = place.peer_address(exporter_name, ports.NGINX_EXPORTER)
        self.log_target = place.peer_address(container_name(name, "gateway-log-exporter"), ports.GATEWAY_LOG_EXPORTER)
        self.url = self._url(settings, host, args.server_name)
        self.register_outputs({"url": self.url, "statusTarget": self.status_target, "logTarget": self.log_target})

    def _log_exporter(
        self, name: str, settings: FleetSettings, place: Placement, log_file: str, log_dir: str
    ) -> docker.Container:
        """`python -m fleet.exporters.gateway_log` from the metering exporter's image, following nginx's access-log file."""
        return self._sidecar(
            f"{name}-log-exporter",
            container_name(name, "gateway-log-exporter"),
            "gateway-log-exporter",
            "fleet.exporters.gateway_log",
            settings,
            place,
            command=gateway_log.exporter_arguments(
                log_file,
                f"0.0.0.0:{ports.GATEWAY_LOG_EXPORTER}",
                name,
                [c.name for c in settings.gateway.clients],
            ),
            volumes=[docker.ContainerVolumeArgs(volume_name=self.log_volume.name, container_path=log_dir, read_only=True)],
            ports=place.private_ports(ports.GATEWAY_LOG_EXPORTER),
            healthcheck=metrics_healthcheck(ports.GATEWAY_LOG_EXPORTER),
            wait=True,
            wait_timeout=120,
        )

    def _budget_controller(
        self, name: str, settings: FleetSettings, place: Placement, budgets: dict[str, int], args: GatewayArgs
    ) -> docker.Container:
        """`python -m fleet.exporters.budget` from the meter image, in nginx's PID namespace, writing the budget map into
        the state volume and reloading nginx when it changes (fleet/exporters/budget.py explains the mechanism)."""
        return self._sidecar(
            f"{name}-budget",
            container_name(name, "budget"),
            "budget-controller",
            "fleet.exporters.budget",
            settings,
            place,
            command=pulumi.Output.from_input(args.prometheus_url).apply(
                lambda url: budget.controller_arguments(
                    url,
                    budgets,
                    f"{BUDGET_PATHS.budget_dir}/clients.map",
                    BUDGET_PATHS.pid,
                    BUDGET_INTERVAL_S,
                    prometheus_user=PROMETHEUS_USER if args.prometheus_password is not None else None,
                )
            ),
            # Prometheus asks for a password: from the environment (a secret), never in the arguments.
            envs=None
            if args.prometheus_password is None
            else [pulumi.Output.secret(pulumi.Output.concat(f"{PASSWORD_ENV}=", args.prometheus_password))],
            # Root owns the volume and nginx's master; every capability is dropped all the same.
            user="0:0",
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            pid_mode=self.container.id.apply(lambda container_id: f"container:{container_id}"),
            volumes=[docker.ContainerVolumeArgs(volume_name=self.state_volume.name, container_path=STATE_DIR)],
        )

    def _sidecar(
        self, resource: str, container: str, role: str, module: str, settings: FleetSettings, place: Placement, **options
    ) -> docker.Container:
        """`python -m <module>` from the metering exporter's image (`<resource>-image`) beside nginx, labelled
        `role`; started after nginx, so the files it shares with nginx exist."""
        image = exporter_image(f"{resource}-image", settings, place, self)
        return docker.Container(
            resource,
            name=container,
            image=image.repo_digest,
            entrypoints=["python", "-m", module],
            networks_advanced=place.networks(container),
            **containers.RUNTIME,
            labels=labels(settings, role),
            opts=place.resource_options(self, depends_on=[self.container]),
            **options,
        )

    @staticmethod
    def _url(settings: FleetSettings, host: Host, server_name: str | None) -> pulumi.Output[str]:
        if server_name:
            address: pulumi.Input[str] = server_name
        elif settings.target == "local":
            address = settings.local.bind_address
        else:
            address = host.public_address or host.private_address
        return pulumi.Output.from_input(address).apply(lambda a: gateway_url(settings, a))
