"""The rendered gateway run by the real nginx, in front of fake Ollama nodes on 127.0.0.1 (gateway_bed.py).

Checks what the gateway itself decides: authentication, admin routes, body limit, rate limits, shedding,
retry on another node, streaming and TLS. (The full data plane with real Ollama is tested in tests/e2e.)
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx
import pytest
from gateway_bed import (
    ADMIN_KEY,
    KEYS,
    MODEL,
    MODEL_ALIAS,
    RETRY_AFTER,
    SECOND_ALIAS,
    SECOND_MODEL,
    WAIT_S,
    Gateway,
    error_message,
    node,
    served_by,
    wait_until,
)

from fleet.model_names import short_name
from fleet.render import nginx as ng

pytestmark = [pytest.mark.e2e, pytest.mark.tools]


@pytest.fixture
def gateway(tmp_path, nodes):
    gw = Gateway(tmp_path, nodes)
    yield gw
    gw.stop()


def test_authentication(gateway, nodes):
    with gateway.client() as anonymous:
        response = anonymous.post("/api/generate", json={"model": MODEL})
        assert response.status_code == 401 and "API key" in error_message(response)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/nope").status_code == 401  # no route discovery without a key
        assert anonymous.get("/health").json() == {"status": "ok"}
        wrong = anonymous.post("/api/generate", json={"model": MODEL}, headers={"Authorization": "Bearer " + KEYS["beta"].upper()})
        assert wrong.status_code == 401  # keys are case-sensitive
        by_header = anonymous.post("/api/generate", json={"model": MODEL}, headers={"X-API-Key": KEYS["beta"]})
        assert by_header.status_code == 200
    with gateway.client(KEYS["beta"]) as beta:
        assert beta.post("/v1/chat/completions", json={"model": MODEL}).status_code == 200
        assert beta.get("/nope").status_code == 404 and error_message(beta.get("/nope")) == "not found"
    seen = [r.headers for node in nodes for r in node.received]
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
            assert "admin route" in error_message(response) and "needs the admin key" in error_message(response), route
    with gateway.client(ADMIN_KEY, local_address="127.0.0.2") as outside:
        response = outside.post("/api/pull", json={})
        assert response.status_code == 403  # admin key, but not from an admin CIDR
        assert "only from an admin network (gateway.adminCidrs)" in error_message(response)
    assert not any(node.received for node in nodes)
    with gateway.client(ADMIN_KEY) as admin:
        assert admin.post("/api/pull", json={"model": MODEL}).status_code == 200
    assert [r.path for node in nodes for r in node.received] == ["/api/pull"]


def test_body_limit(gateway, nodes):
    with gateway.client(KEYS["beta"]) as beta:
        response = beta.post("/api/chat", content=b"x" * 2048)
        assert response.status_code == 413 and "1k" in error_message(response)
    assert not any(node.received for node in nodes)


def test_rate_limit_per_key(gateway):
    with gateway.client(KEYS["alpha"]) as alpha, gateway.client(KEYS["beta"]) as beta:
        statuses = [alpha.get("/api/version").status_code for _ in range(30)]
        assert statuses[0] == 200 and 429 in statuses
        limited = alpha.get("/api/version")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == str(RETRY_AFTER) and "rate limit" in error_message(limited)
        assert beta.get("/api/version").status_code == 200  # another key is still served
        assert gateway.client().get("/health").status_code == 200


def test_shedding_when_every_node_is_full(gateway, nodes):
    max_conns = gateway.plan.max_conns_by_group()["cpu"]
    assert max_conns == 2
    for node in nodes:
        node.hold()
    held: list[int] = []

    def slow_request() -> None:
        with gateway.client(KEYS["beta"]) as c:
            held.append(c.post("/api/generate", json={"model": MODEL}).status_code)

    threads = [threading.Thread(target=slow_request) for _ in range(max_conns * len(nodes))]
    for thread in threads:
        thread.start()
    wait_until(lambda: sum(len(n.received) for n in nodes) == len(threads), "every slot to be taken")
    with gateway.client(KEYS["beta"]) as beta:
        shed = beta.post("/api/generate", json={"model": MODEL})
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == str(RETRY_AFTER) and "busy" in error_message(shed)
        assert gateway.client().get("/health").status_code == 200  # health keeps answering
    for node in nodes:
        node.release()
    for thread in threads:
        thread.join(WAIT_S)
    assert held == [200] * len(threads)
    assert sum(len(n.received) for n in nodes) == len(threads)  # the shed request reached no node


def test_retry_on_another_node_before_the_first_byte(gateway, nodes):
    a, b = nodes
    b.stop_thread()  # connection refused
    with gateway.client(KEYS["beta"]) as beta:
        statuses = [beta.post("/api/chat", json={"model": MODEL}).status_code for _ in range(6)]
    assert statuses == [200] * 6
    retried = [e for e in gateway.log() if "," in e["upstream_addr"]]
    assert retried and all(e["status"] == 200 for e in retried)

    a.busy = True  # Ollama's queue is full on the only node left
    with gateway.client(KEYS["beta"]) as beta:
        busy = beta.post("/api/chat", json={"model": MODEL})
    assert busy.status_code == 503 and busy.headers["retry-after"] == str(RETRY_AFTER)
    # a answered 503 and b is marked failed: no node left to try
    assert "busy" in error_message(busy)


def test_busy_node_is_skipped(gateway, nodes):
    a, b = nodes
    a.busy = b.busy = True  # both queues full: the last node's own 503 reaches the client, with Retry-After
    with gateway.client(KEYS["beta"]) as beta:
        busy = beta.post("/api/generate", json={"model": MODEL})
    assert busy.status_code == 503 and busy.headers["retry-after"] == str(RETRY_AFTER)
    assert "maximum pending requests exceeded" in error_message(busy)
    assert len(a.received) == len(b.received) == 1  # tried on both nodes before giving up

    b.busy = False
    with gateway.client(KEYS["beta"]) as beta:
        answers = [beta.post("/api/generate", json={"model": MODEL}) for _ in range(4)]
    assert [r.status_code for r in answers] == [200] * 4
    assert {served_by(r) for r in answers} == {"b"}


def test_streaming_is_not_buffered(gateway, nodes):
    for node in nodes:
        node.gated = True
    with gateway.client(KEYS["beta"]) as beta:
        with beta.stream("POST", "/api/generate", json={"model": MODEL, "stream": True}) as response:
            lines = response.iter_lines()
            first = json.loads(next(lines))
            assert first["done"] is False
            for node in nodes:
                node.open_gate()  # the node sends the rest only now
            rest = [json.loads(line) for line in lines if line]
    # The first token arrived while the node held the second back (a buffering gateway would have timed out).
    assert [part["response"] for part in (first, *rest[:-1])] == ["hello", " there"] and rest[-1]["done"] is True


def test_plain_http_without_a_domain_is_refused_not_redirected(gateway):
    """No configured name: nothing safe to redirect to (the Host header is the client's), so a JSON 400."""
    plain = httpx.get(f"http://127.0.0.1:{gateway.http_port}/api/tags", headers={"Host": "evil.example"}, follow_redirects=False)
    assert plain.status_code == 400 and "location" not in plain.headers
    assert f"use https:// on port {gateway.https_port}" in error_message(plain)
    assert httpx.get(f"http://127.0.0.1:{gateway.http_port}/health").status_code == 200


# ---- routing by model: two groups behind one URL ----------------------------------------------------


@pytest.fixture
def embed_node():
    fake = node("c", SECOND_MODEL)
    yield fake
    fake.stop_thread()


@pytest.fixture
def routed(tmp_path, nodes, embed_node):
    """Group `cpu` (nodes a, b) serves MODEL, group `embed` (node c) serves SECOND_MODEL."""
    gw = Gateway(tmp_path, nodes, embed=[embed_node])
    yield gw
    gw.stop()


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
                assert served_by(response) in expected, (route, spelling)
                last = next(n for n in [*nodes, embed_node] if n.name == served_by(response)).received[-1]
                assert last.path == route and last.body == body  # the body goes on byte for byte
        # /api/show also reads the older `name` field, as Ollama does
        shown = beta.post("/api/show", json={"name": SECOND_MODEL})
        assert shown.status_code == 200 and served_by(shown) == "c"
        by_path = beta.get(f"/v1/models/{SECOND_MODEL}")
        assert by_path.status_code == 200 and served_by(by_path) == "c"
        assert embed_node.received[-1].path == f"/v1/models/{SECOND_MODEL}"
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
                assert response.status_code == 200 and served_by(response) == "c", (route, spelling)
                # the node knows the alias as a name of the model: the body goes on byte for byte
                assert embed_node.received[-1].path == route and embed_node.received[-1].body == body
        by_path = beta.get(f"/v1/models/{SECOND_ALIAS}")
        assert by_path.status_code == 200 and embed_node.received[-1].path == f"/v1/models/{SECOND_ALIAS}"
        # another tag of the alias is another name, which no group serves
        assert beta.post("/api/chat", json={"model": f"{SECOND_ALIAS}:v2"}).status_code == 404
    assert not any(n.received for n in nodes)
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
    assert not any(n.received for n in [*nodes, embed_node])


def test_bodies_without_a_model_are_400_and_the_body_limit_comes_first(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        for body in (b"not json", b"", b"[]", b"null", b'{"prompt": "hi"}', b'{"model": ""}', b'{"model": 42}',
                     b'{"model": "   "}'):
            response = beta.post("/api/generate", content=body)
            assert response.status_code == 400, body
            message = error_message(response)
            assert ("JSON" in message or "body" in message or "model is required" in message), body
        assert "not valid JSON" in error_message(beta.post("/api/generate", content=b"{oops"))
        assert "model is required" in error_message(beta.post("/api/chat", json={"messages": []}))
        openai = beta.post("/v1/embeddings", content=b"{oops")
        assert openai.status_code == 400 and "JSON" in openai.json()["error"]["message"]
        too_large = beta.post("/api/chat", content=b"x" * 2048)  # not JSON either: the limit is checked first
        assert too_large.status_code == 413
    assert not any(n.received for n in [*nodes, embed_node])


RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")


def test_what_the_stack_decides_cannot_be_set_by_a_request(routed, nodes, embed_node):
    """Runner options and keep_alive would reload or unload the model for every client of the node: refused
    on the bare routes and on a group's own routes, before any node is asked."""
    with routed.client(KEYS["beta"]) as beta:
        for option in RUNNER_OPTIONS:
            for route in ("/api/generate", "/groups/cpu/api/generate", "/groups/embed/api/embed"):
                body = {"model": MODEL, "prompt": "hi", "options": {"temperature": 0, option: 1}}
                response = beta.post(route, json=body)
                assert response.status_code == 400, (route, option, response.text)
                assert f"options.{option}" in error_message(response) and "leave it out" in error_message(response)
        for keep_alive in (0, -1, "24h"):
            response = beta.post("/api/chat", json={"model": SECOND_MODEL, "messages": [], "keep_alive": keep_alive})
            assert response.status_code == 400 and "keep_alive" in error_message(response)
        both = beta.post("/api/embed", json={"model": SECOND_MODEL, "input": "x", "keep_alive": 0, "options": {"num_ctx": 8}})
        assert "options.num_ctx, keep_alive" in error_message(both) and "leave them out" in error_message(both)
        # OpenAI clients read an error object naming the parameter
        openai = beta.post("/v1/chat/completions", json={"model": MODEL, "messages": [], "options": {"num_ctx": 8}})
        assert openai.status_code == 400 and openai.json()["error"]["param"] == "options.num_ctx"
    assert not any(n.received for n in [*nodes, embed_node])


def test_sampling_options_pass_and_group_routes_reach_their_group(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        body = json.dumps({"model": MODEL, "prompt": "hi", "stream": False,
                           "options": {"temperature": 0, "num_predict": 4, "seed": 7, "top_k": 1}}).encode()
        for route in ("/api/generate", "/groups/cpu/api/generate"):
            response = beta.post(route, content=body)
            assert response.status_code == 200 and served_by(response) in {"a", "b"}, response.text
            last = next(n for n in nodes if n.name == served_by(response)).received[-1]
            assert last.path == "/api/generate" and last.body == body  # the group prefix is not passed on
        # a group's own route sends any model to that group, and a body that is not JSON to the node as it is
        other = beta.post("/groups/embed/api/generate", content=b"not json")
        assert served_by(other) == "c" and embed_node.received[-1].body == b"not json"
    # nginx writes a request's access-log entry as it finalizes the request, a moment after the client has it
    wanted = {("/groups/cpu/api/generate", "cpu"), ("/groups/embed/api/generate", "embed")}
    wait_until(lambda: wanted <= {(e["uri"], e["group"]) for e in routed.log()}, f"access-log entries {wanted}")


def test_model_lists_are_the_union_of_every_group(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        for route, items, key in (("/api/tags", "models", "model"), ("/api/ps", "models", "model"),
                                  ("/v1/models", "data", "id")):
            response = beta.get(route)
            assert response.status_code == 200 and "x-fleet-unavailable-groups" not in response.headers
            assert sorted(item[key] for item in response.json()[items]) == sorted([MODEL, SECOND_MODEL]), route
        assert beta.get("/v1/models").json()["object"] == "list"
        # a group with no node answering is left out, and named
        embed_node.busy = True
        partial = beta.get("/api/tags")
        assert partial.status_code == 200 and partial.headers["x-fleet-unavailable-groups"] == "embed"
        assert [m["model"] for m in partial.json()["models"]] == [MODEL]
        # no group at all: 503 with Retry-After, like any request no node could take
        for node in nodes:
            node.busy = True
        none = beta.get("/v1/models")
        assert none.status_code == 503 and none.headers["retry-after"] == str(RETRY_AFTER)
        assert none.headers["x-fleet-unavailable-groups"] == "cpu,embed" and "no node" in error_message(none)
    assert {e["group"] for e in routed.log() if e["uri"] == "/api/tags"} == {"cpu,embed"}


def test_shedding_and_max_conns_are_per_group(routed, nodes, embed_node):
    max_conns = routed.plan.max_conns_by_group()
    for node in nodes:
        node.hold()
    held: list[int] = []

    def slow_request() -> None:
        with routed.client(KEYS["beta"]) as c:
            held.append(c.post("/api/generate", json={"model": MODEL}).status_code)

    threads = [threading.Thread(target=slow_request) for _ in range(max_conns["cpu"] * len(nodes))]
    for thread in threads:
        thread.start()
    wait_until(lambda: sum(len(n.received) for n in nodes) == len(threads), "every slot of group cpu to be taken")
    with routed.client(KEYS["beta"]) as beta:
        shed = beta.post("/api/generate", json={"model": MODEL})
        assert shed.status_code == 503 and "busy" in error_message(shed)
        # the other group has its own nodes and its own max_conns
        other = beta.post("/api/generate", json={"model": SECOND_MODEL})
        assert other.status_code == 200 and served_by(other) == "c"
    for node in nodes:
        node.release()
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
    assert len(embed_node.received) == burst + 1


def test_paths_that_escape_the_model_route_reach_no_node(routed, nodes, embed_node):
    with routed.client(KEYS["beta"]) as beta:
        for target in (f"/v1/models/{SECOND_MODEL}/../../../api/pull", "/v1/models/..%2F..%2Fapi%2Fpull",
                       f"/v1/models/x/..%2F{SECOND_MODEL}%2F..%2F..%2F..%2Fapi%2Fdelete"):
            response = beta.request("GET", "/", extensions={"target": target.encode()})
            assert response.status_code in (403, 404), target
        # a path that normalises onto a served model reaches the group with the normalised path
        response = beta.request("GET", "/", extensions={"target": f"/v1/models/x/../{SECOND_MODEL}".encode()})
        assert response.status_code == 200 and embed_node.received[-1].path == f"/v1/models/{SECOND_MODEL}"
    assert [r.path for n in [*nodes, embed_node] for r in n.received] == [f"/v1/models/{SECOND_MODEL}"]


def test_a_client_in_the_budget_map_is_refused_after_a_reload_and_others_are_not(gateway):
    """What fleet.exporters.budget writes, nginx enforces after SIGHUP: 429, the budget in JSON, Retry-After a date."""
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    from fleet.exporters.budget import decide, render_map, write_if_changed

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
