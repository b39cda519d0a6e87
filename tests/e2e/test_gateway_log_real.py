"""The gateway log exporter on real nginx.

* Alone with nginx (rendered config, no node needed): the deployment's rotation script renames the access
  log and has nginx reopen it while requests keep coming, and the exporter still counts every one.
* On the loopback data plane: after real 401, 403, 413, 429, 503 (shed) and 200 answers, Prometheus'
  `fleet_gateway_refusals_total` grew by exactly the refusals the test received, reason by reason; the
  exporter's requests agree with nginx's own access log; the refusal-ratio alert's expression evaluates.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from fleet.exporters import gateway_log
from fleet.local.dataplane import NGINX_BINARY, _nginx_user
from fleet.local.processes import LOOPBACK, ManagedProcess, clean_env, free_port
from fleet.render import nginx as ng
from fleet.render import rules
from fleet.stack_file import load_stack
from metric_samples import parse_samples, total
from waiting import wait_until

pytestmark = pytest.mark.e2e

WAIT_S = 60
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    return parse_samples(httpx.get(url, timeout=10).text)


def _wait(condition, what: str):
    return wait_until(condition, what, WAIT_S)


# ---- rotation with real nginx -----------------------------------------------------------------------


def test_rotation_by_the_deployed_script_and_nginx_reopen_loses_no_request(tmp_path):
    if not Path(NGINX_BINARY).exists():
        pytest.fail("nginx is needed (scripts/bootstrap.sh installs it)")
    settings = load_stack("dev").settings
    prefix = tmp_path / "nginx"
    for folder in ("logs", "temp"):
        (prefix / folder).mkdir(parents=True)
    paths = ng.GatewayPaths.under(str(prefix))
    port = free_port()
    plan = ng.build_gateway_plan(
        settings, {"cpu": [f"{LOOPBACK}:{free_port()}"]}, paths=paths, tls=False, listen_address=LOOPBACK,
        http_port=port, status_listen=f"{LOOPBACK}:{free_port()}", user=_nginx_user(),
    )
    conf = prefix / "nginx.conf"
    conf.write_text(ng.render_nginx(plan))
    Path(paths.api_keys_include).write_text(ng.render_api_keys({"dev": "k" * 32}, "a" * 32))
    nginx_argv = [NGINX_BINARY, "-p", str(prefix), "-c", str(conf), "-e", paths.error_log]
    # The script the gateway container runs, with this nginx's reopen command and a small size limit.
    max_bytes = 4000  # about ten log lines
    script = tmp_path / "rotate.sh"
    script.write_text(ng.render_log_rotation(paths.access_log_file, max_bytes=max_bytes, interval_s=1,
                                             reopen=[*nginx_argv, "-s", "reopen"]))
    metrics_port = free_port()
    metrics_url = f"http://{LOOPBACK}:{metrics_port}/metrics"
    processes = [
        ManagedProcess("nginx", nginx_argv + ["-g", "daemon off;"], tmp_path / "nginx.out", env=clean_env()),
        ManagedProcess("rotate", ["sh", str(script), "--foreground"], tmp_path / "rotate.out", env=clean_env()),
        ManagedProcess(
            "gateway-log",
            [sys.executable, "-m", "fleet.exporters.gateway_log"]
            + gateway_log.exporter_arguments(paths.access_log_file, f"{LOOPBACK}:{metrics_port}", "gateway-0", ["dev"])
            + ["--poll-interval", "0.05"],
            tmp_path / "gateway-log.out",
            env=clean_env(),
        ),
    ]
    try:
        processes[0].start().wait_for_http(f"http://{LOOPBACK}:{port}/health", timeout=WAIT_S)
        processes[1].start()
        processes[2].start().wait_for_http(metrics_url, timeout=WAIT_S)
        sent = Counter()
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=TIMEOUT) as client:
            # About four seconds of traffic: several rotations happen while requests are logged.
            for i in range(240):
                sent[client.get("/api/tags").status_code] += 1
                time.sleep(0.015)
        assert sent == Counter({401: 240})
        samples = _wait(
            lambda: (lambda s: (total(s, "fleet_gateway_refusals_total", reason="unauthorized") == 240, s))(
                _samples(metrics_url)),
            "240 unauthorized requests counted",
        )
    finally:
        for process in reversed(processes):
            process.stop()
    rotations = total(samples, "fleet_gateway_log_file_events_total", event="rotations")
    print(f"\n240 requests over {rotations:.0f} rotations, all counted")
    assert rotations >= 2
    assert total(samples, "fleet_gateway_requests_total", client="unknown", status="401", route="read") == 240
    assert total(samples, "fleet_gateway_log_lines_total", result="malformed") == 0
    # Bounded on disk: the current file and one rotated file (the current one is missing only when the loop
    # was stopped between its rename and nginx's reopen).
    files = {p.name for p in (prefix / "logs").iterdir() if p.name.startswith("access.log")}
    assert "access.log.1" in files and files <= {"access.log", "access.log.1"}, files


# ---- exact refusals on the data plane -----------------------------------------------------------------


def _client(plane, key_of: str | None = "beta") -> httpx.Client:
    headers = plane.auth(key_of) if key_of else {}
    return httpx.Client(base_url=plane.gateway_url, headers=headers, verify=plane.verify(), timeout=TIMEOUT)


def _refusals(plane) -> dict[str, float]:
    data = plane.prometheus_query("sum by (reason) (fleet_gateway_refusals_total)")
    return {r["metric"]["reason"]: float(r["value"][1]) for r in data["result"]}


def _exporter_requests(plane) -> Counter:
    samples = _samples(plane.gateway_log_url)
    counts: Counter = Counter()
    for (name, labels), value in samples.items():
        if name == "fleet_gateway_requests_total":
            counts[int(dict(labels)["status"])] += value
    return counts


def _meter_inflight(plane) -> float:
    return sum(total(_samples(node.metrics_url), "ollama_inflight_requests") for node in plane.nodes)


def _shed(plane, model: str) -> list[int]:
    """Hold every node's max_conns with long streams, send requests the gateway must shed, release."""
    capacity = plane.gateway_plan.max_conns_by_group()["cpu"] * len(plane.nodes)
    release = threading.Event()
    held: list[int | str] = []
    body = {"model": model, "prompt": "Write a very long story about the sea.", "options": {"temperature": 0, "num_predict": 2000}}

    def hold() -> None:
        try:
            with _client(plane) as client, client.stream("POST", "/api/generate", json=body) as response:
                held.append(response.status_code)
                release.wait(WAIT_S)
        except httpx.HTTPError as exc:
            held.append(type(exc).__name__)

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(capacity)]
    statuses = []
    try:
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        _wait(lambda: (lambda n: (n == capacity, n))(_meter_inflight(plane)), f"{capacity} requests held on the nodes")
        with _client(plane) as client:
            for _ in range(3):
                statuses.append(client.post("/api/generate", json={"model": model, "prompt": "Hi", "stream": False}).status_code)
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT_S)
    assert held == [200] * capacity
    _wait(lambda: (lambda n: (n == 0, n))(_meter_inflight(plane)), "the held requests to end")
    return statuses


def _exporter_state(plane) -> tuple[int, dict[str, float]]:
    """Lines the exporter has read, and its refusal totals by reason, from its own /metrics."""
    samples = _samples(plane.gateway_log_url)
    reasons = {dict(labels)["reason"] for (name, labels) in samples if name == "fleet_gateway_refusals_total"}
    lines = total(samples, "fleet_gateway_log_lines_total")
    return int(lines), {reason: total(samples, "fleet_gateway_refusals_total", reason=reason) for reason in reasons}


def test_refusals_by_reason_are_exactly_the_answers_clients_got(dataplane, served_model):
    # Start from a settled state: the exporter has read every line nginx logged before this test, and Prometheus
    # holds its totals (an earlier test's last refusals may be logged but not read, or read but not scraped).
    def settled():
        lines, counted = _exporter_state(dataplane)
        scraped = _refusals(dataplane)
        return lines == len(dataplane.access_log()) and len(scraped) == 5 and scraped == counted, scraped

    before = _wait(settled, "Prometheus to hold the exporter's refusal totals of every logged line")
    before_requests = _exporter_requests(dataplane)
    log_before = len(dataplane.access_log())

    got: Counter = Counter()
    with _client(dataplane, None) as anonymous:
        for path in ("/api/tags", "/api/generate", "/v1/models"):
            got[anonymous.get(path).status_code] += 1  # 401
    with _client(dataplane, "beta") as beta:
        got[beta.post("/api/pull", json={"model": served_model}).status_code] += 1  # 403
        got[beta.request("DELETE", "/api/delete", json={"model": served_model}).status_code] += 1  # 403
        got[beta.post("/api/chat", json={"model": served_model, "messages": [
            {"role": "user", "content": "x" * (300 * 1024)}]}).status_code] += 1  # 413 (maxBodySize 256k)
        got[beta.get("/api/version").status_code] += 1  # 200
        got[beta.post("/api/generate", json={"model": served_model, "prompt": "Hi", "stream": False,
                                             "options": {"temperature": 0, "num_predict": 4}}).status_code] += 1  # 200
    with _client(dataplane, "gamma") as gamma:
        # gamma refills one request a minute and only this test uses it: its burst is used up here, then 429.
        while got[429] < 4:
            got[gamma.get("/api/version").status_code] += 1
            assert sum(got.values()) < 200
    for status in _shed(dataplane, served_model):
        got[status] += 1
    capacity = dataplane.gateway_plan.max_conns_by_group()["cpu"] * len(dataplane.nodes)
    got[200] += capacity  # the held streams, logged when they ended
    assert got[401] == 3 and got[403] == 2 and got[413] == 1 and got[503] == 3 and got[429] == 4
    expected = {
        "unauthorized": before["unauthorized"] + got[401],
        "forbidden": before["forbidden"] + got[403],
        "too_large": before["too_large"] + got[413],
        "rate_limited": before["rate_limited"] + got[429],
        "shed": before["shed"] + got[503],
    }
    after = _wait(lambda: (lambda v: (v == expected, v))(_refusals(dataplane)), f"refusals {expected}")
    print("\nrefusals received and counted: " + ", ".join(f"{r} +{after[r] - before[r]:.0f}" for r in after))

    # Every answer is counted once, by status, as nginx logged it.
    _wait(lambda: (lambda c: (c == got, c))(Counter(e["status"] for e in dataplane.access_log()[log_before:])),
          f"nginx to log {dict(got)}")
    _wait(lambda: (lambda r: (r == dict(got), r))(
        {s: v - before_requests.get(s, 0) for s, v in _exporter_requests(dataplane).items() if v > before_requests.get(s, 0)}),
        f"the exporter to count {dict(got)}")

    # The refusal-ratio alert's gateway part is a number now, and the alert fires exactly when it exceeds the
    # stack's threshold (both evaluated at one instant).
    at = time.time()
    ratio = _query_at(dataplane, rules.gateway_refusal_ratio("5m"), at)
    assert len(ratio) == 1 and 0 < ratio[0] <= 1, ratio
    alert = dict((a.name, a.expr) for a in rules.alerts(dataplane.settings))["RequestRefusalRatioHigh"]
    node_ratio = _query_at(dataplane, rules.node_refusal_ratio("5m"), at)
    threshold = dataplane.settings.monitoring.alerts.refusal_ratio
    firing = _query_at(dataplane, alert, at)
    print(f"gateway refusal ratio over 5m: {ratio[0]:.3f} (threshold {threshold}); node: {node_ratio}")
    assert bool(firing) == (ratio[0] > threshold or any(v > threshold for v in node_ratio))


def _query_at(plane, expr: str, at: float) -> list[float]:
    response = httpx.get(f"{plane.prometheus_url}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"},
                         auth=plane.prometheus_auth, timeout=10)
    body = response.json()
    assert body.get("status") == "success", body
    return [float(r["value"][1]) for r in body["data"]["result"]]
