"""No injection through the stack file: shell, nginx and YAML metacharacters are fed through EVERY string field
of the config (enumerated from the models, not listed by hand). A value is either refused at load with a
clear error, or accepted and then every generated file still passes the real tools (`nginx -t`, `promtool`,
`bash -n`, `shellcheck`, a YAML parser) and the generated scripts, run against stand-in commands on PATH,
never execute what was injected."""

from __future__ import annotations

import copy
import os
import subprocess
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel
from render_tools import AMTOOL, NGINX, PROMTOOL, nginx_test, require_tool, run_tool
from render_tools import check_script, write_gateway_config, write_prometheus_config

from fleet import node_runtime
from fleet.config import FleetSettings
from fleet.render import alertmanager, cloud_init, grafana
from fleet.stack_file import StackConfigError, load_stack, parse_settings

MARKER_NAME = "injected-command-ran"
LIST_INDEX = 0
DICT_KEY, DICT_VALUE = "<key>", "<value>"


# --- the string fields, from the models ---------------------------------------------------------------------


def _is_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    if get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in get_args(annotation))
    if get_origin(annotation) is typing.Annotated:
        return _is_text(get_args(annotation)[0])
    return False


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None


def string_fields(model: type[BaseModel] = FleetSettings, prefix: tuple = ()) -> Iterator[tuple]:
    """Paths (camelCase keys; LIST_INDEX for a list item; DICT_KEY/DICT_VALUE for a mapping) of every string."""
    for name, field in model.model_fields.items():
        key = field.alias or name
        annotation = field.annotation
        if get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        origin = get_origin(annotation)
        nested = _model_in(annotation)
        if origin is list:
            (item,) = get_args(annotation)
            if _is_text(item):
                yield (*prefix, key, LIST_INDEX)
            elif nested:
                yield from string_fields(nested, (*prefix, key, LIST_INDEX))
        elif origin is dict:
            key_type, value_type = get_args(annotation)
            if _is_text(key_type):
                yield (*prefix, key, DICT_KEY)
            if _is_text(value_type):
                yield (*prefix, key, DICT_VALUE)
        elif nested:
            yield from string_fields(nested, (*prefix, key))
        elif _is_text(annotation):
            yield (*prefix, key)


FIELDS = list(string_fields())


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


# --- payloads ------------------------------------------------------------------------------------------------


def payloads(marker: Path) -> list[str]:
    run = f"touch {marker}"
    return [
        # shell
        f"$({run})", f"`{run}`", f"x;{run}", f"x && {run}", f"x | {run}", f"x\n{run}", f"x'; {run}; '",
        f'x"; {run}; "', f"x$IFS{run}", "-rf", "x\\",
        # nginx
        "x; return 200 injected;", "x } server { listen 1; }", "$host", "x#y", "x{y}", "x\"y",
        # YAML and Prometheus
        "x: y", "x\n- y", "{x: y}", "[x]", "'x", "&x", "*x", "!!python/object/apply:os.system", "x #y",
        # whitespace, control and non-ASCII
        "", " ", "x y", "x\t", "x\r", "x\x00", "١٦m", "ｘ",
    ]


def _base_value(data: dict, path: tuple) -> str | None:
    node: Any = data
    for part in path[:-1]:
        if isinstance(node, list):
            node = node[part] if len(node) > part else None
        elif isinstance(node, dict):
            node = node.get(part)
        if node is None:
            return None
    last = path[-1]
    if last in (DICT_KEY, DICT_VALUE) or isinstance(node, list):
        return None
    value = node.get(last) if isinstance(node, dict) else None
    return value if isinstance(value, str) else None


def _set(data: dict, path: tuple, value: str) -> dict:
    """A copy of `data` with the string at `path` set to `value` (missing parents and list items created)."""
    data = copy.deepcopy(data)
    node: Any = data
    for index, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = node[part]
            continue
        following = path[index + 1]
        fresh: Any = [] if isinstance(following, int) else {}
        child = node.get(part)
        if not isinstance(child, type(fresh)):
            child = node[part] = fresh
        if isinstance(child, list) and not child:
            child.append("" if index + 1 == len(path) - 1 else {})
        node = child
    last = path[-1]
    if last == DICT_KEY:
        node[value] = "v"
    elif last == DICT_VALUE:
        node["k"] = value
    else:
        node[last] = value
    return data


def _base(stack: str, receiver: dict) -> dict:
    """A real stack with one alert receiver (the first list item, where the enumeration points)."""
    data = load_stack(stack).settings.model_dump(by_alias=True, mode="json", exclude_none=True)
    data["monitoring"]["alerting"].update(receivers=[receiver], critical=[receiver["name"]])
    return data


BASES = {
    "dev": _base("dev", {"name": "oncall", "kind": "slack", "channel": "#llm-oncall"}),
    "prod": _base(
        "prod",
        {
            "name": "mail",
            "kind": "email",
            "to": "oncall@example.com",
            "fromAddress": "alerts@example.com",
            "smarthost": "smtp.example.com:587",
            "authUsername": "alerts",
        },
    ),
}


def _variants(path: tuple, marker: Path) -> Iterator[tuple[str, dict]]:
    for stack, base in BASES.items():
        original = _base_value(base, path)
        for payload in payloads(marker):
            yield stack, _set(base, path, payload)
            if original:
                yield stack, _set(base, path, original + payload)


# --- rendering and checking an accepted stack ------------------------------------------------------------------


def _stand_in_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with a `docker` that only records its arguments (one per line, NUL-separated calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "docker-calls"
    shim = bin_dir / "docker"
    shim.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> {log}\nprintf "\\0\\n" >> {log}\nexit 0\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def _run_script(script: str, where: str, tmp_path: Path, marker: Path) -> list[list[str]]:
    env, log = _stand_in_path(tmp_path)
    log.unlink(missing_ok=True)
    subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert not marker.exists(), f"{where}: an injected command ran"
    calls = log.read_text().split("\0\n") if log.exists() else []
    return [c.splitlines() for c in calls if c]


def check_renders_safely(settings: FleetSettings, tmp_path: Path, marker: Path) -> None:
    where = "accepted stack"
    # nginx: the deployed config and the secret key include, through nginx -t
    conf = write_gateway_config(settings, tmp_path)
    if NGINX:
        result = nginx_test(conf, tmp_path / "nginx")
        assert result.returncode == 0, f"{where}: nginx -t: {result.stderr}"

    # Prometheus config and rules, Grafana provisioning: YAML that parses, and promtool
    files = {}
    if settings.monitoring.enabled:
        files = {
            "alertmanager.yml": alertmanager.render_alertmanager(settings, alertmanager.placeholder_secrets(settings)),
            "datasource.yaml": grafana.render_datasource(scrape_interval=settings.monitoring.scrape_interval),
            "provider.yaml": grafana.render_dashboard_provider(),
        }
    for content in files.values():
        yaml.safe_load(content)
    if "alertmanager.yml" in files and AMTOOL:
        am = tmp_path / "alertmanager.yml"
        am.write_text(files["alertmanager.yml"])
        run_tool([AMTOOL, "check-config", str(am)], where, timeout=60)
    if settings.monitoring.enabled and PROMTOOL:
        prom, rule_file = write_prometheus_config(settings, tmp_path, "injection")
        for args in (("check", "config", str(prom)), ("check", "rules", str(rule_file))):
            run_tool([PROMTOOL, *args], where)

    # Host scripts: the cloud-init setup scripts and the readiness script (syntax and lint only: they change a host)
    for name, content in files.items():
        if name.endswith(".sh"):
            check_script(content, f"{where}: {name}", tmp_path)
    if settings.aws is not None:
        argv = cloud_init.ssh_argv(
            transport="ssm",
            instance_id="i-0123456789abcdef0",
            address=None,
            user=settings.aws.ssh_user,
            region=settings.aws.region,
            key_file="/tmp/key",
            known_hosts_file="/tmp/known_hosts",
        )
        ready = cloud_init.render_readiness_script(
            host_name="node-0", ssh_argv=argv, steps=cloud_init.readiness_steps(gpus=1, models_path="/models")
        )
        check_script(ready, f"{where}: readiness", tmp_path)

    # Model steps: run for real against a stand-in `docker`; every model reference arrives as one argument.
    for group in settings.node_groups:
        for script in (node_runtime.pull_script("ollama-0", group), node_runtime.warm_script("ollama-0", group)):
            if script is None:
                continue
            check_script(script, f"{where}: model steps of {group.name}", tmp_path)
            calls = _run_script(script, f"{where}: model steps of {group.name}", tmp_path, marker)
            arguments = {arg for call in calls for arg in call}
            assert "ollama-0" in arguments


# --- the tests -------------------------------------------------------------------------------------------------


def test_the_enumeration_finds_every_kind_of_string_field():
    dotted = {_dotted(p) for p in FIELDS}
    for expected in (
        "nodeGroups.0.models.0.name",
        "nodeGroups.0.models.0.tag",
        "nodeGroups.0.models.0.gguf",
        "nodeGroups.0.ollama.keepAlive",
        "gateway.domain",
        "gateway.clientCidrs.0",
        "gateway.clients.0.name",
        "gateway.tls.acmeServer",
        "monitoring.grafanaAdminUser",
        "aws.sshUser",
        "local.bindAddress",
        f"tags.{DICT_KEY}",
        f"tags.{DICT_VALUE}",
        "images.nginx",
    ):
        assert expected in dotted, sorted(dotted)
    assert len(FIELDS) >= 40


@pytest.mark.tools
@pytest.mark.parametrize("path", FIELDS, ids=[_dotted(p) for p in FIELDS])
def test_metacharacters_in_a_string_field_are_refused_or_render_safely(path, tmp_path):
    require_tool(NGINX, "nginx")
    marker = tmp_path / MARKER_NAME
    refused = accepted = 0
    seen: set[str] = set()
    for stack, data in _variants(path, marker):
        try:
            settings = parse_settings(data, f"Pulumi.{stack}.yaml")
        except StackConfigError as error:
            refused += 1
            assert f"Pulumi.{stack}.yaml" in str(error)
            continue
        accepted += 1
        key = settings.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        check_renders_safely(settings, tmp_path, marker)
    assert refused > 0, f"{_dotted(path)}: no metacharacter was refused"
    assert not marker.exists()


@pytest.mark.tools
@pytest.mark.parametrize("stack", sorted(BASES))
def test_the_checks_run_on_the_real_stacks(stack, tmp_path):
    """The render checks above pass on an unchanged stack (so an accepted payload is judged by working tools)."""
    marker = tmp_path / MARKER_NAME
    check_renders_safely(parse_settings(BASES[stack], f"Pulumi.{stack}.yaml"), tmp_path, marker)


def test_a_stand_in_docker_would_notice_an_injected_command(tmp_path):
    """The runner itself is able to see an injection: a script with an unquoted substitution trips it."""
    marker = tmp_path / MARKER_NAME
    with pytest.raises(AssertionError, match="an injected command ran"):
        _run_script(f"docker exec c ollama pull $(touch {marker})", "broken script", tmp_path, marker)
