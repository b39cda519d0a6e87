"""The replay's capture and plan, without a Docker daemon: the dev stack's program run under the replay's
mocks (fleet/local/docker_capture.py, a subprocess: Pulumi's mocks are process-global) and translated into
steps (fleet/local/docker_plan.py). tests/docker/test_replay.py runs the plan on a real daemon."""

from __future__ import annotations

import copy
import io
import re
import shutil
import subprocess
import tarfile

import pytest

from fleet.local import docker_plan as dp
from fleet.local.docker_capture import capture, random_password
from fleet.local.docker_replay import _tar, footprint
from fleet.local.docker_stack import LEFT_OUT
from fleet.render.nginx import GatewayPaths

OLLAMA = "ollama-cpu-0-ollama"


@pytest.fixture(scope="module")
def captured() -> dict:
    return capture("dev")


@pytest.fixture(scope="module")
def plan(captured) -> dp.DockerPlan:
    return dp.build_plan(captured, LEFT_OUT)


def _record(captured: dict, name: str) -> dict:
    [found] = [r for r in captured["resources"] if r["name"] == name]
    return found


def _openssl(*args: str, stdin: str) -> str:
    return subprocess.run([shutil.which("openssl"), *args], input=stdin, capture_output=True, text=True, check=True).stdout


def test_every_step_comes_after_what_it_needs(plan):
    seen: set[str] = set()
    for step in plan.steps:
        assert set(step.depends_on) | set(dp.refs_of(step.resource)) <= seen, step.name
        seen.add(step.name)
    kinds = {step.kind for step in plan.steps}
    assert kinds == {"network", "volume", "registryimage", "builtimage", "container", "command"}


def test_grafana_is_left_out_with_its_image_and_nothing_needs_it(plan):
    assert {left.name for left in plan.left_out} == {"ollama-monitoring-grafana", "ollama-monitoring-grafana-image"}
    assert all("not packaged for Debian" in left.reason for left in plan.left_out)
    assert not plan.containers("grafana")


def test_a_step_that_needs_a_left_out_one_is_an_error(captured):
    changed = copy.deepcopy(captured)
    grafana = _record(changed, "ollama-monitoring-grafana")["urn"]
    _record(changed, "ollama-monitoring-prometheus")["dependsOn"].append(grafana)
    with pytest.raises(dp.PlanError, match="ollama-monitoring-prometheus needs ollama-monitoring-grafana"):
        dp.build_plan(changed, LEFT_OUT)


def test_the_gateway_starts_after_the_meter_and_the_meter_after_ollama(plan):
    names = [step.name for step in plan.steps]
    assert "ollama-cpu-0-meter" in plan.step("ollama-gateway-0-nginx").depends_on
    assert names.index(OLLAMA) < names.index("ollama-cpu-0-meter") < names.index("ollama-gateway-0-nginx")
    assert set(plan.dependents(OLLAMA)) >= {"ollama-cpu-0-meter", "ollama-cpu-0-models", "ollama-cpu-0-warm",
                                            "ollama-gateway-0-nginx"}


def test_container_inputs_are_the_programs(plan, captured):
    ollama = plan.step(OLLAMA).resource
    inputs = _record(captured, OLLAMA)["inputs"]
    assert ollama.docker_name == inputs["name"] and list(ollama.env) == inputs["envs"]
    assert ollama.image == dp.Ref("ollama-cpu-0-ollama-image", "image")
    assert ollama.healthcheck == dp.HealthCheck(("CMD", "ollama", "list"), 30.0, 10.0, 60.0, 3)
    assert ollama.mounts == (dp.Mount("ollama-local-models", "/models"),)
    assert ollama.networks == (("ollama-local-net", (OLLAMA,)),)
    assert ollama.wait and ollama.wait_timeout_s == 300 and ollama.restart == "unless-stopped"
    assert not ollama.ports  # Ollama is published nowhere
    exporter = plan.step("ollama-cpu-0-node-exporter").resource
    assert exporter.network_mode == dp.Ref("ollama-cpu-0-meter", "id", "container:{}") and exporter.pid_mode == "host"
    log_exporter = plan.step("ollama-gateway-0-log-exporter").resource
    assert log_exporter.entrypoint == ("python", "-m", "fleet.exporters.gateway_log")
    assert log_exporter.mounts == (dp.Mount("ollama-gateway-0-access-log", "/var/log/nginx/fleet", read_only=True),)
    assert {p.external for p in plan.step("ollama-gateway-0-nginx").resource.ports} == {8443, 8080}


def test_uploads_keep_pulumi_dockers_modes(plan):
    """`permissions` wins; without it pulumi-docker writes 0644 (0744 for `executable`)."""
    paths = GatewayPaths()
    modes = {u.path: u.mode for u in plan.step("ollama-gateway-0-nginx").resource.uploads}
    assert modes[paths.api_keys_include] == modes[paths.certificate_key] == 0o600
    assert modes["/docker-entrypoint.d/40-fleet-log-rotate.sh"] == 0o755
    assert modes[paths.certificate] == modes["/etc/nginx/nginx.conf"] == 0o644
    prometheus = {u.path: u.mode for u in plan.step("ollama-monitoring-prometheus").resource.uploads}
    assert set(prometheus.values()) == {0o644}  # Prometheus runs as nobody: it must read them
    assert dp._upload({"file": "/x", "content": "y", "executable": True}, "w").mode == 0o744
    with pytest.raises(dp.PlanError, match="not octal"):
        dp._upload({"file": "/x", "content": "y", "permissions": "rw"}, "w")


def test_commands_keep_their_script_environment_and_triggers(plan, captured):
    models = plan.step("ollama-cpu-0-models").resource
    assert models.create == _record(captured, "ollama-cpu-0-models")["inputs"]["create"]
    assert models.environment == {"DOCKER_HOST": plan.docker_host} and plan.docker_host.startswith("unix://")
    assert not [t for t in models.triggers if isinstance(t, dp.Ref)]  # the model list only
    warm = plan.step("ollama-cpu-0-warm").resource
    assert dp.Ref(OLLAMA, "id") in warm.triggers  # re-runs when the Ollama container is replaced
    assert plan.pulls == ("smollm2:135m-instruct-q4_1",)


def test_an_input_the_replay_does_not_translate_is_an_error(captured):
    changed = copy.deepcopy(captured)
    _record(changed, OLLAMA)["inputs"]["privileged"] = True
    with pytest.raises(dp.PlanError, match=f"{OLLAMA}: the replay does not translate input\\(s\\) privileged"):
        dp.build_plan(changed, LEFT_OUT)


def test_stacks_of_aws_hosts_are_refused(captured):
    changed = copy.deepcopy(captured)
    changed["resources"].append({"type": "command:remote:Command", "name": "pull", "urn": "urn:x::pull",
                                 "custom": True, "inputs": {}, "outputs": {}})
    with pytest.raises(dp.PlanError, match="local Docker host"):
        dp.build_plan(changed, LEFT_OUT)


def test_an_image_the_plan_does_not_hold_is_an_error(captured):
    changed = copy.deepcopy(captured)
    _record(changed, OLLAMA)["inputs"]["image"] = "sha256:" + "0" * 64
    with pytest.raises(dp.PlanError, match="is not the image of a resource of the plan"):
        dp.build_plan(changed, LEFT_OUT)


@pytest.mark.parametrize("text, seconds", [("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0)])
def test_go_durations(text, seconds):
    assert dp.duration_s(text, "x") == seconds


@pytest.mark.parametrize("text", ["", "30", "1d", "s30"])
def test_bad_durations_name_where(text):
    with pytest.raises(dp.PlanError, match="healthcheck.interval"):
        dp.duration_s(text, "healthcheck.interval")


# ---- the capture's secrets are real -------------------------------------------------------------------


def test_the_gateway_certificate_is_real_and_made_from_the_programs_inputs(plan):
    paths = GatewayPaths()
    uploads = {u.path: u.content.decode() for u in plan.step("ollama-gateway-0-nginx").resource.uploads}
    certificate, key = uploads[paths.certificate], uploads[paths.certificate_key]
    text = _openssl("x509", "-noout", "-text", stdin=certificate)
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text and "O = ollama-fleet" in text
    assert "TLS Web Server Authentication" in text and "prime256v1" in text
    # The certificate is signed for the uploaded key.
    assert _openssl("x509", "-noout", "-pubkey", stdin=certificate) == _openssl("pkey", "-pubout", stdin=key)


def test_generated_keys_are_random_and_reach_the_gateway(captured, plan):
    keys = captured["outputs"]["apiKeys"]
    assert set(keys) == {"dev"} and re.fullmatch(r"[A-Za-z0-9]{40}", keys["dev"])
    assert not keys["dev"].startswith("mock")
    uploads = {u.path: u.content.decode() for u in plan.step("ollama-gateway-0-nginx").resource.uploads}
    assert f'"~^{keys["dev"]}$" "dev"' in uploads[GatewayPaths().api_keys_include]
    assert captured["outputs"]["adminApiKey"] != keys["dev"]
    assert len({random_password({"length": 40, "special": False}) for _ in range(5)}) == 5


def test_the_footprint_names_what_a_replay_creates_dependents_first(plan):
    names = footprint(plan)
    assert names["containers"][-1] == "dev-model-mirror"
    assert names["containers"].index("ollama-gateway-0-gateway") < names["containers"].index(OLLAMA)
    assert names["networks"] == ["ollama-local-net"]
    assert names["volumes"]["ollama-local-models"] is True  # retained on delete, as the program says
    assert names["volumes"]["ollama-monitoring-tsdb"] is False


def test_an_upload_is_one_root_owned_tar_entry_with_its_mode():
    data = _tar(dp.Upload("/etc/nginx/fleet/api-keys.conf", b"secret", 0o600))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        [entry] = archive.getmembers()
        assert (entry.name, entry.mode, entry.uid, entry.gid, entry.size) == ("etc/nginx/fleet/api-keys.conf", 0o600, 0, 0, 6)
