"""Alerts that reach someone: the loopback data plane with Debian's Alertmanager and a webhook receiver on
127.0.0.1. A killed node pages the receiver, then its recovery resolves the page; the rendered inhibition
and an `amtool` silence act on the real Alertmanager."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from fleet.local.dataplane import DataPlane
from fleet.render.alertmanager import NODE_DOWN_ALERT
from waiting import wait_until

pytestmark = pytest.mark.e2e

RECEIVER = "oncall-hook"


class Hook:
    """A webhook receiver: keeps every notification Alertmanager posts."""

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook.lock:
                    hook.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def alerts(self, name: str, status: str) -> list[dict]:
        with self.lock:
            return [
                alert
                for n in self.notifications
                for alert in n["alerts"]
                if alert["labels"]["alertname"] == name and alert["status"] == status
            ]


@pytest.fixture(scope="module")
def hook():
    receiver = Hook()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def plane(ollama_binary, tmp_path_factory, hook):
    """Two nodes, Prometheus evaluating every second, alerts routed to the webhook with short waits."""
    overrides = {
        "nodeGroups.0.count": 2,
        "monitoring.alerts.nodeDownFor": "3s",
        "monitoring.alerting.receivers": [{"name": RECEIVER, "kind": "webhook", "url": hook.url}],
        "monitoring.alerting.critical": [RECEIVER],
        "monitoring.alerting.warning": [RECEIVER],
        "monitoring.alerting.groupWait": "1s",
        "monitoring.alerting.groupInterval": "1s",
        "monitoring.alerting.repeatInterval": "1h",
    }
    data_plane = DataPlane(
        "dev",
        overrides,
        run_dir=tmp_path_factory.mktemp("alerting-plane"),
        models_dir=tmp_path_factory.mktemp("alerting-models"),
        ollama_binary=ollama_binary,
        scrape_interval="1s",
        node_exporter=False,
        nginx_exporter=False,
    )
    data_plane.start()
    yield data_plane
    data_plane.stop()
    assert not data_plane.leftovers()


def _post_alerts(plane, *labels: dict[str, str]) -> None:
    now = datetime.now(timezone.utc)
    body = [
        {"labels": label, "annotations": {"summary": "test"}, "startsAt": now.isoformat(),
         "endsAt": (now + timedelta(minutes=5)).isoformat()}
        for label in labels
    ]
    httpx.post(f"{plane.alertmanager_url}/api/v2/alerts", json=body, timeout=10).raise_for_status()


def _alert_state(plane, group: str) -> dict[str, dict]:
    alerts = httpx.get(f"{plane.alertmanager_url}/api/v2/alerts", params={"filter": f'group="{group}"'}, timeout=10).json()
    return {a["labels"]["alertname"]: a["status"] for a in alerts}


def _node_down_at_the_hook(hook, status: str, instance: str, what: str) -> list[dict]:
    """Wait (up to 60 s) for the webhook to receive the node-down alert of `instance` with `status`."""

    def received():
        found = [a for a in hook.alerts(NODE_DOWN_ALERT, status) if a["labels"].get("instance") == instance]
        return bool(found), found

    return wait_until(received, what, 60)


def test_a_killed_node_pages_the_receiver_then_resolves(plane, hook):
    plane.wait_for_targets(timeout=30)
    victim = plane.nodes[1]
    instance = victim.metrics_url.removeprefix("http://").removesuffix("/metrics")
    assert not hook.alerts(NODE_DOWN_ALERT, "firing")
    plane.kill(victim.name)
    firing = _node_down_at_the_hook(hook, "firing", instance, "the node-down page at the webhook")
    labels = firing[0]["labels"]
    assert labels["severity"] == "critical" and labels["group"] == victim.group.name
    assert instance in firing[0]["annotations"]["summary"]
    # Only the dead node pages: the survivor is not reported.
    paged = {a["labels"].get("instance") for a in hook.alerts(NODE_DOWN_ALERT, "firing") if a["labels"].get("job")}
    assert paged == {instance}
    with hook.lock:
        assert all(n["receiver"] == RECEIVER for n in hook.notifications)

    plane.restart(victim.name)
    resolved = _node_down_at_the_hook(hook, "resolved", instance, "the resolution at the webhook")
    assert resolved[0]["endsAt"] > resolved[0]["startsAt"]


def test_node_down_inhibits_the_symptoms_of_its_group_only(plane):
    _post_alerts(
        plane,
        {"alertname": NODE_DOWN_ALERT, "severity": "critical", "group": "inhibit-a"},
        {"alertname": "OllamaTimeToFirstTokenHigh", "severity": "warning", "group": "inhibit-a", "model": "m"},
        {"alertname": "OllamaTimeToFirstTokenHigh", "severity": "warning", "group": "inhibit-b", "model": "m"},
    )

    def states():
        a, b = _alert_state(plane, "inhibit-a"), _alert_state(plane, "inhibit-b")
        ready = "OllamaTimeToFirstTokenHigh" in a and "OllamaTimeToFirstTokenHigh" in b and NODE_DOWN_ALERT in a
        return ready and a["OllamaTimeToFirstTokenHigh"]["inhibitedBy"] != [], (a, b)

    a, b = wait_until(states, "the inhibition to apply", 30)
    assert a["OllamaTimeToFirstTokenHigh"]["state"] == "suppressed"
    assert a[NODE_DOWN_ALERT]["state"] == "active"
    assert b["OllamaTimeToFirstTokenHigh"]["state"] == "active" and b["OllamaTimeToFirstTokenHigh"]["inhibitedBy"] == []


def test_an_amtool_silence_mutes_an_alert(plane):
    amtool = shutil.which("amtool")
    assert amtool, "amtool is installed with prometheus-alertmanager (scripts/apt-packages.txt)"
    added = subprocess.run(
        [amtool, f"--alertmanager.url={plane.alertmanager_url}", "silence", "add", "group=silenced",
         "--duration=10m", "--author=test", "--comment=maintenance of the silenced group"],
        capture_output=True, text=True, timeout=30,
    )
    assert added.returncode == 0, added.stderr
    silence_id = added.stdout.strip()
    _post_alerts(plane, {"alertname": "OllamaQueueGrowing", "severity": "warning", "group": "silenced", "node": "x"})
    state = wait_until(
        lambda: (lambda s: (bool(s) and s["OllamaQueueGrowing"]["silencedBy"] != [], s))(_alert_state(plane, "silenced")),
        "the silence to apply",
        30,
    )
    assert state["OllamaQueueGrowing"]["silencedBy"] == [silence_id]
    listed = subprocess.run([amtool, f"--alertmanager.url={plane.alertmanager_url}", "silence", "query", "-q"],
                            capture_output=True, text=True, timeout=30)
    assert silence_id in listed.stdout
