"""`fleet local up --engine docker`, `status`, `env` and `down`, as a developer runs them: the real commands in
their own processes, on the project's Docker daemon (the session's, which the commands find running and
leave running)."""

from __future__ import annotations

import json
import os
import shlex
import ssl
import stat
import subprocess
import sys

import docker
import httpx
import pytest

from fleet.local.docker_replay import remove_footprint

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def fleet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "fleet.cli", "local", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_up_serves_the_dev_stack_and_down_removes_it_but_the_models(dockerd, docker_client, standin_images, tmp_path):
    state_dir = tmp_path / "local"
    up = fleet("up", "--engine", "docker", "--state-dir", str(state_dir), timeout=900)
    state_file = state_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600  # it holds the keys
        assert state["engine"] == "docker" and state["docker"]["started_daemon"] is False
        assert "left out     ollama-monitoring-grafana" in up.stdout and "gateway      https://127.0.0.1:" in up.stdout

        status = fleet("status", "--state-dir", str(state_dir))
        assert status.returncode == 0, status.stdout + status.stderr
        lines = {line.split()[1]: line for line in status.stdout.splitlines() if len(line.split()) > 1}
        for name in state["docker"]["footprint"]["containers"]:
            assert lines[name].startswith("running"), status.stdout

        exported = fleet("env", "--state-dir", str(state_dir))
        assert exported.returncode == 0, exported.stderr
        values = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in exported.stdout.splitlines())
        assert set(values) == {"FLEET_URL", "FLEET_API_KEY", "FLEET_CA_FILE", "FLEET_PROMETHEUS_URL", "FLEET_PROMETHEUS_PASSWORD"}
        verify = ssl.create_default_context(cafile=values["FLEET_CA_FILE"])
        answer = httpx.post(f"{values['FLEET_URL']}/api/generate", verify=verify, timeout=120,
                            headers={"Authorization": f"Bearer {values['FLEET_API_KEY']}"},
                            json={"model": "smollm2:135m", "prompt": "Hi", "stream": False, "options": {"num_predict": 4}})
        assert answer.status_code == 200 and answer.json()["eval_count"] > 0

        again = fleet("up", "--engine", "docker", "--state-dir", str(state_dir))
        assert again.returncode == 1 and "already running" in again.stderr

        down = fleet("down", "--state-dir", str(state_dir), timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "kept volume ollama-local-models" in down.stdout and not state_file.exists()
        for name in state["docker"]["footprint"]["containers"]:
            with pytest.raises(docker.errors.NotFound):
                docker_client.api.inspect_container(name)
        with pytest.raises(docker.errors.NotFound):
            docker_client.api.inspect_network("ollama-local-net")
        assert docker_client.api.inspect_volume("ollama-local-models")["Name"] == "ollama-local-models"
        with pytest.raises(docker.errors.NotFound):
            docker_client.api.inspect_volume("ollama-monitoring-tsdb")
        assert dockerd.is_up()  # the session's daemon: not started by `up`, so not stopped by `down`
    finally:
        if state:
            remove_footprint(docker_client, state["docker"]["footprint"], "all")
