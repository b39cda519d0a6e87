"""`fleet validate` runs the program's planners on the stack file: what they would refuse half way through a
run (an alert receiver without its secret, a plan a renderer cannot make) is a config error naming the stack
file and the key, before anything runs; `fleet preview` refuses the same stacks the same way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fleet.cli import app
from fleet.config import FLEET_KEY
from fleet.plans import checks
from fleet.plans import gateway as gateway_plans
from fleet.render.nginx import GatewayPlanError
from fleet.stack_file import StackConfigError, load_stack

ROOT = Path(__file__).resolve().parents[2]
SECRETS = "ollama-fleet:alertReceiverSecrets"
RECEIVERS = [
    {"name": "chat-ops", "kind": "slack"},
    {"name": "oncall", "kind": "pagerduty"},
    {"name": "hooks", "kind": "webhook"},
    {"name": "audit", "kind": "webhook", "url": "http://audit.internal:8080/alerts"},
    {"name": "mail", "kind": "email", "to": "ops@example.com", "fromAddress": "fleet@example.com", "smarthost": "smtp.example.com:587"},
]


def write_stack(folder: Path, stack: str = "staging", secret: bool = False, esc=None, **monitoring) -> None:
    """A copy of the staging stack with alert receivers (and the secret config's key, encrypted, when `secret`;
    the Pulumi ESC environments it imports, when `esc`)."""
    config = load_stack("staging").raw_config
    fleet = dict(config[FLEET_KEY])
    alerting = {"receivers": RECEIVERS, "critical": [r["name"] for r in RECEIVERS]}
    fleet["monitoring"] = {**fleet["monitoring"], "alerting": alerting, **monitoring}
    config = {**config, FLEET_KEY: fleet}
    if secret:
        config[SECRETS] = {"secure": "AAABAJaR0Q=="}
    shutil.copy(ROOT / "Pulumi.yaml", folder / "Pulumi.yaml")
    document = {"config": config} if esc is None else {"environment": esc, "config": config}
    (folder / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_the_stacks_of_the_repository_plan_without_problems(stack):
    assert checks.plan_problems(load_stack(stack)) == []


def test_receivers_that_need_a_secret_the_stack_does_not_set_are_named_one_by_one(tmp_path):
    write_stack(tmp_path)
    with pytest.raises(StackConfigError) as raised:
        checks.check_plans(load_stack("staging", tmp_path))
    error = raised.value
    assert error.stack_file == "Pulumi.staging.yaml"
    keys = [p.split(": ", 1)[0] for p in error.problems]
    # slack, pagerduty and a webhook without its url; not the webhook with a url, nor the e-mail receiver
    assert keys == [f"{FLEET_KEY}.monitoring.alerting.receivers[{i}]" for i in (0, 1, 2)]
    assert "needs its incoming-webhook URL in the secret config ollama-fleet:alertReceiverSecrets" in error.problems[0]
    assert "pulumi config set --secret alertReceiverSecrets '{\"chat-ops\": \"...\"}'" in error.problems[0]
    assert "routing key" in error.problems[1] and "or give the receiver its `url`" in error.problems[2]


def test_a_stack_that_sets_the_secret_or_runs_no_monitoring_has_no_such_problem(tmp_path):
    write_stack(tmp_path, secret=True)
    assert checks.plan_problems(load_stack("staging", tmp_path)) == []
    write_stack(tmp_path, enabled=False)
    assert checks.plan_problems(load_stack("staging", tmp_path)) == []


def test_a_secret_an_imported_esc_environment_may_hold_is_not_asked_of_the_file(tmp_path):
    # The stack files keep their secrets in Pulumi ESC (`environment:`), which only the Pulumi CLI reads.
    write_stack(tmp_path, esc=["ollama-fleet/staging"])
    stack = load_stack("staging", tmp_path)
    assert stack.esc_environments == ("ollama-fleet/staging",)
    assert checks.plan_problems(stack) == []
    # TLS mode `provided`: the certificate and key may be there too
    config = yaml.safe_load((tmp_path / "Pulumi.staging.yaml").read_text())
    config["config"][FLEET_KEY]["gateway"]["tls"] = {"mode": "provided"}
    (tmp_path / "Pulumi.staging.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert load_stack("staging", tmp_path).settings.gateway.tls.mode == "provided"
    del config["environment"]
    (tmp_path / "Pulumi.staging.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(StackConfigError, match="`provided` needs the secret config"):
        load_stack("staging", tmp_path)


@pytest.mark.parametrize("esc", [{"imports": "x"}, 7, [""], ["a", 3]])
def test_an_environment_list_that_is_not_names_is_refused(tmp_path, esc):
    write_stack(tmp_path, esc=esc)
    with pytest.raises(StackConfigError, match="environment: must be a list of Pulumi ESC environment names"):
        load_stack("staging", tmp_path)


def test_a_planner_refusal_names_the_key_it_gives_or_else_the_section_it_plans(monkeypatch):
    stack = load_stack("prod")

    def refuse(message):
        def planner(*args, **kwargs):
            raise GatewayPlanError(message)

        return planner

    monkeypatch.setattr(gateway_plans, "gateway_plan", refuse("gateway.domain: 'x_y' is not a DNS name"))
    assert checks.plan_problems(stack) == [f"{FLEET_KEY}.gateway.domain: 'x_y' is not a DNS name"]
    monkeypatch.setattr(gateway_plans, "gateway_plan", refuse("upstreams['chat']: addresses repeat"))
    assert checks.plan_problems(stack) == [
        f"{FLEET_KEY}.gateway: the gateway cannot be planned from these settings: upstreams['chat']: addresses repeat"
    ]


def test_fleet_validate_reports_the_plan_problems_as_config_errors(tmp_path, monkeypatch):
    write_stack(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "--stack", "staging"])
    assert result.exit_code == 2, result.output
    assert "Pulumi.staging.yaml: invalid stack configuration" in result.output
    assert f"{FLEET_KEY}.monitoring.alerting.receivers[0]: receiver 'chat-ops' (kind slack)" in result.output
    write_stack(tmp_path, secret=True)
    result = CliRunner().invoke(app, ["validate", "--stack", "staging"])
    assert result.exit_code == 0 and "Pulumi.staging.yaml: valid" in result.output, result.output


def test_fleet_preview_refuses_the_same_stack_and_previews_it_once_the_secret_is_set(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}

    def preview():
        command = [sys.executable, "-m", "fleet.cli", "preview", "--stack", "staging", "--no-tree"]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    write_stack(tmp_path)
    refused = preview()
    assert refused.returncode == 2 and "receivers[0]: receiver 'chat-ops'" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    # The preview stands in for the encrypted secret with a stand-in per receiver, so the program renders
    # Alertmanager's config (it holds the secrets: the file is a secret as a whole).
    write_stack(tmp_path, secret=True)
    previewed = preview()
    assert previewed.returncode == 0, previewed.stdout + previewed.stderr
    assert "policy verdict: pass" in previewed.stdout
    # The same with the secret in an imported ESC environment: the preview stands in for it likewise.
    write_stack(tmp_path, esc=["ollama-fleet/staging"])
    previewed = preview()
    assert previewed.returncode == 0, previewed.stdout + previewed.stderr
    assert "policy verdict: pass" in previewed.stdout


@pytest.mark.parametrize("planner", ["dns_plan", "certificate_plan"])
def test_the_gateway_name_and_certificate_planners_run_on_the_stack_file(monkeypatch, planner):
    seen = []

    def refuse(settings, stack):
        seen.append(stack)
        raise StackConfigError(f"Pulumi.{stack}.yaml", ["gateway.tls.mode: refused by the planner"])

    monkeypatch.setattr(checks, planner, refuse)
    assert checks.plan_problems(load_stack("prod")) == ["gateway.tls.mode: refused by the planner"]
    assert seen == ["prod"]



def test_every_nodes_plan_runs_on_the_stack_file_and_its_refusal_names_the_group(monkeypatch):
    from fleet.plans import node as node_plans

    stack = load_stack("prod")
    real = node_plans.warm_script
    planned = []

    def warm(container, group):
        planned.append(container)
        return real(container, group)

    monkeypatch.setattr(node_plans, "warm_script", warm)
    assert checks.plan_problems(stack) == []
    expected = [f"ollama-{g.name}-{i}-ollama" for g in stack.settings.node_groups for i in range(g.count)]
    assert planned == expected and len(expected) > 1

    group_index = len(stack.settings.node_groups) - 1
    last = stack.settings.node_groups[group_index]
    refused_message = "the warm-up cannot be written"

    def refuse(container, group):
        if container == f"ollama-{last.name}-{last.count - 1}-ollama":
            raise ValueError(refused_message)
        return real(container, group)

    monkeypatch.setattr(node_plans, "warm_script", refuse)
    assert checks.plan_problems(stack) == [
        f"{FLEET_KEY}.nodeGroups[{group_index}]: node {last.count - 1} of group {last.name!r} cannot be planned: "
        f"{refused_message}"
    ]
    # A refusal that names its key keeps it; `fleet validate` reports it as a config error of the stack file.
    refused_message = f"nodeGroups[{group_index}].ollama.keepAlive: refused by the planner"
    with pytest.raises(StackConfigError) as raised:
        checks.check_plans(stack)
    assert raised.value.stack_file == "Pulumi.prod.yaml"
    assert raised.value.problems == [f"{FLEET_KEY}.{refused_message}"]
