"""The monitoring's plan: Prometheus, Alertmanager and Grafana as data (container names, images, ports, labels,
commands, volumes, health checks, the files they are provisioned with and Grafana's environment), planned from
the stack's settings; components/monitoring.py wires the containers from it.

What exists only at deployment stays out: the addresses Prometheus scrapes (`prometheus_scrape` plans the
scrape config once they are known), the passwords and the receivers' secrets (`alertmanager_file` renders
Alertmanager's config with them). A stack whose receivers need a secret it does not set is refused here, before
anything is registered, and `fleet validate` sees the same refusal (fleet.plans.checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleet import contract, ports
from fleet.config import FleetSettings
from fleet.plans.alerting import receiver_secrets, unset_secret_problems
from fleet.plans.gateway import serves_grafana
from fleet.plans.naming import container_name, monitoring_component
from fleet.plans.placement import PlacementPlan
from fleet.plans.scrape import ScrapeTargets, scrape_plan
from fleet.render import alertmanager, grafana, prometheus, prometheus_web, rules
from fleet.stack_file import StackConfigError

PROMETHEUS_CONF = "/etc/prometheus/prometheus.yml"
PROMETHEUS_WEB_CONF = "/etc/prometheus/web.yml"
PROMETHEUS_PASSWORD_FILE = "/etc/prometheus/password"
PROMETHEUS_DATA = "/prometheus"
GRAFANA_DATASOURCE = "/etc/grafana/provisioning/datasources/ollama-fleet.yaml"
GRAFANA_PROVIDER = "/etc/grafana/provisioning/dashboards/ollama-fleet.yaml"
GRAFANA_DASHBOARD = f"{grafana.DASHBOARDS_PATH}/{grafana.DASHBOARD_FILE}"
ALERTMANAGER_CONF = alertmanager.CONFIG_PATH
ALERTMANAGER_DATA = "/alertmanager"

# Grafana's variables whose values exist only at deployment.
GRAFANA_ADMIN_PASSWORD = "GF_SECURITY_ADMIN_PASSWORD"
GRAFANA_ROOT_URL = "GF_SERVER_ROOT_URL"


@dataclass(frozen=True)
class File:
    """A file uploaded into a container, with its content."""

    path: str
    content: str


@dataclass(frozen=True)
class Health:
    """A container's health check: the command Docker runs, and how long a start may take."""

    test: tuple[str, ...]
    start_period: str


@dataclass(frozen=True)
class Volume:
    """A named Docker volume (its resource and Docker name) and where the container mounts it."""

    name: str
    path: str


@dataclass(frozen=True)
class ServicePlan:
    """One container of the monitoring."""

    role: str  # its `contract.ROLES` role
    name: str  # its Docker name, also its address on the component's network
    image: str  # pinned `repository:tag@sha256:` reference
    port: int
    labels: Mapping[str, str]  # the contract's labels
    health: Health
    wait_timeout: int  # seconds the update waits for the container to be healthy
    command: tuple[str, ...] = ()
    volume: Volume | None = None
    files: tuple[File, ...] = ()  # the files it is provisioned with that hold no secret

    @property
    def address(self) -> str:
        """`name:port`: where the component's other containers reach it."""
        return f"{self.name}:{self.port}"


@dataclass(frozen=True)
class Env:
    """An environment variable whose value is known only at deployment."""

    name: str
    secret: bool


@dataclass(frozen=True)
class MonitoringPlan:
    component: str  # the name of the `Monitoring` component; its containers and volumes are named after it
    placement: PlacementPlan
    prometheus: ServicePlan
    alertmanager: ServicePlan
    grafana: ServicePlan
    # Grafana's environment in order: plain `NAME=value` entries, and an `Env` where the deployment gives the value.
    grafana_environment: tuple[str | Env, ...]
    # Grafana is served by the gateways' TLS server under its sub-path (its public URL is then given), else it
    # keeps its operator port.
    grafana_behind_gateway: bool


def monitoring_problems(settings: FleetSettings, receiver_secrets_set: bool) -> list[str]:
    """What the stack lacks for its monitoring to deploy: without the secret config `alertReceiverSecrets`, one
    problem per receiver that cannot work without its secret."""
    return [] if receiver_secrets_set else unset_secret_problems(settings)


def grafana_environment(settings: FleetSettings, behind_gateway: bool) -> tuple[str | Env, ...]:
    """Grafana's settings: fixed admin user, secret password, no sign-up, no anonymous access, no phoning home;
    the datasource's Prometheus password comes from the environment (the provisioning file names the variable).
    Behind the gateway, Grafana serves from its sub-path, so its redirects and assets stay under it, and its
    session cookie travels over HTTPS only."""
    behind: tuple[str | Env, ...] = ()
    if behind_gateway:
        behind = (Env(GRAFANA_ROOT_URL, secret=False), "GF_SERVER_SERVE_FROM_SUB_PATH=true", "GF_SECURITY_COOKIE_SECURE=true")
    return (
        f"GF_SECURITY_ADMIN_USER={settings.monitoring.grafana_admin_user}",
        Env(GRAFANA_ADMIN_PASSWORD, secret=True),
        Env(grafana.PROMETHEUS_PASSWORD_ENV, secret=True),
        f"GF_SERVER_HTTP_PORT={ports.GRAFANA}",
        "GF_USERS_ALLOW_SIGN_UP=false",
        "GF_AUTH_ANONYMOUS_ENABLED=false",
        "GF_ANALYTICS_REPORTING_ENABLED=false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES=false",
        "GF_NEWS_NEWS_FEED_ENABLED=false",
        *behind,
    )


def _wget(port: int, path: str) -> tuple[str, ...]:
    return ("CMD", "wget", "-qO", "/dev/null", f"http://127.0.0.1:{port}{path}")


def monitoring_plan(
    settings: FleetSettings, stack: str, *, receiver_secrets_set: bool, component: str = monitoring_component()
) -> MonitoringPlan:
    """The plan of the stack's monitoring, named after `component`. Raises StackConfigError (naming the stack
    file) when a receiver needs a secret and `receiver_secrets_set` says the stack sets none."""
    problems = monitoring_problems(settings, receiver_secrets_set)
    if problems:
        raise StackConfigError(f"Pulumi.{stack}.yaml", problems)
    prometheus_name = container_name(component, "prometheus")
    prometheus_service = ServicePlan(
        role="prometheus",
        name=prometheus_name,
        image=settings.images.prometheus,
        port=ports.PROMETHEUS,
        labels=contract.container_labels(settings, "prometheus", {contract.LABELS.retention: settings.monitoring.retention}),
        # Every endpoint asks for the password, which must not sit in the container's visible config: healthy is
        # "answers HTTP and asks for credentials" (busybox wget reports the 401).
        health=Health(
            ("CMD-SHELL", f"wget -qO /dev/null http://127.0.0.1:{ports.PROMETHEUS}/-/healthy 2>&1 | grep -q 401"), "30s"
        ),
        wait_timeout=120,
        volume=Volume(f"{component}-tsdb", PROMETHEUS_DATA),
        files=(File(prometheus.DEFAULT_RULES_FILE, rules.render_rules(settings)),),
    )
    alertmanager_service = ServicePlan(
        role="alertmanager",
        name=container_name(component, "alertmanager"),
        image=settings.images.alertmanager,
        port=ports.ALERTMANAGER,
        labels=contract.container_labels(settings, "alertmanager"),
        health=Health(_wget(ports.ALERTMANAGER, "/-/healthy"), "30s"),
        wait_timeout=120,
        command=tuple(
            alertmanager.alertmanager_args(
                config_file=ALERTMANAGER_CONF,
                storage_path=ALERTMANAGER_DATA,
                listen_address=f"0.0.0.0:{ports.ALERTMANAGER}",
            )
        ),
        volume=Volume(f"{component}-alertmanager-data", ALERTMANAGER_DATA),
    )
    behind_gateway = serves_grafana(settings)
    grafana_service = ServicePlan(
        role="grafana",
        name=container_name(component, "grafana"),
        image=settings.images.grafana,
        port=ports.GRAFANA,
        labels=contract.container_labels(settings, "grafana"),
        # Grafana answers /api/health beside its sub-path.
        health=Health(_wget(ports.GRAFANA, "/api/health"), "60s"),
        wait_timeout=180,
        files=(
            File(
                GRAFANA_DATASOURCE,
                grafana.render_datasource(
                    f"http://{prometheus_service.address}",
                    settings.monitoring.scrape_interval,
                    basic_auth_user=prometheus_web.PROMETHEUS_USER,
                ),
            ),
            File(GRAFANA_PROVIDER, grafana.render_dashboard_provider()),
            File(GRAFANA_DASHBOARD, grafana.render_dashboard(settings)),
        ),
    )
    return MonitoringPlan(
        component=component,
        placement=PlacementPlan.of(settings),
        prometheus=prometheus_service,
        alertmanager=alertmanager_service,
        grafana=grafana_service,
        grafana_environment=grafana_environment(settings, behind_gateway),
        grafana_behind_gateway=behind_gateway,
    )


def prometheus_scrape(
    settings: FleetSettings, stack: str, plan: MonitoringPlan, targets: ScrapeTargets[str]
) -> prometheus.PrometheusPlan:
    """The scrape plan of the planned Prometheus once the targets' addresses are known: alerts go to the
    planned Alertmanager (by name, on the component's network), and the self-scrape sends the password file."""
    return scrape_plan(settings, targets, stack, [plan.alertmanager.address], PROMETHEUS_PASSWORD_FILE)


def prometheus_command(scrape: prometheus.PrometheusPlan) -> list[str]:
    """Prometheus' flags: the planned files, storage and listen address, retention from the scrape plan, and
    basic auth from the web config."""
    return prometheus.prometheus_args(
        scrape,
        config_file=PROMETHEUS_CONF,
        storage_path=PROMETHEUS_DATA,
        listen_address=f"0.0.0.0:{ports.PROMETHEUS}",
        web_config_file=PROMETHEUS_WEB_CONF,
    )


def alertmanager_file(settings: FleetSettings, secrets_json: str | None) -> str:
    """Alertmanager's config with the receivers' secrets (the secret config's JSON): ship it as a secret."""
    return alertmanager.render_alertmanager(settings, receiver_secrets(secrets_json))


def prometheus_web_config(password: str, salt: str) -> str:
    """Prometheus' web config: basic auth with the bcrypt hash of `password` (salt: 32 hex digits, kept in the
    state so the hash, and the container, stay the same from one update to the next)."""
    return prometheus_web.render_web_config(prometheus_web.hash_password(password, salt))

