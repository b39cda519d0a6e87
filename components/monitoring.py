"""Prometheus, Alertmanager and Grafana on a host, with the rendered scrape config, alert rules, receivers,
datasource and dashboard.

Alertmanager's config holds the receivers' secrets (`ollama-fleet:alertReceiverSecrets`), so it travels as a
secret upload; its silences and notification log live in a named volume, so a silence set with `amtool`
outlasts a container replacement.

Prometheus keeps its TSDB in a named Docker volume (it survives container replacement; retention is a flag).
Grafana is stateless: everything it shows is provisioned from files, and the admin password comes from a
secret environment variable, which Grafana applies when it creates its database, so a new password takes
effect with the container it replaces.

Grafana is served by the gateway's TLS server under /grafana/ to admin networks (`grafana_public_url`): it runs
under that sub-path with secure cookies, and its port is published only where the gateways' nginx needs it
(the host's private address on AWS, which the security group opens to no one else; nowhere on the local
shared network). With TLS off (dev only) it is not served through the gateway and keeps its operator port
(the local bind address, or the private address on AWS, reached through SSM port forwarding).
Prometheus and Alertmanager are published on the operator address (loopback on the local host, the private
address on AWS, reached through SSM port forwarding or, for Prometheus, an admin CIDR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pulumi
import pulumi_docker as docker

from components import containers
from components.containers import Placement, healthcheck, label_args
from components.host import Host
from components.images import pinned_image
from fleet.config import PROJECT
from fleet.plans.monitoring import (
    ALERTMANAGER_CONF,
    GRAFANA_ADMIN_PASSWORD,
    GRAFANA_ROOT_URL,
    PROMETHEUS_CONF,
    PROMETHEUS_PASSWORD_FILE,
    PROMETHEUS_WEB_CONF,
    MonitoringPlan,
    ServicePlan,
    prometheus_command,
    prometheus_web_config,
)
from fleet.plans.scrape import ScrapeTargets
from fleet.render import grafana, prometheus
from fleet.render.prometheus import PrometheusPlan

TOKEN = f"{PROJECT}:index:Monitoring"


@dataclass
class MonitoringArgs:
    plan: MonitoringPlan  # fleet.plans.monitoring.monitoring_plan(settings, stack, ...)
    host: Host
    # What Prometheus scrapes, once the targets' addresses are known (fleet.plans.monitoring.prometheus_scrape).
    scrape: pulumi.Input[PrometheusPlan]
    # Alertmanager's config with the receivers' secrets (fleet.plans.monitoring.alertmanager_file); made secret here.
    alertmanager_config: pulumi.Input[str]
    grafana_password: pulumi.Input[str]  # made secret here
    # Prometheus' basic auth: the password (made secret here) and the bcrypt salt kept in the state (32 hex digits).
    prometheus_password: pulumi.Input[str]
    prometheus_salt: pulumi.Input[str]
    # Grafana's https URL through the gateway (`https://<gateway>/grafana/`): given exactly when the plan puts
    # Grafana behind the gateway.
    grafana_public_url: pulumi.Input[str] | None = None


def resolve_targets(targets: ScrapeTargets[pulumi.Input[str]]) -> pulumi.Output[ScrapeTargets[str]]:
    """The same targets once every address is known."""
    nodes = [
        pulumi.Output.from_input(node.address).apply(lambda address, node=node: replace(node, address=address))
        for node in targets.nodes
    ]
    gateways = [
        pulumi.Output.all(gateway.nginx_exporter, gateway.log_exporter, gateway.node_exporter).apply(
            lambda values, gateway=gateway: replace(
                gateway, nginx_exporter=values[0], log_exporter=values[1], node_exporter=values[2]
            )
        )
        for gateway in targets.gateways
    ]
    return pulumi.Output.all(pulumi.Output.all(*nodes), pulumi.Output.all(*gateways)).apply(
        lambda values: ScrapeTargets(nodes=tuple(values[0]), gateways=tuple(values[1]))
    )


class Monitoring(pulumi.ComponentResource):
    prometheus_url: pulumi.Output[str]
    grafana_url: pulumi.Output[str]
    alertmanager_url: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        plan = self._plan = args.plan
        if name != plan.component:
            raise ValueError(f"Monitoring {name!r}: its plan names the component {plan.component!r}")
        if plan.grafana_behind_gateway != (args.grafana_public_url is not None):
            raise ValueError(f"Monitoring {name!r}: Grafana's public URL is given exactly when the gateway serves it")
        place = Placement(name, plan.placement, args.host, self)

        scrape = pulumi.Output.from_input(args.scrape)
        # Basic auth on Prometheus' API and UI: the web config holds a bcrypt hash computed here; the password
        # file is what its own self-scrape sends.
        prometheus_password = pulumi.Output.secret(args.prometheus_password)
        web_config = pulumi.Output.secret(
            pulumi.Output.all(prometheus_password, args.prometheus_salt).apply(
                lambda values: prometheus_web_config(values[0], values[1])
            )
        )
        self.tsdb = self._volume(plan.prometheus, place)
        self.prometheus = self._container(
            plan.prometheus,
            place,
            command=scrape.apply(prometheus_command),
            uploads=[
                docker.ContainerUploadArgs(file=PROMETHEUS_CONF, content=scrape.apply(prometheus.render_prometheus)),
                docker.ContainerUploadArgs(file=PROMETHEUS_WEB_CONF, content=web_config),
                docker.ContainerUploadArgs(file=PROMETHEUS_PASSWORD_FILE, content=prometheus_password),
            ],
            volume=self.tsdb,
            ports=place.operator_ports(plan.prometheus.port),
        )

        self.alertmanager_data = self._volume(plan.alertmanager, place)
        self.alertmanager = self._container(
            plan.alertmanager,
            place,
            uploads=[
                docker.ContainerUploadArgs(file=ALERTMANAGER_CONF, content=pulumi.Output.secret(args.alertmanager_config))
            ],
            volume=self.alertmanager_data,
            ports=place.operator_ports(plan.alertmanager.port),
        )

        values = {
            GRAFANA_ADMIN_PASSWORD: args.grafana_password,
            grafana.PROMETHEUS_PASSWORD_ENV: prometheus_password,
            GRAFANA_ROOT_URL: args.grafana_public_url,
        }
        envs: list[pulumi.Input[str]] = []
        for entry in plan.grafana_environment:
            if isinstance(entry, str):
                envs.append(entry)
                continue
            value = pulumi.Output.concat(f"{entry.name}=", values[entry.name])
            envs.append(pulumi.Output.secret(value) if entry.secret else value)
        self.grafana = self._container(
            plan.grafana,
            place,
            envs=envs,
            # Behind the gateway: only where its nginx reaches it (none on a shared network).
            ports=place.private_ports(plan.grafana.port)
            if plan.grafana_behind_gateway
            else place.operator_ports(plan.grafana.port),
            depends_on=[self.prometheus],
        )

        self.prometheus_url = place.operator_url(plan.prometheus.port)
        self.grafana_url = (
            pulumi.Output.from_input(args.grafana_public_url)
            if args.grafana_public_url is not None
            else place.operator_url(plan.grafana.port)
        )
        self.alertmanager_url = place.operator_url(plan.alertmanager.port)
        self.register_outputs(
            {"prometheusUrl": self.prometheus_url, "grafanaUrl": self.grafana_url, "alertmanagerUrl": self.alertmanager_url}
        )

    def _volume(self, service: ServicePlan, place: Placement) -> docker.Volume:
        if service.volume is None:
            raise ValueError(f"{service.name}: the plan gives it no volume")
        return containers.volume(service.volume.name, place, self)

    def _container(
        self,
        service: ServicePlan,
        place: Placement,
        *,
        ports: list[docker.ContainerPortArgs],
        command: pulumi.Input[list[str]] | None = None,
        uploads: Sequence[docker.ContainerUploadArgs] = (),
        volume: docker.Volume | None = None,
        envs: list[pulumi.Input[str]] | None = None,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> docker.Container:
        """A container of the plan on the placement's host: its pinned image, the given uploads followed by the
        plan's files, its volume, network, ports, health check and labels; the update waits for it to be healthy."""
        image = pinned_image(f"{self._plan.component}-{service.role}-image", service.image, place, self)
        return docker.Container(
            f"{self._plan.component}-{service.role}",
            name=service.name,
            image=image.image_id,
            command=command if command is not None else (list(service.command) or None),
            envs=envs,
            uploads=[*uploads, *(docker.ContainerUploadArgs(file=f.path, content=f.content) for f in service.files)],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path=service.volume.path)]
            if volume is not None and service.volume is not None
            else None,
            networks_advanced=place.networks(service.name),
            ports=ports,
            **containers.RUNTIME,
            healthcheck=healthcheck(list(service.health.test), start_period=service.health.start_period),
            wait=True,
            wait_timeout=service.wait_timeout,
            labels=label_args(service.labels),
            opts=place.resource_options(self, depends_on=depends_on),
        )
