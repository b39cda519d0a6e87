"""The Fleet component under Pulumi mocks: the monitoring is planned before anything is registered, and the
gateways reach Prometheus and Grafana where that plan puts them."""

from __future__ import annotations

from dataclasses import replace

import pulumi
import pytest
from aws_mocks import deploy, stack_settings
from docker_mocks import PRIVATE_ADDRESS, make_host

from components.fleet import Fleet, FleetArgs, _Site
from fleet.plans.monitoring import monitoring_plan
from fleet.stack_file import StackConfigError

SLACK = {"monitoring.alerting.receivers": [{"name": "team-slack", "kind": "slack"}], "monitoring.alerting.critical": ["team-slack"]}
SECRETS = '{"team-slack": "https://hooks.slack.com/services/T0/B0/x"}'


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_a_receiver_without_its_secret_stops_the_fleet_before_any_resource_is_registered(stack):
    settings = stack_settings(stack, SLACK)
    refused: list[StackConfigError] = []

    def build():
        try:
            Fleet("ollama", FleetArgs(settings=settings, stack=stack))
        except StackConfigError as error:
            refused.append(error)

    deployment = deploy(build, stack=stack)
    (error,) = refused
    assert error.stack_file == f"Pulumi.{stack}.yaml"
    assert [p.split(": ", 1)[0] for p in error.problems] == ["ollama-fleet:fleet.monitoring.alerting.receivers[0]"]
    assert deployment.resources == []


def test_with_the_secret_set_the_same_fleet_registers_its_monitoring():
    settings = stack_settings("dev", SLACK)

    def build():
        Fleet("ollama", FleetArgs(settings=settings, stack="dev", alert_receiver_secrets_json=pulumi.Output.secret(SECRETS)))

    deployment = deploy(build, stack="dev")
    assert deployment.one("ollama-fleet:index:Monitoring").name == "ollama-monitoring"


def test_the_gateways_reach_prometheus_and_grafana_where_the_monitoring_plan_puts_them():
    planned = monitoring_plan(stack_settings("prod"), "prod", receiver_secrets_set=True, component="fleet-x-monitoring")
    # Moved by hand: the addresses follow the plan, not names or ports worked out again.
    plan = replace(
        planned,
        prometheus=replace(planned.prometheus, name="prometheus-elsewhere", port=19090),
        grafana=replace(planned.grafana, name="grafana-elsewhere", port=13000),
    )

    def build():
        shared = _Site(gateway_hosts=[make_host("local")])
        private = _Site(gateway_hosts=[make_host("aws", transport="ssh")])
        return {
            "shared_prometheus": Fleet._prometheus_url(plan, shared),
            "shared_grafana": Fleet._grafana_upstream(plan, shared),
            "private_prometheus": Fleet._prometheus_url(plan, private),
            "private_grafana": Fleet._grafana_upstream(plan, private),
        }

    values = deploy(build, stack="prod").values
    assert values == {
        "shared_prometheus": "http://prometheus-elsewhere:19090",
        "shared_grafana": "grafana-elsewhere:13000",
        "private_prometheus": f"http://{PRIVATE_ADDRESS}:19090",
        "private_grafana": f"{PRIVATE_ADDRESS}:13000",
    }
