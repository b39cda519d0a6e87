"""The rendered gateway run by the real nginx, in front of two small HTTP upstreams on 127.0.0.1.

Checks what the gateway itself decides: authentication, admin routes, body limit, rate limits, shedding,
retry on another node, streaming and TLS. (The full data plane with real Ollama is tested in tests/e2e.)
"""

from __future__ import annotations

import json
import ssl
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from render_tools import NGINX, make_prefix, nginx_user, require_tool

from fleet.config import Client
from fleet.local.processes import free_port
from fleet.model_names import short_name
from fleet.render import nginx as ng
from fleet.stack_file import load_stack

pytestmark = [pytest.mark.e2e, pytest.mark.tools]

KEYS = {"alpha": "alpha-key-0123456789abcdef", "beta": "beta-key-0123456789abcdef"}
ADMIN_KEY = "admin-key-0123456789abcdef"
RETRY_AFTER = 7
MODEL = "smollm2:135m"  # the dev stack's model, served by group `cpu`
MODEL_ALIAS = "chat:latest"  # the dev stack's alias of MODEL
SECOND_MODEL = "tiny-embed:1m"  # served by group `embed` in the routing tests
SECOND_ALIAS = "embeddings"  # its alias (`embeddings:latest`)
WAIT_S = 10  # upper bound of every wait in these tests


class Upstream:
    """A stand-in node: records requests, answers NDJSON in chunks, can hold requests or answer 503."""

    def __init__(self, name: str, model: str = MODEL) -> None:
        self.name = name
        self.model = model
        self.mode = "ok"  # ok | busy
        self.requests: list[dict] = []
        self.hold = threading.Event()  # when `holding`, requests wait for it before answering
        self.holding = False
        self.gate = threading.Event()  # streaming test: the second chunk waits for the client to read the first
        self.gated = False
        self.gate_released_in_time: bool | None = None
        self.lock = threading.Lock()
        upstream = self

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
                body = self.rfile.read(length) if length else b""
                with upstream.lock:
                    upstream.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if upstream.holding:
                    upstream.hold.wait(WAIT_S)
                if self.path in ("/api/tags", "/api/ps", "/v1/models") and upstream.mode == "ok":
                    item = {"name": upstream.model, "model": upstream.model, "node": upstream.name}
                    listing = {"object": "list", "data": [{"id": upstream.model, "object": "model"}]} \
                        if self.path == "/v1/models" else {"models": [item]}
                    payload = json.dumps(listing).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if upstream.mode == "busy":
                    payload = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._chunk({"node": upstream.name, "response": "hello", "done": False})
                if upstream.gated:
                    upstream.gate_released_in_time = upstream.gate.wait(WAIT_S)
                self._chunk({"node": upstream.name, "response": "", "done": True})
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _chunk(self, obj: dict) -> None:
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.hold.set()
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def gateway_settings(second_group: bool = False):
    base = load_stack("dev").settings
    if second_group:
        # a second group with a model of its own (a GGUF path: nginx never reads it)
        first = base.node_groups[0]
        model = first.models[0].model_copy(
            update={"name": "tiny-embed", "tag": "1m", "gguf": "/models/tiny.gguf", "aliases": [SECOND_ALIAS]}
        )
        second = first.model_copy(update={"name": "embed", "models": [model]})
        base = base.model_copy(update={"node_groups": [first, second]})
    gateway = base.gateway.model_copy(
        update={
            "clients": [Client(name="alpha", per_minute=30), Client(name="beta", tokens_per_day=1000)],
            "rate_limits": base.gateway.rate_limits.model_copy(
                update={"per_key_per_minute": 60000, "per_key_burst": 20, "per_ip_per_minute": 600000, "per_ip_burst": 1000}
            ),
            "queue_per_node": 0,  # max_conns = numParallel (2) x 1 model per node
            "max_body_size": "1k",
            "retry_after_s": RETRY_AFTER,
            "admin_cidrs": ["127.0.0.1/32"],
            "client_cidrs": ["127.0.0.0/8"],
        }
    )
    return base.model_copy(update={"gateway": gateway})


class Gateway:
    def __init__(
        self,
        root: Path,
        upstreams: list[Upstream],
        settings=None,
        embed: list[Upstream] | None = None,
        tls: bool = True,
        **plan_options,
    ) -> None:
        binary = require_tool(NGINX, "nginx")
        self.settings = settings or gateway_settings(second_group=embed is not None)
        groups = {"cpu": [u.address for u in upstreams]}
        if embed is not None:
            groups["embed"] = [u.address for u in embed]
        paths = make_prefix(root)
        self.https_port, self.http_port, status_port = free_port(), free_port(), free_port()
        self.plan = ng.build_gateway_plan(
            self.settings,
            groups,
            paths=paths,
            tls=tls,
            listen_address="127.0.0.1",
            https_port=self.https_port,
            http_port=self.http_port,
            status_listen=f"127.0.0.1:{status_port}",
            user=nginx_user(),
            worker_processes="2",
            **plan_options,
        )
        (root / "nginx.conf").write_text(ng.render_nginx(self.plan))
        Path(paths.api_keys_include).write_text(ng.render_api_keys(KEYS, ADMIN_KEY))
        self.access_log = Path(paths.access_log)
        self.tls = ssl.create_default_context(cafile=paths.certificate)
        self.process = subprocess.Popen(
            [binary, "-c", str(root / "nginx.conf"), "-p", str(root), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.base = f"https://127.0.0.1:{self.https_port}" if tls else f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if httpx.get(f"{self.base}/health", verify=self.tls, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {self.process.stderr.read().decode()}")
            time.sleep(0.05)

    def client(self, key: str | None = None, local_address: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.HTTPTransport(verify=self.tls, local_address=local_address)
        return httpx.Client(base_url=self.base, headers=headers, transport=transport, timeout=WAIT_S)

    def log(self) -> list[dict]:
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(WAIT_S)


@pytest.fixture
def nodes():
    pair = [Upstream("a"), Upstream("b")]
    yield pair
    for node in pair:
        node.stop()


@pytest.fixture
def gateway(tmp_path, nodes):
    gw = Gateway(tmp_path, nodes)
    yield gw
    gw.stop()


def _error(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_authentication(gateway, nodes):
    with gateway.client() as anonymous:
        response = anonymous.post("/api/generate", json={"model": MODEL})
        assert response.status_code == 401 and "API key" in _error(response)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/nope").status_code == 401  # no route discovery without a key
        assert anonymous.get("/health").json() == {"status": "ok"}
        wrong = anonymous.post("/api/generate", json={"model": MODEL}, headers={"Authorization": "Bearer " + KEYS["beta"].upper()})
        assert wrong.status_code == 401  # keys are case-sensitive
        by_header = anonymous.post("/api/generate", json={"model": MODEL}, headers={"X-API-Key": KEYS["beta"]})
        assert by_header.status_code == 200
    with gateway.client(KEYS["beta"]) as beta:
        assert beta.post("/v1/chat/completions", json={"model": MODEL}).status_code == 200
        assert beta.get("/nope").status_code == 404 and _error(beta.get("/nope")) == "not found"
    seen = [r["headers"] for node in nodes for r in node.requests]
    assert len(seen) == 2
    for headers in seen:
        lowered = {k.lower(): v for k, v in headers.items()}
        assert "authorization" not in lowered and "x-api-key" not in lowered
        assert lowered["x-fleet-client"] == "beta" and lowered["host"] == "localhost"
    logged = {entry["client"] for entry in gateway.log()}
    assert logged == {"", "beta"}
    assert all(KEYS["beta"] not in line for line in gateway.access_log.read_text().splitlines())


def test_admin_routes(gateway, nodes):
    with gateway.client(KEYS["beta"]) as beta:
        for route in ng.ADMIN_ROUTES + ("/api/blobs/sha256:0123",):
            response = beta.post(route, json={})
            assert response.status_code == 403, route
            # The body says why, and what would be allowed.
            assert "admin route" in _error(response) and "needs the admin key" in _error(response), route
    with gateway.client(ADMIN_KEY, local_address="127.0.0.2") as outside:
        response = outside.post("/api/pull", json={})
        assert response.status_code == 403  # admin key, but not from an admin CIDR
        assert "only from an admin network (gateway.adminCidrs)" in _error(response)
    assert not any(node.requests for node in nodes)
    with gateway.client(ADMIN_KEY) as admin:
        assert admin.post("/api/pull", json={"model": MODEL}).status_code == 200
    assert [r["path"] for node in nodes for r in node.requests] == ["/api/pull"]


def test_body_limit(gateway, nodes):
    with gateway.client(KEYS["beta"]) as beta:
        response = beta.post("/api/chat", content=b"x" * 2048)
        assert response.status_code == 413 and "1k" in _error(response)
    assert not any(node.requests for node in nodes)


def test_rate_limit_per_key(gateway):
    with gateway.client(KEYS["alpha"]) as alpha, gateway.client(KEYS["beta"]) as beta:
        statuses = [alpha.get("/api/version").status_code for _ in range(30)]
        assert statuses[0] == 200 and 429 in statuses
        limited = alpha.get("/api/version")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == str(RETRY_AFTER) and "rate limit" in _error(limited)
        assert beta.get("/api/version").status_code == 200  # another key is still served
        assert gateway.client().get("/health").status_code == 200


def test_shedding_when_every_node_is_full(gateway, nodes):
    max_conns = gateway.plan.max_conns_by_group()["cpu"]
    assert max_conns == 2
    for node in nodes:
        node.holding = True
    held: list[int] = []

    def slow_request() -> None:
        with gateway.client(KEYS["beta"]) as c:
            held.append(c.post("/api/generate", json={"model": MODEL}).status_code)

    threads = [threading.Thread(target=slow_request) for _ in range(max_conns * len(nodes))]
    for thread in threads:
        thread.start()
    wait_until(lambda: sum(len(n.requests) for n in nodes) == len(threads), "every slot to be taken")
    with gateway.client(KEYS["beta"]) as beta:
        shed = beta.post("/api/generate", json={"model": MODEL})
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == str(RETRY_AFTER) and "busy" in _error(shed)
        assert gateway.client().get("/health").status_code == 200  # health keeps answering
    for node in nodes:
        node.hold.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert held == [200] * len(threads)
    assert sum(len(n.requests) for n in nodes) == len(threads)  # the shed request reached no node


def test_retry_on_another_node_before_the_first_byte(gateway, nodes):
    a, b = nodes
    b.stop()  # connection refused
    with gateway.client(KEYS["beta"]) as beta:
        statuses = [beta.post("/api/chat", json={"model": MODEL}).status_code for _ in range(6)]
    assert statuses == [200] * 6
    retried = [e for e in gateway.log() if "," in e["upstream_addr"]]
    assert retried and all(e["status"] == 200 for e in retried)

    a.mode = "busy"  # Ollama's queue is full on the only node left
    with gateway.client(KEYS["beta"]) as beta:
        busy = beta.post("/api/chat", json={"model": MODEL})
    assert busy.status_code == 503 and busy.headers["retry-after"] == str(RETRY_AFTER)
    # a answered 503 and b is marked failed: no node left to try
    assert "busy" in _error(busy)


def test_busy_node_is_skipped(gateway, nodes):
    a, b = nodes
    a.mode = b.mode = "busy"  # both queues full: the last node's own 503 reaches the client, with Retry-After
    with gateway.client(KEYS["beta"]) as beta:
        busy = beta.post("/api/generate", json={"model": MODEL})
    assert busy.status_code == 503 and busy.headers["retry-after"] == str(RETRY_AFTER)
    assert "maximum pending requests exceeded" in _error(busy)
    assert len(a.requests) == len(b.requests) == 1  # tried on both nodes before giving up

    b.mode = "ok"
    with gateway.client(KEYS["beta"]) as beta:
        answers = [beta.post("/api/generate", json={"model": MODEL}) for _ in range(4)]
    assert [r.status_code for r in answers] == [200] * 4
    assert {json.loads(r.text.splitlines()[0])["node"] for r in answers} == {"b"}


def test_streaming_is_not_buffered(gateway, nodes):
    for node in nodes:
        node.gated = True
    with gateway.client(KEYS["beta"]) as beta:
        with beta.stream("POST", "/api/generate", json={"model": MODEL, "stream": True}) as response:
            lines = response.iter_lines()
            first = json.loads(next(lines))
            assert first["done"] is False
            for node in nodes:
                node.gate.set()  # the upstream sends the rest only now
            rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["done"] is True
    served = next(n for n in nodes if n.requests)
    assert served.gate_released_in_time is True


def test_plain_http_without_a_domain_is_refused_not_redirected(gateway):
    """No configured name: nothing safe to redirect to (the Host header is the client's), so a JSON 400."""
    plain = httpx.get(f"http://127.0.0.1:{gateway.http_port}/api/tags", headers={"Host": "evil.example"}, follow_redirects=False)
    assert plain.status_code == 400 and "location" not in plain.headers
    assert f"use https:// on port {gateway.https_port}" in _error(plain)
    assert httpx.get(f"http://127.0.0.1:{gateway.http_port}/health").status_code == 200


# ---- routing by model: two groups behind one URL ----------------------------------------------------


@pytest.fixture
def embed_node():
    node = Upstream("c", model=SECOND_MODEL)
    yield node
    node.stop()


@pytest.fixture
def routed(tmp_path, nodes, embed_node):
    """Group `cpu` (nodes a, b) serves MODEL, group `embed` (node c) serves SECOND_MODEL."""
    gw = Gateway(tmp_path, nodes, embed=[embed_node])
    yield gw
    gw.stop()


def _served_by(response: httpx.Response) -> str:
    return json.loads(response.text.splitlines()[0])["node"]


# Spellings clients use, and the model each means (Ollama's defaults: registry.ollama.ai, library, latest).
SPELLINGS = [
    (MODEL, MODEL),
    ("library/smollm2:135m", MODEL),
    ("registry.ollama.ai/library/smollm2:135m", MODEL),
    ("https://registry.ollama.ai/library/smollm2:135m", MODEL),
    ("  smollm2:135m  ", MODEL),
    ("smollm2:135m:local", MODEL),
    (SECOND_MODEL, SECOND_MODEL),
    ("REGISTRY.ollama.ai/Library/tiny-embed:1m", SECOND_MODEL),  # host and namespace are case-insensitive
    ("tiny-embed", None),  # means tiny-embed:latest, which no group serves
    ("Smollm2:135m", None),  # model and tag are file names: case-sensitive, as in Ollama
    ("smollm2:135m:cloud", None),
    ("other/smollm2:135m", None),
    ("hf.co/org/smollm2:135m", None),
]


@pytest.mark.parametrize("spelling, meant", SPELLINGS, ids=[s for s, _ in SPELLINGS])
def test_names_are_read_as_ollama_reads_them(spelling, meant):
    """The Python rule that builds the routing table agrees with the router's on every spelling (the
    router's side is exercised on the real nginx in test_every_model_route_goes_to_its_group)."""
    assert (short_name(spelling) == meant) if meant else short_name(spelling) not in (MODEL, SECOND_MODEL)


def test_every_model_route_goes_to_its_group(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        for route in ng.MODEL_BODY_ROUTES:
            for spelling, meant in SPELLINGS:
                body = json.dumps({"model": spelling, "prompt": "é", "stream": False}).encode()
                response = beta.post(route, content=body)
                if meant is None:
                    assert response.status_code == 404, (route, spelling)
                    continue
                assert response.status_code == 200, (route, spelling, response.text)
                expected = {"c"} if meant == SECOND_MODEL else {"a", "b"}
                assert _served_by(response) in expected, (route, spelling)
                last = next(n for n in [*nodes, embed_node] if n.name == _served_by(response)).requests[-1]
                assert last["path"] == route and last["body"] == body  # the body goes on byte for byte
        # /api/show also reads the older `name` field, as Ollama does
        shown = beta.post("/api/show", json={"name": SECOND_MODEL})
        assert shown.status_code == 200 and _served_by(shown) == "c"
        by_path = beta.get(f"/v1/models/{SECOND_MODEL}")
        assert by_path.status_code == 200 and _served_by(by_path) == "c"
        assert embed_node.requests[-1]["path"] == f"/v1/models/{SECOND_MODEL}"
    # the access log names the group that served each request
    logged = [(e["uri"], e["group"], e["upstream_addr"]) for e in routed.log() if e["status"] == 200]
    addresses = {"cpu": {nodes[0].address, nodes[1].address}, "embed": {embed_node.address}}
    assert logged and all(address in addresses[group] for _, group, address in logged)
    assert {group for _, group, _ in logged} == {"cpu", "embed"}


def test_an_alias_goes_to_its_models_group_unchanged(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        for route in ng.MODEL_BODY_ROUTES:
            for spelling in (SECOND_ALIAS, f"{SECOND_ALIAS}:latest", f"registry.ollama.ai/library/{SECOND_ALIAS}"):
                body = json.dumps({"model": spelling, "stream": False}).encode()
                response = beta.post(route, content=body)
                assert response.status_code == 200 and _served_by(response) == "c", (route, spelling)
                # the node knows the alias as a name of the model: the body goes on byte for byte
                assert embed_node.requests[-1]["path"] == route and embed_node.requests[-1]["body"] == body
        by_path = beta.get(f"/v1/models/{SECOND_ALIAS}")
        assert by_path.status_code == 200 and embed_node.requests[-1]["path"] == f"/v1/models/{SECOND_ALIAS}"
        # another tag of the alias is another name, which no group serves
        assert beta.post("/api/chat", json={"model": f"{SECOND_ALIAS}:v2"}).status_code == 404
    assert not any(n.requests for n in nodes)
    assert {e["group"] for e in routed.log() if e["status"] == 200} == {"embed"}


def test_unknown_model_is_404_with_the_served_list_and_no_node_asked(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        native = beta.post("/api/chat", json={"model": "llama3.1:8b", "messages": []})
        openai = beta.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
        by_path = beta.get("/v1/models/gpt-4o")
    assert native.status_code == openai.status_code == by_path.status_code == 404
    assert native.headers["content-type"].startswith("application/json")
    for response in (native, openai, by_path):  # every name a client may send, aliases included
        assert response.json()["models"] == sorted([MODEL, MODEL_ALIAS, SECOND_MODEL, f"{SECOND_ALIAS}:latest"])
    assert "llama3.1:8b" in native.json()["error"] and MODEL in native.json()["error"]
    # OpenAI clients read an error object
    assert openai.json()["error"]["code"] == "model_not_found" and "gpt-4o" in openai.json()["error"]["message"]
    assert not any(n.requests for n in [*nodes, embed_node])


def test_bodies_without_a_model_are_400_and_the_body_limit_comes_first(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        for body in (b"not json", b"", b"[]", b"null", b'{"prompt": "hi"}', b'{"model": ""}', b'{"model": 42}',
                     b'{"model": "   "}'):
            response = beta.post("/api/generate", content=body)
            assert response.status_code == 400, body
            message = _error(response)
            assert ("JSON" in message or "body" in message or "model is required" in message), body
        assert "not valid JSON" in _error(beta.post("/api/generate", content=b"{oops"))
        assert "model is required" in _error(beta.post("/api/chat", json={"messages": []}))
        openai = beta.post("/v1/embeddings", content=b"{oops")
        assert openai.status_code == 400 and "JSON" in openai.json()["error"]["message"]
        too_large = beta.post("/api/chat", content=b"x" * 2048)  # not JSON either: the limit is checked first
        assert too_large.status_code == 413
    assert not any(n.requests for n in [*nodes, embed_node])


def test_model_lists_are_the_union_of_every_group(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        for route, items, key in (("/api/tags", "models", "model"), ("/api/ps", "models", "model"),
                                  ("/v1/models", "data", "id")):
            response = beta.get(route)
            assert response.status_code == 200 and "x-fleet-unavailable-groups" not in response.headers
            assert sorted(item[key] for item in response.json()[items]) == sorted([MODEL, SECOND_MODEL]), route
        assert beta.get("/v1/models").json()["object"] == "list"
        # a group with no node answering is left out, and named
        embed_node.mode = "busy"
        partial = beta.get("/api/tags")
        assert partial.status_code == 200 and partial.headers["x-fleet-unavailable-groups"] == "embed"
        assert [m["model"] for m in partial.json()["models"]] == [MODEL]
        # no group at all: 503 with Retry-After, like any request no node could take
        for node in nodes:
            node.mode = "busy"
        none = beta.get("/v1/models")
        assert none.status_code == 503 and none.headers["retry-after"] == str(RETRY_AFTER)
        assert none.headers["x-fleet-unavailable-groups"] == "cpu,embed" and "no node" in _error(none)
    assert {e["group"] for e in routed.log() if e["uri"] == "/api/tags"} == {"cpu,embed"}


def test_shedding_and_max_conns_are_per_group(routed, nodes, embed_node):
    max_conns = routed.plan.max_conns_by_group()
    for node in nodes:
        node.holding = True
    held: list[int] = []

    def slow_request() -> None:
        with routed.client(KEYS["beta"]) as c:
            held.append(c.post("/api/generate", json={"model": MODEL}).status_code)

    threads = [threading.Thread(target=slow_request) for _ in range(max_conns["cpu"] * len(nodes))]
    for thread in threads:
        thread.start()
    wait_until(lambda: sum(len(n.requests) for n in nodes) == len(threads), "every slot of group cpu to be taken")
    with routed.client(KEYS["beta"]) as beta:
        shed = beta.post("/api/generate", json={"model": MODEL})
        assert shed.status_code == 503 and "busy" in _error(shed)
        # the other group has its own nodes and its own max_conns
        other = beta.post("/api/generate", json={"model": SECOND_MODEL})
        assert other.status_code == 200 and _served_by(other) == "c"
    for node in nodes:
        node.hold.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert held == [200] * len(threads)


def test_routed_requests_count_once_against_the_rate_limit(routed):
    burst = routed.settings.gateway.rate_limits.per_key_burst
    with routed.client(KEYS["alpha"]) as alpha:  # 30 per minute: no new token within this test
        statuses = [alpha.post("/api/chat", json={"model": SECOND_MODEL}).status_code for _ in range(burst + 2)]
    # the rate plus the burst pass, then 429: the redirect to the group does not count a second time
    assert statuses[: burst + 1] == [200] * (burst + 1) and statuses[-1] == 429


def test_a_model_path_is_routed_once_against_the_rate_limit(routed, embed_node):
    burst = routed.settings.gateway.rate_limits.per_key_burst
    with routed.client(KEYS["alpha"]) as alpha:
        statuses = [alpha.get(f"/v1/models/{SECOND_MODEL}").status_code for _ in range(burst + 2)]
    assert statuses[: burst + 1] == [200] * (burst + 1) and statuses[-1] == 429
    assert len(embed_node.requests) == burst + 1


def test_paths_that_escape_the_model_route_reach_no_node(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        for target in (f"/v1/models/{SECOND_MODEL}/../../../api/pull", "/v1/models/..%2F..%2Fapi%2Fpull",
                       f"/v1/models/x/..%2F{SECOND_MODEL}%2F..%2F..%2F..%2Fapi%2Fdelete"):
            response = beta.request("GET", "/", extensions={"target": target.encode()})
            assert response.status_code in (403, 404), target
        # a path that normalises onto a served model reaches the group with the normalised path
        response = beta.request("GET", "/", extensions={"target": f"/v1/models/x/../{SECOND_MODEL}".encode()})
        assert response.status_code == 200 and embed_node.requests[-1]["path"] == f"/v1/models/{SECOND_MODEL}"
    assert [r["path"] for n in [*nodes, embed_node] for r in n.requests] == [f"/v1/models/{SECOND_MODEL}"]


def test_a_client_in_the_budget_map_is_refused_after_a_reload_and_others_are_not(gateway):
    """What fleet.budget writes, nginx enforces after SIGHUP: 429, the budget in JSON, Retry-After a date."""
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    from fleet.budget import decide, render_map, write_if_changed

    body = {"model": MODEL, "prompt": "hi", "stream": False}
    with gateway.client(KEYS["alpha"]) as alpha, gateway.client(KEYS["beta"]) as beta:
        assert beta.post("/api/generate", json=body).status_code == 200
        now = datetime.now(timezone.utc)
        decision = decide({"beta": 1500.0, "alpha": 10**9}, {"beta": 1000}, now)
        assert write_if_changed(Path(gateway.plan.paths.budget_dir) / "clients.map", render_map(decision))
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(lambda: beta.post("/api/generate", json=body).status_code == 429, "the reloaded map to apply")
        refused = beta.post("/v1/chat/completions", json=body)
        assert refused.status_code == 429
        assert refused.json()["budget"] == {
            "client": "beta", "tokensPerDay": 1000, "window": "UTC day", "resetsAt": decision.blocked["beta"]
        }
        assert parsedate_to_datetime(refused.headers["retry-after"]) > now
        assert beta.get("/api/tags").status_code == 200  # only inference is refused
        assert alpha.post("/api/generate", json=body).status_code == 200  # no budget: never refused
        # A rate-limited answer keeps its Retry-After in seconds.
        statuses = [alpha.get("/api/version") for _ in range(40)]
        limited = [r for r in statuses if r.status_code == 429]
        assert limited and limited[-1].headers["retry-after"] == str(RETRY_AFTER)
        assert gateway.client().post("/api/generate", json=body).status_code == 401
    errors = Path(gateway.plan.paths.error_log).read_text()
    assert "uninitialized" not in errors and "emerg" not in errors
