"""The token budget controller's decisions, its map file and its reload signal, and the usage report, against
a Prometheus stand-in that answers the HTTP API on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from fleet.exporters.budget import (
    BudgetController,
    controller_arguments,
    decide,
    main,
    parse_budget,
    render_map,
    usage_query,
    write_if_changed,
)
from fleet.usage import PrometheusApi, UsageError, counted_since, usage_report

NOON = datetime(2026, 12, 2, 12, 0, 30, tzinfo=timezone.utc)


class FakePrometheus:
    """Answers /api/v1/query with the vector set in `results` (by query substring); records queries."""

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.results: dict[str, list[tuple[dict, float]]] = {}
        self.queries: list[str] = []
        self.fail = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if user:
                    import base64

                    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        self.send_response(401)
                        self.end_headers()
                        return
                query = parse_qs(urlparse(self.path).query)["query"][0]
                outer.queries.append(query)
                if outer.fail:
                    body, status = {"status": "error", "errorType": "bad_data", "error": "boom"}, 400
                else:
                    found = next((v for k, v in outer.results.items() if k in query), [])
                    body, status = {"status": "success", "data": {"resultType": "vector", "result": [
                        {"metric": labels, "value": [0, str(value)]} for labels, value in found]}}, 200
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def prom():
    fake = FakePrometheus()
    yield fake
    fake.server.shutdown()


def test_the_window_is_the_utc_day_so_far():
    assert usage_query(NOON) == counted_since("ollama_inference_tokens_total", "43230s", "client")
    assert "offset 43230s" in usage_query(NOON) and usage_query(NOON).startswith("sum by (client) (")
    assert usage_query(NOON.replace(hour=0, minute=0, second=0)).endswith("[1s]))")


def test_clients_at_or_over_their_budget_are_blocked_until_midnight():
    decision = decide({"a": 100.0, "b": 99.5, "c": 5000.0, "unknown": 10**9}, {"a": 100, "b": 100, "d": 1}, NOON)
    assert decision.blocked == {"a": "Thu, 03 Dec 2026 00:00:00 GMT"}
    assert decision.usage == {"a": 100.0, "b": 99.5, "d": 0.0}
    text = render_map(decision)
    assert text.splitlines()[1:] == ['"a" "Thu, 03 Dec 2026 00:00:00 GMT";']


def test_the_map_is_written_and_nginx_reloaded_only_on_change(prom, tmp_path):
    map_file, pid_file = tmp_path / "budget" / "clients.map", tmp_path / "nginx.pid"
    # A stand-in nginx master that counts SIGHUPs, printing each as it handles it; it says when its handler is in
    # place, since a SIGHUP before that would end it, and says when SIGTERM ends it. It exits by itself after
    # 30 s, so a read never hangs.
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time\n"
        "n = 0\n"
        "def hup(*_):\n    global n; n += 1; print(n, flush=True)\n"
        "signal.signal(signal.SIGHUP, hup)\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('end', flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        pid_file.write_text(f"{child.pid}\n")
        controller = BudgetController(PrometheusApi(prom.url), {"team-a": 100}, map_file, pid_file)
        prom.results["increase"] = [({"client": "team-a"}, 50.0)]
        assert controller.run_once(NOON).blocked == {}
        assert child.stdout.readline().strip() == "1"  # the first map: one reload
        first = map_file.read_text()
        assert controller.run_once(NOON).blocked == {} and map_file.read_text() == first
        prom.results["increase"] = [({"client": "team-a"}, 150.0)]
        assert controller.run_once(NOON).blocked == {"team-a": "Thu, 03 Dec 2026 00:00:00 GMT"}
        assert child.stdout.readline().strip() == "2"  # team-a crossed its budget: the second
        assert '"team-a"' in map_file.read_text()
        controller.run_once(NOON)  # same decision: no further reload
        prom.fail = True  # Prometheus away: the last decision stays
        assert controller.run_once(NOON) is None and '"team-a"' in map_file.read_text()
    finally:
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=10)
    # No reload after the second one: a SIGHUP sent before the SIGTERM is handled before it (lower number first).
    assert out.split() == ["end"]
    assert oct(map_file.stat().st_mode & 0o777) == "0o644"


def test_write_if_changed_replaces_atomically(tmp_path):
    path = tmp_path / "m.map"
    assert write_if_changed(path, "a\n") and not write_if_changed(path, "a\n") and write_if_changed(path, "b\n")
    assert path.read_text() == "b\n" and [p.name for p in tmp_path.iterdir()] == ["m.map"]


def test_arguments_round_trip_and_bad_budgets_are_refused(tmp_path):
    args = controller_arguments("http://p:9090", {"b": 2, "a": 1}, "/m.map", "/n.pid", interval_s=5)
    assert args[-4:] == ["--budget", "a=1", "--budget", "b=2"]
    assert parse_budget("team-a=100") == ("team-a", 100)
    for bad in ("team-a", "Team=1", "a=0", "a=x"):
        with pytest.raises(Exception, match="CLIENT=TOKENS"):
            parse_budget(bad)
    with pytest.raises(SystemExit):
        main(["--prometheus-url", "http://p", "--map-file", "/m", "--nginx-pid-file", "/p", "--budget", "nope"])


def test_usage_report_by_client_and_model_with_basic_auth():
    fake = FakePrometheus(user="ops", password="s3cret")
    try:
        fake.results["ollama_inference_tokens_total"] = [
            ({"client": "a", "model": "m", "type": "prompt"}, 10.0),
            ({"client": "a", "model": "m", "type": "completion"}, 5.0),
            ({"client": "b", "model": "n", "type": "prompt"}, 1.0),
        ]
        fake.results["ollama_inference_requests_total"] = [({"client": "a", "model": "m"}, 2.0)]
        with pytest.raises(UsageError, match="wants credentials"):
            usage_report(PrometheusApi(fake.url), "24h")
        report = usage_report(PrometheusApi(fake.url, "ops", "s3cret"), "24h", clients=["a", "b", "idle"])
        rows = {(r["client"], r["model"]): r for r in report.to_json()["rows"]}
        assert rows[("a", "m")] == {"client": "a", "model": "m", "promptTokens": 10, "completionTokens": 5,
                                    "totalTokens": 15, "requests": 2}
        assert rows[("b", "n")]["totalTokens"] == 1 and ("idle", "-") in rows
        assert any("[24h]" in q for q in fake.queries)
        with pytest.raises(UsageError, match="must be a Prometheus duration"):
            usage_report(PrometheusApi(fake.url, "ops", "s3cret"), "yesterday")
    finally:
        fake.server.shutdown()
    with pytest.raises(UsageError, match="cannot be reached"):
        PrometheusApi("http://127.0.0.1:9").query("up")


def test_the_controller_process_stops_on_sigterm(prom, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.exporters.budget", *controller_arguments(prom.url, {"a": 1}, str(tmp_path / "c.map"),
                                                                     str(tmp_path / "none.pid"), interval_s=1)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 20
    while not (tmp_path / "c.map").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert (tmp_path / "c.map").read_text().startswith("# Clients over their token budget")
    assert "could not reload nginx" in out  # no pid file here: said, not fatal
