"""Grafana behind the real nginx gateway: a small stand-in plays Grafana upstream on 127.0.0.1.

nginx's `geo` sees loopback clients as 127.0.0.1 (or 127.0.0.2 when the client binds it), so the admin ranges
are chosen around those two addresses.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from gateway_bed import KEYS, MODEL, WAIT_S, Gateway, error_message, gateway_settings, node

pytestmark = [pytest.mark.e2e, pytest.mark.tools]

ADMIN = "127.0.0.1"
OTHER = "127.0.0.2"


class StandInGrafana:
    """Answers every path with what it received; a websocket upgrade gets 101, then an echo of the bytes."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        grafana = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with grafana.lock:
                    grafana.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    self.send_response(101)
                    self.send_header("Upgrade", "websocket")
                    self.send_header("Connection", "Upgrade")
                    self.end_headers()
                    self.wfile.flush()
                    while data := self.connection.recv(4096):  # echo until the client closes
                        self.connection.sendall(data)
                    self.close_connection = True
                    return
                payload = json.dumps({"path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def settings_with(client_cidrs: list[str], admin_cidrs: list[str]):
    base = gateway_settings()
    gateway = base.gateway.model_copy(update={"client_cidrs": client_cidrs, "admin_cidrs": admin_cidrs})
    return base.model_copy(update={"gateway": gateway})


@pytest.fixture
def grafana():
    stand_in = StandInGrafana()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def nodes():
    fake = node("a")
    yield [fake]
    fake.stop_thread()


@pytest.fixture
def gateway(tmp_path, nodes, grafana):
    # 127.0.0.1 is an admin address, 127.0.0.2 only a client one
    gw = Gateway(tmp_path, nodes, settings_with(["127.0.0.0/8"], [f"{ADMIN}/32"]), grafana_upstream=grafana.address)
    yield gw
    gw.stop()


def test_an_admin_address_reaches_grafana_without_a_key_and_with_the_path_kept(gateway, grafana, nodes):
    with gateway.client(local_address=ADMIN) as browser:
        response = browser.get("/grafana/api/dashboards/uid/x?orgId=1")
        assert response.status_code == 200 and response.json() == {"path": "/grafana/api/dashboards/uid/x?orgId=1"}
        assert browser.get("/grafana").json() == {"path": "/grafana"}  # Grafana itself redirects to the slash
        login = browser.post("/grafana/login", json={"user": "admin"}, headers={"X-API-Key": KEYS["beta"]})
        assert login.status_code == 200
    seen = [r for r in grafana.requests]
    assert [(r["method"], r["path"]) for r in seen] == [
        ("GET", "/grafana/api/dashboards/uid/x?orgId=1"),
        ("GET", "/grafana"),
        ("POST", "/grafana/login"),
    ]
    for request in seen:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        # the Host the browser asked for (Grafana's CSRF and Live origin checks compare it), the scheme it used
        assert headers["host"] == f"127.0.0.1:{gateway.https_port}"
        assert headers["x-forwarded-proto"] == "https" and headers["x-forwarded-for"] == ADMIN
        # the gateway's key header and client name never reach Grafana
        assert "x-api-key" not in headers and "x-fleet-client" not in headers
    assert not nodes[0].received


def test_other_addresses_get_the_json_403_and_grafana_sees_nothing(gateway, grafana):
    with gateway.client(local_address=OTHER) as outsider:
        for path in ("/grafana/", "/grafana/login", "/grafana"):
            response = outsider.get(path)
            assert response.status_code == 403, path
            assert error_message(response) == "forbidden: Grafana is served to admin networks only (gateway.adminCidrs)"
        # a client key changes nothing: Grafana is for admin networks, not for API clients
        with_key = outsider.get("/grafana/", headers={"Authorization": f"Bearer {KEYS['beta']}"})
        assert with_key.status_code == 403
    assert grafana.requests == []


def test_grafana_live_websocket_upgrade_passes_both_ways(gateway, grafana):
    sock = socket.create_connection(("127.0.0.1", gateway.https_port), timeout=WAIT_S, source_address=(ADMIN, 0))
    with gateway.tls.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(
            b"GET /grafana/api/live/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(4096)
            assert chunk, head
            head += chunk
        status_line, _, rest = head.partition(b"\r\n")
        assert status_line.split()[1] == b"101", head
        assert b"upgrade: websocket" in rest.lower()
        tls.sendall(b"frames both ways")
        echoed = head.partition(b"\r\n\r\n")[2]
        while len(echoed) < len(b"frames both ways"):
            chunk = tls.recv(4096)
            assert chunk, echoed
            echoed += chunk
        assert echoed == b"frames both ways"
    headers = {k.lower(): v for k, v in grafana.requests[0]["headers"].items()}
    assert headers["upgrade"] == "websocket" and headers["connection"].lower() == "upgrade"
    assert grafana.requests[0]["path"] == "/grafana/api/live/ws"


def test_the_plain_http_port_never_serves_grafana(gateway, grafana):
    response = httpx.get(f"http://127.0.0.1:{gateway.http_port}/grafana/login", follow_redirects=False, timeout=WAIT_S)
    # as every path there: a redirect to the configured name, or (without one) a JSON refusal
    if gateway.plan.server_name == "_":
        assert response.status_code == 400 and "use https://" in error_message(response)
    else:
        assert response.status_code == 308
        assert response.headers["location"].startswith(f"https://{gateway.plan.server_name}")
    assert grafana.requests == []


def test_a_stopped_grafana_is_a_json_503(gateway, grafana):
    grafana.stop()
    with gateway.client(local_address=ADMIN) as browser:
        response = browser.get("/grafana/")
    assert response.status_code == 503 and error_message(response).startswith("Grafana did not answer")


def test_admins_outside_the_client_networks_reach_grafana_and_nothing_else(tmp_path, nodes, grafana):
    gw = Gateway(tmp_path, nodes, settings_with([f"{ADMIN}/32"], [f"{OTHER}/32"]), grafana_upstream=grafana.address)
    try:
        with gw.client(local_address=OTHER) as admin:
            assert admin.get("/grafana/").json() == {"path": "/grafana/"}
            refused = admin.post("/api/generate", json={"model": MODEL}, headers={"Authorization": f"Bearer {KEYS['beta']}"})
            assert refused.status_code == 403 and "gateway.clientCidrs" in error_message(refused)
        with gw.client(KEYS["beta"], local_address=ADMIN) as client:
            assert client.post("/api/generate", json={"model": MODEL}).status_code == 200
            assert client.get("/grafana/").status_code == 403
    finally:
        gw.stop()
    assert [r["path"] for r in grafana.requests] == ["/grafana/"]


def test_without_tls_grafana_is_not_served(tmp_path, nodes, grafana):
    gw = Gateway(tmp_path, nodes, settings_with(["127.0.0.0/8"], [f"{ADMIN}/32"]), tls=False, grafana_upstream=grafana.address)
    try:
        assert gw.plan.grafana_upstream is None
        with gw.client(local_address=ADMIN) as anonymous:
            assert anonymous.get("/grafana/").status_code == 401  # like any unknown path: a key first
        with gw.client(KEYS["beta"], local_address=ADMIN) as client:
            response = client.get("/grafana/")
            assert response.status_code == 404 and error_message(response) == "not found"
    finally:
        gw.stop()
    assert grafana.requests == []
