"""Monitoring under Pulumi mocks: Prometheus with the rendered scrape config and rules, its TSDB volume and
retention; Grafana with provisioned datasource and dashboard and a secret admin password; ports kept off
public addresses."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace

import pulumi
import pytest
import yaml

from components.monitoring import Monitoring, MonitoringArgs, resolve_targets
from docker_mocks import PRIVATE_ADDRESS, VOLUME, WireMonitor, is_wire_secret, make_host, settings_of, unwrap, use_mocks
from docker_mocks import plain_values
from fleet import contract, ports
from fleet.config import FleetSettings
from fleet.local.dataplane import load_settings
from fleet.plans.alerting import receiver_secrets
from fleet.plans.monitoring import ALERTMANAGER_CONF, alertmanager_file, monitoring_plan, prometheus_scrape
from fleet.plans.scrape import GatewayScrape, ScrapeTargets, scrape_targets
from fleet.render import alertmanager, grafana, prometheus, rules

PASSWORD = "grafana-Admin-Password-0123456789"
PROMETHEUS_PASSWORD = "prometheus-Password-0123456789"
PROMETHEUS_SALT = "00112233445566778899aabbccddeeff"


@dataclass
class Built:
    monitor: WireMonitor
    settings: FleetSettings
    outputs: dict = field(default_factory=dict)

    def uploads(self, role: str) -> dict[str, dict]:
        container = self.monitor.container(role)
        return {unwrap(u["file"]): u for u in self.monitor.wire_inputs(container)["uploads"]}

    def scrape_config(self) -> dict:
        return yaml.safe_load(self.uploads("prometheus")["/etc/prometheus/prometheus.yml"]["content"])


def _as_outputs(targets: ScrapeTargets[str]) -> ScrapeTargets[pulumi.Output[str]]:
    """The targets as the program hands them over: every address an Output (a gateway's node exporter may be None)."""

    def output(value):
        return None if value is None else pulumi.Output.from_input(value)

    return ScrapeTargets(
        nodes=tuple(replace(n, address=output(n.address)) for n in targets.nodes),
        gateways=tuple(
            replace(g, nginx_exporter=output(g.nginx_exporter), log_exporter=output(g.log_exporter), node_exporter=output(g.node_exporter))
            for g in targets.gateways
        ),
    )


def build_monitoring(
    stack: str,
    targets: ScrapeTargets[str],
    settings: FleetSettings | None = None,
    receiver_secrets: str | None = None,
    grafana_public_url: str | None = None,
    name: str = "ollama-monitoring",
    monitor: WireMonitor | None = None,
    **host: object,
) -> Built:
    """The component as the Fleet builds it: planned in the core, the targets' addresses and the secrets as
    Outputs (under `monitor`, else a fresh mock cloud)."""
    monitor = monitor or use_mocks(stack)
    settings = settings or settings_of(stack)
    built = Built(monitor, settings)

    @pulumi.runtime.test
    def program():
        plan = monitoring_plan(settings, stack, receiver_secrets_set=receiver_secrets is not None)
        secrets_json = pulumi.Output.secret(receiver_secrets) if receiver_secrets else pulumi.Output.from_input("")
        monitoring = Monitoring(
            name,
            MonitoringArgs(
                plan=plan,
                host=make_host(**host),
                scrape=resolve_targets(_as_outputs(targets)).apply(lambda t: prometheus_scrape(settings, stack, plan, t)),
                alertmanager_config=secrets_json.apply(lambda text: alertmanager_file(settings, text)),
                grafana_password=pulumi.Output.secret(PASSWORD),
                prometheus_password=pulumi.Output.secret(PROMETHEUS_PASSWORD),
                prometheus_salt=pulumi.Output.from_input(PROMETHEUS_SALT),
                grafana_public_url=grafana_public_url,
            ),
        )

        async def collect():
            grafana_container = monitoring.grafana
            built.outputs["envs_secret"] = await grafana_container.envs.is_secret()
            built.outputs["prometheus_url"] = await monitoring.prometheus_url.future()
            built.outputs["grafana_url"] = await monitoring.grafana_url.future()

        return pulumi.Output.from_input(asyncio.ensure_future(collect()))

    program()
    return built


def tls_off(stack: str, overrides: dict | None = None) -> FleetSettings:
    """The stack with TLS off: the gateway does not serve Grafana, which keeps its operator port."""
    return load_settings(stack, {"gateway.tls.mode": "off", **(overrides or {})})


# What each job must scrape (`address:port`), and the targets the program would hand over for it.
DEV_TARGETS = {
    prometheus.JOB_METER: [f"ollama-cpu-0-meter:{ports.METER_METRICS}"],
    prometheus.JOB_NODE: [f"ollama-cpu-0-meter:{ports.NODE_EXPORTER}"],
    prometheus.JOB_NGINX: [f"ollama-gateway-0-nginx-exporter:{ports.NGINX_EXPORTER}"],
    prometheus.JOB_GATEWAY_LOG: [f"ollama-gateway-0-gateway-log-exporter:{ports.GATEWAY_LOG_EXPORTER}"],
}
PROD_TARGETS = {
    prometheus.JOB_METER: [f"10.70.1.10:{ports.METER_METRICS}", f"10.70.2.11:{ports.METER_METRICS}"],
    prometheus.JOB_NODE: [
        f"10.70.1.10:{ports.NODE_EXPORTER}",
        f"10.70.2.11:{ports.NODE_EXPORTER}",
        f"10.70.1.5:{ports.NODE_EXPORTER}",
        f"10.70.2.6:{ports.NODE_EXPORTER}",
    ],
    prometheus.JOB_DCGM: [f"10.70.1.10:{ports.DCGM_EXPORTER}", f"10.70.2.11:{ports.DCGM_EXPORTER}"],
    prometheus.JOB_NGINX: [f"10.70.1.5:{ports.NGINX_EXPORTER}", f"10.70.2.6:{ports.NGINX_EXPORTER}"],
    prometheus.JOB_GATEWAY_LOG: [f"10.70.1.5:{ports.GATEWAY_LOG_EXPORTER}", f"10.70.2.6:{ports.GATEWAY_LOG_EXPORTER}"],
}
DEV_SCRAPE = scrape_targets(
    settings_of("dev"),
    {"cpu-0": "ollama-cpu-0-meter"},
    [GatewayScrape("gateway-0", *DEV_TARGETS[prometheus.JOB_NGINX], *DEV_TARGETS[prometheus.JOB_GATEWAY_LOG])],
)
PROD_SCRAPE = scrape_targets(
    settings_of("prod"),
    {"chat-0": "10.70.1.10", "chat-1": "10.70.2.11"},
    [
        GatewayScrape(f"gateway-{i}", f"{address}:{ports.NGINX_EXPORTER}", f"{address}:{ports.GATEWAY_LOG_EXPORTER}", f"{address}:{ports.NODE_EXPORTER}")
        for i, address in enumerate(("10.70.1.5", "10.70.2.6"))
    ],
)


@pytest.fixture
def dev() -> Built:
    return build_monitoring("dev", DEV_SCRAPE, settings=tls_off("dev"), transport="local")


@pytest.fixture
def prod() -> Built:
    return build_monitoring("prod", PROD_SCRAPE, settings=tls_off("prod"), transport="ssh")


def _targets(config: dict, job: str) -> list[tuple[str, dict]]:
    scrape = next(c for c in config["scrape_configs"] if c["job_name"] == job)
    return [(t, g.get("labels", {})) for g in scrape["static_configs"] for t in g["targets"]]


def test_prometheus_scrapes_every_node_exporter_and_gateway(dev, prod):
    config = dev.scrape_config()
    assert _targets(config, prometheus.JOB_METER) == [
        (DEV_TARGETS[prometheus.JOB_METER][0], {"group": "cpu", "instance_type": "local-cpu"})
    ]
    assert _targets(config, prometheus.JOB_NODE) == [(DEV_TARGETS[prometheus.JOB_NODE][0], {"node": "cpu-0", "group": "cpu"})]
    assert [t for t, _ in _targets(config, prometheus.JOB_NGINX)] == DEV_TARGETS[prometheus.JOB_NGINX]
    assert _targets(config, prometheus.JOB_GATEWAY_LOG) == [(DEV_TARGETS[prometheus.JOB_GATEWAY_LOG][0], {})]
    assert prometheus.JOB_DCGM not in {c["job_name"] for c in config["scrape_configs"]}
    config = prod.scrape_config()
    # HA: both gateway hosts' log exporters, and their own node exporters beside the nodes'.
    assert [t for t, _ in _targets(config, prometheus.JOB_GATEWAY_LOG)] == PROD_TARGETS[prometheus.JOB_GATEWAY_LOG]
    assert [t for t, _ in _targets(config, prometheus.JOB_NGINX)] == PROD_TARGETS[prometheus.JOB_NGINX]
    assert _targets(config, prometheus.JOB_NODE) == [
        (PROD_TARGETS[prometheus.JOB_NODE][0], {"node": "chat-0", "group": "chat"}),
        (PROD_TARGETS[prometheus.JOB_NODE][1], {"node": "chat-1", "group": "chat"}),
        (PROD_TARGETS[prometheus.JOB_NODE][2], {"node": "gateway-0", "group": "gateway"}),
        (PROD_TARGETS[prometheus.JOB_NODE][3], {"node": "gateway-1", "group": "gateway"}),
    ]
    assert [t for t, _ in _targets(config, prometheus.JOB_METER)] == PROD_TARGETS[prometheus.JOB_METER]
    dcgm = _targets(config, prometheus.JOB_DCGM)
    assert dcgm == [
        (PROD_TARGETS[prometheus.JOB_DCGM][0], {"node": "chat-0", "group": "chat"}),
        (PROD_TARGETS[prometheus.JOB_DCGM][1], {"node": "chat-1", "group": "chat"}),
    ]
    assert config["global"]["external_labels"]["environment"] == "prod"


def test_prometheus_runs_the_rules_with_retention_from_the_config(dev):
    container = dev.monitor.container("prometheus")
    uploads = dev.uploads("prometheus")
    assert uploads[prometheus.DEFAULT_RULES_FILE]["content"] == rules.render_rules(dev.settings)
    assert dev.scrape_config()["rule_files"] == [prometheus.DEFAULT_RULES_FILE]
    command = container.inputs["command"]
    assert f"--storage.tsdb.retention.time={dev.settings.monitoring.retention}" in command
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert container.label_map[contract.LABELS.retention] == dev.settings.monitoring.retention


def test_prometheus_keeps_its_data_in_a_named_volume(dev):
    volume = dev.monitor.named("ollama-monitoring-tsdb")
    assert volume.type == VOLUME
    container = dev.monitor.container("prometheus")
    assert container.inputs["volumes"] == [{"volumeName": volume.inputs["name"], "containerPath": "/prometheus"}]
    assert "--storage.tsdb.path=/prometheus" in container.inputs["command"]


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(dev):
    uploads = dev.uploads("grafana")
    prometheus_name = dev.monitor.container("prometheus").inputs["name"]
    datasource = yaml.safe_load(uploads["/etc/grafana/provisioning/datasources/ollama-fleet.yaml"]["content"])
    assert datasource["datasources"][0]["url"] == f"http://{prometheus_name}:{ports.PROMETHEUS}"
    assert datasource["datasources"][0]["uid"] == grafana.DATASOURCE_UID
    provider = yaml.safe_load(uploads["/etc/grafana/provisioning/dashboards/ollama-fleet.yaml"]["content"])
    folder = provider["providers"][0]["options"]["path"]
    dashboard = f"{folder}/{grafana.DASHBOARD_FILE}"
    assert uploads[dashboard]["content"] == grafana.render_dashboard(dev.settings)
    assert dev.monitor.container("prometheus").urn in dev.monitor.container("grafana").depends_on


def test_grafana_password_stays_secret(dev):
    container = dev.monitor.container("grafana")
    envs = dev.monitor.wire_inputs(container)["envs"]
    secret = [e for e in envs if is_wire_secret(e)]
    assert [unwrap(e) for e in secret] == [
        f"GF_SECURITY_ADMIN_PASSWORD={PASSWORD}",
        f"{grafana.PROMETHEUS_PASSWORD_ENV}={PROMETHEUS_PASSWORD}",
    ]
    plain = [e for e in envs if not is_wire_secret(e)]
    assert f"GF_SECURITY_ADMIN_USER={dev.settings.monitoring.grafana_admin_user}" in plain
    assert "GF_USERS_ALLOW_SIGN_UP=false" in plain and "GF_AUTH_ANONYMOUS_ENABLED=false" in plain
    assert dev.outputs["envs_secret"] is True
    for resource in dev.monitor.registered:
        shown = str(list(plain_values(dev.monitor.wire_inputs(resource))))
        assert PASSWORD not in shown and PROMETHEUS_PASSWORD not in shown, resource.name


def test_prometheus_asks_for_a_password_that_its_clients_send(dev):
    import bcrypt

    container = dev.monitor.container("prometheus")
    assert "--web.config.file=/etc/prometheus/web.yml" in container.inputs["command"]
    uploads = dev.uploads("prometheus")
    web, password = uploads["/etc/prometheus/web.yml"], uploads["/etc/prometheus/password"]
    assert is_wire_secret(web["content"]) and is_wire_secret(password["content"])
    assert unwrap(password["content"]) == PROMETHEUS_PASSWORD
    users = yaml.safe_load(unwrap(web["content"]))["basic_auth_users"]
    assert bcrypt.checkpw(PROMETHEUS_PASSWORD.encode(), users["fleet"].encode())
    self_scrape = next(j for j in dev.scrape_config()["scrape_configs"] if j["job_name"] == prometheus.JOB_PROMETHEUS)
    assert self_scrape["basic_auth"] == {"username": "fleet", "password_file": "/etc/prometheus/password"}
    datasource = yaml.safe_load(
        dev.uploads("grafana")["/etc/grafana/provisioning/datasources/ollama-fleet.yaml"]["content"]
    )["datasources"][0]
    assert datasource["basicAuth"] is True and datasource["basicAuthUser"] == "fleet"
    assert datasource["secureJsonData"]["basicAuthPassword"] == f"$__env{{{grafana.PROMETHEUS_PASSWORD_ENV}}}"


def _published(built: Built) -> list[tuple[str, int]]:
    return sorted((p["ip"], p["internal"]) for c in built.monitor.containers() for p in c.inputs.get("ports") or [])


def test_uis_are_published_on_loopback_locally_and_on_the_private_address_on_aws(dev, prod):
    """Without the gateway in front of Grafana (TLS off, dev only), it keeps its operator port, like Prometheus."""
    for built, address in ((dev, "127.0.0.1"), (prod, PRIVATE_ADDRESS)):
        assert _published(built) == [(address, ports.GRAFANA), (address, ports.PROMETHEUS), (address, ports.ALERTMANAGER)]
        assert not [e for e in built.monitor.wire_inputs(built.monitor.container("grafana"))["envs"] if "ROOT_URL" in str(e)]
    assert dev.outputs["prometheus_url"] == f"http://127.0.0.1:{ports.PROMETHEUS}"
    assert prod.outputs["grafana_url"] == f"http://{PRIVATE_ADDRESS}:{ports.GRAFANA}"


GATEWAY_GRAFANA = "https://llm.example.com/grafana/"


def test_grafana_behind_the_gateway_serves_its_sub_path_with_secure_cookies_and_no_operator_port():
    local = build_monitoring("dev", DEV_SCRAPE, grafana_public_url="https://localhost:8443/grafana/", transport="local")
    aws = build_monitoring("prod", PROD_SCRAPE, grafana_public_url=GATEWAY_GRAFANA, transport="ssh")
    for built, url in ((local, "https://localhost:8443/grafana/"), (aws, GATEWAY_GRAFANA)):
        envs = [unwrap(e) for e in built.monitor.wire_inputs(built.monitor.container("grafana"))["envs"]]
        assert f"GF_SERVER_ROOT_URL={url}" in envs
        assert "GF_SERVER_SERVE_FROM_SUB_PATH=true" in envs and "GF_SECURITY_COOKIE_SECURE=true" in envs
        assert built.outputs["grafana_url"] == url
    # the local shared network: the gateway's nginx reaches Grafana by name, nothing is published
    assert _published(local) == [("127.0.0.1", ports.PROMETHEUS), ("127.0.0.1", ports.ALERTMANAGER)]
    # AWS: only the host's private address, for nginx (the security group opens it to no range)
    assert _published(aws) == [(PRIVATE_ADDRESS, ports.GRAFANA), (PRIVATE_ADDRESS, ports.PROMETHEUS), (PRIVATE_ADDRESS, ports.ALERTMANAGER)]
    # the health check asks Grafana directly, which answers /api/health beside its sub-path
    test = local.monitor.container("grafana").inputs["healthcheck"]["tests"]
    assert test[-1] == f"http://127.0.0.1:{ports.GRAFANA}/api/health"


def test_containers_wait_for_the_host_restart_and_check_health(dev):
    ready = dev.monitor.urn_of("host-ready")
    for role, url in (("prometheus", "/-/healthy"), ("grafana", "/api/health"), ("alertmanager", "/-/healthy")):
        container = dev.monitor.container(role)
        assert ready in container.depends_on
        assert container.inputs["restart"] == "unless-stopped"
        assert container.inputs["logDriver"] == "json-file" and "max-size" in container.inputs["logOpts"]
        test = container.inputs["healthcheck"]["tests"]
        if role == "prometheus":  # asks every client for the password: healthy is "answers with a 401"
            assert test[0] == "CMD-SHELL" and f"{url} 2>&1 | grep -q 401" in test[1]
        else:
            assert test[:2] == ["CMD", "wget"] and test[-1].endswith(url)
        image = next(r for r in dev.monitor.registered if r.outputs.get("imageId") == container.inputs["image"])
        assert image.inputs["name"] == getattr(dev.settings.images, role)


RECEIVER_SECRET = "https://hooks.slack.com/services/T000/B000/secret-Slack-Path"


def test_alertmanager_gets_prometheus_alerts_and_its_receivers_as_a_secret():
    settings = load_settings(
        "prod",
        {
            "monitoring.alerting.receivers": [
                {"name": "team-slack", "kind": "slack"},
                {"name": "audit", "kind": "webhook", "url": "http://audit.internal:8080/alerts"},
            ],
            "monitoring.alerting.critical": ["team-slack", "audit"],
            "monitoring.alerting.warning": ["team-slack"],
        },
    )
    secrets = {"team-slack": RECEIVER_SECRET}
    built = build_monitoring(
        "prod", PROD_SCRAPE, settings=settings, receiver_secrets=json.dumps(secrets), grafana_public_url=GATEWAY_GRAFANA, transport="ssh"
    )
    container = built.monitor.container("alertmanager")
    upload = built.uploads("alertmanager")[ALERTMANAGER_CONF]
    assert is_wire_secret(upload["content"])
    assert unwrap(upload["content"]) == alertmanager.render_alertmanager(settings, secrets)
    for resource in built.monitor.registered:
        assert RECEIVER_SECRET not in str(list(plain_values(built.monitor.wire_inputs(resource)))), resource.name
    # Prometheus sends its alerts to the Alertmanager container over the component's network.
    alerting = built.scrape_config()["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alerting == [f"{container.inputs['name']}:{ports.ALERTMANAGER}"]
    # Silences outlive the container: its storage is a named volume.
    volume = built.monitor.named("ollama-monitoring-alertmanager-data")
    assert container.inputs["volumes"] == [{"volumeName": volume.inputs["name"], "containerPath": "/alertmanager"}]
    command = container.inputs["command"]
    assert "--storage.path=/alertmanager" in command and "--cluster.listen-address=" in command
    image = next(r for r in built.monitor.registered if r.outputs.get("imageId") == container.inputs["image"])
    assert "@sha256:" in image.inputs["name"] and image.inputs["name"] == settings.images.alertmanager


def test_receiver_secrets_that_do_not_fit_are_refused():
    assert receiver_secrets(None) == {} and receiver_secrets('{"a": "b"}') == {"a": "b"}
    for bad in ("[1]", "not json", '{"a": 1}'):
        with pytest.raises(alertmanager.AlertingConfigError, match="ollama-fleet:alertReceiverSecrets must be a JSON object"):
            receiver_secrets(bad)


def test_a_receiver_without_its_secret_stops_the_program_before_anything_is_registered():
    from fleet.stack_file import StackConfigError

    settings = load_settings(
        "prod",
        {"monitoring.alerting.receivers": [{"name": "team-slack", "kind": "slack"}], "monitoring.alerting.critical": ["team-slack"]},
    )
    monitor = use_mocks("prod")
    with pytest.raises(StackConfigError, match=r"Pulumi.prod.yaml[\s\S]*monitoring.alerting.receivers\[0\]: receiver 'team-slack'"):
        build_monitoring("prod", PROD_SCRAPE, settings=settings, grafana_public_url=GATEWAY_GRAFANA, monitor=monitor, transport="ssh")
    assert monitor.registered == []


def test_the_component_refuses_a_plan_it_does_not_match():
    """The plan names the containers after the component, and says whether the gateway serves Grafana: a
    component under another name, or without Grafana's public URL where the plan wants one, is refused."""
    with pytest.raises(ValueError, match="its plan names the component 'ollama-monitoring'"):
        build_monitoring("dev", DEV_SCRAPE, settings=tls_off("dev"), name="other-monitoring", transport="local")
    with pytest.raises(ValueError, match="public URL is given exactly when the gateway serves it"):
        build_monitoring("prod", PROD_SCRAPE, transport="ssh")
    with pytest.raises(ValueError, match="public URL is given exactly when the gateway serves it"):
        build_monitoring("prod", PROD_SCRAPE, settings=tls_off("prod"), grafana_public_url=GATEWAY_GRAFANA, transport="ssh")
