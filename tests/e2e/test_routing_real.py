"""One URL for every model, on the real data plane: two node groups with two different models behind the
rendered gateway (nginx + the njs router), driven by the real `ollama` and `openai` clients.

Group `cpu` serves the dev stack's SmolLM2 (alias `chat`); group `alt` serves the same GGUF imported under
another name, with a different context size (alias `tiny`). Each group has its own models folder, so a node
lists only its group's model and the merged lists really are merged. One node per group keeps the CPU cost
low."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest
from openai import OpenAI

from fleet.local.dataplane import DataPlane
from fleet.local.ollama import smollm2_gguf
from fleet.stack_file import load_stack
from fleet.config import FLEET_KEY
from fleet.model_names import short_name
from waiting import wait_until

pytestmark = pytest.mark.e2e

OPTIONS = {"temperature": 0, "seed": 7, "num_predict": 8}
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
ALT_MODEL = "smollm2-alt:135m"
ALT_ALIAS = "tiny"


def _groups() -> list[dict]:
    cpu = dict(load_stack("dev").raw_config[FLEET_KEY]["nodeGroups"][0], count=1)
    alt = dict(cpu, name="alt", models=[{"name": "smollm2-alt", "tag": "135m", "gguf": str(smollm2_gguf()),
                                          "numCtx": 2048, "aliases": [ALT_ALIAS]}])
    return [cpu, alt]


@pytest.fixture(scope="module")
def plane(ollama_binary, tmp_path_factory):
    plane = DataPlane(
        "dev",
        {"nodeGroups": _groups(), "gateway.clients": [{"name": "beta"}], "gateway.queuePerNode": 1},
        run_dir=tmp_path_factory.mktemp("routing-plane"),
        models_dir=tmp_path_factory.mktemp("routing-models"),
        ollama_binary=ollama_binary,
        monitoring=False,
    )
    plane.start()
    yield plane
    plane.stop()
    assert not plane.leftovers()


@pytest.fixture(scope="module")
def models(plane) -> dict[str, str]:
    """Group -> its model."""
    return {group.name: group.models[0].ref for group in plane.settings.node_groups}


@pytest.fixture(scope="module")
def aliases(plane) -> dict[str, list[str]]:
    """Group -> its model's aliases, as Ollama lists them (`name:latest`)."""
    return {group.name: [short_name(a) for a in group.models[0].aliases] for group in plane.settings.node_groups}


def _names(models: dict[str, str], aliases: dict[str, list[str]]) -> set[str]:
    """Every name the gateway serves: the models and their aliases."""
    return set(models.values()) | {alias for names in aliases.values() for alias in names}


def _ollama(plane) -> ollama.Client:
    return ollama.Client(host=plane.gateway_url, headers=plane.auth("beta"), verify=plane.verify(), timeout=TIMEOUT)


def _openai(plane) -> OpenAI:
    return OpenAI(base_url=f"{plane.gateway_url}/v1", api_key=plane.client_keys["beta"], max_retries=0,
                  http_client=httpx.Client(verify=plane.verify(), timeout=TIMEOUT))


def _served_group(plane, request_id: str) -> tuple[str, str]:
    """(group, upstream address) the access log records for a request."""
    entry = next(e for e in plane.access_log() if e["request_id"] == request_id)
    return entry["group"], entry["upstream_addr"]


def _assert_last_groups(plane, uri: str, expected: list[tuple[str, str]]) -> None:
    """The last access-log entries for `uri` name these (group, upstream) pairs. nginx writes an entry when it
    finalizes the request, which can come just after the client read the last byte of a stream: poll briefly."""
    def last():
        entries = [e for e in plane.access_log() if e["uri"] == uri][-len(expected):]
        got = [(e["group"], e["upstream_addr"]) for e in entries]
        return got == expected, got
    wait_until(last, f"access-log entries of {uri} naming {expected}", timeout=10)


def _meters(plane) -> dict[str, str]:
    """Group -> the address of its node's meter (the gateway's upstream)."""
    return {node.group.name: node.upstream for node in plane.nodes}


def test_each_node_holds_only_its_groups_model_and_its_aliases(plane, models, aliases):
    assert aliases == {"cpu": ["chat:latest"], "alt": [f"{ALT_ALIAS}:latest"]}
    for node in plane.nodes:
        tags = httpx.get(f"{node.ollama.base_url}/api/tags", timeout=10).json()["models"]
        mine = [models[node.group.name], *aliases[node.group.name]]
        assert sorted(m["model"] for m in tags) == sorted(mine)
        # an alias is a copy of the model's manifest: one digest, the same layers
        assert len({m["digest"] for m in tags}) == 1


def test_both_models_answer_through_one_url_with_the_ollama_client(plane, models):
    client = _ollama(plane)
    meters = _meters(plane)
    for group, model in models.items():
        reply = client.generate(model=model, prompt="Why is the sky blue?", options=OPTIONS)
        assert reply.response and reply.eval_count > 0 and reply.model == model
        chunks = list(client.chat(model=model, messages=[{"role": "user", "content": "Name a colour."}],
                                  stream=True, options=OPTIONS))
        assert len(chunks) > 2 and chunks[-1].done and "".join(c.message.content for c in chunks).strip()
        # both requests went to the model's group, to its node's meter
        _assert_last_groups(plane, "/api/generate", [(group, meters[group])])
        _assert_last_groups(plane, "/api/chat", [(group, meters[group])])
        # a bare name means `latest`, which no group serves: the gateway answers, listing what it serves
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate(model="smollm2", prompt="Hi", options=OPTIONS)
    assert missing.value.status_code == 404 and ALT_MODEL in str(missing.value)


def test_both_models_answer_through_one_url_with_the_openai_client(plane, models, aliases):
    client = _openai(plane)
    meters = _meters(plane)
    for group, model in models.items():
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
        assert completion.model == model and completion.choices[0].message.content
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Tell me about the sea."}], max_tokens=8,
            temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.completion_tokens > 0
        _assert_last_groups(plane, "/v1/chat/completions", [(group, meters[group])] * 2)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert missing.value.body["code"] == "model_not_found"
    assert json.loads(missing.value.response.text)["models"] == sorted(_names(models, aliases))


def test_an_alias_is_answered_by_its_models_group_and_runner_with_both_clients(plane, models):
    """`tiny` names group `alt`'s model: both clients reach it through the one URL, streaming and not; Ollama
    answers the alias with the runner the model's warm-up loaded (no second runner), and the meter counts the
    requests under the model's name."""
    meters = _meters(plane)
    node = next(n for n in plane.nodes if n.group.name == "alt")
    native = _ollama(plane)
    reply = native.generate(model=ALT_ALIAS, prompt="Why is the sky blue?", options=OPTIONS)
    assert reply.response and reply.eval_count > 0 and reply.model == ALT_ALIAS
    chunks = list(native.chat(model=ALT_ALIAS, messages=[{"role": "user", "content": "Name a colour."}], stream=True,
                              options=OPTIONS))
    assert len(chunks) > 2 and chunks[-1].done and "".join(c.message.content for c in chunks).strip()
    _assert_last_groups(plane, "/api/generate", [("alt", meters["alt"])])
    _assert_last_groups(plane, "/api/chat", [("alt", meters["alt"])])
    client = _openai(plane)
    completion = client.chat.completions.create(
        model=ALT_ALIAS, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    assert completion.choices[0].message.content
    stream = list(client.chat.completions.create(
        model=f"{ALT_ALIAS}:latest", messages=[{"role": "user", "content": "Tell me about the sea."}], max_tokens=8,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) and stream[-1].usage.completion_tokens
    _assert_last_groups(plane, "/v1/chat/completions", [("alt", meters["alt"])] * 2)
    # one runner on the node, named by the model that loaded it at warm-up
    assert [m["model"] for m in httpx.get(f"{node.ollama.base_url}/api/ps", timeout=10).json()["models"]] == [ALT_MODEL]
    counted = [line for line in httpx.get(node.metrics_url, timeout=10).text.splitlines()
               if line.startswith("ollama_inference_requests_total{") and 'status="200"' in line]
    assert any(f'model="{ALT_MODEL}"' in line and not line.endswith(" 0.0") for line in counted), counted
    assert not any(f'model="{ALT_ALIAS}' in line for line in counted), counted


def test_model_lists_are_merged_over_both_groups(plane, models, aliases):
    served = set(models.values())
    assert {m.model for m in _ollama(plane).list().models} == _names(models, aliases)
    assert {m.id for m in _openai(plane).models.list().data} == _names(models, aliases)
    assert _openai(plane).models.retrieve(ALT_MODEL).id == ALT_MODEL  # GET /v1/models/{model}, routed by path
    for model in served:
        assert _ollama(plane).show(model).details.quantization_level == "Q4_1"
    with httpx.Client(base_url=plane.gateway_url, headers=plane.auth("beta"), verify=plane.verify(),
                      timeout=TIMEOUT) as raw:
        loaded = raw.get("/api/ps")  # the resident models of both groups, from the nodes
        assert loaded.status_code == 200 and {m["model"] for m in loaded.json()["models"]} == served
        assert "x-fleet-unavailable-groups" not in loaded.headers


def test_lists_hold_only_what_the_gateway_serves(plane, models, aliases):
    """A node also holds what its served model was made from (the library tag the model step pulls) and what
    an earlier config served: the node lists it, the gateway does not (it would answer 404 for it)."""
    node = next(n for n in plane.nodes if n.group.name == "cpu")
    extra = "smollm2:135m-instruct-q4_1"
    copied = httpx.post(f"{node.ollama.base_url}/api/copy", json={"source": models["cpu"], "destination": extra},
                        timeout=30)
    assert copied.status_code == 200, copied.text
    try:
        assert extra in {m["model"] for m in httpx.get(f"{node.ollama.base_url}/api/tags", timeout=10).json()["models"]}
        assert {m.model for m in _ollama(plane).list().models} == _names(models, aliases)
        assert {m.id for m in _openai(plane).models.list().data} == _names(models, aliases)
    finally:
        httpx.request("DELETE", f"{node.ollama.base_url}/api/delete", json={"model": extra}, timeout=30)


def test_a_group_that_is_down_leaves_the_list_and_only_its_model_fails(plane, models, aliases):
    with httpx.Client(base_url=plane.gateway_url, headers=plane.auth("beta"), verify=plane.verify(),
                      timeout=TIMEOUT) as raw:
        plane.kill("alt-0")
        try:
            tags = raw.get("/api/tags")
            assert tags.status_code == 200 and tags.headers["x-fleet-unavailable-groups"] == "alt"
            assert sorted(m["model"] for m in tags.json()["models"]) == sorted([models["cpu"], *aliases["cpu"]])
            down = raw.post("/api/generate", json={"model": ALT_MODEL, "prompt": "Hi", "stream": False})
            assert down.status_code == 503 and down.headers["retry-after"]
            up = raw.post("/api/generate", json={"model": models["cpu"], "prompt": "Hi", "stream": False,
                                                  "options": OPTIONS})
            assert up.status_code == 200 and up.json()["response"]
        finally:
            plane.restart("alt-0")


def test_per_model_metrics_come_from_each_groups_meter(plane, models):
    client = _ollama(plane)
    for model in models.values():
        client.generate(model=model, prompt="Hi", options=OPTIONS)
    for node in plane.nodes:
        text = httpx.get(node.metrics_url, timeout=10).text
        mine, other = models[node.group.name], next(m for g, m in models.items() if g != node.group.name)
        counted = [line for line in text.splitlines()
                   if line.startswith("ollama_inference_requests_total{") and 'status="200"' in line]
        assert any(f'model="{mine}"' in line and not line.endswith(" 0.0") for line in counted), counted
        assert not any(f'model="{other}"' in line for line in counted)
