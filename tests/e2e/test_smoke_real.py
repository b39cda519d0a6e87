"""`fleet smoke` against the real loopback data plane (nginx gateway + Ollama + meters + Prometheus): it passes
on the gateway as deployed, and fails — with the failing checks named — on a wrong key, on an endpoint that
bypasses the gateway (a node's port reached directly: no keys, admin routes open), and on a metrics URL
that does not carry the metering series."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from fleet.local.processes import LOOPBACK
from fleet.render import nginx as ng
from fleet.ops.smoke import ADMIN_PROBES, BLOB_PROBE, TOKENS_METRIC

WAIT_S = "60"  # bound on the metrics poll; the session's Prometheus scrapes every second


def smoke(
    *args: str, api_key: str, admin_key: str | None = None, prometheus_password: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real command in its own process; keys travel in the environment, as CI passes them."""
    env = {**os.environ, "FLEET_API_KEY": api_key, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("FLEET_ADMIN_KEY", None)
    env.pop("FLEET_PROMETHEUS_PASSWORD", None)
    if admin_key:
        env["FLEET_ADMIN_KEY"] = admin_key
    if prometheus_password:
        env["FLEET_PROMETHEUS_PASSWORD"] = prometheus_password
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", "smoke", *args],
        env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def rows(output: str) -> dict[str, str]:
    """check name → PASS/FAIL/SKIP, read from the printed table."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 4 and cells[3] in ("PASS", "FAIL", "SKIP"):
            found[cells[0]] = cells[3]
    return found


def test_probes_cover_every_admin_route_of_the_gateway():
    probed = {path for _, path, _ in ADMIN_PROBES}
    assert set(ng.ADMIN_ROUTES) <= probed
    for prefix in ng.ADMIN_PREFIXES:
        assert any(path.startswith(prefix) for path in probed), prefix
    assert BLOB_PROBE.startswith("/api/blobs/")


@pytest.mark.e2e
@pytest.mark.parametrize("metrics", ["prometheus", "exporter"])
def test_smoke_passes_on_the_loopback_gateway(dataplane, served_model, metrics):
    key = dataplane.client_keys["beta"]
    if metrics == "prometheus":
        metrics_url = dataplane.prometheus_url
    else:
        # One exporter sees only its own node's traffic, and the gateway may send the smoke test's request to
        # the other node: give node 0 a request of its own first.
        node = dataplane.nodes[0]
        body = {"model": served_model, "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
        assert httpx.post(f"{node.meter_url}/api/generate", json=body, timeout=120).status_code == 200
        metrics_url = node.metrics_url
    done = smoke(
        dataplane.gateway_url, "--ca-cert", str(dataplane.ca_file), "--metrics-url", metrics_url,
        "--metrics-wait", WAIT_S,
        api_key=key, admin_key=dataplane.admin_key, prometheus_password=dataplane.prometheus_password,
    )
    output = done.stdout + done.stderr
    print(output)
    assert done.returncode == 0, output
    table = rows(output)
    assert table["health"] == "PASS"
    assert table["generate with no key"] == table["generate with wrong key"] == "PASS"
    assert table[f"generate {served_model}"] == "PASS"
    assert sum(1 for name, status in table.items() if "with client key" in name and status == "PASS") == len(ADMIN_PROBES)
    assert table["HEAD /api/blobs/… with admin key"] == "PASS"  # 127.0.0.1 is in dev's adminCidrs
    assert table[f"metrics {TOKENS_METRIC}"] == "PASS"
    assert "FAIL" not in table.values() and "SKIP" not in table.values()
    assert dataplane.prometheus_password not in output  # the password is never printed
    assert key not in output and dataplane.admin_key not in output


@pytest.mark.e2e
def test_smoke_fails_with_a_wrong_key(dataplane):
    done = smoke(dataplane.gateway_url, "--ca-cert", str(dataplane.ca_file), api_key="not-a-key-of-this-stack")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    table = rows(output)
    assert table["health"] == "PASS" and table["generate with no key"] == "PASS"
    assert table["list models"] == "FAIL"  # 401 for the key the caller believes in
    assert "smoke test failed" in output


@pytest.mark.e2e
def test_smoke_fails_on_an_endpoint_that_bypasses_the_gateway(dataplane, served_model):
    """A node's meter port reached directly — what a security group opening 11435 would expose."""
    node = dataplane.nodes[0]
    done = smoke(node.meter_url, "--model", served_model, api_key=dataplane.client_keys["beta"])
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    table = rows(output)
    assert table["generate with no key"] == "FAIL" and table["generate with wrong key"] == "FAIL"
    assert table[f"generate {served_model}"] == "PASS"  # it serves, but to anyone
    admin = {name: status for name, status in table.items() if "with client key" in name}
    assert len(admin) == len(ADMIN_PROBES) and set(admin.values()) == {"FAIL"}


@pytest.mark.e2e
def test_smoke_fails_when_the_metrics_do_not_carry_the_token_counter(dataplane):
    assert dataplane.nginx_exporter_port, "the session's data plane runs the nginx exporter"
    done = smoke(
        dataplane.gateway_url, "--ca-cert", str(dataplane.ca_file),
        "--metrics-url", f"http://{LOOPBACK}:{dataplane.nginx_exporter_port}/metrics", "--metrics-wait", "2",
        api_key=dataplane.client_keys["beta"],
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert rows(output)[f"metrics {TOKENS_METRIC}"] == "FAIL"
    assert "metric absent" in output
