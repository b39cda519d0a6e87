"""The command line reads well: a version, help that names every option's meaning and default and wraps
instead of cutting, tables that keep every value when piped, counts in plain words, exact commands."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from fleet import invocation
from fleet.ops import loadtest as lt
from fleet.cli import app
from fleet.cli.load import summary_table
from fleet.cli.console import print_table


def _commands(command, path):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, path + [name])
    else:
        yield path, command


COMMANDS = list(_commands(typer.main.get_command(app), ["fleet"]))


def _switch(param) -> bool:
    """An on-only flag (`--yes`): off unless given, which its help needs not repeat."""
    return bool(param.is_flag and not param.secondary_opts and param.default is False)


def _options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option" and p.name not in ("help", "version")]


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ollama-fleet {version('ollama-fleet')}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_says_what_it_does_and_its_default(path, command):
    missing = []
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        text = param.help or ""
        shows_default = "[default:" in text or (param.show_default and param.default is not None)
        if not text.strip():
            missing.append(f"{param.opts[0]}: no description")
        if not (shows_default or param.required or param.name == "version" or _switch(param)):
            missing.append(f"{param.opts[0]}: no default shown")
    assert not missing, f"{' '.join(path)}: {missing}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_wraps_at_narrow_widths_and_has_no_placeholder_types(path, command):
    env = {**os.environ, "COLUMNS": "60", "NO_COLOR": "1", "TERMINAL_WIDTH": "60"}
    done = subprocess.run([sys.executable, "-m", "fleet.cli", *path[1:], "--help"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout  # nothing cut
    assert "<bool>" not in done.stdout
    assert "[default:" in done.stdout or all(_switch(p) or p.required for p in _options(command))


def _level(level: int) -> lt.LevelSummary:
    return lt.summarize("closed", level, [], 1.0)


def test_a_piped_table_keeps_every_header_and_value():
    result = lt.LoadResult(spec=lt.LoadSpec(url="https://127.0.0.1:8443", concurrency=(1, 32)), levels=[_level(1), _level(32)], records={})
    out = io.StringIO()
    print_table(Console(file=out, width=80), summary_table(result))  # a pipe: not a terminal, 80 columns
    text = out.getvalue()
    assert "…" not in text
    header = next(line for line in text.splitlines() if "clients" in line)
    for name in ("clients", "requests", "latency p95", "decode p50", "refusals", "CPU busy"):
        assert name in header


def test_a_narrow_terminal_folds_cells_instead_of_cutting_them():
    result = lt.LoadResult(spec=lt.LoadSpec(url="https://127.0.0.1:8443", concurrency=(1,)), levels=[_level(1)], records={})
    out = io.StringIO()
    print_table(Console(file=out, width=60, force_terminal=True, color_system=None), summary_table(result))
    assert "…" not in out.getvalue()


def test_counts_read_as_words():
    result = CliRunner().invoke(app, ["validate", "--stack", "dev"])
    assert result.exit_code == 0 and "(1 node," in result.output


def test_messages_give_the_command_that_works_from_here(tmp_path, monkeypatch):
    venv_fleet = tmp_path / ".venv" / "bin" / "fleet"
    venv_fleet.parent.mkdir(parents=True)
    venv_fleet.write_text("#!/bin/sh\n")
    venv_fleet.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(venv_fleet), "local", "up"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the virtualenv is not activated
    assert invocation.fleet_command() == ".venv/bin/fleet"
    monkeypatch.setenv("PATH", f"{venv_fleet.parent}:/usr/bin:/bin")  # activated: plain `fleet` works
    assert invocation.fleet_command() == "fleet"


def test_local_env_exports_what_the_clients_need(tmp_path):
    from fleet.local.dataplane import STATE_VERSION, write_state

    state = {"version": STATE_VERSION, "gateway_url": "https://127.0.0.1:8443", "ca_file": "/run/x/ca.pem",
             "client_keys": {"dev": "k1", "ci": "k 2"}, "processes": []}
    write_state(tmp_path / "state.json", state)
    runner = CliRunner()
    result = runner.invoke(app, ["local", "env", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "export FLEET_URL=https://127.0.0.1:8443", "export FLEET_API_KEY=k1", "export FLEET_CA_FILE=/run/x/ca.pem"]
    assert "export FLEET_API_KEY='k 2'" in runner.invoke(app, ["local", "env", "--state-dir", str(tmp_path), "--client", "ci"]).output
    # With monitoring, Prometheus' address and password (basic auth) are exported too, quoted for the shell.
    write_state(tmp_path / "state.json", {**state, "prometheus_url": "http://127.0.0.1:9090", "prometheus_password": "p'w"})
    monitored = runner.invoke(app, ["local", "env", "--state-dir", str(tmp_path)]).output.splitlines()
    assert monitored[-2:] == ["export FLEET_PROMETHEUS_URL=http://127.0.0.1:9090",
                              "export FLEET_PROMETHEUS_PASSWORD='p'\"'\"'w'"]
    missing = runner.invoke(app, ["local", "env", "--state-dir", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "local up" in missing.output
