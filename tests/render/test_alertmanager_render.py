"""Alertmanager's config from `monitoring.alerting`, checked and routed by the real amtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from render_tools import require_tool

from fleet.local.dataplane import load_settings
from fleet.render import alertmanager, prometheus, rules
from fleet.stack_file import StackConfigError

pytestmark = pytest.mark.tools

AMTOOL = shutil.which("amtool")

RECEIVERS = [
    {"name": "oncall", "kind": "pagerduty"},
    {"name": "chat-ops", "kind": "slack", "channel": "#llm-alerts"},
    {"name": "audit", "kind": "webhook", "url": "http://127.0.0.1:9999/alerts"},
    {"name": "hooks", "kind": "webhook"},
    {
        "name": "mail",
        "kind": "email",
        "to": "llm-team@example.com",
        "fromAddress": "alerts@example.com",
        "smarthost": "smtp.example.com:587",
        "authUsername": "alerts",
    },
]
SECRETS = {
    "oncall": "0123456789abcdef0123456789abcdef",
    "chat-ops": "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
    "hooks": "https://hooks.example.com/alert?token=s3cr3t",
    "mail": "smtp-password",
}


def alerting_settings(stack: str = "prod", **alerting):
    overrides = {
        "monitoring.alerting.receivers": RECEIVERS,
        "monitoring.alerting.critical": ["oncall", "chat-ops", "audit"],
        "monitoring.alerting.warning": ["chat-ops", "mail", "hooks"],
    }
    overrides.update({f"monitoring.alerting.{k}": v for k, v in alerting.items()})
    return load_settings(stack, overrides)


def amtool(*args: str) -> subprocess.CompletedProcess:
    binary = require_tool(AMTOOL, "amtool (Debian package prometheus-alertmanager)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager.render_alertmanager(alerting_settings(), SECRETS))
    return path


def test_amtool_accepts_every_stack_and_the_full_receiver_set(stack, settings, config_file, tmp_path):
    plain = tmp_path / "plain.yml"
    plain.write_text(alertmanager.render_alertmanager(settings))  # the stack as it is: nothing routed yet
    for path in (plain, config_file):
        result = amtool("check-config", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
    assert "6 receivers" in amtool("check-config", str(config_file)).stdout


def test_amtool_refuses_a_broken_config(config_file):
    """The check is real: a route to a receiver that does not exist fails it."""
    document = yaml.safe_load(config_file.read_text())
    document["route"]["routes"][0]["receiver"] = "nobody"
    config_file.write_text(yaml.safe_dump(document))
    assert amtool("check-config", str(config_file)).returncode != 0


@pytest.mark.parametrize(
    "labels, expected",
    [
        (["alertname=OllamaNodeDown", "severity=critical", "group=chat"], "oncall,chat-ops,audit"),
        (["alertname=OllamaTimeToFirstTokenHigh", "severity=warning", "group=chat"], "chat-ops,mail,hooks"),
        (["alertname=Something", "severity=info"], alertmanager.UNROUTED),
    ],
)
def test_routes_per_severity(config_file, labels, expected):
    result = amtool("config", "routes", "test", f"--config.file={config_file}", *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_every_rule_has_a_routed_severity():
    """An alert whose severity no route matches would reach nobody."""
    settings = alerting_settings()
    assert {a.severity for a in rules.alerts(settings)} <= set(alertmanager.SEVERITIES)


def test_node_down_inhibits_its_groups_symptoms_only():
    document = alertmanager.alertmanager_config(alerting_settings(), SECRETS)
    [rule] = document["inhibit_rules"]
    assert rule["source_matchers"] == ['alertname="OllamaNodeDown"'] and rule["equal"] == ["group"]
    names = {a.name: a for a in rules.alerts(alerting_settings())}
    for symptom in alertmanager.NODE_DOWN_SYMPTOMS:
        # each inhibited alert keeps the `group` label through its aggregation, or `equal` could never match
        assert "group" in names[symptom].expr.split("by (", 1)[1].split(")", 1)[0], symptom
    assert "OllamaNodeDown" not in alertmanager.NODE_DOWN_SYMPTOMS
    assert document["route"]["group_by"] == ["alertname", "group"]


def test_secrets_go_where_each_kind_takes_them():
    document = alertmanager.alertmanager_config(alerting_settings(), SECRETS)
    receivers = {r["name"]: r for r in document["receivers"]}
    assert receivers["oncall"]["pagerduty_configs"][0]["routing_key"] == SECRETS["oncall"]
    assert receivers["chat-ops"]["slack_configs"][0]["api_url"] == SECRETS["chat-ops"]
    assert receivers["chat-ops"]["slack_configs"][0]["channel"] == "#llm-alerts"
    assert receivers["audit"]["webhook_configs"][0]["url"] == "http://127.0.0.1:9999/alerts"
    assert receivers["hooks"]["webhook_configs"][0]["url"] == SECRETS["hooks"]
    mail = receivers["mail"]["email_configs"][0]
    assert (mail["to"], mail["from"], mail["auth_password"]) == ("llm-team@example.com", "alerts@example.com", "smtp-password")
    assert all(c["send_resolved"] for r in document["receivers"] for k, v in r.items() if k.endswith("_configs") for c in v)


def test_missing_and_stray_secrets_are_named():
    settings = alerting_settings()
    with pytest.raises(alertmanager.AlertingConfigError, match=r"no secret for receiver\(s\) oncall, chat-ops, hooks"):
        alertmanager.render_alertmanager(settings, {})
    with pytest.raises(alertmanager.AlertingConfigError, match="does not define: ghost"):
        alertmanager.render_alertmanager(settings, {**SECRETS, "ghost": "x"})


@pytest.mark.parametrize(
    "alerting, message",
    [
        ({"critical": ["pager"]}, "critical names receivers that `receivers` does not define: pager"),
        ({"receivers": [{"name": "m", "kind": "email", "to": "a@example.com"}]}, "kind `email` needs fromAddress, smarthost"),
        ({"receivers": [{"name": "s", "kind": "slack", "url": "https://x.example"}]}, "url does not apply to kind `slack`"),
        ({"receivers": [{"name": "w", "kind": "webhook", "url": "ftp://x"}]}, "must be an `http://` or `https://` URL"),
        ({"groupWait": "soon"}, "must be a Prometheus duration"),
    ],
)
def test_bad_alerting_config_names_the_key(alerting, message):
    overrides = {f"monitoring.alerting.{k}": v for k, v in alerting.items()}
    with pytest.raises(StackConfigError) as info:
        load_settings("prod", overrides)
    text = str(info.value)
    assert "Pulumi.prod.yaml" in text and "monitoring.alerting" in text and message in text


def test_prometheus_sends_alerts_to_alertmanager():
    settings = load_settings("prod")
    nodes = prometheus.placeholder_node_targets(settings)
    plan = prometheus.build_prometheus_plan(settings, nodes=nodes, alertmanagers=["alertmanager:9093"])
    document = yaml.safe_load(prometheus.render_prometheus(plan))
    assert document["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]}
    assert "alerting" not in yaml.safe_load(prometheus.render_prometheus(prometheus.build_prometheus_plan(settings, nodes=nodes)))
    with pytest.raises(prometheus.PrometheusPlanError, match="alertmanager"):
        prometheus.build_prometheus_plan(settings, nodes=nodes, alertmanagers=["alertmanager"])


def test_a_reviewable_render_holds_placeholders_that_amtool_accepts(tmp_path):
    settings = alerting_settings()
    text = alertmanager.render_alertmanager(settings, alertmanager.placeholder_secrets(settings))
    for secret in SECRETS.values():
        assert secret not in text
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    result = amtool("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
