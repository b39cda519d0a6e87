"""What the gateway decides, shown on the real data plane (fleet/local/dataplane.py): keys, admin and unknown
routes, body limit, per-key rate limit, shedding under overload, a node crashing and coming back; and that
`fleet local up` / `down` leave nothing running.

Every wait is bounded; the figures printed (refusal latency, time for a stream to end) are observations,
the asserts only check behaviour with generous bounds.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from fleet.local.dataplane import read_state, running_recorded, session_members
from fleet.local.processes import LOOPBACK, port_is_open
from fleet.render import nginx as ng
from metric_samples import parse_samples, total
from waiting import wait_for, wait_until

pytestmark = pytest.mark.e2e

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
SHORT = {"temperature": 0, "num_predict": 6}
WAIT_S = 60  # upper bound of every wait loop here
LONG_S = 180  # upper bound of a short generation on a busy 2-core machine

# Routes Ollama v0.24 serves beyond the documented API (server/routes.go), by method. None may be reachable
# through the gateway with a client key.
UNDOCUMENTED_ROUTES = [
    ("GET", "/"),
    ("GET", "/api/status"),
    ("POST", "/api/me"),
    ("POST", "/api/signout"),
    ("DELETE", "/api/user/keys/c3NoLWVkMjU1MTkgQUFBQQ"),
    ("POST", "/api/experimental/web_search"),
    ("POST", "/api/experimental/web_fetch"),
    ("GET", "/api/experimental/model-recommendations"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images/edits"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/responses"),
    # Path tricks that normalise onto an admin or undocumented route.
    ("POST", "/v1/models/../../api/pull"),
    ("POST", "/v1/models/%2e%2e/%2e%2e/api/create"),
    ("POST", "/api/generate/../me"),
    ("POST", "//api//pull"),
    ("POST", "/v1/models/..%2F..%2Fapi%2Fpull"),
    ("POST", "/api/generate%2F..%2Fme"),
]


def _client(plane, key_of: str | None = "beta", timeout: httpx.Timeout = TIMEOUT) -> httpx.Client:
    headers = plane.auth(key_of) if key_of else {}
    return httpx.Client(base_url=plane.gateway_url, headers=headers, verify=plane.verify(), timeout=timeout)


def _error(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()["error"]


def _meter_total(node, name: str, **labels) -> float:
    return total(parse_samples(httpx.get(node.metrics_url, timeout=10).text), name, **labels)


def _inflight(plane) -> list[float]:
    return [_meter_total(node, "ollama_inflight_requests") for node in plane.nodes]


def _wait(condition, what: str, timeout: float = WAIT_S):
    return wait_for(condition, what, timeout, interval=0.1)


def _logged(plane, before: int, request_ids: set[str]) -> list[dict]:
    """The access-log entries of these requests (X-Request-ID). nginx logs a request after its answer was
    sent, so an earlier test's last line may still land after `before`: entries are picked by id."""
    return _wait(lambda: (lambda found: found if len(found) == len(request_ids) else None)(
        [e for e in plane.access_log()[before:] if e["request_id"] in request_ids]), "nginx to log the requests")


# ---- keys and routes ----------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_refused_with_401(dataplane, served_model):
    body = {"model": served_model, "prompt": "Hi", "stream": False}
    with _client(dataplane, None) as anonymous:
        for headers in ({}, {"Authorization": "Bearer not-a-key-of-this-gateway"},
                        {"Authorization": f"Bearer {dataplane.client_keys['beta'].swapcase()}"},
                        {"Authorization": dataplane.client_keys["beta"]}):  # no Bearer scheme
            refused = anonymous.post("/api/generate", json=body, headers=headers)
            assert refused.status_code == 401, headers
            assert "API key" in _error(refused)
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/api/tags").status_code == 401
        assert anonymous.get("/health").status_code == 200  # the only route without a key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{dataplane.gateway_url}/v1", api_key="wrong-key-0123456789", max_retries=0,
                      http_client=httpx.Client(verify=dataplane.verify())).models.list()
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=dataplane.gateway_url, verify=dataplane.verify()).list()
    assert refused.value.status_code == 401
    assert not [e for e in dataplane.access_log() if e["status"] == 401 and e["upstream_addr"]]


@pytest.fixture(scope="module")
def model_blob_digest(dataplane) -> str:
    node = dataplane.nodes[0]
    gguf = node.models[0][1]
    return "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()


def test_admin_routes_are_forbidden_to_client_keys(dataplane, served_model, model_blob_digest):
    before = len(dataplane.access_log())
    calls = [
        ("POST", "/api/pull", {"model": served_model}),
        ("POST", "/api/push", {"model": served_model}),
        ("POST", "/api/create", {"model": "evil", "from": served_model}),
        ("POST", "/api/copy", {"source": served_model, "destination": "evil"}),
        ("DELETE", "/api/delete", {"model": served_model}),
        ("HEAD", f"/api/blobs/{model_blob_digest}", None),
        ("POST", f"/api/blobs/{model_blob_digest}", None),
    ]
    assert {path for _, path, _ in calls} >= set(ng.ADMIN_ROUTES)
    request_ids = set()
    for key_of in ("alpha", "beta"):
        with _client(dataplane, key_of) as client:
            for method, path, body in calls:
                response = client.request(method, path, json=body) if body else client.request(method, path)
                assert response.status_code == 403, (key_of, method, path, response.text)
                request_ids.add(response.headers["x-request-id"])
    refused = _logged(dataplane, before, request_ids)
    assert len(refused) == 2 * len(calls) and not [e for e in refused if e["upstream_addr"]]
    # The admin key from an admin CIDR (127.0.0.1/32) reaches Ollama: the model's blob exists on the node.
    with _client(dataplane, "admin") as admin:
        assert admin.head(f"/api/blobs/{model_blob_digest}").status_code == 200
        assert admin.head(f"/api/blobs/sha256:{'0' * 64}").status_code == 404  # Ollama's answer, not ours
    with _client(dataplane, "beta") as beta:
        tags = beta.get("/api/tags").json()["models"]
    assert served_model in {m["name"] for m in tags}  # nothing was deleted or renamed


def test_undocumented_ollama_routes_are_not_reachable(dataplane):
    before = len(dataplane.access_log())
    statuses = {}
    request_ids = set()
    with _client(dataplane, "beta") as beta:
        for method, path in UNDOCUMENTED_ROUTES:
            # The request target is sent verbatim (httpx would otherwise resolve `..` and `//` itself).
            response = beta.request(method, "/", json={} if method == "POST" else None,
                                    extensions={"target": path.encode()})
            statuses[(method, path)] = response.status_code
            request_ids.add(response.headers["x-request-id"])
    print("\n" + "; ".join(f"{method} {path} -> {status}" for (method, path), status in statuses.items()))
    through = {route: status for route, status in statuses.items() if status not in (403, 404)}
    assert not through, f"reachable with a client key: {through}"
    proxied = [(e["method"], e["uri"], e["upstream_addr"]) for e in _logged(dataplane, before, request_ids) if e["upstream_addr"]]
    assert not proxied, f"passed to a node: {proxied}"


def test_body_over_the_limit_is_refused_with_413(dataplane, served_model):
    limit = dataplane.settings.gateway.max_body_size
    assert limit == "256k"
    prompt = "x" * (300 * 1024)
    before = len(dataplane.access_log())
    with _client(dataplane) as beta:
        refused = beta.post("/api/chat", json={"model": served_model, "messages": [{"role": "user", "content": prompt}]})
        assert refused.status_code == 413
        assert limit in _error(refused)
        assert beta.get("/api/version").status_code == 200  # the connection pool still works afterwards
    [entry] = _logged(dataplane, before, {refused.headers["x-request-id"]})
    assert entry["status"] == 413 and entry["upstream_addr"] == ""


def test_one_key_over_its_rate_gets_429_while_another_is_served(dataplane, served_model):
    retry_after = str(dataplane.settings.gateway.retry_after_s)
    (alpha_zone,) = [z for z in dataplane.gateway_plan.key_zones if "alpha" in z.clients]
    assert alpha_zone.rate_per_minute == 1  # refills one request a minute: nothing refills during this test
    with _client(dataplane, "alpha") as alpha, _client(dataplane, "beta") as beta:
        statuses = [alpha.get("/api/version").status_code for _ in range(alpha_zone.burst + 5)]
        assert statuses[0] == 200
        assert 429 in statuses and set(statuses) == {200, 429}
        assert statuses.count(200) <= alpha_zone.burst + 2  # the burst, plus a refill if a minute went by
        with pytest.raises(openai.RateLimitError) as rate_limited:
            openai.OpenAI(base_url=f"{dataplane.gateway_url}/v1", api_key=dataplane.client_keys["alpha"], max_retries=0,
                          http_client=httpx.Client(verify=dataplane.verify())).chat.completions.create(
                model=served_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert rate_limited.value.response.headers["retry-after"] == retry_after
        limited = alpha.post("/api/generate", json={"model": served_model, "prompt": "Hi", "stream": False})
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == retry_after
        assert "rate limit" in _error(limited)
        served = beta.post("/api/generate", json={"model": served_model, "prompt": "Hi", "stream": False, "options": SHORT})
        assert served.status_code == 200 and served.json()["eval_count"] > 0


# ---- overload and failures ---------------------------------------------------------------------------


def test_overload_is_shed_fast_with_503_while_health_answers(dataplane, served_model):
    """Every node holds max_conns requests (its parallel slots plus queuePerNode): the next one is refused at
    once with 503 and Retry-After, and never reaches a node."""
    max_conns = dataplane.gateway_plan.max_conns_by_group()["cpu"]
    assert max_conns == 3  # numParallel 2 x 1 model + queuePerNode 1
    capacity = max_conns * len(dataplane.nodes)
    release = threading.Event()
    results: list[int | str] = []
    body = {"model": served_model, "prompt": "Write a very long story about the sea.",
            "options": {"temperature": 0, "num_predict": 2000}}

    def hold() -> None:
        try:
            with _client(dataplane) as client, client.stream("POST", "/api/generate", json=body) as response:
                results.append(response.status_code)
                release.wait(WAIT_S)  # keep the connection (and the node's slot) until released
        except httpx.HTTPError as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(capacity)]
    try:
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        # Inside the nodes: every slot running, one request queued on each.
        _wait(lambda: sum(_inflight(dataplane)) == capacity, f"{capacity} requests in flight on the nodes")
        assert _inflight(dataplane) == [max_conns] * len(dataplane.nodes)
        before = len(dataplane.access_log())
        with _client(dataplane) as client:
            started = time.monotonic()
            shed = client.post("/api/generate", json={"model": served_model, "prompt": "Hi", "stream": False})
            elapsed = time.monotonic() - started
            health_started = time.monotonic()
            health = httpx.get(f"{dataplane.gateway_url}/health", verify=dataplane.verify(), timeout=10)
            health_elapsed = time.monotonic() - health_started
        print(f"\nshed with {shed.status_code} in {elapsed * 1000:.1f} ms while {capacity} requests held every "
              f"node; /health {health.status_code} in {health_elapsed * 1000:.1f} ms")
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == str(dataplane.settings.gateway.retry_after_s)
        assert "busy" in _error(shed)
        assert elapsed < 2.0  # refused, not queued: generous bound (behaviour, not performance)
        assert health.status_code == 200
        refused = _logged(dataplane, before, {shed.headers["x-request-id"]})
        assert refused and all(e["status"] == 503 for e in refused)
        # nginx names the upstream group, not a node, when it found no node to try.
        assert all(e["upstream_addr"].startswith("fleet_") for e in refused)
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT_S)
    assert results == [200] * capacity
    # Closing the streams cancels the generations: the nodes drain, then serve again.
    _wait(lambda: sum(_inflight(dataplane)) == 0, "the held requests to end on the nodes")
    with _client(dataplane) as client:
        after = client.post("/api/generate", json={"model": served_model, "prompt": "Hi", "stream": False, "options": SHORT})
        assert after.status_code == 200


def _generate_once(plane, model: str, results: list, index: int) -> None:
    started = time.monotonic()
    try:
        # A bound that a crowded CI machine still meets: a timed-out client would leave its request holding a
        # slot of the surviving node (nginx notices the client left only when it writes the answer).
        with _client(plane, timeout=httpx.Timeout(LONG_S, connect=10.0)) as client:
            response = client.post("/api/generate", json={"model": model, "prompt": f"Say {index}.", "stream": False,
                                                          "options": {"temperature": 0, "num_predict": 4}})
        outcome: int | str = response.status_code
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    results.append({"index": index, "started": started, "ended": time.monotonic(), "outcome": outcome})


@pytest.fixture(scope="module")
def crashed_node(dataplane, served_model):
    """The node a long stream landed on, killed mid-stream; restarted (by the test that checks rotation)."""
    return {}


def test_node_killed_mid_run_others_serve_and_nothing_hangs(dataplane, served_model, crashed_node):
    body = {"model": served_model, "prompt": "Write a very long story about the sea.",
            "options": {"temperature": 0, "num_predict": 2000}}
    received = 0
    stream_error: str | None = None
    victim = None
    killed_at = 0.0
    with _client(dataplane) as client:
        try:
            with client.stream("POST", "/api/generate", json=body) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    received += 1
                    if received == 3:
                        inflight = _inflight(dataplane)
                        victim = dataplane.nodes[inflight.index(1)]
                        victim.kill()
                        killed_at = time.monotonic()
        except httpx.TransportError as exc:
            stream_error = type(exc).__name__
    assert victim is not None, f"the stream ended after {received} chunks, before a node could be killed"
    ended_after = time.monotonic() - killed_at
    print(f"\nkilled {victim.name} mid-stream after {received} chunks; the client's stream ended "
          f"{ended_after * 1000:.0f} ms later with {stream_error}")
    crashed_node["node"] = victim
    # The stream on the dead node ends at once with a broken body (not a read timeout, not a fake success).
    assert stream_error in ("RemoteProtocolError", "ReadError")
    assert ended_after < TIMEOUT.read

    # Requests not yet started, as many at once as the surviving node admits (its max_conns; beyond it the
    # gateway sheds with 503): every one is answered by the surviving node, none hangs.
    max_conns = dataplane.gateway_plan.max_conns_by_group()["cpu"]
    results: list[dict] = []
    threads = [threading.Thread(target=_generate_once, args=(dataplane, served_model, results, i), daemon=True)
               for i in range(2 * max_conns)]
    for batch in (threads[:max_conns], threads[max_conns:]):
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join(LONG_S + 5)
    assert all(not t.is_alive() for t in threads), "a request hung"
    assert Counter(r["outcome"] for r in results) == Counter({200: len(threads)}), results
    print("after the kill: " + ", ".join(f"{r['ended'] - r['started']:.2f}s" for r in sorted(results, key=lambda r: r["index"])))
    survivor = next(n for n in dataplane.nodes if n is not victim)
    # Each answered by the survivor; some first tried the dead node (refused), then were passed on. nginx writes
    # a request's access-log entry as it finalizes the request, a moment after the client has the answer.

    def recent_from_survivor():
        recent = [e for e in dataplane.access_log() if e["uri"] == "/api/generate"][-len(threads):]
        return all(e["status"] == 200 and e["upstream_addr"].endswith(survivor.upstream) for e in recent), recent

    recent = wait_until(recent_from_survivor, "the access log to show every request answered by the survivor", 10)
    print("upstreams tried: " + "; ".join(e["upstream_addr"] for e in recent))


def _entries_of(dataplane, request_ids: list[str]) -> list[dict] | None:
    """The access-log entries of these requests, once every one is there (else None)."""
    entries = [e for e in dataplane.access_log() if e["request_id"] in request_ids]
    return entries if {e["request_id"] for e in entries} == set(request_ids) else None


def test_restarted_node_is_back_in_rotation(dataplane, served_model, crashed_node):
    victim = crashed_node.get("node")
    if victim is None:
        pytest.skip("the kill test did not run")
    assert not port_is_open(LOOPBACK, victim.meter_port)
    victim.restart()
    assert victim.is_running()
    # nginx tries a failed node again after fail_timeout; requests then reach it (its fresh meter counts them).
    deadline = time.monotonic() + dataplane.gateway_plan.fail_timeout_s + WAIT_S
    served_by_victim = 0.0
    sent: list[str] = []  # the request ids of the answers (X-Request-ID, the access log's request_id)
    while time.monotonic() < deadline and not served_by_victim:
        with _client(dataplane, timeout=httpx.Timeout(LONG_S, connect=10.0)) as client:
            response = client.post("/api/generate", json={"model": served_model, "prompt": "Hi", "stream": False,
                                                          "options": {"temperature": 0, "num_predict": 2}})
        assert response.status_code == 200
        sent.append(response.headers["x-request-id"])
        served_by_victim = _meter_total(victim, "ollama_inference_requests_total", status="200")
        if not served_by_victim:
            time.sleep(0.5)
    print(f"\n{victim.name} served again after {len(sent)} requests")
    assert served_by_victim >= 1
    # nginx writes a request's access-log entry as it finalizes the request, a moment after the client has it.
    logged = wait_for(lambda: _entries_of(dataplane, sent), "the access-log entries of these requests", WAIT_S)
    assert any(e["upstream_addr"] == victim.upstream and e["status"] == 200 for e in logged)


# ---- fleet local up / down --------------------------------------------------------------------------


def test_fleet_local_up_and_down_leave_nothing_running(tmp_path, dataplane, served_model):
    state_dir = tmp_path / "local"
    fleet = [sys.executable, "-m", "fleet.cli", "local"]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    up = subprocess.run(
        fleet + ["up", "--state-dir", str(state_dir), "--nodes", "1", "--no-monitoring", "--https-port", "0",
                 "--http-port", "0", "--models-dir", str(dataplane.models_dir)],
        capture_output=True, text=True, timeout=300, env=env)
    state = read_state(state_dir / "state.json") if (state_dir / "state.json").exists() else None
    try:
        assert up.returncode == 0, up.stderr
        assert state is not None
        assert (state_dir / "state.json").stat().st_mode & 0o777 == 0o600  # it holds the keys
        key = state["client_keys"]["dev"]
        assert state["gateway_url"] in up.stdout and key in up.stdout and state["admin_key"] in up.stdout
        running = running_recorded(state)
        assert {p["name"].split("@")[0] for p in running} == {"ollama-cpu-0", "meter-cpu-0", "nginx"}
        # The command has exited; the data plane keeps serving.
        response = httpx.post(f"{state['gateway_url']}/api/generate", verify=ssl.create_default_context(cafile=state["ca_file"]), timeout=TIMEOUT,
                              headers={"Authorization": f"Bearer {key}"},
                              json={"model": served_model, "prompt": "Hi", "stream": False, "options": SHORT})
        assert response.status_code == 200 and response.json()["eval_count"] > 0
        again = subprocess.run(fleet + ["up", "--state-dir", str(state_dir)], capture_output=True, text=True,
                               timeout=60, env=env)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = subprocess.run(fleet + ["down", "--state-dir", str(state_dir)], capture_output=True, text=True,
                              timeout=120, env=env)
    assert down.returncode == 0, down.stderr
    assert not (state_dir / "state.json").exists()
    sessions = {p["pid"] for p in state["processes"]}
    assert session_members(sessions) == []  # no server, runner or worker left in their sessions
    assert running_recorded(state) == []
    for url in [state["gateway_url"], state["http_url"], state["nodes"][0]["ollama"], state["nodes"][0]["meter"]]:
        port = int(url.rsplit(":", 1)[1])
        assert not port_is_open(LOOPBACK, port), url
    assert Path(state["run_dir"], "logs").is_dir()  # logs are kept for reading
    status = subprocess.run(fleet + ["down", "--state-dir", str(state_dir)], capture_output=True, text=True,
                            timeout=60, env=env)
    assert status.returncode == 1 and "no local data plane" in status.stderr


# ---- the harness's own rules (no servers needed) -------------------------------------------------------


def test_overrides_are_dotted_stack_paths_validated_like_the_file():
    from fleet.local.dataplane import apply_overrides, load_settings
    from fleet.stack_file import StackConfigError

    raw = {"gateway": {"rateLimits": {"perKeyBurst": 60}}, "nodeGroups": [{"name": "cpu", "count": 1}]}
    changed = apply_overrides(raw, {"gateway.rateLimits.perKeyBurst": 5, "nodeGroups.0.count": 2, "monitoring.enabled": False})
    assert changed == {"gateway": {"rateLimits": {"perKeyBurst": 5}}, "nodeGroups": [{"name": "cpu", "count": 2}],
                       "monitoring": {"enabled": False}}
    assert raw["nodeGroups"][0]["count"] == 1  # the stack's own data is untouched
    with pytest.raises(ValueError, match="nodeGroups.3 is not an index"):
        apply_overrides(raw, {"nodeGroups.3.count": 2})

    settings = load_settings("dev", {"gateway.queuePerNode": 7, "nodeGroups.0.count": 3})
    assert settings.gateway.queue_per_node == 7 and settings.node_groups[0].count == 3
    with pytest.raises(StackConfigError) as bad:
        load_settings("dev", {"gateway.queuePerNode": -1})
    assert "Pulumi.dev.yaml (with overrides gateway.queuePerNode)" in str(bad.value)
    assert "ollama-fleet:fleet.gateway.queuePerNode" in str(bad.value)


def test_cli_refuses_a_bad_override_before_starting_anything(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "local", "up", "--state-dir", str(tmp_path), "--set", "gateway.queuePerNode=-1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert done.returncode == 2
    assert "gateway.queuePerNode" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "state.json").exists()


def test_a_model_without_a_local_gguf_is_refused_before_any_process_starts(tmp_path):
    from fleet.local.dataplane import DataPlane, DataPlaneError

    plane = DataPlane("staging", run_dir=tmp_path / "run", monitoring=False)
    with pytest.raises(DataPlaneError, match=r"llama3\.1:8b .*no local GGUF"):
        plane.start()
    assert plane.processes() == [] and not (tmp_path / "run").exists()


def test_down_never_signals_a_pid_that_names_another_process():
    from fleet.local.dataplane import process_start_time, stop_recorded

    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        started = process_start_time(sleeper.pid)
        reused = {"processes": [{"name": "sleeper", "pid": sleeper.pid, "start_time": started - 1}]}
        assert stop_recorded(reused, timeout=2) == []
        assert sleeper.poll() is None  # a different start time: not ours, left alone
        recorded = {"processes": [{"name": "sleeper", "pid": sleeper.pid, "start_time": started}]}
        assert stop_recorded(recorded, timeout=5) == ["sleeper"]
        assert sleeper.wait(timeout=5) == -15  # SIGTERM
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(timeout=5)


def test_a_port_in_use_is_named_with_the_flag_that_changes_it(tmp_path):
    import socket

    with socket.socket() as held:
        held.bind((LOOPBACK, 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "fleet.cli", "local", "up", "--state-dir", str(tmp_path), "--https-port", str(port),
             "--http-port", "0", "--prometheus-port", "0"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"port {port} on 127.0.0.1 (https) is in use: choose another with --https-port N" in done.stderr
    assert "local down" in done.stderr  # in case an earlier sandbox holds it
    assert "logs in" not in done.stderr  # nothing ran, so no log folder is pointed at
    assert not (tmp_path / "state.json").exists()
