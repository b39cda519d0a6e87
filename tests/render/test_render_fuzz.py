"""What validation accepts renders files the real tools accept — for generated values, not listed ones.

Hypothesis sets one string or number of a real stack (written out in full, every default explicit, with
alert receivers of every kind, so every knob is a key to change) to a value of its own kind around it and at
its edges (tests/stack_mutants.py, `leaf_mutants`). A mutant the stack-file loader refuses is done with
(tests/corpus/test_stack_fuzz.py checks how). An accepted one is rendered as the program renders it and
checked by the real tools: the gateway's nginx config by `nginx -t`, Prometheus' config and rules by
`promtool check config`/`check rules`, Alertmanager's by `amtool check-config`, the hosts' first-boot
script and the nodes' model steps by `bash -n` and `shellcheck`, the Grafana provisioning as YAML.
Derandomized and bounded, so CI runs the same examples every time.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import get_args, get_origin

import pytest
import yaml
from fuzzing import fuzz_settings
from hypothesis import given
from pydantic import BaseModel
from render_tools import AMTOOL, NGINX, PROMTOOL, nginx_test, require_tool, run_tool
from render_tools import check_script, write_gateway_config, write_prometheus_config
from stack_mutants import DOCUMENTS, ROOT, Mutant, leaf_mutants

from fleet import node_runtime
from fleet import config_text
from fleet.config import FLEET_KEY, FleetSettings
from fleet.render import alertmanager, cloud_init, grafana
from fleet.stack_file import StackConfigError, load_stack, load_stack_file

RECEIVERS = [
    {"name": "mail", "kind": "email", "to": "oncall@example.com", "fromAddress": "alerts@example.com",
     "smarthost": "smtp.example.com:587", "authUsername": "alerts"},
    {"name": "hook", "kind": "webhook", "url": "https://hooks.example.com/alerts"},
    {"name": "chat", "kind": "slack", "channel": "#llm-oncall"},
    {"name": "pager", "kind": "pagerduty"},
]


def _full(stack: str) -> dict:
    """The stack file with every setting written out (defaults included) and alert receivers of each kind."""
    document = copy.deepcopy(DOCUMENTS[stack])
    fleet = load_stack(stack).settings.model_dump(by_alias=True, mode="json", exclude_none=True)
    fleet["monitoring"]["alerting"].update(receivers=RECEIVERS, critical=["mail", "pager"], warning=["hook", "chat"])
    document["config"][FLEET_KEY] = fleet
    return document


FULL = {stack: _full(stack) for stack in DOCUMENTS}
RENDER_FUZZ = fuzz_settings(100)


def assert_thresholds_kept(stack_settings, rule_text: str, where: str) -> None:
    """Each alert compares against the configured threshold itself, not a rounded one (0.9999999 rounded to 1
    is a ratio alert that can never fire)."""
    t = stack_settings.monitoring.alerts
    wanted = {
        "OllamaErrorRatioHigh": t.error_ratio,
        "RequestRefusalRatioHigh": t.refusal_ratio,
        "OllamaTimeToFirstTokenHigh": t.ttft_p95_seconds,
        "GpuVramNearFull": t.vram_full_ratio,
        "OllamaQueueGrowing": t.queue_growth_per_minute,
    }
    for rule in yaml.safe_load(rule_text)["groups"][0]["rules"]:
        if rule["alert"] in wanted:
            found = [float(n) for n in re.findall(r"> ([-+0-9.eE]+)", rule["expr"])]
            assert found and all(n == wanted[rule["alert"]] for n in found), f"{where}: {rule['alert']}: {rule['expr']}"


def check_rendered(stack_settings, folder: Path, where: str) -> None:
    """Render what a stack deploys and put each file through its real tool."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = write_gateway_config(stack_settings, folder)
    result = nginx_test(conf, folder / "nginx")
    assert result.returncode == 0, f"{where}: nginx -t: {result.stderr}"

    if stack_settings.monitoring.enabled:
        prom, rule_file = write_prometheus_config(stack_settings, folder, "fuzz", alertmanagers=["127.0.0.1:9093"])
        promtool = require_tool(PROMTOOL, "promtool")
        run_tool([promtool, "check", "config", str(prom)], where)
        run_tool([promtool, "check", "rules", str(rule_file)], where)
        assert_thresholds_kept(stack_settings, rule_file.read_text(), where)
        manager = folder / "alertmanager.yml"
        manager.write_text(alertmanager.render_alertmanager(stack_settings, alertmanager.placeholder_secrets(stack_settings)))
        run_tool([require_tool(AMTOOL, "amtool"), "check-config", str(manager)], where)
        yaml.safe_load(grafana.render_datasource(scrape_interval=stack_settings.monitoring.scrape_interval))
        json.loads(grafana.render_dashboard(stack_settings))

    if stack_settings.aws is not None:
        setup = cloud_init.render_setup_script(
            host_name="chat-0", role="node", ssh_user=stack_settings.aws.ssh_user, gpus=1,
            model_volume=cloud_init.ModelVolume("vol-0123456789abcdef0"), models_path="/opt/ollama-fleet/models",
            config_path="/etc/ollama-fleet",
        )
        check_script(setup, f"{where}: cloud-init setup", folder)
    for group in stack_settings.node_groups:
        for script in (node_runtime.pull_script("ollama-0", group), node_runtime.warm_script("ollama-0", group)):
            if script is not None:
                check_script(script, f"{where}: model steps of {group.name}", folder)


@pytest.mark.tools
@pytest.mark.parametrize("stack", sorted(FULL))
def test_the_full_stacks_render_and_pass_the_tools(stack, tmp_path):
    """The written-out stacks themselves are valid and pass every tool (so a mutant is judged against working
    checks, and its base is no refusal)."""
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump(FULL[stack], sort_keys=False))
    require_tool(NGINX, "nginx")
    check_rendered(load_stack_file(path, stack).settings, tmp_path / "out", f"full {stack}")


@pytest.mark.tools
@RENDER_FUZZ
@given(mutant=leaf_mutants(FULL))
def test_an_accepted_value_renders_files_the_tools_accept(tmp_path_factory, mutant: Mutant):
    require_tool(NGINX, "nginx")
    folder = tmp_path_factory.mktemp("mutant")
    path = folder / mutant.file_name
    path.write_text(mutant.text, encoding="utf-8")
    try:
        config = load_stack_file(path, mutant.stack)
    except StackConfigError as error:
        assert mutant.file_name in str(error)
        return
    check_rendered(config.settings, folder / "out", f"accepted {mutant!r}")


def _duration_fields(model=FleetSettings, prefix: tuple = ()) -> list[tuple]:
    """Key paths (below the fleet key) of every field that holds a Prometheus duration, from the models."""
    found = []
    for name, field in model.model_fields.items():
        key = (*prefix, field.alias or name)
        nested = next((a for a in (field.annotation, *get_args(field.annotation)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is not None and get_origin(field.annotation) is not list:
            found += _duration_fields(nested, key)
        elif any(getattr(m, "func", None) is config_text.PROM_DURATION for m in field.metadata):
            found.append(key)
    return found


DURATIONS = _duration_fields()


def test_the_duration_fields_are_found():
    assert {("monitoring", "retention"), ("monitoring", "scrapeInterval"), ("monitoring", "alerting", "groupWait"),
            ("monitoring", "alerts", "nodeDownFor")} <= set(DURATIONS)


@pytest.mark.tools
@pytest.mark.parametrize("key", DURATIONS, ids=[".".join(k) for k in DURATIONS])
def test_the_longest_duration_accepted_renders_and_one_longer_is_refused(key, tmp_path):
    """Prometheus and Alertmanager hold a duration in Go's int64 nanoseconds (about 292 years): the longest
    value validation accepts passes promtool and amtool, the next one is refused with the key named."""
    require_tool(NGINX, "nginx")
    for value, accepted in (("292y", True), ("106751d", True), ("15250w", True), ("293y", False), ("106752d", False)):
        document = copy.deepcopy(FULL["prod"])
        node = document["config"][FLEET_KEY]
        for part in key[:-1]:
            node = node[part]
        node[key[-1]] = value
        path = tmp_path / value / "Pulumi.prod.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        if not accepted:
            with pytest.raises(StackConfigError, match=re.escape(f"{FLEET_KEY}.{'.'.join(key)}: longer than Prometheus")):
                load_stack_file(path, "prod")
            continue
        check_rendered(load_stack_file(path, "prod").settings, tmp_path / value / "out", f"{'.'.join(key)} = {value}")


@pytest.mark.tools
@pytest.mark.parametrize("stack", ["staging"])
def test_a_stack_with_receivers_that_need_secrets_previews_and_renders(stack, tmp_path):
    """Slack, PagerDuty and URL-less webhook receivers need `ollama-fleet:alertReceiverSecrets`, which an
    offline run cannot decrypt: `fleet preview` and `fleet render` stand in for it instead of failing, and the
    Alertmanager config rendered with the stand-ins passes amtool."""
    import sys

    document = copy.deepcopy(FULL[stack])
    document["config"]["ollama-fleet:alertReceiverSecrets"] = {"secure": "v1:c2VjcmV0cy1hcmUtZW5jcnlwdGVk"}
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    for args in (["preview", "--no-tree"], ["render", "--out", "out"]):
        done = subprocess.run([sys.executable, "-m", "fleet.cli", *args, "--stack", stack], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"fleet {args[0]}: {done.stdout[-1500:]}{done.stderr}"
    rendered = next((tmp_path / "out").rglob("alertmanager.yml"))
    assert {r["name"] for r in yaml.safe_load(rendered.read_text())["receivers"]} >= {"chat", "pager", "hook", "mail"}
    run_tool([require_tool(AMTOOL, "amtool"), "check-config", str(rendered)], "rendered alertmanager.yml")
