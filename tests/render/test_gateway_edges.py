"""The gateway's edges on the real nginx: plain HTTP, credentials in clear, slow and greedy clients, the admin
key's reach, and JSON bodies for the errors nginx raises itself."""

from __future__ import annotations

import socket
import ssl
import time

import httpx
import pytest
from gateway_bed import ADMIN_KEY, KEYS, MODEL, WAIT_S, Gateway, error_message, gateway_settings

from fleet.render import nginx as ng

pytestmark = [pytest.mark.e2e, pytest.mark.tools]

DOMAIN = "llm.example.com"
HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
PER_IP = 5
SLOW_CLIENTS = 300


def edge_settings():
    base = gateway_settings()
    gateway = base.gateway.model_copy(
        update={
            "domain": DOMAIN,
            "client_header_timeout_s": HEADER_TIMEOUT_S,
            "client_body_timeout_s": BODY_TIMEOUT_S,
            "max_connections_per_ip": PER_IP,
        }
    )
    return base.model_copy(update={"gateway": gateway})


@pytest.fixture
def gateway(tmp_path, nodes):
    gw = Gateway(tmp_path, nodes, edge_settings())
    yield gw
    gw.stop()


def plain(gateway, path: str, **kwargs) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{gateway.http_port}{path}", follow_redirects=False, timeout=WAIT_S, **kwargs)


def test_redirect_goes_to_the_configured_name_whatever_the_host_header(gateway):
    response = plain(gateway, "/api/tags?x=1", headers={"Host": "evil.example"})
    assert response.status_code == 308
    assert response.headers["location"] == f"https://{DOMAIN}:{gateway.https_port}/api/tags?x=1"


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_a_key_sent_over_plain_http_is_refused_not_redirected(gateway, nodes, header):
    value = f"Bearer {KEYS['beta']}" if header == "Authorization" else KEYS["beta"]
    response = plain(gateway, "/api/generate", headers={header: value})
    assert response.status_code == 403 and "location" not in response.headers
    assert "rotate the key" in error_message(response)
    assert not any(node.received for node in nodes)


def test_the_admin_key_is_refused_on_inference_and_serves_admin_and_read_routes(gateway, nodes):
    with gateway.client(ADMIN_KEY) as admin:
        for route in ("/api/generate", "/v1/chat/completions", "/groups/cpu/api/chat"):
            response = admin.post(route, json={"model": MODEL})
            assert response.status_code == 403, route
            assert "client key" in error_message(response)
        assert admin.get("/api/tags").status_code == 200
        assert admin.post("/api/pull", json={"model": MODEL}).status_code == 200
    with gateway.client(KEYS["beta"]) as beta:
        assert beta.post("/api/generate", json={"model": MODEL}).status_code == 200
    assert sorted(r.path for node in nodes for r in node.received) == ["/api/generate", "/api/pull", "/api/tags"]


def _raw(gateway, data: bytes, *, tls: bool = True) -> bytes:
    sock = socket.create_connection(("127.0.0.1", gateway.https_port if tls else gateway.http_port), timeout=WAIT_S)
    if tls:
        sock = gateway.tls.wrap_socket(sock, server_hostname="localhost")
    with sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _status_and_body(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "request_bytes,status,words",
    [
        (b"GARBAGE\r\n\r\n", 400, b"bad request"),
        (b"GET /health HTTP/1.1\r\n\r\n", 400, b"bad request"),  # HTTP/1.1 without Host
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, b"URI too long"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, b"headers too large"),
        (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505, b"version not supported"),
    ],
    ids=["garbage", "no-host", "long-uri", "big-header", "http-version"],
)
def test_errors_nginx_raises_itself_have_json_bodies(gateway, request_bytes, status, words):
    for tls in (True, False):
        got, body = _status_and_body(_raw(gateway, request_bytes, tls=tls))
        assert got == status, (tls, body)
        assert body.startswith(b'{"error":"') and words in body, body


def test_plain_http_on_the_https_port_gets_json(gateway):
    sock = socket.create_connection(("127.0.0.1", gateway.https_port), timeout=WAIT_S)
    with sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    got, body = _status_and_body(raw)
    assert got == 400 and b"use https://" in body


def test_hundreds_of_slow_headers_from_one_address_are_cut_and_others_still_served(gateway):
    """Slowloris from 127.0.0.1: TLS done, header never finished. Another address is served meanwhile, and
    every slow connection is closed by the gateway within the header timeout (plus scheduling slack)."""
    slow: list[ssl.SSLSocket] = []
    started = time.monotonic()
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", gateway.https_port), timeout=WAIT_S)
            tls = gateway.tls.wrap_socket(sock, server_hostname="localhost")
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            slow.append(tls)
        opened = time.monotonic() - started
        with gateway.client(KEYS["beta"], local_address="127.0.0.2") as other:
            assert other.post("/api/generate", json={"model": MODEL}).status_code == 200
            assert other.get("/health").status_code == 200

        deadline = started + opened + HEADER_TIMEOUT_S + WAIT_S
        cut = 0
        for tls in slow:
            tls.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = tls.recv(1024)
            except (ConnectionResetError, ssl.SSLError, OSError) as error:
                assert not isinstance(error, TimeoutError), "a slow connection was still open after the header timeout"
                data = b""
            assert data == b"", data  # closed without an answer (nginx logs 408)
            cut += 1
        assert cut == SLOW_CLIENTS
        assert time.monotonic() - started < opened + HEADER_TIMEOUT_S + WAIT_S
    finally:
        for tls in slow:
            tls.close()


def test_requests_in_progress_per_address_are_capped_and_others_still_served(gateway, nodes):
    """limit_conn: PER_IP stalled uploads from one address hold its slots; the next request from that address
    gets 429, another address is served, and the stalled bodies are cut by the body timeout."""
    stalled = []
    try:
        for _ in range(PER_IP):
            sock = socket.create_connection(("127.0.0.1", gateway.https_port), timeout=WAIT_S)
            tls = gateway.tls.wrap_socket(sock, server_hostname="localhost")
            tls.sendall(
                b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
                + KEYS["beta"].encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            stalled.append(tls)
        time.sleep(0.3)  # let nginx read the headers and count them
        with gateway.client(KEYS["beta"]) as same:
            refused = same.post("/api/generate", json={"model": MODEL})
            assert refused.status_code == 429 and "retry" in error_message(refused)
        with gateway.client(KEYS["beta"], local_address="127.0.0.2") as other:
            assert other.post("/api/generate", json={"model": MODEL}).status_code == 200
        for tls in stalled:
            tls.settimeout(BODY_TIMEOUT_S + WAIT_S)
            try:
                tls.recv(1024)  # 408 or a plain close, after the body timeout
            except (ConnectionResetError, ssl.SSLError):
                pass
        with gateway.client(KEYS["beta"]) as same:
            assert same.post("/api/generate", json={"model": MODEL}).status_code == 200
    finally:
        for tls in stalled:
            tls.close()
    assert all(r.path == "/api/generate" for node in nodes for r in node.received)
    assert ng.INFERENCE_ROUTES  # the routes the admin-key check is built from
