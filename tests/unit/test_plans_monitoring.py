"""The monitoring's plan, without Pulumi: containers named after the component, their images, labels, volumes,
commands and files, Grafana's environment, where ports are published, and the refusals `fleet validate` shares
with the program."""

from __future__ import annotations

import pytest
import yaml
from aws_mocks import stack_settings

from fleet import contract, ports
from fleet.plans import monitoring as plans
from fleet.plans.naming import container_name
from fleet.plans.scrape import placeholder_targets
from fleet.render import alertmanager, grafana, prometheus, prometheus_web, rules
from fleet.stack_file import StackConfigError

SLACK = {"monitoring.alerting.receivers": [{"name": "team-slack", "kind": "slack"}], "monitoring.alerting.critical": ["team-slack"]}


def test_containers_and_volumes_are_named_after_the_component():
    settings = stack_settings("prod")
    plan = plans.monitoring_plan(settings, "prod", receiver_secrets_set=False, component="fleet-x-monitoring")
    assert plan.component == "fleet-x-monitoring"
    for service in (plan.prometheus, plan.alertmanager, plan.grafana):
        assert service.name == container_name("fleet-x-monitoring", service.role)
        assert service.image == getattr(settings.images, service.role) and "@sha256:" in service.image
    retention = {contract.LABELS.retention: settings.monitoring.retention}
    assert dict(plan.prometheus.labels) == contract.container_labels(settings, "prometheus", retention)
    assert dict(plan.alertmanager.labels) == contract.container_labels(settings, "alertmanager")
    assert dict(plan.grafana.labels) == contract.container_labels(settings, "grafana")
    assert (plan.prometheus.volume.name, plan.prometheus.volume.path) == ("fleet-x-monitoring-tsdb", "/prometheus")
    assert (plan.alertmanager.volume.name, plan.alertmanager.volume.path) == ("fleet-x-monitoring-alertmanager-data", "/alertmanager")
    assert plan.grafana.volume is None
    assert [s.port for s in (plan.prometheus, plan.alertmanager, plan.grafana)] == [ports.PROMETHEUS, ports.ALERTMANAGER, ports.GRAFANA]


def test_prometheus_sends_alerts_to_the_planned_alertmanager_and_grafana_reads_the_planned_prometheus():
    settings = stack_settings("prod")
    plan = plans.monitoring_plan(settings, "prod", receiver_secrets_set=True)
    scrape = plans.prometheus_scrape(settings, "prod", plan, placeholder_targets(settings, 2, gateway_node_exporters=True))
    assert scrape.alertmanagers == (f"{plan.alertmanager.name}:{ports.ALERTMANAGER}",)
    config = yaml.safe_load(prometheus.render_prometheus(scrape))
    self_scrape = next(j for j in config["scrape_configs"] if j["job_name"] == prometheus.JOB_PROMETHEUS)
    assert self_scrape["basic_auth"]["password_file"] == plans.PROMETHEUS_PASSWORD_FILE
    assert config["global"]["external_labels"]["stack"] == "prod"
    files = {f.path: f.content for f in plan.grafana.files}
    datasource = yaml.safe_load(files[plans.GRAFANA_DATASOURCE])["datasources"][0]
    assert datasource["url"] == f"http://{plan.prometheus.name}:{ports.PROMETHEUS}"
    assert datasource["basicAuthUser"] == prometheus_web.PROMETHEUS_USER
    assert datasource["jsonData"]["timeInterval"] == settings.monitoring.scrape_interval
    assert files[plans.GRAFANA_DASHBOARD] == grafana.render_dashboard(settings)
    assert plans.GRAFANA_DASHBOARD.startswith(yaml.safe_load(files[plans.GRAFANA_PROVIDER])["providers"][0]["options"]["path"])
    assert {f.path: f.content for f in plan.prometheus.files} == {prometheus.DEFAULT_RULES_FILE: rules.render_rules(settings)}


def test_commands_carry_the_planned_files_storage_and_retention():
    settings = stack_settings("staging", {"monitoring.retention": "21d"})
    plan = plans.monitoring_plan(settings, "staging", receiver_secrets_set=True)
    command = plans.prometheus_command(plans.prometheus_scrape(settings, "staging", plan, placeholder_targets(settings)))
    assert command == [
        f"--config.file={plans.PROMETHEUS_CONF}",
        "--storage.tsdb.path=/prometheus",
        "--storage.tsdb.retention.time=21d",
        f"--web.listen-address=0.0.0.0:{ports.PROMETHEUS}",
        f"--web.config.file={plans.PROMETHEUS_WEB_CONF}",
    ]
    assert plan.alertmanager.command[:2] == (f"--config.file={plans.ALERTMANAGER_CONF}", "--storage.path=/alertmanager")
    assert "--cluster.listen-address=" in plan.alertmanager.command
    assert plan.prometheus.command == () and plan.grafana.command == ()


def test_health_checks_ask_each_service_on_loopback():
    plan = plans.monitoring_plan(stack_settings("prod"), "prod", receiver_secrets_set=True)
    # Prometheus asks every client for its password: healthy is "answers with a 401".
    assert plan.prometheus.health.test[0] == "CMD-SHELL" and "/-/healthy 2>&1 | grep -q 401" in plan.prometheus.health.test[1]
    assert plan.alertmanager.health.test[-1] == f"http://127.0.0.1:{ports.ALERTMANAGER}/-/healthy"
    assert plan.grafana.health.test[-1] == f"http://127.0.0.1:{ports.GRAFANA}/api/health"
    assert (plan.grafana.health.start_period, plan.grafana.wait_timeout) == ("60s", 180)


def test_grafana_environment_leaves_the_secrets_and_the_public_url_to_the_deployment():
    settings = stack_settings("prod")  # TLS on: the gateway serves Grafana
    plan = plans.monitoring_plan(settings, "prod", receiver_secrets_set=True)
    assert plan.grafana_behind_gateway
    env = plan.grafana_environment
    slots = [e for e in env if isinstance(e, plans.Env)]
    assert slots == [
        plans.Env("GF_SECURITY_ADMIN_PASSWORD", secret=True),
        plans.Env(grafana.PROMETHEUS_PASSWORD_ENV, secret=True),
        plans.Env("GF_SERVER_ROOT_URL", secret=False),
    ]
    plain = [e for e in env if isinstance(e, str)]
    assert f"GF_SECURITY_ADMIN_USER={settings.monitoring.grafana_admin_user}" in plain
    assert {"GF_USERS_ALLOW_SIGN_UP=false", "GF_AUTH_ANONYMOUS_ENABLED=false", "GF_SERVER_SERVE_FROM_SUB_PATH=true",
            "GF_SECURITY_COOKIE_SECURE=true", f"GF_SERVER_HTTP_PORT={ports.GRAFANA}"} <= set(plain)
    assert not any("PASSWORD=" in e for e in plain)

    off = plans.monitoring_plan(stack_settings("prod", {"gateway.tls.mode": "off"}), "prod", receiver_secrets_set=True)
    assert not off.grafana_behind_gateway
    assert [e for e in off.grafana_environment if isinstance(e, plans.Env)] == slots[:2]
    assert not any("SUB_PATH" in e or "COOKIE_SECURE" in e for e in off.grafana_environment if isinstance(e, str))


def test_the_containers_are_placed_as_the_stack_places_them():
    dev = stack_settings("dev", {"local.bindAddress": "127.0.0.2"})
    plan = plans.monitoring_plan(dev, "dev", receiver_secrets_set=True)
    assert (plan.placement.target, plan.placement.bind_address) == ("local", "127.0.0.2")
    prod = plans.monitoring_plan(stack_settings("prod"), "prod", receiver_secrets_set=True)
    assert prod.placement.target == "aws"
    assert dict(prod.placement.network_labels) == {contract.LABELS.environment: "prod"}


def test_a_receiver_without_its_secret_is_refused_naming_the_stack_file_and_the_key():
    settings = stack_settings("prod", SLACK)
    with pytest.raises(StackConfigError) as raised:
        plans.monitoring_plan(settings, "prod", receiver_secrets_set=False)
    assert raised.value.stack_file == "Pulumi.prod.yaml"
    (problem,) = raised.value.problems
    assert problem.startswith("ollama-fleet:fleet.monitoring.alerting.receivers[0]: receiver 'team-slack' (kind slack)")
    assert plans.monitoring_problems(settings, receiver_secrets_set=True) == []
    plan = plans.monitoring_plan(settings, "prod", receiver_secrets_set=True)
    secret = "https://hooks.slack.com/services/T0/B0/x"
    assert plans.alertmanager_file(settings, f'{{"team-slack": "{secret}"}}') == alertmanager.render_alertmanager(
        settings, {"team-slack": secret}
    )
    assert plan.alertmanager.files == ()  # its config holds the secrets: never a plain file of the plan
    off = stack_settings("prod", {**SLACK, "monitoring.enabled": False})
    assert plans.monitoring_problems(off, receiver_secrets_set=False) == []
