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

from dataclasses import dataclass, replace

import pulumi
import pulumi_docker as docker

from components import containers
from components.containers import Placement, container_name, healthcheck, labels
from components.host import Host
from components.images import pinned_image
from fleet import contract, ports
from fleet.config import PROJECT, FleetSettings
from fleet.plans.alerting import receiver_secrets, unset_secret_problems
from fleet.plans.scrape import ScrapeTargets, scrape_plan
from fleet.stack_file import StackConfigError
from fleet.render import alertmanager, grafana, prometheus, prometheus_web, rules

TOKEN = f"{PROJECT}:index:Monitoring"
PROMETHEUS_CONF = "/etc/prometheus/prometheus.yml"
PROMETHEUS_WEB_CONF = "/etc/prometheus/web.yml"
PROMETHEUS_PASSWORD_FILE = "/etc/prometheus/password"
PROMETHEUS_DATA = "/prometheus"
GRAFANA_DATASOURCE = "/etc/grafana/provisioning/datasources/ollama-fleet.yaml"
GRAFANA_PROVIDER = "/etc/grafana/provisioning/dashboards/ollama-fleet.yaml"
GRAFANA_DASHBOARD = f"{grafana.DASHBOARDS_PATH}/{grafana.DASHBOARD_FILE}"
ALERTMANAGER_CONF = alertmanager.CONFIG_PATH
ALERTMANAGER_DATA = "/alertmanager"

@dataclass
class MonitoringArgs:
    settings: FleetSettings
    host: Host
    # What Prometheus scrapes (fleet.plans.scrape.scrape_targets), with the addresses the nodes and gateways publish.
    targets: ScrapeTargets[pulumi.Input[str]]
    grafana_password: pulumi.Output[str]  # secret
    # Prometheus' basic auth: the password (secret) and the bcrypt salt kept in the state (32 hex digits).
    prometheus_password: pulumi.Output[str]
    prometheus_salt: pulumi.Output[str]
    # JSON object receiver name -> secret (secret config `alertReceiverSecrets`); None when the stack sets none.
    alert_receiver_secrets_json: pulumi.Output[str] | None = None
    # Grafana's https URL through the gateway (`https://<gateway>/grafana/`); None: the gateway does not serve it.
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


def grafana_environment(
    settings: FleetSettings,
    password: pulumi.Output[str],
    prometheus_password: pulumi.Output[str],
    public_url: pulumi.Input[str] | None = None,
) -> list[pulumi.Input[str]]:
    """Grafana's settings: fixed admin user, secret password, no sign-up, no anonymous access, no phoning home;
    the datasource's Prometheus password comes from the environment (the provisioning file names the variable).
    Behind the gateway (`public_url`), Grafana serves from its sub-path, so its redirects and assets stay under
    it, and its session cookie travels over HTTPS only."""
    behind_gateway: list[pulumi.Input[str]] = []
    if public_url is not None:
        behind_gateway = [
            pulumi.Output.concat("GF_SERVER_ROOT_URL=", public_url),
            "GF_SERVER_SERVE_FROM_SUB_PATH=true",
            "GF_SECURITY_COOKIE_SECURE=true",
        ]
    return [
        f"GF_SECURITY_ADMIN_USER={settings.monitoring.grafana_admin_user}",
        pulumi.Output.secret(pulumi.Output.concat("GF_SECURITY_ADMIN_PASSWORD=", password)),
        pulumi.Output.secret(pulumi.Output.concat(f"{grafana.PROMETHEUS_PASSWORD_ENV}=", prometheus_password)),
        f"GF_SERVER_HTTP_PORT={ports.GRAFANA}",
        "GF_USERS_ALLOW_SIGN_UP=false",
        "GF_AUTH_ANONYMOUS_ENABLED=false",
        "GF_ANALYTICS_REPORTING_ENABLED=false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES=false",
        "GF_NEWS_NEWS_FEED_ENABLED=false",
        *behind_gateway,
    ]


class Monitoring(pulumi.ComponentResource):
    prometheus_url: pulumi.Output[str]
    grafana_url: pulumi.Output[str]
    alertmanager_url: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        settings, host = args.settings, args.host
        stack = pulumi.get_stack()
        if args.alert_receiver_secrets_json is None:
            # Before anything is registered: a receiver without its secret is the stack's error, not a failed update.
            problems = unset_secret_problems(settings)
            if problems:
                raise StackConfigError(f"Pulumi.{stack}.yaml", problems)
        place = Placement(name, settings, host, self)

        prometheus_name = container_name(name, "prometheus")
        alertmanager_name = container_name(name, "alertmanager")
        # Prometheus and Alertmanager share the component's network: the container name is the address.
        plan = resolve_targets(args.targets).apply(
            lambda targets: scrape_plan(
                settings, targets, stack, [f"{alertmanager_name}:{ports.ALERTMANAGER}"], PROMETHEUS_PASSWORD_FILE
            )
        )
        # Basic auth on Prometheus' API and UI: the web config holds a bcrypt hash computed here; the password
        # file is what its own self-scrape sends.
        prometheus_password = pulumi.Output.secret(args.prometheus_password)
        web_config = pulumi.Output.secret(
            pulumi.Output.all(prometheus_password, args.prometheus_salt).apply(
                lambda values: prometheus_web.render_web_config(prometheus_web.hash_password(values[0], values[1]))
            )
        )
        self.tsdb = containers.volume(f"{name}-tsdb", settings, place, self)
        prometheus_image = pinned_image(f"{name}-prometheus-image", settings.images.prometheus, place, self)
        self.prometheus = docker.Container(
            f"{name}-prometheus",
            name=prometheus_name,
            image=prometheus_image.image_id,
            command=plan.apply(
                lambda p: prometheus.prometheus_args(
                    p,
                    config_file=PROMETHEUS_CONF,
                    storage_path=PROMETHEUS_DATA,
                    listen_address=f"0.0.0.0:{ports.PROMETHEUS}",
                    web_config_file=PROMETHEUS_WEB_CONF,
                )
            ),
            uploads=[
                docker.ContainerUploadArgs(file=PROMETHEUS_CONF, content=plan.apply(prometheus.render_prometheus)),
                docker.ContainerUploadArgs(file=PROMETHEUS_WEB_CONF, content=web_config),
                docker.ContainerUploadArgs(file=PROMETHEUS_PASSWORD_FILE, content=prometheus_password),
                docker.ContainerUploadArgs(file=prometheus.DEFAULT_RULES_FILE, content=rules.render_rules(settings)),
            ],
            volumes=[docker.ContainerVolumeArgs(volume_name=self.tsdb.name, container_path=PROMETHEUS_DATA)],
            networks_advanced=place.networks(prometheus_name),
            ports=place.operator_ports(ports.PROMETHEUS),
            **containers.RUNTIME,
            # Every endpoint asks for the password, which must not sit in the container's visible config: healthy
            # is "answers HTTP and asks for credentials" (busybox wget reports the 401).
            healthcheck=healthcheck(
                ["CMD-SHELL", f"wget -qO /dev/null http://127.0.0.1:{ports.PROMETHEUS}/-/healthy 2>&1 | grep -q 401"],
                start_period="30s",
            ),
            wait=True,
            wait_timeout=120,
            labels=labels(settings, "prometheus", {contract.LABELS.retention: settings.monitoring.retention}),
            opts=place.resource_options(self),
        )

        secrets_json = args.alert_receiver_secrets_json or pulumi.Output.from_input("")
        alertmanager_config = pulumi.Output.secret(
            secrets_json.apply(lambda text: alertmanager.render_alertmanager(settings, receiver_secrets(text)))
        )
        self.alertmanager_data = containers.volume(f"{name}-alertmanager-data", settings, place, self)
        alertmanager_image = pinned_image(f"{name}-alertmanager-image", settings.images.alertmanager, place, self)
        self.alertmanager = docker.Container(
            f"{name}-alertmanager",
            name=alertmanager_name,
            image=alertmanager_image.image_id,
            command=alertmanager.alertmanager_args(
                config_file=ALERTMANAGER_CONF,
                storage_path=ALERTMANAGER_DATA,
                listen_address=f"0.0.0.0:{ports.ALERTMANAGER}",
            ),
            uploads=[docker.ContainerUploadArgs(file=ALERTMANAGER_CONF, content=alertmanager_config)],
            volumes=[docker.ContainerVolumeArgs(volume_name=self.alertmanager_data.name, container_path=ALERTMANAGER_DATA)],
            networks_advanced=place.networks(alertmanager_name),
            ports=place.operator_ports(ports.ALERTMANAGER),
            **containers.RUNTIME,
            healthcheck=healthcheck(
                ["CMD", "wget", "-qO", "/dev/null", f"http://127.0.0.1:{ports.ALERTMANAGER}/-/healthy"], start_period="30s"
            ),
            wait=True,
            wait_timeout=120,
            labels=labels(settings, "alertmanager"),
            opts=place.resource_options(self),
        )

        grafana_name = container_name(name, "grafana")
        behind_gateway = args.grafana_public_url is not None
        grafana_image = pinned_image(f"{name}-grafana-image", settings.images.grafana, place, self)
        self.grafana = docker.Container(
            f"{name}-grafana",
            name=grafana_name,
            image=grafana_image.image_id,
            envs=grafana_environment(settings, args.grafana_password, prometheus_password, args.grafana_public_url),
            uploads=[
                docker.ContainerUploadArgs(
                    file=GRAFANA_DATASOURCE,
                    content=grafana.render_datasource(
                        f"http://{prometheus_name}:{ports.PROMETHEUS}",
                        settings.monitoring.scrape_interval,
                        basic_auth_user=prometheus_web.PROMETHEUS_USER,
                    ),
                ),
                docker.ContainerUploadArgs(file=GRAFANA_PROVIDER, content=grafana.render_dashboard_provider()),
                docker.ContainerUploadArgs(file=GRAFANA_DASHBOARD, content=grafana.render_dashboard(settings)),
            ],
            networks_advanced=place.networks(grafana_name),
            # Behind the gateway: only where its nginx reaches it (none on a shared network).
            ports=place.private_ports(ports.GRAFANA) if behind_gateway else place.operator_ports(ports.GRAFANA),
            **containers.RUNTIME,
            healthcheck=healthcheck(
                ["CMD", "wget", "-qO", "/dev/null", f"http://127.0.0.1:{ports.GRAFANA}/api/health"], start_period="60s"
            ),
            wait=True,
            wait_timeout=180,
            labels=labels(settings, "grafana"),
            opts=place.resource_options(self, depends_on=[self.prometheus]),
        )

        self.prometheus_url = place.operator_url(ports.PROMETHEUS)
        self.grafana_url = (
            pulumi.Output.from_input(args.grafana_public_url) if behind_gateway else place.operator_url(ports.GRAFANA)
        )
        self.alertmanager_url = place.operator_url(ports.ALERTMANAGER)
        self.register_outputs(
            {"prometheusUrl": self.prometheus_url, "grafanaUrl": self.grafana_url, "alertmanagerUrl": self.alertmanager_url}
        )
