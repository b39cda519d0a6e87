"""The dev stack's planned containers on a real Docker daemon: the resources the program registers (captured
under Pulumi's mocks, the inputs `pulumi up` would send) replayed through the Engine API with only the
images mapped to the stand-ins (fleet/local/docker_stack.py), then used as a client would.

One replay for the module (about two minutes: the program's health checks run every 30 s and each `wait`
container waits for its first one); everything it created is removed at the end, volumes included.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import ollama
import pytest
import yaml
from openai import OpenAI
from waiting import wait_until

from fleet import ports
from fleet.local import docker_plan as dp
from fleet.local import docker_stack, model_mirror
from fleet.local.docker_replay import ReplayError
from fleet.model_names import short_name
from fleet.node_runtime import DIGEST_LINE, manifest_path
from fleet.render.prometheus_web import PROMETHEUS_USER
from fleet.ops.smoke import SmokeOptions, run_smoke

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = "smollm2:135m"
OLLAMA = "ollama-cpu-0-ollama"
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
SHORT = {"temperature": 0, "seed": 7, "num_predict": 8}
HEALTH_WAIT_S = 120  # containers without `wait` get their first check 30 s after they start


@pytest.fixture(scope="module")
def stack(dockerd, docker_client, standin_images, tmp_path_factory):
    started = time.monotonic()
    try:
        # clear="all": what an interrupted earlier run left, volumes included (the pull is checked below).
        replayed = docker_stack.start(docker_client, dockerd.url, "dev", standin_images, log=print, clear="all")
    except ReplayError as error:
        pytest.fail(f"the replay of the dev stack failed:\n{error}", pytrace=False)
    print(f"\nreplay of the dev stack: {time.monotonic() - started:.0f}s")
    ca = tmp_path_factory.mktemp("replay") / "gateway-ca.pem"
    ca.write_text(replayed.certificate_pem)
    replayed.ca_file = ca
    yield replayed
    replayed.down("all")
    left = [c.name for c in docker_client.containers.list(all=True) if c.name in
            {s.resource.docker_name for s in replayed.plan.containers()} | {model_mirror.container_name("dev")}]
    assert not left, f"containers left after the replay was taken down: {left}"


def _auth(stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.client_keys['dev']}"}


def _served(stack) -> set[str]:
    """The names the gateway serves: the stack's models and their aliases, as Ollama lists them."""
    return {name for group in stack.settings.node_groups for model in group.models
            for name in (model.ref, *(short_name(alias) for alias in model.aliases))}


def _verify(stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.ca_file))


def _client(stack) -> httpx.Client:
    return httpx.Client(base_url=stack.gateway_url, headers=_auth(stack), verify=_verify(stack), timeout=TIMEOUT)


# ---- the replay itself ------------------------------------------------------------------------------------


def test_every_planned_container_runs_and_only_grafana_is_left_out(stack, docker_client):
    planned = {s.resource.docker_name for s in stack.plan.containers()}
    roles = {s.resource.role for s in stack.plan.containers()}
    assert roles == {"ollama", "meter", "node-exporter", "gateway", "nginx-exporter", "gateway-log-exporter",
                     "prometheus", "alertmanager"}
    assert {left.name for left in stack.plan.left_out} == {"ollama-monitoring-grafana", "ollama-monitoring-grafana-image"}
    running = {c.name for c in docker_client.containers.list()}
    assert planned <= running
    for step in stack.plan.containers():
        attrs = docker_client.api.inspect_container(step.resource.docker_name)
        # The program's own container settings, as the daemon reports them.
        assert attrs["Config"]["Labels"] == dict(step.resource.labels)
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] == step.resource.restart == "unless-stopped"
        assert attrs["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "50m", "max-file": "5"}}
        assert attrs["RestartCount"] == 0, f"{step.name} restarted"


def test_every_container_health_check_turns_healthy(stack, docker_client):
    checked = [s.resource for s in stack.plan.containers() if s.resource.healthcheck is not None]
    assert len(checked) == len(stack.plan.containers()) - 1  # the nginx exporter's image has no shell

    def statuses():
        found = {c.docker_name: docker_client.api.inspect_container(c.docker_name)["State"]["Health"]["Status"]
                 for c in checked}
        return all(s == "healthy" for s in found.values()), found

    wait_until(statuses, "every health check to pass", HEALTH_WAIT_S, interval=1.0)
    for container in checked:
        health = docker_client.api.inspect_container(container.docker_name)["State"]["Health"]
        assert health["Log"] and health["Log"][-1]["ExitCode"] == 0, (container.docker_name, health["Log"][-1:])
    [exporter] = [s.resource for s in stack.plan.containers("nginx-exporter")]
    assert docker_client.api.inspect_container(exporter.docker_name)["State"]["Running"] is True


def test_uploads_keep_the_program_modes_and_secrets_stay_root_only(stack, docker_client):
    gateway = stack.plan.containers("gateway")[0].resource
    for upload in gateway.uploads:
        mode = docker_client.containers.get(gateway.docker_name).exec_run(["stat", "-c", "%a %U", upload.path])
        assert mode.exit_code == 0, mode.output
        assert mode.output.decode().split() == [format(upload.mode, "o"), "root"], upload.path


def test_the_model_step_pulled_through_the_library_mirror_and_reported_the_digest(stack, docker_client):
    assert stack.replay.ran("ollama-cpu-0-models") == 1 and stack.replay.ran("ollama-cpu-0-warm") == 1
    served = model_mirror.requests_served(stack.replay.mirror)
    [reference] = stack.plan.pulls
    name, _, tag = reference.partition(":")
    assert f"GET /v2/library/{name}/manifests/{tag} 200" in served
    assert any(line.startswith(f"GET /v2/library/{name}/blobs/") and line.endswith(" 206") for line in served)
    manifest = Path(manifest_path(reference, str(model_mirror.models_dir())))
    digest = "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert f"{DIGEST_LINE} {MODEL} {digest}" in stack.replay.output("ollama-cpu-0-models")
    listed = docker_client.containers.get(OLLAMA).exec_run(["ollama", "list"]).output.decode()
    assert MODEL in listed and reference in listed
    loaded = docker_client.containers.get(OLLAMA).exec_run(["ollama", "ps"]).output.decode()
    assert MODEL in loaded  # the warm-up loaded it, with the program's keep-alive


# ---- through the gateway, as clients use it ---------------------------------------------------------------


def test_ollama_client_streams_and_chats_through_the_gateway(stack):
    client = ollama.Client(host=stack.gateway_url, headers=_auth(stack), verify=_verify(stack), timeout=TIMEOUT)
    parts = list(client.generate(model=MODEL, prompt="Why is the sky blue?", options=SHORT, stream=True))
    assert len(parts) >= 2 and parts[-1].done and "".join(p.response for p in parts).strip()
    assert 0 < parts[-1].eval_count <= SHORT["num_predict"]
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], options=SHORT)
    assert reply.message.role == "assistant" and reply.message.content.strip()
    assert {m.model for m in client.list().models} == _served(stack)  # not the library tag the node pulled


def test_openai_client_completes_and_streams_through_the_gateway(stack):
    client = OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=stack.client_keys["dev"], max_retries=0,
                    http_client=httpx.Client(verify=_verify(stack), timeout=TIMEOUT))
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    assert completion.choices[0].message.content.strip() and completion.model == MODEL
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, stream=True))
    assert len(chunks) >= 2 and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert {m.id for m in client.models.list().data} == _served(stack)


def test_the_smoke_probe_passes_with_prometheus_metrics(stack):
    """fleet smoke's checks: health, 401 without or with a wrong key, a generate, 403 on every admin route
    for the client key, the admin key through (127.0.0.1 is in dev's adminCidrs), tokens in Prometheus."""
    report = run_smoke(SmokeOptions(
        url=stack.gateway_url, api_key=stack.client_keys["dev"], admin_key=stack.admin_key,
        metrics_url=stack.prometheus_url, metrics_auth=(PROMETHEUS_USER, stack.prometheus_password),
        ca_cert=str(stack.ca_file), metrics_wait_s=60,
    ))
    table = {r.name: r.status for r in report.results}
    print(json.dumps(table, indent=1))
    assert set(table.values()) == {"PASS"}, [r for r in report.results if r.status != "PASS"]
    assert table["generate with no key"] == table["generate with wrong key"] == "PASS"


def test_plain_http_and_body_limit_refusals(stack):
    plain = httpx.post(f"{stack.http_url}/api/generate", headers=_auth(stack), timeout=10)
    assert plain.status_code == 403 and "rotate the key" in plain.json()["error"]  # a key sent in clear
    assert httpx.get(f"{stack.http_url}/health", timeout=10).json() == {"status": "ok"}
    limit = stack.settings.gateway.max_body_size
    assert limit == "16m"
    with _client(stack) as client:
        refused = client.post("/api/chat", content=b'{"model":"smollm2:135m","messages":[{"role":"user","content":"'
                              + b"x" * (17 << 20) + b'"}]}', headers={"Content-Type": "application/json"})
        assert refused.status_code == 413 and limit in refused.json()["error"]


def test_streams_beyond_the_nodes_slots_and_queue_are_shed_with_503(stack):
    """dev: numParallel 2 + queuePerNode 4 = 6 requests in flight on the one node; more get 503 at once."""
    limit = json.loads(stack.plan.containers("gateway")[0].resource.labels["ollama-fleet.upstream-max-conns"])["cpu"]
    assert limit == 6
    results: list[tuple[int, float, float, str]] = []
    lock = threading.Lock()

    def stream():
        started = time.monotonic()
        first = None
        with _client(stack) as client, client.stream(
            "POST", "/api/generate",
            json={"model": MODEL, "prompt": "Tell a story.", "options": {"num_predict": 16, "temperature": 0}},
        ) as response:
            body = b""
            for chunk in response.iter_bytes():
                first = first or time.monotonic() - started
                body += chunk
        with lock:
            results.append((response.status_code, first or 0.0, time.monotonic() - started, body.decode(errors="replace")))

    threads = [threading.Thread(target=stream) for _ in range(limit + 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    statuses = Counter(status for status, *_ in results)
    print(f"\nstatuses {dict(statuses)}")
    assert len(results) == limit + 4
    assert statuses[200] >= 2 and statuses[503] >= 1 and set(statuses) <= {200, 503}
    for status, first, total, body in results:
        if status == 503:
            assert "retry after" in json.loads(body)["error"]
        else:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            assert len(lines) >= 2 and lines[-1]["done"] is True  # streamed line by line
            assert first < total


def test_grafana_is_left_out_and_the_gateway_says_so(stack):
    """The gateway serves Grafana under /grafana/ to admin networks (the Docker host is one): with its container
    left out of the replay, nginx finds no address for the name and answers 503 in JSON."""
    with httpx.Client(verify=_verify(stack), timeout=60) as client:
        answer = client.get(f"{stack.gateway_url}/grafana/")
    assert answer.status_code == 503 and "Grafana did not answer" in answer.json()["error"]


def test_prometheus_scrapes_every_target_of_the_rendered_config(stack):
    prometheus = stack.plan.containers("prometheus")[0].resource
    [config] = [u for u in prometheus.uploads if u.path == "/etc/prometheus/prometheus.yml"]
    rendered = {(job["job_name"], target) for job in yaml.safe_load(config.content)["scrape_configs"]
                for group in job["static_configs"] for target in group["targets"]}
    assert {job for job, _ in rendered} == {"prometheus", "ollama-meter", "nginx", "gateway-log", "node"}
    auth = (PROMETHEUS_USER, stack.prometheus_password)
    assert httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=10).status_code == 401

    def targets():
        active = httpx.get(f"{stack.prometheus_url}/api/v1/targets", auth=auth, timeout=10).json()["data"]["activeTargets"]
        found = {(t["labels"]["job"], t["discoveredLabels"]["__address__"]): t["health"] for t in active}
        return set(found) == rendered and set(found.values()) == {"up"}, found

    wait_until(targets, "Prometheus to scrape every target", 90, interval=1.0)
    alertmanagers = httpx.get(f"{stack.prometheus_url}/api/v1/alertmanagers", auth=auth, timeout=10).json()
    assert [a["url"] for a in alertmanagers["data"]["activeAlertmanagers"]] == [
        f"http://ollama-monitoring-alertmanager:{ports.ALERTMANAGER}/api/v2/alerts"]


def test_a_replaced_node_keeps_its_model_volume_and_does_not_pull_again(stack, docker_client):
    old_id = docker_client.api.inspect_container(OLLAMA)["Id"]
    volume = docker_client.api.inspect_volume("ollama-local-models")
    pulled_before = len(model_mirror.requests_served(stack.replay.mirror))
    replaced = stack.replay.replace(OLLAMA)
    # The warm-up's triggers hold the container's id; the model step's only the model list: it does not run.
    assert replaced == [OLLAMA, "ollama-cpu-0-warm"]
    assert stack.replay.ran("ollama-cpu-0-models") == 1 and stack.replay.ran("ollama-cpu-0-warm") == 2
    assert docker_client.api.inspect_container(OLLAMA)["Id"] != old_id
    assert docker_client.api.inspect_volume("ollama-local-models")["CreatedAt"] == volume["CreatedAt"]
    assert len(model_mirror.requests_served(stack.replay.mirror)) == pulled_before  # nothing fetched again
    container = docker_client.containers.get(OLLAMA)
    assert MODEL in container.exec_run(["ollama", "list"]).output.decode()
    assert MODEL in container.exec_run(["ollama", "ps"]).output.decode()

    def answers():
        with _client(stack) as client:
            response = client.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False, "options": SHORT})
        return response.status_code == 200, response.status_code

    wait_until(answers, "the gateway to answer through the new container", 60, interval=1.0)


def test_a_key_over_its_burst_is_refused_with_429(stack):
    """Last: it empties the dev key's bucket (perKeyBurst 60 at 600 per minute)."""
    burst = stack.settings.gateway.rate_limits.per_key_burst
    statuses = []
    with _client(stack) as client:
        for _ in range(burst * 3):
            response = client.get("/api/version")
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) > 0
                assert "rate limit" in response.json()["error"]
                break
    assert statuses[-1] == 429 and statuses.count(200) >= burst // 2, Counter(statuses)


def test_the_plan_lists_no_fixed_host_port(stack):
    published = {port for (_, _, _), (_, port) in stack.replay.ports.items()}
    planned = {p.external for s in stack.plan.containers() for p in s.resource.ports}
    assert planned == {8443, 8080, 9090, 9093} and not published & planned


def test_the_capture_has_no_step_the_replay_could_not_translate(stack):
    kinds = Counter(s.kind for s in stack.plan.steps)
    assert kinds == {"container": 8, "registryimage": 6, "builtimage": 2, "volume": 4, "network": 1, "command": 2}
    assert isinstance(stack.plan.step("ollama-cpu-0-node-exporter").resource.network_mode, dp.Ref)
