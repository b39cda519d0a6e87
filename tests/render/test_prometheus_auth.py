"""Prometheus behind basic auth: the rendered web config passes `promtool check web-config`, and a real
Prometheus on loopback refuses its API without the password while the authenticated query and its own
self-scrape (password file) work."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from render_tools import PROMTOOL, require_tool

from fleet.local.processes import free_port
from fleet.render import prometheus, prometheus_web
from fleet.stack_file import load_stack

PROMETHEUS = Path("/usr/bin/prometheus")
WAIT_S = 30
SALT = "00112233445566778899aabbccddeeff"


def test_hash_is_bcrypt_of_the_password_and_stable_for_one_salt():
    import bcrypt

    first = prometheus_web.hash_password("s3cret-password", SALT)
    assert first == prometheus_web.hash_password("s3cret-password", SALT)  # no restart on every `pulumi up`
    assert bcrypt.checkpw(b"s3cret-password", first.encode())
    assert not bcrypt.checkpw(b"other", first.encode())
    assert "s3cret-password" not in prometheus_web.render_web_config(first)
    with pytest.raises(prometheus_web.WebConfigError):
        prometheus_web.hash_password("x", "short")
    with pytest.raises(prometheus_web.WebConfigError):
        prometheus_web.render_web_config("plain-password")


@pytest.mark.tools
def test_promtool_accepts_the_web_config(tmp_path):
    promtool = require_tool(PROMTOOL, "promtool")
    web = tmp_path / "web.yml"
    web.write_text(prometheus_web.render_web_config(prometheus_web.hash_password("pw-0123456789", SALT)))
    result = subprocess.run([promtool, "check", "web-config", str(web)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    web.write_text("basic_auth_users:\n  fleet: not-a-hash\n")
    assert subprocess.run([promtool, "check", "web-config", str(web)], capture_output=True, timeout=60).returncode != 0


@pytest.mark.e2e
@pytest.mark.tools
def test_unauthenticated_requests_are_refused_and_the_password_works(tmp_path):
    binary = require_tool(str(PROMETHEUS) if PROMETHEUS.exists() else None, "prometheus")
    password = secrets.token_urlsafe(24)
    port = free_port()
    (tmp_path / "password").write_text(password)
    (tmp_path / "web.yml").write_text(prometheus_web.render_web_config(prometheus_web.hash_password(password, SALT)))
    settings = load_stack("dev").settings
    plan = prometheus.build_prometheus_plan(
        settings,
        nodes=[],
        prometheus=f"127.0.0.1:{port}",
        rule_files=[],
        stack="auth-test",
        scrape_interval="1s",
        evaluation_interval="1s",
        self_password_file=str(tmp_path / "password"),
    )
    (tmp_path / "prometheus.yml").write_text(prometheus.render_prometheus(plan))
    args = prometheus.prometheus_args(
        plan,
        config_file=str(tmp_path / "prometheus.yml"),
        storage_path=str(tmp_path / "data"),
        listen_address=f"127.0.0.1:{port}",
        web_config_file=str(tmp_path / "web.yml"),
    )
    process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    auth = (prometheus_web.PROMETHEUS_USER, password)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if httpx.get(f"{base}/-/ready", auth=auth, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "Prometheus did not start"
            time.sleep(0.2)

        query = {"query": 'up{job="prometheus"}'}
        assert httpx.get(f"{base}/api/v1/query", params=query, timeout=5).status_code == 401
        assert httpx.get(f"{base}/api/v1/query", params=query, auth=(auth[0], "wrong"), timeout=5).status_code == 401
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401
        # Its own self-scrape sends the password from the file: `up` becomes 1.
        while True:
            response = httpx.get(f"{base}/api/v1/query", params=query, auth=auth, timeout=5)
            assert response.status_code == 200
            result = response.json()["data"]["result"]
            if result and result[0]["value"][1] == "1":
                break
            assert time.monotonic() < deadline, f"self-scrape never succeeded: {result}"
            time.sleep(0.5)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
