"""The nginx gateway on a host, as `fleet.plans.gateway` plans it (`GatewayHostPlan`): nginx with the rendered
config, the nginx exporter reading its stub_status, and the gateway log exporter counting nginx's answers from
its JSON access log.

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

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components import containers
from components.containers import Placement, healthcheck, label_args, metrics_healthcheck
from components.host import Host
from components.images import exporter_image_on, pinned_image
from components.node_exporter import node_exporter
from fleet import ports
from fleet.config import PROJECT
from fleet.plans.gateway import (
    BUDGET_CONTROLLER,
    BUDGET_MODULE,
    GATEWAY,
    LOG_EXPORTER,
    LOG_EXPORTER_MODULE,
    LOG_ROTATION_SCRIPT,
    NGINX_CONF,
    NGINX_EXPORTER,
    STATE_DIR,
    GatewayHostPlan,
)
from fleet.render import nginx
from fleet.usage import PASSWORD_ENV

TOKEN = f"{PROJECT}:index:Gateway"
# Secret files: readable by nginx's master process (root) only.
SECRET_MODE = "0600"
PLAIN_MODE = "0644"
SCRIPT_MODE = "0755"


@dataclass
class GatewayArgs:
    """A gateway host as planned in the core (`fleet.plans.gateway.gateway_host_plan`), the host it runs on,
    nginx's plan once the nodes' addresses are known, and the secrets it serves with."""

    plan: GatewayHostPlan
    host: Host
    nginx: pulumi.Input[nginx.GatewayPlan]  # fleet.plans.gateway.nginx_plan(settings, upstreams, grafana_upstream)
    api_keys: pulumi.Input[Mapping[str, str]]  # client name -> key; made secret here
    admin_key: pulumi.Input[str]  # made secret here
    certificate_pem: pulumi.Input[str] | None = None  # made secret here; required unless TLS is off
    private_key_pem: pulumi.Input[str] | None = None  # made secret here
    # Prometheus' base URL as seen from this host's containers: required where the plan enforces token budgets.
    prometheus_url: pulumi.Input[str] | None = None
    prometheus_password: pulumi.Input[str] | None = None  # Prometheus' basic auth, for the budget controller


class Gateway(pulumi.ComponentResource):
    url: pulumi.Output[str]
    status_target: pulumi.Output[str]  # the nginx exporter (job `nginx`)
    log_target: pulumi.Output[str]  # the gateway log exporter (job `gateway-log`)
    node_target: pulumi.Output[str] | None  # the host's node exporter (job `node`), on a host of its own
    container: docker.Container

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        plan, host = args.plan, args.host
        if name != plan.component:
            raise ValueError(f"the gateway planned as {plan.component!r} is wired as {name!r}")
        plan.check_certificate(args.certificate_pem is not None and args.private_key_pem is not None)
        if plan.budgets and args.prometheus_url is None:
            raise ValueError(f"{name}: token budgets are enforced with Prometheus' URL; none was given")
        place = Placement(name, plan.placement, host, self)
        paths = plan.paths
        nginx_conf = pulumi.Output.from_input(args.nginx).apply(nginx.render_nginx)
        api_keys_conf = pulumi.Output.secret(
            pulumi.Output.all(args.api_keys, args.admin_key).apply(lambda v: nginx.render_api_keys(v[0], v[1]))
        )
        uploads = [
            docker.ContainerUploadArgs(file=NGINX_CONF, content=nginx_conf, permissions=PLAIN_MODE),
            docker.ContainerUploadArgs(file=paths.router_script, content=plan.router_script, permissions=PLAIN_MODE),
            docker.ContainerUploadArgs(file=paths.api_keys_include, content=api_keys_conf, permissions=SECRET_MODE),
            docker.ContainerUploadArgs(file=LOG_ROTATION_SCRIPT, content=plan.log_rotation, permissions=SCRIPT_MODE),
        ]
        if plan.tls:
            uploads += [
                docker.ContainerUploadArgs(
                    file=paths.certificate, content=pulumi.Output.secret(args.certificate_pem), permissions=PLAIN_MODE
                ),
                docker.ContainerUploadArgs(
                    file=paths.certificate_key, content=pulumi.Output.secret(args.private_key_pem), permissions=SECRET_MODE
                ),
            ]

        self.log_volume = containers.volume(f"{name}-access-log", place, self)
        volumes = [docker.ContainerVolumeArgs(volume_name=self.log_volume.name, container_path=plan.log_dir)]
        self.state_volume = None
        if plan.budgets:
            self.state_volume = containers.volume(f"{name}-state", place, self)
            volumes.append(docker.ContainerVolumeArgs(volume_name=self.state_volume.name, container_path=STATE_DIR))

        image = pinned_image(f"{name}-nginx-image", plan.images.nginx, place, self)
        nginx_name = plan.container(GATEWAY)
        self.container = docker.Container(
            f"{name}-nginx",
            name=nginx_name,
            image=image.image_id,
            uploads=uploads,
            volumes=volumes,
            networks_advanced=place.networks(nginx_name),
            ports=place.public_ports(*plan.client_ports),
            **containers.RUNTIME,
            healthcheck=healthcheck(list(plan.health_probe), start_period="10s"),
            wait=True,
            wait_timeout=120,
            labels=label_args(plan.labels[GATEWAY]),
            opts=place.resource_options(self),
        )

        exporter_name = plan.container(NGINX_EXPORTER)
        exporter_image = pinned_image(f"{name}-nginx-exporter-image", plan.images.nginx_exporter, place, self)
        self.exporter = docker.Container(
            f"{name}-nginx-exporter",
            name=exporter_name,
            image=exporter_image.image_id,
            command=list(plan.nginx_exporter_command),
            networks_advanced=place.networks(exporter_name),
            ports=place.private_ports(ports.NGINX_EXPORTER),
            **containers.RUNTIME,
            # A distroless image (no shell, no wget): Prometheus' `up` for this job is its health signal.
            labels=label_args(plan.labels[NGINX_EXPORTER]),
            opts=place.resource_options(self, depends_on=[self.container]),
        )

        self.log_exporter = self._log_exporter(name, plan, place)
        self.budget_controller = None
        if plan.budgets:
            self.budget_controller = self._budget_controller(name, plan, place, args)

        # The host's own CPU, memory and disks. A gateway on the local Docker host shares it with the nodes,
        # whose exporters already report it.
        self.node_exporter = None
        self.node_target = None
        if plan.node_exporter is not None and not place.shared:
            self.node_exporter = node_exporter(plan.node_exporter, place, self)
            self.node_target = place.peer_address(plan.node_exporter.name, ports.NODE_EXPORTER)

        self.status_target = place.peer_address(exporter_name, ports.NGINX_EXPORTER)
        self.log_target = place.peer_address(plan.container(LOG_EXPORTER), ports.GATEWAY_LOG_EXPORTER)
        address = plan.address if plan.address else host.public_address or host.private_address
        self.url = pulumi.Output.from_input(address).apply(plan.client_url.at)
        self.register_outputs({"url": self.url, "statusTarget": self.status_target, "logTarget": self.log_target})

    def _log_exporter(self, name: str, plan: GatewayHostPlan, place: Placement) -> docker.Container:
        """`python -m fleet.exporters.gateway_log` from the metering exporter's image, following nginx's access-log file."""
        return self._sidecar(
            f"{name}-log-exporter",
            LOG_EXPORTER,
            LOG_EXPORTER_MODULE,
            plan,
            place,
            command=list(plan.log_exporter_command),
            volumes=[
                docker.ContainerVolumeArgs(volume_name=self.log_volume.name, container_path=plan.log_dir, read_only=True)
            ],
            ports=place.private_ports(ports.GATEWAY_LOG_EXPORTER),
            healthcheck=metrics_healthcheck(ports.GATEWAY_LOG_EXPORTER),
            wait=True,
            wait_timeout=120,
        )

    def _budget_controller(self, name: str, plan: GatewayHostPlan, place: Placement, args: GatewayArgs) -> docker.Container:
        """`python -m fleet.exporters.budget` from the meter image, in nginx's PID namespace, writing the budget map into
        the state volume and reloading nginx when it changes (fleet/exporters/budget.py explains the mechanism)."""
        authenticated = args.prometheus_password is not None
        return self._sidecar(
            f"{name}-budget",
            BUDGET_CONTROLLER,
            BUDGET_MODULE,
            plan,
            place,
            command=pulumi.Output.from_input(args.prometheus_url).apply(lambda url: plan.budget_command(url, authenticated)),
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
        self, resource: str, role: str, module: str, plan: GatewayHostPlan, place: Placement, **options
    ) -> docker.Container:
        """`python -m <module>` from the metering exporter's image (`<resource>-image`) beside nginx, labelled
        `role`; started after nginx, so the files it shares with nginx exist."""
        image = exporter_image_on(f"{resource}-image", plan.images.python, place, self)
        container = plan.container(role)
        return docker.Container(
            resource,
            name=container,
            image=image.repo_digest,
            entrypoints=["python", "-m", module],
            networks_advanced=place.networks(container),
            **containers.RUNTIME,
            labels=label_args(plan.labels[role]),
            opts=place.resource_options(self, depends_on=[self.container]),
            **options,
        )
